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

test("no category colour comes near the feedback colours (good green, bad red)", async () => {
  const { FEEDBACK_RGB } = await import("../colors.js");
  const dist = (a, b) => Math.hypot(a[0] - b[0], a[1] - b[1], a[2] - b[2]);
  for (let c = 0; c < 200; c++) {
    for (const fb of Object.values(FEEDBACK_RGB)) assert.ok(dist(classColor(c), fb) > 60, `class ${c}: ${classColor(c)}`);
    const [r, g, b] = classColor(c);
    assert.ok(!(r > 150 && g < 90 && b < 90), `class ${c} is a red: ${classColor(c)}`);
    assert.ok(!(g > 120 && r < 110 && b < 110), `class ${c} is a green: ${classColor(c)}`);
  }
});

test("colour names are drawn as themselves; numeric columns on the sequential scale with a bar", async () => {
  const { ramp } = await import("../colors.js");
  const a = { ...attrs(3), codes: Uint16Array.from([0, 1, 2]) };
  const named = (name) => ({ lightblue: [173, 216, 230], pink: [255, 192, 203] })[name] || null;
  const byName = computeColors("background", 3, a, [], ["lightblue", "pink", "(empty)"], { named });
  assert.deepEqual(Array.from(byName.colors.slice(0, 3)), [173, 216, 230]);
  assert.deepEqual(Array.from(byName.colors.slice(4, 7)), [255, 192, 203]);
  assert.deepEqual(byName.legend[0].rgb, [173, 216, 230]);
  const values = Float32Array.from([0, 5, NaN]);
  const byNum = computeColors("brightness", 3, a, [], ["0 – 2", "2 – 5"], { values, scale: { min: 0, max: 10 } });
  assert.deepEqual(Array.from(byNum.colors.slice(0, 3)), ramp(0));
  assert.deepEqual(Array.from(byNum.colors.slice(4, 7)), ramp(0.5));
  assert.deepEqual(Array.from(byNum.colors.slice(8, 11)), [150, 150, 150]);
  assert.deepEqual(byNum.legend.map((e) => e.bar), [{ min: 0, max: 10 }]);
});
