"""Launch a tensor/pipeline-parallel model on an existing engine, pinned to a commit sha.

``vllm_commands`` and ``sglang_commands`` return the server lines (one per node);
``write_transformers_launch`` writes a folder with ``run.py`` (``from_pretrained`` with a
``DistributedConfig``), ``launch.sh`` (the ``torchrun`` line) and a README saying what was
pinned. Every flag comes from one table per engine; every value is shell-quoted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..dtypes import parse_dtype
from ..errors import OptionError, PlanError, SaveError, SpecError
from ..folders import temp_sibling
from ..spec import _valid_repo_id, is_commit_sha

ENGINES = ("transformers", "vllm", "sglang")
#: What ``launch.sh``/the commands put where node 0's address belongs until the user fills it in.
MASTER_PLACEHOLDER = "MASTER_ADDR"
MARKER = ".hf_notebook-launch.json"  # names (and hashes) the files we wrote into a launch folder
LOCK_FILE = "hf_notebook.lock.json"  # the pinned sha's lock entry, in a launch folder

# One table per engine: our option -> its flag (documented names; see tests/test_launch.py).
VLLM_FLAGS = {"revision": "--revision", "tp": "--tensor-parallel-size", "pp": "--pipeline-parallel-size",
              "context": "--max-model-len", "memory_fraction": "--gpu-memory-utilization", "dtype": "--dtype",
              "nodes": "--nnodes", "node_rank": "--node-rank", "master_addr": "--master-addr",
              "master_port": "--master-port", "headless": "--headless"}
SGLANG_FLAGS = {"model": "--model-path", "revision": "--revision", "tp": "--tp-size", "pp": "--pp-size",
                "context": "--context-length", "memory_fraction": "--mem-fraction-static", "dtype": "--dtype",
                "nodes": "--nnodes", "node_rank": "--node-rank", "dist_init_addr": "--dist-init-addr"}
TORCHRUN_FLAGS = {"standalone": "--standalone", "nodes": "--nnodes", "nproc_per_node": "--nproc-per-node",
                  "node_rank": "--node-rank", "master_addr": "--master-addr", "master_port": "--master-port"}


@dataclass(frozen=True, kw_only=True)
class LaunchOptions:
    """What to launch and how it is split; validated when made (errors name the option and the fix).

    ``tp * pp`` must equal ``nodes * nproc_per_node``: every process holds one shard.
    ``local_folder`` replaces the Hub download; ``repo_id@revision`` still records what it holds.
    """

    repo_id: str
    revision: str
    dtype: str = "auto"
    tp: int = 1
    pp: int = 1
    nodes: int = 1
    nproc_per_node: int = 1
    context: Optional[int] = None
    memory_fraction: Optional[float] = None
    local_folder: Optional[Path] = None
    master_addr: str = MASTER_PLACEHOLDER
    master_port: int = 29500

    def __post_init__(self):
        if not (isinstance(self.repo_id, str) and _valid_repo_id(self.repo_id)):
            raise SpecError(f"{self.repo_id!r} is not a valid Hub repo id.", hint="Give the repo id as org/name.")
        if not (is_commit_sha(self.revision) and len(self.revision) == 40):
            raise SpecError(f"Revision {self.revision!r} is not a full commit sha.",
                            hint="Resolve the revision first and pass its 40-hex commit sha: a launch is pinned.")
        object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        for name in ("tp", "pp", "nodes", "nproc_per_node", "master_port"):
            _check_int(name, getattr(self, name))
        if self.context is not None:
            _check_int("context", self.context)
        fraction = self.memory_fraction
        if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
            raise OptionError(f"Memory fraction {fraction!r} is not in (0, 1].", hint="Give e.g. 0.9.")
        if self.tp * self.pp != self.world_size:
            raise PlanError(f"tp {self.tp} x pp {self.pp} = {self.tp * self.pp} shards, but {self.nodes} node(s) x "
                            f"{self.nproc_per_node} process(es) = {self.world_size} processes.",
                            hint="Make tp * pp equal nodes * nproc_per_node.")
        if self.local_folder is not None:
            object.__setattr__(self, "local_folder", Path(self.local_folder).expanduser().resolve())
        if not self.master_addr or any(c.isspace() for c in self.master_addr):
            raise OptionError(f"Master address {self.master_addr!r} is not a host name.", hint="Give node 0's address.")

    @property
    def world_size(self) -> int:
        return self.nodes * self.nproc_per_node

    @property
    def pin(self) -> str:
        return f"{self.repo_id}@{self.revision}"


def options_for(plan, *, engine: str = "transformers", local_folder=None, memory_fraction: Optional[float] = None,
                master_addr: str = MASTER_PLACEHOLDER, master_port: int = 29500) -> LaunchOptions:
    """The launch of a :class:`~.ranks.RankPlan` (as ``Session.plan_ranks`` makes them: with its pinned
    ``source``): its tp x pp ranks over whole nodes, its dtype and context, pinned to the full sha."""
    from ..spec import parse_spec

    if engine not in ENGINES:
        raise OptionError(f"Unknown engine {engine!r}.", hint=f"Use one of: {', '.join(ENGINES)}.")
    spec = parse_spec(plan.source) if plan.source else None
    if spec is None or spec.is_local or not is_commit_sha(spec.revision or "") or len(spec.revision) != 40:
        raise SpecError(f"The plan's model {plan.source or '(unknown)'} is not pinned to a Hub commit, and a launch "
                        "is.", hint="Plan a Hub model: %plan_model org/name@REV --target ... --as NAME.")
    if engine == "transformers" and plan.tp > 1 and plan.pp > 1:
        raise PlanError(f"transformers {_version()} cannot load tp={plan.tp} together with pp={plan.pp} (its "
                        "tensor-parallel rules still name the modules a pipeline stage dropped).",
                        hint="Launch it with --engine vllm or --engine sglang, or plan with --tp or --pp alone.")
    world, per_node = plan.world_size, plan.target.gpus_per_node
    if world > per_node and world % per_node:
        raise PlanError(f"{world} ranks (tp={plan.tp} x pp={plan.pp}) do not fill whole nodes of {per_node}: a "
                        "launch starts the same number of processes on every node.",
                        hint=f"Plan tp x pp as a multiple of {per_node}, or at most {per_node}.")
    nodes = max(1, world // per_node) if world > per_node else 1
    context = plan.kv.context if plan.kv is not None else None
    return LaunchOptions(repo_id=spec.repo_id, revision=spec.revision, dtype=plan.dtype or "auto", tp=plan.tp,
                         pp=plan.pp, nodes=nodes, nproc_per_node=world // nodes, context=context,
                         memory_fraction=memory_fraction, local_folder=local_folder, master_addr=master_addr,
                         master_port=master_port)


def _version() -> str:
    from importlib.metadata import version

    return version("transformers")


def _check_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise OptionError(f"{name} must be a whole number >= 1, not {value!r}.", hint=f"Give {name} as 1, 2, ...")


@dataclass(frozen=True)
class Launch:
    """What a launch needs: the command lines (one per node, node 0 first) and any files written."""

    engine: str
    commands: list[str]
    files: list[Path] = field(default_factory=list)
    pin: str = ""


def _line(words: list) -> str:
    return " ".join(shlex.quote(str(w)) for w in words)


def _model_path(o: LaunchOptions) -> str:
    return str(o.local_folder) if o.local_folder else o.repo_id


def vllm_commands(o: LaunchOptions) -> list[str]:
    """``vllm serve`` lines; several nodes use vLLM's own multi-node flags, ``--headless`` past node 0."""
    f = VLLM_FLAGS
    words = ["vllm", "serve", _model_path(o)]
    if o.local_folder is None:  # a folder has no revisions
        words += [f["revision"], o.revision]
    words += [f["tp"], o.tp, f["pp"], o.pp]
    words += [f["context"], o.context] if o.context else []
    words += [f["memory_fraction"], o.memory_fraction] if o.memory_fraction else []
    words += [f["dtype"], o.dtype]
    if o.nodes == 1:
        return [_line(words)]
    return [_line(words + [f["nodes"], o.nodes, f["node_rank"], r, f["master_addr"], o.master_addr,
                           f["master_port"], o.master_port] + ([f["headless"]] if r else []))
            for r in range(o.nodes)]


