// @ts-check
// Filters as people know them: the legend's entries hide a value when clicked (alt- or double-click
// shows it alone), and a sidebar lists the fields (class, round, strategy, feedback, split, flag,
// content label) with a count per value that follows the selection. Every change is a "filter"
// command: Python's view state (crafter.filter, kept with the project) decides what is hidden. The
// browser does not wait for it: it works out the new hidden mask from the point attributes it holds
// (predictHidden), draws it at once, and Python's mask, when it comes, costs nothing if it is the same.
// Values are model or user text: set with textContent only.
import { asU16, el, KIND_TEST } from "./dom.js";
import { FEEDBACK_VALUES } from "./colors.js";

const MAX_VALUES = 40; // per field in the sidebar; the rest are summed in one line

/** The hidden values per field: the browser's own while Python has not answered a filter yet. @param {any} view */
function hiddenNow(view) {
  return view.pendingHide || (view.model.get("filters") || {}).hide || {};
}

/** Whether held-out test images and removed images are shown now (the browser's own while Python has not
 *  answered a filter yet). @param {any} view @returns {{show_test: boolean, show_removed: boolean}} */
export function flagsNow(view) {
  const f = view.model.get("filters") || {}, p = view.pendingFlags || {};
  return { show_test: Boolean(p.show_test ?? f.show_test), show_removed: Boolean(p.show_removed ?? f.show_removed) };
}

/** Adds to `mask` the points that `flags` hide, for the flags named in `keys` (test split, removed). */
function flagMask(view, flags, keys, mask) {
  const test = keys.includes("show_test") && !flags.show_test, removed = keys.includes("show_removed") && !flags.show_removed;
  if (!mask || (!test && !removed)) return mask;
  const kind = view.attrs.kind, fb = view.attrs.feedback;
  for (let i = 0; i < view.n; i++) if ((test && kind[i] === KIND_TEST) || (removed && fb[i] === 3)) mask[i] = 1;
  return mask;
}

/** The values of `field` hidden now. @param {any} view @param {string} field */
export function hiddenValues(view, field) {
  const hide = hiddenNow(view);
  return new Set(Array.isArray(hide[field]) ? hide[field].map(String) : []);
}

/**
 * Each point's code for `field` and each code's text (as Python's filters compare it), or a content
 * label's member lists; from the sidebar's fields, else from the point attributes; null when the
 * browser cannot tell.
 * @param {any} view @param {string} field
 * @returns {{codes?: ArrayLike<number>, members?: number[][], names: string[]} | null}
 */
function fieldCodes(view, field) {
  const n = view.n;
  let block = 0;
  for (const f of view.model.get("facets") || []) {
    if (!f || !Array.isArray(f.names)) continue;
    if (Array.isArray(f.members)) {
      if (f.field === field) return { members: f.members, names: f.names.map(String) };
      continue;
    }
    if (f.field === field) {
      const codes = view.facetCodes || asU16(view.model.get("facet_codes"));
      return codes.length >= (block + 1) * n ? { codes: codes.subarray(block * n, (block + 1) * n), names: f.names.map(String) } : null;
    }
    block++;
  }
  const a = view.attrs;
  if (field === "label") return { codes: a.cls, names: (view.model.get("class_names") || []).map(String) };
  if (field === "feedback") return { codes: a.feedback, names: FEEDBACK_VALUES };
  if (field === "round") {
    let max = 0;
    for (let i = 0; i < n; i++) if (a.round[i] > max) max = a.round[i];
    return { codes: a.round, names: Array.from({ length: max + 1 }, (_, r) => String(r)) };
  }
  return null;
}

/** A zeroed mask of n bytes, the k-th of the view's own (a million points: no 1 MB of garbage per click). */
function scratch(view, k) {
  const pool = view.maskPool || (view.maskPool = []);
  if (!pool[k] || pool[k].length !== view.n) pool[k] = new Uint8Array(view.n);
  else pool[k].fill(0);
  return pool[k];
}

/** 1 for the points whose value of some field in `hide` is hidden there (in scratch mask k); null when a
 *  field is unknown here. */
function fieldMask(view, hide, k) {
  const n = view.n, mask = scratch(view, k);
  for (const [field, values] of Object.entries(hide)) {
    if (!Array.isArray(values) || values.length === 0) continue;
    const fc = fieldCodes(view, field);
    if (!fc) return null;
    const gone = new Set(values.map(String));
    if (fc.members) {
      fc.names.forEach((name, j) => { if (gone.has(name)) for (const i of fc.members[j] || []) if (i < n) mask[i] = 1; });
    } else {
      const hit = Uint8Array.from(fc.names, (name) => (gone.has(name) ? 1 : 0));
      const codes = fc.codes;
      for (let i = 0; i < n; i++) if (hit[codes[i]]) mask[i] = 1;
    }
  }
  return mask;
}

