"""Ctrl-C at any moment of a re-dispatch to disk: the move either completes, or every weight is back
where it was with its exact values and the offload folder is as it was (no file written, none begun),
and no I/O thread is still working. A real SIGINT, at many moments of the move."""

import os
import random
import signal
import threading
import time

import pytest
import torch

from hf_notebook.core.api import load_model
from hf_notebook.testing.threads import busy_io_threads


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    from hf_notebook.testing.models import save_model

    return save_model("llama", tmp_path_factory.mktemp("tiny") / "llama")


@pytest.fixture
def ctrl_c_after(monkeypatch):
    """``press(seconds)``: a real SIGINT to the main thread after ``seconds``, raised as Ctrl-C raises it
    only while armed (so one that comes late cannot stop the test run); ``disarm()`` returns whether it came."""
    armed, came = [False], [False]

    def handler(signum, frame):
        # Raised only inside our code: a press that lands after the move returned (before disarm) would
        # otherwise interrupt the test itself, as it would interrupt a user's next line.
        if armed[0] and _inside_core(frame):
            armed[0], came[0] = False, True
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, handler)
    timers = []

    def press(seconds: float) -> None:
        armed[0], came[0] = True, False
        timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
        timers.append(timer)
        timer.start()

    def disarm() -> bool:
        armed[0] = False
        timers[-1].cancel()
        timers[-1].join()
        return came[0]

    yield press, disarm
    signal.signal(signal.SIGINT, old)


def test_ctrl_c_at_any_moment_of_a_move_to_disk_loses_nothing(llama_folder, tmp_path, ctrl_c_after, monkeypatch):
    from hf_notebook.core.devices import redispatch as R

    press, disarm = ctrl_c_after
    real_write = R._write
    monkeypatch.setattr(R, "_write", lambda *a: time.sleep(random.random() * 0.004) or real_write(*a))  # wider windows
    model = load_model(str(llama_folder), no_verify=True, device_map="cpu").model
    with torch.no_grad():
        for p in model.parameters():
            p.data = p.data.clone()  # memory of their own: the move writes every weight
    want = {n: p.detach().clone() for n, p in model.named_parameters()}
    moves = []
    for i in range(4):  # how long a move takes here (the first one warms up, and is not counted)
        t0 = time.perf_counter()
        R.redispatch(model, {"": "disk"}, offload_folder=str(tmp_path / f"warm-{i}"))
        moves.append(time.perf_counter() - t0)
        R.redispatch(model, {"": "cpu"})
    one_move = min(moves[1:])  # a machine busy during the warm-up must not push the presses past the moves

    rng, outcomes = random.Random(0), {"interrupted": 0, "completed": 0}
    for trial in range(60):
        folder = tmp_path / f"trial-{trial}"
        folder.mkdir()
        (folder / "kept.txt").write_text("a file of the user's")
        press(rng.random() * one_move)  # anywhere in the move, tidying included
        t0 = time.perf_counter()
        try:
            R.redispatch(model, {"": "disk"}, offload_folder=str(folder))
        except KeyboardInterrupt:
            assert disarm()
            outcomes["interrupted"] += 1
            assert busy_io_threads(__file__) == [], f"trial {trial}: I/O threads still working"
            assert os.listdir(folder) == ["kept.txt"], f"trial {trial}: {os.listdir(folder)}"
            got = dict(model.named_parameters())
            wrong = [n for n, w in want.items() if got[n].device.type != "cpu" or not torch.equal(got[n], w)]
            assert wrong == [], f"trial {trial}: not put back: {wrong[:3]}"
        else:
            one_move = min(one_move, time.perf_counter() - t0)  # the machine got quieter: presses come sooner
            disarm()  # it may have come after the move completed, while tidying: the move stands
            outcomes["completed"] += 1
            R.redispatch(model, {"": "cpu"})
            got = dict(model.named_parameters())
            assert all(torch.equal(got[n], w) for n, w in want.items())
    assert outcomes["interrupted"] >= 20, outcomes  # most presses land inside the move


def _inside_core(frame) -> bool:
    while frame is not None:
        if f"{os.sep}hf_notebook{os.sep}core{os.sep}" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False
