"""A tiny attention kernel repo, laid out as the ``kernels`` library builds them for the Hub.

Its one build, ``build/torch-cpu/``, is pure Python: ``flash_attn_forward`` (the entry point transformers
takes from an attention kernel that brings its own) counts its calls (``calls``) and hands them to
transformers' own SDPA attention, so a model that loads with it gives the same logits as with
``sdpa``, and a test can tell that the kernel ran.
"""

from __future__ import annotations

import json

VARIANT = "torch-cpu"

_INIT = '''"""Counting attention: transformers' SDPA attention, with a call counter."""

from transformers.integrations.sdpa_attention import sdpa_attention_forward

calls = [0]
MARK = {mark!r}


def supports_flash_attn(*args, **kwargs):
    return True


def flash_attn_forward(module, query, key, value, attention_mask, **kwargs):
    calls[0] += 1
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
'''


def attention_kernel_files(name: str = "counting-attn", mark: str = "v1") -> dict[str, bytes]:
    """The files of a kernel repo ``name`` whose package (``name`` with ``_``) exposes ``flash_attn_forward``
    (``mark`` changes its bytes)."""
    package = name.replace("-", "_")
    metadata = {"name": name, "id": f"{package}_{mark}", "version": 1, "license": "apache-2.0",
                "python-depends": [], "backend": {"type": "cpu"}}
    build = f"build/{VARIANT}"
    return {
        f"{build}/metadata.json": (json.dumps(metadata, indent=1) + "\n").encode(),
        f"{build}/{package}/__init__.py": _INIT.format(mark=mark).encode(),
        "README.md": f"# {name}\n\nA test attention kernel (SDPA with a call counter).\n".encode(),
    }
