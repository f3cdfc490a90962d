"""Run a transformers tensor/pipeline-parallel launch for real on this machine, and check it.

``run_transformers`` writes the launch folder, starts ``python -m torch.distributed.run`` in a
session of its own, turns each rank's progress records into :class:`RankProgress` events,
then compares every rank's logits with a one-process load of the same model. Ctrl-C (or
``stop``) ends every process of the job: torchrun gives each rank a session of its own, so
the whole process tree is signalled, not only torchrun's group.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from ..errors import LoadError, PlanError
from ..events import Failed, OnEvent, StageDone, StageStarted, emit
from .launch import LaunchOptions, torchrun_commands, write_transformers_launch

STAGE = "distributed"
DEFAULT_IDS = ((1, 5, 9, 42, 7, 3, 200, 17),)
_TAIL_LINES = 20
BYTES_TOLERANCE = 0.02  # measured per-rank parameter bytes against the plan's
LOGIT_TOLERANCE = 1e-5  # the largest |logit difference| against one process (float32 reductions in another order)


@dataclass(frozen=True)
class RankProgress:
    """One rank's state: ``starting``, ``loading``, ``loaded``, ``checked`` or ``failed``."""

    rank: int
    state: str
    pid: Optional[int] = None
    bytes_loaded: int = 0  # this rank's local parameter bytes, once loaded
    last_log: str = ""  # the rank's last log line (a progress bar, a warning, a traceback's end)
    error: str = ""


@dataclass(frozen=True)
class RunResult:
    """How the run went; ``max_logit_diff`` is None unless every rank finished its forward."""

    command: str
    returncode: int
    max_logit_diff: Optional[float]
    rank_param_bytes: list[int]
    seconds: float
    log_tail: list[str]
    cancelled: bool = False
    planned_param_bytes: tuple[int, ...] = ()  # each rank's weight bytes in its RankPlan, when run from one
    pin: str = ""  # org/name@sha
    folder: str = ""  # the launch folder that ran (run.py, launch.sh, README.md)
    logs: str = ""  # the per-rank progress records and logs

    @property
    def byte_differences(self) -> list[Optional[float]]:
        """Per rank, measured parameter bytes against planned, as a fraction of planned (None: not planned)."""
        planned = list(self.planned_param_bytes)
        return [(got - want) / want if want else None
                for got, want in zip(self.rank_param_bytes, planned + [0] * (len(self.rank_param_bytes) - len(planned)))]

    def bytes_match(self, tolerance: float = BYTES_TOLERANCE) -> bool:
        """Every rank's measured parameter bytes within ``tolerance`` of its plan."""
        diffs = self.byte_differences
        return bool(diffs) and all(d is not None and abs(d) <= tolerance for d in diffs)

    @property
    def ok(self) -> bool:
        """Ran to the end, every rank's logits within ``LOGIT_TOLERANCE`` of one process, bytes as planned (when
        planned)."""
        return (self.returncode == 0 and not self.cancelled and self.max_logit_diff is not None
                and self.max_logit_diff <= LOGIT_TOLERANCE
                and (not self.planned_param_bytes or self.bytes_match()))