/**
 * The hidden mask after the field filters become `hide` and the test / removed switches `flags`, worked
 * out here (one pass per changed field) so the map redraws without a round trip to Python; null when the
 * browser cannot tell (a field it has no codes for). A point keeps its state unless a changed field or
 * switch decides it; a point that one hid and no longer hides shows again if nothing else hides it: the
 * switches and the unchanged fields are known here; when they do not explain Python's mask (Isolate,
 * rounds), such points stay hidden until Python's mask arrives.
 * @param {any} view @param {Record<string, string[]>} hide
 * @param {{show_test: boolean, show_removed: boolean}} [flags]
 * @returns {Uint8Array | null}
 */
export function predictHidden(view, hide, flags = flagsNow(view)) {
  const n = view.n, old = hiddenNow(view), now = view.hidden, oldFlags = flagsNow(view);
  if (!now || now.length !== n) return null;
  const same = (a, b) => JSON.stringify([...(a || [])].map(String).sort()) === JSON.stringify([...(b || [])].map(String).sort());
  const fields = [...new Set([...Object.keys(old), ...Object.keys(hide)])];
  const changed = fields.filter((f) => !same(old[f], hide[f]));
  const pick = (h, keys) => Object.fromEntries(keys.filter((f) => h[f]).map((f) => [f, h[f]]));
  const switches = /** @type {const} */ (["show_test", "show_removed"]);
  const flipped = switches.filter((k) => oldFlags[k] !== flags[k]), kept = switches.filter((k) => oldFlags[k] === flags[k]);
  const before = flagMask(view, oldFlags, flipped, fieldMask(view, pick(old, changed), 0));
  const after = flagMask(view, flags, flipped, fieldMask(view, pick(hide, changed), 1));
  if (!before || !after) return null;
  // What hides a point besides the changed fields and switches, as far as this side knows.
  const rest = flagMask(view, flags, kept, fieldMask(view, pick(hide, fields.filter((k) => !changed.includes(k))), 2));
  const others = (i) => rest !== null && rest[i] === 1;
  let complete = rest !== null && !(view.model.get("filters") || {}).isolated;
  for (let i = 0; i < n && complete; i++) if (!before[i] && (now[i] ? 1 : 0) !== (others(i) ? 1 : 0)) complete = false;
  const out = scratch(view, view.hidden === view.maskPool[3] ? 4 : 3); // not the mask drawn now
  for (let i = 0; i < n; i++) {
    if (after[i]) out[i] = 1;
    else if (!before[i]) out[i] = now[i] ? 1 : 0;
    else out[i] = !complete || others(i) ? 1 : 0;
  }
  return out;
}

/** Every value `field` has (from the sidebar's fields, else the legend's). @param {any} view @param {string} field */
function allValues(view, field) {
  const facet = (view.model.get("facets") || []).find((f) => f && f.field === field);
  if (facet) return facet.names.map(String);
  return (view.legendValues && view.legendValues[field]) || [];
}

/** Point i's value of a sidebar field ("" when unknown). @param {any} view @param {string} field @param {number} i */
export function facetValue(view, field, i) {
  const facets = (view.model.get("facets") || []).filter((f) => f && Array.isArray(f.names) && !Array.isArray(f.members));
  const b = facets.findIndex((f) => f.field === field);
  if (b < 0) return "";
  const codes = view.facetCodes || (view.facetCodes = asU16(view.model.get("facet_codes")));
  const c = codes.length >= (b + 1) * view.n ? codes[b * view.n + i] : -1;
  return c >= 0 ? String(facets[b].names[c] ?? "") : "";
}

/**
 * Hides `values` of `field` (or shows them again when all are hidden); solo shows them alone (or, when
 * they already are, everything again).
 * @param {any} view @param {string} field @param {string[]} values @param {boolean} solo
 */
export function toggleValues(view, field, values, solo) {
  if (!field || !values || values.length === 0) return;
  const hidden = hiddenValues(view, field);
  if (solo) {
    const others = allValues(view, field).filter((v) => !values.includes(v));
    const already = others.length > 0 && others.every((v) => hidden.has(v)) && values.every((v) => !hidden.has(v));
    filterNow(view, { ...hiddenNow(view), [field]: already ? [] : others.sort() }, already ? { hide: { [field]: [] } } : { only: { [field]: values } });
    return;
  }
  const all = values.every((v) => hidden.has(v));
  for (const v of values) { if (all) hidden.delete(v); else hidden.add(v); }
  filterNow(view, { ...hiddenNow(view), [field]: [...hidden].sort() }, { hide: { [field]: [...hidden].sort() } });
}

/** Shows the filter `hide` (and the test / removed switches `flags`) at once when the browser can work
 *  it out, and sends `args` to Python, whose view state stays the one that counts (crafter.filter, view.json). */
function filterNow(view, hide, args, flags = flagsNow(view)) {
  const clean = Object.fromEntries(Object.entries(hide).filter(([, v]) => Array.isArray(v) && v.length));
  const mask = predictHidden(view, clean, flags);
  if (mask) view.showFilter(clean, mask, flags);
  view.command("filter", args);
}

