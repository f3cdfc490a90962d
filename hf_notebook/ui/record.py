"""Static records: what a finished panel leaves in the notebook, as ``text/html`` + ``text/plain``.

A record is built from the final facts (a ``LoadResult``, a ``Plan``, an ``UnloadReport``,
the registry, a failed load's state), never from the last progress event. It carries no
widget mime type, so a saved notebook, an HTML export, a notebook viewer, a reopened notebook
without widget state and terminal IPython all show the same thing. HTML uses only inline
styles and ``<details>`` (no script), and every remote string is escaped.

Layout and colour, checked in a real browser at several widths and in the light and dark themes
(tests/browser/test_layouts_lab.py): text wraps at spaces; a long token (a sha, a pinned spec, a path,
a URL: 20 characters or more) may break anywhere; a name in a table (a module, a repo, a file) is kept
whole below 20 characters and wraps only after ``/ . - _`` or before ``@`` from there on; a size never
breaks between its number and its unit (a no-break space); header and cells of a column share alignment,
padding and width. Tables reflow instead of scrolling (``_table_html``): where a table is wider than the
output, its text columns narrow, then the header and every row wrap at the same cells; nothing sticks out
of the output area, scrolls or is cut. The ``%load_model`` line to copy wraps at spaces in its ``<pre>``
and copies back unchanged. Colours (``ui/style.py``) are the theme's (``var(--jp-...)``) with fallbacks; status
colours carry a plain colour first as well, read on white and on dark alike, because JupyterLab's
sanitizer (an untrusted notebook) drops every declaration that holds ``var()``; for the same
reason each breaking rule is also given in a form that sanitizer keeps (``word-break:break-all``,
``overflow-wrap:break-word``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import escape, unescape
from typing import Any, Iterable, Optional, Sequence

from hf_notebook.core.units import device_sort_key, format_bytes
from hf_notebook.ui import words as W
from hf_notebook.ui.style import DANGER as _DANGER, MUTED as _MUTED, OK as _OK, RULE as _RULE, \
    RULE_DANGER as _RULE_DANGER, RULE_OK as _RULE_OK, RULE_WARN as _RULE_WARN, WARN as _WARN

CLASS = "hf-notebook-record"
_SEVERITY = {"ok": _OK, "info": "", "warning": _WARN, "danger": _DANGER}
# A long word wraps inside its box instead of widening it (break-word: what JupyterLab's sanitizer keeps).
_WRAP = "overflow-wrap:break-word;overflow-wrap:anywhere"
# JupyterLab's sanitizer keeps only word-break:break-all of these: tokens that must break carry it as well.
_BREAK = "word-break:break-all"
# Cells of the facts table wrap at spaces only; a long token in them (20 characters or more) carries _BREAK
# (see html_text).
_CELL = "padding:2px 1em 2px 0;text-align:left;vertical-align:baseline;overflow-wrap:break-word"
# The reflowing table (_table_html): every property and value here is one JupyterLab's sanitizer keeps. A text
# cell pads its right, a number its left (more room between a name and a number); a number never wraps.
_TABLE = "display:inline-block;max-width:100%;margin:4px 0;vertical-align:top;border-collapse:collapse"
_ROW = "display:flex;flex-wrap:wrap;align-items:baseline;padding:0"
_TEXT_CELL = "padding:2px .8em 2px 0;text-align:left;overflow-wrap:break-word"
_NUM = "padding:2px 0 2px .6em;text-align:right;white-space:nowrap"
_TEXT_PAD, _NUM_PAD = 0.8, 0.6  # their horizontal padding, in em
_MAX_TEXT_EM = 26.0  # a text column wider than this wraps its cells (a 40-character sha still fits)
_HASH_LINE = 12  # characters: a column of hashes keeps at least this many on a line (a short sha)
_CODE = f"{_BREAK};{_WRAP};user-select:all"  # a sha, a pinned spec: one token
# In a table cell a <code> gets no box of its own (JupyterLab pads it), so it lines up with its header.
_CELL_CODE = "padding:0;background:none"
# The line to copy: wraps (at spaces first), never scrolls or clips, one click selects all of it.
# (word-break:normal: JupyterLab's output <pre> breaks anywhere, inside --dtype too; long tokens get _line's spans.)
_PRE = f"margin:0;white-space:pre-wrap;word-break:normal;{_WRAP};user-select:all;max-width:100%"
# A member of an expanded range: its name, then its bytes pushed to the right edge of the module column.
_MEMBER = "display:flex;align-items:baseline"
_MEMBER_BYTES = "white-space:nowrap;margin-left:auto;padding-left:1em"
_SIZE = re.compile(r"(\d) (?=(?:B|kB|MB|GB|TB)\b)")
_OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
_LONG = re.compile(r"\S{20,}")  # a path, a pinned spec, a URL: long enough to need breaking inside


def _breakable(html: str) -> str:
    """Each long token of escaped text in a span that may break anywhere (whole tokens, so no entity is cut)."""
    return _LONG.sub(lambda m: f"<span style='{_BREAK}'>{m.group(0)}</span>", html)


def html_text(text: str) -> str:
    """``text`` escaped for HTML, each size's number and unit joined by a no-break space (``717 B`` never
    wraps between the two), an option (``--max-memory``) never broken at its hyphens, and each long token
    free to break. For prose and cells, not a line to copy."""
    return _OPTION.sub(r"<span style='white-space:nowrap'>\g<0></span>",
                       _breakable(_SIZE.sub("\\1\u00a0", escape(text))))


def _line(text: str) -> str:
    """A line to copy (in a ``<pre>``), escaped; it wraps at spaces: a long token (the pinned spec, a path) may
    break anywhere, an option (``--max-memory``) never at its hyphens. Only spans are added: it copies the same."""
    def token(m: re.Match) -> str:
        t = m.group(0)
        if len(t) >= 20:
            return f"<span style='{_BREAK}'>{t}</span>"
        return f"<span style='white-space:nowrap'>{t}</span>" if "-" in t else t
    return re.sub(r"\S+", token, escape(text))


# A Copy button for the line before it, made by a script where a front end runs one (a live or trusted notebook
# in JupyterLab, Notebook 7, VS Code; an HTML export). Where none runs (an untrusted notebook, GitHub, a widget's
# HTML) there is no button, not a dead one, and the line is still selected whole by one click. The script holds
# no data: it copies the <pre>'s text. The clipboard API needs a secure context (https, localhost); elsewhere
# (a server reached by plain http) it copies the selected line, as the browser's own Copy does.
_COPY_SCRIPT = (
    "(function(s){var p=s.previousElementSibling,b=document.createElement('button');"
    "b.textContent='Copy';b.title='Copy this line';b.className='hf-notebook-copy';"
    "b.style.cssText='float:right;margin:0 0 2px .6em;padding:0 .5em;font-size:85%;cursor:pointer;border-radius:2px;'+"
    "'color:var(--jp-ui-font-color1,#222);background:var(--jp-layout-color2,#eee);border:1px solid var(--jp-border-color1,#bbb)';"
    "function said(ok){b.textContent=ok?'Copied':'Selected: press Ctrl+C';"
    "setTimeout(function(){b.textContent='Copy'},1500)}"
    "function selected(){var r=document.createRange(),g=getSelection(),ok=false;r.selectNodeContents(p);"
    "g.removeAllRanges();g.addRange(r);try{ok=document.execCommand('copy')}catch(e){}"
    "if(ok)g.removeAllRanges();return ok}"
    "b.onclick=function(){if(navigator.clipboard&&window.isSecureContext){"
    "navigator.clipboard.writeText(p.textContent).then(function(){said(true)},function(){said(selected())})}"
    "else said(selected())};"
    "p.parentNode.insertBefore(b,p)})(document.currentScript)"
)


def copy_line_html(line: str) -> str:
    """A ``%load_model ...`` line to copy, as a ``<pre>`` that wraps at spaces inside any output width, never
    scrolls or clips, is selected whole by one click, and copies back exactly as ``line``; a Copy button beside
    it where the front end runs scripts."""
    return f"<pre style='{_PRE}'>{_line(line)}</pre><script class='hf-notebook-copy'>{_COPY_SCRIPT}</script>"


_h = html_text


_NAME_BREAKS = re.compile(r"(?<=[/.\-_])(?=.)|(?<=.)(?=@)")


def wrappable_name(text: str, whole_below: int = 20) -> str:
    """A name (``org/repo@sha``, ``model.layers.0-1``, a file) escaped; from ``whole_below`` characters on, free to
    wrap after ``/ . - _`` and before ``@`` (``<wbr>``: nothing is added to what is copied). A shorter one (under
    13 em, it fits any output) is kept whole."""
    if len(text) < whole_below:
        return escape(text)
    return "<wbr>".join(escape(part) for part in _NAME_BREAKS.split(text))


def _cell_code(text: str, breakable: bool = False) -> str:
    """A name in a table cell: whole when short (``model.layers.0-1`` not cut at its hyphen), a long one wrapping
    at its separators only (``tiny/llama@4edaf8693df3`` as ``tiny/ llama @4edaf8693df3``, never in five-letter
    pieces), or ``breakable`` anywhere (a hash)."""
    if breakable:
        return f"<code style='{_CELL_CODE};{_BREAK};{_WRAP}'>{escape(text)}</code>"
    fit = f"white-space:normal;{_WRAP}" if len(text) >= 20 else "white-space:nowrap"
    return f"<code style='{_CELL_CODE};{fit}'>{wrappable_name(text)}</code>"


def _camel(text: str) -> str:
    """A class name that may wrap between its words: ``Llama<wbr>For<wbr>Causal<wbr>LM``."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "<wbr>", escape(text))


