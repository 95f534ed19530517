// Unit tests of raster.js's thumbnail path (node --test): where a point's thumbnail lands, which way up,
// its ring and feedback band, what covers what, and the half-size level.
import test from "node:test";
import assert from "node:assert/strict";
import { rasterThumbs, tileLevels } from "../raster.js";

const TILE = 8;
/** One page of `count` tiles, 4 to a row: tile k has red = 10 * k + column, green = 10 * row of the tile. */
function page(count) {
  const cols = 4, rows = Math.ceil(count / cols), width = cols * TILE, height = rows * TILE;
  const data = new Uint8ClampedArray(width * height * 4);
  for (let k = 0; k < count; k++) {
    for (let y = 0; y < TILE; y++) {
      for (let x = 0; x < TILE; x++) {
        const p = 4 * (((Math.floor(k / cols) * TILE) + y) * width + (k % cols) * TILE + x);
        data[p] = 10 * k + x; data[p + 1] = 10 * y; data[p + 2] = 200; data[p + 3] = 255;
      }
    }
  }
  return tileLevels({ data, width, height }, TILE);
}

/** Draws `pts` ([x, y, kind, feedback, tile] in px of a 64 x 64 frame, y down) at mark size `size`. */
function draw(pts, size, levels, o = {}) {
  const n = pts.length, xy = new Float32Array(2 * n), colors = new Uint8Array(4 * n), state = new Uint8Array(4 * n);
  const slots = new Uint32Array(n);
  pts.forEach(([x, y, kind, fb, tile], i) => {
    xy[2 * i] = x; xy[2 * i + 1] = -y; colors.set([0, 0, 255, 255], 4 * i); state[4 * i] = kind; state[4 * i + 3] = fb;
    slots[i] = tile ?? 0xffffffff;
  });
  const out = new Uint8Array(64 * 64 * 4);
  const level = o.level ?? 0, L = levels.levels[level];
  rasterThumbs(out, [0, 0, 64, 64], 64, { xy, colors, state, slots, n }, { k: 1, tx: 0, ty: 0 }, {
    dpr: 1, size, dim: 1, anySelected: false, background: [1, 1, 1], some: null,
    tex: (slot) => ({ data: L.data, base: slot * L.size * L.size, size: L.size }), ...o,
  });
  /** RGB at (x, y), y down. */
  return (x, y) => Array.from(out.subarray(4 * ((63 - y) * 64 + x), 4 * ((63 - y) * 64 + x) + 3));
}

test("a thumbnail drawn at its own size shows each texel once, the right way up", () => {
  const at = draw([[32, 32, 0, 0, 3]], TILE, page(4));
  // The 8 x 8 mark covers pixels 28..35; its 2 px ring is the point's colour, inside the tile's texels.
  assert.deepEqual(at(28, 32), [0, 0, 255]);
  assert.deepEqual(at(30, 30), [30 + 2, 20, 200]); // texel (2, 2) of tile 3
  assert.deepEqual(at(33, 31), [30 + 5, 30, 200]); // texel (5, 3): rows run down the tile
  assert.deepEqual(at(27, 32), [255, 255, 255]); // outside: the background
});

test("a feedback band sits inside the ring, and a disc leaves its corners to the background", () => {
  const at = draw([[32, 32, 1, 2, 0]], 32, page(1));
  assert.deepEqual(at(32, 16), [219, 26, 31]); // the ring of a "bad" image: its feedback colour
  assert.deepEqual(at(32, 20), [219, 26, 31]); // then the band, the same colour
  assert.deepEqual(at(17, 17), [255, 255, 255]); // a disc's corner
  const mid = at(32, 32);
  assert.equal(mid[2], 200); // the thumbnail inside
});

test("later points cover earlier ones, drawn front to back or blended back to front", () => {
  for (const dim of [1, 0.999]) {
    const at = draw([[30, 32, 0, 0, 0], [34, 32, 0, 0, 1]], 16, page(2), { dim });
    const px = at(31, 32); // inside both: the second point's tile 1
    assert.ok(px[0] >= 10 && px[0] < 20, `dim ${dim}: ${px}`);
  }
});

test("the half-size level is the mean of each 2 x 2 block", () => {
  const { levels } = page(2);
  const [full, half] = levels;
  assert.equal(half.size, TILE / 2);
  for (const [x, y] of [[0, 0], [3, 2]]) {
    const a = full.data[TILE * TILE + 2 * y * TILE + 2 * x], b = half.data[(TILE / 2) ** 2 + y * (TILE / 2) + x];
    assert.equal(b & 255, Math.round(((a & 255) + ((a & 255) + 1) + (a & 255) + ((a & 255) + 1)) / 4)); // red: x and x + 1
    assert.equal((b >>> 8) & 255, 10 * (2 * y) + 5); // green: rows 2y and 2y + 1
  }
});
