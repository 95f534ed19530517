// @ts-check
// Thumbnails on demand. Python holds the thumbnail source (the `thumbs` trait says how many, their size
// and which set); zoomed in far enough to show images, the widget asks for the points in view that it
// lacks, in pages of up to PAGE ({type: "thumbs", req, version} + a uint32 buffer of point indices). Each
// reply is one sprite sheet, uploaded into a free PAGE-sized block of one texture; a point's tile index
// in that texture goes to the renderer as a per-point attribute (NONE: drawn as a filled mark until it
// arrives). Pages not in view are reused least recently used first, so opening a million points costs no
// more than opening a thousand: nothing is asked for until someone zooms in.

export const PAGE = 256; // thumbnails per page: a 16 x 16 block of the texture
export const PAGE_COLS = 16;
export const NONE = 0xffffffff;
// Requests waiting for Python at once (it answers them in order, one worker): enough for a screen of
// thumbnails in one round (a million points zoomed in: 18 pages), so the last pages are not asked for only
// after the first ones arrived (a round trip and a frame later). RESERVE blocks of the texture are kept
// for pages on their way.
const MAX_INFLIGHT = 32;
const RESERVE = 16;
const MAX_SIDE = 4096; // the page texture's side (WebGL2 guarantees 2048; most GPUs and SwiftShader 8192+)
const EMPTY = 0, ASKED = 1, LOADED = 2, FAILED = 3;

export class ThumbPages {
  /** @param {any} view the ProjectionView (model, n, index, hidden, renderer, view, width, height) */
  constructor(view) {
    this.view = view;
    this.req = 0;
    this.tick = 0;
    this.stats = { requested: 0, received: 0, pages: 0, evicted: 0, missingVisible: 0, visible: 0 };
    this.meta = { count: 0, tile: 32, version: -1, format: "png" };
    this.n = -1;
    this.timer = 0;
    this.reset();
  }

  /** Drops every page when the set of thumbnails or the points changed (a new version or point count). */
  sync() {
    const meta = this.view.model.get("thumbs") || {};
    if (meta.version === this.meta.version && this.view.n === this.n) return;
    this.reset();
  }

  reset() {
    const meta = this.view.model.get("thumbs") || {};
    const n = this.view.n || 0;
    this.meta = { count: Math.min(Number(meta.count) || 0, n), tile: Number(meta.tile) || 32, version: meta.version ?? 0, format: meta.format || "png" };
    this.n = n;
    if (this.pages) for (const p of this.pages) if (p && p.bitmap) p.bitmap.close?.();
    this.state = new Uint8Array(n);
    this.slot = new Uint32Array(n).fill(NONE);
    this.pageOf = new Int32Array(n).fill(-1);
    this.kOf = new Uint16Array(n);
    this.inflight = new Map(); // req -> page number
    this.error = "";
    const r = this.view.renderer;
    const tile = this.meta.tile, block = PAGE_COLS * tile;
    const side = r ? Math.min(MAX_SIDE, r.maxTextureSize) : 0;
    this.perRow = Math.floor(side / block);
    this.pages = new Array(this.perRow * this.perRow).fill(null);
    this.stats.pages = 0;
    if (r) {
      r.setThumbTexture(this.meta.count > 0 && this.perRow > 0 ? this.perRow * block : 0, tile, this.perRow * PAGE_COLS, PAGE_COLS);
      r.setSlots(this.slot);
    }
  }

  get enabled() { return this.meta.count > 0 && this.perRow > 0; }

  /** Whether point i's thumbnail is in the texture. */
  has(i) { return i < this.n && this.state[i] === LOADED; }

  /** Draws point i's thumbnail into a 2D canvas context (gallery, tooltip); false when it is not here. */
  drawInto(ctx, i, dx, dy, w, h) {
    if (!this.has(i)) return false;
    const p = this.pages[this.pageOf[i]];
    if (!p) return false;
    const k = this.kOf[i], t = this.meta.tile;
    if (p.bitmap) { ctx.drawImage(p.bitmap, (k % p.cols) * t, Math.floor(k / p.cols) * t, t, t, dx, dy, w, h); return true; }
    // Software WebGL keeps the pixels, not the bitmap: the tile goes through a tile-sized canvas to be scaled.
    const img = this.view.renderer && this.view.renderer.tileImage(this.slot[i]);
    if (!img) return false;
    const one = this.oneTile(img.width);
    /** @type {OffscreenCanvasRenderingContext2D} */ (one.getContext("2d")).putImageData(img, 0, 0);
    ctx.drawImage(one, 0, 0, img.width, img.height, dx, dy, w, h);
    return true;
  }

  /** A scratch canvas of `size` px. */
  oneTile(size) {
    if (!this.tileCanvas || this.tileCanvas.width !== size) this.tileCanvas = new OffscreenCanvas(size, size);
    return this.tileCanvas;
  }

