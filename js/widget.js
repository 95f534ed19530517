// @ts-check
// anywidget front end of datacrafter-widget: the projection of every real and generated image
// (WebGL2 thumbnails or marks), content labels as words, lasso / box selection synced to Python as
// a uint32 buffer trait (the selection's only channel), feedback buttons with undo / redo, search,
// colour by any column, filters, a gallery of the selection, keyboard shortcuts and lazily fetched
// hover details. Colours follow the host's theme (JupyterLab --jp-* variables, VS Code, Colab).
// Every string that came from a model or a user is put in the DOM with textContent, never as HTML.
import "./widget.css";
import { GridIndex, combineSelection } from "./spatial.js";
import { BUILTIN_MODES, computeColors, parseCssColor } from "./colors.js";
import { Renderer } from "./renderer.js";

/**
 * @typedef {Record<string, any>} Model
 * @typedef {import("@anywidget/types").AnyModel<Model>} AnyModel
 */

const KIND_NAMES = ["real", "generated", "held-out test"];
const FEEDBACK_TEXT = ["", "good", "bad", "removed"];
const KIND_TEST = 2;
const GALLERY_MAX = 120;

/** Copies a synced binary trait (DataView / ArrayBuffer / typed array / null) into a fresh, aligned Uint8Array. */
export function bytesOf(v) {
  if (v == null) return new Uint8Array(0);
  if (v instanceof ArrayBuffer) return new Uint8Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return new Uint8Array(0);
}
const asF32 = (v) => { const b = bytesOf(v); return new Float32Array(b.buffer, 0, b.byteLength >> 2); };
const asU16 = (v) => { const b = bytesOf(v); return new Uint16Array(b.buffer, 0, b.byteLength >> 1); };
const asU32 = (v) => { const b = bytesOf(v); return new Uint32Array(b.buffer, 0, b.byteLength >> 2); };

/**
 * @param {string} tag
 * @param {string} [cls]
 * @param {HTMLElement} [parent]
 * @returns {any}
 */
function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

