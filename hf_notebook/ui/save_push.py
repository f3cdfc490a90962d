"""The save and push panel: a folder, shard size and dtype to save; a repo, branch/PR, message and
token to push; per-file progress; and, beside it, the static record of each result.

Only draws and forwards: saving is ``core.weights.save.save_model``, pushing ``core.hub.push.push_folder``
(through the magics' rules, e.g. never into a folder a loaded model reads from). A token typed in
the password field is taken out of it as soon as it reaches the kernel (Enter, or leaving the field) and
kept only in the panel's Python object until the push: the widget's value is never the token, so it is
in no widget state (saved or sent), output or log. Standard ipywidgets only.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from html import escape
from typing import Any, Callable, Optional

import ipywidgets as W
from traitlets import Unicode, validate

from hf_notebook.core.events import FileProgress
from hf_notebook.core.units import format_bytes
from hf_notebook.ui.record import Record, end_panel, html_text
from hf_notebook.ui.style import DANGER, MUTED, OK, PANEL_BORDER


def _wide() -> W.Layout:
    """A field's layout: its own (closing a panel closes its layouts, so none may be shared)."""
    return W.Layout(flex="1 1 16em", min_width="10em")


class TokenField(W.Password):
    """A password field whose value is never the token: what the front end sends is handed to ``take`` and the
    field is emptied (its value stays ``""``, so no widget state holds the token; the front end gets the
    empty value back). Only sent on Enter or when the field loses focus, never key by key, and not echoed to
    other front ends."""

    value = Unicode(help="always empty: a token typed is handed over").tag(sync=True, echo_update=False)

    def __init__(self, take: Callable[[str], None], **kwargs: Any):
        self._take = take
        super().__init__(continuous_update=False, **kwargs)

    @validate("value")
    def _hand_over(self, proposal: Any) -> str:
        if proposal["value"]:
            self._take(proposal["value"])
        return ""


_TOKEN_PLACEHOLDER = "empty: your login (hf auth login / HF_TOKEN)"


