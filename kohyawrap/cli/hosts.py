"""``kohyawrap hosts``: inspect a GPU host before renting time on it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from kohyawrap.cli.options import GroupedCommand, connect_options

if TYPE_CHECKING:
    from kohyawrap.hosts.connect import ConnectOptions


@click.group()
def hosts() -> None:
    """Inspect GPU hosts.

    \b
    Example:
      kohyawrap hosts check root@1.2.3.4 -p 22022 -i ~/.ssh/id_ed25519
    """


@hosts.command(cls=GroupedCommand)
@click.argument("target")
@connect_options
@click.option(
    "--work-dir", default="~/kohyawrap", show_default=True, help="Where runs will live on the host."
)
@click.option(
    "--no-torch", is_flag=True, help="Skip importing torch on the host (it can take seconds)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the facts as JSON.")
def check(
    target: str, connect: ConnectOptions, work_dir: str, no_torch: bool, as_json: bool
) -> None:
    """Connect to TARGET and report its GPUs, VRAM, driver, CUDA, disk, python, git and torch.

    TARGET is user@host (or a Host alias from ~/.ssh/config), or "local" for this machine.
    A host seen for the first time is refused until you pass --trust-new-host.

    \b
    Examples:
      kohyawrap hosts check root@1.2.3.4 -p 22022 --trust-new-host
      kohyawrap hosts check my-gpu-box --json
      kohyawrap hosts check local
    """
    from kohyawrap.hosts.connect import open_host
    from kohyawrap.hosts.facts import read_facts

    host = open_host(target, connect)
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
