// @ts-check
// The map drawn by plain JavaScript into a pixel buffer, for software WebGL: the marks zoomed out
// (rasterMarks) and the thumbnails zoomed in (rasterThumbs, from the pages' pixels that tileLevels lays out).
// SwiftShader and llvmpipe spend ~0.6 us on every point sprite however small (vertex work and primitive
// set-up) plus ~0.05 us per fragment of the marks shader, so a frame of 100,000 4 px marks costs ~160 ms
// there; the same marks written into a typed array cost ~10 ms and one texture upload. The result is the
// renderer's pan cache, so pans and zoom gestures go on exactly as before. The marks follow renderer.js's
// fragment shader (its "Marks" branch) pixel for pixel: same shapes, edges, feedback bands, selection
// ring, dimming and premultiplied blending, in the same order (every shown point, then the selection on
// top). A GPU never takes this path.

const YELLOW = [255, 204, 0];
// renderer.js's feedback colours (none / good / bad / removed), 0..255.
const FEEDBACK = [[0.35, 0.35, 0.35], [0.10, 0.66, 0.25], [0.86, 0.10, 0.12], [0.35, 0.35, 0.35]].map((c) => c.map((x) => x * 255));

/**
 * Draws the marks of view `v` ({k, tx, ty}: data -> CSS px) into `out` (RGBA bytes, w x h device px,
 * row 0 at the bottom as WebGL textures have it).
 * @param {Uint8Array} out
 * @param {number} w @param {number} h device px
 * @param {{xy: Float32Array, colors: Uint8Array, state: Uint8Array, n: number}} pts
 * @param {{k: number, tx: number, ty: number}} v
 * @param {{dpr: number, size: number, dim: number, anySelected: boolean, background: number[], some: Uint32Array | null}} o
 */
