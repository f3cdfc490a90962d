"""Save a loaded model as a complete model folder: atomic, streamed, hashed while written.

The folder is what ``save_pretrained`` writes (its state-dict rules: names converted back to
the checkpoint's, tied weights once, keys to ignore, quantizer state; its sharding and index),
because ``save_pretrained`` writes it: we only replace the two steps that cost memory.

- ``safe_save_file`` (one shard dict -> one file) becomes a streaming writer: the header
  safetensors would write (same order, same bytes), then each tensor copied in chunks of
  ``CHUNK`` bytes, converted to ``--dtype`` chunk by chunk, hashed (sha256) in a second thread
  while written. Pages of the checkpoint a chunk was read from are given back once copied.
- ``load_offloaded_parameter`` (which loads a whole shard's offloaded weights into memory)
  returns a meta placeholder; the writer streams that tensor from the file it is stored in:
  copied file to file inside the kernel (``copy_file_range``) and hashed from a read-only
  mapping of the source, when its dtype stays; read chunk by chunk and converted otherwise.

So memory stays about a few chunks whatever the shard size, the model size and where it sits.
The folder is written into a temporary sibling and renamed into place when complete; any
error or Ctrl-C removes the temporary folder and leaves the target as it was. The manifest
(``hf_notebook.manifest.json``) lists every file with its size and sha256.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .. import libc
from ..devices.offloaded import disk_sources, rewrites_weights
from ..dtypes import torch_dtype, torch_dtype_of_code
from ..errors import HfNotebookError, OptionError
from ..events import FileProgress, OnEvent, emit
from ..integrity import MANIFEST, digest_of
from ..quiet import library_bars_off
from ..safetensors_io import write_all
from ..units import format_bytes

CHUNK = 8 * 2**20
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".gguf", ".onnx", ".ckpt")
_NOT_COPIED = {"README.md", ".gitattributes", MANIFEST, "model.safetensors.index.json", "pytorch_model.bin.index.json"}


class SaveError(HfNotebookError, OSError):
    """A save that cannot be made (target in use, not writable, too little space); nothing was written."""


@dataclass(frozen=True)
class SavedFile:
    """One file of a saved folder."""

    name: str
    size: int
    sha256: str


@dataclass
class SaveResult:
    """A saved folder: its files (manifest order), where it came from, how long it took."""

    folder: str
    files: tuple[SavedFile, ...]
    source: str
    dtype: str
    seconds: float
    manifest_sha256: str = ""
    replaced: bool = False  # an existing folder was replaced (--overwrite)
    name: Optional[str] = None

    @property
    def nbytes(self) -> int:
        return sum(f.size for f in self.files)

    def _repr_mimebundle_(self, **_):
        from hf_notebook.ui.record import save_record

        return save_record(self).bundle()


def save_model(result: Any, folder: str | os.PathLike, *, max_shard_size: Any = None, dtype: Optional[str] = None,
               overwrite: bool = False, reads_from: tuple = (), on_event: OnEvent | None = None) -> SaveResult:
    """Save ``result.model`` (a :class:`~.api.LoadResult`) into ``folder``; see the module docstring.

    ``reads_from`` are folders loaded models read weights from: saving into one is refused (a
    save there would delete the shards being read). ``dtype`` converts on the way out.
    """
    t0 = time.perf_counter()
    target = Path(folder).expanduser().absolute()
    model = result.model
    out_dtype = dtype if dtype not in (None, "auto") else str(model.dtype).removeprefix("torch.")
    if getattr(model, "hf_quantizer", None) is not None and dtype not in (None, "auto"):
        raise SaveError("A quantized model is saved in its own format; --dtype cannot convert it.",
                        hint="Leave --dtype out.")
    _check_target(target, overwrite, reads_from)
    convert = dtype not in (None, "auto")
    _check_space(target, model, out_dtype if convert else None)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.hf_notebook-", dir=target.parent))
    try:
        writer = _Writer(model, out_dtype if convert else None, tmp, on_event)
        with _streamed(model, writer, convert), library_bars_off(), _a_core_for_hashing():  # no "Writing model shards" widget left behind
            model.save_pretrained(tmp, max_shard_size=max_shard_size or "50GB")
        if dtype not in (None, "auto"):
            _set_config_dtype(tmp, out_dtype)
        _copy_companions(result, tmp)
        files = _hashed(tmp, writer.hashes)
        source = result.pin.pinned_spec if result.pin.kind != "local" else result.pin.repo_id
        manifest = _write_manifest(tmp, files, source, out_dtype, model)
        replaced = _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return SaveResult(str(target), files, source, out_dtype, time.perf_counter() - t0, manifest, replaced,
                      name=getattr(result, "name", None))


# -- checks ----------------------------------------------------------------------------------
def _check_target(target: Path, overwrite: bool, reads_from: tuple) -> None:
    for used in reads_from:
        used = Path(used).absolute()
        if target == used or used.is_relative_to(target) or target.is_relative_to(used):
            raise SaveError(f"A loaded model reads its weights from {used}; saving into {target} would destroy them "
                            "while they are read.", hint="Save into another folder (--overwrite does not change this).")
    if target.exists() and not target.is_dir():
        raise SaveError(f"{target} is a file, not a folder.", hint="Give a folder path to save into.")
    if target.exists() and any(target.iterdir()) and not overwrite:
        raise SaveError(f"{target} already exists and is not empty.",
                        hint="Pick a new folder, or pass --overwrite to replace it once the new one is complete.")
    parent = target.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise SaveError(f"Cannot write into {parent}.", hint="Give a folder whose parent exists and is writable.")


def _check_space(target: Path, model: Any, out_dtype: Optional[str]) -> None:
    """Refuse, with the numbers, when the weights would not fit on the target's disk."""
    size = torch_dtype(out_dtype).itemsize if out_dtype else None
    need = sum(t.numel() * (size if size and t.is_floating_point() else t.element_size())
               for t in model.state_dict().values())
    free = shutil.disk_usage(target.parent).free
    if need * 1.02 + 16 * 2**20 > free:
        raise SaveError(f"Saving writes about {format_bytes(need)}, but only {format_bytes(free)} is free in "
                        f"{target.parent}.", hint="Free space there, or save to another disk.")