def sglang_commands(o: LaunchOptions) -> list[str]:
    """``python -m sglang.launch_server`` lines; several nodes meet at ``--dist-init-addr``."""
    f = SGLANG_FLAGS
    words = ["python", "-m", "sglang.launch_server", f["model"], _model_path(o)]
    if o.local_folder is None:
        words += [f["revision"], o.revision]
    words += [f["tp"], o.tp] + ([f["pp"], o.pp] if o.pp > 1 else [])
    words += [f["context"], o.context] if o.context else []
    words += [f["memory_fraction"], o.memory_fraction] if o.memory_fraction else []
    words += [f["dtype"], o.dtype]
    if o.nodes == 1:
        return [_line(words)]
    return [_line(words + [f["nodes"], o.nodes, f["node_rank"], r,
                           f["dist_init_addr"], f"{o.master_addr}:{o.master_port}"]) for r in range(o.nodes)]


def torchrun_commands(o: LaunchOptions, script: str = "run.py", *, launcher: tuple = ("torchrun",)) -> list[str]:
    """``torchrun`` lines for ``script``: ``--standalone`` on one node, else one line per node rank."""
    f = TORCHRUN_FLAGS
    if o.nodes == 1:
        return [_line([*launcher, f["standalone"], f["nproc_per_node"], o.nproc_per_node, script])]
    return [_line([*launcher, f["nodes"], o.nodes, f["nproc_per_node"], o.nproc_per_node, f["node_rank"], r,
                   f["master_addr"], o.master_addr, f["master_port"], o.master_port, script])
            for r in range(o.nodes)]