@dataclass(frozen=True)
class Record:
    """A static output: ``display(record)`` or ``handle.update(record)``; its repr is the text."""

    html: str
    text: str

    def bundle(self) -> dict:
        return {"text/html": self.html, "text/plain": self.text}

    def _repr_mimebundle_(self, **_: Any) -> dict:
        return self.bundle()

    def __repr__(self) -> str:
        return self.text


# -- pieces --------------------------------------------------------------------------------
def _box(status_html: str, body: str, border: str = _RULE) -> str:
    """The record's box: a left rule in ``border`` (a ``var(--jp-...,#plain)``; the plain colour first)."""
    plain = re.search(r",\s*(#[0-9a-fA-F]{3,8})\)$", border)
    rule = f"border-left:3px solid {plain.group(1) if plain else border};border-left-color:{border}"
    return (f"<div class='{CLASS}' style='{rule};padding:2px 8px;margin:2px 0;max-width:100%;box-sizing:border-box'>"
            f"<div style='{_WRAP}'>{status_html}</div>{body}</div>")


def _facts_html(facts: Sequence[tuple[str, str]]) -> str:
    rows = "".join(f"<tr><th style='{_CELL};white-space:nowrap;{_MUTED};font-weight:normal'>{escape(k)}</th>"
                   f"<td style='{_CELL}'>{v}</td></tr>" for k, v in facts)
    return f"<table style='border-collapse:collapse;margin:2px 0;table-layout:auto'>{rows}</table>"


