"""File I/O on a few cores: split reads give the file's exact bytes, ordered writes hand results over in
order, and nothing is left running or unaccounted for after an error or Ctrl-C."""

import os
import threading
import time

import pytest

from hf_notebook.core import io_threads
from hf_notebook.testing.threads import busy_io_threads


@pytest.fixture
def three_workers(monkeypatch):
    monkeypatch.setattr(io_threads, "workers", lambda: 3)  # parts and calls side by side, even on one core


@pytest.fixture
def data_file(tmp_path):
    data = os.urandom(5 * 2**20 + 123)
    path = tmp_path / "data.bin"
    path.write_bytes(b"x" * 4100 + data)
    return path, data


def test_a_big_read_is_split_and_gives_the_exact_bytes(data_file, three_workers, monkeypatch):
    path, data = data_file
    parts, real = [], io_threads._pread_all

    def part(fd, view, offset):
        parts.append((offset, len(view), threading.current_thread() is threading.main_thread()))
        real(fd, view, offset)

    monkeypatch.setattr(io_threads, "_pread_all", part)
    buffer = bytearray(len(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        io_threads.read_into(fd, memoryview(buffer), 4100)
    finally:
        os.close(fd)
    assert bytes(buffer) == data
    parts.sort()
    assert len(parts) == 3 and [main for *_, main in parts] == [True, False, False]  # the caller reads one part
    assert all(size % 4096 == 0 for _, size, _ in parts[:-1])  # whole pages each
    assert [offset for offset, *_ in parts] == [4100, 4100 + parts[0][1], 4100 + parts[0][1] + parts[1][1]]


def test_a_short_file_raises_after_every_part_is_done(data_file, three_workers, monkeypatch):
    path, data = data_file
    finished, real = [], io_threads._pread_all

    def slow_part(fd, view, offset):
        try:
            if threading.current_thread() is not threading.main_thread():
                time.sleep(0.2)
            real(fd, view, offset)
        finally:
            finished.append(time.perf_counter())

    monkeypatch.setattr(io_threads, "_pread_all", slow_part)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(EOFError, match="ends .* bytes early"):
            io_threads.read_into(fd, memoryview(bytearray(len(data) + 10)), 4100)  # 10 bytes past the end
        returned = time.perf_counter()
    finally:
        os.close(fd)
    assert len(finished) == 3 and max(finished) <= returned


def test_ctrl_c_during_a_split_read_waits_for_the_other_parts(data_file, three_workers, monkeypatch):
    """No worker writes into the buffer once the read has raised: those running are waited for, and those
    not started by then never start."""
    path, data = data_file
    started, finished = [], []
    both = threading.Barrier(3)

    def part(fd, view, offset):
        if threading.current_thread() is threading.main_thread():
            both.wait(10)  # the two other parts are running
            raise KeyboardInterrupt
        started.append(time.perf_counter())
        both.wait(10)
        time.sleep(0.2)  # still writing into the buffer when the user presses Ctrl-C
        finished.append(time.perf_counter())

    monkeypatch.setattr(io_threads, "_pread_all", part)
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(KeyboardInterrupt):
            io_threads.read_into(fd, memoryview(bytearray(len(data))), 4100)
        returned = time.perf_counter()
    finally:
        os.close(fd)
    assert len(finished) == 2 and max(finished) <= returned


def test_a_call_whose_future_ctrl_c_lost_is_waited_for_and_handed_over(three_workers, monkeypatch):
    """Ctrl-C between the pool's submit and the caller keeping its future: the call still counts."""
    handed, running = [], threading.Event()
    real_submit = io_threads._Group.submit

    def submit_then_interrupted(self, fn, *args):
        if args == (1,):
            real_submit(self, fn, *args)  # the pool has it; the caller never sees its future
            assert running.wait(10)  # and it runs
            raise KeyboardInterrupt
        return real_submit(self, fn, *args)

    def work(i):
        if i == 1:
            running.set()
        time.sleep(0.1)
        return i

    monkeypatch.setattr(io_threads._Group, "submit", submit_then_interrupted)
    with pytest.raises(KeyboardInterrupt):
        with io_threads.InOrder(work, lambda item, result: handed.append(item)) as calls:
            calls.add(0)
            calls.add(1)
    assert handed == [0, 1] and busy_io_threads(__file__) == []


def test_results_are_handed_over_in_order(three_workers):
    handed = []

    def work(i):
        time.sleep(0.01 * (5 - i))  # later items finish first
        return i * i

    with io_threads.InOrder(work, lambda item, result: handed.append((item, result))) as calls:
        for i in range(6):
            calls.add(i)
    assert handed == [(i, i * i) for i in range(6)]


def failing_at(bad, seconds):
    """A call that sleeps ``seconds(i)`` and fails for item ``bad``; the items it started and those running now."""
    started, running = [], []

    def work(i):
        started.append(i)
        running.append(i)
        try:
            time.sleep(seconds(i))
            if i == bad:
                raise OSError("disk full")
            return i
        finally:
            running.remove(i)

    return work, started, running


def test_a_failed_call_stops_the_rest_and_every_result_is_accounted_for(three_workers):
    handed = []
    work, started, running = failing_at(2, lambda i: 0.05)
    with pytest.raises(OSError, match="disk full"):
        with io_threads.InOrder(work, lambda item, result: handed.append(item)) as calls:
            for i in range(10):
                calls.add(i)
    assert running == []  # nothing still runs once the error is raised
    assert 2 not in handed and sorted(handed) == sorted(i for i in started if i != 2)  # each effect known
    assert len(started) < 10  # the calls not started were cancelled


def test_ctrl_c_in_the_caller_waits_for_running_calls_and_hands_them_over(three_workers):
    handed, running = [], []
    started = {0: threading.Event(), 1: threading.Event()}

    def work(i):
        running.append(i)
        started[i].set()
        time.sleep(0.1)  # the call's own work, still going when Ctrl-C comes
        running.remove(i)
        return i

    with pytest.raises(KeyboardInterrupt):
        with io_threads.InOrder(work, lambda item, result: handed.append(item)) as calls:
            calls.add(0)
            calls.add(1)
            assert started[0].wait(10) and started[1].wait(10)  # both running
            raise KeyboardInterrupt
    assert running == [] and handed == [0, 1]


def test_a_forked_child_reads_on_threads_of_its_own(data_file, three_workers):
    """A child forked after the pool started (a DataLoader worker, say) still reads, on fresh threads."""
    path, data = data_file

    def read_all() -> bytes:
        buffer = bytearray(len(data))
        fd = os.open(path, os.O_RDONLY)
        try:
            io_threads.read_into(fd, memoryview(buffer), 4100)
        finally:
            os.close(fd)
        return bytes(buffer)

    assert read_all() == data  # the parent's pool exists now
    pid = os.fork()
    if pid == 0:  # the child: exit 0 only if the read completes with the right bytes
        os._exit(0 if read_all() == data else 1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("the forked child's read never finished")
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_call_failing_while_the_last_ones_finish_still_accounts_for_every_one(three_workers):
    handed = []
    work, _, running = failing_at(3, lambda i: {3: 0.1, 4: 0.3}.get(i, 0.01))  # fails while the last still runs
    with pytest.raises(OSError, match="disk full"):
        with io_threads.InOrder(work, lambda item, result: handed.append(item)) as calls:
            for i in range(5):
                calls.add(i)
    assert running == [] and handed == [0, 1, 2, 4]  # the last one's effect is known too