export function rasterMarks(out, w, h, pts, v, o) {
  const px32 = new Uint32Array(out.buffer, out.byteOffset, w * h);
  const bg = o.background.map((c) => Math.round(Math.min(1, Math.max(0, c)) * 255));
  px32.fill(pack(bg[0], bg[1], bg[2], 255));
  const { xy, colors, state } = pts;
  const dpr = o.dpr, size = o.size, dim = o.dim;
  const sx = v.k * dpr, ox = v.tx * dpr, oy = v.ty * dpr;
  // Each band's colour for the point at hand, premultiplied (ring, feedback band, edge, fill: 4 x rgba)
  // and packed (for opaque marks); reused from point to point.
  // A style (colour, feedback, selected, held-out) is worked out once per frame: maps have few colours.
  const styles = new Map();
  let bands = new Float64Array(16 * 64), words = new Uint32Array(4 * 64), at = 0;
  let cols = new Float64Array(64), cols2 = new Float64Array(64);
  const setBand = (j, r, g, b, a) => {
    const R = r * a, G = g * a, B = b * a, A = 255 * a, q = 4 * (at + j);
    bands[q] = R; bands[q + 1] = G; bands[q + 2] = B; bands[q + 3] = A;
    words[at + j] = pack((R + 0.5) | 0, (G + 0.5) | 0, (B + 0.5) | 0, (A + 0.5) | 0);
  };
  /** The first of the style's 4 bands (ring, feedback band, edge, fill) in `bands` / `words`. */
  const styleOf = (r, g, b, fb, sel, test) => {
    const key = (((((r << 8) | g) << 8) | b) * 4 + fb) * 4 + (sel ? 2 : 0) + (test ? 1 : 0);
    let k = styles.get(key);
    if (k !== undefined) return k;
    k = at = styles.size * 4;
    if (words.length < at + 4) {
      const nb = new Float64Array(bands.length * 2), nw = new Uint32Array(words.length * 2);
      nb.set(bands); nw.set(words); bands = nb; words = nw;
    }
    let alpha = sel ? 1 : dim;
    if (test) alpha *= 0.65;
    const fbc = FEEDBACK[fb] || FEEDBACK[0];
    setBand(0, YELLOW[0], YELLOW[1], YELLOW[2], alpha);
    setBand(1, fbc[0], fbc[1], fbc[2], alpha);
    setBand(2, r * 0.55, g * 0.55, b * 0.55, alpha);
    if (sel) setBand(3, r + (YELLOW[0] - r) * 0.35, g + (YELLOW[1] - g) * 0.35, b + (YELLOW[2] - b) * 0.35, alpha);
    else setBand(3, r, g, b, alpha);
    styles.set(key, k);
    return k;
  };
  const stamp = (i) => {
    const st = 4 * i;
    if (state[st + 2]) return; // hidden
    const kind = state[st], sel = state[st + 1] > 0, fb = state[st + 3];
    const s = sel ? size * 1.2 : size; // CSS px
    const half = (s * dpr) / 2; // device px
    // As WebGL rasterises a point sprite: its corners snapped to 1/16 px cover the pixels whose centres lie
    // in [left, right) x [bottom, top); the mark's local coordinates run from the snapped centre.
    const rx = xy[2 * i] * sx + ox, ry = h - (oy - xy[2 * i + 1] * sx); // device px, y up
    const x0 = Math.max(0, Math.ceil(snap(rx - half) - 0.5)), x1 = Math.min(w - 1, Math.ceil(snap(rx + half) - 0.5) - 1);
    const y0 = Math.max(0, Math.ceil(snap(ry - half) - 0.5)), y1 = Math.min(h - 1, Math.ceil(snap(ry + half) - 0.5) - 1);
    const cx = snap(rx), cy = snap(ry), ps = 2 * half;
    if (x1 < x0 || y1 < y0) return;
    // The shader's arithmetic is 32-bit: the same rounding puts the pixels on a band's border on its side.
    const unit = F(2 / s); // one CSS px in the mark's local units
    const inner = F(1 - F(1.5 * unit)); // beyond: the edge (or the selection ring)
    const test = kind === 2, generated = kind === 1;
    const hollow = test ? F(1 - Math.max(F(3 * unit), F(0.45))) : -1;
    let alpha = sel ? 1 : dim;
    if (test) alpha *= 0.65;
    const style = styleOf(colors[st], colors[st + 1], colors[st + 2], fb & 3, sel, test);
    const opaque = alpha >= 1, keep = 1 - alpha;
    // gl_PointCoord's local coordinates are separable: |x| and x² per column, |y| and y² per row.
    if (cols.length < x1 - x0 + 1) { cols = new Float64Array(2 * (x1 - x0 + 1)); cols2 = new Float64Array(cols.length); }
    for (let x = x0; x <= x1; x++) {
      const lx = F(F(F(0.5 + F(F(x + 0.5 - cx) / ps)) * 2) - 1);
      cols[x - x0] = Math.abs(lx);
      cols2[x - x0] = F(lx * lx);
    }
    for (let y = y0; y <= y1; y++) {
      const ly = F(1 - F(F(0.5 + F(F(cy - (y + 0.5)) / ps)) * 2)), ay = Math.abs(ly), ay2 = F(ly * ly); // y down
      const row = y * w;
      for (let x = x0; x <= x1; x++) {
        const ax = cols[x - x0];
        const d = generated ? F(Math.sqrt(F(cols2[x - x0] + ay2))) : test ? F(ax + ay) : ax > ay ? ax : ay;
        if (d > 1 || d < hollow) continue;
        const j = sel && d > inner ? 0 : fb > 0 && d > SIX ? 1 : d > inner ? 2 : 3;
        if (opaque) { px32[row + x] = words[style + j]; continue; }
        const p = 4 * (row + x), q = 4 * (style + j);
        out[p] = bands[q] + out[p] * keep + 0.5;
        out[p + 1] = bands[q + 1] + out[p + 1] * keep + 0.5;
        out[p + 2] = bands[q + 2] + out[p + 2] * keep + 0.5;
        out[p + 3] = bands[q + 3] + out[p + 3] * keep + 0.5;
      }
    }
  };
  const some = o.some;
  if (some) for (let j = 0; j < some.length; j++) stamp(some[j]);
  else for (let i = 0; i < pts.n; i++) stamp(i);
  if (o.anySelected) { // the selection again, on top
    if (some) { for (let j = 0; j < some.length; j++) if (state[4 * some[j] + 1]) stamp(some[j]); }
    else for (let i = 0; i < pts.n; i++) if (state[4 * i + 1]) stamp(i);
  }
}

const F = Math.fround;
const SIX = F(0.6);

/** A device coordinate on the rasteriser's 1/16 px grid. */
function snap(v) { return Math.round(v * 16) / 16; }

function pack(r, g, b, a) { return ((a << 24) | (b << 16) | (g << 8) | r) >>> 0; }

/**
 * Zoomed in: the thumbnail-mode marks of view `v` written into `out`, one part of a frame at a time, as
 * renderer.js's fragment shader draws them (its thumbnail branch): the shape (square, disc, diamond), a
 * ring in the colour-by colour (yellow when selected), a feedback band, and inside the thumbnail sampled
 * bilinearly with the shader's clamping (a filled mark while it is on its way; greyed for held-out test
 * images). Software WebGL spends ~30 ns on each of the ~2 million fragments of a screen of overlapping
 * thumbnails; this loop a few.
 * `out` holds the part `rect` = [x0, y0, w, h] (device px, y up) of a frame `frameH` device px tall.
 * `tex(slot)` gives the tile of texture slot `slot`: {data (RGBA words), base (its first texel in data, the
 * rest row by row from the top), size (px)}, or null (then the filled mark).
 * @param {Uint8Array} out
 * @param {number[]} rect
 * @param {number} frameH
 * @param {{xy: Float32Array, colors: Uint8Array, state: Uint8Array, slots: Uint32Array, n: number}} pts
 * @param {{k: number, tx: number, ty: number}} v
 * @param {{dpr: number, size: number, dim: number, anySelected: boolean, background: number[], some: Uint32Array | null,
 *          tex: (slot: number) => ({data: Int32Array, base: number, size: number} | null)}} o
 */
export function rasterThumbs(out, rect, frameH, pts, v, o) {
  const [X0, Y0, w, h] = rect;
  // Signed words throughout (typed-array values stay small integers in optimised code).
  const px32 = new Int32Array(out.buffer, out.byteOffset, w * h);
  const bg = o.background.map((c) => Math.round(Math.min(1, Math.max(0, c)) * 255));
  px32.fill(pack(bg[0], bg[1], bg[2], 255) | 0);
  const { state } = pts;
  const some = o.some, n = some ? some.length : pts.n;
  // Every mark opaque (nothing dimmed, no held-out image, which is translucent): drawn front to back, each
  // pixel written once, by the point on top, instead of ~3 times over where thumbnails overlap.
  let allOpaque = !o.anySelected && o.dim >= 1;
  for (let j = 0; allOpaque && j < n; j++) { const q = 4 * (some ? some[j] : j); if (state[q] === 2 && !state[q + 2]) allOpaque = false; }
  const f = {
    out, px32, cov: allOpaque ? new Uint8Array(w * h) : null, X0, Y0, w, h, frameH, pts, tex: o.tex,
    dpr: o.dpr, size: o.size, dim: o.dim, sx: v.k * o.dpr, ox: v.tx * o.dpr, oy: v.ty * o.dpr,
  };
  if (f.cov) { for (let j = n - 1; j >= 0; j--) stampThumb(some ? some[j] : j, f); return; }
  for (let j = 0; j < n; j++) stampThumb(some ? some[j] : j, f);
  if (o.anySelected) { // the selection again, on top
    for (let j = 0; j < n; j++) { const i = some ? some[j] : j; if (state[4 * i + 1]) stampThumb(i, f); }
  }
}

