// @ts-check
// Small DOM and buffer helpers shared by the widget's modules.

/** Copies a synced binary trait (DataView / ArrayBuffer / typed array / null) into a fresh, aligned Uint8Array. */
export function bytesOf(v) {
  if (v == null) return new Uint8Array(0);
  if (v instanceof ArrayBuffer) return new Uint8Array(v.slice(0));
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer.slice(v.byteOffset, v.byteOffset + v.byteLength));
  return new Uint8Array(0);
}
export const asF32 = (v) => { const b = bytesOf(v); return new Float32Array(b.buffer, 0, b.byteLength >> 2); };
export const asU16 = (v) => { const b = bytesOf(v); return new Uint16Array(b.buffer, 0, b.byteLength >> 1); };
export const asU32 = (v) => { const b = bytesOf(v); return new Uint32Array(b.buffer, 0, b.byteLength >> 2); };

/**
 * @param {string} tag
 * @param {string} [cls]
 * @param {HTMLElement} [parent]
 * @returns {any}
 */
export function el(tag, cls, parent) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (parent) parent.appendChild(e);
  return e;
}

/**
 * A button with its text (never HTML) and tooltip.
 * @param {HTMLElement} parent @param {string} text @param {string} tip @param {(ev: Event) => void} onClick @param {string} [cls]
 * @returns {HTMLButtonElement}
 */
export function button(parent, text, tip, onClick, cls = "") {
  const b = el("button", cls, parent);
  b.textContent = text;
  b.title = tip;
  b.addEventListener("click", onClick);
  return b;
}

/** @param {ArrayLike<number>} a @param {ArrayLike<number>} b */
export function sameU32(a, b) {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** Whether two typed arrays hold the same values. */
export const sameBytes = sameU32;

export const KIND_NAMES = ["real", "generated", "held-out test"];
export const FEEDBACK_TEXT = ["", "good", "bad", "removed"];
export const KIND_TEST = 2;
