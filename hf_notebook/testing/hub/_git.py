"""Run the ``git`` CLI against one bare repository, isolated from the user's git config."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ZERO_SHA = "0" * 40

_IDENTITY = {
    "GIT_AUTHOR_NAME": "user",
    "GIT_AUTHOR_EMAIL": "user@hub.local",
    "GIT_COMMITTER_NAME": "user",
    "GIT_COMMITTER_EMAIL": "user@hub.local",
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_TERMINAL_PROMPT": "0",
}


class GitError(RuntimeError):
    """A git command failed; the message carries git's stderr."""


def git_env(**extra: str) -> dict[str, str]:
    """The process environment without inherited ``GIT_*`` variables, plus a fixed identity."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    return {**env, **_IDENTITY, **extra}


def run_git(git_dir: Path, *args: str, input: bytes | None = None, env: dict[str, str] | None = None) -> bytes:
    """Run ``git --git-dir=GIT_DIR ARGS`` and return its stdout; raise :class:`GitError` on failure."""
    result = subprocess.run(
        ["git", f"--git-dir={git_dir}", "-c", "gc.auto=0", *args],
        input=input,
        capture_output=True,
        env=env or git_env(),
    )
    if result.returncode != 0:
        raise GitError(f"git {args[0]} failed: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout

