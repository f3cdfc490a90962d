// Runs in the page (test_layouts_lab.py): every layout and legibility problem in a notebook's outputs.
// Returns {problems: [{kind, cell, owner, what}], lowest, records, outputWidth, height, tables, editorRows},
// where kind is
//   overflow  something reaches past the output area's right edge (or a record is wider than its box)
//   scroll    something is only seen by scrolling a box sideways
//   clipped   something is cut off by overflow:hidden or an ellipsis
//   cell      a record table's cell shows less than its content (scrollWidth > clientWidth), reaches past its
//             table, or overlaps the next cell of its row
//   align     a record table's cell is not where its header cell is in the header row (the header and every
//             row must wrap the same way, so a stacked row still reads under its labels)
//   fragment  a name in a record table or the editor (a repo id, a module, a file) breaks other than after
//             / . - _ or before @ (a hash, all hex digits, may break anywhere)
//   row       a device dropdown of the editor is not on the same visual row as its module's name
//   pre       a %load_model line to copy does not fit its <pre>, cannot be selected, copies back other than it
//             reads, or is cut inside a short token (--dtype, @device_map.json) instead of at a space
//   size      a size (717 B, 65.5 kB) is broken between its number and its unit
//   members   an expanded range's member bytes are not at the right edge of their line, lined up
//   contrast  text whose contrast with what it is drawn on is below minContrast (disabled controls excepted)
// owner: 'record' (inside .hf-notebook-record), 'widget' (inside a widget view) or 'other'; cell: the first
// line of the cell's input.
([panelId, minContrast]) => {
  const panel = document.getElementById(panelId);
  const problems = [];
  const reported = new Set();
  const cellOf = (el) =>
    (el.closest(".jp-Cell")?.querySelector(".jp-InputArea-editor")?.textContent || "").trim().split("\n")[0];
  const ownerOf = (el) =>
    el.closest(".hf-notebook-record") ? "record" : el.closest(".jupyter-widgets") ? "widget" : "other";
  const say = (kind, el, what) => {
    reported.add(el);
    problems.push({ kind, what, cell: cellOf(el), owner: ownerOf(el) });
  };
  const inReported = (el) => {
    for (let e = el.parentElement; e; e = e.parentElement) if (reported.has(e)) return true;
    return false;
  };
  const label = (el) => {
    const cls = typeof el.className === "string" ? el.className.trim().split(/\s+/).slice(0, 3).join(" ") : "";
    const text = (el.innerText || el.textContent || "").trim().replace(/\s+/g, " ").slice(0, 60);
    return `<${el.tagName.toLowerCase()}${cls ? ` class="${cls}"` : ""}> "${text}"`;
  };
  const visible = (el) => {
    const r = el.getBoundingClientRect();
    return r.width > 0 && r.height > 0 && getComputedStyle(el).visibility !== "hidden";
  };
  const onOneLine = (range) =>
    new Set([...range.getClientRects()].filter((q) => q.width > 0).map((q) => Math.round(q.top))).size <= 1;
  const rangeOf = (node, start, length) => {
    const range = document.createRange();
    range.setStart(node, start);
    range.setEnd(node, start + length);
    return range;
  };
  const FORM = ".widget-dropdown, .widget-button, .jupyter-button, .widget-text, .widget-password, "
    + ".widget-checkbox, .widget-hprogress, select, input, button";
  panel.querySelectorAll("details").forEach((d) => { d.open = true; }); // the member lists too

  // colours: rgb()/rgba()/color(srgb ...), composited over every background behind, through opacity
  const parse = (c) => {
    const m = (c.match(/[\d.]+/g) || [0, 0, 0, 0]).map(Number);
    const k = c.startsWith("color(") ? 255 : 1;
    return [m[0] * k, m[1] * k, m[2] * k, m.length > 3 ? m[3] : 1];
  };
  const over = (top, under) => [0, 1, 2].map((i) => top[i] * top[3] + under[i] * (1 - top[3])).concat(1);
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = parse(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    return layers.reverse().reduce((under, top) => over(top, under), [255, 255, 255, 1]);
  };
  const opacity = (el) => {
    let o = 1;
    for (let e = el; e && e !== panel; e = e.parentElement) o *= Number(getComputedStyle(e).opacity);
    return o;
  };
  const luminance = (c) => {
    const [r, g, b] = c.slice(0, 3).map((v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4;
    });
    return 0.2126 * r + 0.7152 * g + 0.0722 * b;
  };
  const contrast = (a, b) => {
    const [x, y] = [luminance(a), luminance(b)].sort((p, q) => q - p);
    return (x + 0.05) / (y + 0.05);
  };
  let lowest = 99;
  const SIZE = /\d[\d.,]*[ \u00a0](?:B|kB|MB|GB|TB)\b/g;
  const outputs = [...panel.querySelectorAll(".jp-OutputArea-output")].filter(visible);

  for (const out of outputs) {
    const box = out.getBoundingClientRect();
    const scroller = (el) => {
      for (let e = el.parentElement; e && e !== out; e = e.parentElement) {
        if (["auto", "scroll"].includes(getComputedStyle(e).overflowX)) return e;
      }
      return null;
    };
    for (const el of out.querySelectorAll("*")) {
      if (!visible(el)) continue;
      const r = el.getBoundingClientRect();
      const s = getComputedStyle(el);
      // nothing past the output's right edge (inside a box that scrolls sideways: 'scroll', not 'overflow')
      if (r.right > box.right + 1 && !inReported(el)) {
        const sc = scroller(el);
        if (sc && sc.getBoundingClientRect().right <= box.right + 1) {
          if (!reported.has(sc)) {
            say("scroll", sc, `${label(sc)} scrolls: ${sc.clientWidth} of ${sc.scrollWidth} px shown`);
          }
        } else {
          say("overflow", el, `${label(el)} ends ${Math.round(r.right - box.right)} px past the output `
            + `(${Math.round(box.width)} px wide)`);
        }
      }
      if (["auto", "scroll"].includes(s.overflowX) && el.scrollWidth > el.clientWidth + 1
          && !reported.has(el) && !inReported(el)) {
        say("scroll", el, `${label(el)} scrolls: ${el.clientWidth} of ${el.scrollWidth} px shown`);
      }
      if ((["hidden", "clip"].includes(s.overflowX) || s.textOverflow === "ellipsis")
          && el.scrollWidth > el.clientWidth + 1 && !el.closest(FORM)) {
        say("clipped", el, `${label(el)} shows ${el.clientWidth} of ${el.scrollWidth} px`);
      }
    }
    for (const rec of out.querySelectorAll(".hf-notebook-record")) {
      if (rec.scrollWidth > rec.clientWidth + 1 && !reported.has(rec)) {
        say("overflow", rec, `record is ${rec.scrollWidth} px in a ${rec.clientWidth} px box`);
      }
    }
    // the line to copy: fits its <pre>, selectable, copies back as one line, wraps at spaces
    for (const pre of out.querySelectorAll("pre")) {
      if (!pre.textContent.startsWith("%load_model")) continue;
      if (pre.scrollWidth > pre.clientWidth + 1 || pre.getBoundingClientRect().right > box.right + 1) {
        say("pre", pre, `load line needs ${pre.scrollWidth} px, shows ${pre.clientWidth}`);
      }
      if (getComputedStyle(pre).userSelect === "none") say("pre", pre, "the load line cannot be selected");
      const all = document.createRange();
      all.selectNodeContents(pre);
      const selection = window.getSelection();
      selection.removeAllRanges();
      selection.addRange(all);
      const copied = selection.toString();
      selection.removeAllRanges();
      if (copied.trim() !== pre.textContent.trim() || copied.includes("\n")) {
        say("pre", pre, `copies as ${JSON.stringify(copied)}`);
      }
      const texts = document.createTreeWalker(pre, NodeFilter.SHOW_TEXT);
      for (let node = texts.nextNode(); node; node = texts.nextNode()) {
        for (const m of node.textContent.matchAll(/(?<!\S)\S{2,19}(?!\S)/g)) { // whole tokens under 20 characters
          if (!onOneLine(rangeOf(node, m.index, m[0].length))) {
            say("pre", pre, `"${m[0]}" is cut in two in the load line "${pre.textContent.slice(0, 60)}..."`);
          }
        }
      }
    }
    // sizes on one line; contrast of every piece of text
    const texts = document.createTreeWalker(out, NodeFilter.SHOW_TEXT);
    for (let node = texts.nextNode(); node; node = texts.nextNode()) {
      const el = node.parentElement;
      if (!node.textContent.trim() || !visible(el) || el.closest("select, option, style, script")) continue;
      for (const m of node.textContent.matchAll(SIZE)) {
        if (!onOneLine(rangeOf(node, m.index, m[0].length))) {
          say("size", el, `"${m[0]}" breaks across lines in ${label(el)}`);
        }
      }
      const fg = parse(getComputedStyle(el).color);
      const bg = background(el);
      fg[3] *= opacity(el);
      const ratio = contrast(over(fg, bg), bg);
      const disabled = !!el.closest(":disabled, .mod-disabled"); // WCAG exempts controls that are off
      if (!disabled) lowest = Math.min(lowest, ratio);
      if (ratio < minContrast && !disabled) {
        say("contrast", el, `${label(el)}: ${getComputedStyle(el).color} on rgb(${bg.slice(0, 3).map(Math.round)}) `
          + `is ${ratio.toFixed(2)}:1`);
      }
    }
  }
  // an expanded range's members: each one's bytes at the right edge, all of them lined up (not beside the names)
  for (const list of panel.querySelectorAll(".jp-OutputArea-output details")) {
    const lines = [...list.querySelectorAll(".hf-notebook-record-member")].filter(visible);
    const rights = lines.filter((m) => m.children.length > 1)
      .map((m) => [m, m.lastElementChild.getBoundingClientRect().right, m.getBoundingClientRect().right]);
    for (const [m, right, edge] of rights) {
      if (Math.abs(right - edge) > 1 || Math.abs(right - rights[0][1]) > 1) {
        say("members", m, `${label(m)}: its bytes end at ${Math.round(right)} px, the line at ${Math.round(edge)}, `
          + `the first member's bytes at ${Math.round(rights[0][1])}`);
      }
    }
  }
  // record tables: every cell whole and inside its table, cells of a row apart, each column where its header is
  const tables = [];
  for (const table of panel.querySelectorAll(".jp-OutputArea-output table.hf-notebook-record-table")) {
    if (!visible(table)) continue;
    const tb = table.getBoundingClientRect();
    const rows = [...table.querySelectorAll("tr")].filter(visible);
    const head = rows[0];
    // the line of each cell in its row: a wrapped row starts a new line with a cell below the line before
    const lineOf = (row) => {
      let line = 0, bottom = -Infinity;
      return [...row.children].map((c) => {
        const r = c.getBoundingClientRect();
        if (r.top >= bottom - 2) { line += bottom === -Infinity ? 0 : 1; bottom = r.bottom; }
        bottom = Math.max(bottom, r.bottom);
        return line;
      });
    };
    const lines = (row) => Math.max(...lineOf(row)) + 1;
    tables.push({ cell: cellOf(table), columns: head.children.length, rows: rows.length - 1,
      lines: lines(head), width: Math.round(tb.width) });
    const place = (row, i) => { // [x in its row, width, which line of its row (0: the first)]
      const r = row.getBoundingClientRect(), c = row.children[i].getBoundingClientRect();
      return [c.left - r.left, c.width, lineOf(row)[i]];
    };
    for (const row of rows) {
      const cells = [...row.children];
      const line = lineOf(row);
      cells.forEach((c, i) => {
        const r = c.getBoundingClientRect();
        const what = `column ${i + 1} "${(c.innerText || "").trim().replace(/\s+/g, " ").slice(0, 40)}"`;
        if (c.scrollWidth > c.clientWidth + 1) {
          say("cell", c, `${what} needs ${c.scrollWidth} px, its cell is ${c.clientWidth} px`);
        } else if (r.left < tb.left - 1 || r.right > tb.right + 1) {
          const [from, to] = [r.left - tb.left, r.right - tb.left].map(Math.round);
          say("cell", c, `${what} reaches past its table (${from}..${to} px of ${Math.round(tb.width)})`);
        }
        const next = cells[i + 1]?.getBoundingClientRect();
        if (next && line[i + 1] === line[i] && next.left < r.right - 1) {
          say("cell", c, `${what} overlaps the next cell by ${Math.round(r.right - next.left)} px`);
        }
        if (row !== head && head.children[i]) {
          const [x, w, line] = place(row, i), [hx, hw, hline] = place(head, i);
          if (Math.abs(x - hx) > 1.5 || Math.abs(w - hw) > 1.5 || line !== hline) {
            say("align", c, `${what} is at x ${Math.round(x)}, ${Math.round(w)} px wide, on line ${line + 1} of its `
              + `row; its header at x ${Math.round(hx)}, ${Math.round(hw)} px wide, on line ${hline + 1}`);
          }
        }
      });
    }
  }
  // names break only at their sensible points: after / . - _ or before @ (never in five-letter pieces)
  const names = [...panel.querySelectorAll(".jp-OutputArea-output table.hf-notebook-record-table code, "
    + ".jp-OutputArea-output .jupyter-widgets code")].filter(visible);
  for (const code of names) {
    if (/^[0-9a-f]{7,}…?$/.test(code.textContent.trim())) continue; // a hash: any point will do
    const walker = document.createTreeWalker(code, NodeFilter.SHOW_TEXT);
    const chars = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      for (let k = 0; k < node.textContent.length; k++) {
        const rect = [...rangeOf(node, k, 1).getClientRects()].find((q) => q.width > 0);
        if (rect) chars.push([node.textContent[k], Math.round(rect.top)]);
      }
    }
    for (let k = 1; k < chars.length; k++) {
      if (chars[k][1] === chars[k - 1][1]) continue;
      if ("/.-_ ".includes(chars[k - 1][0]) || chars[k][0] === "@" || chars[k][0] === " ") continue;
      const text = chars.map((c) => c[0]).join("");
      const [before, after] = [text.slice(Math.max(0, k - 6), k), text.slice(k, k + 6)];
      say("fragment", code, `"${text}" breaks between "${before}" and "${after}"`);
      break;
    }
  }
  // the editor: each device dropdown on the visual row of its module's name (the name's first line)
  let editorRows = 0;
  for (const select of panel.querySelectorAll(".jp-OutputArea-output .jupyter-widgets select")) {
    if (!visible(select)) continue;
    const row = select.closest(".widget-hbox");
    const name = row && [...row.querySelectorAll("code")].find(visible);
    if (!name) continue; // not a module's row (the Move row, the dtype of the save panel)
    editorRows += 1;
    const first = [...name.getClientRects()].find((q) => q.width > 0);
    const s = select.getBoundingClientRect();
    if (!(s.top < first.bottom - 2 && s.bottom > first.top + 2)) {
      say("row", select, `the dropdown of "${name.textContent}" is at y ${Math.round(s.top)}..${Math.round(s.bottom)}, `
        + `its name's first line at ${Math.round(first.top)}..${Math.round(first.bottom)}`);
    }
  }
  const records = {};
  for (const rec of panel.querySelectorAll(".jp-OutputArea-output .hf-notebook-record")) {
    records[cellOf(rec)] = (records[cellOf(rec)] || 0) + 1;
  }
  const scrollers = [...panel.querySelectorAll(".jp-WindowedPanel-outer, .jp-Notebook")];
  return {
    problems,
    lowest,
    records,
    tables,
    editorRows,
    outputWidth: Math.round(Math.max(...outputs.map((o) => o.getBoundingClientRect().width))),
    height: Math.max(...scrollers.map((e) => e.scrollHeight)),
  };
}
