// @ts-check
// Filters as people know them: the legend's entries hide a value when clicked (alt- or double-click
// shows it alone), and a sidebar lists the fields (class, round, strategy, feedback, split, flag,
// content label) with a count per value that follows the selection. Every change is a "filter"
// command: Python's view state (crafter.filter, kept with the project) decides what is hidden.
// Values are model or user text: set with textContent only.
import { asU16, el } from "./dom.js";

const MAX_VALUES = 40; // per field in the sidebar; the rest are summed in one line

/** The values of `field` hidden now. @param {any} view @param {string} field */
export function hiddenValues(view, field) {
  const hide = (view.model.get("filters") || {}).hide || {};
  return new Set(Array.isArray(hide[field]) ? hide[field].map(String) : []);
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
    view.command("filter", already ? { hide: { [field]: [] } } : { only: { [field]: values } });
    return;
  }
  const all = values.every((v) => hidden.has(v));
  for (const v of values) { if (all) hidden.delete(v); else hidden.add(v); }
  view.command("filter", { hide: { [field]: [...hidden].sort() } });
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
    const anyHidden = Object.values((view.model.get("filters") || {}).hide || {}).some((v) => Array.isArray(v) && v.length);
    if (anyHidden) {
      const reset = el("button", "dcw-link", head);
      reset.textContent = "show all";
      reset.title = "show every value of every field again";
      reset.dataset.action = "filter-reset";
      reset.addEventListener("click", () => view.command("filter", { reset: true }));
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
