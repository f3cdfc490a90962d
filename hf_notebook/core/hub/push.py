"""Push a saved model folder to the Hub in one commit, with per-file progress, resumable.

Uploads go through huggingface_hub (``create_commit``): weights as LFS objects (Xet storage on
the real Hub), small files inline. A re-run uploads only the objects the Hub does not have yet
(the LFS batch answer skips them), so an interrupted push resumes at file granularity. Hashes
the folder's manifest already holds are handed to the client, so files are not read twice.
Per-file progress comes from our file reader (LFS) or from hf_xet's own per-file reports (Xet).
The token is checked (present, allowed to write, owner of the namespace) before any upload,
and never appears in a result, an error or a repr: errors are rewritten with tokens masked.
So is what else can be checked cheaply: the repo id, branch and tag names, and that a tag asked for
does not exist yet. Tagging is the last step, after the commit: should it still fail (another push
took the tag meanwhile), :class:`TagNotMadeError` carries the commit that was made.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..errors import AuthError, HfNotebookError, HubError, OptionError, PushError, hub_failure, redact
from ..events import FileProgress, OnEvent, emit
from ..integrity import MANIFEST
from ..quiet import library_bars_off


@dataclass(frozen=True)
class PushResult:
    """A finished push: where it went and the commit that holds it."""

    repo_id: str
    commit_sha: str
    commit_url: str
    revision: str  # the branch committed to, or refs/pr/N
    files: tuple[str, ...]
    uploaded: Optional[tuple[str, ...]]  # LFS files whose bytes were sent (the others the Hub had); None: via Xet
    seconds: float
    pr_url: Optional[str] = None
    tag: Optional[str] = None
    card_written: bool = False
    name: Optional[str] = None

    @property
    def load_line(self) -> str:
        return f"%load_model {self.repo_id}@{self.commit_sha}" + (f" --as {self.name}" if self.name else "")


    def __repr__(self) -> str:
        return f"PushResult({self.repo_id}@{self.commit_sha})"


def check_push_words(repo_id: str, *, branch: Optional[str] = None, tag: Optional[str] = None,
                     message: Optional[str] = None) -> str:
    """``repo_id`` parsed (:func:`parse_repo_id`), and every word a push publishes checked for a token: it would
    become a repo, branch or tag name, or a commit message anyone with access reads. Before anything is sent."""
    for label, value in (("The repo id", repo_id), ("--branch", branch), ("--tag", tag), ("--message", message)):
        if isinstance(value, str) and redact(value) != value:
            raise OptionError(f"{label} holds something shaped like a Hugging Face token, which a push would publish; "
                              "nothing was sent.",
                              hint="Remove it: tokens come only from your login (`hf auth login`, HF_TOKEN). If it was "
                                   "a real token, revoke it at huggingface.co/settings/tokens.")
    return parse_repo_id(repo_id)


def parse_repo_id(text: str) -> str:
    """``owner/name``, validated as the Hub's client validates it, refused in our words (what is wrong, how to
    write it) before anything is shown or sent."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = (text or "").strip()
    hint = "Write it as owner/name, e.g. my-user/my-model."
    if not text:
        raise OptionError("No repo given to push to.", hint=hint)
    if "/" not in text:
        raise OptionError(f"{text!r} has no owner.", hint=hint)
    try:
        validate_repo_id(text)
    except HFValidationError:
        raise OptionError(f"{text!r} is not a valid repo id: {_repo_id_problem(text)}.", hint=hint) from None
    return text


def _repo_id_problem(text: str) -> str:
    """What is wrong with a repo id the client refused, said as the rule it breaks."""
    slashes = text.count("/")
    if slashes > 1:
        return f"it has {slashes} slashes, and a repo id has one, between the owner and the name"
    owner, name = text.split("/")
    if not owner or not name:
        return f"its {'owner' if not owner else 'name'} is empty"
    if name.endswith(".git"):
        return "a name may not end in .git"
    return ("owner and name hold only letters, digits, '-', '_' and '.', start and end with a letter or digit, "
            "have no '--' or '..', and the name is at most 96 characters long")


