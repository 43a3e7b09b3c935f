"""The options several commands share, in groups that each build one value, and the helpers
that turn them into launcher calls (``train`` and ``reproduce --run`` both launch runs).

``@connect_options`` adds ``-p -i --trust-new-host --known-hosts --ssh-config`` and hands the
command one ``connect: ConnectOptions``; ``@follow_options`` hands ``follow: FollowOptions``.
A command made with ``cls=GroupedCommand`` shows each group under its own heading in ``--help``.
CLI modules import shared options from here, never from each other.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from kohyawrap.cli.types import SECONDS

if TYPE_CHECKING:
    from kohyawrap.hosts.connect import ConnectOptions
    from kohyawrap.launcher.request import TrainRequest
    from kohyawrap.launcher.runplan import RunPlan
    from kohyawrap.launcher.runstore import RunDir
    from kohyawrap.launcher.skypilot import SkyOptions
    from kohyawrap.launcher.stages import FollowOptions
    from kohyawrap.launcher.verbs import Questions

F = TypeVar("F", bound=Callable[..., Any])
Spec = tuple[Sequence[str], dict[str, Any]]  # (declarations, click.Option keyword arguments)


class GroupedOption(click.Option):
    """An option that belongs to a named group (its heading in ``--help``)."""

    def __init__(self, *args: Any, group: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.group = group


class GroupedCommand(click.Command):
    """A command whose ``--help`` lists options under their groups' headings."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        sections: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None or isinstance(param, click.Argument):
                continue  # arguments are in the usage line and the examples
            title = getattr(param, "group", None) or "Other options"
            sections.setdefault(title, []).append(record)
        # The grouped options first, in the order the command declares them; the rest last.
        rest = sections.pop("Other options", None)
        if rest:
            sections["Other options"] = rest
        for title, rows in sections.items():
            with formatter.section(title):
                formatter.write_dl(rows)


class DefaultGroup(click.Group):
    """A group whose first argument, when it names none of its subcommands, goes to ``default``:
    ``export RUN --to DIR`` is ``export lora RUN --to DIR``."""

    def __init__(self, *args: Any, default: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.default = default

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default, *args]
        return super().parse_args(ctx, args)


def option_group(
    title: str, dest: str, build: Callable[..., Any], specs: Sequence[Spec]
) -> Callable[[F], F]:
    """A decorator adding ``specs`` as options under ``title``; the command receives
    ``dest=build(**their values)`` instead of the separate values."""

    def decorate(func: F) -> F:
        params = [GroupedOption(list(decls), group=title, **attrs) for decls, attrs in specs]
        names = [p.name for p in params]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            values = {name: kwargs.pop(name) for name in names if name is not None}
            kwargs[dest] = build(**values)
            return func(*args, **kwargs)

        # click collects decorator options in reverse; these keep their order in --help.
        existing = list(getattr(func, "__click_params__", []))
        wrapper.__click_params__ = existing + list(reversed(params))  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def grouped(title: str, *decls: str, **attrs: Any) -> Callable[[F], F]:
    """One option under a group heading (it reaches the command as itself)."""
    return click.option(*decls, cls=GroupedOption, group=title, **attrs)


# ---------------------------------------------------------------------------------------------
# Model files

# Files the FLUX.1, Chroma and SD3.5 scripts load beside the base model: sd-scripts option ->
# (this CLI's option, what the file is and which families load it).
COMPANION_OPTIONS = {
    "clip_l": ("--clip-l", "CLIP-L text encoder (FLUX.1, SD3.5)"),
    "clip_g": ("--clip-g", "CLIP-G text encoder (SD3.5)"),
    "t5xxl": ("--t5xxl", "T5-XXL text encoder (FLUX.1, Chroma, SD3.5)"),
    "ae": ("--ae", "FLUX.1 autoencoder (FLUX.1, Chroma)"),
}


def companion_specs(default: str) -> list[Spec]:
    """The --clip-l/--clip-g/--t5xxl/--ae options, each saying ``default`` for a file left out."""
    return [
        ((option, key), {"default": None, "help": f"{title}; {default}."})
        for key, (option, title) in COMPANION_OPTIONS.items()
    ]


# ---------------------------------------------------------------------------------------------
# Connection


def _connect(
    port: int | None,
    identity: Path | None,
    trust_new_host: bool,
    known_hosts: Path | None,
    ssh_config: Path | None,
) -> ConnectOptions:
    from kohyawrap.hosts.connect import ConnectOptions

    return ConnectOptions(
        port=port,
        identity=str(identity) if identity else None,
        trust_new_host=trust_new_host,
        known_hosts=str(known_hosts) if known_hosts else None,
        ssh_config=str(ssh_config) if ssh_config else None,
    )


