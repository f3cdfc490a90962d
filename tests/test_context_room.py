"""A model whose weights fit but whose KV cache does not, on a cpu whose memory is really capped: plain
``device_map="auto"`` loads it and then fails in ``generate``; the plan made with ``--context`` (and ``--fit``)
places it so that ``generate`` runs under the same cap.

The cap is the kernel's, as a full card's allocator is on a GPU: after the load, the process's private writable
memory (``RLIMIT_DATA``: heap and anonymous mappings, not the checkpoint's or the libraries' file mappings) may grow
by what the budget leaves beside the weights held on cpu, no more. Memory the allocator already holds free counts as
room too. Run in a fresh process (the limit is the whole process's).
"""

import json
import subprocess
import sys
import textwrap

import pytest

BUDGET = 360 * 10**6  # bytes of cpu memory for the model: its ~232 MB of weights fit, with the cache they do not
CONTEXT, BATCH = 2048, 2  # a 134 MB float32 KV cache and ~100 MB of prefill step

SCRIPT = textwrap.dedent("""
    import ctypes, gc, json, resource, sys
    import torch
    from transformers import AutoModelForCausalLM
    from hf_notebook.core.api import load_model

    folder, budget, context, batch, offload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]

    class MallInfo(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo

    def private_bytes():
        for line in open("/proc/self/status"):
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024

    def generate_capped(model):
        '''generate with the process's private memory capped at what the budget leaves beside the cpu weights.'''
        on_cpu = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]
                     if t.device.type == "cpu")
        room = budget - on_cpu
        gc.collect()  # what the load left to the collector (its mappings of the checkpoint among it) goes first,
        libc.malloc_trim(0)  # and malloc's free pages: the cap starts from what is really held, every run alike
        cap = private_bytes() - libc.mallinfo2().fordblks + room
        resource.setrlimit(resource.RLIMIT_DATA, (cap, resource.RLIM_INFINITY))
        ids = torch.randint(0, model.config.vocab_size, (batch, context - 2), generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False)
            ran, error = list(out.shape), ""
        except (RuntimeError, MemoryError) as exc:
            ran, error = None, str(exc)
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        devices = sorted({str(d) for d in getattr(model, "hf_device_map", {"": "cpu"}).values()})
        return {"on_cpu": on_cpu, "room": room, "devices": devices, "ran": ran, "error": error[:300]}

    plain = AutoModelForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": budget},
                                                 offload_folder=offload)
    print(json.dumps({"plain": generate_capped(plain)}), flush=True)
    del plain
    for fit in (False, True):
        result = load_model(folder, no_verify=True, max_memory=f"cpu={budget}B", context=context, batch=batch, fit=fit)
        facts = generate_capped(result.model)
        facts["planned"] = result.plan.room_for(result.plan.device_map).get("cpu", 0)
        print(json.dumps({"fit" if fit else "context": facts}), flush=True)
        del result, facts
""")


@pytest.fixture(scope="module")
def runs(medium_folder, tmp_path_factory):
    work = tmp_path_factory.mktemp("context-room")
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(medium_folder), str(BUDGET), str(CONTEXT), str(BATCH),
                          str(work / "offload")], capture_output=True, text=True, timeout=300, cwd=work)
    assert out.returncode == 0, out.stderr[-3000:]
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith("{"):
            found.update(json.loads(line))
    return found


def test_plain_auto_puts_every_weight_on_cpu_then_generate_runs_out_of_memory(runs):
    plain = runs["plain"]
    assert plain["devices"] == ["cpu"] and plain["on_cpu"] < BUDGET  # the weights fit the budget...
    assert plain["ran"] is None and "allocate" in plain["error"]  # ...the cache and the step do not


@pytest.mark.parametrize("how", ["context", "fit"])
def test_the_context_plan_keeps_room_for_the_cache_and_the_step_and_generate_runs(runs, how):
    planned = runs[how]
    assert planned["ran"] == [BATCH, CONTEXT], planned["error"]
    assert "disk" in planned["devices"] and planned["on_cpu"] < runs["plain"]["on_cpu"]  # weights made room
    assert planned["planned"] <= planned["room"]  # the cache and step the plan counted fit where it left room
