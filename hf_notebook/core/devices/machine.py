"""What this machine offers a model: its devices and the bytes free on each, read when asked."""

from __future__ import annotations

import shutil
import tempfile
from typing import Optional

from ..folders import nearest_existing


def devices_here() -> list[str]:
    """Device labels of this machine: each GPU (``cuda:N``), ``cpu`` and ``disk``."""
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] + ["cpu", "disk"]


def free_bytes(device: str, folder: Optional[str] = None) -> int:
    """Bytes free now: GPU memory, available RAM, or disk space where ``folder`` (else the temp folder) lies."""
    if device.startswith("cuda:"):
        import torch

        return int(torch.cuda.mem_get_info(int(device.split(":")[1]))[0])
    if device == "cpu":
        import psutil

        return int(psutil.virtual_memory().available)
    return int(shutil.disk_usage(nearest_existing(folder or tempfile.gettempdir())).free)
