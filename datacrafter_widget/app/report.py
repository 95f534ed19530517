"""A self-contained HTML report of a headless run that reads offline: no script, no CDN, no network.

Charts are Altair (vega-lite) specs rendered to SVG in Python by vl-convert (it bundles vega), and
embedded as <img> data URLs, so the page needs no JavaScript and an image cannot run code. Every
chart has its numbers in a visible table. All text from users or models (prompts, labels, diffs,
captions, config values) is escaped.

`run_report` lays out the story of a `datacrafter run`: a sentence that reads the result, the
accuracy per stage, per class, thumbnails of every class, the per-round metrics with what each
column means, the simulated feedback, prompt evolution (before -> after, and why), GAP with a
legend for its learned tokens, and the configuration.
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from ..data.files import atomic_write_bytes

__all__ = [
    "Section",
    "render_report",
    "write_report",
    "chart_svg",
    "thumbnails_html",
    "table_html",
    "reading",
    "run_report",
    "METRIC_COLUMNS",
]


def _esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def chart_svg(chart: Any) -> str:
    """An Altair chart (or a vega-lite spec dict) rendered to SVG offline by vl-convert."""
    import vl_convert

    spec = dict(chart) if isinstance(chart, Mapping) else chart.to_dict()
    return vl_convert.vegalite_to_svg(spec)


def _svg_img(svg: str, alt: str) -> str:
    data = base64.b64encode(svg.encode("utf-8")).decode("ascii")
    return f'<img class="chart" src="data:image/svg+xml;base64,{data}" alt="{_esc(alt)}">'


def table_html(frame: pd.DataFrame, max_rows: int = 200, float_format: str = "{:.3f}") -> str:
    """An escaped HTML table; NaN cells stay empty."""
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


def _png_uri(im: Image.Image, size: int) -> str:
    buf = io.BytesIO()
    im.convert("RGB").resize((size, size), Image.Resampling.NEAREST).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnails_html(items: Sequence[tuple[Image.Image, str]], size: int = 64) -> str:
    """A grid of small PNG thumbnails (base64) with escaped captions."""
    cells = [
        f'<figure><img src="{_png_uri(im, size)}" width="{size}" height="{size}" alt="{_esc(caption)}" '
        f'title="{_esc(caption)}"><figcaption>{_esc(caption)}</figcaption></figure>'
        for im, caption in items
    ]
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
        """A chart rendered to SVG now, followed by its data as a visible table when given."""
        self.parts.append(("html", _svg_img(chart_svg(chart), self.title)))
        if data is not None:
            self.parts.append(("table", data))
        return self

    def terms(self, items: Mapping[str, str]) -> "Section":
        """A definition list (legends, column meanings, config)."""
        self.parts.append(("terms", dict(items)))
        return self

    def safe_html(self, block: str) -> "Section":
        """HTML built by this module's helpers (thumbnails_html, table_html): never user text."""
        self.parts.append(("html", block))
        return self


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
table { border-collapse: collapse; font-size: 13px; margin: .5em 0; }
td, th { border: 1px solid #ccc; padding: 2px 6px; text-align: left; vertical-align: top; }
pre { background: #f6f6f6; padding: .5em; white-space: pre-wrap; }
.lead { font-size: 16px; background: #f3f7fb; border-left: 4px solid #4c78a8; padding: .6em 1em; }
.thumbs { display: flex; flex-wrap: wrap; gap: 4px; }
figure { margin: 0; font-size: 10px; width: 52px; overflow-wrap: anywhere; }
img.chart { max-width: 100%; display: block; margin: .5em 0; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; font-size: 13px; }
dt { font-weight: bold; } dd { margin: 0; }
h3 { font-size: 14px; margin: .8em 0 .2em; }
"""


def render_report(
    title: str, sections: Sequence[Section], *, lead: str | None = None, meta: Mapping[str, Any] | None = None
) -> str:
    """The whole report as one HTML string (no <script>: it reads the same offline and online)."""
    body = []
    for s in sections:
        body.append(f"<section><h2>{_esc(s.title)}</h2>")
        for kind, value in s.parts:
            if kind == "text":
                body.append(f"<p>{_esc(value)}</p>")
            elif kind == "lines":
                body.append("<pre>" + "\n".join(_esc(v) for v in value) + "</pre>")
            elif kind == "table":
                body.append(table_html(value))
            elif kind == "terms":
                body.append(
                    "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in value.items()) + "</dl>"
                )
            else:  # html
                body.append(value)
        body.append("</section>")
    lead_html = f'<p class="lead">{_esc(lead)}</p>' if lead else ""
    meta_html = ""
    if meta:
        meta_html = "<dl>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in meta.items()) + "</dl>"
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
        f"<style>{_CSS}</style></head>\n<body><h1>{_esc(title)}</h1>{lead_html}{meta_html}\n"
        f"{''.join(body)}\n</body></html>\n"
    )


def write_report(
    path: str | os.PathLike,
    title: str,
    sections: Sequence[Section],
    *,
    lead: str | None = None,
    meta: Mapping[str, Any] | None = None,
) -> Path:
    """Write the report atomically; returns its resolved path."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, render_report(title, sections, lead=lead, meta=meta).encode("utf-8"))
    return path


# ---- the report of a `datacrafter run` ------------------------------------------------------------
METRIC_COLUMNS = {
    "round": "generation round (0 holds the real images)",
    "n_generated": "images generated in the round",
    "informativeness": "entropy of the classifier's prediction on a generated image minus that on its seed "
    "(nats): above 0, the image carries something its seed did not",
    "class_maintenance": "probability the classifier gives the intended class: near 1, the images still show "
    "their class",
    "seed_class_maintenance": "probability of the class the classifier predicts for the seed image (image-to-image "
    "rounds only; empty for text-to-image)",
    "diversity": "mean KL divergence of each prediction from the class's mean prediction: higher, more varied",
    "embedding_spread": "mean pairwise cosine distance of CLIP embeddings within a class: higher, more varied",
    "distance": "CMMD x1000 between the generated and the real CLIP embeddings: lower, closer to the real data",
    "strategies": "prompt strategies of the round (evolved = evolved prompts, gap = GAP)",
    "flagged": "images the class filter flagged as off-class (left out of training)",
    "bad": "images marked bad by feedback (left out of training)",
}


def reading(table: pd.DataFrame, n_classes: int) -> str:
    """One paragraph that reads the result: chance, what changed, and whether it exceeds the noise."""
    if "accuracy" not in table or table["accuracy"].isna().all():
        return "No test split: the student was trained but not evaluated, so this run cannot show a gain."
    chance = 1.0 / max(n_classes, 1)
    first, last = table.iloc[0], table.iloc[-1]
    a0, a1 = float(first["accuracy"]), float(last["accuracy"])
    n_test = int(first.get("n_test", 0) or 0)
    text = (
        f"The student trained on the {int(first['n_real'])} real images alone reaches {a0:.1%} test accuracy on "
        f"{n_test} held-out images (chance is {chance:.0%} for {n_classes} classes)."
    )
    if len(table) == 1:
        return text + " No generated images were added in this run."
    delta = a1 - a0
    text += (
        f" After the last stage ({last['stage']}), with {int(last['n_generated_used'])} accepted generated images "
        f"added, it reaches {a1:.1%}: {'+' if delta >= 0 else ''}{delta * 100:.1f} points."
    )
    if "accuracy_min" in table and pd.notna(first.get("accuracy_min")) and pd.notna(last.get("accuracy_min")):
        lo0, hi0, lo1, hi1 = (
            float(first["accuracy_min"]),
            float(first["accuracy_max"]),
            float(last["accuracy_min"]),
            float(last["accuracy_max"]),
        )
        seeds = int(last.get("seeds", 0) or 0)
        text += (
            f" Over {seeds} training seeds, real only ranges {lo0:.1%}-{hi0:.1%} and the last stage "
            f"{lo1:.1%}-{hi1:.1%}: "
        )
        if lo1 > hi0:
            text += "the ranges do not overlap, so the gain is larger than the seed spread."
        elif hi1 < lo0:
            text += "the ranges do not overlap, so the loss is larger than the seed spread."
        else:
            text += "the ranges overlap, so the change is within the seed spread and not evidence of an effect."
    else:
        p = min(max(a0, 1e-6), 1 - 1e-6)
        margin = 1.96 * math.sqrt(p * (1 - p) / max(n_test, 1))
        text += (
            f" With {n_test} test images one accuracy is uncertain by about ±{margin:.1%} (95%); "
            f"{'the change is larger than that' if abs(delta) > margin else 'the change is within that'}. "
            "One training seed shows no seed spread: set seeds = 3 under [student] to measure it."
        )
    return text


def _thumbnails_by_class(crafter: Any, per_group: int = 2, real_per_class: int = 3) -> str:
    """Per class: a few real train images, then a few images of every generated round."""
    s = crafter.samples
    blocks = []
    for c in crafter.classes:
        rows = s[s["label"].astype(str) == str(c)]
        items = []
        real = rows[(rows["source"] == "real") & (rows["split"] == "train")].head(real_per_class)
        items += [(crafter.image(r.id), "real") for r in real.itertuples()]
        gen = rows[rows["source"] == "generated"]
        for (rnd, strat), grp in gen.groupby(["round", "strategy"], sort=True):
            for r in grp.head(per_group).itertuples():
                state = r.feedback or (f"flag: {r.flag}" if r.flag else "kept")
                items.append((crafter.image(r.id), f"r{rnd} {strat} ({state}): {r.prompt}"))
        blocks.append(f"<h3>class {_esc(c)}</h3>" + thumbnails_html(items, size=48))
    return "".join(blocks)


def _config_terms(cfg: Mapping[str, Any]) -> dict[str, str]:
    out = {}
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        if isinstance(value, Mapping):
            set_values = {k: v for k, v in value.items() if v is not None}
            out[f"[{key}]"] = ", ".join(f"{k} = {v!r}" for k, v in set_values.items())
        elif isinstance(value, list):
            for i, r in enumerate(value):
                out[f"[[{key}]] {i + 1}"] = ", ".join(f"{k} = {v!r}" for k, v in r.items() if v is not None)
        else:
            out[key] = repr(value)
    return out


def run_report(
    cfg: Mapping[str, Any],
    crafter: Any,
    table: pd.DataFrame,
    per_class: Sequence[pd.DataFrame],
    round_metrics: pd.DataFrame | None,
    fb_rows: Sequence[Mapping[str, Any]],
    evolution: pd.DataFrame | None,
    *,
    seconds: float,
) -> Path:
    """Write <project>/report.html for a headless run and return its resolved path."""
    import altair as alt

    sections = []
    s = Section("Student test accuracy per stage")
    s.text(
        "After each stage the student is trained from scratch on the real training images plus the generated "
        "images that were neither marked bad nor flagged, and evaluated on the held-out test split."
    )
    shown = table.drop(columns=[c for c in ("elapsed_s",) if c in table])
    if "accuracy" in table:
        order = table["stage"].tolist()
        chance = 1.0 / max(len(crafter.classes), 1)
        bars = (
            alt.Chart(table)
            .mark_bar()
            .encode(
                x=alt.X("stage:N", sort=order, title=None, axis=alt.Axis(labelAngle=-20)),
                y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1]), title="test accuracy"),
            )
        )
        rule = (
            alt.Chart(pd.DataFrame({"chance": [chance]}))
            .mark_rule(strokeDash=[4, 4], color="gray")
            .encode(y="chance:Q")
        )
        s.chart((bars + rule).properties(width=520, height=220), shown)
    else:
        s.table(shown)
    sections.append(s)
    if per_class:
        pc = pd.concat(per_class, ignore_index=True)
        s = Section("Per-class test accuracy")
        chart = (
            alt.Chart(pc)
            .mark_line(point=True)
            .encode(x=alt.X("class:N"), y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])), color="stage:N")
            .properties(width=520, height=220)
        )
        wide = pc.pivot_table(index="class", columns="stage", values="accuracy", sort=False).reset_index()
        sections.append(s.chart(chart, wide))
    s = Section("Images of every class")
    s.text(
        "Per class: real training images, then the first images of each generated round (round, strategy, "
        "feedback or filter state, prompt). Hover a thumbnail for its full caption."
    )
    sections.append(s.safe_html(_thumbnails_by_class(crafter)))
    if round_metrics is not None and len(round_metrics) and "student_acc" in round_metrics:
        from ..loop.metrics import round_changes

        s = Section("Round by round")
        s.text(
            "Each round's student accuracy against the round before it (the student of round r trains on the "
            "real images and the accepted images of rounds 1..r), so a round that hurt is seen, with the cause "
            "where the project records one."
        )
        sections.append(s.table(round_changes(round_metrics, crafter.samples).round(3)))
    if round_metrics is not None and len(round_metrics):
        s = Section("Per-round generation metrics (crafter.metrics)")
        s.table(round_metrics)
        sections.append(s.terms({k: v for k, v in METRIC_COLUMNS.items() if k in round_metrics.columns}))
    if fb_rows:
        fewer = (
            " The `fewer` column counts images lassoed without words because their background (or foreground) "
            "was far more common than an even share: evolution rebalances those."
            if any("fewer" in r for r in fb_rows)
            else ""
        )
        sections.append(
            Section("Simulated feedback (independent checker)")
            .text(
                "A checker trained only on real renders looked at every generated image; images whose digit or colours "
                "differ from their prompt were marked bad (as a person's lasso would), which also tells evolution "
                "what to avoid." + fewer
            )
            .table(pd.DataFrame(fb_rows))
        )
    if evolution is not None and len(evolution):
        sections.append(
            Section("Prompt evolution")
            .text(
                "For each class with feedback: the evolved phrases before, the winning prompt after, its negative "
                "prompt, and why each phrase was added or dropped."
            )
            .table(evolution)
        )
    s_all = crafter.samples
    gap = s_all[s_all["strategy"] == "gap"]
    if len(gap):
        s = Section("GAP: adversarial prompt tokens")
        s.text(
            "GAP learned a few token embeddings per class that make the current student unsure while a target "
            "description keeps the images on the test distribution; their images are among the thumbnails "
            "above (strategy gap)."
        )
        s.terms(
            {
                "<gap1> ... <gapN>": "learned token embeddings, not words: they have no text form; the embeddings "
                "are stored in the project (embeddings_file) so each image can be regenerated",
                "parent": "the real train image GAP started from (image-to-image), if any",
            }
        )
        g = gap.assign(kept=lambda f: (f["feedback"].fillna("") != "bad") & (f["flag"].fillna("") == ""))
        summary = (
            g.groupby("label")
            .agg(images=("id", "size"), kept=("kept", "sum"), prompt=("prompt", "first"), parent=("parent_id", "first"))
            .reset_index()
            .rename(columns={"label": "class"})
        )
        s.table(summary)
        sections.append(s)
    meta = {
        "project": str(Path(crafter.project).resolve()),
        "run time": f"{seconds:.0f} s",
        "models": ", ".join(f"{k}: {v}" for k, v in crafter.models.describe().items())
        if isinstance(crafter.models.describe(), Mapping)
        else str(crafter.models.describe()),
    }
    sections.append(Section("Configuration").terms(_config_terms(cfg)))
    return write_report(
        Path(crafter.project) / "report.html",
        str(cfg.get("title", "datacrafter run")),
        sections,
        lead=reading(table, len(crafter.classes)),
        meta=meta,
    )
