"""The ``kohyawrap`` command line.

Each command group lives in its own module and is imported only when it runs, so
``kohyawrap --help`` stays quick (no pillow, paramiko, jinja or rich at start-up).
User errors are :class:`~kohyawrap.errors.KohyawrapError`; they are caught once, in :func:`main`.
"""

from __future__ import annotations

import importlib
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
        "Build an sd-scripts dataset from a folder of images, or lint one.",
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
        "Reconnect to a running job and follow it to the end.",
    ),
    "stop": ("kohyawrap.cli.runs", "stop", "Stop a running job cleanly and pull what it saved."),
    "pull": (
        "kohyawrap.cli.runs",
        "pull",
        "Fetch (and verify) a run's checkpoints, logs and TensorBoard files.",
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
        "kohyawrap.cli.evaluate",
        "export",
        "Copy a run's LoRA into a WebUI / ComfyUI LoRA folder, verified.",
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
      kohyawrap dataset build ./photos --trigger "sks dog" --class-word dog --model sdxl -o ./training_data
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
    """Entry point: run the CLI; turn our errors into a message and an exit code."""
    from kohyawrap.errors import KohyawrapError

    args = sys.argv[1:] if argv is None else argv
    quiet_libraries("-v" in args or "--verbose" in args)

    try:
        code = cli.main(args=args, prog_name="kohyawrap", standalone_mode=False)
    except KohyawrapError as err:
        from kohyawrap.console import print_error

        print_error(err)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    # standalone_mode=False hands back ctx.exit(N) as a return value instead of exiting.
    if isinstance(code, int) and code != 0:
        sys.exit(code)


def echo_json(data: Any) -> None:
    """Print ``data`` as indented, key-sorted JSON on stdout (the ``--json`` output)."""
    import json

    click.echo(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False, default=str))