  /** A decoded page as ImageData: on software WebGL raster.js draws the thumbnails from these pixels. */
  pixelsOf(bitmap) {
    if (!this.decodeCanvas) this.decodeCanvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const c = this.decodeCanvas;
    if (c.width !== bitmap.width || c.height !== bitmap.height) { c.width = bitmap.width; c.height = bitmap.height; }
    const ctx = /** @type {OffscreenCanvasRenderingContext2D} */ (c.getContext("2d", { willReadFrequently: true }));
    ctx.clearRect(0, 0, c.width, c.height);
    ctx.drawImage(bitmap, 0, 0);
    return ctx.getImageData(0, 0, c.width, c.height);
  }

  /** Asks again for what is in view, a moment after the view stops changing (pan and zoom frames coalesce). */
  schedule(delay = 30) {
    if (this.timer) return;
    this.timer = setTimeout(() => { this.timer = 0; if (!this.view.destroyed) this.update(); }, delay);
  }

  /** The points whose thumbnail can show in the current view: in view, not hidden, and on top in their
   *  half-thumbnail cell of the screen (a point below another in the same cell has its centre covered by
   *  it), so what is asked for grows with the screen, not with how dense the data is there. Nearest the
   *  centre first when more than the texture holds. */
  visiblePoints() {
    const v = this.view;
    if (!v.index || v.n === 0) return new Uint32Array(0);
    const { size } = v.markSize();
    const m = size / 2;
    const [x0, y1] = v.toData(-m, -m), [x1, y0] = v.toData(v.width + m, v.height + m);
    const hits = v.index.box(x0, y0, x1, y1);
    const cell = Math.max(1, size / 2);
    const cols = Math.ceil((v.width + 2 * size) / cell) + 1, rows = Math.ceil((v.height + 2 * size) / cell) + 1;
    const taken = new Uint8Array(cols * rows);
    const { k, tx, ty } = v.view;
    const out = [];
    const consider = (i) => {
      if (i >= this.meta.count || (v.hidden && v.hidden[i])) return;
      const c = Math.floor((v.xy[2 * i] * k + tx + size) / cell), r = Math.floor((-v.xy[2 * i + 1] * k + ty + size) / cell);
      if (c < 0 || r < 0 || c >= cols || r >= rows) return;
      if (taken[r * cols + c]) return;
      taken[r * cols + c] = 1;
      out.push(i);
    };
    const sel = v.selection || [];
    for (let j = sel.length - 1; j >= 0; j--) consider(sel[j]); // drawn last, on top
    for (let j = hits.length - 1; j >= 0; j--) consider(hits[j]); // later points are drawn over earlier ones
    const cap = (this.pages.length - RESERVE) * PAGE;
    if (out.length > cap) {
      const [cx, cy] = v.toData(v.width / 2, v.height / 2);
      const d = new Float32Array(out.length);
      for (let j = 0; j < out.length; j++) { const i = out[j]; d[j] = (v.xy[2 * i] - cx) ** 2 + (v.xy[2 * i + 1] - cy) ** 2; }
      const order = Array.from(out.keys()).sort((a, b) => d[a] - d[b]);
      return Uint32Array.from(order.slice(0, Math.max(0, cap)), (j) => out[j]);
    }
    return Uint32Array.from(out).sort();
  }

  /** Requests the thumbnails the current view shows and lacks (when the map shows thumbnails). */
  update() {
    this.sync();
    const v = this.view;
    this.stats.view = this.viewKey(); // what the counts below describe
    if (!this.enabled || !v.markSize().thumbs) { this.stats.missingVisible = 0; this.stats.visible = 0; return; }
    const wanted = this.visiblePoints();
    this.stats.visible = wanted.length;
    this.want(wanted);
    let missing = 0;
    for (const i of wanted) if (this.state[i] !== LOADED && this.state[i] !== FAILED) missing++;
    this.stats.missingVisible = missing;
  }

  /** The view (and canvas size) as a string: the counters describe the view they were taken in. */
  viewKey() {
    const v = this.view;
    return [v.view.k, v.view.tx, v.view.ty, v.width, v.height].join(",");
  }

  /** Marks these points' pages as in use and asks for those not here yet (in order, PAGE at a time). */
  want(indices) {
    if (!this.enabled) return;
    const now = ++this.tick;
    const missing = [];
    for (const i of indices) {
      if (i >= this.n) continue;
      const s = this.state[i];
      if (s === LOADED) { const p = this.pages[this.pageOf[i]]; if (p) p.used = now; }
      else if (s === EMPTY) missing.push(i);
      else if (s === ASKED) { const p = this.pages[this.pageOf[i]]; if (p) p.used = now; }
    }
    for (let s = 0; s < missing.length && this.inflight.size < MAX_INFLIGHT; s += PAGE) {
      const chunk = Uint32Array.from(missing.slice(s, s + PAGE));
      const page = this.freePage(now);
      if (page < 0) break;
      this.ask(page, chunk, now);
    }
  }

