"""Tensor/pipeline-parallel plans, launches and runs: their records, and the live panel of a run.

``rank_plan_record`` (a :class:`~hf_notebook.core.distributed.ranks.RankPlan`: a row per rank and the
``%launch_model`` lines that run it), ``launch_record`` (a ``Launch``: the files written and the command per
node) and ``run_record`` (a ``RunResult``: logits and per-rank bytes checked) are static ``text/html`` +
``text/plain`` records, registered in ``ui/__init__.RECORDS``. :class:`RunPanel` draws a run while it works
(per rank: state, parameter bytes loaded, last log line) as widgets in a kernel or lines in a terminal, and
ends in the run's record: no widget and no bar stays in the notebook.
"""

from __future__ import annotations

from html import escape
from typing import Any, Optional

from hf_notebook.core.units import format_bytes
from hf_notebook.ui import words as W
from hf_notebook.ui.record import (Record, _box, _cell_code, _facts_html, _table_html, _text_facts, _text_table,
                                   copy_line_html, end_panel, html_text as _h)
from hf_notebook.ui.style import DANGER, MUTED, OK, RULE, RULE_DANGER, RULE_OK, RULE_WARN, WARN

_NONE = "–"


# -- the plan ----------------------------------------------------------------------------------------------------
def _layers(r: Any) -> str:
    layers = r.layers
    if not len(layers):
        return _NONE
    return str(layers.start) if len(layers) == 1 else f"{layers.start}-{layers.stop - 1}"


def _rank_rows(plan: Any) -> list[list[str]]:
    kv = plan.kv is not None
    return [[str(r.rank), str(r.node), str(r.local_rank), r.device, str(r.stage), _layers(r),
             format_bytes(r.weight_bytes), format_bytes(r.kv_bytes) if kv else _NONE, format_bytes(r.budget),
             format_bytes(r.free) if r.free >= 0 else f"-{format_bytes(-r.free)}"] for r in plan.ranks]


_RANK_HEADER = ["rank", "node", "local rank", "device", "stage", "layers", "weights", "KV", "budget", "free"]


def launch_lines(plan: Any) -> list[str]:
    """The ``%launch_model`` lines that run ``plan`` (by the name it is bound to): each engine, and ``--run``
    where its ranks are this machine's CPU."""
    name = plan.name or "NAME"
    lines = [] if plan.tp > 1 and plan.pp > 1 else [f"%launch_model {name} --engine transformers --to {name}_launch"]
    lines += [f"%launch_model {name} --engine vllm", f"%launch_model {name} --engine sglang"]
    if plan.local and len(lines) == 3:
        lines.append(f"%launch_model {name} --run")
    return lines


def _plan_facts(plan: Any) -> list[tuple[str, str]]:
    facts = [("model", f"{plan.model_class or plan.model_type} ({plan.model_type}), {plan.dtype}"),
             ("layout", f"tp={plan.tp} x pp={plan.pp}" + (f", ep={plan.ep}" if plan.ep > 1 else "")
              + f": {plan.world_size} rank{'s' * (plan.world_size != 1)} of the {plan.target.world_size} devices"),
             ("weights", f"{format_bytes(plan.weight_bytes)}, each tensor once")]
    if plan.kv is not None:
        kv = plan.kv
        facts.append(("KV cache", f"{format_bytes(kv.nbytes)} for {kv.context} tokens x {kv.batch} "
                                  f"sequence{'s' * (kv.batch != 1)} in {kv.dtype}"))
    facts.append(("why", plan.reason))
    return facts


def rank_plan_record(plan: Any) -> Record:
    """A parallel plan: what splits how, a row per rank (where it runs, its layers, bytes against its device),
    why this layout, and the ``%launch_model`` lines that run it."""
    head = f"Parallel plan for {plan.source or plan.model_type} on {plan.target}"
    over = [r for r in plan.ranks if r.free < 0]
    verdict = ("every rank fits" if not over else
               f"{len(over)} rank{'s' * (len(over) != 1)} over budget (rank {over[0].rank}: "
               f"{format_bytes(-over[0].free)} over): choose another layout or target")
    rows = _rank_rows(plan)
    facts = _plan_facts(plan)
    lines = launch_lines(plan) if not over else []
    note = "launch it with:" if plan.name else "bind the plan with --as NAME, then launch it with:"
    if plan.tp > 1 and plan.pp > 1:
        note = note[:-1] + " (transformers cannot load tp with pp yet):"
    cells = [[_h(c) if i < 9 or plan.ranks[n].free >= 0 else f"<span style='{DANGER}'>{_h(c)}</span>"
              for i, c in enumerate(row)] for n, row in enumerate(rows)]
    launch_html = ""
    if lines:
        launch_html = (f"<div style='{MUTED}'>{escape(note)}</div>"
                       + "".join(copy_line_html(line) for line in lines))
    html = _box(f"<b>{_h(head)}</b> <span style='{OK if not over else DANGER}'>{_h(verdict)}</span>",
                _facts_html([(k, _h(v)) for k, v in facts]) + _table_html(_RANK_HEADER, cells, numeric_from=6)
                + launch_html, border=RULE if not over else RULE_DANGER)
    text = [f"{head}: {verdict}"] + _text_facts(facts) + [""] + _text_table(_RANK_HEADER, rows, numeric_from=6)
    if lines:
        text += ["", note] + [f"  {line}" for line in lines]
    return Record(html, "\n".join(text))