function sameU32(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

let instanceCounter = 0;

class ProjectionView {
  /** @param {AnyModel} model @param {HTMLElement} root */
  constructor(model, root) {
    this.model = model;
    this.root = root;
    this.id = ++instanceCounter;
    this.t0 = performance.now();
    this.timings = { firstFrame: null, atlasFrame: null, lassoMs: null, lastFrameMs: null };
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
    this.loadPoints();
    this.loadLabels();
    this.loadAtlas();
    this.loadSelectionFromModel();
    this.syncStatus();
    this.syncProgress();
    this.syncFilters();
    this.syncHistory();
    this.bindModel();
    this.bindPointer();
    this.bindKeys();
    this.publishDebugHandle();
  }

  // ---------------------------------------------------------------- DOM
  button(parent, text, tip, onClick, cls = "") {
    const b = el("button", cls, parent);
    b.textContent = text;
    b.title = tip;
    b.addEventListener("click", onClick);
    return b;
  }

  buildDom() {
    const root = this.root;
    root.classList.add("dcw-root");
    root.dataset.dcwId = String(this.id);
    root.tabIndex = 0; // keyboard shortcuts work once the map has focus
    root.setAttribute("data-lm-suppress-shortcuts", "true"); // JupyterLab: our keys are not notebook commands
    root.setAttribute("data-p-suppress-shortcuts", "true");
    // Row 1: how to select, what to do with the selection.
    const bar = el("div", "dcw-toolbar", root);
    this.modeButtons = {};
    for (const [mode, text, tip] of [
      ["pan", "Pan", "drag pans; shift-drag lassoes (adds), alt/ctrl-drag subtracts  [p]"],
      ["lasso", "Lasso", "drag draws a lasso; shift adds, alt/ctrl subtracts  [l]"],
      ["box", "Box", "drag draws a box; shift adds, alt/ctrl subtracts  [x]"],
    ]) {
      const b = this.button(bar, text, tip, () => this.setMode(mode));
      b.dataset.mode = mode;
      this.modeButtons[mode] = b;
    }
    el("span", "dcw-sep", bar);
    this.actionButtons = {};
    for (const [name, text, cls, tip] of [
      ["bad", "Bad", "dcw-bad", "mark the selected images as bad  [b]"],
      ["good", "Good", "dcw-good", "mark the selected images as good  [g]"],
      ["remove", "Remove", "", "remove the selected images from the dataset (hidden from the map; Undo restores)  [Delete]"],
      ["unmark", "Unmark", "", "clear the marks of the selected images  [u]"],
      ["undo", "↶ Undo", "", "undo the last feedback action  [ctrl+z]"],
      ["redo", "↷", "", "redo the last undone feedback action  [ctrl+shift+z]"],
      ["evolve", "Evolve", "", "evolve the prompts of the selected images' classes from the feedback"],
      ["unwanted_label", "Unwanted", "", "mark the clicked content label as unwanted on the selected generated images"],
    ]) {
      const b = this.button(bar, text, tip, () => this.sendAction(name), cls);
      b.dataset.action = name;
      this.actionButtons[name] = b;
    }

    // Row 2: find, colour, filter, navigate.
    const bar2 = el("div", "dcw-toolbar", root);
    this.searchInput = el("input", "dcw-search", bar2);
    this.searchInput.type = "search";
    this.searchInput.placeholder = "search  [/]";
    this.searchInput.title = "words in caption, prompt, label or id (text), or a description (clip); Enter searches";
    this.searchInput.dataset.role = "search";
    this.searchMode = el("select", "", bar2);
    this.searchMode.dataset.role = "search-mode";
    this.searchMode.title = "text: words in caption, prompt, label or id; clip: images nearest to the text by CLIP";
    for (const v of ["text", "clip"]) { const o = el("option", "", this.searchMode); o.value = v; o.textContent = v; }
    this.searchInput.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") { ev.preventDefault(); this.search(); }
      ev.stopPropagation();
    });
    el("span", "dcw-sep", bar2);
    this.colorSelect = el("select", "", bar2);
    this.colorSelect.title = "colour by";
    this.colorSelect.dataset.role = "color-by";
    this.colorSelect.addEventListener("change", () => {
      this.model.set("color_by", this.colorSelect.value);
      this.model.save_changes();
    });
    el("span", "dcw-sep", bar2);
    this.filterBoxes = {};
    for (const [key, text, tip] of [
      ["show_test", "test", "show the held-out test images (diamonds; never marked)"],
      ["show_removed", "removed", "show removed images"],
    ]) {
      const lab = el("label", "dcw-check", bar2);
      const box = el("input", "", lab);
      box.type = "checkbox";
      box.dataset.filter = key;
      lab.title = tip;
      lab.appendChild(document.createTextNode(" " + text));
      box.addEventListener("change", () => this.sendAction("filter", { [key]: box.checked }));
      this.filterBoxes[key] = box;
    }
    this.isolateButton = this.button(bar2, "Isolate", "show only the selected images (again: show all)  [i]", () => this.isolate());
    this.isolateButton.dataset.role = "isolate";
    this.neighborsButton = this.button(bar2, "Similar", "select the nearest images (CLIP neighbours) to the selected one  [n]", () => this.sendAction("neighbors"));
    this.neighborsButton.dataset.action = "neighbors";
    el("span", "dcw-sep", bar2);
    this.button(bar2, "Zoom", "zoom to the selection  [z]", () => this.zoomToSelection()).dataset.role = "zoom";
    this.button(bar2, "Fit", "fit everything in view  [f]", () => { this.userMoved = false; this.fitView(); this.requestDraw(); }).dataset.role = "reset";
    this.button(bar2, "Clear", "clear the selection  [Escape]", () => { this.activeLabel = null; this.commitSelection(new Uint32Array(0)); }).dataset.role = "clear";

    const info = el("div", "dcw-info", root); // outside the map: never covers data
    this.countEl = el("span", "dcw-count", info);
    this.countEl.dataset.role = "count";
    this.legendEl = el("div", "dcw-legend", info);

    this.stage = el("div", "dcw-stage", root);
    this.glCanvas = el("canvas", "dcw-gl", this.stage);
    this.overlay = el("canvas", "dcw-overlay", this.stage);
    this.tooltip = el("div", "dcw-tooltip", this.stage);
    this.tipThumb = el("canvas", "dcw-tipthumb", this.tooltip);
    this.tipImg = el("img", "", this.tooltip);
    this.tipImg.alt = "";
    this.tipImg.addEventListener("load", () => { if (this.hover >= 0 && this.lastHoverXY) this.placeTooltip(...this.lastHoverXY); });
    this.tipFields = el("dl", "", this.tooltip);

    const footer = el("div", "dcw-footer", root);
    this.statusEl = el("span", "dcw-status", footer);
    this.statusEl.dataset.role = "status";
    const prog = el("span", "dcw-progress", footer);
    prog.dataset.role = "progress";
    this.progressWrap = prog;
    this.progressBar = el("progress", "", prog);
    this.progressText = el("span", "", prog);
    const cancel = this.button(prog, "Cancel", "stop the running job; finished work is kept", () => this.sendAction("cancel"));
    cancel.dataset.action = "cancel";

    this.gallery = el("div", "dcw-gallery", root);
    this.gallery.dataset.role = "gallery";

    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.stage);
    this.setMode("pan");
  }

  setMode(mode) {
    this.mode = mode;
    for (const [m, b] of Object.entries(this.modeButtons)) b.classList.toggle("dcw-active", m === mode);
    this.stage.style.cursor = mode === "pan" ? "grab" : "crosshair";
  }

  resize() {
    const w = Math.max(1, Math.floor(this.stage.clientWidth));
    const h = Math.max(1, Math.floor(this.model.get("height") || 520));
    this.stage.style.height = h + "px";
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
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    this.details.clear();
    this.recolor();
    if (!this.userMoved) this.fitView();
    this.requestDraw();
  }

  /** Feedback, flags and the hidden mask changed (a small update: positions and the index stay). */
  loadMarks(upload = true) {
    const n = this.n;
    const get8 = (k) => { const a = bytesOf(this.model.get(k)); return a.length === n ? a : new Uint8Array(n); };
    this.attrs.feedback = get8("feedback");
    this.attrs.flag = get8("flag");
    this.hidden = get8("hidden");
    const s = this.state;
    for (let i = 0; i < n; i++) {
      s[4 * i] = this.attrs.kind[i];
      s[4 * i + 2] = this.hidden[i];
      s[4 * i + 3] = this.attrs.feedback[i];
    }
    // Hidden or held-out points cannot stay selected.
    const keep = this.selection.filter((i) => this.selectable(i));
    if (keep.length !== this.selection.length) this.commitSelection(keep);
    this.applySelectionToState();
    if (upload && this.renderer) this.renderer.setState(this.state);
    if (upload) { this.recolor(); this.renderGallery(); }
    this.requestDraw();
  }

  selectable(i) { return i < this.n && !this.hidden[i] && this.attrs.kind[i] !== KIND_TEST; }

  selectableOnly(hits) {
    const out = [];
    for (const i of hits) if (this.selectable(i)) out.push(i);
    return Uint32Array.from(out);
  }

  recolor() {
    const mode = this.model.get("color_by") || "class";
    const options = this.model.get("color_options") || BUILTIN_MODES;
    if (this.colorSelect.options.length !== options.length || [...this.colorSelect.options].some((o, k) => o.value !== options[k])) {
      this.colorSelect.replaceChildren();
      for (const v of options) { const o = el("option", "", this.colorSelect); o.value = v; o.textContent = v; }
    }
    this.colorSelect.value = mode;
    this.attrs.codes = asU16(this.model.get("color_codes"));
    const { colors, legend } = computeColors(mode, this.n, this.attrs, this.model.get("class_names") || [], this.model.get("color_names") || []);
    if (this.renderer) { this.renderer.setColors(colors); this.renderer.setState(this.state); }
    this.renderLegend(legend);
    this.requestDraw();
  }

  renderLegend(entries) {
    const L = this.legendEl;
    L.replaceChildren();
    const shapes = [["", "real"], ["dcw-disc", "generated"]];
    if (this.attrs.kind.some((k, i) => k === KIND_TEST && !this.hidden[i])) shapes.push(["dcw-diamond", "held-out test"]);
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
    for (const e of entries.slice(0, 30)) {
      const row = el("span", "dcw-item", L);
      const sw = el("span", "dcw-swatch", row);
      sw.style.background = `rgb(${e.rgb[0]},${e.rgb[1]},${e.rgb[2]})`;
      el("span", "", row).textContent = e.name;
    }
    if (entries.length > 30) el("span", "dcw-item", L).textContent = `+${entries.length - 30} more`;
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

  async loadAtlas() {
    const token = (this.atlasToken = (this.atlasToken || 0) + 1);
    const bytes = bytesOf(this.model.get("atlas"));
    const grid = this.model.get("atlas_grid") || {};
    if (this.atlasBitmap) { this.atlasBitmap.close?.(); this.atlasBitmap = null; }
    if (!this.renderer) return;
    if (bytes.length === 0 || !grid.cols || !grid.tile) {
      this.renderer.setAtlas(null);
      this.requestDraw();
      return;
    }
    try {
      const type = grid.format === "jpeg" ? "image/jpeg" : "image/png";
      const bitmap = await createImageBitmap(new Blob([bytes], { type }));
      if (token !== this.atlasToken) { bitmap.close?.(); return; }
      this.renderer.setAtlas(bitmap, grid);
      this.atlasGrid = grid;
      this.timings.atlasReady = performance.now() - this.t0;
      // Keep the decoded atlas for instant tooltip and gallery thumbnails unless it is huge.
      if (bitmap.width * bitmap.height <= 4096 * 4096) this.atlasBitmap = bitmap; else bitmap.close?.();
      this.atlasPending = true;
      this.renderGallery();
      this.requestDraw();
    } catch (err) {
      this.statusEl.textContent = "could not load thumbnails: " + String(err.message || err);
    }
  }

  loadSelectionFromModel() {
    const sel = asU32(this.model.get("selection")).filter((i) => i < this.n).sort();
    if (sameU32(sel, this.selection)) return; // our own change coming back: no echo
    this.selection = sel;
    this.applySelectionToState();
    if (this.renderer) this.renderer.setState(this.state);
    this.renderGallery();
    this.requestDraw();
  }

  applySelectionToState() {
    const s = this.state;
    for (let i = 0; i < this.n; i++) s[4 * i + 1] = 0;
    for (const i of this.selection) s[4 * i + 1] = 1;
    this.countEl.textContent = `${this.selection.length} of ${this.n} selected`;
    const none = this.selection.length === 0;
    for (const name of ["bad", "good", "remove", "unmark", "evolve"]) this.actionButtons[name].disabled = none;
    this.neighborsButton.disabled = none;
    this.actionButtons.unwanted_label.disabled = !this.activeLabel || none;
  }

  /** Sets the selection locally and sends it to Python through the selection trait (a uint32 buffer). */
  commitSelection(sel) {
    sel = Uint32Array.from(sel).sort();
    if (sameU32(sel, this.selection)) { this.applySelectionToState(); return; }
    this.selection = sel;
    this.applySelectionToState();
    if (this.renderer) this.renderer.setState(this.state);
    this.renderGallery();
    this.requestDraw();
    this.selectionSends = (this.selectionSends || 0) + 1;
    this.model.set("selection", new DataView(sel.buffer.slice(0)));
    this.model.save_changes();
  }

  /** Asks Python to act; the selection is already there (its trait), so only the action's own fields travel. */
  sendAction(name, payload = {}) {
    if (name === "unwanted_label" && this.activeLabel) payload = { ...payload, label: this.activeLabel.text };
    this.model.send({ type: "action", name, payload });
  }

  search() {
    this.sendAction("search", { query: this.searchInput.value, mode: this.searchMode.value });
  }

  isolate() {
    const isolated = Boolean((this.model.get("filters") || {}).isolated);
    this.sendAction("isolate", isolated || this.selection.length === 0 ? { clear: true } : {});
  }

  syncStatus() { this.statusEl.textContent = String(this.model.get("status") || ""); this.statusEl.title = this.statusEl.textContent; }

  syncProgress() {
    const p = this.model.get("progress") || {};
    const running = Boolean(p.running);
    this.progressWrap.style.display = running ? "flex" : "none";
    const total = Number(p.total) || 0;
    if (total > 0) {
      this.progressBar.max = total;
      this.progressBar.value = Math.max(0, Number(p.done) || 0);
      this.progressText.textContent = `${p.done || 0}/${total} ${p.message || ""}`;
    } else {
      this.progressBar.removeAttribute("value"); // indeterminate: the work has no count (e.g. the first map)
      this.progressText.textContent = String(p.message || "");
    }
  }

  syncFilters() {
    const f = this.model.get("filters") || {};
    for (const [k, box] of Object.entries(this.filterBoxes)) box.checked = Boolean(f[k]);
    this.isolateButton.textContent = f.isolated ? "Show all" : "Isolate";
    this.isolateButton.classList.toggle("dcw-active", Boolean(f.isolated));
  }

  syncHistory() {
    const h = this.model.get("history") || {};
    this.actionButtons.undo.disabled = !(h.undo > 0);
    this.actionButtons.redo.disabled = !(h.redo > 0);
  }

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
    for (const k of ["color_by", "class_names", "color_codes", "color_names", "color_options"]) on("change:" + k, recolor);
    on("change:labels", () => this.loadLabels());
    on("change:atlas", () => this.loadAtlas());
    on("change:atlas_grid", () => this.loadAtlas());
    on("change:selection", () => this.loadSelectionFromModel());
    on("change:status", () => this.syncStatus());
    on("change:progress", () => this.syncProgress());
    on("change:filters", () => this.syncFilters());
    on("change:history", () => this.syncHistory());
    on("change:height", () => this.resize());
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
      if (this.hover === msg.index) this.showTooltip(msg.index);
    } else if (msg.type === "action_result") {
      if (msg.message) { this.statusEl.textContent = String(msg.message); this.statusEl.title = this.statusEl.textContent; }
    } else if (msg.type === "zoom") {
      const idx = buffers && buffers.length ? asU32(buffers[0]) : new Uint32Array(0);
      this.zoomTo(idx);
    }
  }

  // ---------------------------------------------------------------- gallery of the selection
  /** A grid of the selected images (up to GALLERY_MAX), each with its own Good / Bad / Unmark buttons. */
  renderGallery() {
    const G = this.gallery;
    if (!G) return;
    G.replaceChildren();
    const sel = this.selection;
    if (sel.length === 0) { G.style.display = "none"; return; }
    G.style.display = "block";
    const head = el("div", "dcw-gallery-head", G);
    head.textContent = sel.length > GALLERY_MAX ? `Selection: first ${GALLERY_MAX} of ${sel.length}` : `Selection: ${sel.length}`;
    const grid = el("div", "dcw-gallery-grid", G);
    const names = this.model.get("class_names") || [];
    const g = this.atlasGrid;
    for (const i of sel.slice(0, GALLERY_MAX)) {
      const tile = el("div", "dcw-tile", grid);
      tile.dataset.index = String(i);
      const fb = this.attrs.feedback[i] || 0;
      if (fb) tile.dataset.feedback = FEEDBACK_TEXT[fb];
      const c = el("canvas", "", tile);
      c.width = c.height = 64;
      c.title = `${names[this.attrs.cls[i]] ?? ""} (${KIND_NAMES[this.attrs.kind[i]] || ""})`;
      if (this.atlasBitmap && g) {
        const t = g.tile;
        c.getContext("2d").drawImage(this.atlasBitmap, (i % g.cols) * t, Math.floor(i / g.cols) * t, t, t, 0, 0, 64, 64);
      }
      c.addEventListener("click", () => this.zoomTo([i], 6));
      const row = el("div", "dcw-tile-buttons", tile);
      for (const [value, text, tip] of [["good", "✓", "mark good"], ["bad", "✗", "mark bad"], ["clear", "↺", "unmark"]]) {
        const b = this.button(row, text, tip, () => this.sendAction("gallery_mark", { index: i, value }));
        b.dataset.mark = value;
      }
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
    const thumbs = Boolean(this.renderer && this.renderer.texture) && px * 0.9 >= 14;
    const size = thumbs ? Math.min(px * 0.9, 128) : Math.max(4, Math.min(px * 0.7, 10));
    return { size, thumbs };
  }

  /** The host theme's colours, read from the page: background, text, and a halo for labels. */
  themeColors() {
    const cs = getComputedStyle(this.stage);
    const bg = parseCssColor(cs.backgroundColor) || [255, 255, 255];
    const fg = parseCssColor(getComputedStyle(this.root).color) || [34, 34, 34];
    return { bg, fg };
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
    if (this.renderer) {
      this.renderer.draw(this.view, {
        width: this.width, height: this.height, dpr: this.dpr || 1, size, thumbs,
        dim: this.selection.length > 0 ? 0.35 : 1, anySelected: this.selection.length > 0,
        background: this.theme.bg.map((v) => v / 255), interactive: Boolean(this.zooming),
      });
    }
    this.drawOverlay(size, thumbs);
    const first = this.timings.firstFrame === null && this.n > 0;
    const atlas = this.atlasPending && thumbs;
    if ((first || atlas) && this.renderer) {
      // Force the GPU to finish so the recorded time is the time the pixels exist.
      this.renderer.gl.readPixels(0, 0, 1, 1, this.renderer.gl.RGBA, this.renderer.gl.UNSIGNED_BYTE, new Uint8Array(4));
      if (first) this.timings.firstFrame = performance.now() - this.t0;
      if (atlas) { this.timings.atlasFrame = performance.now() - this.t0; this.atlasPending = false; }
    }
    this.timings.lastFrameMs = performance.now() - t;
    this.frames++;
    this.thumbsShown = thumbs;
    this.stage.dataset.view = JSON.stringify({ k: this.view.k, tx: this.view.tx, ty: this.view.ty, width: this.width, height: this.height });
    this.stage.dataset.frames = String(this.frames);
  }

  /** Counts of images drawn on top of each other at thumbnail size (badges "×n"), for the visible area. */
  overlapGroups(size) {
    const [ax, ay] = this.toData(0, this.height), [bx, by] = this.toData(this.width, 0);
    const hits = this.index.box(ax, ay, bx, by);
    if (hits.length > 4000) return [];
    const cell = Math.max(3, size * 0.25); // near-exact piles only, not neighbours that merely touch
    const groups = new Map();
    for (const i of hits) {
      if (this.hidden[i]) continue;
      const [sx, sy] = this.toScreen(this.xy[2 * i], this.xy[2 * i + 1]);
      const key = Math.floor(sx / cell) + "," + Math.floor(sy / cell);
      const g = groups.get(key);
      if (g) g.n++; else groups.set(key, { sx, sy, n: 1 });
    }
    return [...groups.values()].filter((g) => g.n > 1);
  }

  drawOverlay(size = 6, thumbs = false) {
    const ctx = this.overlay.getContext("2d");
    const dpr = this.dpr || 1;
    const { bg, fg } = this.theme || this.themeColors();
    const fgCss = `rgb(${fg[0]},${fg[1]},${fg[2]})`, haloCss = `rgba(${bg[0]},${bg[1]},${bg[2]},0.9)`;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.width, this.height);
    // Overlap counts where thumbnails pile up.
    this.overlaps = thumbs && this.index ? this.overlapGroups(size) : [];
    ctx.font = "600 10px sans-serif";
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    for (const g of this.overlaps) {
      const text = "×" + g.n;
      const w = ctx.measureText(text).width + 6;
      const x = g.sx + size / 2 - w, y = g.sy - size / 2;
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
    for (const l of this.labels.slice(0, 400)) {
      const [sx, sy] = this.toScreen(l.x, l.y);
      if (sx < -50 || sy < -20 || sx > this.width + 50 || sy > this.height + 20) continue;
      ctx.font = `600 ${l.font}px sans-serif`;
      const w = ctx.measureText(l.text).width + 6, h = l.font + 4;
      const box = [sx - w / 2, sy - h / 2, sx + w / 2, sy + h / 2];
      if (placed.some((p) => box[0] < p.box[2] && box[2] > p.box[0] && box[1] < p.box[3] && box[3] > p.box[1])) continue;
      placed.push({ box, label: l });
      const active = this.activeLabel && this.activeLabel.text === l.text;
      ctx.lineWidth = 3;
      ctx.strokeStyle = haloCss;
      ctx.strokeText(l.text, sx, sy);
      ctx.fillStyle = active ? "#d4a017" : fgCss;
      ctx.fillText(l.text, sx, sy);
    }
    this.placedLabels = placed;
    if (this.lasso && this.lasso.points.length > 1) {
      const p = this.lasso.points;
      ctx.beginPath();
      if (this.lasso.kind === "box") {
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

  // ---------------------------------------------------------------- keyboard
  bindKeys() {
    const root = this.root;
    const key = (ev) => {
      const tag = (ev.target && ev.target.tagName) || "";
      if (/^(INPUT|SELECT|TEXTAREA)$/.test(tag)) return;
      const mod = ev.ctrlKey || ev.metaKey;
      const k = ev.key;
      let done = true;
      if (k === "Escape") {
        if (this.drag) { this.drag = null; this.lasso = null; this.requestDraw(); }
        else { this.activeLabel = null; this.commitSelection(new Uint32Array(0)); }
      } else if (mod && (k === "z" || k === "Z")) this.sendAction(ev.shiftKey ? "redo" : "undo");
      else if (mod && k === "y") this.sendAction("redo");
      else if (mod) done = false;
      else if (k === "b") this.sendAction("bad");
      else if (k === "g") this.sendAction("good");
      else if (k === "Delete" || k === "Backspace") this.sendAction("remove");
      else if (k === "u") this.sendAction("unmark");
      else if (k === "z") this.zoomToSelection();
      else if (k === "f" || k === "0") { this.userMoved = false; this.fitView(); this.requestDraw(); }
      else if (k === "l") this.setMode("lasso");
      else if (k === "p") this.setMode("pan");
      else if (k === "x") this.setMode("box");
      else if (k === "i") this.isolate();
      else if (k === "n") this.sendAction("neighbors");
      else if (k === "/") this.searchInput.focus();
      else done = false;
      if (done) { ev.preventDefault(); ev.stopPropagation(); }
    };
    root.addEventListener("keydown", key);
    this.disposers.push(() => root.removeEventListener("keydown", key));
  }

  // ---------------------------------------------------------------- interaction
  localXY(ev) {
    const r = this.glCanvas.getBoundingClientRect(); // inside the stage's border
    return [ev.clientX - r.left, ev.clientY - r.top];
  }

  labelAt(sx, sy) {
    for (let j = this.placedLabels.length - 1; j >= 0; j--) {
      const { box, label } = this.placedLabels[j];
      if (sx >= box[0] && sx <= box[2] && sy >= box[1] && sy <= box[3]) return label;
    }
    return null;
  }

  pointAt(sx, sy) {
    if (!this.index || this.n === 0) return -1;
    const { size } = this.markSize();
    const r = Math.max(size / 2, 5) / this.view.k;
    const [x, y] = this.toData(sx, sy);
    return this.index.nearest(x, y, r, (i) => this.hidden[i] === 1);
  }

  bindPointer() {
    const stage = this.stage;
    const opFor = (ev) => (ev.altKey || ev.ctrlKey || ev.metaKey ? "subtract" : ev.shiftKey ? "add" : "replace");
    const down = (ev) => {
      if (ev.button !== 0) return;
      const [sx, sy] = this.localXY(ev);
      const modified = ev.shiftKey || ev.altKey || ev.ctrlKey || ev.metaKey;
      let kind = this.mode;
      if (kind === "pan" && modified) kind = "lasso";
      this.drag = { kind, op: opFor(ev), start: [sx, sy], last: [sx, sy], moved: false, view: { ...this.view } };
      if (kind !== "pan") this.lasso = { kind, points: [[sx, sy]] };
      else stage.style.cursor = "grabbing";
      stage.setPointerCapture?.(ev.pointerId);
      this.root.focus({ preventScroll: true }); // keyboard shortcuts go to this map
      this.hideTooltip();
      ev.preventDefault();
    };
    const move = (ev) => {
      const [sx, sy] = this.localXY(ev);
      const d = this.drag;
      if (!d) { this.scheduleHover(sx, sy); return; }
      if (Math.hypot(sx - d.start[0], sy - d.start[1]) > 3) d.moved = true;
      if (d.kind === "pan") {
        this.view = { k: d.view.k, tx: d.view.tx + sx - d.start[0], ty: d.view.ty + sy - d.start[1] };
        this.userMoved = true;
      } else if (d.kind === "box") {
        this.lasso.points = [d.start, [sx, sy]];
      } else {
        const last = this.lasso.points[this.lasso.points.length - 1];
        if (Math.hypot(sx - last[0], sy - last[1]) >= 1) this.lasso.points.push([sx, sy]);
      }
      d.last = [sx, sy];
      this.requestDraw();
    };
    const up = (ev) => {
      const d = this.drag;
      if (!d) return;
      this.drag = null;
      stage.style.cursor = this.mode === "pan" ? "grab" : "crosshair";
      const [sx, sy] = this.localXY(ev);
      const lasso = this.lasso;
      this.lasso = null;
      if (!d.moved) {
        this.click(sx, sy, d.op);
      } else if (d.kind === "lasso" && lasso.points.length >= 3) {
        this.selectPolygon(lasso.points, d.op);
      } else if (d.kind === "box") {
        const [a, b] = [this.toData(...d.start), this.toData(sx, sy)];
        this.commitSelection(combineSelection(this.n, this.selection, this.selectableOnly(this.index.box(a[0], a[1], b[0], b[1])), d.op));
      }
      this.requestDraw();
    };
    const wheel = (ev) => {
      ev.preventDefault();
      const [sx, sy] = this.localXY(ev);
      this.zoomBy(Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015)), sx, sy);
    };
    const leave = () => { if (!this.drag) this.hideTooltip(); };
    // Escape abandons a lasso or box being drawn.
    const key = (ev) => {
      if (ev.key === "Escape" && this.drag) { this.drag = null; this.lasso = null; this.requestDraw(); }
    };
    window.addEventListener("keydown", key);
    this.disposers.push(() => window.removeEventListener("keydown", key));
    const dbl = () => { this.userMoved = false; this.fitView(); this.requestDraw(); };
    stage.addEventListener("pointerdown", down);
    stage.addEventListener("pointermove", move);
    stage.addEventListener("pointerup", up);
    stage.addEventListener("pointercancel", up);
    stage.addEventListener("wheel", wheel, { passive: false });
    stage.addEventListener("pointerleave", leave);
    stage.addEventListener("dblclick", dbl);
    this.disposers.push(() => {
      stage.removeEventListener("pointerdown", down);
      stage.removeEventListener("pointermove", move);
      stage.removeEventListener("pointerup", up);
      stage.removeEventListener("pointercancel", up);
      stage.removeEventListener("wheel", wheel);
      stage.removeEventListener("pointerleave", leave);
      stage.removeEventListener("dblclick", dbl);
    });
  }

  /** One step of a zoom gesture around (sx, sy); frames during the gesture may show the last frame
   *  scaled (large maps on software WebGL), and a sharp frame follows 160 ms after the last step. */
  zoomBy(f, sx, sy) {
    const k = Math.min(1e9, Math.max(1e-9, this.view.k * f));
    const r = k / this.view.k;
    this.view = { k, tx: sx - (sx - this.view.tx) * r, ty: sy - (sy - this.view.ty) * r };
    this.userMoved = true;
    this.hideTooltip();
    this.zooming = true;
    clearTimeout(this.zoomTimer);
    this.zoomTimer = setTimeout(() => { this.zooming = false; this.requestDraw(); }, 160);
    this.requestDraw();
  }

  /** Lasso in screen px -> data polygon -> grid-index query; records its time for the benchmark. */
  selectPolygon(points, op) {
    const t = performance.now();
    const poly = new Float64Array(points.length * 2);
    points.forEach(([sx, sy], j) => {
      const [x, y] = this.toData(sx, sy);
      poly[2 * j] = x;
      poly[2 * j + 1] = y;
    });
    const hits = this.selectableOnly(this.index.lasso(poly));
    const sel = combineSelection(this.n, this.selection, hits, op);
    this.timings.lassoMs = performance.now() - t;
    this.lastPolygon = points.map((p) => [p[0], p[1]]);
    this.commitSelection(sel);
    return sel;
  }

  click(sx, sy, op) {
    const label = this.labelAt(sx, sy);
    if (label) {
      this.activeLabel = label;
      this.commitSelection(combineSelection(this.n, this.selection, label.members ? this.selectableOnly(label.members) : [], op));
      this.applySelectionToState();
      return;
    }
    const i = this.pointAt(sx, sy);
    if (i >= 0 && !this.selectable(i)) {
      this.statusEl.textContent = "a held-out test image: shown for reference, never selected or marked";
    } else if (i >= 0) {
      const isSel = this.state[4 * i + 1] === 1;
      this.commitSelection(combineSelection(this.n, this.selection, [i], op === "add" && isSel ? "subtract" : op));
    } else if (op === "replace") {
      this.activeLabel = null;
      this.commitSelection(new Uint32Array(0));
    }
  }

  scheduleHover(sx, sy) {
    this.pendingHover = [sx, sy];
    if (this.hoverRaf) return;
    this.hoverRaf = requestAnimationFrame(() => {
      this.hoverRaf = 0;
      const [hx, hy] = this.pendingHover;
      this.stage.style.cursor = this.labelAt(hx, hy) ? "pointer" : this.mode === "pan" ? "grab" : "crosshair";
      const i = this.pointAt(hx, hy);
      if (i !== this.hover) {
        this.hover = i;
        clearTimeout(this.detailTimer);
        if (i < 0) { this.hideTooltip(); return; }
        this.showTooltip(i);
        if (!this.details.has(i)) {
          this.detailTimer = setTimeout(() => {
            if (this.hover === i && !this.details.has(i)) this.model.send({ type: "details", index: i });
          }, 120);
        }
      }
      this.lastHoverXY = [hx, hy];
      if (i >= 0) this.placeTooltip(hx, hy);
    });
  }

  showTooltip(i) {
    const tip = this.tooltip;
    const d = this.details.get(i);
    const names = this.model.get("class_names") || [];
    const kind = KIND_NAMES[this.attrs.kind[i]] || "?";
    const round = this.attrs.round[i] ? `, round ${this.attrs.round[i]}` : "";
    const rows = [["", `${names[this.attrs.cls[i]] ?? String(this.attrs.cls[i])} · ${kind}${round}`]];
    const seen = new Set(["label", "source", "round"]);
    if (d) {
      for (const f of d.fields) {
        if (!Array.isArray(f) || f.length < 2 || seen.has(String(f[0]))) continue;
        seen.add(String(f[0]));
        rows.push([String(f[0]), String(f[1])]);
      }
    } else if (this.attrs.feedback[i]) rows.push(["feedback", FEEDBACK_TEXT[this.attrs.feedback[i]] || "?"]);
    this.tipFields.replaceChildren();
    for (const [k, v] of rows) {
      el("dt", "", this.tipFields).textContent = k;
      el("dd", k === "prompt" || k === "caption" ? "dcw-clamp" : "", this.tipFields).textContent = v;
    }
    if (d && d.url) {
      this.tipImg.src = d.url;
      this.tipImg.style.display = "block";
      this.tipThumb.style.display = "none";
    } else {
      this.tipImg.removeAttribute("src");
      this.tipImg.style.display = "none";
      const g = this.atlasGrid;
      if (this.atlasBitmap && g) {
        const t = g.tile;
        this.tipThumb.width = t;
        this.tipThumb.height = t;
        const c = this.tipThumb.getContext("2d");
        c.drawImage(this.atlasBitmap, (i % g.cols) * t, Math.floor(i / g.cols) * t, t, t, 0, 0, t, t);
        this.tipThumb.style.display = "block";
      } else {
        this.tipThumb.style.display = "none";
      }
    }
    tip.dataset.index = String(i);
    tip.style.display = "block";
    if (this.lastHoverXY) this.placeTooltip(...this.lastHoverXY);
  }

  placeTooltip(sx, sy) {
    const tip = this.tooltip;
    const w = tip.offsetWidth || 200, h = tip.offsetHeight || 200;
    let x = sx + 14, y = sy + 14;
    if (x + w > this.width) x = Math.max(0, sx - w - 14);
    if (y + h > this.height) y = Math.max(0, this.height - h);
    tip.style.left = x + "px";
    tip.style.top = y + "px";
  }

  hideTooltip() {
    this.hover = -1;
    clearTimeout(this.detailTimer);
    this.tooltip.style.display = "none";
  }

  // ---------------------------------------------------------------- debug / tests
  publishDebugHandle() {
    const self = this;
    const handle = {
      id: this.id,
      root: this.root,
      model: this.model,
      get n() { return self.n; },
      get view() { return { ...self.view, width: self.width, height: self.height }; },
      get selection() { return Array.from(self.selection); },
      get timings() { return { ...self.timings }; },
      get frames() { return self.frames; },
      get selectionSends() { return self.selectionSends || 0; },
      get thumbsShown() { return Boolean(self.thumbsShown); },
      get primitive() { return self.renderer ? self.renderer.primitive : null; },
      get rendererName() { return self.renderer ? self.renderer.name : null; },
      get lastPolygon() { return self.lastPolygon; },
      get placedLabels() { return self.placedLabels.map((p) => ({ text: p.label.text, box: p.box })); },
      get overlaps() { return self.overlaps.map((g) => ({ sx: g.sx, sy: g.sy, n: g.n })); },
      get theme() { return self.themeColors(); },
      /** The pan cache's counters {draws, blits}; setPanCache(true|false|null) forces it on / off / auto. */
      get cacheStats() { return self.renderer ? { ...self.renderer.cacheStats } : null; },
      dropPanCache: () => self.renderer && self.renderer.dropCache(),
      setPanCache: (on) => {
        const r = self.renderer;
        if (!r) return;
        r.cacheFrom = on === true ? 0 : on === false ? Infinity : /swiftshader|llvmpipe|software/i.test(r.name) ? 10000 : Infinity;
        self.requestDraw();
      },
      zoomTo: (idx) => self.zoomTo(idx),
      dataToScreen: (x, y) => self.toScreen(x, y),
      zoomBy: (f, sx, sy) => self.zoomBy(f, sx, sy),
      get zooming() { return Boolean(self.zooming); },
      setView: (k, tx, ty) => { self.view = { k, tx, ty }; self.userMoved = true; self.requestDraw(); },
      selectPolygon: (pts, op = "replace") => Array.from(self.selectPolygon(pts, op)),
      /** One frame split into its parts, each waited for (1-pixel readback), in ms: the WebGL points, the
       *  2D overlay (labels, counts), and a baseline: a clear of the same canvas alone. For benchmarks. */
      profileFrame: () => {
        const r = self.renderer, gl = r && r.gl, px = new Uint8Array(4);
        const finish = () => gl && gl.readPixels(0, 0, 1, 1, gl.RGBA, gl.UNSIGNED_BYTE, px);
        const { size, thumbs } = self.markSize();
        const bg = self.themeColors().bg.map((v) => v / 255);
        let t = performance.now();
        if (r) { gl.clearColor(bg[0], bg[1], bg[2], 1); gl.clear(gl.COLOR_BUFFER_BIT); finish(); }
        const clear = performance.now() - t;
        t = performance.now();
        if (r) {
          r.draw(self.view, { width: self.width, height: self.height, dpr: self.dpr || 1, size, thumbs,
            dim: self.selection.length > 0 ? 0.35 : 1, anySelected: self.selection.length > 0, background: bg });
          finish();
        }
        const points = performance.now() - t;
        t = performance.now();
        self.drawOverlay(size, thumbs);
        const overlay = performance.now() - t;
        return { clear, points, overlay, thumbs, size };
      },
      /** Draws now and waits for the GPU (1-pixel readback); returns ms. For benchmarks. */
      drawNow: () => {
        const t = performance.now();
        self.draw();
        if (self.renderer) self.renderer.gl.readPixels(0, 0, 1, 1, self.renderer.gl.RGBA, self.renderer.gl.UNSIGNED_BYTE, new Uint8Array(4));
        return performance.now() - t;
      },
    };
    this.handle = handle;
    window.__dcw = window.__dcw || [];
    window.__dcw.push(handle);
  }

  destroy() {
    this.destroyed = true;
    this.disposers.forEach((f) => f());
    this.resizeObserver.disconnect();
    clearTimeout(this.detailTimer);
    clearTimeout(this.zoomTimer);
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    if (this.atlasBitmap) this.atlasBitmap.close?.();
    if (this.renderer) this.renderer.destroy();
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