def _plain_lines(cell_html: str, wrap: str = "") -> list[str]:
    """What a cell shows, line by line (a ``<div>`` or ``<summary>`` starts a line), each ``<wbr>`` as ``wrap``;
    for sizing its column."""
    text = re.sub(r"<(?:div|/summary|br)\b[^>]*>", "\n", cell_html.replace("<wbr>", wrap))
    return unescape(re.sub(r"<[^>]*>", "", text)).split("\n")


_NARROW, _WIDE = set("iljtfr.,:;!|'()[]· \u00a0"), set("mwMW@%")


def _text_em(text: str, mono: bool = False, bold: bool = False) -> float:
    """About how wide ``text`` is, in em, a little more rather than less: the code font's characters are 0.6 em
    (0.602 in DejaVu Sans Mono, Menlo, Consolas); the UI font's vary (DejaVu Sans, the widest common one)."""
    if mono:
        return len(text) * 0.61
    em = sum(0.36 if c in _NARROW else 0.92 if c in _WIDE else 0.74 if c.isupper() else 0.64 for c in text)
    return em * (1.1 if bold else 1.03)


def _column_em(header: str, cells: Sequence[str], numeric: bool) -> tuple[float, float]:
    """A column's narrowest and widest width in em: its longest piece that cannot wrap (anything, for a cell that
    breaks anywhere) and its widest line (a nested member line counts its indent), its header in bold."""
    widest = [_text_em(header, bold=True)]
    piece = [max(_text_em(w, bold=True) for w in header.split() or [""])]
    for c in cells:
        mono = "<code" in c
        for i, (line, marked) in enumerate(zip(_plain_lines(c), _plain_lines(c, wrap=" "))):
            indent = 1.2 if i and "margin-left:1.2em" in c else 0
            widest.append(_text_em(line, mono) + indent)
            # a hash breaks anywhere, but had better wrap its row than stand in a column of four-letter lines
            words = re.split(r"[ \t]+", marked) if _BREAK not in c else ["0" * _HASH_LINE]
            piece.append(max(_text_em(w, mono) for w in words) + indent)
    most = max(widest) if numeric else min(max(widest), _MAX_TEXT_EM)
    return round(min(max(piece), most) + .05, 1), round(most + .05, 1)


def _table_html(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int) -> str:
    """A table that reflows instead of scrolling, with no media query and no ``<style>`` (JupyterLab's sanitizer
    keeps neither), only inline styles it keeps: each row is a wrapping flex line whose cells have, column by
    column, the same size rules in every row, header included (``_column_em``). The table is as wide as its
    widest cells (or the output, if narrower): text columns give up width in proportion to what they can spare,
    wrapping names at ``/ . - _ @`` and prose at spaces; numbers never wrap. Only where even the narrowest
    columns do not fit does a row wrap, and then the header and every row wrap at the same cell: the values stack
    in lines under the header's labels, laid out the same way. Columns share alignment and padding."""
    rows = [list(r) for r in rows]
    sizes = [_column_em(h, [r[i] for r in rows], i >= numeric_from) for i, h in enumerate(header)]
    width = sum(most + (_NUM_PAD if i >= numeric_from else _TEXT_PAD) for i, (_, most) in enumerate(sizes))

    def cell(tag: str, i: int, content: str) -> str:
        least, most = sizes[i]
        if i >= numeric_from:  # a number: to the right of what is left of its line (a wrapped one too)
            style = f"{_NUM};flex:none;min-width:{most}em;margin-left:auto"
        else:  # from its narrowest width, it grows in step with the other text columns up to its widest
            style = f"{_TEXT_CELL};flex:{round(most - least, 1)} 1 {least}em;max-width:{most}em;min-width:0"
        return f"<{tag} style='{style}'>{content}</{tag}>"

    head = "".join(cell("th", i, escape(h)) for i, h in enumerate(header))
    body = "".join(f"<tr style='{_ROW}'>" + "".join(cell("td", i, c) for i, c in enumerate(row)) + "</tr>"
                   for row in rows)
    return (f"<div style='max-width:100%'><table class='{CLASS}-table' style='{_TABLE};width:{width + .3:.1f}em'>"
            f"<thead style='display:block'><tr style='{_ROW}'>{head}</tr></thead>"
            f"<tbody style='display:block'>{body}</tbody></table></div>")


def _text_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int, indent: str = "  ") -> list[str]:
    table = [list(header)] + [list(r) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return [indent + "  ".join(c.rjust(w) if i >= numeric_from else c.ljust(w)
                               for i, (c, w) in enumerate(zip(r, widths))).rstrip() for r in table]


def _text_facts(facts: Sequence[tuple[str, str]]) -> list[str]:
    width = max((len(k) for k, _ in facts), default=0)
    return [f"  {k.ljust(width)}  {v}" for k, v in facts]


def _group_rows(placement: Any) -> list[tuple[str, str, str, list[str]]]:
    """(label, device, bytes, members) per group; ``offloaded`` marks stored-only bytes."""
    rows = []
    for g in placement.groups:
        device = g.device + (" (offloaded)" if g.offloaded and g.device != "disk" else "")
        if g.buffers_on and g.buffer_bytes:  # accelerate keeps an offloaded module's buffers where it runs
            device += f", its buffers on {g.buffers_on}"
        members = list(g.members) if len(g.members) > 1 else []
        rows.append((g.label, device, format_bytes(g.nbytes), members))
    return rows


def _groups_html(placement: Any, sizes: Optional[dict] = None) -> str:
    cells = []
    for label, device, nbytes, members in _group_rows(placement):
        name = _cell_code(label)
        if members:  # each member on a line of its own, its bytes at the line's right edge: a column of numbers
            listed = "".join(
                f"<div class='{CLASS}-member' style='{_MEMBER}'>{_cell_code(m)}"
                + (f"<span style='{_MUTED};{_MEMBER_BYTES}'>{_h(format_bytes(sum(sizes[m])))}</span>"
                   if sizes and m in sizes else "")
                + "</div>" for m in members)
            count = f"<span style='{_MUTED};white-space:nowrap'>({len(members)} modules)</span>"
            name = f"<details><summary>{name} {count}</summary><div style='margin-left:1.2em'>{listed}</div></details>"
        cells.append((name, escape(device), _h(nbytes)))
    return _table_html(("module", "device", "bytes"), cells, numeric_from=2)


def _groups_text(placement: Any) -> list[str]:
    rows = [(label + (f"  ({len(members)} modules)" if members else ""), device, nbytes)
            for label, device, nbytes, members in _group_rows(placement)]
    return _text_table(("module", "device", "bytes"), rows, numeric_from=2)


def _device_rows(placement: Any, budget: Optional[dict] = None) -> tuple[list[str], list[list[str]]]:
    """Per device: weights resident and offloaded, and for a ``--context`` plan its KV cache and step, the total
    against the budget (and, with a ``--context``, what is left of it)."""
    budget = {d: b for d, b in (budget or {}).items() if d != "disk"}
    kv, step = getattr(placement, "kv_by_device", {}), getattr(placement, "step_by_device", {})
    devices = sorted(set(placement.devices) | set(budget) | set(kv) | set(step), key=device_sort_key)
    room = bool(kv or step)
    header = (["device", "resident", "offloaded"] + (["KV cache", "step"] if room else []) + ["total"]
              + (["budget"] if budget else []) + (["left"] if budget and room else []))
    rows = []
    for d in devices:
        b = placement.devices.get(d)
        weights, off = (b.nbytes, b.offloaded_bytes) if b else (0, 0)
        total = weights + kv.get(d, 0) + step.get(d, 0)
        row = [W.device_title(d), format_bytes(weights - off), format_bytes(off) if off else "-"]
        row += [format_bytes(kv[d]) if kv.get(d) else "-", format_bytes(step[d]) if step.get(d) else "-"] if room else []
        row.append(format_bytes(total))
        if budget:
            limit = budget.get(d)
            row.append("-" if limit is None else f"{format_bytes(limit)}{' OVER' if total > limit else ''}")
            if room:
                row.append("-" if limit is None else format_bytes(max(0, limit - total)))
        rows.append(row)
    return header, rows


def _devices_html(placement: Any, budget: Optional[dict] = None) -> str:
    header, rows = _device_rows(placement, budget)
    styled = [[_h(c) if not c.endswith(" OVER") else f"<span style='{_DANGER}'>{_h(c)}</span>" for c in r]
              for r in rows]
    return _table_html(header, styled, numeric_from=1)


def _devices_text(placement: Any, budget: Optional[dict] = None) -> list[str]:
    header, rows = _device_rows(placement, budget)
    return _text_table(header, rows, numeric_from=1)


def _pin_html(pin: Any) -> str:
    if pin.kind == "local":
        return f"<code style='{_CODE}'>{escape(pin.repo_id)}</code> (local folder)"
    return f"<code style='{_CODE}'>{escape(pin.sha)}</code> <span style='{_MUTED}'>({escape(W.pin_note(pin))})</span>"


def _pin_text(pin: Any) -> str:
    if pin.kind == "local":
        return f"{pin.repo_id} (local folder)"
    return f"{pin.sha} ({W.pin_note(pin)})"


def _files_text(files: Sequence[Any]) -> str:
    if not files:
        return ""
    fetched = [f for f in files if not f.cached]
    total = sum(f.size for f in files)
    parts = []
    linked = [f for f in fetched if getattr(f, "deduplicated", False)]
    fetched = [f for f in fetched if f not in linked]
    if fetched:
        parts.append(f"{len(fetched)} downloaded ({format_bytes(sum(f.size for f in fetched))})")
    if linked:
        parts.append(f"{len(linked)} deduplicated (0 B downloaded: the cache's shared store had the content)")
    if len(fetched) + len(linked) < len(files):
        parts.append(f"{len(files) - len(fetched) - len(linked)} from the cache")
    return f"{_count(len(files), 'file')}, {format_bytes(total)}: {', '.join(parts)}"


def _count(n: int, noun: str) -> str:
    """``1 file``, ``2 files``, ``0 files``."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _timing_text(result: Any) -> str:
    stages = " · ".join(f"{k} {W.format_seconds(v)}" for k, v in result.timings.items())
    return f"{W.format_seconds(result.seconds)}" + (f" ({stages})" if stages else "")


# -- records ---------------------------------------------------------------------------------
def load_record(result: Any, title: str = "") -> Record:
    """A finished load: pin, class, dtype, files, time, groups, bytes per device, the line to load it again."""
    pin = result.pin
    head = title or (f"{result.name} = {W.pinned_name(pin.repo_id, pin.sha)}" if result.name
                     else f"loaded {W.pinned_name(pin.repo_id, pin.sha)}")
    facts = [("repo", pin.repo_id if pin.kind != "local" else "(local folder)"), ("commit", None),
             ("class", result.plan.model_class), ("dtype", result.dtype),
             ("files", _files_text(result.files)), ("time", _timing_text(result))]
    if result.plan.quantization is not None:
        from hf_notebook.core.quant import describe

        facts.insert(4, ("quantization", describe(result.plan.quantization)))
    if pin.kind == "local":
        facts.insert(1, ("integrity", "UNVERIFIED: loaded with --no-verify, its files were not checked"
                         if result.options.no_verify else "every file checked against hf_notebook.manifest.json"))
    if result.kernel is not None:
        k = result.kernel
        facts.append(("attention kernel", f"{k.repo_id}@{k.sha} (Hub code, build {k.variant}; "
                                          + ", ".join(f"{n} sha256 {h[:12]}…" for n, h in sorted(k.files.items())) + ")"))
    if result.code_files:
        facts.append(("remote code", ", ".join(f"{n} (sha256 {h[:12]}…)" for n, h in sorted(result.code_files.items()))))
    if result.edits:
        times = f"{len(result.edits)}×" if len(result.edits) > 1 else "once"
        facts.append(("re-dispatched", f"{times} in place; last: {W.moves_text(result.edits[-1])}"))
    if result.offload_folder and "disk" in result.placement.devices:
        facts.append(("offload folder", result.offload_folder))
    if getattr(result, "interrupted_late", False):
        facts.append(("Ctrl-C", "came as the load ended, while the model was being bound: the load completed and "
                                "the model is bound (%unload_model frees it)"))
    facts = [(k, v) for k, v in facts if v != ""]
    line = W.load_line(result)
    html_facts = [(k, _pin_html(pin) if k == "commit" else _h(v)) for k, v in facts]
    html = _box(
        f"<b style='{_OK}'>✓</b> <b>{escape(head)}</b>",
        _facts_html(html_facts) + _groups_html(result.placement, result.plan.module_bytes)
        + _devices_html(result.placement)
        + f"<div style='{_MUTED}'>load it again:</div>{copy_line_html(line)}",
        border=_RULE_OK)
    text_facts = [(k, _pin_text(pin) if k == "commit" else v) for k, v in facts]
    text = "\n".join([f"✓ {head}"] + _text_facts(text_facts) + [""] + _groups_text(result.placement) + [""]
                     + _devices_text(result.placement) + ["", "load it again:", f"  {line}"])
    return Record(html, text)


def plan_record(plan: Any) -> Record:
    """A plan: source, checkpoint facts, findings, the planned groups and bytes against the budget."""
    facts = [("source", plan.source or "(not loaded)"), ("class", plan.model_class), ("dtype", plan.dtype)]
    if plan.quantization is not None:
        from hf_notebook.core.quant import describe

        facts.append(("quantization", describe(plan.quantization)))
    if plan.edits:
        facts.append(("device map", f"edited by hand ({len(plan.edits)} change{'s' * (len(plan.edits) != 1)}); "
                                    "%load_model of this plan uses it"))
    h = plan.headers
    if h is not None and h.param_counts:
        counts = " · ".join(f"{W.count(n)} {code}" for code, n in h.param_counts.items())
        shards = len(h.tensors)
        facts.append(("parameters", f"{W.count(h.total_params)} ({counts})"))
        facts.append(("checkpoint", f"{format_bytes(h.total_bytes)} in {shards} shard{'s' * (shards != 1)}"))
    if plan.kv is not None:
        kv = plan.kv
        where = ", ".join(f"{d} {format_bytes(n)}" for d, n in sorted(plan.kv_cache_by_device.items(),
                                                                      key=lambda item: device_sort_key(item[0])))
        facts.append(("KV cache", f"{format_bytes(plan.kv_cache_bytes)} for {kv.context} tokens x {kv.batch} "
                                  f"sequence{'s' * (kv.batch != 1)} in {kv.dtype} ({where}); the map keeps room "
                                  "for it"))
        room = ", ".join(f"{d} {format_bytes(n)}" for d, n in sorted(plan.headroom_by_device.items(),
                                                                     key=lambda item: device_sort_key(item[0])))
        facts.append(("step", f"activations and logits of one generate step: {room}; the map keeps room for them"))
    findings = plan.explain()
    placement = plan.placement()
    chosen_html, chosen_text = "", []
    if plan.chosen_by:  # what --fit or --context max chose, as options that give it again
        what = {"--fit": "the map", "--context max": "the context"}[plan.chosen_by]
        line = W.plan_line(plan)
        chosen_html = f"<div style='{_MUTED}'>{plan.chosen_by} chose {what}; load it with:</div>{copy_line_html(line)}"
        chosen_text = ["", f"{plan.chosen_by} chose {what}; load it with:", f"  {line}"]
    html = _box(
        f"<b>Plan for <code style='{_CODE}'>{escape(plan.source or plan.model_class)}</code></b>",
        _facts_html([(k, _h(v)) for k, v in facts])
        + "".join(f"<div style='{_SEVERITY.get(f.severity, '')}'>{_h(W.finding_text(f))}</div>" for f in findings)
        + _groups_html(placement, plan.module_bytes) + _devices_html(placement, plan.budget) + chosen_html)
    text = "\n".join([f"Plan for {plan.source or plan.model_class}"] + _text_facts(facts)
                     + [W.finding_text(f) for f in findings] + [""] + _groups_text(placement) + [""]
                     + _devices_text(placement, plan.budget) + chosen_text)
    return Record(html, text)


EMPTY_REGISTRY = "No models loaded by hf_notebook in this kernel."


def _dtype_text(result: Any) -> str:
    """``float32``, or ``float32, 4-bit nf4 ...`` for a quantized model (its bytes are the packed weights')."""
    from hf_notebook.core.quant import describe

    quantized = describe(result.plan.quantization)
    return f"{result.dtype}, {quantized}" if quantized else result.dtype


def models_record(entries: Sequence[tuple[str, Any]]) -> Record:
    """``%models``: one row per loaded model, bytes per device."""
    if not entries:
        return Record(f"<div class='{CLASS}'><i>{escape(EMPTY_REGISTRY)}</i></div>", EMPTY_REGISTRY)
    devices = sorted({d for _, r in entries for d in r.placement.devices}, key=device_sort_key)
    header = ["name", "model", "class", "dtype"] + devices
    rows = [[name, W.pinned_name(r.pin.repo_id, r.pin.sha), r.plan.model_class, _dtype_text(r)]
            + [format_bytes(r.placement.bytes_by_device[d]) if r.placement.bytes_by_device.get(d) else ""
               for d in devices] for name, r in entries]
    cells = [[_cell_code(c) if i == 1 else _camel(c) if i == 2 else _h(c) for i, c in enumerate(row)]
             for row in rows]
    html = f"<div class='{CLASS}' style='max-width:100%'>{_table_html(header, cells, numeric_from=4)}</div>"
    return Record(html, "\n".join(_text_table(header, rows, numeric_from=4, indent="")))


def unload_record(report: Any) -> Record:
    """``%unload_model``: what the model held and what came back."""
    held = ", ".join(f"{d} {format_bytes(n)}" for d, n in report.held.items()) or "nothing"
    lines = [f"unloaded {report.name}" + (f" ({report.pinned})" if getattr(report, "pinned", "") else ""),
             f"it held {held}; process RSS fell by {format_bytes(max(report.rss_freed, 0))}"
             + (f", CUDA memory by {format_bytes(report.cuda_freed)}" if report.cuda_freed else "")]
    if len(report.removed_names) > 1:
        lines.append(f"Also removed other names bound to it: {', '.join(report.removed_names[1:])}.")
    if report.still_referenced:
        lines.append("Something else still references the model (a list, a closure, a traceback): "
                     "memory comes back once that reference is dropped.")
    html = _box(f"<b>{_h(lines[0])}</b>", "".join(f"<div>{_h(x)}</div>" for x in lines[1:]))
    return Record(html, "\n".join(lines))


def stopped_record(state: Any) -> Record:
    """A load that failed or was cancelled: what was done before it stopped. The reason is shown once,
    by the error that follows this output."""
    cancelled = isinstance(state.failed.error, KeyboardInterrupt)
    verb = "cancelled" if cancelled else "failed"
    head = f"{state.header_text()}: {verb} during {state.failed.stage}"
    done = [f"{s.stage} {W.format_seconds(s.seconds)}" for s in state.stages.values() if s.seconds is not None]
    lines = [("done", " · ".join(done))] if done else []
    files = state.finished_files()
    if files:
        lines.append(("files", f"{len(files)} complete: {', '.join(files)}"))
    unfinished = [f.filename for f in state.files.values() if not f.finished]
    if unfinished:
        lines.append(("run again", f"reuses the {len(files)} complete file{'s' * (len(files) != 1)} (kept in the "
                                   f"cache); {len(unfinished)} unfinished start over: {', '.join(unfinished)}"))
    style = _WARN if cancelled else _DANGER
    mark = "■" if cancelled else "✗"
    html = _box(f"<b style='{style}'>{mark} {_h(head)}</b>", _facts_html([(k, _h(v)) for k, v in lines]),
                border=_RULE_WARN if cancelled else _RULE_DANGER)
    text = "\n".join([f"{mark} {head}"] + _text_facts(lines))
    return Record(html, text)


def save_record(saved: Any) -> Record:
    """A finished save: folder, source, dtype, files with sizes and sha256, manifest hash, the line to load it."""
    head = f"saved {saved.name + ' ' if saved.name else ''}to {saved.folder}"
    facts = [("source", saved.source), ("dtype", saved.dtype),
             ("files", f"{_count(len(saved.files), 'file')}, {format_bytes(saved.nbytes)}"
                       + (" (replaced the old folder)" if saved.replaced else "")),
             ("time", W.format_seconds(saved.seconds)), ("manifest", f"sha256 {saved.manifest_sha256[:16]}…")]
    if getattr(saved, "link", None):
        facts.insert(0, ("link", f"{saved.link} → {saved.folder} (the link is kept)"))
    rows = [[f.name, format_bytes(f.size), f.sha256[:16] + "…"] for f in saved.files]
    line = f"%load_model {W.quote_arg(saved.folder)} --as {saved.name or 'model'}"
    html = _box(f"<b style='{_OK}'>✓</b> <b>{_h(head)}</b>",
                _facts_html([(k, _h(v)) for k, v in facts])
                + "<details><summary>files</summary>"
                + _table_html(["file", "size", "sha256"],
                              [[_cell_code(a), _h(b), _cell_code(c, breakable=True)] for a, b, c in rows],
                              numeric_from=1)
                + f"</details><div style='{_MUTED}'>load it:</div>{copy_line_html(line)}",
                border=_RULE_OK)
    text = "\n".join([f"✓ {head}"] + _text_facts(facts) + [""] + _text_table(["file", "size", "sha256"], rows, 1)
                     + ["", "load it:", f"  {line}"])
    return Record(html, text)


def push_record(pushed: Any) -> Record:
    """A finished push: the commit sha and its URL, what was sent, the line that loads it back."""
    head = f"pushed to {pushed.repo_id}" + (f" ({pushed.revision})" if pushed.revision != "main" else "")
    if pushed.uploaded is None:
        files = f"{len(pushed.files)} in one commit; large files through Xet storage (only new content is sent)"
    else:
        sent, large = len(pushed.uploaded), len([f for f in pushed.files if f.endswith(".safetensors")])
        files = (f"{len(pushed.files)} in one commit; {_count(sent, 'large file')} uploaded"
                 + (", the others were already on the Hub" if sent < large else ""))
    facts = [("commit", pushed.commit_sha), ("url", pushed.pr_url or pushed.commit_url), ("files", files),
             ("time", W.format_seconds(pushed.seconds))]
    if pushed.tag:
        facts.append(("tag", pushed.tag))
    if pushed.card_written:
        facts.append(("model card", "README.md written (base model, source commit, dtype)"))
    line = pushed.load_line
    html = _box(f"<b style='{_OK}'>✓</b> <b>{_h(head)}</b>",
                _facts_html([(k, f"<a href='{escape(v)}' target='_blank'>{_h(v)}</a>" if k == "url"
                              else f"<code style='{_CODE}'>{escape(v)}</code>" if k == "commit" else _h(v))
                             for k, v in facts])
                + f"<div style='{_MUTED}'>load it back:</div>{copy_line_html(line)}",
                border=_RULE_OK)
    text = "\n".join([f"✓ {head}"] + _text_facts(facts) + ["", "load it back:", f"  {line}"])
    return Record(html, text)


def lock_record(path: Any, entries: dict) -> Record:
    """``%lock``: one row per entry."""
    if not entries:
        text = f"The lock file {path} has no entries yet: every %load_model of a Hub model adds one."
        return Record(f"<div class='{CLASS}' style='{_WRAP}'><i>{escape(text)}</i></div>", text)
    header = ["repo@revision", "sha", "class", "dtype", "files", "bytes"]
    rows = [[key, e["sha"], e.get("class", ""), e.get("dtype", ""), str(len(e.get("files", {}))),
             format_bytes(sum(f["size"] for f in e.get("files", {}).values()))] for key, e in sorted(entries.items())]
    cells = [[_cell_code(c, breakable=i == 1) if i in (0, 1) else _h(c) for i, c in enumerate(r)] for r in rows]
    html = (f"<div class='{CLASS}' style='max-width:100%'>"
            f"<div style='{_MUTED};{_WRAP}'>lock file {_h(str(path))}</div>"
            f"{_table_html(header, cells, numeric_from=4)}</div>")
    return Record(html, "\n".join([f"lock file {path}"] + _text_table(header, rows, numeric_from=4, indent="")))


def lock_check_record(path: Any, rows: Sequence[Any]) -> Record:
    """``%lock --check``: drift on the Hub and the state of the cache, per entry."""
    header = ["repo@revision", "locked sha", "Hub now", "cache"]
    table = [[r.key, r.locked_sha[:12], r.hub_note + (f" ({r.hub_sha[:12]})" if r.hub_note == "moved" else ""),
              r.cache_note] for r in rows]
    bad = [r for r in rows if not r.ok]
    head = f"{len(rows) - len(bad)} of {len(rows)} entries as locked" + (f"; {len(bad)} need attention" if bad else "")
    cells = [[wrappable_name(c) if i == 0 else _h(c) if (r.ok or i < 2) else f"<span style='{_DANGER}'>{_h(c)}</span>"
              for i, c in enumerate(row)] for row, r in zip(table, rows)]
    html = (f"<div class='{CLASS}' style='max-width:100%'>"
            f"<div style='{_WRAP}'><b style='{_OK if not bad else _DANGER}'>{_h(head)}</b> "
            f"<span style='{_MUTED}'>({_h(str(path))})</span></div>"
            f"{_table_html(header, cells, numeric_from=9)}</div>")
    return Record(html, "\n".join([head] + _text_table(header, table, numeric_from=9, indent="")))


def export_record(exported: Any) -> Record:
    """``%export_model``: where the bundle is, what it holds, how to load it."""
    spec = f"{exported.repo_id}@{exported.sha}"
    head = f"exported {spec} to {exported.folder}"
    fetched = len(exported.downloaded)
    facts = [("layout", exported.layout),
             ("files", f"{_count(len(exported.files), 'file')}, {format_bytes(exported.nbytes)}; "
                       + (f"{fetched} downloaded, the rest from the cache" if fetched else "all from the cache")),
             ("time", W.format_seconds(exported.seconds)), ("manifest", "hf_notebook.manifest.json (size, sha256)")]
    line = (f"%load_model {W.quote_arg(exported.folder)} --as model" if exported.layout == "folder"
            else f"HF_HUB_CACHE={exported.folder} HF_HUB_OFFLINE=1, then %load_model {spec} --offline")
    html = _box(f"<b style='{_OK}'>✓</b> <b>{_h(head)}</b>", _facts_html([(k, _h(v)) for k, v in facts])
                + f"<div style='{_MUTED}'>on the other host:</div>{copy_line_html(line)}",
                border=_RULE_OK)
    return Record(html, "\n".join([f"✓ {head}"] + _text_facts(facts) + ["", "on the other host:", f"  {line}"]))


def export_map_record(path: str, line: str) -> Record:
    """The editor's Export: the file written and the line that loads the model with it."""
    head = f"wrote the device map to {path}"
    return Record(_box(f"<b style='{_OK}'>✓</b> {_h(head)}",
                       f"<div style='{_MUTED}'>load it with:</div>{copy_line_html(line)}", border=_RULE_OK),
                  f"✓ {head}\n  load it with:\n  {line}")


def record_of(result: Any) -> Record:
    """The record of any core result, by the table the extension registers (``ui/__init__.RECORDS``)."""
    from hf_notebook.ui import RECORDS, record_function

    kind = type(result)
    return record_function(RECORDS[(kind.__module__, kind.__qualname__)])(result)


def measure_record(measured: Any) -> Record:
    """``%measure``: per device the KV cache and the step's peak, each planned against measured, in percent."""
    head = (f"measured {measured.name}: prefill of {measured.context} tokens x {measured.batch}, "
            f"{measured.steps} decode step{'s' * (measured.steps != 1)}, {W.format_seconds(measured.seconds)}")
    rows = []
    for d in sorted(measured.devices, key=device_sort_key):
        planned, got = measured.planned_kv.get(d, 0), measured.measured_kv.get(d, 0)
        kv_diff = "" if not planned else f"{100 * (got - planned) / planned:+.1f}%"
        peak_diff = measured.peak_difference(d)
        rows.append([W.device_title(d), format_bytes(planned), format_bytes(got), kv_diff,
                     format_bytes(measured.planned_peak.get(d, 0)),
                     format_bytes(measured.peak.get(d, 0)) + (" (sampled)" if d == "cpu" and measured.cpu_sampled else ""),
                     "" if peak_diff is None else f"{peak_diff:+.1f}%"])
    header = ["device", "KV planned", "KV measured", "KV diff", "peak planned", "peak measured", "peak diff"]
    note = "peak: what the step added over what was held; planned = KV cache + the activations traced from its forward"
    html = _box(f"<b>{_h(head)}</b>", _table_html(header, [[_h(c) for c in r] for r in rows], numeric_from=1)
                + f"<div style='{_MUTED}'>{_h(note)}</div>")
    return Record(html, "\n".join([head] + _text_table(header, rows, numeric_from=1) + [note]))


def show_panel(widget: Any, text: str, saved: str, handle: Any = None) -> Any:
    """Display a live panel (``text`` for viewers that cannot draw ``widget``) and return its display handle;
    with ``handle``, update that output instead. The output's metadata holds ``saved``: the line that stands for
    the panel in a notebook saved while it is open (``hf_notebook.server_hook`` writes it there).
    :func:`end_panel` replaces the output, metadata included."""
    from IPython.display import display

    from hf_notebook.server_hook import KEY

    bundle = dict(widget._repr_mimebundle_() or {})
    bundle["text/plain"] = text
    metadata = {KEY: {"saved": saved}}
    if handle is not None:
        handle.update(bundle, raw=True, metadata=metadata)
        return handle
    return display(bundle, raw=True, metadata=metadata, display_id=True)


def end_panel(handle: Any, widget: Any, line: str) -> None:
    """A live panel's output becomes ``line``, static (a saved notebook keeps no widget there); its widgets close."""
    from hf_notebook.ui.style import close_all

    if handle is not None:
        handle.update(Record(f"<div style='{_MUTED}'>{escape(line)}</div>", line))
    close_all(widget)
