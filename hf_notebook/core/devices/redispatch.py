"""Re-dispatch a loaded model in place onto a new device map: nothing is downloaded again.

The model's accelerate hooks come off; every tensor then goes where the new map puts it:
- between cpu and GPUs: moved;
- to disk: replaced by a meta tensor, so its memory goes back to the system, and read from
  disk when its module runs. A tensor still mapped from its checkpoint (loaded in place,
  unchanged) is read there, as ``from_pretrained`` offloads; any other is written to the
  model's own offload folder as transformers writes offloaded weights (one safetensors file per
  tensor, indexed by absolute path), a few files at once, each tensor's memory freed once its file is;
- from disk: a checkpoint's tensor is mapped again, as a load maps it; one of the offload
  folder is read into fresh memory (only its own bytes, a big one in parts side by side), and
  its file removed.
The offload folder is the model's own: made by us for it (``owned.own_folder``), inside the user's
offload folder, so that models sharing that folder never write, or remove, each other's files (nor a
user's). A file is only ever created new (an existing one is refused, never overwritten), and only files
this model's moves (or its load) wrote there are removed.
Tensors already on disk that stay there are not touched. Then accelerate's
own ``dispatch_model`` attaches the hooks for the new map, exactly as ``from_pretrained`` does
at the end of a load (same hooks, same ``hf_device_map``). Buffers stay resident on the
device that runs their module, as ``from_pretrained`` keeps them (``offload_buffers=False``).
"""

from __future__ import annotations

import gc
import os
import tempfile
import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

from .. import libc
from ..errors import DeviceError, LoadError, OffloadConflictError
from ..io_threads import InOrder
from ..quiet import only_errors_from
from ..owned import own_folder, remove_own, remove_with
from ..units import Device, device_name, disk_needed, disk_shortfall, parse_device
from .machine import free_bytes
from .offloaded import disk_sources
from .plan import check_devices_exist


@dataclass(frozen=True)
class Moved:
    """What a re-dispatch did: bytes per (from, to) device pair, written and read from disk, time."""

    moves: dict[tuple[str, str], int] = field(default_factory=dict)
    written: int = 0  # bytes written to the offload folder
    read: int = 0  # bytes brought back from disk (mapped from a checkpoint, or read from an offload file)
    seconds: float = 0.0
    offload_folder: Optional[str] = None
    made_folder: bool = False  # the folder was created for this move (the project owns it)

    @property
    def nbytes(self) -> int:
        return sum(self.moves.values())


def redispatch(model: Any, device_map: Mapping[str, Any], *, offload_folder: Optional[str] = None,
               within: Optional[str] = None, label: Optional[str] = None,
               main_device: Optional[Device] = None) -> Moved:
    """Place ``model``'s tensors as ``device_map`` says, in place; see the module docstring.

    ``offload_folder`` is the model's own folder for tensors sent to disk (what its files there are,
    this model's moves or its load wrote). When None and the map needs one, a new folder of ours is
    made (named after ``label``) inside ``within`` (the user's offload folder, shared by any number of
    models) or the system's temporary folder. A map naming devices this machine lacks, or one that leaves a
    weight unplaced, or more bytes for disk than the folder's disk has free, is refused before
    anything moves. If a move fails midway (an error, Ctrl-C), every tensor is put back where it
    was and the old hooks are attached again, then the error is raised.
    """
    t0 = time.perf_counter()
    move = _Move(model, device_map, main_device)
    move.check(offload_folder or within)
    made = False
    if move.needs_folder and offload_folder is None:
        offload_folder, made = own_folder(within, label), True
    elif offload_folder is not None:
        os.makedirs(offload_folder, exist_ok=True)
    try:
        move.run(offload_folder)
    except BaseException:
        move.put_back()
        if made:
            remove_own(offload_folder)
        raise
    move.tidy(offload_folder)
    if made:
        remove_with(model, offload_folder)
    return Moved(move.moves, move.written, move.read, time.perf_counter() - t0, offload_folder, made)