// Scratch for one mark's columns and rows: |local|, local², the texels read and the second one's weight
// (0..256). Grown when a mark is larger.
let scratch = makeScratch(256);
function makeScratch(m) {
  return { m, ax: new Float64Array(m), ax2: new Float64Array(m), ay: new Float64Array(m), ay2: new Float64Array(m),
    c0: new Int32Array(m), c1: new Int32Array(m), cw: new Int32Array(m), r0: new Int32Array(m), r1: new Int32Array(m), rw: new Int32Array(m) };
}
const band = new Float64Array(12); // ring, feedback band, fill: premultiplied rgba
const word = new Int32Array(3);

/** One point of rasterThumbs (f: the frame's constants). */
function stampThumb(i, f) {
  const { xy, colors, state, slots } = f.pts;
  const st = 4 * i;
  if (state[st + 2]) return; // hidden
  const kind = state[st], sel = state[st + 1] > 0, fb = state[st + 3];
  const s = sel ? f.size * 1.2 : f.size;
  const half = (s * f.dpr) / 2;
  const { X0, Y0, w, h, px32, out } = f;
  const rx = xy[2 * i] * f.sx + f.ox, ry = f.frameH - (f.oy - xy[2 * i + 1] * f.sx); // device px of the frame, y up
  const x0 = Math.max(X0, Math.ceil(snap(rx - half) - 0.5)), x1 = Math.min(X0 + w - 1, Math.ceil(snap(rx + half) - 0.5) - 1);
  const y0 = Math.max(Y0, Math.ceil(snap(ry - half) - 0.5)), y1 = Math.min(Y0 + h - 1, Math.ceil(snap(ry + half) - 0.5) - 1);
  if (x1 < x0 || y1 < y0) return;
  const cx = snap(rx), cy = snap(ry), ps = 2 * half;
  const unit = 2 / s; // one CSS px in local units
  const ringE = 1 - (sel ? 3 : 2) * unit; // beyond: the ring
  const fbE = fb > 0 ? ringE - Math.max(4 * unit, 0.16) : 2; // beyond (and within the ring): the feedback band
  const test = kind === 2, generated = kind === 1;
  let alpha = sel ? 1 : f.dim;
  if (test) alpha *= 0.65;
  const fbc = FEEDBACK[fb & 3] || FEEDBACK[0];
  const r = colors[st], g = colors[st + 1], b = colors[st + 2];
  const ring = sel ? YELLOW : fb > 0 ? fbc : null;
  setBand(0, ring ? ring[0] : r, ring ? ring[1] : g, ring ? ring[2] : b, alpha);
  setBand(1, fbc[0], fbc[1], fbc[2], alpha);
  setBand(2, r, g, b, alpha);
  const slot = slots[i];
  const t = slot !== NONE ? f.tex(slot) : null;
  const opaque = alpha >= 1, keep = 1 - alpha;
  const nx = x1 - x0 + 1, ny = y1 - y0 + 1;
  if (scratch.m < nx || scratch.m < ny) scratch = makeScratch(2 * Math.max(nx, ny));
  const { ax, ax2, ay, ay2, c0, c1, cw, r0, r1, rw } = scratch;
  // The shader reads the tile at gl_PointCoord * tile texels, clamped half a texel inside the tile.
  const T = t ? t.size : 1, lo = 0.5, hi = T - 0.5, base = t ? t.base : 0;
  for (let x = x0; x <= x1; x++) {
    const u = 0.5 + (x + 0.5 - cx) / ps, l = u * 2 - 1, j = x - x0;
    ax[j] = Math.abs(l); ax2[j] = l * l;
    if (t) {
      const e = Math.min(hi, Math.max(lo, u * T)) - 0.5, k = Math.floor(e);
      c0[j] = k; c1[j] = Math.min(k + 1, T - 1); cw[j] = Math.round((e - k) * 256);
    }
  }
  for (let y = y0; y <= y1; y++) {
    const u = 0.5 + (cy - (y + 0.5)) / ps, l = 1 - u * 2, j = y - y0; // u runs down the tile
    ay[j] = Math.abs(l); ay2[j] = l * l;
    if (t) {
      const e = Math.min(hi, Math.max(lo, u * T)) - 0.5, k = Math.floor(e);
      r0[j] = base + k * T; r1[j] = base + Math.min(k + 1, T - 1) * T; rw[j] = Math.round((e - k) * 256);
    }
  }
  const data = t ? t.data : null;
  const grey = test ? 0.45 : 0; // held-out test images: the thumbnail mixed towards grey
  const cov = f.cov;
  const shape = generated ? 1 : test ? 2 : 0;
  if (cov !== null) { // every mark opaque, drawn front to back (no held-out image: those are translucent)
    const w0 = word[0], w1 = word[1], w2 = word[2];
    for (let y = y0; y <= y1; y++) {
      const jy = y - y0, ly = ay[jy], ly2 = ay2[jy], row = (y - Y0) * w - X0;
      const R0 = data !== null ? r0[jy] : 0, R1 = data !== null ? r1[jy] : 0, wy = data !== null ? rw[jy] : 0;
      for (let x = x0; x <= x1; x++) {
        const p = row + x;
        if (cov[p] !== 0) continue; // a point in front wrote it
        const jx = x - x0;
        const d = shape === 1 ? Math.sqrt(ax2[jx] + ly2) : ax[jx] > ly ? ax[jx] : ly;
        if (d > 1) continue;
        cov[p] = 1;
        if (d > ringE) px32[p] = w0;
        else if (d > fbE) px32[p] = w1;
        else if (data === null) px32[p] = w2;
        else {
          const wx = cw[jx], C0 = c0[jx], C1 = c1[jx];
          px32[p] = lerp(lerp(data[R0 + C0], data[R0 + C1], wx), lerp(data[R1 + C0], data[R1 + C1], wx), wy) | 0xff000000;
        }
      }
    }
    return;
  }
  // Back to front, blended (a selected mark is opaque; held-out images, the only greyed ones, never are).
  for (let y = y0; y <= y1; y++) {
    const jy = y - y0, ly = ay[jy], ly2 = ay2[jy], row = (y - Y0) * w - X0;
    const R0 = data ? r0[jy] : 0, R1 = data ? r1[jy] : 0, wy = data ? rw[jy] : 0;
    for (let x = x0; x <= x1; x++) {
      const p = row + x;
      const jx = x - x0;
      const d = shape === 1 ? Math.sqrt(ax2[jx] + ly2) : shape === 2 ? ax[jx] + ly : ax[jx] > ly ? ax[jx] : ly;
      if (d > 1) continue;
      const j = d > ringE ? 0 : d > fbE ? 1 : 2;
      if (j < 2 || data === null) {
        if (opaque) { px32[p] = word[j]; continue; }
        const q = 4 * j, p4 = 4 * p;
        out[p4] = band[q] + out[p4] * keep + 0.5;
        out[p4 + 1] = band[q + 1] + out[p4 + 1] * keep + 0.5;
        out[p4 + 2] = band[q + 2] + out[p4 + 2] * keep + 0.5;
        out[p4 + 3] = band[q + 3] + out[p4 + 3] * keep + 0.5;
        continue;
      }
      // Bilinear, in 8-bit weights as texture units filter, two channels per multiply.
      const wx = cw[jx], C0 = c0[jx], C1 = c1[jx];
      const texel = lerp(lerp(data[R0 + C0], data[R0 + C1], wx), lerp(data[R1 + C0], data[R1 + C1], wx), wy);
      if (opaque) { px32[p] = texel | 0xff000000; continue; }
      let R = texel & 255, G = (texel >>> 8) & 255, B = (texel >>> 16) & 255;
      if (grey !== 0) { R += (127.5 - R) * grey; G += (127.5 - G) * grey; B += (127.5 - B) * grey; }
      const p4 = 4 * p;
      out[p4] = R * alpha + out[p4] * keep + 0.5;
      out[p4 + 1] = G * alpha + out[p4 + 1] * keep + 0.5;
      out[p4 + 2] = B * alpha + out[p4 + 2] * keep + 0.5;
      out[p4 + 3] = 255 * alpha + out[p4 + 3] * keep + 0.5;
    }
  }
}

