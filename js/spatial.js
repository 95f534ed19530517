// @ts-check
// Uniform-grid spatial index over 2D points, with lasso / box / nearest queries.
// A lasso over 50,000 points must take well under 100 ms: cells that no polygon edge touches are
// wholly inside or outside, so one point-in-polygon test decides all their points at once; only
// points in cells crossed by an edge are tested one by one.

export class GridIndex {
  /** xs, ys: Float32Array of data coordinates (same length). */
  constructor(xs, ys) {
    const n = xs.length;
    this.n = n;
    this.xs = xs;
    this.ys = ys;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = xs[i], y = ys[i];
      if (x < x0) x0 = x;
      if (x > x1) x1 = x;
      if (y < y0) y0 = y;
      if (y > y1) y1 = y;
    }
    if (n === 0) { x0 = y0 = 0; x1 = y1 = 1; }
    const w = Math.max(x1 - x0, 1e-9), h = Math.max(y1 - y0, 1e-9);
    // About 4 points per cell on average, cells roughly square.
    const cells = Math.max(1, Math.ceil(n / 4));
    const aspect = w / h;
    this.gx = Math.max(1, Math.min(2048, Math.round(Math.sqrt(cells * aspect))));
    this.gy = Math.max(1, Math.min(2048, Math.round(cells / this.gx)));
    this.x0 = x0; this.y0 = y0;
    this.cw = w / this.gx * (1 + 1e-6);
    this.ch = h / this.gy * (1 + 1e-6);
    // Counting sort of points by cell: start[c]..start[c+1] indexes into order.
    const ncell = this.gx * this.gy;
    const cellOf = new Uint32Array(n);
    const start = new Uint32Array(ncell + 1);
    for (let i = 0; i < n; i++) {
      const c = this.cellIndex(xs[i], ys[i]);
      cellOf[i] = c;
      start[c + 1]++;
    }
    for (let c = 0; c < ncell; c++) start[c + 1] += start[c];
    const fill = start.slice(0, ncell);
    const order = new Uint32Array(n);
    for (let i = 0; i < n; i++) order[fill[cellOf[i]]++] = i;
    this.start = start;
    this.order = order;
    this.bounds = [x0, y0, x1, y1];
  }

  cx(x) { return Math.min(this.gx - 1, Math.max(0, Math.floor((x - this.x0) / this.cw))); }
  cy(y) { return Math.min(this.gy - 1, Math.max(0, Math.floor((y - this.y0) / this.ch))); }
  cellIndex(x, y) { return this.cy(y) * this.gx + this.cx(x); }

  /** Indices of points inside the axis-aligned box (inclusive). */
  box(xa, ya, xb, yb) {
    const lx = Math.min(xa, xb), hx = Math.max(xa, xb), ly = Math.min(ya, yb), hy = Math.max(ya, yb);
    const out = [];
    const c0 = this.cx(lx), c1 = this.cx(hx), r0 = this.cy(ly), r1 = this.cy(hy);
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const cell = r * this.gx + c;
        for (let k = this.start[cell]; k < this.start[cell + 1]; k++) {
          const i = this.order[k];
          const x = this.xs[i], y = this.ys[i];
          if (x >= lx && x <= hx && y >= ly && y <= hy) out.push(i);
        }
      }
    }
    return Uint32Array.from(out).sort();
  }

  /** Indices of points inside the polygon (flat [x0,y0,x1,y1,...], data units, even-odd rule). */
  lasso(poly) {
    const m = poly.length >> 1;
    if (m < 3 || this.n === 0) return new Uint32Array(0);
    let lx = Infinity, ly = Infinity, hx = -Infinity, hy = -Infinity;
    for (let j = 0; j < m; j++) {
      const x = poly[2 * j], y = poly[2 * j + 1];
      if (x < lx) lx = x;
      if (x > hx) hx = x;
      if (y < ly) ly = y;
      if (y > hy) hy = y;
    }
    const c0 = this.cx(lx), c1 = this.cx(hx), r0 = this.cy(ly), r1 = this.cy(hy);
    const bw = c1 - c0 + 1, bh = r1 - r0 + 1;
    // Mark the cells (within the bbox) that some polygon edge passes through.
    const edge = new Uint8Array(bw * bh);
    for (let j = 0; j < m; j++) {
      const ax = poly[2 * j], ay = poly[2 * j + 1];
      const k = (j + 1) % m;
      const bx = poly[2 * k], by = poly[2 * k + 1];
      const sc0 = this.cx(Math.min(ax, bx)), sc1 = this.cx(Math.max(ax, bx));
      const sr0 = this.cy(Math.min(ay, by)), sr1 = this.cy(Math.max(ay, by));
      const nx = by - ay, ny = ax - bx; // normal of the segment's line
      for (let r = sr0; r <= sr1; r++) {
        const ya0 = this.y0 + r * this.ch, ya1 = ya0 + this.ch;
        for (let c = sc0; c <= sc1; c++) {
          const xa0 = this.x0 + c * this.cw, xa1 = xa0 + this.cw;
          // Separating axis: all four corners strictly on one side => segment misses the cell.
          const d0 = nx * (xa0 - ax) + ny * (ya0 - ay);
          const d1 = nx * (xa1 - ax) + ny * (ya0 - ay);
          const d2 = nx * (xa0 - ax) + ny * (ya1 - ay);
          const d3 = nx * (xa1 - ax) + ny * (ya1 - ay);
          if ((d0 > 0 && d1 > 0 && d2 > 0 && d3 > 0) || (d0 < 0 && d1 < 0 && d2 < 0 && d3 < 0)) continue;
          edge[(r - r0) * bw + (c - c0)] = 1;
        }
      }
    }
    // Hits go into a typed buffer and come out ascending by a pass over a mask when they are many: a lasso
    // over most of a million points would otherwise push and sort ~900,000 numbers.
    const out = new Uint32Array(this.n), { start, order, xs, ys } = this;
    let count = 0;
    const cross = new Float64Array(m);
    for (let r = r0; r <= r1; r++) {
      // Where the polygon crosses this row's centre line, left to right: a cell no edge touches is inside
      // when an odd number of crossings lie right of its centre (pointInPolygon's rule, once per row
      // instead of once per cell).
      const yc = this.y0 + (r + 0.5) * this.ch;
      let nc = 0;
      for (let j = 0, k = m - 1; j < m; k = j++) {
        const xj = poly[2 * j], yj = poly[2 * j + 1], xk = poly[2 * k], yk = poly[2 * k + 1];
        if ((yj > yc) !== (yk > yc)) cross[nc++] = ((xk - xj) * (yc - yj)) / (yk - yj) + xj;
      }
      const row = cross.subarray(0, nc).sort();
      let right = 0; // crossings left of the current cell's centre
      for (let c = c0; c <= c1; c++) {
        const cell = r * this.gx + c;
        const s = start[cell], e = start[cell + 1];
        if (s === e) continue;
        if (edge[(r - r0) * bw + (c - c0)]) {
          for (let k = s; k < e; k++) {
            const i = order[k];
            if (pointInPolygon(xs[i], ys[i], poly)) out[count++] = i;
          }
          continue;
        }
        const xc = this.x0 + (c + 0.5) * this.cw;
        while (right < nc && row[right] <= xc) right++;
        if ((nc - right) % 2 === 1) for (let k = s; k < e; k++) out[count++] = order[k];
      }
    }
    return ascending(out, count, this.n);
  }

  /** Nearest point within radius r (data units), or -1; `skip(i)` can exclude points. */
  nearest(x, y, r, skip) {
    const c0 = this.cx(x - r), c1 = this.cx(x + r), r0 = this.cy(y - r), r1 = this.cy(y + r);
    let best = -1, bd = r * r;
    for (let rr = r0; rr <= r1; rr++) {
      for (let c = c0; c <= c1; c++) {
        const cell = rr * this.gx + c;
        for (let k = this.start[cell]; k < this.start[cell + 1]; k++) {
          const i = this.order[k];
          if (skip && skip(i)) continue;
          const dx = this.xs[i] - x, dy = this.ys[i] - y;
          const d = dx * dx + dy * dy;
          if (d <= bd) { bd = d; best = i; }
        }
      }
    }
    return best;
  }
}