class _Move:
    """One re-dispatch: the tensors, where each is and goes, and how to put everything back."""

    def __init__(self, model: Any, device_map: Mapping[str, Any], main_device: Optional[Device]):
        self.model = model
        self.new_map = {str(k): parse_device(v) for k, v in device_map.items()}
        self.old_map = dict(getattr(model, "hf_device_map", None) or {"": _device_of(model)})
        gpus = sorted(d for d in set(self.new_map.values()) if isinstance(d, int))
        self.main = main_device if main_device is not None else (gpus[0] if gpus else "cpu")
        self.tied = _ties(model)  # tied parameter -> the parameter it shares (moved once, then re-tied)
        self.on_disk = disk_sources(model)  # tensor name -> index entry, read while the hooks are on
        keys = sorted(self.new_map, key=lambda k: (k.count(".") + bool(k), len(k)), reverse=True)
        self.plan = []  # (name, is_param, target device or "disk")
        for name, tensor, is_param in _tensors(model):
            if name in self.tied:
                continue
            target = self.new_map[_owner(name, keys)]
            self.plan.append((name, is_param, target if target != "disk" or is_param else self.main))
        self.in_place = _in_checkpoints(model, [n for n, _, t in self.plan if t == "disk" and n not in self.on_disk])
        self.moves: dict[tuple[str, str], int] = {}
        self.index: dict[str, dict] = {}  # the new disk index
        self.done: list[tuple[str, Any]] = []  # (name, device it was on) for each tensor moved so far
        self.left_cpu: list[tuple[int, int]] = []  # (address, bytes) of cpu tensors moved away
        self.written = self.read = 0
        self.files: list[str] = []  # offload files this move wrote (each one created new)
        self._checkpoints: dict[str, Any] = {}  # checkpoint file -> its safe_open handle, while moving

    @property
    def needs_folder(self) -> bool:
        return any(t == "disk" and n not in self.on_disk and n not in self.in_place for n, _, t in self.plan)

    def check(self, folder: Optional[str]) -> None:
        """Everything that can be known before a byte moves."""
        from accelerate.utils import check_device_map

        check_devices_exist(self.new_map)
        try:
            check_device_map(self.model, self.new_map)
        except ValueError as exc:
            raise DeviceError(f"The device map does not place every weight: {exc}",
                              hint="Map every module (or a module holding it) to a device.") from None
        tensors = {n: t for n, t, _ in _tensors(self.model)}
        for name, _, target in self.plan:
            was_disk = name in self.on_disk
            if (target == "disk") != was_disk and _is_quantized(tensors[name]):
                raise DeviceError(f"{name} is a quantized weight ({type(tensors[name]).__name__}): it can move between "
                                  "cpu and GPUs, but not to or from disk.",
                                  hint="Keep the quantized modules on cpu or a GPU; offload only unquantized ones.")
        sizes = {n: t.numel() * t.element_size() for n, t in tensors.items()}
        need = sum(sizes[n] for n, _, t in self.plan
                   if t == "disk" and n not in self.on_disk and n not in self.in_place)
        free = free_bytes("disk", folder)
        if need and disk_needed(need) > free:
            raise DeviceError(disk_shortfall("Moving these modules to disk", need, free,
                                             folder or tempfile.gettempdir()),
                              hint="Free space there, or pass another offload folder, or keep more on cpu.")

    def run(self, folder: Optional[str]) -> None:
        import torch
        from accelerate.hooks import remove_hook_from_submodules

        remove_hook_from_submodules(self.model)  # cpu-offloaded weights come back to cpu here
        tensors = {n: t for n, t, _ in _tensors(self.model)}

        def written(item: tuple[str, Any], entry: dict) -> None:  # its file is complete: it leaves memory
            name, tensor = item
            self.index[name] = entry
            self._to_disk(name, tensor)
            self.written += tensor.numel() * tensor.element_size()
            tensors.pop(name)  # its memory goes back now, while the next files are written

        def write(item: tuple[str, Any]) -> dict:  # in an I/O thread
            entry = _write(*item, folder)
            self.files.append(entry["safetensors_file"])  # a file of ours: put_back may remove it
            return entry

        with InOrder(write, written) as writes:  # a few files at once
            for name, is_param, target in self.plan:
                tensor, info = tensors[name], self.on_disk.get(name)
                nbytes = tensor.numel() * tensor.element_size()
                if target == "disk":
                    if info is not None:
                        self.index[name] = info  # already on disk: read in place, as before
                    elif name in self.in_place:  # its checkpoint holds these very bytes: read there, as a load does
                        self.index[name] = self.in_place[name]
                        self._to_disk(name, tensor)
                    else:
                        writes.add((name, tensor))
                        if tensor.device.type != "cpu":
                            writes.finish()  # its host copy lives while it is written: one at a time
                    continue
                here = torch.device("cuda", target) if isinstance(target, int) else torch.device(target)
                if info is not None:
                    self.done.append((name, "disk"))  # first: whatever happens next, put_back knows of it
                    _set(self.model, name, here, self._bring(info, here, folder))
                    self.read += nbytes
                    self._count("disk", device_name(here), nbytes)
                elif tensor.device.type == "meta":
                    raise LoadError(f"{name} is on the meta device and no offload hook says where its data is.",
                                    hint="Reload the model; it cannot be re-dispatched.")
                elif tensor.device != here:
                    self.done.append((name, tensor.device))
                    self._count(device_name(tensor.device), device_name(here), nbytes)
                    self._leaving(tensor)
                    _set(self.model, name, here)
        tensors.clear()  # the moved tensors go now
        self._checkpoints.clear()  # the tensors keep their mapping; the handles are not needed
        _retie(self.model, self.tied)
        self.index.update({t: self.index[s] for t, s in self.tied.items() if s in self.index})
        self._dispatch(self.new_map, self.index, folder)

    def put_back(self) -> None:
        """Undo the tensors moved so far and attach the old hooks again."""
        from accelerate.hooks import remove_hook_from_submodules

        remove_hook_from_submodules(self.model)
        for name, was in reversed(self.done):
            if was == "disk":
                _set(self.model, name, "meta")
            elif name in self.index and name not in self.on_disk:
                _set(self.model, name, was, _read(self.index[name], was))
            else:
                _set(self.model, name, was)
        for path in self.files:  # every file this move wrote (never a checkpoint, nor a file it did not create)
            Path(path).unlink(missing_ok=True)
        _retie(self.model, self.tied)
        old_index = {n: info for n, info in self.on_disk.items()}
        folder = next((os.path.dirname(i.get("safetensors_file") or i.get("dat_file")) for i in old_index.values()), None)
        self._dispatch(self.old_map, old_index, folder)

    def _dispatch(self, device_map: dict, index: dict, folder: Optional[str]) -> None:
        from accelerate import dispatch_model

        with only_errors_from("accelerate.big_modeling", "accelerate.utils.modeling"):
            dispatch_model(self.model, device_map, main_device=self.main if device_map is self.new_map else None,
                           offload_dir=folder if index else None, offload_index=index or None,
                           skip_keys=getattr(self.model, "_skip_keys_device_placement", None))
        _retie(self.model, self.tied)  # offload hooks replace parameters: share them again, as a load leaves them

    def _bring(self, info: dict, device: Any, folder: Optional[str]) -> Any:
        """An offloaded tensor, on ``device``. A checkpoint's bytes are mapped as a load maps them
        (read when touched; still the checkpoint's, so a later move to disk writes nothing); a file
        of the offload folder is read into fresh memory, since it is deleted next."""
        path = info.get("safetensors_file")
        if not path or (folder is not None and os.path.dirname(path) == os.path.abspath(folder)):
            return _read(info, device)
        from safetensors import safe_open

        if path not in self._checkpoints:
            self._checkpoints[path] = safe_open(path, framework="pt")  # one mapping per file, shared
        tensor = self._checkpoints[path].get_tensor(info.get("weight_name"))
        if info.get("dtype"):
            import torch

            tensor = tensor.to(getattr(torch, info["dtype"]))  # no copy when it is stored so
        return tensor.to(device)

    def _to_disk(self, name: str, tensor: Any) -> None:
        """``tensor`` is readable from the disk index now: a meta tensor takes its place."""
        self.done.append((name, tensor.device))  # first: whatever happens next, put_back knows of it
        self._count(device_name(tensor.device), "disk", tensor.numel() * tensor.element_size())
        self._leaving(tensor)
        _set(self.model, name, "meta")

    def _leaving(self, tensor: Any) -> None:
        if tensor.device.type == "cpu":
            self.left_cpu.append((tensor.data_ptr(), tensor.numel() * tensor.element_size()))

    def tidy(self, folder: Optional[str]) -> None:
        """After a complete move: remove the files of tensors that left the disk (a Ctrl-C waits for that: a file
        left there would refuse that weight's next move to disk), then give memory back, which a Ctrl-C stops
        (the move is done, and stays done)."""
        from ..quiet import interrupts_held

        with interrupts_held() as held:
            _drop_stale_files(folder, self.on_disk, self.index)
        if held:
            return
        try:
            self.release()
        except KeyboardInterrupt:
            pass

    def release(self) -> None:
        """Give the memory of tensors that left the cpu back to the system. Tensors a load mapped from
        the checkpoint stay mapped while any tensor of their shard lives: drop their clean pages."""
        gc.collect(1)  # young objects only: the moved tensors have no cycles; a full pass costs ~0.2 s with torch
        libc.malloc_trim()
        for address, nbytes in self.left_cpu:
            libc.drop_clean_file_pages(address, nbytes)

    def _count(self, source: str, target: str, nbytes: int) -> None:
        self.moves[(source, target)] = self.moves.get((source, target), 0) + nbytes


