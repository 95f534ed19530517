// Unit tests of the spatial index against brute force (node --test).
import test from "node:test";
import assert from "node:assert/strict";
import { GridIndex, ascending, combineSelection, pointInPolygon } from "../spatial.js";

function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32);
}

function points(n, seed = 1) {
  const r = rng(seed);
  const xs = new Float32Array(n), ys = new Float32Array(n);
  for (let i = 0; i < n; i++) { xs[i] = r() * 100 - 50; ys[i] = (r() * 2 - 1) * (r() * 30); }
  return { xs, ys };
}

test("lasso returns exactly the points inside, same as testing every point", () => {
  const { xs, ys } = points(5000);
  const index = new GridIndex(xs, ys);
  const poly = [-30, -10, 10, -25, 35, 5, 0, 28, -20, 12, -5, 0];
  const got = Array.from(index.lasso(Float64Array.from(poly)));
  const want = [];
  for (let i = 0; i < xs.length; i++) if (pointInPolygon(xs[i], ys[i], poly)) want.push(i);
  assert.deepEqual(got, want);
  assert.ok(want.length > 100 && want.length < 4000);
});

test("box is inclusive and sorted", () => {
  const { xs, ys } = points(2000, 7);
  const index = new GridIndex(xs, ys);
  const got = Array.from(index.box(10, 5, -10, -5));
  const want = [];
  for (let i = 0; i < xs.length; i++) if (xs[i] >= -10 && xs[i] <= 10 && ys[i] >= -5 && ys[i] <= 5) want.push(i);
  assert.deepEqual(got, want);
});

test("nearest finds the closest point within the radius and honours skip", () => {
  const xs = Float32Array.from([0, 1, 5]), ys = Float32Array.from([0, 0, 0]);
  const index = new GridIndex(xs, ys);
  assert.equal(index.nearest(0.8, 0, 2), 1);
  assert.equal(index.nearest(0.8, 0, 2, (i) => i === 1), 0);
  assert.equal(index.nearest(3, 0, 0.5), -1);
});

test("empty and degenerate inputs", () => {
  const empty = new GridIndex(new Float32Array(0), new Float32Array(0));
  assert.equal(empty.lasso(Float64Array.from([0, 0, 1, 0, 0, 1])).length, 0);
  const same = new GridIndex(Float32Array.from([2, 2, 2]), Float32Array.from([3, 3, 3]));
  assert.deepEqual(Array.from(same.box(1, 2, 3, 4)), [0, 1, 2]);
});

test("combineSelection replaces, adds and subtracts", () => {
  const cur = Uint32Array.from([1, 3, 5]);
  assert.deepEqual(Array.from(combineSelection(8, cur, [5, 2], "replace")), [2, 5]);
  assert.deepEqual(Array.from(combineSelection(8, cur, [2, 9], "add")), [1, 2, 3, 5]);
  assert.deepEqual(Array.from(combineSelection(8, cur, [3], "subtract")), [1, 5]);
});

test("ascending gives the same order from a sort and from a mask", () => {
  const n = 1000, hits = new Uint32Array(n);
  let count = 0;
  for (let i = n - 1; i >= 0; i -= 3) hits[count++] = i; // many: read back from a mask
  assert.deepEqual(Array.from(ascending(hits, count, n)), Array.from(hits.subarray(0, count)).sort((a, b) => a - b));
  assert.deepEqual(Array.from(ascending(Uint32Array.from([9, 2, 5]), 3, n)), [2, 5, 9]); // a few: sorted
  assert.deepEqual(Array.from(combineSelection(8, new Uint32Array(0), Uint32Array.from([6, 1]), "replace")), [1, 6]);
});
