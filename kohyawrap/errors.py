"""The one error type users see, with its kinds and evidence.

Every failure a user can cause or fix (bad input, unknown preset, a host that refuses us, a run that
died) is raised as a :class:`KohyawrapError`. ``kohyawrap.cli.main`` catches it once, prints the
message, the evidence and the hint, and exits with the kind's code. Anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

# Exit codes (documented in docs/cli.md): 2 = the user's input, 3 = the remote host or connection,
# 4 = the training run itself failed, 5 = a budget or safety stop.
EXIT_USAGE = 2
EXIT_HOST = 3
EXIT_RUN = 4
EXIT_STOPPED = 5


class KohyawrapError(Exception):
    """A failure with a clear message, optional evidence lines and a hint for the fix."""

    exit_code: int = EXIT_USAGE

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        evidence: Sequence[str] = (),
        where: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.evidence = tuple(evidence)
        self.where = where

    def __str__(self) -> str:
        head = f"{self.where}: {self.message}" if self.where else self.message
        parts = [head, *("  " + line for line in self.evidence)]
        if self.hint:
            parts.append(f"hint: {self.hint}")
        return "\n".join(parts)


class UsageError(KohyawrapError):
    """Bad input: unknown preset, bad config key, unreadable dataset, ..."""


class ConfigError(UsageError):
    """A training or dataset config that sd-scripts would reject or silently misread."""


class DatasetError(UsageError):
    """A dataset that cannot be built or would not train as intended."""


class HostError(KohyawrapError):
    """The remote host or the connection to it failed (unreachable, auth, host key, disk)."""

    exit_code = EXIT_HOST


class ConnectionLost(HostError):
    """The connection dropped or stopped answering mid-command; reconnecting may help."""


class ChannelRefused(HostError):
    """The host would not open one more channel (sshd's MaxSessions): use fewer at once."""


class HostKeyError(HostError):
    """The host's key is unknown (and not trusted) or has changed."""


class RemoteCommandError(HostError):
    """A command on the host exited non-zero; carries the command, exit code and output tail."""

    def __init__(
        self,
        command: str,
        exit_code: int,
        output: str,
        *,
        hint: str | None = None,
    ) -> None:
        tail = output.splitlines()[-20:]
        super().__init__(
            f"command failed with exit code {exit_code}: {short_command(command)}",
            hint=hint,
            evidence=tail,
        )
        self.command = command
        self.returncode = exit_code
        self.output = output


class TrainingFailed(KohyawrapError):
    """sd-scripts exited non-zero; evidence is the log tail, hint the diagnosis."""

    exit_code = EXIT_RUN


class IncompleteRun(KohyawrapError):
    """The job ended but checkpoints its log announced are not verified on the laptop."""

    exit_code = EXIT_RUN


class BudgetExceeded(KohyawrapError):
    """A run was stopped because it went over its time or dollar budget."""

    exit_code = EXIT_STOPPED


def short_command(command: str, limit: int = 120) -> str:
    """A command as a message shows it: its first line, cut (set-up scripts are dozens of lines)."""
    text = command.strip()
    first = text.splitlines()[0] if text else ""
    cut = first[:limit]
    return cut if cut == text else cut + " ..."


class OutputClosed(Exception):
    """Whoever read our stdout went away (``kohyawrap presets list | head -1``).

    Not a KohyawrapError: nothing failed, the reader simply has what it wanted. ``cli.main`` ends
    quietly with exit code 0.
    """


def suggest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Return up to ``n`` close matches of ``word`` among ``choices`` (best first)."""
    pool = list(choices)
    close = difflib.get_close_matches(word, pool, n=n, cutoff=0.6)
    if close:
        return close
    # A key that is a known name with a prefix or suffix (batch_size -> train_batch_size).
    contained = [c for c in pool if word in c or (len(c) > 3 and c in word)]
    return sorted(contained, key=len)[:n]


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """A ``did you mean ...?`` hint, or None when nothing is close."""
    close = suggest(word, choices)
    if not close:
        return None
    return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
