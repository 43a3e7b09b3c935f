"""Hosts: the only code that talks to the world (a GPU host over SSH, or this machine)."""

from kohyawrap.hosts.base import CommandResult, Host, RemoteStat, TransferStats, quote, sh

__all__ = ["CommandResult", "Host", "RemoteStat", "TransferStats", "quote", "sh"]
