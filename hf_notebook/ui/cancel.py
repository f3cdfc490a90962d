"""A Cancel button that works while the cell runs: its clicks are handled on a kernel subshell.

A running cell holds the kernel's main shell, so a widget's click would wait until the load is over. ipykernel 7
runs subshells (JEP 91) on threads of their own and routes a comm's messages to the subshell its last message
came from; the button's comm is pointed at a subshell made for it, so a click is handled at once, on that
thread, and interrupts the main thread as Ctrl-C does (``_thread.interrupt_main``): the load stops the way a
Ctrl-C stops it and ends in the same one-line record. Where the kernel has no subshells (older ipykernel, other
kernels) there is no button: the kernel's interrupt (the stop button, I I) does the same.
"""

from __future__ import annotations

import _thread
import concurrent.futures
import threading
from typing import Any, Optional

import ipywidgets as W


class CancelButton:
    """``widget`` (a Button, or None where a click cannot reach a running cell); armed from :meth:`arm` until
    :meth:`disarm`, a click interrupts the main thread once."""

    def __init__(self, tooltip: str = "stop the load, as Ctrl-C or the kernel's interrupt would"):
        self._lock = threading.Lock()
        self._armed = False
        self.clicked = False
        self._kernel, self._subshell = None, None
        self.widget: Optional[W.Button] = None
        kernel = _kernel_with_subshells()
        if kernel is None:
            return
        try:
            subshell = _on_shell_thread(kernel, kernel.shell_channel_thread.manager._create_subshell)
        except Exception:  # noqa: BLE001 - a kernel that cannot make one: no button, the interrupt still works
            return
        self._kernel, self._subshell = kernel, subshell
        self.widget = W.Button(description="Cancel", icon="stop", tooltip=tooltip,
                               layout=W.Layout(width="auto"))
        self.widget.comm._reply_subshell_id = subshell  # the front end's clicks go to the subshell's thread
        self.widget.on_click(self._click)

    def arm(self) -> None:
        with self._lock:
            self._armed = True

    def disarm(self) -> None:
        """No click interrupts anything after this (the work is past the point where a cancel is clean)."""
        with self._lock:
            self._armed = False
        if self.widget is not None:
            self.widget.disabled = True

    def close(self) -> None:
        """Disarm, close the button and end its subshell."""
        self.disarm()
        if self.widget is not None:
            self.widget.close()
        if self._subshell is not None:
            manager = self._kernel.shell_channel_thread.manager
            subshell, self._subshell = self._subshell, None
            self._kernel.shell_channel_thread.io_loop.add_callback(manager._delete_subshell, subshell)

    def _click(self, _button: Any = None) -> None:
        with self._lock:  # held while interrupting: disarm() cannot slip between the check and the interrupt
            if not self._armed:
                return
            self._armed = False
            self.clicked = True
            _thread.interrupt_main()
        if self.widget is not None:
            self.widget.description, self.widget.disabled = "Cancelling", True


def _kernel_with_subshells() -> Any:
    """The running ipykernel when it runs subshells on threads (ipykernel 7), else None."""
    try:
        from ipykernel.kernelbase import Kernel
    except ImportError:
        return None
    if not Kernel.initialized():
        return None
    kernel = Kernel.instance()
    if not getattr(kernel, "_supports_kernel_subshells", False):
        return None
    thread = getattr(kernel, "shell_channel_thread", None)
    return kernel if thread is not None and hasattr(thread, "manager") else None


def _on_shell_thread(kernel: Any, function: Any, timeout: float = 5.0) -> Any:
    """``function()`` run on the kernel's shell channel thread (where subshells are made), its result here."""
    done: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        try:
            done.set_result(function())
        except BaseException as exc:  # noqa: BLE001 - handed back to the caller
            done.set_exception(exc)

    kernel.shell_channel_thread.io_loop.add_callback(run)
    return done.result(timeout=timeout)