def _tensors(model: Any) -> list[tuple[str, Any, bool]]:
    """(name, tensor, is parameter) for every parameter (tied ones once) and buffer."""
    found = [(n, t, True) for n, t in model.named_parameters()]
    return found + [(n, t, False) for n, t in model.named_buffers() if t is not None]


def _is_quantized(tensor: Any) -> bool:
    """A bitsandbytes weight (with its quantization state) or a quantized tensor subclass (torchao)."""
    from .placement import _inner_tensors, _quantization_state

    return bool(_quantization_state(tensor)) or _inner_tensors(tensor) is not None


def _ties(model: Any) -> dict[str, str]:
    """Tied parameter -> the parameter it shares: the model's declared ties and any other shared ones."""
    from accelerate.utils import find_tied_parameters

    ties = dict(getattr(model, "all_tied_weights_keys", None) or {})
    for group in find_tied_parameters(model):
        source = next((n for n in group if n not in ties), group[0])
        ties.update({n: source for n in group if n != source and n not in ties})
    params = dict(model.named_parameters(remove_duplicate=False))
    return {t: s for t, s in ties.items() if t in params and s in params}


def _retie(model: Any, ties: Mapping[str, str]) -> None:
    """Make each tied parameter the very object of its source again."""
    for target, source in ties.items():
        owner, _, attr = target.rpartition(".")
        setattr(model.get_submodule(owner), attr, model.get_parameter(source))