def _check_ref_name(kind: str, name: str) -> None:
    """A branch or tag name git (and so the Hub) accepts, checked before anything is created or sent."""
    bad = (not name or name != name.strip() or name.startswith(("-", "/", ".")) or name.endswith(("/", ".", ".lock"))
           or ".." in name or "//" in name or "@{" in name or name == "@"
           or any(c in name for c in " ~^:?*[\\") or any(ord(c) < 32 or ord(c) == 127 for c in name))
    if bad:
        raise OptionError(f"{name!r} is not a valid {kind} name.",
                          hint=f"Give the {kind} a name of letters, digits, '-', '_', '.' and '/' (e.g. v1.0); "
                               "nothing was pushed.")


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool = False, branch: Optional[str] = None,
                create_pr: bool = False, message: Optional[str] = None, tag: Optional[str] = None,
                token: Any = None, name: Optional[str] = None, on_event: OnEvent | None = None) -> PushResult:
    """Push every file of ``folder`` to ``repo_id`` in one commit; see the module docstring."""
    from huggingface_hub import HfApi, constants

    t0 = time.perf_counter()
    folder = Path(folder).expanduser()
    repo_id = parse_repo_id(repo_id)
    for kind, ref in (("branch", branch), ("tag", tag)):
        if ref is not None:
            _check_ref_name(kind, ref)
    if not folder.is_dir():
        raise OptionError(f"{folder} is not a folder.", hint="Save the model first (%save_model NAME DIR), or fix --from.")
    _check_folder(folder)
    api = HfApi()
    endpoint = constants.ENDPOINT
    try:
        _check_token(api, repo_id, token)
        if tag:
            _check_tag_free(api, repo_id, tag, token)
        api.create_repo(repo_id, private=private, exist_ok=True, token=token)
        if branch:
            api.create_branch(repo_id, branch=branch, exist_ok=True, token=token)
        operations, uploaded, card = _operations(folder, repo_id, on_event)
        with library_bars_off(), _xet_file_progress(operations, on_event):  # our events tell the progress
            info = api.create_commit(repo_id, operations, revision=branch, create_pr=create_pr, token=token,
                                     commit_message=message or f"Upload {folder.name} with hf_notebook")
    except HfNotebookError:
        raise
    except Exception as exc:  # the client's errors: rewritten, token masked, without their frames
        raise _ours(exc, endpoint) from None
    revision = f"refs/pr/{info.pr_num}" if create_pr and info.pr_num is not None else (branch or "main")
    sent = None if _through_xet() else tuple(uploaded)  # Xet reads the files itself: which bytes it sent is its own
    pushed = PushResult(repo_id, info.oid, info.commit_url, revision, tuple(op.path_in_repo for op in operations),
                        sent, time.perf_counter() - t0, info.pr_url, None, card, name)
    if not tag:
        return pushed
    try:
        api.create_tag(repo_id, tag=tag, revision=pushed.commit_sha, token=token, exist_ok=False)
    except Exception as exc:  # the commit stands: said with its sha, so no one pushes it again to get the tag
        error = _tag_not_made(exc, pushed, tag, token, api, endpoint)
        if error is not None:
            raise error from None
    return dataclasses.replace(pushed, tag=tag, seconds=time.perf_counter() - t0)


class TagNotMadeError(PushError):
    """The commit was made, only its tag was not: ``pushed`` is that commit (its record, its sha)."""

    def __init__(self, message: str, *, hint: str | None = None, pushed: PushResult, tag: str):
        super().__init__(message, hint=hint)
        self.pushed, self.tag = pushed, tag


def _tags(api: Any, repo_id: str, token: Any) -> dict[str, str]:
    """The repo's tags, name -> commit; none for a repo that does not exist yet."""
    from huggingface_hub.errors import RepositoryNotFoundError

    try:
        refs = api.list_repo_refs(repo_id, token=token)
    except RepositoryNotFoundError:
        return {}
    return {t.name: t.target_commit for t in refs.tags}


def _check_tag_free(api: Any, repo_id: str, tag: str, token: Any) -> None:
    """A tag asked for must not exist yet: refused before the commit (else the commit stands and the tag fails)."""
    at = _tags(api, repo_id, token).get(tag)
    if at is not None:
        raise PushError(f"{repo_id} already has a tag {tag!r} (on commit {at}); nothing was pushed.",
                        hint=f"Pick another tag (--tag {_next_tag(tag)}), or push without --tag; a tag is never "
                             "moved by %push_model.")


def _next_tag(tag: str) -> str:
    """A tag name to suggest instead of ``tag``: its last number one up (v1 -> v2), else ``tag-2``."""
    import re

    m = re.search(r"(\d+)(\D*)$", tag)
    return f"{tag[:m.start(1)]}{int(m.group(1)) + 1}{m.group(2)}" if m else f"{tag}-2"


