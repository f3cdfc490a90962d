"""The shard writer a save puts in place of ``safe_save_file``: one shard dict -> one safetensors
file, streamed, hashed (sha256) in a second thread while written.

The header is the one safetensors would write (same order, same bytes). Each tensor's bytes then
take the cheapest way there:
- already in a file as they are to be written (offloaded to a checkpoint, or loaded in place
  from one and unchanged since): copied file to file inside the kernel (``copy_file_range``),
  hashed from memory;
- a cpu tensor in its target dtype: written from its own memory, chunk by chunk;
- otherwise (converted to ``--dtype``, on a GPU, read from an offload file): copied or read into
  a ring of reused ``CHUNK``-byte buffers, converted there.
Pages of a checkpoint a chunk came from are given back once hashed, so memory stays about a few
chunks whatever the shard size, the model size and where it sits.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import queue
import threading
from typing import Any, Callable, Iterator, Optional

from .. import libc
from ..devices.offloaded import disk_sources
from ..dtypes import torch_dtype, torch_dtype_of_code
from ..events import FileProgress, OnEvent, emit
from ..safetensors_io import Header, header, order, read_header, write_all

CHUNK = 8 * 2**20


class ShardWriter:
    """Stands in for ``safe_save_file``: streams a shard dict to a safetensors file, hashing as it goes."""

    def __init__(self, model: Any, out_dtype: Optional[str], on_event: OnEvent | None):
        self.model, self.on_event = model, on_event
        self.out = torch_dtype(out_dtype) if out_dtype else None  # None: every tensor keeps its dtype
        self.on_disk = disk_sources(model)  # offloaded tensor name -> where its bytes are
        self.hashes: dict[str, str] = {}  # file name -> sha256, computed while writing
        self._headers: dict[str, Header] = {}
        self._maps: dict[str, mmap.mmap] = {}  # source file -> read-only mapping, hashed from (kernel copies)
        self._kernel_copy = hasattr(os, "copy_file_range")  # off after the first refusal (other file system, ...)
        self._ring: list = []
        self._next = 0
        self._spare = None
        self._regions: dict[str, tuple[str, int]] = {}  # cpu tensor -> (file, offset), per shard
        self._hashing: list[tuple[str, Hasher, dict]] = []  # shards written, still being hashed (and their maps)

    def target_dtype(self, tensor: Any):
        return self.out if self.out is not None and tensor.is_floating_point() else tensor.dtype

    def save_file(self, tensors: dict, filename: str, metadata: Optional[dict] = None) -> None:
        layout = order((name, self.target_dtype(t)) for name, t in tensors.items())
        entries = [(name, tensors[name]) for name, _ in layout]
        head, offset = header([(name, dtype, tuple(tensors[name].shape)) for name, dtype in layout], metadata)
        total, name = len(head) + offset, os.path.basename(filename)
        self._regions = self._in_files(entries) if self._kernel_copy else {}
        hasher = Hasher()  # its thread starts with the first chunk, inside the try: whatever stops us ends it
        try:
            with open(filename, "wb", buffering=0) as f:  # unbuffered: big chunks go straight out
                write_all(f, head)
                hasher.put(head, None)
                self._write(f, name, entries, hasher, len(head), total)
            hasher.end()
        except BaseException:
            hasher.close()
            _unmap(self._maps)
            self._maps = {}
            raise
        self._hashing.append((name, hasher, self._maps))  # its hash may still run: the next shard is written meanwhile
        self._maps = {}
        self._settle(keep=1)

    def _write(self, f: Any, name: str, entries: list, hasher: "Hasher", done: int, total: int) -> None:
        """Each tensor's bytes after the header, the cheapest way (see the module docstring)."""
        for tensor_name, tensor in entries:
            if self._copied(f, tensor_name, tensor, hasher):
                done += tensor.numel() * tensor.element_size()
            else:
                for chunk, release in self._chunks(tensor_name, tensor):
                    write_all(f, chunk)
                    hasher.put(chunk, release)
                    done += len(chunk)
            emit(self.on_event, FileProgress(name, done, total))

    def finish(self) -> None:
        """Wait for every shard's hash (into :attr:`hashes`); release what the hashing held. Call once the
        shards are written."""
        self._settle(keep=0)

    def close(self) -> None:
        """End every hash thread and release what the hashing held, raising nothing (after a failure;
        nothing left to do after :meth:`finish`)."""
        for _, hasher, maps in self._hashing:
            hasher.close()
            _unmap(maps)
        self._hashing = []

    def _settle(self, keep: int) -> None:
        """Wait for the hashes of all shards but the ``keep`` newest."""
        while len(self._hashing) > keep:
            name, hasher, maps = self._hashing[0]
            try:
                self.hashes[name] = hasher.wait()
            finally:
                _unmap(maps)
                self._hashing.pop(0)

    def _buffer(self, nbytes: int) -> Any:
        """A reused chunk buffer (uint8). The ring outlasts every chunk still in flight: one being
        written, up to ``Hasher.DEPTH`` queued, one being hashed."""
        import torch

        self._settle(keep=0)  # an earlier shard's hash may still read ring buffers: let it finish first
        if not self._ring:
            self._ring = [torch.empty(CHUNK, dtype=torch.uint8) for _ in range(Hasher.DEPTH + 3)]
        self._next = (self._next + 1) % len(self._ring)
        return self._ring[self._next][:nbytes]

    def _scratch(self, nbytes: int) -> Any:
        """One buffer for bytes that are converted before they are written (never queued)."""
        import torch

        if self._spare is None:
            self._spare = torch.empty(CHUNK, dtype=torch.uint8)
        return self._spare[:nbytes]

    def _chunks(self, name: str, tensor: Any) -> Iterator[tuple[Any, Optional[Callable[[], None]]]]:
        """The bytes of ``tensor`` in its target dtype, chunk by chunk; with each, what gives back the
        checkpoint pages it was copied from (cpu tensors), called once it is hashed.
        A cpu tensor already in its target dtype is written from its own memory; others are copied
        (converted, or brought from a GPU) into reused buffers."""
        import torch

        if tensor.device.type == "meta":
            yield from self._offloaded(name, tensor)
            return
        out = self.target_dtype(tensor)
        flat = tensor.detach().reshape(-1)
        step = max(1, CHUNK // max(flat.element_size(), out.itemsize, 1))
        for start in range(0, flat.numel(), step):
            piece = flat[start:start + step]
            release = _page_release(piece.data_ptr(), piece.numel() * piece.element_size()) \
                if piece.device.type == "cpu" else None
            if piece.device.type == "cpu" and piece.dtype == out:
                yield piece.view(torch.uint8).numpy(), release
                continue
            buf = self._buffer(piece.numel() * out.itemsize)
            buf.view(out).copy_(piece)
            yield buf.numpy(), release

    def _stored(self, name: str, tensor: Any) -> Optional[tuple[str, int, int, Any, Any]]:
        """Where an offloaded tensor's bytes are: (file, first byte, end, stored dtype, dtype to write)."""
        info = self.on_disk.get(name)
        if info is None or not info.get("safetensors_file"):
            return None
        path = info["safetensors_file"]
        found = self._header(path)
        entry, start = found.tensors[info.get("weight_name", name)], found.start
        stored = torch_dtype_of_code(entry["dtype"])
        first, last = entry["data_offsets"]
        return path, start + first, start + last, stored, self.target_dtype(tensor) if tensor.is_floating_point() \
            else stored

    def _copied(self, f: Any, name: str, tensor: Any, hasher: "Hasher") -> bool:
        """Copy a tensor written as it is stored from its file into ``f`` inside the kernel (no trip
        through our memory: about twice the speed of read + write, or of writing from a mapping,
        here), hashing the same bytes from memory. False, with nothing written, where its bytes are
        not in a file as they are to be written, or the kernel refuses the copy."""
        source = self._file_bytes(name, tensor) if self._kernel_copy else None
        if source is None:
            return False
        path, offset, data, release = source
        written = 0
        with open(path, "rb", buffering=0) as src:
            while written < len(data):
                try:
                    got = os.copy_file_range(src.fileno(), f.fileno(), min(CHUNK, len(data) - written),
                                             offset + written)
                except OSError as exc:
                    if written or exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP,
                                                    errno.EBADF, errno.EPERM):
                        raise
                    self._kernel_copy = False  # e.g. across file systems on older kernels: read + write instead
                    return False
                if not got:
                    raise EOFError(f"{path} ends inside tensor {name}")
                hasher.put(data[written:written + got], release(written, got))
                written += got
        return True

    def _file_bytes(self, name: str, tensor: Any) -> Optional[tuple[str, int, memoryview, Callable]]:
        """Where a tensor's bytes, as they are to be written, lie in a file: (file, offset, the same bytes
        in memory, ``release(at, length)`` -> what gives their pages back once hashed). An offloaded
        tensor: its index entry, hashed from a read-only mapping; a cpu tensor: a checkpoint it was
        loaded from in place and not changed since (``libc.file_region``), hashed from itself."""
        import torch

        if tensor.device.type == "meta":
            where = self._stored(name, tensor)
            if where is None or where[3] != where[4] or where[2] <= where[1]:
                return None
            path, first, last, _, _ = where
            mapped = self._map(path)
            return path, first, memoryview(mapped)[first:last], \
                lambda at, length: _page_release_of_map(mapped, first + at, length)
        found = self._regions.get(name)
        if found is None:
            return None
        address = tensor.data_ptr()
        data = memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())
        return found[0], found[1], data, lambda at, length: _page_release(address + at, length)

    def _in_files(self, entries: list[tuple[str, Any]]) -> dict[str, tuple[str, int]]:
        """(file, offset) of each cpu tensor of a shard still as loaded in place from a file and written
        as it is (``libc.file_regions``: the process's mappings read once per shard)."""
        tensors = {name: t for name, t in entries
                   if t.device.type == "cpu" and self.target_dtype(t) == t.dtype and t.is_contiguous() and t.numel()}
        found = libc.file_regions([(t.data_ptr(), t.numel() * t.element_size()) for t in tensors.values()])
        return {name: where for name, where in zip(tensors, found) if where is not None}

    def _map(self, path: str) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def _offloaded(self, name: str, tensor: Any) -> Iterator[tuple[Any, None]]:
        """A tensor kept on disk (read in place from a checkpoint, or written by an offload): stream it from
        its file into reused buffers (converted there when the target dtype differs)."""
        where = self._stored(name, tensor)
        if where is None:
            from transformers.integrations.accelerate import load_offloaded_parameter

            value = load_offloaded_parameter(self.model, name)
            yield from self._chunks(name, value)
            return
        path, first, last, stored, out = where
        step = CHUNK // max(stored.itemsize, out.itemsize) * stored.itemsize
        with open(path, "rb", buffering=0) as f:
            f.seek(first)
            left = last - first
            while left > 0:  # read into a ring buffer when it is written as read, else into one scratch buffer
                raw = self._buffer(min(step, left)) if stored == out else self._scratch(min(step, left))
                view = memoryview(raw.numpy())
                while view:
                    got = f.readinto(view)
                    if not got:
                        raise EOFError(f"{path} ends inside tensor {name}")
                    view = view[got:]
                left -= raw.numel()
                if stored == out:
                    yield raw.numpy(), None
                else:
                    source = raw.view(stored)
                    converted = self._buffer(source.numel() * out.itemsize)
                    converted.view(out).copy_(source)
                    yield converted.numpy(), None

    def _header(self, path: str) -> Header:
        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]