  /** A page block to fill: an empty one, else the least recently used that nothing in view needs. */
  freePage(now) {
    let best = -1, bestUsed = Infinity;
    for (let p = 0; p < this.pages.length; p++) {
      const pg = this.pages[p];
      if (!pg) return p;
      if (pg.pending || pg.used >= now) continue;
      if (pg.used < bestUsed) { best = p; bestUsed = pg.used; }
    }
    if (best >= 0) this.evict(best);
    return best;
  }

  evict(p) {
    const pg = this.pages[p];
    if (!pg) return;
    for (const i of pg.points) {
      if (this.pageOf[i] !== p) continue;
      this.state[i] = EMPTY;
      this.slot[i] = NONE;
      this.pageOf[i] = -1;
    }
    if (pg.bitmap) pg.bitmap.close?.();
    this.pages[p] = null;
    this.stats.pages--;
    this.stats.evicted++;
    this.slotsDirty = true;
  }

  ask(page, points, now) {
    const req = ++this.req;
    for (const i of points) { this.state[i] = ASKED; this.pageOf[i] = page; }
    this.pages[page] = { points, used: now, pending: req, bitmap: null, cols: PAGE_COLS };
    this.stats.pages++;
    this.inflight.set(req, page);
    this.stats.requested += points.length;
    this.view.model.send({ type: "thumbs", req, version: this.meta.version }, undefined, [points.buffer]);
  }

  /** A page arrived from Python: decode it, upload it into its block, point its points at their tiles. */
  async receive(msg, buffers) {
    const page = this.inflight.get(msg.req);
    if (page === undefined) return; // a reset dropped it
    this.inflight.delete(msg.req);
    const pg = this.pages[page];
    if (!pg || pg.pending !== msg.req) return;
    if (msg.version !== this.meta.version || msg.stale || msg.error || !buffers || !buffers.length) {
      for (const i of pg.points) { if (this.pageOf[i] === page) { this.state[i] = msg.error ? FAILED : EMPTY; this.pageOf[i] = -1; } }
      this.pages[page] = null;
      this.stats.pages--;
      if (msg.error) { this.error = String(msg.error); this.view.footer?.say?.(this.error); }
      this.schedule();
      return;
    }
    const view = this.view;
    const bytes = buffers[0];
    let bitmap;
    try {
      const type = msg.format === "jpeg" ? "image/jpeg" : "image/png";
      bitmap = await createImageBitmap(new Blob([bytes], { type }));
    } catch (err) {
      msg.error = "could not decode thumbnails: " + String(err.message || err);
      this.inflight.set(msg.req, page);
      return this.receive(msg, []);
    }
    if (view.destroyed || this.pages[page] !== pg) { bitmap.close?.(); return; } // reset or evicted meanwhile
    const cols = Number(msg.cols) || 1, tile = this.meta.tile;
    const px = (page % this.perRow) * PAGE_COLS, py = Math.floor(page / this.perRow) * PAGE_COLS;
    // Software WebGL keeps the pixels (the renderer's copy, which raster.js reads) instead of the bitmap.
    const pixels = view.renderer.software ? this.pixelsOf(bitmap) : null;
    if (pixels) { bitmap.close?.(); bitmap = null; }
    view.renderer.uploadPage(px * tile, py * tile, pixels || bitmap);
    const texCols = this.perRow * PAGE_COLS;
    const pts = pg.points;
    for (let k = 0; k < pts.length; k++) {
      const i = pts[k];
      if (this.pageOf[i] !== page) continue;
      this.state[i] = LOADED;
      this.kOf[i] = k;
      this.slot[i] = (py + Math.floor(k / cols)) * texCols + px + (k % cols);
    }
    pg.pending = 0;
    pg.bitmap = bitmap;
    pg.cols = cols;
    this.stats.received += pts.length;
    this.slotsDirty = true;
    if (view.timings.thumbsReady == null) view.timings.thumbsReady = performance.now() - view.t0;
    view.onThumbs(pts);
    this.schedule(0);
  }

  /** Uploads the per-point tile indices if pages came or went since the last frame. */
  flush() {
    if (!this.slotsDirty || !this.view.renderer) return;
    this.slotsDirty = false;
    this.view.renderer.setSlots(this.slot);
  }

  destroy() {
    clearTimeout(this.timer);
    if (this.pages) for (const p of this.pages) if (p && p.bitmap) p.bitmap.close?.();
    this.pages = [];
  }
}