/** Even-odd ray casting; poly is flat [x0,y0,x1,y1,...]. */
export function pointInPolygon(x, y, poly) {
  const m = poly.length >> 1;
  let inside = false;
  for (let j = 0, k = m - 1; j < m; k = j++) {
    const xj = poly[2 * j], yj = poly[2 * j + 1], xk = poly[2 * k], yk = poly[2 * k + 1];
    if ((yj > y) !== (yk > y) && x < ((xk - xj) * (y - yj)) / (yk - yj) + xj) inside = !inside;
  }
  return inside;
}

/** Combines a new hit set with the current selection: "replace", "add" or "subtract". */
export function combineSelection(n, current, hits, mode) {
  if (mode === "replace") { const out = Uint32Array.from(hits); return isAscending(out) ? out : out.sort(); }
  const mask = new Uint8Array(n);
  for (const i of current) if (i < n) mask[i] = 1;
  const v = mode === "add" ? 1 : 0;
  for (const i of hits) if (i < n) mask[i] = v;
  let count = 0;
  for (let i = 0; i < n; i++) count += mask[i];
  const out = new Uint32Array(count);
  for (let i = 0, j = 0; i < n; i++) if (mask[i]) out[j++] = i;
  return out;
}

/** The first `count` entries of `hits` (distinct indices below n), ascending: a few are sorted, many are
 *  read back from a mask in one pass (linear in n, not n log n). */
export function ascending(hits, count, n) {
  const h = hits.subarray(0, count);
  if (count * 16 < n) return h.slice().sort();
  const mask = new Uint8Array(n);
  for (let j = 0; j < count; j++) mask[h[j]] = 1;
  const out = new Uint32Array(count);
  for (let i = 0, j = 0; i < n; i++) if (mask[i]) out[j++] = i;
  return out;
}

/** Whether `a` never decreases. */
function isAscending(a) {
  for (let j = 1; j < a.length; j++) if (a[j] < a[j - 1]) return false;
  return true;
}
