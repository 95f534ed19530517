// @ts-check
// Colour schemes for the projection: one RGBA (0-255) per point for each "colour by" mode,
// plus the legend entries that explain them. Pure functions (unit-tested with node --test).

// Category colours: tab20 without its reds and greens, which mean "bad" and "good" on this map.
const CATEGORICAL = [
  [31, 119, 180], [255, 127, 14], [148, 103, 189], [140, 86, 75], [227, 119, 194],
  [127, 127, 127], [188, 189, 34], [23, 190, 207], [174, 199, 232], [255, 187, 120],
  [197, 176, 213], [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141],
  [158, 218, 229], [57, 59, 121], [140, 109, 49], [123, 65, 115], [107, 110, 207],
];

export const FEEDBACK_NAMES = ["none", "good", "bad", "removed"];
export const FEEDBACK_VALUES = ["", "good", "bad", "removed"]; // the samples column's values, as filters name them
const FEEDBACK_COLORS = [[150, 150, 150], [46, 160, 67], [214, 39, 40], [40, 40, 40]];
export const FLAG_NAMES = ["ok", "flagged"];
const FLAG_COLORS = [[150, 150, 150], [255, 127, 14]];

/** @param {number} h @param {number} s @param {number} l */
function hslToRgb(h, s, l) {
  const f = (n) => {
    const k = (n + h * 12) % 12;
    const a = s * Math.min(l, 1 - l);
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

export function classColor(c) {
  if (c < CATEGORICAL.length) return CATEGORICAL[c];
  // Golden-ratio hues folded into the hues that are neither red (bad) nor green (good).
  const t = (c * 0.618033988749895) % 1;
  const h = t < 0.28 ? 0.05 + t * (0.2 / 0.28) : 0.45 + (t - 0.28) * (0.48 / 0.72);
  return hslToRgb(h, 0.6, 0.5);
}

/** The feedback colours (good, bad) that no category colour may come close to. */
export const FEEDBACK_RGB = { good: [46, 160, 67], bad: [214, 39, 40] };

// A viridis-like ramp sampled at five stops; round 0 (the real images) stays grey.
const RAMP = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export function ramp(t) {
  const x = Math.max(0, Math.min(1, t)) * (RAMP.length - 1);
  const i = Math.min(RAMP.length - 2, Math.floor(x));
  const f = x - i;
  return RAMP[i].map((v, k) => Math.round(v + (RAMP[i + 1][k] - v) * f));
}

export function roundColor(r, maxRound) {
  if (r === 0) return [150, 150, 150];
  return ramp(maxRound <= 1 ? 1 : (r - 1) / (maxRound - 1));
}

/** Modes computed here from the point attributes; any other mode is a column coloured from `attrs.codes`. */
export const BUILTIN_MODES = ["class", "round", "feedback", "flag"];
const MISSING = [150, 150, 150];
/** The sequential scale's colour bar as a CSS gradient. */
export const RAMP_CSS = `linear-gradient(to right, ${RAMP.map((c) => `rgb(${c.join(",")})`).join(", ")})`;

/**
 * Per-point colours (Uint8Array, RGBA) and legend entries [{name, rgb}] for a colour mode.
 * attrs: {cls, round, feedback, flag, codes?} typed arrays (may be empty), classNames: string[],
 * codeNames: names of attrs.codes' categories (for a column mode).
 * @param {string} mode
 * @param {number} n
 * @param {{cls: ArrayLike<number>, round: ArrayLike<number>, feedback: ArrayLike<number>, flag: ArrayLike<number>, codes?: ArrayLike<number>}} attrs
 * @param {string[]} classNames
 * @param {string[]} [codeNames]
 * @param {{values?: Float32Array, scale?: {min?: number, max?: number}, named?: (name: string) => number[] | null}} [opts]
 *   values + scale: a numeric column on the sequential scale; named: a CSS colour name's RGB (or null)
 * @returns {{colors: Uint8Array, legend: {name: string, rgb: number[], field?: string, values?: string[] | null}[]}}
 */
export function computeColors(mode, n, attrs, classNames, codeNames = [], opts = {}) {
  const out = new Uint8Array(n * 4);
  const legend = [];
  let pick;
  if (mode === "round") {
    let maxRound = 0;
    for (let i = 0; i < attrs.round.length; i++) if (attrs.round[i] > maxRound) maxRound = attrs.round[i];
    pick = (i) => roundColor(attrs.round[i] || 0, maxRound);
    legend.push({ name: "real (round 0)", rgb: roundColor(0, maxRound), field: "round", values: ["0"] });
    for (let r = 1; r <= maxRound && legend.length < 12; r++) legend.push({ name: `round ${r}`, rgb: roundColor(r, maxRound), field: "round", values: [String(r)] });
  } else if (mode === "feedback") {
    pick = (i) => FEEDBACK_COLORS[attrs.feedback[i] || 0] || FEEDBACK_COLORS[0];
    FEEDBACK_NAMES.forEach((name, k) => legend.push({ name, rgb: FEEDBACK_COLORS[k], field: "feedback", values: [FEEDBACK_VALUES[k]] }));
  } else if (mode === "flag") {
    pick = (i) => FLAG_COLORS[attrs.flag[i] ? 1 : 0];
    // "flagged" stands for every flag reason: the widget fills them in from the filter fields.
    FLAG_NAMES.forEach((name, k) => legend.push({ name, rgb: FLAG_COLORS[k], field: "flag", values: k ? null : [""] }));
  } else if (!BUILTIN_MODES.includes(mode) && opts.values && opts.values.length === n && opts.scale && Number.isFinite(opts.scale.min)) {
    // A numeric column: its value on the sequential scale, shown as a colour bar.
    const v = opts.values, lo = Number(opts.scale.min), hi = Number(opts.scale.max), span = hi > lo ? hi - lo : 1;
    pick = (i) => (Number.isFinite(v[i]) ? ramp((v[i] - lo) / span) : MISSING);
    legend.push({ name: mode, rgb: ramp(1), bar: { min: lo, max: hi } });
  } else if (!BUILTIN_MODES.includes(mode) && attrs.codes && attrs.codes.length === n) {
    const codes = attrs.codes;
    // Values that are colour names ("lightblue", "pink") are drawn as themselves.
    const own = codeNames.map((name) => (opts.named && name !== "other" && name !== "(empty)" ? opts.named(name) : null));
    const named = own.filter(Boolean).length >= Math.max(1, codeNames.filter((m) => m !== "other" && m !== "(empty)").length);
    const palette = codeNames.map((_, k) => (named ? own[k] || MISSING : classColor(k)));
    pick = (i) => palette[codes[i] || 0] || MISSING;
    codeNames.forEach((name, k) => legend.push({ name, rgb: palette[k], field: mode, values: name === "other" ? null : [name === "(empty)" ? "" : name] }));
  } else {
    pick = (i) => classColor(attrs.cls[i] || 0);
    classNames.forEach((name, k) => legend.push({ name, rgb: classColor(k), field: "label", values: [name] }));
  }
  for (let i = 0; i < n; i++) {
    const c = pick(i);
    out[4 * i] = c[0];
    out[4 * i + 1] = c[1];
    out[4 * i + 2] = c[2];
    out[4 * i + 3] = 255;
  }
  return { colors: out, legend };
}

/** Relative luminance (WCAG 2) of an sRGB colour given as 0-255 components. */
export function luminance(rgb) {
  const lin = (/** @type {number} */ v) => { const c = v / 255; return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4; };
  return 0.2126 * lin(rgb[0]) + 0.7152 * lin(rgb[1]) + 0.0722 * lin(rgb[2]);
}

/** WCAG contrast ratio of two colours (1 to 21). */
export function contrast(a, b) {
  const la = luminance(a), lb = luminance(b);
  return (Math.max(la, lb) + 0.05) / (Math.min(la, lb) + 0.05);
}

/** [r, g, b] (0-255) from a CSS colour string as getComputedStyle gives it ("rgb(...)" / "rgba(...)" / "#rrggbb"); null if unknown. */
export function parseCssColor(text) {
  const s = String(text || "").trim();
  let m = s.match(/^rgba?\(\s*([\d.]+)[,\s]+([\d.]+)[,\s]+([\d.]+)(?:[,\s/]+([\d.]+%?))?\s*\)$/i);
  if (m) {
    if (m[4] !== undefined && parseFloat(m[4]) === 0) return null; // transparent: not a colour of its own
    return [Math.round(+m[1]), Math.round(+m[2]), Math.round(+m[3])];
  }
  m = s.match(/^#([0-9a-f]{6})$/i);
  if (m) return [0, 2, 4].map((k) => parseInt(m[1].slice(k, k + 2), 16));
  m = s.match(/^#([0-9a-f]{3})$/i);
  if (m) return [0, 1, 2].map((k) => parseInt(m[1][k] + m[1][k], 16));
  return null;
}
