"""The HF environment variables as they are now, with huggingface_hub made to follow them.

huggingface_hub reads ``HF_HOME``, ``HF_HUB_CACHE``, ``HF_HUB_OFFLINE`` and the rest once, at its import,
which a kernel's first load (or ``%load_ext``'s background import) may do before a notebook's first
cells set them. hf_xet reads ``HF_HOME`` at each call: a cache moved after the import would otherwise be
split between two folders. :func:`hub_offline` is called at the start of every action; it sets
huggingface_hub's public settings from the variables, as a fresh process would read them.
"""

from __future__ import annotations

import os

_TRUE = ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set now; huggingface_hub (and transformers,
    which asks it) follows, as it follows the cache folders (:func:`follow_cache_variables`). A user who sets
    it and later unsets it is online again."""
    from huggingface_hub import constants

    follow_cache_variables()
    offline = any(_true(v) for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    constants.HF_HUB_OFFLINE = offline  # a public setting of huggingface_hub's, read at each of its requests
    return offline


def follow_cache_variables() -> None:
    """Point huggingface_hub's folders (the Hub cache, the Xet cache, the token file) where the variables set
    now say, worked out as huggingface_hub does at import. A folder no variable names is left as it is (its
    default, or a value a program set)."""
    from huggingface_hub import constants

    home = _path("HF_HOME")
    for name, legacy, under_home in (("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "hub"),
                                     ("HF_ASSETS_CACHE", "HUGGINGFACE_ASSETS_CACHE", "assets"),
                                     ("HF_XET_CACHE", None, "xet"),
                                     ("HF_TOKEN_PATH", None, "token")):
        value = _path(name) or (_path(legacy) if legacy else None) or (os.path.join(home, under_home) if home else None)
        if value is not None and getattr(constants, name, None) != value:
            setattr(constants, name, value)
            if name == "HF_TOKEN_PATH":
                constants.HF_STORED_TOKENS_PATH = os.path.join(os.path.dirname(value), "stored_tokens")
    if home is not None:
        constants.HF_HOME = home


def _true(variable: str) -> bool:
    return (os.environ.get(variable) or "").strip().upper() in _TRUE


def _path(variable: str):
    value = os.environ.get(variable)
    return os.path.expandvars(os.path.expanduser(value)) if value else None
