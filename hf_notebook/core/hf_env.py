"""The HF environment variables as they are now, with huggingface_hub made to follow them.

huggingface_hub reads ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and the rest once, at its import,
which a kernel's first load (or ``%load_ext``'s background import) may do before a notebook's first
cells set them. hf_xet reads ``HF_HOME`` at each call: a cache moved after the import would otherwise be
split between two folders. :func:`hub_offline` is called at the start of every action; it sets
huggingface_hub's public settings from the variables, worked out as huggingface_hub works them out at its
import (defaults included): what a fresh process would use. The variables win over a value a program set
in ``huggingface_hub.constants``: set the variable instead.
"""

from __future__ import annotations

import os

_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether the Hub is off now: ``HF_HUB_OFFLINE``, or when that is unset ``TRANSFORMERS_OFFLINE``, as
    huggingface_hub reads them. huggingface_hub (and transformers, which asks it) follows, as it follows the
    cache folders (:func:`follow_cache_variables`). A user who sets it and later unsets it is online again."""
    from huggingface_hub import constants

    follow_cache_variables()
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    offline = value.strip().upper() in _TRUE
    constants.HF_HUB_OFFLINE = offline  # a public setting of huggingface_hub's, read at each of its requests
    return offline


def follow_cache_variables() -> None:
    """Point huggingface_hub's folders (its home, the Hub, assets and Xet caches, the token file) where the
    variables set now say."""
    from huggingface_hub import constants

    home = _path("HF_HOME") or _expand(os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache")),
                                                    "huggingface"))
    folders = {"HF_HOME": home}
    for name, legacy, under_home in (("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "hub"),
                                     ("HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "assets"),
                                     ("HF_XET_CACHE", None, "xet"),
                                     ("HF_TOKEN_PATH", None, "token")):
        folders[name] = _path(name) or (_path(legacy) if legacy else None) or os.path.join(home, under_home)
    folders["HF_STORED_TOKENS_PATH"] = os.path.join(os.path.dirname(folders["HF_TOKEN_PATH"]), "stored_tokens")
    for name, value in folders.items():
        if getattr(constants, name, None) != value:
            setattr(constants, name, value)


def _path(variable: str):
    value = os.environ.get(variable)
    return _expand(value) if value else None


def _expand(value: str) -> str:
    return os.path.expandvars(os.path.expanduser(value))