/** The toolbar's "test" / "removed" switch: shown or hidden at once, like a legend click.
 *  @param {any} view @param {"show_test" | "show_removed"} key @param {boolean} on */
export function toggleFlag(view, key, on) {
  filterNow(view, hiddenNow(view), { [key]: on }, { ...flagsNow(view), [key]: on });
}

/**
 * The sidebar of fields with counts.
 * @param {any} view @param {HTMLElement} parent
 */
export function filterPanel(view, parent) {
  const box = el("div", "dcw-panel dcw-filters", parent);
  box.dataset.role = "filters";
  const open = new Set(["label"]); // which fields are unfolded (kept across redraws)
  let codes = new Uint16Array(0);
  const loadCodes = () => { codes = asU16(view.model.get("facet_codes")); view.facetCodes = codes; };

  /** counts[k] for the points of value k: shown (not hidden), selected, total. */
  const countsOf = (facet, block) => {
    const k = facet.names.length, n = view.n;
    const shown = new Uint32Array(k), selected = new Uint32Array(k), total = new Uint32Array(k);
    const hid = view.hidden || new Uint8Array(n);
    if (Array.isArray(facet.members)) {
      const sel = new Uint8Array(n);
      for (const i of view.selection) sel[i] = 1;
      facet.members.forEach((m, j) => {
        for (const i of m) {
          if (i >= n) continue;
          total[j]++;
          if (!hid[i]) shown[j]++;
          if (sel[i]) selected[j]++;
        }
      });
    } else if (block >= 0 && codes.length >= (block + 1) * n) {
      const off = block * n;
      for (let i = 0; i < n; i++) { const c = codes[off + i]; total[c]++; if (!hid[i]) shown[c]++; }
      for (const i of view.selection) selected[codes[off + i]]++;
    }
    return { shown, selected, total };
  };

  const sync = () => {
    const facets = (view.model.get("facets") || []).filter((f) => f && Array.isArray(f.names));
    box.replaceChildren();
    box.style.display = facets.length ? "" : "none";
    if (!facets.length) return;
    const head = el("div", "dcw-panel-title dcw-row", box);
    el("span", "", head).textContent = "Filters";
    const anyHidden = Object.values(hiddenNow(view)).some((v) => Array.isArray(v) && v.length);
    if (anyHidden) {
      const reset = el("button", "dcw-link", head);
      reset.textContent = "show all";
      reset.title = "show every value of every field again";
      reset.dataset.action = "filter-reset";
      reset.addEventListener("click", () => filterNow(view, {}, { reset: true }));
    }
    const hint = el("small", "dcw-hint", box);
    hint.textContent = view.selection.length ? "shown (selected)  ·  click hides, alt-click shows alone" : "click hides, alt-click shows alone";
    let block = 0;
    for (const facet of facets) {
      const b = Array.isArray(facet.members) ? -1 : block++;
      if (facet.names.length < 2 && !hiddenValues(view, facet.field).size) continue; // one value: nothing to filter
      const { shown, selected, total } = countsOf(facet, b);
      const hidden = hiddenValues(view, facet.field);
      const det = el("details", "dcw-facet", box);
      det.dataset.field = facet.field;
      det.open = open.has(facet.field) || hidden.size > 0;
      det.addEventListener("toggle", () => { if (det.open) open.add(facet.field); else open.delete(facet.field); });
      const sum = el("summary", "", det);
      sum.textContent = `${facet.title || facet.field}${hidden.size ? ` (${hidden.size} hidden)` : ""}`;
      const order = facet.names.map((_, k) => k);
      if (Array.isArray(facet.members)) order.sort((a, c) => total[c] - total[a]);
      for (const k of order.slice(0, MAX_VALUES)) {
        const name = String(facet.names[k]);
        const row = el("label", "dcw-value", det);
        row.dataset.value = name;
        const cb = el("input", "", row);
        cb.type = "checkbox";
        cb.checked = !hidden.has(name);
        el("span", "dcw-value-name", row).textContent = name === "" ? "(none)" : name;
        const count = el("span", "dcw-value-count", row);
        count.textContent = hidden.has(name) ? String(total[k]) : view.selection.length ? `${shown[k]} (${selected[k]})` : String(shown[k]);
        row.classList.toggle("dcw-off", hidden.has(name));
        cb.addEventListener("click", (ev) => {
          ev.preventDefault(); // the box follows Python's view state, not the click
          toggleValues(view, facet.field, [name], ev.altKey);
        });
        row.addEventListener("dblclick", (ev) => { ev.preventDefault(); toggleValues(view, facet.field, [name], true); });
      }
      if (order.length > MAX_VALUES) el("small", "dcw-hint", det).textContent = `+${order.length - MAX_VALUES} more values`;
    }
  };
  loadCodes();
  sync();
  return { sync, load: () => { loadCodes(); sync(); } };
}