# -- the writer --------------------------------------------------------------------------------
class _Writer:
    """Stands in for ``safe_save_file``: streams a shard dict to a safetensors file, hashing as it goes."""

    def __init__(self, model: Any, out_dtype: Optional[str], folder: Path, on_event: OnEvent | None):
        self.model, self.folder, self.on_event = model, folder, on_event
        self.out = torch_dtype(out_dtype) if out_dtype else None  # None: every tensor keeps its dtype
        self.on_disk = disk_sources(model)  # offloaded tensor name -> where its bytes are
        self.hashes: dict[str, str] = {}  # file name -> sha256, computed while writing
        self._headers: dict[str, tuple[int, dict]] = {}
        self._maps: dict[str, mmap.mmap] = {}  # source file -> read-only mapping, hashed from (kernel copies)
        self._kernel_copy = hasattr(os, "copy_file_range")  # off after the first refusal (other file system, ...)
        self._ring: list = []
        self._next = 0
        self._spare = None

    def target_dtype(self, tensor: Any):
        return self.out if self.out is not None and tensor.is_floating_point() else tensor.dtype

    def save_file(self, tensors: dict, filename: str, metadata: Optional[dict] = None) -> None:
        from ..safetensors_io import header, order

        layout = order((name, self.target_dtype(t)) for name, t in tensors.items())
        entries = [(name, tensors[name]) for name, _ in layout]
        head, offset = header([(name, dtype, tuple(tensors[name].shape)) for name, dtype in layout], metadata)
        total, name = len(head) + offset, os.path.basename(filename)
        try:
            with open(filename, "wb", buffering=0) as f, _Hasher() as hasher:  # unbuffered: big chunks go straight out
                write_all(f, head)
                hasher.put(head, None)
                done = len(head)
                for tensor_name, tensor in entries:
                    if self._copied(f, tensor_name, tensor, hasher):
                        done += tensor.numel() * tensor.element_size()
                    else:
                        for chunk, release in self._chunks(tensor_name, tensor):
                            write_all(f, chunk)
                            hasher.put(chunk, release)
                            done += len(chunk)
                    emit(self.on_event, FileProgress(name, done, total))
        finally:
            self._unmap()
        self.hashes[name] = hasher.hexdigest

    def _buffer(self, nbytes: int) -> Any:
        """A reused chunk buffer (uint8). The ring outlasts every chunk still in flight: one being
        written, up to ``_Hasher.DEPTH`` queued, one being hashed."""
        import torch

        if not self._ring:
            self._ring = [torch.empty(CHUNK, dtype=torch.uint8) for _ in range(_Hasher.DEPTH + 3)]
        self._next = (self._next + 1) % len(self._ring)
        return self._ring[self._next][:nbytes]

    def _scratch(self, nbytes: int) -> Any:
        """One buffer for bytes that are converted before they are written (never queued)."""
        import torch

        if self._spare is None:
            self._spare = torch.empty(CHUNK, dtype=torch.uint8)
        return self._spare[:nbytes]

    def _chunks(self, name: str, tensor: Any) -> Iterator[tuple[Any, Optional[tuple[int, int]]]]:
        """The bytes of ``tensor`` in its target dtype, chunk by chunk; with each, a cpu range to give back.
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
        start, head = self._header(path)
        entry = head[info.get("weight_name", name)]
        stored = torch_dtype_of_code(entry["dtype"])
        first, last = entry["data_offsets"]
        return path, start + first, start + last, stored, self.target_dtype(tensor) if tensor.is_floating_point() \
            else stored

    def _copied(self, f: Any, name: str, tensor: Any, hasher: "_Hasher") -> bool:
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
        if tensor.device.type != "cpu" or self.target_dtype(tensor) != tensor.dtype or not tensor.is_contiguous() \
                or not tensor.numel():
            return None
        address, nbytes = tensor.data_ptr(), tensor.numel() * tensor.element_size()
        found = libc.file_region(address, nbytes)
        if found is None:
            return None
        data = memoryview(tensor.detach().reshape(-1).view(torch.uint8).numpy())
        return found[0], found[1], data, lambda at, length: _page_release(address + at, length)

    def _map(self, path: str) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def _unmap(self) -> None:
        maps, self._maps = self._maps, {}
        for mapped in maps.values():
            with contextlib.suppress(BufferError):  # a view still held elsewhere: the mapping goes with it
                mapped.close()

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

    def _header(self, path: str) -> tuple[int, dict]:
        from ..safetensors_io import read_header

        if path not in self._headers:
            self._headers[path] = read_header(path)
        return self._headers[path]


def _page_release(address: int, length: int) -> Callable[[], None]:
    """Gives back the checkpoint pages of a copied cpu chunk (refaulted if touched again)."""
    return lambda: libc.drop_clean_file_pages(address, length)


def _page_release_of_map(mapped: mmap.mmap, at: int, length: int) -> Callable[[], None]:
    """Unmaps the pages of a hashed range of a read-only mapping (they stay in the page cache)."""
    start = at - at % mmap.PAGESIZE
    return lambda: mapped.madvise(mmap.MADV_DONTNEED, start, at + length - start)


class _Hasher:
    """sha256 in a second thread: the writer hands it each chunk after writing it (bounded queue)."""

    DEPTH = 4  # chunks queued at most

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self._queue: "queue.Queue" = queue.Queue(maxsize=self.DEPTH)
        self._thread = threading.Thread(target=self._run, name="hf_notebook-sha256", daemon=True)
        self.hexdigest = ""

    def __enter__(self) -> "_Hasher":
        self._thread.start()
        return self

    def put(self, chunk: Any, release: Optional[Callable[[], None]]) -> None:
        """``chunk``: bytes already written; ``release``: called once it is hashed (pages to give back)."""
        self._queue.put((chunk, release))

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            chunk, release = item
            self._sha.update(chunk)
            if isinstance(chunk, memoryview):
                chunk.release()
            if release is not None:
                release()
            del chunk, item

    def __exit__(self, *exc) -> None:
        self._queue.put(None)
        self._thread.join()
        self.hexdigest = self._sha.hexdigest()


@contextlib.contextmanager
def _streamed(model: Any, writer: _Writer, convert: bool):
    """``save_pretrained`` with our writer, meta placeholders for offloaded weights, shards sized in the
    dtype they are written in (when converting)."""
    import warnings

    import transformers.modeling_utils as mu

    saved = {name: getattr(mu, name) for name in ("safe_save_file", "load_offloaded_parameter",
                                                  "split_torch_state_dict_into_shards")}
    split = saved["split_torch_state_dict_into_shards"]

    def placeholder(model_to_save, name):
        return _meta_like(model_to_save, name)

    def split_in_out_dtype(state_dict, **kwargs):
        import torch

        sized = {k: torch.empty(v.shape, dtype=writer.target_dtype(v), device="meta") for k, v in state_dict.items()}
        return split(sized, **kwargs)

    mu.safe_save_file = writer.save_file
    if not rewrites_weights(type(model).__name__, getattr(model.config, "model_type", "")):  # reverting fused weights needs their data: keep transformers' own loading
        mu.load_offloaded_parameter = placeholder
    if convert:
        mu.split_torch_state_dict_into_shards = split_in_out_dtype
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Attempting to save a model with offloaded modules")
            yield
    finally:
        for name, value in saved.items():
            setattr(mu, name, value)


@contextlib.contextmanager
def _a_core_for_hashing():
    """One core fewer for torch's own threads while saving: the sha256 thread runs beside the dtype
    conversion, and sharing every core with it made a bfloat16 save ~1.5x slower on 2 cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads - 1))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _meta_like(model: Any, name: str):
    import torch

    owner, _, attr = name.rpartition(".")
    tensor = getattr(model.get_submodule(owner), attr)
    return torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")


