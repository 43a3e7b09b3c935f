"""``kohyawrap hosts``: inspect a GPU host before renting time on it.

Also home of :func:`host_options` / :func:`open_from_options`, the connection options every
command that reaches a host shares (``train``, ``attach``, ...), so they read the same everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from kohyawrap.hosts.base import Host

F = TypeVar("F", bound=Callable[..., Any])


def host_options(func: F) -> F:
    """Add the connection options: ``-p -i --trust-new-host --known-hosts --ssh-config``."""
    options = [
        click.option(
            "-p",
            "--port",
            type=click.IntRange(1, 65535),
            help="SSH port (rented hosts often use a high one).",
        ),
        click.option(
            "-i",
            "--identity",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Private key file to try first (the ssh agent and ~/.ssh/id_* are tried too).",
        ),
        click.option(
            "--trust-new-host",
            is_flag=True,
            help="Accept and record the key of a host seen for the first time (check it first).",
        ),
        click.option(
            "--known-hosts",
            type=click.Path(dir_okay=False, path_type=Path),
            help="known_hosts file to check host keys against (default ~/.ssh/known_hosts).",
        ),
        click.option(
            "--ssh-config",
            type=click.Path(dir_okay=False, path_type=Path),
            help="OpenSSH client config to read instead of ~/.ssh/config.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def open_from_options(target: str, **options: Any) -> Host:
    """Open ``target`` with the values of :func:`host_options` (other keys are ignored)."""
    from kohyawrap.hosts.connect import open_host

    return open_host(
        target,
        port=options.get("port"),
        identity=options.get("identity"),
        trust_new_host=bool(options.get("trust_new_host")),
        known_hosts=options.get("known_hosts"),
        ssh_config=options.get("ssh_config"),
    )


@click.group()
def hosts() -> None:
    """Inspect GPU hosts.

    \b
    Example:
      kohyawrap hosts check root@1.2.3.4 -p 22022 -i ~/.ssh/id_ed25519
    """


@hosts.command()
@click.argument("target")
@host_options
@click.option(
    "--work-dir", default="~/kohyawrap", show_default=True, help="Where runs will live on the host."
)
@click.option(
    "--no-torch", is_flag=True, help="Skip importing torch on the host (it can take seconds)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def check(target: str, work_dir: str, no_torch: bool, as_json: bool, **options: Any) -> None:
    """Connect to TARGET and report its GPUs, VRAM, driver, CUDA, disk, python, git and torch.

    TARGET is user@host (or a Host alias from ~/.ssh/config), or "local" for this machine.
    A host seen for the first time is refused until you pass --trust-new-host.

    \b
    Examples:
      kohyawrap hosts check root@1.2.3.4 -p 22022 --trust-new-host
      kohyawrap hosts check my-gpu-box --json
      kohyawrap hosts check local
    """
    from kohyawrap.hosts.facts import read_facts

    host = open_from_options(target, **options)
    try:
        facts = read_facts(host, work_dir, probe_torch=not no_torch)
    finally:
        host.close()
    if as_json:
        from kohyawrap.cli import echo_json

        echo_json(facts.to_json())
        return
    from kohyawrap.console.hosts import print_facts

    print_facts(facts)