# -- the launch --------------------------------------------------------------------------------------------------
def _node_labels(commands: list[str]) -> list[str]:
    return [""] if len(commands) == 1 else [f"node {n}" + (" (master)" if n == 0 else "") for n in range(len(commands))]


def launch_record(launch: Any) -> Record:
    """A launch: the pinned commit, the files written, and the command(s) to run, one per node."""
    from hf_notebook.core.distributed.launch import MASTER_PLACEHOLDER

    folder = str(launch.files[0].parent) if launch.files else ""
    commands = [f"cd {W.quote_arg(folder)} && {c}" if folder else c for c in launch.commands]
    head = f"{launch.engine} launch of {launch.pin}"
    facts = [("pinned", launch.pin)]
    if folder:
        facts.append(("written", f"{folder}: {', '.join(p.name for p in launch.files)}"))
    notes = []
    if any(MASTER_PLACEHOLDER in c for c in commands):
        notes.append(f"Put node 0's address in place of {MASTER_PLACEHOLDER} (or give --master-addr HOST).")
    labels = _node_labels(commands)
    run = "run on each node:" if len(commands) > 1 else "run:"
    html = _box(f"<b style='{OK}'>✓</b> <b>{_h(head)}</b>", _facts_html([(k, _h(v)) for k, v in facts])
                + f"<div style='{MUTED}'>{escape(run)}</div>"
                + "".join((f"<div style='{MUTED}'>{escape(label)}</div>" if label else "") + copy_line_html(c)
                          for label, c in zip(labels, commands))
                + "".join(f"<div style='{WARN}'>{_h(n)}</div>" for n in notes), border=RULE_OK)
    text = [f"✓ {head}"] + _text_facts(facts) + ["", run]
    for label, c in zip(labels, commands):
        text += ([f"  # {label}"] if label else []) + [f"  {c}"]
    return Record(html, "\n".join(text + notes))


# -- the run -----------------------------------------------------------------------------------------------------
def _percent(diff: Optional[float]) -> str:
    return _NONE if diff is None else f"{100 * diff:+.2f}%"


def run_record(result: Any) -> Record:
    """A finished run: passed or not, the logits against one process, per rank the parameter bytes measured
    against the plan, and, when it failed, each rank's last log lines."""
    from hf_notebook.core.distributed.run import BYTES_TOLERANCE, LOGIT_TOLERANCE

    ranks = len(result.rank_param_bytes)
    if result.cancelled:
        mark, verdict, style, rule = "■", "cancelled: every rank was stopped", WARN, RULE_WARN
    elif result.returncode != 0:
        mark, verdict, style, rule = "✗", f"failed (exit {result.returncode})", DANGER, RULE_DANGER
    elif result.ok:
        mark, verdict, style, rule = "✓", "matches one process", OK, RULE_OK
    else:
        mark, verdict, style, rule = "✗", "ran, but does not match", DANGER, RULE_DANGER
    head = f"run of {result.pin or 'the launch'} on {ranks} rank{'s' * (ranks != 1)}: {verdict}"
    diff = result.max_logit_diff
    facts = [("logits", _NONE if diff is None else
              f"max |diff| {diff:.2g} against one process ({'within' if diff <= LOGIT_TOLERANCE else 'over'} "
              f"{LOGIT_TOLERANCE:g})"),
             ("time", W.format_seconds(result.seconds)), ("command", result.command)]
    facts += [("launch folder", result.folder)] if result.folder else []
    facts += [("logs", result.logs)] if result.logs else []
    planned = list(result.planned_param_bytes) + [None] * (ranks - len(result.planned_param_bytes))
    rows = [[str(i), format_bytes(want) if want is not None else _NONE, format_bytes(got), _percent(d)]
            for i, (want, got, d) in enumerate(zip(planned, result.rank_param_bytes, result.byte_differences))]
    header = ["rank", "planned", "measured", "diff"]
    bytes_note = f"parameter bytes per rank, measured in each process against the plan (within {BYTES_TOLERANCE:.0%})"
    bad = [i for i, d in enumerate(result.byte_differences) if d is None or abs(d) > BYTES_TOLERANCE]
    cells = [[_h(c) if i < 3 or n not in bad or not result.planned_param_bytes else
              f"<span style='{DANGER}'>{_h(c)}</span>" for i, c in enumerate(row)] for n, row in enumerate(rows)]
    tails = [] if result.ok or result.cancelled else [(i, t) for i, t in enumerate(result.log_tail) if t]
    tails_html = "".join(f"<details><summary>rank {i}: last log lines</summary><pre style='{MUTED};"
                         f"white-space:pre-wrap;overflow-wrap:anywhere'>{escape(t)}</pre></details>" for i, t in tails)
    html = _box(f"<b style='{style}'>{mark}</b> <b>{_h(head)}</b>",
                _facts_html([(k, _h(v)) for k, v in facts]) + _table_html(header, cells, numeric_from=1)
                + f"<div style='{MUTED}'>{_h(bytes_note)}</div>" + tails_html, border=rule)
    text = [f"{mark} {head}"] + _text_facts(facts) + [""] + _text_table(header, rows, numeric_from=1) + [bytes_note]
    for i, t in tails:
        text += [f"rank {i}, last log lines:"] + [f"  {line}" for line in t.splitlines()]
    return Record(html, "\n".join(text))


