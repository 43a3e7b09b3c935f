"""``kohyawrap train``: dataset + GPU host (or this machine) -> a trained LoRA on the laptop."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from kohyawrap.cli.hosts import host_options


def conn_options(
    port: int | None,
    identity: Path | None,
    trust_new_host: bool,
    known_hosts: Path | None,
    ssh_config: Path | None,
) -> dict[str, Any]:
    """The connection options as JSON-ready data (recorded so attach/stop/pull can reconnect)."""
    return {
        "port": port,
        "identity": str(identity) if identity else None,
        "trust_new_host": trust_new_host,
        "known_hosts": str(known_hosts) if known_hosts else None,
        "ssh_config": str(ssh_config) if ssh_config else None,
    }


def open_target(target: str, conn: dict[str, Any]) -> Any:
    """Connect to ``target`` ("local" or [user@]host / ssh-config alias) with recorded options."""
    from kohyawrap.cli.hosts import open_from_options

    paths = {k: Path(v).expanduser() if isinstance(v, str) else v for k, v in conn.items()}
    return open_from_options(target, **paths)


def parse_sets(values: tuple[str, ...]) -> tuple[tuple[str, Any], ...]:
    """``--set key=value`` pairs, values parsed like `config render --set`."""
    from kohyawrap.render import parse_override

    return tuple(parse_override(v) for v in values)


def read_token(token_file: str | None) -> str | None:
    """The Hugging Face token: from --hf-token-file, else $HF_TOKEN. Never from argv."""
    if token_file:
        return Path(token_file).expanduser().read_text(encoding="utf-8").strip() or None
    return os.environ.get("HF_TOKEN") or None


@click.command()
@click.option(
    "--host",
    "target",
    required=True,
    help="'local' for this machine's GPU, or [user@]host / an alias from ~/.ssh/config.",
)
@host_options
@click.option(
    "--gpu",
    default="auto",
    show_default=True,
    help="GPU preset (`kohyawrap presets list`), or 'auto' to read it from the host.",
)
@click.option("--vram", type=float, default=None, help="VRAM in GB, for a GPU without a preset.")
@click.option(
    "--model", type=click.Choice(["sd15", "sd2", "sdxl"]), required=True, help="Model family."
)
@click.option(
    "--dataset",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="A dataset made by `kohyawrap dataset build` (parent of the N_concept folders).",
)
@click.option(
    "--base-model",
    required=True,
    help="Hugging Face repo id, URL, or local .safetensors file (uploaded).",
)
@click.option(
    "--base-model-file",
    default=None,
    help="File inside the Hugging Face repo (known repos need none).",
)
@click.option("--name", "output_name", required=True, help="LoRA name (output_name).")
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a training option (repeatable).",
)
@click.option("--caption-extension", default=".txt", show_default=True)
@click.option(
    "--price",
    type=float,
    default=None,
    help="$ per hour of the host (default: the preset's typical).",
)
@click.option(
    "--max-dollars",
    type=float,
    default=None,
    help="Stop the run (and pull) when it has cost this much.",
)
@click.option(
    "--max-hours", type=float, default=None, help="Stop the run (and pull) after this many hours."
)
@click.option(
    "--smoke",
    is_flag=True,
    help="A few steps at tiny resolution to prove the chain works (CPU ok).",
)
@click.option(
    "--sd-scripts-repo", default=None, help="Git URL of sd-scripts (default: kohya-ss on GitHub)."
)
@click.option(
    "--sd-scripts-ref",
    default=None,
    help="Commit, tag or branch (default: the tested pinned commit).",
)
@click.option(
    "--sd-scripts-path",
    default=None,
    help="Use a pre-installed sd-scripts on the host (no install).",
)
@click.option(
    "--python",
    "python",
    default="python3",
    show_default=True,
    help="Python on the host (with --sd-scripts-path: the one whose environment to use).",
)
@click.option(
    "--torch-spec",
    default=None,
    help="pip arguments for torch (default: torch 2.6.0 cu124), or 'skip'.",
)
@click.option("--xformers", is_flag=True, help="Also install xformers (sdpa is used by default).")
@click.option(
    "--work-dir",
    default="~/kohyawrap",
    show_default=True,
    help="Where kohyawrap works on the host.",
)
@click.option(
    "--runs-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("runs"),
    show_default=True,
    help="Local folder for run records and pulled checkpoints.",
)
@click.option(
    "--hf-token-file", default=None, help="File holding a Hugging Face token (else $HF_TOKEN)."
)
@click.option(
    "--on-finish",
    default="none",
    show_default=True,
    help="After every checkpoint is verified locally: none, shutdown, or a shell command for the host.",
)
@click.option("--pull-state", is_flag=True, help="Also pull --save_state folders.")
@click.option(
    "--poll", type=float, default=2.0, show_default=True, help="Seconds between log polls."
)
@click.option(
    "--reconnect",
    type=click.IntRange(0, 50),
    default=5,
    show_default=True,
    help="Reconnect this many times (1, 2, 4 ... 30 s apart) when the connection drops mid-run.",
)
@click.option(
    "--force", is_flag=True, help="Go ahead even when the plan says it will not fit in VRAM."
)
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@click.option("--dry-run", is_flag=True, help="Print the plan and stop.")
@click.option("--json", "as_json", is_flag=True, help="With --dry-run: the plan as JSON.")
def train(
    target: str,
    port: int | None,
    identity: Path | None,
    trust_new_host: bool,
    known_hosts: Path | None,
    ssh_config: Path | None,
    gpu: str,
    vram: float | None,
    model: str,
    dataset: Path,
    base_model: str,
    base_model_file: str | None,
    output_name: str,
    sets: tuple[str, ...],
    caption_extension: str,
    price: float | None,
    max_dollars: float | None,
    max_hours: float | None,
    smoke: bool,
    sd_scripts_repo: str | None,
    sd_scripts_ref: str | None,
    sd_scripts_path: str | None,
    python: str,
    torch_spec: str | None,
    xformers: bool,
    work_dir: str,
    runs_dir: Path,
    hf_token_file: str | None,
    on_finish: str,
    pull_state: bool,
    poll: float,
    reconnect: int,
    force: bool,
    yes: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Train a LoRA on an SSH host (or this machine) and pull the results back, verified.

    Nothing is typed on the host: kohyawrap clones sd-scripts at a pinned commit, builds its
    environment once (a second run skips it), uploads the dataset (only what changed), starts the
    training detached (it survives a dropped connection: `kohyawrap attach RUN`), follows loss and
    cost, and pulls every checkpoint as it appears into runs/<run-id>/checkpoints/.

    \b
    Examples:
      kohyawrap train --host root@1.2.3.4 -p 22022 --gpu auto --model sdxl --dataset ./training_data \\
          --base-model stabilityai/stable-diffusion-xl-base-1.0 --name my_lora --price 0.59
      kohyawrap train --host local --gpu rtx3090 --model sd15 --dataset ./training_data \\
          --base-model ./models/v1-5-pruned-emaonly.safetensors --name my_lora --yes
      kohyawrap train --host gpu-box --model sd15 --dataset ./training_data --base-model ./m.safetensors \\
          --name test --smoke --dry-run
    """
    from datetime import datetime, timezone

    from kohyawrap.launcher.request import TrainRequest, build_run_plan
    from kohyawrap.launcher.runplan import DEFAULT_TORCH, SetupOptions
    from kohyawrap.models import RunSpec
    from kohyawrap.sdscripts import DEFAULT_REPO, PINNED_COMMIT

    spec = RunSpec(
        gpu=gpu,
        model=model,
        base_model=base_model,
        output_name=output_name,
        caption_extension=caption_extension,
        overrides=parse_sets(sets),
        smoke=smoke,
        vram_gb=vram,
    )
    request = TrainRequest(
        spec=spec,
        dataset=dataset,
        base_model_file=base_model_file,
        work_dir=work_dir,
        setup=SetupOptions(
            repo=sd_scripts_repo or DEFAULT_REPO,
            ref=sd_scripts_ref or PINNED_COMMIT,
            sd_scripts_path=sd_scripts_path or "",
            python=python,
            torch_spec=torch_spec or DEFAULT_TORCH,
            xformers=xformers,
        ),
        price_per_hour=price,
        on_finish=on_finish,
        pull_state=pull_state,
        max_dollars=max_dollars,
        max_hours=max_hours,
        force=force,
    )
    now = datetime.now(timezone.utc)
    if dry_run and gpu != "auto":
        # A dry run needs no connection: the host's home is shown as ~.
        plan = build_run_plan(request, target=target, home="~", now=now)
        _present_plan(plan.to_json(), as_json)
        return
    run_with_host(
        request,
        target,
        now,
        conn_options(port, identity, trust_new_host, known_hosts, ssh_config),
        runs_dir=runs_dir,
        token=read_token(hf_token_file),
        yes=yes,
        dry_run=dry_run,
        as_json=as_json,
        poll=poll,
        reconnect=reconnect,
    )


