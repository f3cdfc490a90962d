"""The words: how structure from the core reads to a person. Used by every renderer.

Nothing here imports ipywidgets or torch; the widget, the static record and the text
renderer all phrase a pin, a device, a finding or a load line through these functions, so
they say the same thing.
"""

from __future__ import annotations

from typing import Any, Optional

from hf_notebook.core.devices import explain as E
from hf_notebook.core.errors import OptionError, redact
from hf_notebook.core.option_table import plan_args, quote_arg, to_args
from hf_notebook.core.events import Resolved
from hf_notebook.core.spec import is_commit_sha
from hf_notebook.core.units import format_bytes

def short_sha(sha: Optional[str]) -> str:
    return (sha or "")[:12]


def pinned_name(repo_id: str, sha: Optional[str]) -> str:
    """``org/name@0123456789ab``, or just the name when there is no commit to show."""
    return f"{repo_id}@{short_sha(sha)}" if is_commit_sha(sha) else repo_id


def revision_text(resolved: Resolved) -> str:
    """``@ main``, ``@ (default branch)``, or ``(local folder)``."""
    if resolved.kind == "local":
        return "(local folder)"
    return f"@ {resolved.revision if resolved.revision is not None else '(default branch)'}"


def moving_text(resolved: Resolved) -> str:
    """``main can move; pinned: org/name@<sha>`` for a floating revision, else ``""``."""
    if not resolved.was_floating:
        return ""
    return f"{resolved.revision or 'the default branch'} can move; pinned: {resolved.pinned_spec}"


def pin_note(pin: Resolved) -> str:
    """What the sha was pinned from: ``branch main, can move``, ``tag v1``, ``as given``."""
    asked = pin.revision
    return {"branch": f"branch {asked}, can move" if asked else "default branch, can move",
            "pr": f"{asked}, can move", "tag": f"tag {asked}", "sha": "as given",
            "ref": f"{asked or 'main'}, as cached"}.get(pin.kind, pin.kind)


def format_seconds(seconds: Optional[float]) -> str:
    """``0.42 s``, ``12.3 s``, ``2 min 05 s``."""
    if seconds is None:
        return ""
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


def format_rate(bytes_per_s: Optional[float]) -> str:
    return "" if not bytes_per_s else f"{format_bytes(bytes_per_s)}/s"


def count(n: int) -> str:
    """``70.6B``, ``106.8K``: parameter counts as people say them."""
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def device_label(device: str) -> str:
    """What a user calls a device: ``GPU 0``, ``CPU RAM``, ``disk (offload)``."""
    kind, _, index = device.partition(":")
    if kind == "cuda":
        return f"GPU {index or 0}"
    return {"cpu": "CPU RAM", "disk": "disk (offload)", "meta": "meta (not loaded)"}.get(kind, device)


def device_title(device: str) -> str:
    """``GPU 0 (cuda:0)``, ``CPU RAM (cpu)``, ``disk (offload)``: the user's word and the map's."""
    label = device_label(device)
    return label if label.startswith(device) else f"{label} ({device})"


def error_text(error: BaseException) -> str:
    """``TypeName: message`` with tokens masked."""
    message = str(error) or repr(error)
    return redact(f"{type(error).__name__}: {message}")


def finding_text(f: E.Finding) -> str:
    """One finding as a sentence."""
    room = ", KV cache and step included" if f.room else ""
    if f.kind == E.FITS:
        where = ", ".join(f"{d} ({format_bytes(b)})" for d, b in f.by_device)
        return f"Fits without offloading{room}: {where}."
    if f.kind == E.FILLED:
        of = f" of its {format_bytes(f.budget)} budget" if f.budget else ""
        text = f"{f.device} filled up: {format_bytes(f.nbytes)} planned{of}{room}"
        nxt = f"the next block, {f.next_block} ({format_bytes(f.next_bytes)})," if f.next_block else "the next block"
        if f.budget and f.reserved:
            left = max(0, f.budget - f.reserved - f.nbytes)
            return (f"{text}, {format_bytes(f.reserved)} of it kept free by accelerate for the largest layer (each "
                    f"offloaded layer is moved there to run); {nxt} did not fit in the {format_bytes(left)} left.")
        return f"{text}; {nxt} did not fit."
    if f.kind == E.SPILL:
        why = " (slow: read from disk at every forward pass)." if f.device == "disk" else " (slower)."
        return f"{format_bytes(f.nbytes)} spill to {f.device}{why}"
    if f.kind == E.NEEDS:
        return f"To fit on {f.device} alone it needs about {format_bytes(f.nbytes)}{room}: {f.option}."
    if f.kind == E.SMALLER_DTYPE:
        return f"In {f.dtype} it would need about {format_bytes(f.nbytes)}{room}: {f.option}."
    return f.kind


