// @ts-check
// anywidget front end of datacrafter-widget: the wiring. ProjectionView holds the map's state (points,
// selection, view transform) and draws; the concerns live in their own modules: toolbar.js (the two
// toolbar rows), interaction.js (pointer, lasso, box, hover, keys), overlay.js (labels, pile counts,
// legend, tooltip), gallery.js (the selection's images), panels.js (Generate, prompts, metrics chart,
// status and progress), renderer.js (WebGL), spatial.js (the grid index), colors.js (colour scales).
// Python's side is traits plus named commands ({type: "command", name, args}); the selection travels
// only as its uint32 buffer trait. Colours follow the host's theme (JupyterLab --jp-* variables,
// VS Code, Colab). Every string that came from a model or a user is put in the DOM with textContent.
import "./widget.css";
import { GridIndex } from "./spatial.js";
import { BUILTIN_MODES, computeColors, parseCssColor } from "./colors.js";
import { Renderer } from "./renderer.js";
import { ThumbPages } from "./thumbs.js";
import { asF32, asU16, asU32, bytesOf, el, KIND_TEST, sameBytes, sameU32 } from "./dom.js";
import { buildToolbar, syncColorMenu, syncFilters, syncHistory, syncSelectionButtons } from "./toolbar.js";
import { bindKeys, bindPointer } from "./interaction.js";
import { drawOverlay, placeTooltip, renderLegend, showTooltip } from "./overlay.js";
import { renderGallery } from "./gallery.js";
import { chartPanel, footer, generatePanel, promptsPanel } from "./panels.js";
import { publishDebugHandle } from "./debug.js";
import { filterPanel } from "./filters.js";
import { samplePanel } from "./sample.js";

export { bytesOf };

/**
 * @typedef {Record<string, any>} Model
 * @typedef {import("@anywidget/types").AnyModel<Model>} AnyModel
 */

let instanceCounter = 0;
let colorProbe = null;
/** RGB of a CSS colour name ("lightblue", "pink"), parsed by the browser; null when it is not one. */
function namedColor(name) {
  if (!/^[a-z]{3,20}$/i.test(name)) return null;
  colorProbe = colorProbe || document.createElement("canvas").getContext("2d");
  colorProbe.fillStyle = "#010203";
  colorProbe.fillStyle = name;
  const got = String(colorProbe.fillStyle);
  return got === "#010203" ? null : parseCssColor(got);
}
/** Below this width (CSS px) the side panel goes under the map: beside it the map would drop below ~520 px. */
const NARROW_PX = 820;
/** Thumbnail size (CSS px) from which thumbnails replace the filled marks when coloured by a field. */
const THUMBS_WHEN_COLOURED = 40;

class ProjectionView {
  /** @param {AnyModel} model @param {HTMLElement} root */
  constructor(model, root) {
    this.model = model;
    this.root = root;
    this.id = ++instanceCounter;
    this.t0 = performance.now();
    this.timings = { firstFrame: null, thumbsReady: null, thumbFrame: null, lassoMs: null, lastFrameMs: null };
    this.frames = 0;
    this.mode = "pan";
    this.selection = new Uint32Array(0);
    this.view = { k: 1, tx: 0, ty: 0 };
    this.userMoved = false;
    this.hover = -1;
    this.activeLabel = null;
    this.details = new Map(); // index -> {fields, url}
    this.placedLabels = [];
    this.overlaps = [];
    this.lasso = null;
    this.lastPolygon = null;
    this.dirty = false;
    this.width = 0;
    this.height = 0;
    this.disposers = [];
    this.buildDom();
    try {
      this.renderer = new Renderer(this.glCanvas, this.model.get("primitive") || "auto");
    } catch (err) {
      this.renderer = null;
      this.statusEl.textContent = String(err.message || err);
    }
    this.thumbs = new ThumbPages(this);
    this.loadPoints();
    this.loadLabels();
    this.loadSelectionFromModel();
    renderGallery(this); // a selection made before the view opened shows at once
    this.sample.sync(); // and a sample view opened from Python
    syncFilters(this);
    syncHistory(this);
    this.bindModel();
    bindPointer(this);
    bindKeys(this);
    publishDebugHandle(this);
  }