_FILE = click.Path(dir_okay=False, path_type=Path)
connect_options = option_group(
    "Connection",
    "connect",
    _connect,
    [
        (
            ("-p", "--port"),
            {
                "type": click.IntRange(1, 65535),
                "help": "SSH port (rented hosts often use a high one).",
            },
        ),
        (
            ("-i", "--identity"),
            {
                "type": _FILE,
                "help": "Private key file to try first (the ssh agent and ~/.ssh/id_* are tried too).",
            },
        ),
        (
            ("--trust-new-host",),
            {
                "is_flag": True,
                "help": "Accept and record the key of a host seen for the first time (check it first).",
            },
        ),
        (
            ("--known-hosts",),
            {
                "type": _FILE,
                "help": "known_hosts file to check host keys against (default ~/.ssh/known_hosts).",
            },
        ),
        (
            ("--ssh-config",),
            {"type": _FILE, "help": "OpenSSH client config to read instead of ~/.ssh/config."},
        ),
    ],
)


# ---------------------------------------------------------------------------------------------
# Following a run


def _follow(poll: float, reconnect: int) -> FollowOptions:
    from kohyawrap.launcher.stages import FollowOptions

    return FollowOptions(poll_seconds=poll, reconnect_tries=reconnect)


follow_options = option_group(
    "Following",
    "follow",
    _follow,
    [
        (
            ("--poll",),
            {
                "type": SECONDS,
                "default": 2.0,
                "show_default": True,
                "help": "Seconds between looks at the log.",
            },
        ),
        (
            ("--reconnect",),
            {
                "type": click.IntRange(0, 50),
                "default": 5,
                "show_default": True,
                "help": "Failed reconnects in a row (1, 2, 4 ... 30 s apart) before giving up "
                "when the connection drops; a successful one starts the count afresh.",
            },
        ),
    ],
)

# --runs-dir on the commands that act on recorded runs (runs, attach, stop, grid, report ...).
runs_dir_flag = click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Folder holding the run records.",
)

runs_dir_option = grouped(
    "Following",
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Local folder for run records and pulled checkpoints.",
)


# ---------------------------------------------------------------------------------------------
# From options to launcher calls


def find_run(runs_dir: Path, ref: str) -> RunDir:
    """The run ``ref`` names; when it names several, the newest, and a note saying so."""
    from kohyawrap.launcher.runstore import RunStore

    found = RunStore(runs_dir).find(ref)
    if found.others:
        older = ", ".join(r.run_id for r in found.others[:5])
        click.echo(
            f"note: '{ref}' matches {len(found.others) + 1} runs; using the newest, "
            f"{found.run.run_id} (also: {older})",
            err=True,
        )
    return found.run


def read_token(token_file: Path | None) -> str | None:
    """The Hugging Face token: from --hf-token-file, else $HF_TOKEN. Never from argv."""
    if token_file is None:
        return os.environ.get("HF_TOKEN") or None
    from kohyawrap.fileio import read_user_text

    # A token is ~40 characters; a file much larger is not a token file (read bounded).
    return read_user_text(token_file.expanduser(), "--hf-token-file", limit=4096).strip() or None


def confirm_start(yes: bool, what: str, question: str) -> bool:
    """--yes, or a person at a terminal answers ``question``; no terminal and no --yes is refused
    (``what``: the run, the queue)."""
    from kohyawrap.errors import UsageError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise UsageError(
            f"there is no terminal to confirm {what} on",
            hint="pass --yes to start it without asking (scripts, CI, nohup)",
        )
    return click.confirm(question, default=True, err=True)


def finish_this_machine(target: str, action: str) -> bool:
    """Whether a person at a terminal really wants --on-finish to act on what looks like this
    machine (never without a terminal)."""
    if not sys.stdin.isatty():
        return False
    return click.confirm(
        f"--on-finish {action} acts on {target}, which looks like THIS machine. Really?",
        default=False,
        err=True,
    )


def questions(yes: bool) -> Questions:
    """How the launcher's questions are answered: --yes, or a person at a terminal."""
    from kohyawrap.launcher.verbs import Questions

    def start(plan: RunPlan) -> bool:
        return confirm_start(yes, "the run", "Start this run?")

    return Questions(start=start, finish_this_machine=finish_this_machine)


