"""A model folder's manifest (``hf_notebook.manifest.json``, written by ``%save_model`` and ``%export_model``):
every file with its size and sha256. ``verify_folder`` checks a folder against it before a load or a push: the
folder is exactly its manifest, sizes always, hashes once per file identity (remembered, so the next load is as
fast as a plain local load).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Optional

from .errors import BundleError
from .integrity import MANIFEST, digest_of


def verify_folder(folder: Path, memo: Any = None, action: str = "loaded", required: bool = False) -> Optional[dict]:
    """Check ``folder`` against its manifest (``None`` when it has none and none is ``required``); return
    the manifest. Raises :class:`BundleError` naming the first file that is missing, of another size, or
    changed; ``action`` is what did not happen then (``loaded``, ``pushed``)."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        if not required:
            return None
        if any(folder.glob("models--*/snapshots")):
            raise BundleError(f"{folder} is a Hub cache (an hf-cache bundle), not a model folder.",
                              hint=f"Load it as a cache: HF_HUB_CACHE={folder} HF_HUB_OFFLINE=1, then %load_model "
                                   "org/name@<sha> --offline (its BUNDLE.md names the model).")
        raise BundleError(f"{folder} has no {MANIFEST}: nothing says its files are the ones that were saved.",
                          hint="If you trust the folder as it is (save_pretrained writes none), load it with "
                               "--no-verify (Python: no_verify=True); the record then says unverified. "
                               "%save_model and %export_model write folders with a manifest.")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        raise BundleError(f"{manifest_path} cannot be read.", hint="Export or save the folder again.") from None
    if isinstance(manifest, dict) and manifest.get("layout") == "hf-cache":
        raise BundleError(f"{folder} is an hf-cache bundle of {manifest.get('source')}, not a model folder.",
                          hint=f"Load it as a cache: HF_HUB_CACHE={folder} HF_HUB_OFFLINE=1, then "
                               f"%load_model {manifest.get('source')} --offline.")
    _check_entries(folder, files, action)
    if memo is None:
        from .integrity import default_memo

        memo = default_memo()
    for name, facts in sorted(files.items()):
        path = folder / name
        try:
            st = path.stat()
        except OSError:
            raise BundleError(f"{name} is missing from {folder} (its manifest lists it).",
                              hint=f"Copy the whole folder again; nothing was {action}.") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would hang the hash, a folder fail it
            raise BundleError(f"{name} in {folder} is not a regular file (its manifest lists a file).",
                              hint=f"Copy the folder again; nothing was {action}.")
        if st.st_size != facts["size"]:
            raise BundleError(f"{name} in {folder} has {st.st_size} bytes, but the manifest says {facts['size']}: "
                              "it is truncated or changed.", hint=f"Copy the folder again; nothing was {action}.")
        identity = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, facts["sha256"]]
        real = Path(os.path.realpath(path))
        if memo.knows(real, identity):
            continue
        digest = digest_of(path, "sha256")
        if digest != facts["sha256"]:
            raise BundleError(f"{name} in {folder} is not the file the manifest lists (sha256 {digest[:12]}…, "
                              f"expected {facts['sha256'][:12]}…): it was changed.",
                              hint=f"Copy the folder again from its source (or save it again); nothing was {action}.")
        memo.add(real, identity)
    return manifest


_SHA256_HEX = frozenset("0123456789abcdef")
_UNCHECKED = ("README", "LICENSE", "BUNDLE.md", ".gitattributes", MANIFEST)  # documents nothing loads


def _check_entries(folder: Path, files: Any, action: str) -> None:
    """A verified folder is exactly its manifest: every entry a relative path inside the folder with a size and a
    sha256, config and weights listed, and no file beside them that a load could read unchecked."""
    again = f"Export or save the folder again; nothing was {action}."
    if not isinstance(files, dict) or not files:
        raise BundleError(f"The manifest of {folder} lists no files.", hint=again)
    for name, facts in files.items():
        parts = Path(name).parts if isinstance(name, str) else ()
        if not parts or Path(name).is_absolute() or ".." in parts or "\\" in name or name.startswith("/"):
            raise BundleError(f"The manifest of {folder} names {name!r}, which is not a path inside the folder.",
                              hint=again)
        if not (isinstance(facts, dict) and isinstance(facts.get("size"), int) and facts["size"] >= 0
                and isinstance(facts.get("sha256"), str) and len(facts["sha256"]) == 64
                and set(facts["sha256"]) <= _SHA256_HEX):
            raise BundleError(f"The manifest of {folder} has no valid size and sha256 for {name!r}.", hint=again)
    if "config.json" not in files or not any(n.endswith((".safetensors", ".bin")) for n in files):
        raise BundleError(f"The manifest of {folder} does not list its config and weights.", hint=again)
    for path in sorted(p for p in folder.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(folder).as_posix()
        if rel not in files and not path.name.startswith(_UNCHECKED):
            raise BundleError(f"{rel} is in {folder} but not in its manifest: a load would read it unchecked.",
                              hint=f"Remove it (it was added after the folder was written), or save or export the "
                              f"folder again; nothing was {action}.")
