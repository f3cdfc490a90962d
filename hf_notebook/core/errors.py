"""One error hierarchy for the whole package.

Every error is an :class:`HfNotebookError` and also a builtin exception that fits its
nature (``LookupError`` for an unknown repo, ``ValueError`` for bad input, ...), so callers
can catch either. Each carries a ``hint``: the next thing the user should do.
"""

from __future__ import annotations

import re

# A user or org access token: "hf_" and 34 letters and digits today; 20 and more is token-shaped. Fewer would
# mask words of our own ("hf_notebook" has 8) and leave messages unreadable.
_TOKEN = re.compile(r"\b(hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,})")


def redact(text: str) -> str:
    """Mask anything that looks like a Hugging Face token."""
    return _TOKEN.sub("hf_***", text)


class Secret(dict):
    """HTTP headers that carry a token: a dict whose repr hides the values (tracebacks show locals)."""

    def __repr__(self) -> str:
        return "{" + ", ".join(f"{k!r}: <hidden>" for k in self) + "}"


class HfNotebookError(Exception):
    """Base class: a message that states the problem, and a hint that says what to do. Both are masked of
    anything token-shaped: a message may quote what the user typed, and a token typed in the wrong place
    (``--dtype hf_...``) must not come back in an output, a log or a saved notebook."""

    def __init__(self, message: str, *, hint: str | None = None):
        message, hint = redact(message), (redact(hint) if hint is not None else None)
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n{self.hint}" if self.hint else self.message


class SpecError(HfNotebookError, ValueError):
    """A model spec (``org/name@rev`` or a folder) that cannot be parsed or found."""


class OptionError(HfNotebookError, ValueError):
    """An option value that does not parse (``--max-memory``, ``--device-map``, ``--dtype``)."""


class RepoNotFoundError(HfNotebookError, LookupError):
    """The repository does not exist (or is private and no token was sent)."""


class RevisionNotFoundError(HfNotebookError, LookupError):
    """The revision is not a branch, tag, commit or pull request of the repository."""

    def __init__(self, message: str, *, hint: str | None = None, available: list[str] | None = None):
        super().__init__(message, hint=hint)
        self.available = available or []


class AuthError(HfNotebookError, PermissionError):
    """The repository needs a token (private or gated) that was not given or not accepted."""


class OfflineError(HfNotebookError, FileNotFoundError):
    """Offline mode is on and files needed for the load are not in the cache."""

    def __init__(self, message: str, *, hint: str | None = None, missing: list[str] | None = None):
        super().__init__(message, hint=hint)
        self.missing = missing or []


class HubError(HfNotebookError, ConnectionError):
    """The Hub, or the network to it, failed: which server answered what, and what to do."""

    def __init__(self, message: str, *, hint: str | None = None, status: int | None = None):
        super().__init__(message, hint=hint)
        self.status = status


RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
_NETWORK = ("ConnectError", "ConnectTimeout", "ReadTimeout", "WriteTimeout", "PoolTimeout", "ReadError",
            "RemoteProtocolError", "NetworkError", "TimeoutException")


def _chain(exc: BaseException):
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def status_of(exc: BaseException) -> int | None:
    """The HTTP status of the first response found in ``exc``'s chain."""
    for e in _chain(exc):
        status = getattr(getattr(e, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
    return None


def hub_failure(exc: BaseException, what: str, endpoint: str) -> "HubError | None":
    """Our error for a server that kept failing or could not be reached, found in ``exc``'s chain; else None."""
    for e in _chain(exc):
        response = getattr(e, "response", None)
        status = getattr(response, "status_code", None)
        if status in RETRY_STATUSES:
            reason = getattr(response, "reason_phrase", "") or ""
            if status == 429:
                hint = ("You are rate limited: wait a few minutes (a login, `hf auth login`, has higher limits). "
                        "If the model is in the cache, add --offline.")
            else:
                hint = "The server is failing or busy: try again in a few minutes. If the model is in the cache, add --offline."
            return HubError(f"The Hub at {endpoint} answered {status} {reason} to {what}, also after retrying.".replace(
                " ,", ","), hint=hint, status=status)
        if type(e).__name__ in _NETWORK or isinstance(e, (ConnectionRefusedError, TimeoutError)):
            return HubError(f"Could not reach the Hub at {endpoint} for {what}: {type(e).__name__}.",
                            hint="Check the network (or HF_ENDPOINT). If the model is in the cache, add --offline.")
    return None


class NotLoadedError(HfNotebookError, LookupError):
    """No model (or plan) of that name was loaded by this session."""


class LockError(HfNotebookError, LookupError):
    """The lock file has no entry for a ``--locked`` load, or pins something other than what was asked."""


class DeviceError(HfNotebookError, ValueError):
    """A device that this machine does not have."""


class MapError(HfNotebookError, ValueError):
    """A device-map edit that cannot be made (unknown module, range out of bounds, a split no-split module)."""


class PlanError(HfNotebookError, RuntimeError):
    """A placement that cannot be made: the model does not fit, or would spill when told not to."""


class BundleError(HfNotebookError, ValueError):
    """A folder that does not match its manifest (a file missing, unlisted, truncated or changed)."""


class PushError(HfNotebookError, RuntimeError):
    """A push the Hub refused, or one that cannot start."""


class SaveError(HfNotebookError, OSError):
    """A save that cannot be made (target in use, not writable, too little space); nothing was written."""


class IncompatibleVersion(HfNotebookError, RuntimeError):
    """A dependency lacks a private name hf_notebook relies on (see ``compat.py``): named, with its version."""


class OffloadConflictError(HfNotebookError, FileExistsError):
    """A file that hf_notebook did not write is where an offloaded weight would go: it is never overwritten."""

    def __init__(self, message: str, *, hint: str | None = None, path: str | None = None):
        super().__init__(message, hint=hint)
        self.path = path


class LoadError(HfNotebookError, RuntimeError):
    """Loading failed after the plan was made (bad checkpoint, unsupported format, ...)."""


def wrapped(error: BaseException, stage: str) -> HfNotebookError:
    """An unexpected error from a dependency, as ours: its type and message (tokens masked), no frames. The
    message's first lines are kept (a validation error says what is wrong on its second), at most 600 characters."""
    lines = [line.strip() for line in redact(str(error) or repr(error)).splitlines() if line.strip()]
    text = " ".join(lines[:4])
    text = text if len(text) <= 600 else text[:599] + "…"
    return LoadError(f"{stage or 'The call'} failed: {type(error).__name__}: {text}",
                     hint="If this persists, run the cell again with the same options and report the message above.")