def engine_commands(engine: str, o: LaunchOptions) -> list[str]:
    """The command lines for ``engine`` (``transformers``: the torchrun lines for ``run.py``)."""
    makers = {"vllm": vllm_commands, "sglang": sglang_commands, "transformers": torchrun_commands}
    if engine not in makers:
        raise OptionError(f"Unknown engine {engine!r}.", hint=f"Use one of: {', '.join(ENGINES)}.")
    return makers[engine](o)


# --------------------------------------------------------------------------- the transformers folder


def write_transformers_launch(o: LaunchOptions, folder: str | os.PathLike, *, lock: Optional[dict] = None) -> Launch:
    """Write ``run.py``, ``launch.sh`` and ``README.md`` into ``folder``, all at once or not at all;
    with ``lock`` (``{key: entry}``, as ``hub.lock.entry_for`` makes them) also the lock file of the pinned
    sha, ``hf_notebook.lock.json``, in the lock file's own format (``%lock --check`` reads it).

    ``folder`` must be absent, empty, or a launch folder we wrote whose files are unchanged;
    anything else is refused (nothing is deleted that we did not write).
    """
    if o.pp > 1 and not _supports_pp():
        raise PlanError("This transformers has no pipeline parallelism (DistributedConfig lacks pp_size).",
                        hint="Use pp=1 with the transformers engine, or vLLM/SGLang.")
    texts = {"run.py": run_script(o), "launch.sh": launch_script(o), "README.md": readme(o, locked=bool(lock))}
    return _write_folder("transformers", o, folder, texts, "launch.sh", torchrun_commands(o), lock)


def write_serve_launch(engine: str, o: LaunchOptions, folder: str | os.PathLike, *,
                       lock: Optional[dict] = None) -> Launch:
    """For vLLM or SGLang: ``serve.sh`` (the serve command, per node) and ``README.md`` in ``folder``, with the
    pinned sha's lock file when ``lock`` is given; written as :func:`write_transformers_launch` writes."""
    commands = engine_commands(engine, o)
    texts = {"serve.sh": serve_script(commands, o), "README.md": serve_readme(engine, o, commands, bool(lock))}
    return _write_folder(engine, o, folder, texts, "serve.sh", commands, lock)