def _device_of(model: Any) -> Device:
    first = next((t for _, t, _ in _tensors(model)), None)
    return parse_device(first.device) if first is not None else "cpu"


def _owner(name: str, keys: list[str]) -> str:
    """The most specific map key that is ``name`` or holds it (``keys`` sorted most specific first)."""
    return next(k for k in keys if k == "" or name == k or name.startswith(k + "."))


def _in_checkpoints(model: Any, names: list[str]) -> dict[str, dict]:
    """Index entries that read these cpu tensors in place: each one whose memory is still the unchanged
    mapping of a safetensors checkpoint (loaded in place, not written since). Others are written."""
    from ..libc import file_regions
    from ..safetensors_io import name_at

    tensors = {n: t for n, t, _ in _tensors(model)}
    names = [n for n in names if tensors[n].device.type == "cpu" and tensors[n].is_contiguous() and tensors[n].numel()]
    regions = file_regions([(tensors[n].data_ptr(), tensors[n].numel() * tensors[n].element_size()) for n in names])
    found, headers = {}, {}
    for name, region in zip(names, regions):
        tensor = tensors[name]
        stored = name_at(region[0], region[1], tensor, headers) if region else None
        if stored is not None:
            found[name] = {"safetensors_file": region[0], "weight_name": stored,
                           "dtype": str(tensor.dtype).removeprefix("torch.")}
    return found


def _read(info: dict, device) -> Any:
    """One offloaded tensor, read from its file into fresh memory on ``device`` (only its own bytes)."""
    import torch

    if info.get("safetensors_file"):
        from ..safetensors_io import read_tensor

        tensor = read_tensor(info["safetensors_file"], info.get("weight_name"))
        if info.get("dtype"):
            tensor = tensor.to(getattr(torch, info["dtype"]))
    else:
        from accelerate.utils import load_offloaded_weight

        tensor = load_offloaded_weight(info["dat_file"], info)
    return tensor.to(device)


def _write(name: str, tensor: Any, folder: str) -> dict:
    """Write ``tensor`` to ``folder`` as transformers writes offloaded weights (one safetensors file per
    tensor, indexed by absolute path); its index entry. Runs in an I/O thread: touches no module.
    The file is created new: one already there is refused (:class:`OffloadConflictError`), untouched.
    A file it could not finish is removed."""
    from ..safetensors_io import write_file

    path = _offload_path(folder, name)
    try:
        write_file(path, {name: tensor.detach().to("cpu")}, exclusive=True)
    except FileExistsError:
        raise OffloadConflictError(
            f"{path} already exists: the weight {name} would be written there, and hf_notebook never overwrites "
            "a file this move did not write. Nothing was moved.",
            hint="Move that file elsewhere (or remove it if it is a leftover), or give the model another offload "
            "folder, then run the edit again.", path=path) from None
    except BaseException:
        Path(path).unlink(missing_ok=True)
        raise
    return {"safetensors_file": path, "weight_name": name, "dtype": str(tensor.dtype).removeprefix("torch.")}


def _offload_path(folder: str, name: str) -> str:
    return os.path.join(os.path.abspath(folder), f"{name}.safetensors")


def _set(model: Any, name: str, device, value: Any = None) -> None:
    from accelerate.utils import set_module_tensor_to_device

    set_module_tensor_to_device(model, name, device, value=value)


def _drop_stale_files(folder: Optional[str], before: Mapping[str, dict], after: Mapping[str, dict]) -> None:
    """Remove the per-tensor files this folder holds for tensors that left the disk (checkpoints are never touched)."""
    if folder is None:
        return
    kept = {info.get("safetensors_file") for info in after.values()}
    for name, info in before.items():
        path = info.get("safetensors_file") or ""
        if name not in after and path not in kept and os.path.dirname(path) == os.path.abspath(folder) \
                and os.path.basename(path) == f"{name}.safetensors":
            try:
                os.unlink(path)
            except OSError:
                pass