# -- the rest of the folder ----------------------------------------------------------------------
def _set_config_dtype(folder: Path, out_dtype: str) -> None:
    """``save_pretrained`` records the model's dtype; the files hold ``out_dtype``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder)
    config.dtype = out_dtype
    config.save_pretrained(folder)


def _copy_companions(result: Any, folder: Path) -> None:
    """Tokenizer files, chat template, ...: the non-weight files of the pinned snapshot that
    ``save_pretrained`` did not write. Copied from the snapshot (fetched from the pinned sha when
    missing from the cache and the Hub is reachable)."""
    for name, path in _companions(result).items():
        if not (folder / name).exists():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, folder / name)


def _companions(result: Any) -> dict[str, Path]:
    source = Path(result.source_folder) if result.source_folder else None
    found: dict[str, Path] = {}
    if result.pin.kind != "local":
        found.update(_hub_companions(result))
    elif source is not None and source.is_dir():
        for path in source.rglob("*"):
            rel = path.relative_to(source).as_posix()
            if path.is_file() and _is_companion(rel):
                found[rel] = path
    return found


def _is_companion(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not (base.endswith(WEIGHT_SUFFIXES) or base in _NOT_COPIED or base.startswith("."))


def _hub_companions(result: Any) -> dict[str, Path]:
    """The pinned snapshot's non-weight files, from the cache, downloading the missing ones if online."""
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    opts = result.options
    try:
        names = [s.rfilename for s in HfApi().model_info(result.repo_id, revision=result.sha,
                                                          token=opts.token).siblings or []]
    except (HfHubHTTPError, OSError, ValueError):
        names = []  # offline: whatever the snapshot already holds
        if result.source_folder and Path(result.source_folder).is_dir():
            names = [p.relative_to(result.source_folder).as_posix()
                     for p in Path(result.source_folder).rglob("*") if p.is_file() or p.is_symlink()]
    found = {}
    for name in names:
        if not _is_companion(name):
            continue
        try:
            found[name] = Path(hf_hub_download(result.repo_id, name, revision=result.sha, cache_dir=opts.cache_dir,
                                               token=opts.token, local_files_only=opts.offline))
        except (HfHubHTTPError, LocalEntryNotFoundError, OSError):
            continue
    return found


