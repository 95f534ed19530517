"""A self-contained HTML report of a headless run: tables, Altair charts, prompt diffs, thumbnails.

Charts are embedded as vega-lite JSON specs rendered by vega-embed (loaded from a CDN when the
report is opened); every chart also has its data as a plain HTML table, so the figures stay
readable offline. All text from users or models (prompts, labels, diffs, captions) is escaped,
and JSON inside <script> is escaped so that no string can close the tag.
"""
from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..data.store import atomic_write_bytes

__all__ = ["Section", "render_report", "write_report", "chart_spec", "thumbnails_html", "table_html"]

_VEGA = ("https://cdn.jsdelivr.net/npm/vega@5", "https://cdn.jsdelivr.net/npm/vega-lite@5",
         "https://cdn.jsdelivr.net/npm/vega-embed@6")


def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _script_json(obj: Any) -> str:
    """JSON safe to place inside a <script> element (no '</', no U+2028/9 line breaks)."""
    text = json.dumps(obj, allow_nan=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def chart_spec(chart: Any) -> dict[str, Any]:
    """A vega-lite spec dict from an Altair chart (or a spec dict already)."""
    if isinstance(chart, Mapping):
        return dict(chart)
    return chart.to_dict()


def table_html(frame: pd.DataFrame, max_rows: int = 200, float_format: str = "{:.3f}") -> str:
    """An escaped HTML table (pandas' to_html escapes too; this keeps formatting in one place)."""
    frame = frame.head(max_rows)
    head = "".join(f"<th>{_esc(c)}</th>" for c in frame.columns)
    rows = []
    for _, r in frame.iterrows():
        cells = []
        for v in r.tolist():
            if isinstance(v, float):
                cells.append(f"<td>{_esc(float_format.format(v)) if v == v else ''}</td>")
            else:
                cells.append(f"<td>{_esc(v)}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def thumbnails_html(items: Sequence[tuple[Image.Image, str]], size: int = 64) -> str:
    """A grid of small PNG thumbnails (base64) with escaped captions."""
    cells = []
    for im, caption in items:
        buf = io.BytesIO()
        im.convert("RGB").resize((size, size), Image.NEAREST).save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        cells.append(f'<figure><img src="data:image/png;base64,{data}" width="{size}" height="{size}" '
                     f'alt="{_esc(caption)}"><figcaption>{_esc(caption)}</figcaption></figure>')
    return f'<div class="thumbs">{"".join(cells)}</div>'


class Section:
    """One titled part of the report: paragraphs, tables, charts, raw (already safe) HTML blocks."""

    def __init__(self, title: str) -> None:
        self.title = title
        self.parts: list[tuple[str, Any]] = []

    def text(self, text: str) -> "Section":
        self.parts.append(("text", text))
        return self

    def lines(self, lines: Sequence[str]) -> "Section":
        self.parts.append(("lines", list(lines)))
        return self

    def table(self, frame: pd.DataFrame) -> "Section":
        self.parts.append(("table", frame))
        return self

    def chart(self, chart: Any, data: pd.DataFrame | None = None) -> "Section":
        self.parts.append(("chart", (chart_spec(chart), data)))
        return self

    def safe_html(self, block: str) -> "Section":
        """HTML built by this module's helpers (thumbnails_html, table_html): never user text."""
        self.parts.append(("html", block))
        return self


def render_report(title: str, sections: Sequence[Section], *, meta: Mapping[str, Any] | None = None) -> str:
    """The whole report as one HTML string."""
    body, charts = [], []
    for s in sections:
        body.append(f"<section><h2>{_esc(s.title)}</h2>")
        for kind, value in s.parts:
            if kind == "text":
                body.append(f"<p>{_esc(value)}</p>")
            elif kind == "lines":
                body.append("<pre>" + "\n".join(_esc(v) for v in value) + "</pre>")
            elif kind == "table":
                body.append(table_html(value))
            elif kind == "html":
                body.append(value)
            elif kind == "chart":
                spec, data = value
                cid = f"chart{len(charts)}"
                charts.append((cid, spec))
                body.append(f'<div class="chart" id="{cid}"></div>')
                if data is not None:
                    body.append(f"<details><summary>data</summary>{table_html(data)}</details>")
        body.append("</section>")
    meta_html = ""
    if meta:
        meta_html = "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta.items()) + "</dl>"
    scripts = "".join(f'<script src="{u}"></script>' for u in _VEGA)
    specs = _script_json({cid: spec for cid, spec in charts})
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; max-width: 1100px; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: .5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 2px 6px; text-align: left; }}
pre {{ background: #f6f6f6; padding: .5em; white-space: pre-wrap; }}
.thumbs {{ display: flex; flex-wrap: wrap; gap: 6px; }}
figure {{ margin: 0; font-size: 10px; width: 72px; overflow-wrap: anywhere; }}
dt {{ font-weight: bold; }}
</style>{scripts}</head>
<body><h1>{_esc(title)}</h1>{meta_html}
{''.join(body)}
<script type="application/json" id="vega-specs">{specs}</script>
<script>
(function () {{
  var specs = JSON.parse(document.getElementById("vega-specs").textContent);
  if (typeof vegaEmbed === "undefined") {{
    Object.keys(specs).forEach(function (id) {{
      document.getElementById(id).textContent = "(chart needs the vega scripts from the network; its data is in the table below)";
    }});
    return;
  }}
  Object.keys(specs).forEach(function (id) {{ vegaEmbed("#" + id, specs[id], {{actions: false}}); }});
}})();
</script>
</body></html>
"""


def write_report(path: str | os.PathLike, title: str, sections: Sequence[Section], *,
                 meta: Mapping[str, Any] | None = None) -> Path:
    """Write the report atomically; returns its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_report(title, sections, meta=meta).encode("utf-8"))
    return path
