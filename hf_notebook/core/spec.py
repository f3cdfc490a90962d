"""Parse what the user typed into a :class:`ModelSpec`: ``org/name[@rev]`` or a local folder."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .errors import SpecError, redact

# The Hub's rules for repo ids (huggingface_hub.utils.validate_repo_id): an optional
# namespace, letters, digits, "-", "_", "."; no "--" or ".." and at most 96 characters.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.\-]*"
#: A commit id or an abbreviation of one (at least 7 hex digits), as git and the Hub accept.
SHA_PREFIX = re.compile(r"^[0-9a-f]{7,40}$")


def is_commit_sha(text: Optional[str]) -> bool:
    """True for a (possibly abbreviated) commit sha; local folders are pinned as ``"local"``."""
    return bool(text) and SHA_PREFIX.match(text) is not None
_REPO_ID = re.compile(rf"^(?:{_PART}/)?{_PART}$")


@dataclass(frozen=True)
class ModelSpec:
    """A model to load: a Hub repo at an optional revision, or a local folder."""

    repo_id: Optional[str] = None
    revision: Optional[str] = None
    local_path: Optional[Path] = None

    @property
    def is_local(self) -> bool:
        return self.local_path is not None

    def __str__(self) -> str:
        if self.local_path is not None:
            return str(self.local_path)
        return f"{self.repo_id}@{self.revision}" if self.revision else str(self.repo_id)


def parse_spec(text: str) -> ModelSpec:
    """Parse ``org/name``, ``org/name@REV`` (branch, tag, sha, ``refs/pr/N``) or a folder path.

    A path that exists as a folder wins over a repo id of the same spelling, like
    ``from_pretrained`` does; ``./x`` or an absolute path is always a folder.
    """
    text = (text or "").strip().strip("'\"")
    if not text:
        raise SpecError("No model given.", hint="Usage: %load_model org/name[@revision] [options]")
    path = Path(text).expanduser()
    if _is_dir(path):
        return ModelSpec(local_path=path.resolve())
    if text.startswith((".", "/", "~")) or "\\" in text:
        raise SpecError(f"Folder {text!r} does not exist.", hint="Check the path, or give a Hub repo id as org/name.")

    if redact(text) != text:  # a token pasted into the wrong place: refused before it is sent in a URL
        raise SpecError("That looks like a Hugging Face token, not a model; it was not sent anywhere.",
                        hint="Give the model as org/name[@revision]. A token belongs in `hf auth login` (or HF_TOKEN); "
                             "if this one was shared, revoke it at huggingface.co/settings/tokens.")
    repo_id, sep, revision = text.partition("@")
    if sep and not revision:
        raise SpecError(
            f"{text!r} ends with '@' but names no revision.",
            hint="Write org/name@main, org/name@v1.0, org/name@<commit sha> or org/name@refs/pr/1, or drop the '@'.",
        )
    if not _valid_repo_id(repo_id):
        raise SpecError(
            f"{repo_id!r} is not a valid Hub repo id.",
            hint="A repo id is org/name: letters, digits, '-', '_' and '.', at most 96 characters, no '--' or '..'.",
        )
    if revision and (revision.startswith("/") or revision.endswith("/") or ".." in revision or " " in revision):
        raise SpecError(f"{revision!r} is not a valid revision.", hint="Use a branch, tag, commit sha or refs/pr/N.")
    return ModelSpec(repo_id=repo_id, revision=revision or None)


def _is_dir(path: Path) -> bool:
    try:
        return path.is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte, ...
        return False


def _valid_repo_id(repo_id: str) -> bool:
    return (
        bool(_REPO_ID.match(repo_id))
        and len(repo_id) <= 96
        and "--" not in repo_id
        and ".." not in repo_id
        and not repo_id.endswith(".")
    )