/** Band j's colour (0..255) at `alpha`, premultiplied, in `band` and packed in `word`. */
function setBand(j, r, g, b, alpha) {
  const q = 4 * j;
  band[q] = r * alpha; band[q + 1] = g * alpha; band[q + 2] = b * alpha; band[q + 3] = 255 * alpha;
  word[j] = pack((band[q] + 0.5) | 0, (band[q + 1] + 0.5) | 0, (band[q + 2] + 0.5) | 0, (band[q + 3] + 0.5) | 0) | 0;
}

/** Texels p and q (RGBA words) mixed, t/256 of q: red and blue in one multiply, green and alpha in another. */
function lerp(p, q, t) {
  const s = 256 - t;
  const rb = ((((p & 0xff00ff) * s + (q & 0xff00ff) * t) >>> 8) & 0xff00ff);
  const ga = (((((p >>> 8) & 0xff00ff) * s + ((q >>> 8) & 0xff00ff) * t) >>> 8) & 0xff00ff);
  return rb | (ga << 8);
}

const NONE = 0xffffffff;

/** A page's pixels (ImageData of `tile` px tiles) tile by tile, each tile's texels together (what raster.js
 *  reads for one point stays in a few cache lines), at full and half size (a 2 x 2 box filter).
 *  @param {{data: Uint8ClampedArray, width: number, height: number}} img @param {number} tile */
