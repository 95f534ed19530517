// anywidget front end of datacrafter-widget: the projection of every real and generated image
// (WebGL2 thumbnails or marks), content labels as words, lasso / box selection synced to Python as
// a uint32 buffer, feedback buttons and lazily fetched hover details.
// Every string that came from a model or a user is put in the DOM with textContent, never as HTML.
import "./widget.css";
import { GridIndex, combineSelection } from "./spatial.js";
import { computeColors } from "./colors.js";
import { Renderer } from "./renderer.js";

const KIND_NAMES = ["real", "generated"];
const FEEDBACK_TEXT = ["", "good", "bad", "removed"];

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
    this.bindModel();
    this.bindPointer();
    this.publishDebugHandle();
  }

  // ---------------------------------------------------------------- DOM
  buildDom() {
    const root = this.root;
    root.classList.add("dcw-root");
    root.dataset.dcwId = String(this.id);
    const bar = el("div", "dcw-toolbar", root);
    this.modeButtons = {};
    for (const [mode, text, tip] of [
      ["pan", "Pan", "drag pans; shift-drag lassoes (adds), alt/ctrl-drag subtracts"],
      ["lasso", "Lasso", "drag draws a lasso; shift adds, alt/ctrl subtracts"],
      ["box", "Box", "drag draws a box; shift adds, alt/ctrl subtracts"],
    ]) {
      const b = el("button", "", bar);
      b.textContent = text;
      b.title = tip;
      b.dataset.mode = mode;
      b.addEventListener("click", () => this.setMode(mode));
      this.modeButtons[mode] = b;
    }
    el("span", "dcw-sep", bar);
    const colorLabel = el("span", "", bar);
    colorLabel.textContent = "Colour:";
    this.colorSelect = el("select", "", bar);
    this.colorSelect.dataset.role = "color-by";
    for (const v of ["class", "round", "feedback", "flag"]) {
      const o = el("option", "", this.colorSelect);
      o.value = v;
      o.textContent = v;
    }
    this.colorSelect.addEventListener("change", () => {
      this.model.set("color_by", this.colorSelect.value);
      this.model.save_changes();
    });
    el("span", "dcw-sep", bar);
    this.actionButtons = {};
    for (const [name, text, cls, tip] of [
      ["bad", "Bad", "dcw-bad", "mark the selected images as bad"],
      ["good", "Good", "dcw-good", "mark the selected images as good"],
      ["remove", "Remove", "", "remove the selected images from the dataset"],
      ["evolve", "Evolve prompts from this", "", "evolve the prompts from the feedback on the selection"],
      ["unwanted_label", "Label unwanted", "", "mark the clicked content label as unwanted"],
    ]) {
      const b = el("button", cls, bar);
      b.textContent = text;
      b.title = tip;
      b.dataset.action = name;
      b.addEventListener("click", () => this.sendAction(name));
      this.actionButtons[name] = b;
    }
    el("span", "dcw-sep", bar);
    const clear = el("button", "", bar);
    clear.textContent = "Clear";
    clear.dataset.role = "clear";
    clear.addEventListener("click", () => { this.activeLabel = null; this.commitSelection(new Uint32Array(0)); });
    const reset = el("button", "", bar);
    reset.textContent = "Reset view";
    reset.dataset.role = "reset";
    reset.addEventListener("click", () => { this.userMoved = false; this.fitView(); this.requestDraw(); });
    this.countEl = el("span", "dcw-count", bar);
    this.countEl.dataset.role = "count";

    this.stage = el("div", "dcw-stage", root);
    this.glCanvas = el("canvas", "dcw-gl", this.stage);
    this.overlay = el("canvas", "dcw-overlay", this.stage);
    this.legendEl = el("div", "dcw-legend", this.stage);
    this.tooltip = el("div", "dcw-tooltip", this.stage);
    this.tipThumb = el("canvas", "dcw-tipthumb", this.tooltip);
    this.tipImg = el("img", "", this.tooltip);
    this.tipImg.alt = "";
    // The full image arrives later and changes the tooltip's size: keep it inside the stage.
    this.tipImg.addEventListener("load", () => { if (this.hover >= 0 && this.lastHoverXY) this.placeTooltip(...this.lastHoverXY); });
    this.tipFields = el("dl", "", this.tooltip);

    const footer = el("div", "dcw-footer", root);
    this.statusEl = el("span", "dcw-status", footer);
    this.statusEl.dataset.role = "status";
    const prog = el("span", "dcw-progress", footer);
    this.progressWrap = prog;
    this.progressBar = el("progress", "", prog);
    this.progressText = el("span", "", prog);
    const cancel = el("button", "", prog);
    cancel.textContent = "Cancel";
    cancel.dataset.action = "cancel";
    cancel.addEventListener("click", () => this.sendAction("cancel"));

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
    this.attrs = { kind: get8("kind"), cls: get16("cls"), round: get16("round"), feedback: get8("feedback"), flag: get8("flag") };
    this.state = new Uint8Array(n * 4);
    for (let i = 0; i < n; i++) this.state[4 * i] = this.attrs.kind[i];
    this.selection = asU32(this.model.get("selection")).filter((i) => i < n).sort();
    this.applySelectionToState();
    const [x0, y0, x1, y1] = this.index.bounds;
    this.spacing = n > 0 ? Math.sqrt(Math.max((x1 - x0) * (y1 - y0), 1e-12) / n) : 1;
    if (this.renderer) {
      this.renderer.setPositions(xy);
      this.renderer.setState(this.state);
    }
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    this.details.clear();
    this.recolor();
    if (!this.userMoved) this.fitView();
    this.requestDraw();
  }

  recolor() {
    const mode = this.model.get("color_by") || "class";
    this.colorSelect.value = mode;
    const { colors, legend } = computeColors(mode, this.n, this.attrs, this.model.get("class_names") || []);
    if (this.renderer) this.renderer.setColors(colors);
    this.renderLegend(legend);
    this.requestDraw();
  }

  renderLegend(entries) {
    const L = this.legendEl;
    L.replaceChildren();
    for (const [cls, text] of [["", "real"], ["dcw-disc", "generated"]]) {
      const row = el("div", "dcw-item", L);
      el("span", "dcw-shape " + cls, row);
      el("span", "", row).textContent = text;
    }
    for (const e of entries.slice(0, 30)) {
      const row = el("div", "dcw-item", L);
      const sw = el("span", "dcw-swatch", row);
      sw.style.background = `rgb(${e.rgb[0]},${e.rgb[1]},${e.rgb[2]})`;
      el("span", "", row).textContent = e.name;
    }
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
      // Keep the decoded atlas for instant tooltip thumbnails unless it is huge.
      if (bitmap.width * bitmap.height <= 4096 * 4096) this.atlasBitmap = bitmap; else bitmap.close?.();
      this.atlasPending = true;
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
    this.requestDraw();
  }

  applySelectionToState() {
    const s = this.state;
    for (let i = 0; i < this.n; i++) s[4 * i + 1] = 0;
    for (const i of this.selection) s[4 * i + 1] = 1;
    this.countEl.textContent = `${this.selection.length} of ${this.n} selected`;
    const none = this.selection.length === 0;
    for (const name of ["bad", "good", "remove", "evolve"]) this.actionButtons[name].disabled = none;
    this.actionButtons.unwanted_label.disabled = !this.activeLabel;
  }

  /** Sets the selection locally and sends it to Python as a uint32 buffer. */
  commitSelection(sel) {
    sel = Uint32Array.from(sel).sort();
    if (sameU32(sel, this.selection)) { this.applySelectionToState(); return; }
    this.selection = sel;
    this.applySelectionToState();
    if (this.renderer) this.renderer.setState(this.state);
    this.requestDraw();
    this.selectionSends = (this.selectionSends || 0) + 1;
    this.model.set("selection", new DataView(sel.buffer.slice(0)));
    this.model.save_changes();
  }

  sendAction(name) {
    const payload = {};
    if (name === "unwanted_label" && this.activeLabel) payload.label = this.activeLabel.text;
    const sel = this.selection.slice();
    this.model.send({ type: "action", name, payload, count: sel.length }, undefined, [sel.buffer]);
  }

  syncStatus() { this.statusEl.textContent = String(this.model.get("status") || ""); }

  syncProgress() {
    const p = this.model.get("progress") || {};
    const running = Boolean(p.running);
    this.progressWrap.style.display = running ? "flex" : "none";
    this.progressBar.max = Math.max(1, Number(p.total) || 1);
    this.progressBar.value = Math.max(0, Number(p.done) || 0);
    this.progressText.textContent = `${p.done || 0}/${p.total || 0} ${p.message || ""}`;
  }

  bindModel() {
    const on = (evt, fn) => { this.model.on(evt, fn); this.disposers.push(() => this.model.off(evt, fn)); };
    // One Python-side set_frame changes several traits in one message: reload the points once.
    const reload = () => {
      if (this.reloadQueued) return;
      this.reloadQueued = true;
      queueMicrotask(() => { this.reloadQueued = false; if (!this.destroyed) this.loadPoints(); });
    };
    for (const k of ["xy", "kind", "cls", "round", "feedback", "flag"]) on("change:" + k, reload);
    on("change:color_by", () => this.recolor());
    on("change:class_names", () => this.recolor());
    on("change:labels", () => this.loadLabels());
    on("change:atlas", () => this.loadAtlas());
    on("change:atlas_grid", () => this.loadAtlas());
    on("change:selection", () => this.loadSelectionFromModel());
    on("change:status", () => this.syncStatus());
    on("change:progress", () => this.syncProgress());
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
      if (msg.message) this.statusEl.textContent = String(msg.message);
    }
  }

  // ---------------------------------------------------------------- view
  fitView() {
    if (!this.index || this.width === 0) return;
    const [x0, y0, x1, y1] = this.index.bounds;
    const pad = 28;
    const w = Math.max(x1 - x0, 1e-9), h = Math.max(y1 - y0, 1e-9);
    const k = Math.max(1e-9, Math.min((this.width - 2 * pad) / w, (this.height - 2 * pad) / h));
    this.view = { k, tx: this.width / 2 - ((x0 + x1) / 2) * k, ty: this.height / 2 + ((y0 + y1) / 2) * k };
  }

  toData(sx, sy) { return [(sx - this.view.tx) / this.view.k, (this.view.ty - sy) / this.view.k]; }
  toScreen(x, y) { return [x * this.view.k + this.view.tx, -y * this.view.k + this.view.ty]; }

  markSize() {
    const px = this.spacing * this.view.k;
    const thumbs = Boolean(this.renderer && this.renderer.texture) && px * 0.9 >= 14;
    const size = thumbs ? Math.min(px * 0.9, 128) : Math.max(3, Math.min(px * 0.7, 10));
    return { size, thumbs };
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
    if (this.renderer) {
      this.renderer.draw(this.view, {
        width: this.width, height: this.height, dpr: this.dpr || 1, size, thumbs,
        dim: this.selection.length > 0 ? 0.35 : 1, anySelected: this.selection.length > 0,
      });
    }
    this.drawOverlay();
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

  drawOverlay() {
    const ctx = this.overlay.getContext("2d");
    const dpr = this.dpr || 1;
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, this.width, this.height);
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
      ctx.strokeStyle = "rgba(255,255,255,0.9)";
      ctx.strokeText(l.text, sx, sy);
      ctx.fillStyle = active ? "#b8860b" : "#111";
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
    return this.index.nearest(x, y, r);
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
        this.commitSelection(combineSelection(this.n, this.selection, this.index.box(a[0], a[1], b[0], b[1]), d.op));
      }
      this.requestDraw();
    };
    const wheel = (ev) => {
      ev.preventDefault();
      const [sx, sy] = this.localXY(ev);
      const f = Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015));
      const k = Math.min(1e9, Math.max(1e-9, this.view.k * f));
      const r = k / this.view.k;
      this.view = { k, tx: sx - (sx - this.view.tx) * r, ty: sy - (sy - this.view.ty) * r };
      this.userMoved = true;
      this.hideTooltip();
      this.requestDraw();
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

  /** Lasso in screen px -> data polygon -> grid-index query; records its time for the benchmark. */
  selectPolygon(points, op) {
    const t = performance.now();
    const poly = new Float64Array(points.length * 2);
    points.forEach(([sx, sy], j) => {
      const [x, y] = this.toData(sx, sy);
      poly[2 * j] = x;
      poly[2 * j + 1] = y;
    });
    const hits = this.index.lasso(poly);
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
      this.commitSelection(combineSelection(this.n, this.selection, label.members ? label.members.filter((i) => i < this.n) : [], op));
      this.applySelectionToState();
      return;
    }
    const i = this.pointAt(sx, sy);
    if (i >= 0) {
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
    const rows = [
      ["class", names[this.attrs.cls[i]] ?? String(this.attrs.cls[i])],
      ["kind", KIND_NAMES[this.attrs.kind[i]] || "?"],
      ["round", String(this.attrs.round[i])],
    ];
    if (this.attrs.feedback[i]) rows.push(["feedback", FEEDBACK_TEXT[this.attrs.feedback[i]] || "?"]);
    if (d) for (const f of d.fields) if (Array.isArray(f) && f.length >= 2) rows.push([String(f[0]), String(f[1])]);
    this.tipFields.replaceChildren();
    for (const [k, v] of rows) {
      el("dt", "", this.tipFields).textContent = k;
      el("dd", "", this.tipFields).textContent = v;
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
      dataToScreen: (x, y) => self.toScreen(x, y),
      setView: (k, tx, ty) => { self.view = { k, tx, ty }; self.userMoved = true; self.requestDraw(); },
      selectPolygon: (pts, op = "replace") => Array.from(self.selectPolygon(pts, op)),
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
    this.details.forEach((d) => d.url && URL.revokeObjectURL(d.url));
    if (this.atlasBitmap) this.atlasBitmap.close?.();
    if (this.renderer) this.renderer.destroy();
    if (window.__dcw) window.__dcw = window.__dcw.filter((h) => h !== this.handle);
  }
}

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
