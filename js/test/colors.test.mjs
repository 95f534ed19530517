// Unit tests of the colour scales and theme colour helpers (node --test).
import test from "node:test";
import assert from "node:assert/strict";
import { classColor, computeColors, contrast, parseCssColor, roundColor } from "../colors.js";

const attrs = (n) => ({ cls: new Uint16Array(n), round: new Uint16Array(n), feedback: new Uint8Array(n), flag: new Uint8Array(n) });

test("class colours are distinct for the first 20 classes and stable beyond", () => {
  const seen = new Set();
  for (let c = 0; c < 20; c++) seen.add(classColor(c).join(","));
  assert.equal(seen.size, 20);
  assert.deepEqual(classColor(37), classColor(37));
  for (const v of classColor(123)) assert.ok(v >= 0 && v <= 255);
});

test("round 0 (real images) is grey and later rounds follow the ramp", () => {
  assert.deepEqual(roundColor(0, 5), [150, 150, 150]);
  assert.deepEqual(roundColor(1, 5), [68, 1, 84]);
  assert.deepEqual(roundColor(5, 5), [253, 231, 37]);
});

test("computeColors gives one RGBA per point and a legend per mode", () => {
  const a = attrs(3);
  a.cls.set([0, 1, 1]);
  a.feedback.set([0, 2, 1]);
  const byClass = computeColors("class", 3, a, ["cat", "dog"]);
  assert.equal(byClass.colors.length, 12);
  assert.deepEqual(Array.from(byClass.colors.slice(4, 8)), [...classColor(1), 255]);
  assert.deepEqual(byClass.legend.map((e) => e.name), ["cat", "dog"]);
  const byFb = computeColors("feedback", 3, a, []);
  assert.deepEqual(byFb.legend.map((e) => e.name), ["none", "good", "bad", "removed"]);
  assert.notDeepEqual(Array.from(byFb.colors.slice(4, 7)), Array.from(byFb.colors.slice(8, 11)));
});

test("a column mode colours by the codes sent from Python", () => {
  const a = { ...attrs(4), codes: Uint16Array.from([0, 1, 0, 2]) };
  const { colors, legend } = computeColors("split", 4, a, ["x"], ["test", "train", "other"]);
  assert.deepEqual(legend.map((e) => e.name), ["test", "train", "other"]);
  assert.deepEqual(Array.from(colors.slice(12, 15)), classColor(2));
  assert.deepEqual(Array.from(colors.slice(0, 3)), Array.from(colors.slice(8, 11)));
});

test("CSS colours parse and contrast follows WCAG", () => {
  assert.deepEqual(parseCssColor("rgb(17, 17, 17)"), [17, 17, 17]);
  assert.deepEqual(parseCssColor("rgba(1, 2, 3, 0.5)"), [1, 2, 3]);
  assert.equal(parseCssColor("rgba(0, 0, 0, 0)"), null);
  assert.deepEqual(parseCssColor("#fa0"), [255, 170, 0]);
  assert.equal(Math.round(contrast([0, 0, 0], [255, 255, 255])), 21);
  assert.equal(contrast([100, 100, 100], [100, 100, 100]), 1);
});