def _unmap(maps: dict) -> None:
    for mapped in maps.values():
        with contextlib.suppress(BufferError):  # a view still held elsewhere: the mapping goes with it
            mapped.close()


def _page_release(address: int, length: int) -> Callable[[], None]:
    """Gives back the checkpoint pages of a copied cpu chunk (refaulted if touched again)."""
    return lambda: libc.drop_clean_file_pages(address, length)


def _page_release_of_map(mapped: mmap.mmap, at: int, length: int) -> Callable[[], None]:
    """Unmaps the pages of a hashed range of a read-only mapping (they stay in the page cache)."""
    start = at - at % mmap.PAGESIZE
    return lambda: mapped.madvise(mmap.MADV_DONTNEED, start, at + length - start)


class Hasher:
    """sha256 in a thread of its own: the writer hands it each chunk after writing it (bounded queue),
    then :meth:`end`; :meth:`wait` gives the digest once every chunk is hashed.

    Every step may be cut by Ctrl-C (or an error) and :meth:`close` still ends the thread: it starts with
    the first chunk (a hasher that took none has no thread), the end is marked sent only once the queue
    took it (a cut ``put`` is sent again), and an error in the thread is kept for the writer while the
    thread goes on emptying the queue (a writer never waits on a dead thread)."""

    DEPTH = 4  # chunks queued at most

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: "queue.Queue" = queue.Queue(maxsize=self.DEPTH)
        self._thread = threading.Thread(target=self._run, name="hf_notebook-sha256", daemon=True)
        self._started = self._ended = False
        self._error: Optional[BaseException] = None

    def put(self, chunk: Any, release: Optional[Callable[[], None]]) -> None:
        """``chunk``: bytes already written; ``release``: called once it is hashed (pages to give back)."""
        if self._error is not None:
            raise self._error
        if not self._started:
            self._started = True  # first: a start cut short is still ended by close()
            self._thread.start()
        self._queue.put((chunk, release))

    def end(self) -> None:
        """No more chunks."""
        if not self._ended:
            self._queue.put(None)
            self._ended = True  # after the put: a put cut short is sent again

    def close(self) -> None:
        """End the thread without asking for the digest (after a failure); raises nothing of the thread's."""
        self.end()
        with contextlib.suppress(RuntimeError):  # not started, or its start cut short: the end just sent ends it
            self._thread.join()

    def wait(self) -> str:
        """The sha256 of every chunk put, once hashed (ends the input first if need be)."""
        self.close()
        if self._error is not None:
            raise self._error
        return self._sha.hexdigest()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._hash(*item)
                except Exception as exc:  # kept for the writer; the queue is still emptied
                    self._error = exc
            del item

    def _hash(self, chunk: Any, release: Optional[Callable[[], None]]) -> None:
        self._sha.update(chunk)
        if isinstance(chunk, memoryview):
            chunk.release()
        if release is not None:
            release()


@contextlib.contextmanager
def a_core_for_hashing():
    """One core fewer for torch's own threads while saving: the sha256 thread runs beside the dtype
    conversion, and sharing every core with it made a bfloat16 save ~1.5x slower on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)