export function tileLevels(img, tile) {
  const cols = Math.floor(img.width / tile), rows = Math.floor(img.height / tile);
  const src = new Int32Array(img.data.buffer, img.data.byteOffset, img.width * img.height);
  const full = new Int32Array(cols * rows * tile * tile);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const base = (r * cols + c) * tile * tile;
      for (let y = 0; y < tile; y++) full.set(src.subarray((r * tile + y) * img.width + c * tile, (r * tile + y) * img.width + (c + 1) * tile), base + y * tile);
    }
  }
  const levels = [{ data: full, size: tile }];
  const h = tile >> 1;
  if (h >= 4 && tile % 2 === 0) {
    const half = new Int32Array(cols * rows * h * h);
    for (let k = 0; k < cols * rows; k++) {
      const s0 = k * tile * tile, d0 = k * h * h;
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < h; x++) {
          const p = s0 + 2 * y * tile + 2 * x;
          half[d0 + y * h + x] = average4(full[p], full[p + 1], full[p + tile], full[p + tile + 1]);
        }
      }
    }
    levels.push({ data: half, size: h });
  }
  return { cols, rows, levels };
}

/** The mean of four RGBA words, rounded, two channels per add. */
function average4(a, b, c, d) {
  const rb = ((a & 0xff00ff) + (b & 0xff00ff) + (c & 0xff00ff) + (d & 0xff00ff) + 0x20002) >>> 2;
  const ga = (((a >>> 8) & 0xff00ff) + ((b >>> 8) & 0xff00ff) + ((c >>> 8) & 0xff00ff) + ((d >>> 8) & 0xff00ff) + 0x20002) >>> 2;
  return (rb & 0xff00ff) | ((ga & 0xff00ff) << 8);
}