def launch(
    request: TrainRequest,
    target: str,
    connect: Any,
    *,
    follow: Any,
    runs_dir: Path,
    token: str | None,
    yes: bool,
    dry_run: bool = False,
    as_json: bool = False,
) -> None:
    """Plan, confirm and run ``request`` on ``target`` through the launcher; show the outcome.
    (``reproduce --run`` uses it too.)"""
    from kohyawrap.console.train import ConsoleReporter, show_outcome, show_run_plan
    from kohyawrap.launcher.runstore import RunStore
    from kohyawrap.launcher.verbs import Launcher

    def on_plan(plan: RunPlan) -> None:
        if as_json and dry_run:
            from kohyawrap.cli import echo_json

            echo_json(plan.to_json())
        else:
            show_run_plan(plan)

    reporter = ConsoleReporter()
    launcher = Launcher(RunStore(runs_dir), reporter, options=follow)
    try:
        result = launcher.train(
            request,
            target,
            connect,
            questions=questions(yes),
            hf_token=token,
            dry_run=dry_run,
            on_plan=on_plan,
        )
    finally:
        reporter.close()
    if result.declined:
        click.echo("not started", err=True)
        sys.exit(1)
    if result.manifest is not None and result.run is not None:
        show_outcome(result.manifest, result.run.path)


# ---------------------------------------------------------------------------------------------
# Evaluation (the grid after training)

MAX_PROMPT_FILE_BYTES = 256 * 1024


def read_sample_prompts(path: Path | None) -> tuple[str, ...]:
    """The prompt lines of a ``--sample-prompts`` file (bounded, UTF-8, checked); () for None."""
    if path is None:
        return ()
    from kohyawrap.errors import UsageError
    from kohyawrap.evaluate.prompts import read_prompt_file

    where = f"--sample-prompts {path}"
    try:
        if not path.is_file():
            raise UsageError(f"{where}: no such file")
        if path.stat().st_size > MAX_PROMPT_FILE_BYTES:
            raise UsageError(f"{where}: larger than {MAX_PROMPT_FILE_BYTES // 1024} KB")
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as err:
        raise UsageError(f"{where}: {err.strerror}") from err
    except UnicodeDecodeError as err:
        raise UsageError(f"{where}: not UTF-8 text ({err.reason} at byte {err.start})") from err
    return read_prompt_file(text, str(path))


GRID_HELP = (
    "The grid after training: epochs=auto|all|N,M,...,strengths=0,0.5,...,seeds=N[,batch=N] "
    "(keys may be left out)."
)
SAMPLE_PROMPTS_HELP = (
    "Your own prompts (sd-scripts syntax, one a line) for the samples and the grid, instead of "
    "ones made from the trigger word."
)
# SkyPilot (`export skypilot`, `train --via skypilot`): docs/scale.md


def _skypilot(
    nodes: int,
    gpus_per_node: int,
    accelerator: str | None,
    autostop: int,
    down: bool,
    spot: bool,
    infra: str | None,
    disk_size: int | None,
) -> SkyOptions:
    from kohyawrap.launcher.skypilot import SkyOptions

    return SkyOptions(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        accelerator=accelerator or "",
        idle_minutes=autostop or None,
        down=down,
        spot=spot,
        infra=infra or "",
        disk_gb=disk_size,
    )


skypilot_options = option_group(
    "SkyPilot",
    "sky",
    _skypilot,
    [
        (("--nodes",), {"type": click.IntRange(1, 64), "default": 1, "show_default": True,
                        "help": "Nodes of the cluster; above 1 one job spans them (accelerate multi-node)."}),
        (("--gpus-per-node",), {"type": click.IntRange(1, 16), "default": 1, "show_default": True,
                                "help": "GPUs of each node, one training process each."}),
        (("--accelerator",), {"default": None,
                              "help": "SkyPilot's GPU name (default: the GPU preset's, e.g. RTX4090)."}),
        (("--autostop",), {"type": click.IntRange(0, 10080), "default": 30,
                                          "show_default": True, "metavar": "MINUTES",
                                          "help": "SkyPilot stops the cluster after this many idle minutes (0: never)."}),
        (("--down",), {"is_flag": True, "help": "Tear the cluster down instead of stopping it."}),
        (("--spot",), {"is_flag": True, "help": "Spot instances (SkyPilot managed jobs recover them)."}),
        (("--infra",), {"default": None, "help": "Cloud (and region) for SkyPilot: aws, gcp/us-central1, runpod ..."}),
        (("--disk-size",), {"type": click.IntRange(10, 65536), "default": None,
                            "help": "Disk per node in GB (default: what the run needs, at least 50)."}),
    ],
)  # fmt: skip
