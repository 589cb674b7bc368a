"""Page assembly: a self-contained HTML page with a small stylesheet, figures as base64 PNG data URIs and
one inline script (table sorting, and a render check that headless browsers and tests read).

Every piece of text from results goes through :func:`html.escape`; fragments built here are trusted HTML.
The page loads nothing from the network.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

__all__ = ["Section", "figure", "note", "page", "png_data_uri"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CSS = """
:root { --fg: #1d1d1f; --muted: #6b6b70; --line: #dcdce0; --bg-alt: #f6f6f8; --ok: #1a7f37; --bad: #b42318; }
* { box-sizing: border-box; }
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1280px; padding: 1.2rem 1.6rem 4rem; }
h1 { font-size: 1.6rem; margin: 0.2rem 0; }
h2 { font-size: 1.25rem; margin: 2.4rem 0 0.4rem; padding-top: 0.6rem; border-top: 1px solid var(--line); }
h3 { font-size: 1.05rem; margin: 1.4rem 0 0.3rem; }
.meta, .muted, figcaption, caption { color: var(--muted); font-size: 0.88rem; }
.intro { background: var(--bg-alt); border-radius: 8px; padding: 0.6rem 1.2rem; }
.intro dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1.2rem; margin: 0.4rem 0 0.6rem; }
.intro dt { font-weight: 600; }
.intro dd { margin: 0; }
nav ul { display: flex; flex-wrap: wrap; gap: 0.3rem 1.2rem; list-style: none; padding: 0; margin: 0.6rem 0; }
a { color: #1f5fbf; text-decoration: none; } a:hover { text-decoration: underline; }
figure { margin: 0.8rem 0 1.4rem; }
figure img { max-width: 100%; height: auto; display: block; border: 1px solid var(--line); border-radius: 6px; }
.note { border-left: 3px solid #e0a800; background: #fff8e1; padding: 0.4rem 0.8rem; margin: 0.6rem 0;
        font-size: 0.9rem; }
.note.bad { border-color: var(--bad); background: #fdecea; }
/* the run table scrolls inside its box (both ways, header sticky) instead of stretching the page */
.scroll { overflow: auto; max-height: 70vh; max-width: 100%; border: 1px solid var(--line); border-radius: 6px; }
table { border-collapse: collapse; font-size: 0.82rem; font-variant-numeric: tabular-nums; }
caption { text-align: left; padding: 0.4rem 0.5rem; caption-side: top; }
th, td { padding: 0.25rem 0.55rem; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
table.runs td { white-space: nowrap; }
td.num { text-align: right; white-space: nowrap; }
td.floor { color: var(--ok); font-style: italic; }
table.diverged tr.all-diverged { background: #fdecea; }
td.mono { font-family: ui-monospace, monospace; font-size: 0.78rem; }
table.runs td.err { color: var(--bad); min-width: 14rem; max-width: 28rem; white-space: normal;
                   overflow-wrap: anywhere; }
thead th { position: sticky; top: 0; background: #fff; box-shadow: 0 1px 0 var(--line); white-space: nowrap; }
th button { font: inherit; font-weight: 600; border: 0; background: none; padding: 0; cursor: pointer; color: inherit; }
th[aria-sort="ascending"] button::after { content: " ▲"; }
th[aria-sort="descending"] button::after { content: " ▼"; }
tbody tr:nth-child(even) { background: var(--bg-alt); }
tr.error, tr.error:nth-child(even) { background: #fdecea; }
table.best, table.claims { margin: 0.6rem 0 1.2rem; border: 1px solid var(--line); }
td.pass { color: var(--ok); font-weight: 600; } td.fail { color: var(--bad); font-weight: 600; }
.swatch { display: inline-block; width: 0.75em; height: 0.75em; border-radius: 2px; margin-right: 0.35em;
          vertical-align: baseline; }
code { font-size: 0.85em; }
table.images { border-collapse: collapse; }
table.images th[scope="row"] { white-space: nowrap; font-weight: 600; }
table.images figure { margin: 0; }
table.images img { width: 24rem; max-width: none; height: auto; border: 1px solid var(--line); border-radius: 4px; }
table.images figcaption { max-width: 24rem; font-size: 0.75rem; }
table.images figure.diverged img { outline: 3px solid #c0392b; opacity: 0.55; }
table.images figure.diverged figcaption { color: #c0392b; }
table.images .err { color: var(--bad); }
table.model-grids img { width: 15rem; image-rendering: pixelated; }
table.model-grids figcaption { max-width: 15rem; }
"""

SCRIPT = """
(function () {
  "use strict";
  var errors = [];
  window.addEventListener("error", function (e) {
    errors.push(String(e.message));
    document.body.dataset.jsErrors = errors.join(" | ");
  });
  function key(td) {
    var v = td.getAttribute("data-v");
    return v === null ? td.textContent : v;
  }
  function sortBy(table, col, th) {
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
    rows.sort(function (a, b) {
      var x = key(a.cells[col]), y = key(b.cells[col]);
      if (x === y) { return 0; }
      if (x === "") { return 1; }
      if (y === "") { return -1; }
      var nx = Number(x), ny = Number(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return dir * c;
    });
    Array.prototype.forEach.call(th.parentNode.cells, function (h) { h.setAttribute("aria-sort", "none"); });
    th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
    rows.forEach(function (r) { body.appendChild(r); });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
      th.addEventListener("click", function () { sortBy(table, col, th); });
    });
  });
  function check() {
    var imgs = Array.prototype.slice.call(document.images);
    var ok = imgs.every(function (im) { return im.complete && im.naturalWidth > 0; });
    var needTable = document.body.getAttribute("data-expect-table") === "true";
    var table = document.getElementById("runs-table");
    document.body.dataset.imagesCount = String(imgs.length);
    document.body.dataset.imagesOk = String(ok && (!needTable || !!table));
  }
  if (document.readyState === "complete") { check(); } else { window.addEventListener("load", check); }
})();
"""


@dataclass
class Section:
    """A titled part of the page; ``body`` is trusted HTML."""

    anchor: str
    title: str
    body: str


def png_data_uri(png: bytes) -> str:
    """``data:image/png;base64,…`` for PNG bytes (checked by signature)."""
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("figure: not PNG data (bad signature)")
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def figure(png: bytes, alt: str, caption: str = "", kind: str = "", key: str = "") -> str:
    """An embedded figure; ``kind`` and ``key`` become ``data-figure``/``data-key`` for tests and readers."""
    cap = f"<figcaption>{escape(caption)}</figcaption>" if caption else ""
    return (
        f'<figure><img src="{png_data_uri(png)}" alt="{escape(alt)}" data-figure="{escape(kind)}" '
        f'data-key="{escape(key)}" loading="eager">{cap}</figure>'
    )


def note(text: str, bad: bool = False) -> str:
    """A highlighted remark (escaped), e.g. why a figure is missing."""
    return f'<p class="note{" bad" if bad else ""}">{escape(text)}</p>'


def page(title: str, meta: str, intro: str, sections: Sequence[Section], expect_table: bool) -> str:
    """The whole page: title, one line of metadata, the reading guide (trusted HTML), contents, sections."""
    toc = "".join(f'<li><a href="#{escape(s.anchor)}">{escape(s.title)}</a></li>' for s in sections)
    body = "".join(f'<section id="{escape(s.anchor)}"><h2>{escape(s.title)}</h2>{s.body}</section>' for s in sections)
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f'<body data-expect-table="{"true" if expect_table else "false"}">'
        f'<header><h1>{escape(title)}</h1><p class="meta">{escape(meta)}</p></header>'
        f'{intro}<nav aria-label="contents"><ul>{toc}</ul></nav><main>{body}</main>'
        f"<script>{SCRIPT}</script></body></html>\n"
    )