def run_transformers(options: LaunchOptions, workdir: str | os.PathLike, *, input_ids=DEFAULT_IDS,
                     on_event: Optional[OnEvent] = None, stop=None, timeout_s: float = 600.0,
                     grace_s: float = 5.0, poll_s: float = 0.1, folder: str | os.PathLike | None = None,
                     lock: Optional[dict] = None) -> RunResult:
    """Launch ``options`` on this machine (one node, gloo on CPU), forward ``input_ids``, compare.

    ``stop`` (a ``threading.Event``) cancels like Ctrl-C but returns a result marked ``cancelled``;
    Ctrl-C itself stops every process and re-raises. Weights are read offline (``HF_HUB_OFFLINE=1``).
    The launch folder is ``folder`` (default ``workdir/launch``; ``lock``: with the lock file), the
    progress records and logs go into a fresh folder in ``workdir``.
    """
    if options.nodes != 1:
        raise PlanError("A run on this machine uses one node.", hint="Set nodes=1, or use launch.sh on each node.")
    workdir = Path(workdir)
    launch = write_transformers_launch(options, folder if folder is not None else workdir / "launch", lock=lock)
    check = Path(tempfile.mkdtemp(prefix="check-", dir=workdir))
    ids_file = check / "ids.json"
    ids_file.write_text(json.dumps([list(row) for row in input_ids]), encoding="utf-8")
    launcher = (sys.executable, "-m", "torch.distributed.run")
    args = [*shlex.split(torchrun_commands(options, launcher=launcher)[0]), "--events", str(check),
            "--check", str(ids_file)]
    command = shlex.join(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    emit(on_event, StageStarted(STAGE, command))
    started = time.monotonic()
    with open(check / "torchrun.log", "wb") as log:
        proc = subprocess.Popen(args, cwd=launch.files[0].parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    ranks = _RankWatch(check, options.world_size, on_event)
    cancelled = False
    try:
        while proc.poll() is None:
            ranks.poll()
            if stop is not None and stop.is_set():
                cancelled = True
                break
            if time.monotonic() - started > timeout_s:
                raise LoadError(f"The distributed run took over {timeout_s:g} s and was stopped.",
                                hint="Look at the per-rank logs in " + str(check))
            time.sleep(poll_s)
    except BaseException as error:
        _stop(proc, grace_s)
        ranks.poll()
        emit(on_event, Failed(STAGE, error))
        raise
    if cancelled:
        _stop(proc, grace_s)
    ranks.poll()
    ranks.finish(proc.returncode)
    ok = proc.returncode == 0 and not cancelled
    diff = _max_logit_diff(options, check, input_ids) if ok else None
    result = RunResult(command, proc.returncode, diff, ranks.bytes(), time.monotonic() - started, ranks.tails(),
                       cancelled, pin=options.pin, folder=str(launch.files[0].parent), logs=str(check))
    if ok:
        emit(on_event, StageDone(STAGE, result.seconds, result))
    else:
        emit(on_event, Failed(STAGE, KeyboardInterrupt() if cancelled else LoadError(
            f"The distributed run exited with {proc.returncode}: {ranks.first_error()}",
            hint="Look at the per-rank logs in " + str(check))))
    return result


class _RankWatch:
    """Reads each rank's progress records and log as they grow; emits a RankProgress on each change."""

    def __init__(self, folder: Path, world: int, on_event: Optional[OnEvent]):
        self.folder, self.on_event = folder, on_event
        self.offsets = [0] * world
        self.last = [RankProgress(rank, "starting") for rank in range(world)]

    def poll(self) -> None:
        for rank, before in enumerate(self.last):
            now = before
            for record in self._records(rank):
                now = RankProgress(rank, record.get("state", now.state), record.get("pid", now.pid),
                                   int(record.get("bytes", now.bytes_loaded)), now.last_log,
                                   record.get("error", now.error))
            now = replace(now, last_log=(self._log_lines(rank, 1) or [now.last_log])[-1])
            if now != before:
                self.last[rank] = now
                emit(self.on_event, now)

    def finish(self, returncode: int) -> None:
        """Ranks that never reported an end failed when the job did."""
        for rank, now in enumerate(self.last):
            if returncode != 0 and now.state not in ("checked", "failed"):
                self.last[rank] = replace(now, state="failed", error=now.error or f"stopped (exit {returncode})")
                emit(self.on_event, self.last[rank])

    def bytes(self) -> list[int]:
        return [r.bytes_loaded for r in self.last]

    def tails(self) -> list[str]:
        return ["\n".join(self._log_lines(rank, _TAIL_LINES)) for rank in range(len(self.last))]

    def first_error(self) -> str:
        return next((f"rank {r.rank}: {r.error}" for r in self.last if r.error), "no rank reported an error")

    def _records(self, rank: int):
        path = self.folder / f"rank{rank}.jsonl"
        try:
            with open(path, "rb") as f:
                f.seek(self.offsets[rank])
                data = f.read()
        except FileNotFoundError:
            return
        complete = data[: data.rfind(b"\n") + 1]
        self.offsets[rank] += len(complete)
        for line in complete.splitlines():
            try:
                yield json.loads(line)
            except ValueError:
                continue

    def _log_lines(self, rank: int, count: int) -> list[str]:
        try:
            with open(self.folder / f"rank{rank}.log", "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                text = f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        lines = [part.strip() for line in text.splitlines() for part in line.split("\r")]  # progress bars use \r
        return [line for line in lines if line][-count:]


def _max_logit_diff(options: LaunchOptions, check: Path, input_ids) -> Optional[float]:
    """Largest |logit difference| between any rank and a one-process load of the same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    files = [check / f"logits_rank{rank}.pt" for rank in range(options.world_size)]
    if not all(f.exists() for f in files):
        return None
    source = str(options.local_folder) if options.local_folder else options.repo_id
    pin = {} if options.local_folder else {"revision": options.revision}
    dtype = options.dtype if options.dtype == "auto" else getattr(torch, options.dtype)
    from ..quiet import library_bars_off

    with library_bars_off():  # no bar of transformers' own left in the notebook's output
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, local_files_only=True, **pin).eval()
    with torch.no_grad():
        expected = model(input_ids=torch.tensor([list(row) for row in input_ids])).logits.float()
    return max(float((torch.load(f, weights_only=True) - expected).abs().max()) for f in files)


# --------------------------------------------------------------------------- stopping


def _stop(proc: subprocess.Popen, grace_s: float) -> None:
    """Stop the job even through more Ctrl-C presses: a second one skips the grace period."""
    while True:
        try:
            return stop_process_tree(proc, grace_s)
        except KeyboardInterrupt:
            grace_s = 0.0


def stop_process_tree(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the job's session and every descendant's group, then SIGKILL what outlives ``grace_s``."""
    tree = _descendants(proc.pid)
    for group in {proc.pid, *(_pgid(pid) for pid, _ in tree)} - {None, os.getpgrp()}:
        _signal_group(group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in tree)):
        time.sleep(0.05)
    tree |= _descendants(proc.pid) if proc.poll() is None else set()
    for pid, start in tree:
        if _alive((pid, start)):
            _kill(pid, signal.SIGKILL)
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _stat(pid: int) -> Optional[list[str]]:
    """Fields of ``/proc/PID/stat`` after the command name: state, ppid, pgrp, ... (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
            return f.read().rpartition(")")[2].split()
    except OSError:
        return None


def _descendants(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every process below ``root``; the start time tells a reused pid apart."""
    children: dict[int, list[tuple[int, str]]] = {}
    for name in os.listdir("/proc") if os.path.isdir("/proc") else ():
        fields = _stat(int(name)) if name.isdigit() else None
        if fields:
            children.setdefault(int(fields[1]), []).append((int(name), fields[19]))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in found:
                found.add(child)
                todo.append(child[0])
    return found


def _alive(proc: tuple[int, str]) -> bool:
    fields = _stat(proc[0])
    return fields is not None and fields[19] == proc[1] and fields[0] not in ("Z", "X")


def _pgid(pid: int) -> Optional[int]:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