class RunPanel:
    """The live view of ``%launch_model NAME --run``: ``panel(event)`` for each progress event, then ``finish(result)``
    or ``fail(error)`` once. ``widget``: ipywidgets (a Jupyter kernel), else a line per change of a rank's state."""

    def __init__(self, plan: Any, *, widget: bool, stream: Any = None):
        self.plan, self.stream = plan, stream
        self.ranks: dict[int, Any] = {}
        self.stage = "fetching the pinned files"
        self.final: Optional[Record] = None
        self._handle, self.widget = None, None
        if widget:
            import ipywidgets as widgets

            self._head, self._table = widgets.HTML(), widgets.HTML()
            self.widget = widgets.VBox([self._head, self._table], layout=widgets.Layout(padding="2px 4px"))
            self._draw()

    def display(self) -> None:
        if self.widget is not None:
            from hf_notebook.ui.record import show_panel

            what = f"run of {self.plan.source} on {self.plan.world_size} ranks ({self.plan.target})"
            self._handle = show_panel(self.widget, f"{what}: {self.stage}…",
                                      f"The {what} was still going when the notebook was saved.")
        else:
            self._say(f"run of {self.plan.source} on {self.plan.world_size} ranks ({self.plan.target}): "
                      f"{self.stage}…")

    def __call__(self, event: Any) -> None:
        from hf_notebook.core.distributed.run import STAGE, RankProgress
        from hf_notebook.core.events import StageStarted

        if self.final is not None:
            return
        if isinstance(event, RankProgress):
            before = self.ranks.get(event.rank)
            self.ranks[event.rank] = event
            if self.widget is None and (before is None or before.state != event.state):
                self._say(f"  rank {event.rank}: {self._state_text(event)}")
        elif isinstance(event, StageStarted) and event.stage == STAGE:
            self.stage = "running"
            if self.widget is None:
                self._say(f"  {event.detail}")
        else:
            return
        if self.widget is not None:
            self._draw()

    def finish(self, result: Any) -> None:
        """Replace the panel by the run's record (a terminal: print it)."""
        self.final = run_record(result)
        if self._handle is not None:
            from hf_notebook.ui.style import close_all

            self._handle.update(self.final)
            close_all(self.widget)
        else:
            from IPython.display import display

            display(self.final)

    def fail(self, error: BaseException) -> None:
        """The run stopped early (Ctrl-C, a failure before the ranks ended): one static line in the panel's place."""
        word = "cancelled: every rank was stopped" if isinstance(error, KeyboardInterrupt) else \
            f"failed: {W.error_text(error)}"
        states = ", ".join(f"rank {r}: {self._state_text(p)}" for r, p in sorted(self.ranks.items()))
        line = f"run of {self.plan.source} {word}" + (f" ({states})" if states else "")
        self.final = Record(f"<div style='{MUTED}'>{escape(line)}</div>", line)
        if self.widget is not None:
            end_panel(self._handle, self.widget, line)
        elif states:  # what went wrong follows as the error's own line
            self._say(f"  at the end: {states}")

    # -- drawing ---------------------------------------------------------------------------------------------
    @staticmethod
    def _state_text(p: Any) -> str:
        text = p.state + (f" ({format_bytes(p.bytes_loaded)})" if p.bytes_loaded else "")
        return text + (f": {p.error}" if p.error else "")

    def _draw(self) -> None:
        plan = self.plan
        self._head.value = (f"<b>{_h(f'run of {plan.source} on {plan.world_size} ranks ({plan.target})')}</b> "
                            f"<span style='{MUTED}'>{_h(self.stage)}…</span>")
        rows = []
        for r in plan.ranks:
            p = self.ranks.get(r.rank)
            state = p.state if p else "waiting"
            style = DANGER if state == "failed" else OK if state == "checked" else ""
            rows.append([str(r.rank), f"<span style='{style}'>{_h(state)}</span>",
                         _cell_code((p.error or p.last_log)[-160:] if p else ""),
                         _h(format_bytes(p.bytes_loaded)) if p and p.bytes_loaded else _NONE,
                         _h(format_bytes(r.weight_bytes))])
        self._table.value = _table_html(["rank", "state", "last log line", "loaded", "planned"], rows, numeric_from=3)

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


__all__ = ["RunPanel", "launch_lines", "launch_record", "rank_plan_record", "run_record"]
