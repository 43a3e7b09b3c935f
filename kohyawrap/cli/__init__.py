"""The ``kohyawrap`` command line.

Each command group lives in its own module and is imported only when it runs, so
``kohyawrap --help`` stays quick (no pillow, paramiko, jinja or rich at start-up).
User errors are :class:`~kohyawrap.errors.KohyawrapError`; they are caught once, in :func:`main`.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

import click

from kohyawrap import __version__

# name -> (module, attribute, one-line help shown by `kohyawrap --help` without importing it)
COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": (
        "kohyawrap.cli.demo",
        "demo",
        "Build the bundled example dataset, render its config and print the plan.",
    ),
    "dataset": (
        "kohyawrap.cli.dataset",
        "dataset",
        "Build an sd-scripts dataset from a folder of images, caption photos, or lint a dataset.",
    ),
    "presets": (
        "kohyawrap.cli.presets",
        "presets",
        "List and show GPU × model presets and where each value comes from.",
    ),
    "config": (
        "kohyawrap.cli.config",
        "config",
        "Render training configs from presets, or check a hand-written one.",
    ),
    "plan": (
        "kohyawrap.cli.plan",
        "plan",
        "Steps, time, VRAM fit and dollar cost of a run, before renting anything.",
    ),
    "hosts": (
        "kohyawrap.cli.hosts",
        "hosts",
        "Inspect a GPU host over SSH: GPU, VRAM, driver, CUDA, disk, python, git.",
    ),
    "train": (
        "kohyawrap.cli.train",
        "train",
        "Train a LoRA on an SSH host or this machine, and pull the results back.",
    ),
    "runs": ("kohyawrap.cli.runs", "runs", "List and show the runs recorded under ./runs."),
    "attach": (
        "kohyawrap.cli.runs",
        "attach",
        "Reconnect to a running job (or queue) and follow it to the end.",
    ),
    "queue": (
        "kohyawrap.cli.queue",
        "queue",
        "Several LoRAs in one rented session: one set-up, one job per GPU, a pool of hosts.",
    ),
    "stop": ("kohyawrap.cli.runs", "stop", "Stop a running job cleanly and pull what it saved."),
    "pull": (
        "kohyawrap.cli.runs",
        "pull",
        "Fetch (and verify) a run's checkpoints, logs and TensorBoard files.",
    ),
    "resume": (
        "kohyawrap.cli.resume",
        "resume",
        "Continue a stopped or lost run from its newest training state, here or on a new host.",
    ),
    "extend": (
        "kohyawrap.cli.resume",
        "extend",
        "Train a finished run for more epochs, from its final training state.",
    ),
    "reproduce": (
        "kohyawrap.cli.runs",
        "reproduce",
        "Re-render a recorded run's configs byte for byte, and optionally re-run it.",
    ),
    "grid": (
        "kohyawrap.cli.evaluate",
        "grid",
        "Draw a finished run's test images: epochs x LoRA strengths x seeds x prompts.",
    ),
    "loss": ("kohyawrap.cli.evaluate", "loss", "A run's loss: terminal chart, PNG plot, verdict."),
    "report": (
        "kohyawrap.cli.evaluate",
        "report",
        "Write a run's report page: which checkpoint to use, and why.",
    ),
    "export": (
        "kohyawrap.cli.export",
        "export",
        "Copy a run's LoRA into a WebUI / ComfyUI folder, verified; or write it as a SkyPilot task.",
    ),
}


class LazyGroup(click.Group):
    """A click group that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[cmd_name]
        command = getattr(importlib.import_module(module), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_) for name, (_, _, help_) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    # click turns a write to a closed pipe into exit code 1; these two see it first (parsing
    # prints --help and --version, invoking runs the command) so main() can end quietly with 0.
    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except BrokenPipeError as err:
            raise _closed_stdout_or(err) from err

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except BrokenPipeError as err:
            raise _closed_stdout_or(err) from err


def _closed_stdout_or(err: BrokenPipeError) -> Exception:
    """OutputClosed when it was stdout's reader that went away; else the error itself (a socket
    to a host breaking is not a reader leaving)."""
    from kohyawrap.errors import OutputClosed

    return OutputClosed() if _stdout_closed() else err


def _stdout_closed() -> bool:
    """True when nobody reads our stdout any more (a pipe whose reader exited)."""
    import select

    if not hasattr(select, "poll"):  # Windows: no poll on pipes; keep click's behaviour
        return False
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR / POLLHUP are reported unasked
        events = poller.poll(0)
    except (OSError, ValueError, AttributeError):
        return False
    return any(mask & (select.POLLERR | select.POLLHUP) for _, mask in events)


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="kohyawrap")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also show the log messages of the libraries underneath (SSH, HTTP).",
)
def cli(verbose: bool) -> None:
    """Train a Stable Diffusion LoRA with kohya-ss/sd-scripts on a rented GPU, for a few dollars.

    \b
    The whole path, one command at a time:
      kohyawrap demo                                   # try it: example dataset + config + plan
      kohyawrap dataset build ./photos --trigger "sks dog" --model sdxl --gpu rtx4090 -o ./training_data
      kohyawrap plan --gpu rtx4090 --model sdxl --dataset ./training_data --compare
      kohyawrap train --host root@1.2.3.4 -p 22022 --gpu auto --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora
    """


def quiet_libraries(verbose: bool) -> None:
    """Library log output (paramiko's tracebacks during a normal reconnect, say) reaches the
    terminal only with ``--verbose``."""
    import logging

    if verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
        return
    for name in ("paramiko", "urllib3", "huggingface_hub", "filelock", "git"):
        logger = logging.getLogger(name)
        logger.addHandler(logging.NullHandler())
        logger.propagate = False


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI; turn our errors into a message and an exit code.

    A reader that leaves early (``kohyawrap presets list | head -1``) is no failure: the command
    ends quietly, with the exit code it would have had (0 when it was cut short).
    """
    from kohyawrap.errors import OutputClosed

    code: Any = 0
    try:
        code = _run(argv)
    except SystemExit as exit_:
        code = exit_.code
    except OutputClosed:
        _quiet_exit(0)
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _quiet_exit(0)
    try:
        sys.stdout.flush()  # a reader that left after our last write shows up here, not at exit
    except BrokenPipeError:
        _quiet_exit(code)
    if code:
        sys.exit(code)


def _run(argv: list[str] | None) -> int:
    from kohyawrap.errors import KohyawrapError

    args = sys.argv[1:] if argv is None else argv
    quiet_libraries("-v" in args or "--verbose" in args)

    try:
        code = cli.main(args=args, prog_name="kohyawrap", standalone_mode=False)
    except KohyawrapError as err:
        from kohyawrap.console import print_error

        print_error(err)
        return err.exit_code
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        return 130
    except click.ClickException as err:
        err.show()
        return err.exit_code
    except click.exceptions.Exit as err:
        return err.exit_code
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return 130
    # standalone_mode=False hands back ctx.exit(N) as a return value instead of exiting.
    return code if isinstance(code, int) else 0


def _quiet_exit(code: Any) -> None:
    """Exit with ``code`` and no message after stdout's reader left.

    stdout is pointed at the null device first, so the interpreter's own flush at exit finds
    nowhere to fail (it would print "Exception ignored ... BrokenPipeError" and exit 120).
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
    sys.exit(code)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON on stdout (the ``--json`` output)."""
    import json

    text = json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str)
    try:
        click.echo(text)
    except BrokenPipeError as err:
        raise _closed_stdout_or(err) from err
