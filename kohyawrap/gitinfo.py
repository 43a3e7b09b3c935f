"""The git state of a local folder (commit and uncommitted changes), for a run's record.

An adapter over gitpython: a dataset, a config folder or a local sd-scripts checkout that lives in a
git repository is recorded with the commit it was at and whether it had changes, so a run can be
reproduced from exactly those inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class GitState:
    root: str
    commit: str
    dirty: bool  # uncommitted changes (untracked files included)


def git_state(path: Path) -> GitState | None:
    """The state of the repository holding ``path``, or None when it is not in one (or git is
    missing on this machine)."""
    try:
        import git
    except ImportError:  # gitpython needs the git program; without it there is nothing to record
        return None
    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError, git.GitCommandError):
        return None
    try:
        if not repo.head.is_valid():
            return None
        return GitState(
            root=str(repo.working_tree_dir),
            commit=repo.head.commit.hexsha,
            dirty=repo.is_dirty(untracked_files=True),
        )
    except (git.GitCommandError, ValueError):
        return None
    finally:
        repo.close()