def _tag_not_made(exc: BaseException, pushed: PushResult, tag: str, token: Any, api: Any,
                  endpoint: str) -> Optional[TagNotMadeError]:
    """The tag step failed after the commit (another push took the tag meanwhile, or the Hub failed): the commit
    that was made, and that only the tag is missing."""
    from ..errors import status_of

    status = status_of(exc)
    at = None
    if status == 409:  # a conflict: the tag exists; where it points says whether this push made it after all
        with contextlib.suppress(Exception):  # only to say where the tag points; the error stands without it
            at = _tags(api, pushed.repo_id, token).get(tag)
        if at == pushed.commit_sha:
            return None  # an answer lost on the way, and the tag made by the request that got no answer
    why = (f"the tag was made on commit {at} while this push ran" if at else _ours(exc, endpoint).message)
    where = pushed.repo_id + (f" ({pushed.revision})" if pushed.revision != "main" else "")
    other = _next_tag(tag) if at else tag
    return TagNotMadeError(
        f"Pushed to {where} as commit {pushed.commit_sha}, but the tag {tag!r} was not made: {why}. "
        "Only the tag is missing; the commit is on the Hub.",
        hint=f"Do not run the cell again (that makes another commit). Tag this commit instead: "
             f"HfApi().create_tag({pushed.repo_id!r}, tag={other!r}, "
             f"revision={pushed.commit_sha!r}); load it with {pushed.load_line}",
        pushed=pushed, tag=tag)


def _through_xet() -> bool:
    """Large files go to Xet storage (the real Hub with hf_xet installed), not through our LFS reader."""
    from ..compat import xet_available

    return xet_available()  # hf_xet installed and HF_HUB_DISABLE_XET unset


@contextlib.contextmanager
def _xet_file_progress(operations: list, on_event: OnEvent | None) -> Iterator[None]:
    """Per-file progress of an upload to Xet storage (the real Hub, hf_xet installed): hf_xet reads the files
    itself and reports their bytes only to a callback huggingface_hub passes while its own bars are on (they
    are off: they would print under our panel), so ``compat.xet_upload_reports`` hands it ours."""
    if on_event is None or not _through_xet():
        yield
        return
    name_of = _names_in_repo(operations)

    def report(_group: Any, items: Any) -> None:
        for item in (items or {}).values():
            name = name_of(getattr(item, "item_name", ""))
            if name is not None:
                emit(on_event, FileProgress(name, int(item.bytes_completed), int(item.total_bytes)))

    from ..compat import xet_upload_reports

    with xet_upload_reports(report):
        yield


def _names_in_repo(operations: list) -> Callable[[str], Optional[str]]:
    """hf_xet names a file by the path it was given: back to its path in the repo."""
    by_path: dict[str, str] = {}
    for op in operations:
        if isinstance(op.path_or_fileobj, (str, os.PathLike)):
            by_path[str(op.path_or_fileobj)] = op.path_in_repo
            by_path[os.path.realpath(op.path_or_fileobj)] = op.path_in_repo

    def name_of(item: str) -> Optional[str]:
        item = str(item)
        return by_path.get(item) or by_path.get(os.path.realpath(item)) if item else None

    return name_of


@dataclass(frozen=True)
class Identity:
    """Who a token is on the Hub: the user, their organizations, and what the token may do."""

    name: str
    orgs: tuple[str, ...] = ()
    role: Optional[str] = None  # "write", "read", or None when the Hub does not say (fine-grained tokens)

    def may_write(self, repo_id: str) -> bool:
        """Whether this token may create or write repos under ``repo_id``'s owner."""
        return self.role != "read" and repo_id.split("/")[0] in {self.name, *self.orgs}


def whoami(token: Any = None, api: Any = None) -> Identity:
    """The identity of ``token`` (default: the login's, ``hf auth login`` or ``HF_TOKEN``); :class:`AuthError`
    when there is none or the Hub refuses it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError

    try:
        me = (api or HfApi()).whoami(token=token)
    except LocalTokenNotFoundError:
        raise AuthError("No Hugging Face token: pushing needs one that may write.",
                        hint="Log in with `hf auth login` (or set HF_TOKEN), or type a token in the panel's "
                             "password field.") from None
    except HfHubHTTPError as exc:
        if getattr(exc.response, "status_code", None) == 401:
            raise AuthError("The Hub did not accept the token.",
                            hint="Log in again with `hf auth login`, or give a valid token.") from None
        raise
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    return Identity(me.get("name") or "", tuple(o.get("name") for o in me.get("orgs") or [] if o.get("name")), role)


def _check_token(api: Any, repo_id: str, token: Any) -> None:
    """A token that may write to ``repo_id``'s owner, before anything is sent."""
    me = whoami(token, api)
    if me.role == "read":
        raise AuthError("The token can only read; pushing needs a token that may write.",
                        hint="Create a write token at https://huggingface.co/settings/tokens and log in with it.")
    if not me.may_write(repo_id):
        owner, allowed = repo_id.split("/")[0], sorted(a for a in (me.name, *me.orgs) if a)
        raise AuthError(f"This token belongs to {me.name!r}, which cannot create or write repos under "
                        f"{owner!r}.", hint=f"Push to {me.name}/{repo_id.split('/')[1]} or to an organization "
                                            f"you belong to ({', '.join(allowed)}).")


