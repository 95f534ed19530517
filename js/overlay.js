// @ts-check
// What is drawn over the WebGL points: content labels (largest first, never overlapping), counts where
// thumbnails pile up, the lasso or box being drawn; the legend beside the map; the hover tooltip.
// Label and tooltip text is model or user text: drawn on a canvas or set as textContent, never HTML.
import { el, FEEDBACK_TEXT, KIND_NAMES, KIND_TEST } from "./dom.js";
import { hiddenValues, toggleValues } from "./filters.js";
import { RAMP_CSS } from "./colors.js";

/** A numeric column's colour bar: name, minimum, the sequential scale, maximum. */
function colorBar(row, e) {
  // Enough digits that the two ends differ (e.g. seeds 100000 and 200099).
  const digits = Math.min(12, Math.max(3, Math.ceil(Math.log10(Math.max(Math.abs(e.bar.min), Math.abs(e.bar.max), 1e-12) / Math.max(e.bar.max - e.bar.min, 1e-12))) + 2));
  const fmt = (v) => String(Number(v.toPrecision(digits)));
  row.dataset.role = "color-bar";
  el("span", "", row).textContent = e.name;
  el("span", "dcw-bar-min", row).textContent = fmt(e.bar.min);
  const bar = el("span", "dcw-bar", row);
  bar.style.background = RAMP_CSS;
  el("span", "dcw-bar-max", row).textContent = fmt(e.bar.max);
}

/** The field values a legend entry stands for ("flagged": every flag reason the filter fields know). */
function legendEntryValues(view, e) {
  if (e.values) return e.values.map(String);
  const facet = (view.model.get("facets") || []).find((f) => f && f.field === e.field);
  return facet ? facet.names.map(String).filter((v) => v !== "") : null;
}

/** Counts of images drawn on top of each other at thumbnail size (badges "×n"), for the visible area. */
export function overlapGroups(view, size) {
  const [ax, ay] = view.toData(0, view.height), [bx, by] = view.toData(view.width, 0);
  const hits = view.index.box(ax, ay, bx, by);
  if (hits.length > 4000) return [];
  const cell = Math.max(3, size * 0.25); // near-exact piles only, not neighbours that merely touch
  const groups = new Map();
  for (const i of hits) {
    if (view.hidden[i]) continue;
    const [sx, sy] = view.toScreen(view.xy[2 * i], view.xy[2 * i + 1]);
    const key = Math.floor(sx / cell) + "," + Math.floor(sy / cell);
    const g = groups.get(key);
    if (g) g.n++; else groups.set(key, { sx, sy, n: 1 });
  }
  return [...groups.values()].filter((g) => g.n > 1);
}

export function drawOverlay(view, size = 6, thumbs = false) {
  const ctx = view.overlay.getContext("2d");
  const dpr = view.dpr || 1;
  const { bg, fg } = view.theme || view.themeColors();
  const fgCss = `rgb(${fg[0]},${fg[1]},${fg[2]})`, haloCss = `rgba(${bg[0]},${bg[1]},${bg[2]},0.9)`;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, view.width, view.height);
  // Overlap counts where thumbnails pile up.
  view.overlaps = thumbs && view.index ? overlapGroups(view, size) : [];
  ctx.font = "600 10px sans-serif";
  ctx.textAlign = "left";
  ctx.textBaseline = "top";
  const badges = [];
  for (const g of view.overlaps) {
    const text = "×" + g.n;
    const w = ctx.measureText(text).width + 6;
    const x = g.sx + size / 2 - w, y = g.sy - size / 2;
    badges.push([x - 2, y - 2, x + w + 2, y + 15]);
    ctx.fillStyle = "rgba(20,20,20,0.8)";
    ctx.fillRect(x, y, w, 13);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, x + 3, y + 1.5);
  }
  // Content labels: largest first, skip any that would overlap one already placed.
  const placed = [];
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  ctx.lineJoin = "round";
  const hits = (box, b) => box[0] < b[2] && box[2] > b[0] && box[1] < b[3] && box[3] > b[1];
  for (const l of view.labels.slice(0, 400)) {
    // A label whose members are all hidden (a filter, Isolate) goes with them.
    if (l.members && view.hidden && !l.members.some((i) => i < view.n && !view.hidden[i])) continue;
    let [sx, sy] = view.toScreen(l.x, l.y);
    if (sx < -50 || sy < -20 || sx > view.width + 50 || sy > view.height + 20) continue;
    ctx.font = `600 ${l.font}px sans-serif`;
    const w = ctx.measureText(l.text).width + 6, h = l.font + 4;
    // Kept inside the map: a label near the edge slides in rather than being cut.
    sx = Math.min(Math.max(sx, w / 2), view.width - w / 2);
    sy = Math.min(Math.max(sy, h / 2), view.height - h / 2);
    const box = [sx - w / 2, sy - h / 2, sx + w / 2, sy + h / 2];
    if (placed.some((p) => hits(box, p.box)) || badges.some((b) => hits(box, b))) continue; // never over a ×n badge
    placed.push({ box, label: l });
    const active = view.activeLabel && view.activeLabel.text === l.text;
    ctx.lineWidth = 3;
    ctx.strokeStyle = haloCss;
    ctx.strokeText(l.text, sx, sy);
    ctx.fillStyle = active ? "#d4a017" : fgCss;
    ctx.fillText(l.text, sx, sy);
  }
  view.placedLabels = placed;
  if (view.lasso && view.lasso.points.length > 1) {
    const p = view.lasso.points;
    ctx.beginPath();
    if (view.lasso.kind === "box") {
      const [ax, ay] = p[0], [bx, by] = p[p.length - 1];
      ctx.rect(Math.min(ax, bx), Math.min(ay, by), Math.abs(bx - ax), Math.abs(by - ay));
    } else {
      ctx.moveTo(p[0][0], p[0][1]);
      for (const q of p.slice(1)) ctx.lineTo(q[0], q[1]);
      ctx.closePath();
    }
    ctx.fillStyle = "rgba(42,111,219,0.12)";
    ctx.fill();
    ctx.setLineDash([5, 4]);
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#2a6fdb";
    ctx.stroke();
    ctx.setLineDash([]);
  }
}

