"""The load panel's Cancel button in a real kernel: a click reaches the running cell (through a kernel subshell)
and stops the load as Ctrl-C does."""

import os
import queue
import time

import pytest

jupyter_client = pytest.importorskip("jupyter_client")


@pytest.fixture
def kernel(tmp_path, hf_cache):
    from jupyter_client.manager import start_new_kernel

    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path), env={**os.environ})
    yield kc
    kc.stop_channels()
    km.shutdown_kernel(now=True)


def _run(kc, code, *, on_message=None, timeout=60):
    """Execute ``code``; return (stream text, error lines); ``on_message(msg)`` sees every iopub message."""
    msg_id = kc.execute(code)
    text, errors, t0 = [], [], time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            msg = kc.get_iopub_msg(timeout=0.2)
        except queue.Empty:
            continue
        if on_message is not None:
            on_message(msg)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            text.append(content["text"])
        elif kind == "error":
            errors += content["traceback"]
        elif kind in ("display_data", "update_display_data", "execute_result"):
            text.append(content["data"].get("text/plain", ""))
        elif kind == "status" and content["execution_state"] == "idle":
            return "".join(text), errors
    raise AssertionError(f"{code!r} did not finish in {timeout} s")


def test_the_cancel_button_stops_a_running_load(kernel, hub_server, tiny_hub):
    """A throttled download (over 10 s: 10 kB/s a connection, 4 at once); Cancel clicked once the panel is shown
    and drawing: the cell ends at once with the one-line cancelled record, binds nothing, and the kernel keeps no
    subshell for the button."""
    _run(kernel, "%load_ext hf_notebook")
    hub_server.throttle_bytes_per_s = 10_000
    clicked = {}

    def click(msg):
        content = msg["content"]
        if msg["msg_type"] == "comm_open" and content.get("target_name") == "jupyter.widget":
            state = content["data"]["state"]
            if state.get("_model_name") == "ButtonModel" and state.get("description") == "Cancel":
                clicked["comm"] = content["comm_id"]
        if "comm" in clicked and msg["msg_type"] == "display_data":
            clicked["shown"] = True  # the panel is on the page: from now on its button is armed
        if clicked.get("shown") and "at" not in clicked and msg["msg_type"] == "comm_msg":
            clicked["at"] = time.monotonic()  # the panel is drawing progress: the load is under way
            kernel.shell_channel.send(kernel.session.msg("comm_msg", {
                "comm_id": clicked["comm"], "data": {"method": "custom", "content": {"event": "click"}}}))

    t0 = time.monotonic()
    _, errors = _run(kernel, "%load_model tiny/llama --as m", on_message=click, timeout=60)
    took = time.monotonic() - t0
    assert "at" in clicked, "no Cancel button was drawn"
    assert any("KeyboardInterrupt" in line and "cancelled" in line for line in errors), errors
    assert len(errors) == 1  # one line, no frames
    assert took < 6, f"the load ran on for {took:.1f} s after Cancel"
    hub_server.throttle_bytes_per_s = None
    out, errors = _run(kernel, "print('m' in dir())\n"
                               "from ipykernel.kernelbase import Kernel\n"
                               "print(len(Kernel.instance().shell_channel_thread.manager.list_subshell()))")
    assert out.split() == ["False", "0"] and not errors