def _check_folder(folder: Path) -> None:
    """Publish exactly the folder: no link out of it, and every file its manifest lists as the manifest says
    (hashed once per file identity; a save remembers what it wrote), before anything is sent."""
    from ..manifest import verify_folder

    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        if path.is_symlink() and not Path(os.path.realpath(path)).is_relative_to(root):
            raise PushError(f"{path} is a link to {os.path.realpath(path)}, outside the folder: pushing would "
                            "publish that file.", hint="Copy the file into the folder (or remove the link); "
                            "nothing was pushed.")
    verify_folder(folder, action="pushed")


def _operations(folder: Path, repo_id: str, on_event: OnEvent | None):
    """One add per file (hashes from the manifest where it has them), and a model card if there is none."""
    from huggingface_hub import CommitOperationAdd

    manifest = _manifest(folder)
    known = {name: facts["sha256"] for name, facts in manifest.get("files", {}).items()}
    known[MANIFEST] = None
    operations, uploaded = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        op = _TrackedAdd(path_in_repo=rel, path_or_fileobj=str(path))
        op.on_event, op.uploaded = on_event, uploaded
        if known.get(rel) and op.upload_info.size == manifest["files"][rel]["size"]:
            op.upload_info.sha256 = bytes.fromhex(known[rel])  # no second read to hash it
        operations.append(op)
    card = not (folder / "README.md").exists()
    if card:
        operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=model_card(manifest, repo_id)))
    return operations, uploaded, card


def _manifest(folder: Path) -> dict:
    try:
        return json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}


def model_card(manifest: dict, repo_id: str) -> bytes:
    """A README.md with the card metadata the Hub reads: base model, library, and how it was made."""
    source = manifest.get("source", "")
    base, _, sha = source.partition("@")
    meta = ["---", "library_name: transformers", "tags:", "- hf_notebook"]
    if base and "/" in base and not base.startswith("/"):
        meta += [f"base_model: {base}"]
    meta.append("---")
    lines = [f"# {repo_id.split('/')[1]}", ""]
    if base:
        lines.append(f"Saved from `{base}`" + (f" at commit `{sha}`" if sha else "")
                     + f" in {manifest.get('dtype', 'its own dtype')} with hf_notebook's `%save_model`, "
                       "then pushed with `%push_model`.")
    versions = manifest.get("versions") or {}
    if versions:
        lines += ["", "Written with " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items())) + "."]
    lines += ["", "`hf_notebook.manifest.json` lists every file with its size and sha256.", ""]
    return ("\n".join(meta + [""] + lines)).encode()


def _ours(exc: BaseException, endpoint: str) -> HfNotebookError:
    """A client error as ours: what the Hub said (token masked), and what to do."""
    from ..errors import status_of

    failure = hub_failure(exc, "the push", endpoint)
    if failure is not None:
        return failure
    status = status_of(exc)
    text = redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if status in (401, 403):
        return AuthError(f"The Hub refused the push ({status}): {text}",
                         hint="Check that the token may write to this repo (`hf auth whoami`).")
    if status is not None:
        return HubError(f"The Hub answered {status} to the push: {text}", status=status,
                        hint="Run the cell again: files the Hub already has are not sent again.")
    return PushError(f"The push failed: {type(exc).__name__}: {text}",
                     hint="Run the cell again: files the Hub already has are not sent again.")


def _tracked_add_class():
    from huggingface_hub import CommitOperationAdd

    class TrackedAdd(CommitOperationAdd):
        """A file add that reports the bytes read for its upload as :class:`FileProgress` events."""

        on_event: Any = None
        uploaded: Any = None

        @contextlib.contextmanager
        def as_file(self, with_tqdm: bool = False) -> Iterator[Any]:
            if not with_tqdm or not isinstance(self.path_or_fileobj, str):
                with super().as_file() as f:
                    yield f
                return
            if self.uploaded is not None:
                self.uploaded.append(self.path_in_repo)
            with open(self.path_or_fileobj, "rb") as raw:
                yield _Reporting(raw, self.path_in_repo, self.upload_info.size, self.on_event)

    return TrackedAdd


class _Reporting(io.BufferedReader):
    """Reads from a file and reports how far the upload got."""

    def __init__(self, raw: Any, name: str, total: int, on_event: OnEvent | None):
        super().__init__(raw.raw if hasattr(raw, "raw") else raw)
        self._name, self._total, self._on_event, self._done = name, total, on_event, 0

    def read(self, size: int = -1) -> bytes:
        data = super().read(size)
        self._done += len(data)
        emit(self._on_event, FileProgress(self._name, self._done, self._total))
        return data


def _TrackedAdd(**kwargs):  # noqa: N802 - built on first use: huggingface_hub is imported lazily
    global _TRACKED
    if _TRACKED is None:
        _TRACKED = _tracked_add_class()
    return _TRACKED(**kwargs)


_TRACKED = None