  // ---------------------------------------------------------------- DOM
  /** Sends a named command to Python; the selection is already there (its trait). */
  command(name, args = {}) {
    if (name === "unwanted_label" && this.activeLabel) args = { ...args, label: this.activeLabel.text };
    this.model.send({ type: "command", name, args });
  }

  buildDom() {
    const root = this.root;
    root.classList.add("dcw-root");
    root.dataset.dcwId = String(this.id);
    root.tabIndex = 0; // keyboard shortcuts work once the map has focus
    root.setAttribute("data-lm-suppress-shortcuts", "true"); // JupyterLab: our keys are not notebook commands
    root.setAttribute("data-p-suppress-shortcuts", "true");
    const body = el("div", "dcw-body", root);
    const map = el("div", "dcw-map", body);
    this.side = el("div", "dcw-side", body);
    buildToolbar(this, map);
    const info = el("div", "dcw-info", map); // outside the map: never covers data
    this.countEl = el("span", "dcw-count", info);
    this.countEl.dataset.role = "count";
    this.legendEl = el("div", "dcw-legend", info);

    this.stage = el("div", "dcw-stage", map);
    this.glCanvas = el("canvas", "dcw-gl", this.stage);
    this.overlay = el("canvas", "dcw-overlay", this.stage);
    this.tooltip = el("div", "dcw-tooltip", this.stage);
    this.tipThumb = el("canvas", "dcw-tipthumb", this.tooltip);
    this.tipImg = el("img", "", this.tooltip);
    this.tipImg.alt = "";
    this.tipImg.addEventListener("load", () => { if (this.hover >= 0 && this.lastHoverXY) placeTooltip(this, ...this.lastHoverXY); });
    this.tipFields = el("dl", "", this.tooltip);
    this.sample = samplePanel(this, this.stage);
    this.hint = el("div", "dcw-hint-bubble", this.stage);
    this.hint.dataset.role = "hint";

    this.footer = footer(this, map);
    this.statusEl = this.footer.status;
    this.gallery = el("div", "dcw-gallery", map);
    this.gallery.dataset.role = "gallery";
    // The side panel (Generate, prompts) shows when Python offers strategies; the chart goes below.
    this.generate = generatePanel(this, this.side);
    this.filters = filterPanel(this, this.side);
    this.prompts = promptsPanel(this, this.side);
    this.chart = chartPanel(this, root);
    this.syncSide();

    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.stage);
    this.resizeObserver.observe(this.root);
    const onWindow = () => { if (this.model.get("fullscreen")) this.resize(); };
    window.addEventListener("resize", onWindow);
    this.disposers.push(() => window.removeEventListener("resize", onWindow));
    this.syncFullscreen();
    this.setMode("pan");
  }

  /** A short note over the map that fades (e.g. how to zoom with the wheel). */
  showHint(text) {
    this.hint.textContent = text;
    this.hint.classList.add("dcw-show");
    clearTimeout(this.hintTimer);
    this.hintTimer = setTimeout(() => this.hint.classList.remove("dcw-show"), 1500);
  }

  /** Keeps the keyboard focus inside the widget when a focused control is disabled or redrawn: a focus
   *  that falls to the page makes JupyterLab scroll the notebook to its active cell. */
  keepFocus(container) {
    const a = document.activeElement;
    if (a && a !== this.root && container.contains(a)) this.root.focus({ preventScroll: true });
  }

  setMode(mode) {
    this.mode = mode;
    for (const [m, b] of Object.entries(this.modeButtons)) b.classList.toggle("dcw-active", m === mode);
    this.stage.style.cursor = mode === "pan" ? "grab" : "crosshair";
  }

  /** The map's height: `height` from Python, or in full screen what the window leaves for it. */
  mapHeight() {
    if (!this.model.get("fullscreen")) return Math.max(1, Math.floor(this.model.get("height") || 520));
    const top = this.stage.getBoundingClientRect().top - this.root.getBoundingClientRect().top + this.root.scrollTop;
    return Math.max(200, Math.floor(window.innerHeight - top - this.footer.box.offsetHeight - 24));
  }

  /** Full screen on / off: the widget covers the window (a fixed layer, so Python can turn it on too). */
  syncFullscreen() {
    const on = Boolean(this.model.get("fullscreen"));
    this.root.classList.toggle("dcw-fullscreen", on);
    this.fullscreenButton.classList.toggle("dcw-active", on);
    this.fullscreenButton.textContent = on ? "Exit ⛶" : "⛶";
    this.fullscreenButton.setAttribute("aria-label", on ? "exit full screen" : "full screen");
    this.resize();
  }

  setFullscreen(on) {
    this.model.set("fullscreen", Boolean(on));
    this.model.save_changes();
  }

  resize() {
    // Narrow widgets (a side bar open in JupyterLab, marimo's column) stack the side panel under the map.
    this.root.classList.toggle("dcw-narrow", this.root.clientWidth < NARROW_PX);
    const w = Math.max(1, Math.floor(this.stage.clientWidth));
    const h = this.mapHeight();
    this.stage.style.height = h + "px";
    this.side.style.setProperty("--dcw-side-max", h + 70 + "px");
    if (w === this.width && h === this.height) return;
    const dpr = window.devicePixelRatio || 1;
    this.dpr = dpr;
    for (const c of [this.glCanvas, this.overlay]) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
      c.style.width = w + "px";
      c.style.height = h + "px";
    }
    this.width = w;
    this.height = h;
    if (!this.userMoved) this.fitView();
    this.requestDraw();
  }

  // ---------------------------------------------------------------- data
  loadPoints() {
    const xy = asF32(this.model.get("xy"));
    const n = xy.length >> 1;
    this.n = n;
    this.xy = xy;
    const xs = new Float32Array(n), ys = new Float32Array(n);
    for (let i = 0; i < n; i++) { xs[i] = xy[2 * i]; ys[i] = xy[2 * i + 1]; }
    const t = performance.now();
    this.index = new GridIndex(xs, ys);
    this.timings.indexMs = performance.now() - t;
    const get8 = (k) => { const a = bytesOf(this.model.get(k)); return a.length === n ? a : new Uint8Array(n); };
    const get16 = (k) => { const a = asU16(this.model.get(k)); return a.length === n ? a : new Uint16Array(n); };
    this.attrs = { kind: get8("kind"), cls: get16("cls"), round: get16("round"), feedback: get8("feedback"), flag: get8("flag"), codes: get16("color_codes") };
    this.state = new Uint8Array(n * 4);
    this.selection = asU32(this.model.get("selection")).filter((i) => i < n).sort();
    this.loadMarks(false);
    const [x0, y0, x1, y1] = this.index.bounds;
    this.spacing = n > 0 ? Math.sqrt(Math.max((x1 - x0) * (y1 - y0), 1e-12) / n) : 1;
    if (this.renderer) this.renderer.setPositions(xy);
    this.thumbs?.sync();
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    this.details.clear();
    this.recolor();
    if (!this.userMoved) this.fitView();
    this.requestDraw();
  }

  /** Feedback, flags and the hidden mask changed (a small update: positions and the index stay). A mask
   *  equal to the one drawn (Python confirming a filter the browser showed already) costs one comparison. */
  loadMarks(upload = true) {
    const n = this.n;
    const get8 = (k) => { const a = bytesOf(this.model.get(k)); return a.length === n ? a : new Uint8Array(n); };
    const feedback = get8("feedback"), flag = get8("flag");
    // While filters shown ahead of Python are in flight, the mask drawn stays (the last answer brings Python's).
    const hidden = this.filtersInFlight > 0 && this.hidden && this.hidden.length === n ? this.hidden : get8("hidden");
    const marksSame = upload && sameBytes(feedback, this.attrs.feedback) && sameBytes(flag, this.attrs.flag);
    if (marksSame && sameBytes(hidden, this.hidden)) return;
    this.attrs.feedback = feedback;
    this.attrs.flag = flag;
    this.hidden = hidden;
    const s = this.state;
    for (let i = 0; i < n; i++) {
      s[4 * i] = this.attrs.kind[i];
      s[4 * i + 2] = this.hidden[i];
      s[4 * i + 3] = this.attrs.feedback[i];
    }
    this.afterHidden(upload, !marksSame);
  }

  /** A legend, sidebar or test / removed filter shown at once: `mask` is what Python will send for `hide`
   *  and `flags` (filters.js predictHidden); until Python answers, the filter controls show them. */
  showFilter(hide, mask, flags) {
    this.pendingHide = hide;
    this.pendingFlags = flags;
    this.filtersInFlight = (this.filtersInFlight || 0) + 1;
    if (sameBytes(mask, this.hidden)) { this.filters.sync(); this.renderLegend(); return; }
    this.hidden = mask;
    const s = this.state;
    for (let i = 0; i < this.n; i++) s[4 * i + 2] = mask[i];
    this.afterHidden(true, false);
  }

  /** What follows a new hidden mask: the selection loses hidden points, the GPU state, legend, gallery. */
  afterHidden(upload, recolor) {
    // Hidden or held-out points cannot stay selected.
    const keep = this.selection.filter((i) => this.selectable(i));
    if (keep.length !== this.selection.length) this.commitSelection(keep, false);
    this.applySelectionToState();
    if (upload && this.renderer) this.renderer.setState(this.state);
    if (upload) { if (recolor) this.recolor(); else this.renderLegend(); renderGallery(this); }
    this.requestDraw();
  }

  renderLegend() { if (this.legend) renderLegend(this, this.legend); }

  selectable(i) { return i < this.n && !this.hidden[i] && this.attrs.kind[i] !== KIND_TEST; }

  selectableOnly(hits) {
    const out = new Uint32Array(hits.length);
    let count = 0;
    for (let j = 0; j < hits.length; j++) { const i = hits[j]; if (this.selectable(i)) out[count++] = i; }
    return out.slice(0, count);
  }

  recolor() {
    const mode = this.model.get("color_by") || "class";
    syncColorMenu(this, this.model.get("color_options") || BUILTIN_MODES, mode);
    this.attrs.codes = asU16(this.model.get("color_codes"));
    const values = asF32(this.model.get("color_values"));
    const { colors, legend } = computeColors(mode, this.n, this.attrs, this.model.get("class_names") || [], this.model.get("color_names") || [],
      { values, scale: this.model.get("color_scale") || {}, named: (name) => namedColor(name) });
    if (this.renderer) { this.renderer.setColors(colors); this.renderer.setState(this.state); }
    this.legend = legend;
    renderLegend(this, legend);
    this.requestDraw();
  }

  loadLabels() {
    const labels = this.model.get("labels") || [];
    this.labels = labels
      .filter((l) => l && typeof l.text === "string" && Number.isFinite(l.x) && Number.isFinite(l.y))
      .map((l) => ({ text: l.text, x: l.x, y: l.y, n: Number(l.n) || 1, members: Array.isArray(l.members) ? l.members : null }))
      .sort((a, b) => b.n - a.n);
    const maxN = this.labels.reduce((m, l) => Math.max(m, l.n), 1);
    for (const l of this.labels) l.font = 11 + Math.round(7 * Math.log1p(l.n) / Math.log1p(maxN));
    this.requestDraw();
  }

  /** Thumbnails of these points arrived (thumbs.js): draw them, and the gallery if it shows any. */
  onThumbs(points) {
    this.thumbsPending = true;
    // While more pages are on their way, redraw at most every 200 ms: on software WebGL a frame full of
    // thumbnails costs more than a page takes to arrive, and drawing after each one delays the last.
    if (this.thumbs.inflight.size === 0) this.requestDraw();
    else if (!this.thumbDrawTimer) this.thumbDrawTimer = setTimeout(() => { this.thumbDrawTimer = 0; this.requestDraw(); }, 200);
    if (this.selection.length && this.gallery.style.display !== "none") {
      const shown = new Set(this.selection.subarray(0, 120));
      if (points.some((i) => shown.has(i))) renderGallery(this);
    }
  }

  loadSelectionFromModel() {
    const sel = asU32(this.model.get("selection")).filter((i) => i < this.n).sort();
    if (sameU32(sel, this.selection)) return; // our own change coming back: no echo
    this.selection = sel;
    this.applySelectionToState();
    if (this.renderer) this.renderer.setState(this.state);
    renderGallery(this);
    this.requestDraw();
  }

  applySelectionToState() {
    const s = this.state;
    for (let i = 0; i < this.n; i++) s[4 * i + 1] = 0;
    for (const i of this.selection) s[4 * i + 1] = 1;
    this.countEl.textContent = `${this.selection.length} of ${this.n} selected`;
    syncSelectionButtons(this);
    if (this.filters) this.filters.sync();
  }

  /** Sets the selection locally and sends it to Python through the selection trait (a uint32 buffer). */
  /** describe: the person changed the selection here, so the status line says what it now holds
   *  (a search's "13 nearest images..." would otherwise stay after Clear). */
  commitSelection(sel, describe = true) {
    sel = Uint32Array.from(sel).sort();
    if (sameU32(sel, this.selection)) { this.applySelectionToState(); return; }
    if (describe) this.footer.say(sel.length ? `${sel.length} image${sel.length === 1 ? "" : "s"} selected` : "selection cleared");
    this.selection = sel;
    this.applySelectionToState();
    if (this.renderer) this.renderer.setState(this.state);
    renderGallery(this);
    this.requestDraw();
    this.selectionSends = (this.selectionSends || 0) + 1;
    this.model.set("selection", new DataView(sel.buffer.slice(0)));
    this.model.save_changes();
  }

  syncSide() {
    const any = (this.model.get("strategies") || []).length || (this.model.get("facets") || []).length;
    this.side.style.display = any ? "" : "none";
    this.generate.box.style.display = (this.model.get("strategies") || []).length ? "" : "none";
    this.prompts.box.style.display = this.generate.box.style.display;
  }

  resetView() { this.userMoved = false; this.fitView(); this.requestDraw(); }

  bindModel() {
    const on = (evt, fn) => { this.model.on(evt, fn); this.disposers.push(() => this.model.off(evt, fn)); };
    // One Python-side set_frame changes several traits in one message: reload the points once.
    const queue = (key, fn) => () => {
      if (this.queued?.[key]) return;
      this.queued = this.queued || {};
      this.queued[key] = true;
      queueMicrotask(() => { this.queued[key] = false; if (!this.destroyed) fn(); });
    };
    const reload = queue("points", () => this.loadPoints());
    const marks = queue("marks", () => { if (!this.queued.points) this.loadMarks(); });
    const recolor = queue("color", () => this.recolor());
    for (const k of ["xy", "kind", "cls", "round"]) on("change:" + k, reload);
    for (const k of ["feedback", "flag", "hidden"]) on("change:" + k, marks);
    for (const k of ["color_by", "class_names", "color_codes", "color_names", "color_options", "color_values", "color_scale"]) on("change:" + k, recolor);
    on("change:labels", () => this.loadLabels());
    on("change:thumbs", () => { this.thumbs.sync(); this.requestDraw(); });
    on("change:selection", () => this.loadSelectionFromModel());
    on("change:status", () => this.footer.syncStatus());
    on("change:progress", () => { this.footer.syncProgress(); this.generate.syncRunning(); });
    const facets = queue("facets", () => { this.filters.load(); this.syncSide(); });
    on("change:facets", facets);
    on("change:facet_codes", facets);
    on("change:filters", () => { syncFilters(this); this.filters.sync(); this.renderLegend(); });
    on("change:history", () => syncHistory(this));
    on("change:strategies", () => { this.generate.syncStrategies(); this.syncSide(); });
    on("change:prompts", () => this.prompts.sync());
    on("change:chart", () => this.chart.sync());
    on("change:height", () => this.resize());
    on("change:fullscreen", () => this.syncFullscreen());
    const sample = queue("sample", () => this.sample.sync());
    for (const k of ["sample", "sample_image", "sample_regenerated"]) on("change:" + k, sample);
    on("msg:custom", (msg, buffers) => this.onCustom(msg, buffers));
  }

  onCustom(msg, buffers) {
    if (!msg || typeof msg !== "object") return;
    if (msg.type === "details") {
      const old = this.details.get(msg.index);
      if (old && old.url) URL.revokeObjectURL(old.url);
      let url = null;
      if (buffers && buffers.length > 0) url = URL.createObjectURL(new Blob([bytesOf(buffers[0])], { type: "image/png" }));
      this.details.set(msg.index, { fields: Array.isArray(msg.fields) ? msg.fields : [], url });
      if (this.hover === msg.index) showTooltip(this, msg.index);
    } else if (msg.type === "result") {
      if (msg.message) this.footer.say(String(msg.message));
      if (msg.name === "filter" && this.filtersInFlight && --this.filtersInFlight === 0) {
        // Python has answered every filter shown ahead of it: its view state and mask count again.
        this.pendingHide = null;
        this.pendingFlags = null;
        this.loadMarks();
        syncFilters(this);
        this.filters.sync();
        this.renderLegend();
      }
    } else if (msg.type === "thumbs") {
      this.thumbs.receive(msg, buffers);
    } else if (msg.type === "zoom") {
      const idx = buffers && buffers.length ? asU32(buffers[0]) : new Uint32Array(0);
      this.zoomTo(idx);
    }
  }

  // ---------------------------------------------------------------- view
  fitView() { this.fitBounds(this.visibleBounds()); }

  visibleBounds() {
    if (!this.index || this.n === 0) return null;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < this.n; i++) {
      if (this.hidden && this.hidden[i]) continue;
      const x = this.xy[2 * i], y = this.xy[2 * i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    return x0 === Infinity ? this.index.bounds : [x0, y0, x1, y1];
  }

  fitBounds(b, minSpan = 0) {
    if (!b || this.width === 0) return;
    let [x0, y0, x1, y1] = b;
    const cx = (x0 + x1) / 2, cy = (y0 + y1) / 2;
    const w = Math.max(x1 - x0, minSpan, 1e-9), h = Math.max(y1 - y0, minSpan, 1e-9);
    const pad = 28;
    const k = Math.max(1e-9, Math.min((this.width - 2 * pad) / w, (this.height - 2 * pad) / h));
    this.view = { k, tx: this.width / 2 - cx * k, ty: this.height / 2 + cy * k };
  }

  /** Fits these points in view; spans of fewer than `minPoints` spacings are widened so single images show as thumbnails. */
  zoomTo(indices, minPoints = 6) {
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (const i of indices) {
      if (i >= this.n) continue;
      const x = this.xy[2 * i], y = this.xy[2 * i + 1];
      if (x < x0) x0 = x; if (x > x1) x1 = x; if (y < y0) y0 = y; if (y > y1) y1 = y;
    }
    if (x0 === Infinity) return;
    this.fitBounds([x0, y0, x1, y1], this.spacing * minPoints);
    this.userMoved = true;
    this.requestDraw();
  }

  zoomToSelection() { if (this.selection.length) this.zoomTo(this.selection); }

  toData(sx, sy) { return [(sx - this.view.tx) / this.view.k, (this.view.ty - sy) / this.view.k]; }
  toScreen(x, y) { return [x * this.view.k + this.view.tx, -y * this.view.k + this.view.ty]; }

  markSize() {
    const px = this.spacing * this.view.k;
    // Coloured by a field (not the default class): filled marks that show the colour, thumbnails from 40 px.
    const field = (this.model.get("color_by") || "class") !== "class";
    const thumbs = Boolean(this.renderer && this.thumbs && this.thumbs.enabled) && px * 0.9 >= (field ? THUMBS_WHEN_COLOURED : 14);
    const size = thumbs ? Math.min(px * 0.9, 128) : Math.max(4, Math.min(px * 0.7, field ? 24 : 10));
    return { size, thumbs };
  }

  /** Sorted indices of the points within a w x h px frame of view `v` (and half a mark beyond), or null
   *  when that is most of them (then drawing them all is as cheap). */
  pointsIn(v, w, h, size) {
    if (!this.index || this.n < 20000) return null;
    const m = size * 0.6 + 2;
    const x0 = (-m - v.tx) / v.k, x1 = (w + m - v.tx) / v.k, y1 = (v.ty + m) / v.k, y0 = (v.ty - h - m) / v.k;
    const [bx0, by0, bx1, by1] = this.index.bounds;
    const share = (Math.max(0, Math.min(x1, bx1) - Math.max(x0, bx0)) * Math.max(0, Math.min(y1, by1) - Math.max(y0, by0)))
      / Math.max((bx1 - bx0) * (by1 - by0), 1e-12);
    return share > 0.5 ? null : this.index.box(x0, y0, x1, y1);
  }

  /** The host theme's colours, read from the page: background, text, and a halo for labels. */
  themeColors() {
    const cs = getComputedStyle(this.stage);
    const bg = parseCssColor(cs.backgroundColor) || [255, 255, 255];
    const fg = parseCssColor(getComputedStyle(this.root).color) || [34, 34, 34];
    return { bg, fg };
  }

  /** Tells Python whether the host page is dark, so what it renders (the chart) matches. */
  reportTheme(bg) {
    const theme = 0.299 * bg[0] + 0.587 * bg[1] + 0.114 * bg[2] < 128 ? "dark" : "light";
    if (theme === this.model.get("theme")) return;
    this.model.set("theme", theme);
    this.model.save_changes();
  }

  requestDraw() {
    if (this.dirty || this.destroyed) return;
    this.dirty = true;
    requestAnimationFrame(() => this.draw());
  }

  draw() {
    this.dirty = false;
    if (this.destroyed || this.width === 0) return;
    const t = performance.now();
    const { size, thumbs } = this.markSize();
    this.theme = this.themeColors();
    this.reportTheme(this.theme.bg);
    // The frame that first shows thumbnails (a zoom in) asks for them before it is drawn, so Python
    // encodes the pages while this frame is drawn; later frames ask a moment after the view settles.
    if (thumbs && !this.thumbsShown) this.thumbs.update();
    this.thumbs.flush();
    if (this.renderer) {
      this.renderer.draw(this.view, {
        width: this.width, height: this.height, dpr: this.dpr || 1, size, thumbs,
        dim: this.selection.length > 0 ? 0.35 : 1, anySelected: this.selection.length > 0,
        background: this.theme.bg.map((v) => v / 255), interactive: Boolean(this.zooming),
        inView: (v, w, h) => this.pointsIn(v, w, h, size),
      });
    }
    drawOverlay(this, size, thumbs);
    const first = this.timings.firstFrame === null && this.n > 0;
    const thumbFrame = this.thumbsPending && thumbs;
    if ((first || thumbFrame) && this.renderer) {
      // Force the GPU to finish so the recorded time is the time the pixels exist.
      this.renderer.gl.readPixels(0, 0, 1, 1, this.renderer.gl.RGBA, this.renderer.gl.UNSIGNED_BYTE, new Uint8Array(4));
      if (first) this.timings.firstFrame = performance.now() - this.t0;
      if (thumbFrame) { this.timings.thumbFrame = performance.now() - this.t0; this.thumbsPending = false; }
    }
    if (thumbs) this.thumbs.schedule(); // ask for what this view shows and lacks
    this.timings.lastFrameMs = performance.now() - t;
    this.frames++;
    this.thumbsShown = thumbs;
    this.stage.dataset.view = JSON.stringify({ k: this.view.k, tx: this.view.tx, ty: this.view.ty, width: this.width, height: this.height });
    this.stage.dataset.frames = String(this.frames);
  }





  // ---------------------------------------------------------------- keyboard


  // ---------------------------------------------------------------- interaction
























  destroy() {
    this.destroyed = true;
    this.disposers.forEach((f) => f());
    this.resizeObserver.disconnect();
    clearTimeout(this.detailTimer);
    clearTimeout(this.zoomTimer);
    clearTimeout(this.hintTimer);
    clearTimeout(this.thumbDrawTimer);
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    this.thumbs.destroy();
    if (this.renderer) this.renderer.destroy();
    this.chart.dispose();
    this.sample.dispose();
    if (window.__dcw) window.__dcw = window.__dcw.filter((h) => h !== this.handle);
  }
}

/** @type {import("@anywidget/types").Render<Model>} */
function render({ model, el: host }) {
  const root = document.createElement("div");
  host.appendChild(root);
  const view = new ProjectionView(model, root);
  return () => {
    view.destroy();
    root.remove();
  };
}

export default { render };