def _present_plan(plan_json: dict[str, Any], as_json: bool) -> None:
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(plan_json)
    else:
        from kohyawrap.console.train import show_run_plan

        show_run_plan(plan_json)


def run_with_host(
    request: Any,
    target: str,
    now: Any,
    conn: dict[str, Any],
    *,
    runs_dir: Path,
    token: str | None,
    yes: bool,
    dry_run: bool,
    as_json: bool,
    poll: float,
    reconnect: int = 5,
) -> None:
    """Connect, read the host, plan, confirm, execute."""
    from kohyawrap.console.train import ConsoleReporter
    from kohyawrap.hosts.facts import read_facts
    from kohyawrap.launcher.request import build_run_plan
    from kohyawrap.launcher.run import Clock, execute
    from kohyawrap.launcher.stages import preflight
    from kohyawrap.runstore import RunStore

    clock = Clock()
    reporter = ConsoleReporter()
    reporter.stage("connect", target)
    host = open_target(target, conn)
    try:
        facts = read_facts(host, request.work_dir)
        clock.lap("connect")
        plan = build_run_plan(request, target=target, home=host.home(), now=now, facts=facts)
        _present_plan(plan.to_json(), as_json and dry_run)
        preflight(host, plan, facts, reporter, force=request.force)
        if dry_run:
            return
        if not yes:
            click.confirm("Start this run?", default=True, abort=True, err=True)
        run = RunStore(runs_dir).create(plan.run_id)
        host_info = {"target": target, **conn, "label": host.label, "facts": facts.to_json()}
        manifest = execute(
            plan,
            host,
            run,
            reporter,
            host_info=host_info,
            hf_token=token,
            poll_seconds=poll,
            clock=clock,
            reconnect_tries=reconnect,
        )
    finally:
        reporter.close()
        host.close()
    _summary(manifest, run.path)


def _summary(manifest: dict[str, Any], path: Path) -> None:
    from kohyawrap.console import stderr

    cost = manifest.get("cost", {})
    files = sorted(v["path"] for v in manifest.get("checkpoints", {}).values())
    con = stderr()
    con.print(
        f"[green]done[/]: {manifest['status']} (exit {manifest.get('exit_code')}), "
        f"~${cost.get('actual', 0):.2f} (estimated ${cost.get('estimated', 0):.2f})"
    )
    for name in files:
        con.print(f"    {path / name}")