def _write_folder(engine: str, o: LaunchOptions, folder: str | os.PathLike, texts: dict, script: str,
                  commands: list[str], lock: Optional[dict]) -> Launch:
    """``texts`` (name -> text) into ``folder`` all at once (a temp sibling, then a swap), ``script`` executable."""
    target = Path(folder).expanduser().absolute()
    _check_ours(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        for name, text in texts.items():
            (tmp / name).write_text(text, encoding="utf-8")
        (tmp / script).chmod(0o755)
        hashes = {n: hashlib.sha256(t.encode()).hexdigest() for n, t in texts.items()}
        if lock:
            from ..hub.lock import write as write_lock

            write_lock(tmp / LOCK_FILE, lock)
            hashes[LOCK_FILE] = hashlib.sha256((tmp / LOCK_FILE).read_bytes()).hexdigest()
        marker = {"pin": o.pin, "files": hashes}
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp made it private
        _swap_in(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Launch(engine, commands, [target / n for n in hashes], o.pin)


def serve_script(commands: list[str], o: LaunchOptions) -> str:
    """The serve command as a script: one node's line, or each node's under ``NODE_RANK``."""
    lines = ["#!/usr/bin/env bash", "# Written by hf_notebook: serve the pinned revision.", "set -euo pipefail"]
    if len(commands) == 1:
        return "\n".join(lines + [f"exec {commands[0]}", ""])
    lines += [f": \"${{NODE_RANK:?set NODE_RANK to this node's index, 0 to {len(commands) - 1}}}\"",
              f": \"${{{MASTER_PLACEHOLDER}:?set {MASTER_PLACEHOLDER} to node 0's address}}\"", 'case "$NODE_RANK" in']
    lines += [f"  {rank}) exec {command.replace(MASTER_PLACEHOLDER, '$' + MASTER_PLACEHOLDER)} ;;"
              for rank, command in enumerate(commands)]
    return "\n".join(lines + ['  *) echo "NODE_RANK must be 0 to ' + str(len(commands) - 1) + '" >&2; exit 2 ;;',
                               "esac", ""])


def serve_readme(engine: str, o: LaunchOptions, commands: list[str], locked: bool = False) -> str:
    """A vLLM / SGLang launch folder's README: what was pinned, how to serve it, and that it was not run here."""
    name = {"vllm": "vLLM", "sglang": "SGLang"}[engine]
    lines = [f"# Tensor/pipeline-parallel serving ({name})", "", "Written by hf_notebook. Pinned:", "",
             f"- model: `{o.repo_id}` at commit `{o.revision}` (`--revision` in the command)",
             f"- dtype: `{o.dtype}`; tensor parallel: {o.tp}, pipeline parallel: {o.pp} "
             f"({o.nodes} node(s) x {o.nproc_per_node} GPU(s))",
             f"- context: {o.context or 'the model config default'}; memory fraction: {o.memory_fraction or 'default'}"]
    if locked:
        lines += [f"- files: `{LOCK_FILE}` records every file of the commit with its size and sha256"]
    lines += ["", "## Serve", ""]
    if len(commands) == 1:
        lines += ["```bash", "bash serve.sh", "```", "", "which runs:", "", "```bash", commands[0], "```"]
    else:
        lines += [f"On each node, with node 0's address in place of `{MASTER_PLACEHOLDER}`:", "", "```bash"]
        lines += [f"{MASTER_PLACEHOLDER}=<node-0-address> NODE_RANK={r} bash serve.sh   # node {r}"
                  for r in range(len(commands))]
        lines += ["```", "", "that is:", "", "```bash", *commands, "```"]
    lines += ["", f"hf_notebook checked these flags against {name}'s documented ones; it did not run {name} (the",
              "machine that wrote this had no GPU).", ""]
    return "\n".join(lines)


def prepare_launch(engine: str, o: LaunchOptions, folder: str | os.PathLike | None = None, *,
                   lock: Optional[dict] = None) -> Launch:
    """One call per engine choice: the commands, and the folder written (always for ``transformers``; for vLLM
    and SGLang when ``folder`` is given: ``serve.sh`` and README) (``lock``: with the pinned sha's lock file)."""
    if engine == "transformers":
        if folder is None:
            raise OptionError("The transformers engine writes a launch folder, and none was given.",
                              hint="Pass the folder to write run.py, launch.sh and README.md into.")
        return write_transformers_launch(o, folder, lock=lock)
    if folder is not None:
        return write_serve_launch(engine, o, folder, lock=lock)
    return Launch(engine, engine_commands(engine, o), [], o.pin)


def _supports_pp() -> bool:
    from transformers.distributed import DistributedConfig

    return "pp_size" in DistributedConfig.__dataclass_fields__


def _check_ours(target: Path) -> None:
    """Refuse a target holding anything we did not write (or wrote and someone changed since)."""
    if not target.exists():
        return
    if not target.is_dir() or target.is_symlink():
        raise SaveError(f"{str(target)!r} exists and is not a folder.", hint="Choose a new folder for the launch.")
    names = {p.name for p in target.iterdir()}
    if not names:
        return
    try:
        wrote = json.loads((target / MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        wrote = {}
    foreign = sorted(names - set(wrote) - {MARKER})
    changed = sorted(n for n in names & set(wrote) if not _same(target / n, wrote[n]))
    if foreign or changed or not wrote:
        what = foreign or changed or sorted(names)
        raise SaveError(f"{str(target)!r} holds files hf_notebook did not write (or that changed since): "
                        f"{', '.join(what[:5])}.", hint="Choose a new or empty folder; nothing was written.")


def _same(path: Path, sha256: str) -> bool:
    try:
        return path.is_file() and not path.is_symlink() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
    except OSError:
        return False


def _swap_in(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` into place; an old launch folder of ours is moved aside first, then removed."""
    if not target.exists():
        tmp.rename(target)
        return
    old = temp_sibling(target)
    old.rmdir()
    target.rename(old)
    try:
        tmp.rename(target)
    except BaseException:
        old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def launch_script(o: LaunchOptions) -> str:
    """``launch.sh``: the torchrun line; on several nodes it reads ``MASTER_ADDR`` and ``NODE_RANK``."""
    head = "#!/usr/bin/env bash\n# Written by hf_notebook for " + o.pin + "; see README.md.\nset -euo pipefail\n"
    head += 'cd "$(dirname "$0")"\n'
    if o.nodes == 1:
        return head + "exec " + torchrun_commands(o)[0] + "\n"
    f = TORCHRUN_FLAGS
    return head + (
        f': "${{MASTER_ADDR:?set MASTER_ADDR to node 0\'s address}}"\n'
        f': "${{NODE_RANK:?set NODE_RANK to this node\'s rank, 0 to {o.nodes - 1}}}"\n'
        f"exec torchrun {f['nodes']} {o.nodes} {f['nproc_per_node']} {o.nproc_per_node} "
        f'{f["node_rank"]} "$NODE_RANK" {f["master_addr"]} "$MASTER_ADDR" {f["master_port"]} {o.master_port} run.py\n')


def readme(o: LaunchOptions, locked: bool = False) -> str:
    """The launch folder's README: what was pinned and how to run it (``locked``: a lock file is beside it)."""
    from importlib.metadata import version

    source = f"the local folder `{o.local_folder}`" if o.local_folder else "the Hub (`revision=` the sha above)"
    lines = ["# Tensor/pipeline-parallel launch (transformers)", "", "Written by hf_notebook. Pinned:", "",
             f"- model: `{o.repo_id}` at commit `{o.revision}`, loaded from {source}",
             f"- dtype: `{o.dtype}`",
             f"- tensor parallel: {o.tp}, pipeline parallel: {o.pp} "
             f"({o.nodes} node(s) x {o.nproc_per_node} process(es))",
             f"- max model len: {o.context or 'the model config default'} (caps run.py's check input)",
             f"- memory fraction: {o.memory_fraction or 'not set'} (per-process CUDA limit, when on CUDA)",
             f"- written against transformers {version('transformers')}"]
    if locked:
        lines += [f"- files: `{LOCK_FILE}` records every file of the commit with its size and sha256 (in",
                  f"  hf_notebook: `%config HFNotebook.lock_file = '{LOCK_FILE}'`, then `%lock --check`)"]
    lines += ["", "## Run", ""]
    if o.nodes == 1:
        lines += ["```bash", "bash launch.sh", "```", "", "which runs:", "", "```bash", *torchrun_commands(o), "```"]
    else:
        lines += [f"On each of the {o.nodes} nodes, with node 0's address in place of `{MASTER_PLACEHOLDER}`:", "",
                  "```bash"]
        addr = "<node-0-address>" if o.master_addr == MASTER_PLACEHOLDER else o.master_addr
        lines += [f"MASTER_ADDR={addr} NODE_RANK={r} bash launch.sh   # node {r}" for r in range(o.nodes)]
        lines += ["```", "", "that is, per node:", "", "```bash", *torchrun_commands(o), "```"]
    lines += ["", "`run.py` loads the model with `DistributedConfig(tp_size, pp_size, tp_plan=\"auto\")`, reports each",
              "rank's local parameter bytes and runs one forward pass. Edit `main()` for your own work.", ""]
    return "\n".join(lines)


def run_script(o: LaunchOptions) -> str:
    """``run.py``: constants for this launch, then the fixed body below."""
    model = str(o.local_folder) if o.local_folder else o.repo_id
    revision = None if o.local_folder else o.revision
    head = (f'"""Written by hf_notebook: load {o.pin} split tp={o.tp} x pp={o.pp} under torchrun. See README.md."""\n'
            f"MODEL = {model!r}\nREVISION = {revision!r}\nDTYPE = {o.dtype!r}\nTP_SIZE = {o.tp}\nPP_SIZE = {o.pp}\n"
            f"MAX_MODEL_LEN = {o.context!r}\nMEMORY_FRACTION = {o.memory_fraction!r}\n")
    return head + _RUN_BODY


_RUN_BODY = '''
import argparse
import json
import os
import sys
import time

RANK = int(os.environ.get("RANK", "0"))
EVENTS = None  # a folder for one JSON-lines file (and one log) per rank; None: JSON lines on stdout


def report(state, **facts):
    """One progress record: starting, loading, loaded, checked or failed."""
    line = json.dumps({"rank": RANK, "pid": os.getpid(), "state": state, "time": time.time(), **facts})
    if EVENTS is None:
        print(line, flush=True)
        return
    with open(os.path.join(EVENTS, f"rank{RANK}.jsonl"), "a", encoding="utf-8") as f:
        f.write(line + "\\n")


def load():
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.distributed import DistributedConfig

    if MEMORY_FRACTION and torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(MEMORY_FRACTION, int(os.environ.get("LOCAL_RANK", "0")))
    dtype = DTYPE if DTYPE == "auto" else getattr(torch, DTYPE)
    config = DistributedConfig(tp_size=TP_SIZE, pp_size=PP_SIZE, tp_plan="auto")
    pin = {"revision": REVISION} if REVISION else {}
    return AutoModelForCausalLM.from_pretrained(MODEL, dtype=dtype, distributed_config=config, **pin)


def local_param_bytes(model):
    """Bytes of this rank's parameters: a DTensor counts its local shard only."""
    total = 0
    for param in model.parameters():
        local = param.to_local() if hasattr(param, "to_local") else param
        total += local.numel() * local.element_size()
    return total


def forward(model, ids):
    import torch

    ids = torch.tensor(ids, device=model.device)
    if MAX_MODEL_LEN and ids.shape[-1] > MAX_MODEL_LEN:
        raise ValueError(f"{ids.shape[-1]} input ids exceed MAX_MODEL_LEN {MAX_MODEL_LEN}")
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    return logits.full_tensor() if hasattr(logits, "full_tensor") else logits


def main(argv=None):
    global EVENTS
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", help="folder for per-rank progress records and logs")
    parser.add_argument("--check", help="JSON file of input ids: save this rank's logits beside it")
    args = parser.parse_args(argv)
    if args.events:
        EVENTS = args.events
        log = os.open(os.path.join(EVENTS, f"rank{RANK}.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
    report("starting")
    try:
        report("loading")
        model = load()
        report("loaded", bytes=local_param_bytes(model))
        if args.check:
            import torch

            with open(args.check, encoding="utf-8") as f:
                ids = json.load(f)
            logits = forward(model, ids)
            out = os.path.join(os.path.dirname(os.path.abspath(args.check)), f"logits_rank{RANK}.pt")
            torch.save(logits.detach().float().cpu(), out)
        else:
            forward(model, [[0, 1, 2, 3]])
        report("checked")
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank done sending before any tears its process group down (else gloo may abort)
    except BaseException as error:
        report("failed", error=f"{type(error).__name__}: {error}")
        raise
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
'''