def _hashed(folder: Path, known: dict[str, str]) -> tuple[SavedFile, ...]:
    """Every file with its size and sha256: weights as hashed while written, small files read once."""
    files = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        digest = known.get(rel) or digest_of(path, "sha256")
        files.append(SavedFile(rel, path.stat().st_size, digest))
    return tuple(files)


def _write_manifest(folder: Path, files: tuple[SavedFile, ...], source: str, out_dtype: str, model: Any) -> str:
    import safetensors
    import torch
    import transformers

    from hf_notebook import __version__

    manifest = {
        "format": "hf_notebook.manifest/1",
        "source": source,
        "dtype": out_dtype,
        "model_class": type(model).__name__,
        "versions": {"hf_notebook": __version__, "transformers": transformers.__version__,
                     "torch": torch.__version__.split("+")[0], "safetensors": safetensors.__version__},
        "files": {f.name: {"size": f.size, "sha256": f.sha256} for f in files},
    }
    quant = getattr(model.config, "quantization_config", None)
    if quant is not None:
        manifest["quantization_config"] = quant if isinstance(quant, dict) else quant.to_dict()
    text = json.dumps(manifest, indent=1, sort_keys=True) + "\n"
    (folder / MANIFEST).write_text(text)
    return hashlib.sha256(text.encode()).hexdigest()


def _swap_in(tmp: Path, target: Path) -> bool:
    """Rename the finished folder into place; an existing target goes only after the new one is there."""
    if not target.exists():
        os.rename(tmp, target)
        return False
    old = target.parent / f".{target.name}.hf_notebook-old-{os.getpid()}"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return True


def parse_shard_size(text: Any) -> Optional[int]:
    """``--max-shard-size 2GB`` -> bytes (None: transformers' default)."""
    if text in (None, ""):
        return None
    from ..units import parse_size

    try:
        return parse_size(str(text))
    except OptionError:
        raise OptionError(f"Cannot read --max-shard-size {text!r}.", hint="Give a size such as 500MB or 5GB.") from None
