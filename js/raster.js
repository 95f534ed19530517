// @ts-check
// The marks (zoomed out: no thumbnails) drawn by plain JavaScript into a pixel buffer, for software WebGL.
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
