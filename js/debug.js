// @ts-check
// The test and benchmark handle: each widget on the page pushes one object onto window.__dcw that
// reads its state (selection, view, timings, frames) and drives it (lasso polygons, zoom, profiled draws).
import { selectPolygon, zoomBy } from "./interaction.js";
import { drawOverlay } from "./overlay.js";

/** @param {any} view the ProjectionView */
export function publishDebugHandle(view) {
  const self = view;
  const handle = {
    id: view.id,
    root: view.root,
    model: view.model,
    get n() { return self.n; },
    /** Legend and sidebar filters are drawn before Python answers (for the benchmark to tell). */
    localFilters: true,
    get hidden() { return Array.from(self.hidden || []); },
    get view() { return { ...self.view, width: self.width, height: self.height }; },
    get selection() { return Array.from(self.selection); },
    get timings() { return { ...self.timings }; },
    get frames() { return self.frames; },
    get selectionSends() { return self.selectionSends || 0; },
    get thumbsShown() { return Boolean(self.thumbsShown); },
    /** The mark size (CSS px) at this zoom, and whether it shows thumbnails. */
    get markSize() { return self.markSize(); },
    /** On-demand thumbnails: requested / received counts, pages held, visible points still missing. */
    get thumbStats() {
      const t = self.thumbs;
      return { ...t.stats, version: t.meta.version, count: t.meta.count, tile: t.meta.tile, inflight: t.inflight.size, error: t.error };
    },
    hasThumb: (i) => self.thumbs.has(i),
    /** True when every point in view that can show a thumbnail has it (or the map shows marks). */
    get thumbsReady() {
      const t = self.thumbs, st = t.stats;
      // Counters taken in an earlier view (a pan or zoom whose update has not run yet) say nothing yet.
      return !self.thumbsShown || (st.view === t.viewKey() && st.visible > 0 && st.missingVisible === 0 && t.inflight.size === 0);
    },
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
    /** raster.js for the cached frame's marks on software WebGL: setRaster(false) draws them with WebGL. */
    setRaster: (on) => { if (self.renderer) { self.renderer.raster = Boolean(on) && self.renderer.software; self.renderer.dropCache(); self.requestDraw(); } },
    /** The pan cache's margins drawn after the canvas's area (when idle): setVisibleFirst(false) draws it whole. */
    setVisibleFirst: (on) => { if (self.renderer) { self.renderer.visibleFirst = Boolean(on) && self.renderer.software; self.renderer.dropCache(); self.requestDraw(); } },
    /** Margin pieces of the cached frame still to draw. */
    get pendingSlices() { const c = self.renderer && self.renderer.cache; return c && c.fill ? c.fill.pending.length : 0; },
    zoomTo: (idx) => self.zoomTo(idx),
    dataToScreen: (x, y) => self.toScreen(x, y),
    zoomBy: (f, sx, sy) => zoomBy(self, f, sx, sy),
    get zooming() { return Boolean(self.zooming); },
    setView: (k, tx, ty) => { self.view = { k, tx, ty }; self.userMoved = true; self.requestDraw(); },
    selectPolygon: (pts, op = "replace") => Array.from(selectPolygon(self, pts, op)),
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
      drawOverlay(self, size, thumbs);
      const overlay = performance.now() - t;
      return { clear, points, overlay, thumbs, size };
    },
    /** The map canvas's pixels (RGBA, rows from the bottom) as drawn last; kept in the page for tests to compare. */
    readPixels: () => {
      const gl = self.renderer && self.renderer.gl;
      if (!gl) return null;
      const out = new Uint8Array(gl.drawingBufferWidth * gl.drawingBufferHeight * 4);
      gl.readPixels(0, 0, gl.drawingBufferWidth, gl.drawingBufferHeight, gl.RGBA, gl.UNSIGNED_BYTE, out);
      return out;
    },
    /** Draws now and waits for the GPU (1-pixel readback); returns ms. For benchmarks. */
    drawNow: () => {
      const t = performance.now();
      self.draw();
      if (self.renderer) self.renderer.gl.readPixels(0, 0, 1, 1, self.renderer.gl.RGBA, self.renderer.gl.UNSIGNED_BYTE, new Uint8Array(4));
      return performance.now() - t;
    },
  };
  view.handle = handle;
  window.__dcw = window.__dcw || [];
  window.__dcw.push(handle);
}