export function renderLegend(view, entries) {
  const L = view.legendEl;
  L.replaceChildren();
  const shapes = [["", "real"], ["dcw-disc", "generated"]];
  if (view.attrs.kind.some((k, i) => k === KIND_TEST && !view.hidden[i])) shapes.push(["dcw-diamond", "held-out test"]);
  for (const [cls, text] of shapes) {
    const row = el("span", "dcw-item", L);
    el("span", "dcw-shape " + cls, row);
    el("span", "", row).textContent = text;
  }
  for (const [cls, text] of [["dcw-fb-good", "good"], ["dcw-fb-bad", "bad"]]) {
    const row = el("span", "dcw-item", L);
    el("span", "dcw-shape " + cls, row);
    el("span", "", row).textContent = text;
  }
  el("span", "dcw-sep", L);
  view.legendValues = {};
  for (const e of entries.slice(0, 30)) {
    const row = el("span", "dcw-item", L);
    if (e.bar) { colorBar(row, e); continue; }
    const sw = el("span", "dcw-swatch", row);
    sw.style.background = `rgb(${e.rgb[0]},${e.rgb[1]},${e.rgb[2]})`;
    el("span", "", row).textContent = e.name;
    const values = e.field ? legendEntryValues(view, e) : null;
    if (!values || !values.length) continue;
    // Click hides the value (again: shows it), alt- or double-click shows it alone.
    (view.legendValues[e.field] = view.legendValues[e.field] || []).push(...values);
    row.classList.add("dcw-toggle");
    row.dataset.field = e.field;
    row.dataset.value = values.join("|");
    row.title = "click: hide / show  ·  alt-click or double-click: show only this";
    const hidden = hiddenValues(view, e.field);
    row.classList.toggle("dcw-off", values.every((v) => hidden.has(v)));
    // A double-click's two clicks hide and show again; its "only" then decides (it is absolute).
    row.addEventListener("click", (ev) => toggleValues(view, e.field, values, ev.altKey));
    row.addEventListener("dblclick", () => toggleValues(view, e.field, values, true));
  }
  if (entries.length > 30) el("span", "dcw-item", L).textContent = `+${entries.length - 30} more`;
}

export function showTooltip(view, i) {
  const tip = view.tooltip;
  const d = view.details.get(i);
  const names = view.model.get("class_names") || [];
  const kind = KIND_NAMES[view.attrs.kind[i]] || "?";
  const round = view.attrs.round[i] ? `, round ${view.attrs.round[i]}` : "";
  const rows = [["", `${names[view.attrs.cls[i]] ?? String(view.attrs.cls[i])} · ${kind}${round}`]];
  const seen = new Set(["label", "source", "round"]);
  if (d) {
    for (const f of d.fields) {
      if (!Array.isArray(f) || f.length < 2 || seen.has(String(f[0]))) continue;
      seen.add(String(f[0]));
      rows.push([String(f[0]), String(f[1])]);
    }
  } else if (view.attrs.feedback[i]) rows.push(["feedback", FEEDBACK_TEXT[view.attrs.feedback[i]] || "?"]);
  view.tipFields.replaceChildren();
  for (const [k, v] of rows) {
    el("dt", "", view.tipFields).textContent = k;
    el("dd", k === "prompt" || k === "caption" ? "dcw-clamp" : "", view.tipFields).textContent = v;
  }
  if (d && d.url) {
    view.tipImg.src = d.url;
    view.tipImg.style.display = "block";
    view.tipThumb.style.display = "none";
  } else {
    view.tipImg.removeAttribute("src");
    view.tipImg.style.display = "none";
    const t = view.thumbs.meta.tile;
    if (view.thumbs.has(i)) {
      view.tipThumb.width = t;
      view.tipThumb.height = t;
      view.thumbs.drawInto(view.tipThumb.getContext("2d"), i, 0, 0, t, t);
      view.tipThumb.style.display = "block";
    } else {
      view.tipThumb.style.display = "none";
    }
  }
  tip.dataset.index = String(i);
  tip.style.display = "block";
  if (view.lastHoverXY) placeTooltip(view, ...view.lastHoverXY);
}

export function placeTooltip(view, sx, sy) {
  const tip = view.tooltip;
  const w = tip.offsetWidth || 200, h = tip.offsetHeight || 200;
  let x = sx + 14, y = sy + 14;
  if (x + w > view.width) x = Math.max(0, sx - w - 14);
  if (y + h > view.height) y = Math.max(0, view.height - h);
  tip.style.left = x + "px";
  tip.style.top = y + "px";
}

export function hideTooltip(view) {
  view.hover = -1;
  clearTimeout(view.detailTimer);
  view.tooltip.style.display = "none";
}