class SavePushPanel:
    """Save (and push) the model ``session`` loaded as ``name``; ``save()`` and ``push()`` are what the
    buttons call (the session's own save and push, with its rules)."""

    def __init__(self, session: Any, name: str, *, min_interval: float = 0.1):
        self.result, self.name = session.get(name), name
        self.identity, self.identity_problem = _identity(session)
        self._save = session.save
        self._push = lambda folder, repo_id, **options: session.push(repo_id, folder=folder, **options)
        self.saved: Any = None
        self._saved_with: tuple = ()
        self.pushed: Any = None
        self.record_handle: Any = None
        self.widget_handle: Any = None
        self.records: list = []  # one static record per action done here, oldest first
        self.closed = False
        self._lock, self._last, self.min_interval = threading.Lock(), 0.0, min_interval
        style = {"description_width": "7em"}
        self.folder = W.Text(value=f"{name}-saved", description="folder", style=style, layout=_wide())
        self.shard = W.Text(placeholder="50GB", description="shard size", style=style, layout=W.Layout(width="16em"))
        self.dtype = W.Dropdown(options=[("as loaded", ""), ("float32", "float32"), ("bfloat16", "bfloat16"),
                                         ("float16", "float16")], value="", description="dtype", style=style,
                                layout=W.Layout(width="16em"))
        self.overwrite = W.Checkbox(value=False, description="replace an existing folder", indent=False)
        self.save_button = W.Button(description="Save", icon="save", button_style="primary")
        self.repo = W.Text(placeholder="owner/name", description="repo", style=style, layout=_wide())
        self.private = W.Checkbox(value=False, description="private", indent=False, layout=W.Layout(width="7em"))
        self.branch = W.Text(placeholder="main", description="branch", style=style, layout=W.Layout(width="16em"))
        self.create_pr = W.Checkbox(value=False, description="open a pull request", indent=False)
        self.message = W.Text(placeholder="Upload with hf_notebook", description="message", style=style, layout=_wide())
        self._token: Optional[str] = None  # a token typed here: only in this object, never in a widget
        self.token = TokenField(self._take_token, placeholder=_TOKEN_PLACEHOLDER, description="token", style=style,
                                layout=_wide())
        self.forget_button = W.Button(description="Forget token", icon="times", tooltip="push with your login instead",
                                      layout=W.Layout(display="none"))
        self.forget_button.on_click(lambda _: self.forget_token())
        self.push_button = W.Button(description="Push", icon="upload", button_style="primary")
        self.done_button = W.Button(description="Done", icon="check",
                                    tooltip="close the panel: its records stay, so a saved notebook shows them")
        self.done_button.on_click(lambda _: self.done())
        self.who = W.HTML()
        self.repo.observe(lambda _: self._show_who(), "value")
        self._show_who()
        self.files = W.VBox()
        self.status = W.HTML()
        self.bars: dict[str, tuple[W.FloatProgress, W.HTML]] = {}
        self.save_button.on_click(lambda _: self.save())
        self.push_button.on_click(lambda _: self.push())
        row = dict(layout=W.Layout(flex_flow="row wrap", align_items="center"))
        self.widget = W.VBox([
            W.HTML(f"<b>Save and push</b> · {escape(name)}"),
            W.HBox([self.folder, self.shard, self.dtype], **row), W.HBox([self.overwrite, self.save_button], **row),
            W.HTML(f"<div style='{MUTED};margin-top:6px'>push to the Hub (saved first if needed)</div>"),
            W.HBox([self.repo, self.private], **row), W.HBox([self.branch, self.create_pr], **row),
            W.HBox([self.message], **row),
            W.HBox([self.token, self.forget_button, self.push_button, self.done_button], **row),
            self.who,
            self.files, self.status,
        ], layout=W.Layout(border=PANEL_BORDER, padding="6px", max_width="100%"))

    # -- actions ------------------------------------------------------------------------------
    def save(self) -> Any:
        """Save into the folder field's folder; the record beside the panel shows the result."""
        self._start("saving…")
        try:
            self.saved = self._save(self.result, self.folder.value.strip(), max_shard_size=self.shard.value.strip() or None,
                                    dtype=self.dtype.value or None, overwrite=self.overwrite.value, on_event=self.event)
        except BaseException as exc:
            return self._failed("Not saved", exc)
        self._saved_with = self._save_fields()
        self._done(f"✓ saved to {self.saved.folder}", self.saved)
        return self.saved

    def _save_fields(self) -> tuple:
        return (self.folder.value.strip(), self.shard.value.strip(), self.dtype.value)

    def push(self) -> Any:
        """Push the saved folder (or save into a temporary one first) to the repo field's repo, with the token
        typed in the panel (kept for another try if this one fails; forgotten once pushed) or else the login."""
        token = self._token
        repo = self.repo.value.strip()
        self._start(f"pushing to {repo}…")
        try:
            if self.saved is not None and self._saved_with == self._save_fields():  # what the fields describe
                self.pushed = self._push(self.saved.folder, repo, token=token, on_event=self.event, **self._push_options())
            else:
                with tempfile.TemporaryDirectory(prefix="hf_notebook-push-") as tmp:
                    folder = os.path.join(tmp, "model")
                    self._save(self.result, folder, max_shard_size=self.shard.value.strip() or None,
                               dtype=self.dtype.value or None, overwrite=False, on_event=self.event)
                    self.pushed = self._push(folder, repo, token=token, on_event=self.event, **self._push_options())
        except BaseException as exc:
            return self._failed("Not pushed", exc)
        finally:
            token = None
        self._done(f"✓ pushed to {self.pushed.repo_id} at {self.pushed.commit_sha[:12]}", self.pushed)
        self.done()  # the last step: the panel gives way to its records (and forgets the token)
        return self.pushed

    def _push_options(self) -> dict:
        return dict(private=self.private.value, branch=self.branch.value.strip() or None,
                    create_pr=self.create_pr.value, message=self.message.value.strip() or None, name=self.name)

    def _take_token(self, token: str) -> None:
        """A token typed in the field (which is emptied at once): kept here, the field says one is set."""
        self._token = token.strip() or None
        self._show_token()

    def forget_token(self) -> None:
        """Drop a token typed in the panel: the push uses the login again."""
        self._token = None
        self._show_token()

    @property
    def has_token(self) -> bool:
        """Whether a token was typed in the panel (the token itself is never shown)."""
        return self._token is not None

    def _show_token(self) -> None:
        self.token.placeholder = ("a token is set (type another to replace it)" if self._token
                                  else _TOKEN_PLACEHOLDER)
        self.forget_button.layout.display = None if self._token else "none"
        self._show_who()

    def _show_who(self) -> None:
        """Who the push would be made as, and whether that account may write to the repo typed."""
        if self._token:
            text, style = "pushing with the token typed in this panel (checked when you push)", MUTED
        elif self.identity is None:
            text, style = self.identity_problem, DANGER
        else:
            me, repo = self.identity, self.repo.value.strip()
            text, style = f"logged in as {me.name}" + (f" ({me.role} token)" if me.role else ""), MUTED
            if "/" in repo:
                may = me.may_write(repo)
                text += f"; {'can' if may else 'cannot'} write to {repo.split('/')[0]}/"
                style = OK if may else DANGER
        html = f"<span style='{style}'>{escape(text)}</span>"
        if self.who.value != html:
            self.who.value = html

    # -- drawing --------------------------------------------------------------------------------
    def event(self, event: Any) -> None:
        """Per-file progress from the writer or the upload (any thread)."""
        if not isinstance(event, FileProgress):
            return
        with self._lock:
            bar, info = self.bars.get(event.filename) or self._bar(event.filename)
            total = float(event.total or 1)
            finished = event.total is not None and event.done >= event.total
            now = time.monotonic()
            if not finished and now - self._last < self.min_interval:
                return
            self._last = now
            bar.max = total
            bar.value = min(float(event.done), total)
            if finished:
                bar.bar_style = "success"
            info.value = html_text(f"{format_bytes(event.done)} of {format_bytes(event.total)}") if event.total else ""

    def _bar(self, name: str):
        bar = W.FloatProgress(min=0.0, max=1.0, value=0.0, layout=W.Layout(flex="1 1 10em", min_width="6em"))
        info = W.HTML(layout=W.Layout(flex="1 1 12em"))
        label = W.HTML(f"<code style='overflow-wrap:anywhere'>{escape(name)}</code>",
                       layout=W.Layout(flex="1 1 14em", min_width="0"))
        self.bars[name] = (bar, info)
        self.files.children = self.files.children + (W.HBox([label, bar, info], layout=W.Layout(flex_flow="row wrap")),)
        return bar, info

    def _start(self, text: str) -> None:
        self._clear_bars()
        self.save_button.disabled = self.push_button.disabled = True
        self.status.value = f"<span style='{MUTED}'>{escape(text)}</span>"

    def _done(self, text: str, result: Any) -> None:
        self._clear_bars()  # the record beside the panel tells the outcome: no bar stays behind
        self.save_button.disabled = self.push_button.disabled = False
        self.status.value = f"<span style='{OK}'>{escape(text)}</span>"
        self._show(result)

    def _failed(self, what: str, exc: BaseException) -> None:
        from hf_notebook.core.errors import redact

        self._clear_bars()
        self.save_button.disabled = self.push_button.disabled = False
        reason = "cancelled" if isinstance(exc, KeyboardInterrupt) else _panel_words(redact(str(exc)))
        self.status.value = f"<span style='{DANGER}'>{escape(what)}: {escape(reason)}</span>"
        return None

    def _clear_bars(self) -> None:
        """Each file's row goes, closed whole (a row left open with a closed bar in it breaks the kernel's
        widget state, ``Widget.get_manager_state``)."""
        from hf_notebook.ui.style import close_all

        rows, self.files.children = self.files.children, ()
        self.bars.clear()
        for row in rows:
            close_all(row)

    # -- output ---------------------------------------------------------------------------------
    def display(self) -> None:
        """The live panel and, below it, the static records of what was done in it (every save and push)."""
        from IPython.display import HTML, display

        from hf_notebook.ui.record import show_panel

        self.widget_handle = show_panel(self.widget, self.to_text(), f"Save and push panel for {self.name}: open when "
                                        f"this notebook was saved. %save_model {self.name} opens it again.")
        self.record_handle = display(HTML(f"<div style='{MUTED}'>nothing saved or pushed yet</div>"),
                                     display_id=True)

    def _show(self, result: Any) -> None:
        from hf_notebook.ui.record import record_of

        self.records.append(record_of(result))
        if self.record_handle is not None:
            self.record_handle.update(_records(self.records))

    def done(self) -> None:
        """Close the panel: its output becomes one static line (a saved notebook shows no widget there), the
        records stay below it."""
        self._token = None  # the panel's work is over: a token typed in it goes too
        if self.closed:
            return
        self.closed = True
        end_panel(self.widget_handle, self.widget, self.closed_text())

    def closed_text(self) -> str:
        done = [f"saved to {self.saved.folder}"] if self.saved is not None else []
        done += [f"pushed to {self.pushed.repo_id} at {self.pushed.commit_sha[:12]}"] if self.pushed is not None else []
        return (f"Save and push panel for {self.name}: closed" + (f" ({'; '.join(done)})" if done else "")
                + f". %save_model {self.name} opens it again.")

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        bundle = dict(self.widget._repr_mimebundle_(**kwargs) or {})
        bundle["text/plain"] = self.to_text()
        return bundle

    def to_text(self) -> str:
        return f"Save and push panel for {self.name} (use %save_model {self.name} DIR / %push_model in a terminal)"

    def __repr__(self) -> str:
        return self.to_text()


def _records(records: list) -> Any:
    """Every record so far, one below the other, as one output."""
    return Record("".join(r.html for r in records), "\n\n".join(r.text for r in records))


#: Flags in messages from the core, as the controls of this panel that set them.
_CONTROLS = {"--overwrite": "“replace an existing folder”", "--max-shard-size": "“shard size”", "--dtype": "“dtype”"}


def _panel_words(message: str) -> str:
    for flag, control in _CONTROLS.items():
        message = message.replace(f"pass {flag}", f"tick {control}" if flag == "--overwrite" else f"set {control}")
        message = message.replace(flag, control)
    return message


def _identity(session: Any) -> tuple[Any, str]:
    """(who the login is, or None; what is wrong when there is none)."""
    from hf_notebook.core.errors import HfNotebookError

    try:
        return session.whoami(), ""
    except HfNotebookError as exc:
        return None, exc.message