def load_line(result: Any, device_map: Any = None, name: Optional[str] = None) -> str:
    """The ``%load_model`` line that loads exactly this again: the full sha and the options given
    (``device_map``/``name`` replace the result's own)."""
    pin = result.pin
    spec = pin.repo_id if pin.kind == "local" else pin.pinned_spec
    if device_map is None:
        device_map = f"@{result.map_file}" if result.map_file else result.options.device_map
    try:
        parts = ["%load_model", quote_arg(spec), *to_args(result.options, dtype=result.dtype, device_map=device_map)]
    except OptionError:  # a value with both kinds of quote: no line gives it
        return "(no %load_model line can give these options, a value holds both kinds of quote: use the Python API)"
    if name or result.name:
        parts += ["--as", name or result.name]
    return " ".join(parts)


def plan_line(plan: Any, device_map: Any = None, name: Optional[str] = None) -> str:
    """The ``%load_model`` line that loads ``plan`` (its source, every option it was made with, its map)."""
    parts = ["%load_model", quote_arg(plan.source), *plan_args(plan, **({"device_map": device_map} if device_map else {}))]
    if name:
        parts += ["--as", name]
    return " ".join(parts)


def map_load_line(target: Any, device_map_arg: str, name: Optional[str] = None) -> str:
    """The ``%load_model`` line for a loaded model or a plan, with ``--device-map`` set to ``device_map_arg``."""
    if hasattr(target, "pin"):  # a loaded model: its own line, with this map
        return load_line(target, device_map=device_map_arg, name=name)
    return plan_line(target, device_map=device_map_arg, name=name)


def moves_text(moved: Any) -> str:
    """``148.0 kB cpu → disk, 64.0 kB disk → cpu in 0.16 s``, and what of the move to disk was only
    pointed at the checkpoint instead of written (``nothing written: read in place ...``)."""
    if not moved.moves:
        return "nothing had to move"
    parts = ", ".join(f"{format_bytes(n)} {a} → {b}" for (a, b), n in moved.moves.items())
    to_disk = sum(n for (_, b), n in moved.moves.items() if b == "disk")
    if to_disk and moved.written < to_disk:
        parts += " (" + (f"{format_bytes(moved.written)} written, the rest" if moved.written else "nothing written:") \
            + " read in place from the checkpoint)"
    return f"{parts} in {format_seconds(moved.seconds)}"


def applied_text(moved: Any) -> str:
    """What Apply did: a re-dispatch (``moved``) or a plan update (None)."""
    if moved is None:
        return "The plan now uses this map: the next %load_model of it loads it so."
    return f"Re-dispatched in place: {moves_text(moved)}."


def problem_text(problem: Any) -> str:
    """Why a draft cannot be applied: ``cpu would hold 12.0 GB, 2.0 GB over its budget of 10.0 GB``."""
    from hf_notebook.core.session import problem_text as text

    return text(problem)


def lock_update_text(update: Any) -> Optional[str]:
    """What a load did to the lock file, when the user should hear of it (a new or unchanged entry: nothing)."""
    if update is None or update.outcome in ("recorded", "unchanged"):
        return None
    if update.outcome == "failed":
        return f"Warning: the lock file {update.path} was not updated ({update.reason}); the model is loaded and bound."
    if update.outcome == "kept":
        return (f"Note: the lock file pins {update.key} to {short_sha(update.old_sha)}; this load used "
                f"{short_sha(update.sha)} ({update.revision} moved). --update moves the lock; --locked loads the "
                "locked commit.")
    width = max(len(what) for what, _ in update.changes)
    return "\n".join([f"Lock file {update.path}: {update.key} updated"]
                     + [f"  {what.ljust(width)}  {how}" for what, how in update.changes])


def cancelled_text(what: str, stage: Optional[str] = None, files: Optional[tuple[int, int]] = None) -> str:
    """The one line a cancelled action ends with: what stopped, and for a load (``files``: complete and
    unfinished downloads) that nothing was bound and what running it again reuses."""
    line = f"{what} cancelled" + (f" during {stage}" if stage else "")
    if files is None:
        return line + "."
    complete, unfinished = files
    line += "; nothing was bound."
    if complete or unfinished:
        line += (f" Run the cell again: it reuses the {complete} complete file{'s' * (complete != 1)} in the cache"
                 + (f" and downloads the {unfinished} unfinished one{'s' * (unfinished != 1)}." if unfinished else "."))
    return line


def replaced_text(replaced: Any, name: str) -> Optional[str]:
    """What became of the model a load replaced under ``name``."""
    if replaced is None:
        return None
    held = ", ".join(f"{format_bytes(n)} on {d}" for d, n in replaced.held.items() if n) or "nothing"
    if replaced.freed:
        return f"{name} held {replaced.spec} ({held}); it was released."
    return (f"{name} held {replaced.spec} ({held}); hf_notebook let it go, but something else still refers to it "
            f"(another variable or an output), so its memory is not back yet.")
