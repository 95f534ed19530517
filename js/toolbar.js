// @ts-check
// The two toolbar rows above the map: how to select (pan, lasso, box) and what to do with the
// selection (feedback, undo, evolve); then search, colour, filters, isolate, similar, zoom.
import { button, el } from "./dom.js";
import { flagsNow, toggleFlag } from "./filters.js";

/**
 * Builds the rows into `parent` and keeps their elements on `view` (modeButtons, actionButtons,
 * searchInput, searchMode, colorSelect, filterBoxes, isolateButton, neighborsButton).
 * @param {any} view the ProjectionView @param {HTMLElement} parent
 */
export function buildToolbar(view, parent) {
  // Row 1: how to select, what to do with the selection.
  view.toolbarEl = el("div", "dcw-toolbars", parent);
  parent = view.toolbarEl;
  const bar = el("div", "dcw-toolbar", parent);
  view.modeButtons = {};
  for (const [mode, text, tip] of [
    ["pan", "Pan", "drag pans; shift-drag lassoes (adds), alt/ctrl-drag subtracts  [p]"],
    ["lasso", "Lasso", "drag draws a lasso; shift adds, alt/ctrl subtracts  [l]"],
    ["box", "Box", "drag draws a box; shift adds, alt/ctrl subtracts  [x]"],
  ]) {
    const b = button(bar, text, tip, () => view.setMode(mode));
    b.dataset.mode = mode;
    view.modeButtons[mode] = b;
  }
  el("span", "dcw-sep", bar);
  view.actionButtons = {};
  for (const [name, text, cls, tip] of [
    ["bad", "Bad", "dcw-bad", "mark the selected images as bad  [b]"],
    ["good", "Good", "dcw-good", "mark the selected images as good  [g]"],
    ["remove", "Remove", "", "remove the selected images from the dataset (hidden from the map; Undo restores)  [Delete]"],
    ["unmark", "Unmark", "", "clear the marks of the selected images  [u]"],
    ["undo", "↶ Undo", "", "undo the last feedback action  [ctrl+z]"],
    ["redo", "↷", "", "redo the last undone feedback action  [ctrl+shift+z]"],
    ["evolve", "Evolve", "", "evolve the prompts of the selected images' classes from the feedback"],
    ["unwanted_label", "Unwanted", "", "mark the clicked content label as unwanted on the selected generated images"],
  ]) {
    const b = button(bar, text, tip, () => view.command(name), cls);
    b.dataset.action = name;
    view.actionButtons[name] = b;
  }

  // Row 2: find, colour, filter, navigate.
  const bar2 = el("div", "dcw-toolbar", parent);
  view.searchInput = el("input", "dcw-search", bar2);
  view.searchInput.type = "search";
  view.searchInput.placeholder = "search  [/]";
  view.searchInput.title = "words in caption, prompt, label or id (text), or a description (clip); Enter searches";
  view.searchInput.dataset.role = "search";
  view.searchMode = el("select", "", bar2);
  view.searchMode.dataset.role = "search-mode";
  view.searchMode.title = "text: words in caption, prompt, label or id; clip: images nearest to the text by CLIP";
  for (const v of ["text", "clip"]) { const o = el("option", "", view.searchMode); o.value = v; o.textContent = v; }
  view.searchInput.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); view.command("search", { query: view.searchInput.value, mode: view.searchMode.value }); }
    ev.stopPropagation();
  });
  el("span", "dcw-sep", bar2);
  view.colorSelect = el("select", "", bar2);
  view.colorSelect.title = "colour by";
  view.colorSelect.dataset.role = "color-by";
  view.colorSelect.addEventListener("change", () => {
    view.model.set("color_by", view.colorSelect.value);
    view.model.save_changes();
  });
  el("span", "dcw-sep", bar2);
  view.filterBoxes = {};
  for (const [key, text, tip] of [
    ["show_test", "test", "show the held-out test images (diamonds; never marked)"],
    ["show_removed", "removed", "show removed images"],
  ]) {
    const lab = el("label", "dcw-check", bar2);
    const box = el("input", "", lab);
    box.type = "checkbox";
    box.dataset.filter = key;
    lab.title = tip;
    lab.appendChild(document.createTextNode(" " + text));
    box.addEventListener("change", () => toggleFlag(view, key, box.checked));
    view.filterBoxes[key] = box;
  }
  view.isolateButton = button(bar2, "Isolate", "show only the selected images (again: show all)  [i]", () => isolate(view));
  view.isolateButton.dataset.role = "isolate";
  view.neighborsButton = button(bar2, "Similar", "select the nearest images (CLIP neighbours) to the selected one  [n]", () => view.command("neighbors"));
  view.neighborsButton.dataset.action = "neighbors";
  el("span", "dcw-sep", bar2);
  button(bar2, "Zoom", "zoom to the selection  [z]", () => view.zoomToSelection()).dataset.role = "zoom";
  button(bar2, "Fit", "fit everything in view  [f]", () => view.resetView()).dataset.role = "reset";
  button(bar2, "Clear", "clear the selection  [Escape]", () => { view.activeLabel = null; view.commitSelection(new Uint32Array(0)); }).dataset.role = "clear";
  el("span", "dcw-sep", bar2);
  view.fullscreenButton = button(bar2, "⛶", "full screen: the widget fills the window (Escape leaves; widget.fullscreen in Python)", () => view.setFullscreen(!view.model.get("fullscreen")));
  view.fullscreenButton.dataset.role = "fullscreen";
}

/** Isolate the selection, or show everything again when already isolated (or nothing is selected). @param {any} view */
export function isolate(view) {
  const isolated = Boolean((view.model.get("filters") || {}).isolated);
  view.command("isolate", isolated || view.selection.length === 0 ? { clear: true } : {});
}

/** Buttons that need a selection (and Unwanted, a clicked label) are enabled only then. @param {any} view */
export function syncSelectionButtons(view) {
  const none = view.selection.length === 0;
  if (none) view.keepFocus(view.toolbarEl); // Remove / Bad disable themselves: keep the focus (no page jump)
  for (const name of ["bad", "good", "remove", "unmark", "evolve"]) view.actionButtons[name].disabled = none;
  view.neighborsButton.disabled = none;
  view.actionButtons.unwanted_label.disabled = !view.activeLabel || none;
}

/** @param {any} view */
export function syncFilters(view) {
  const f = view.model.get("filters") || {}, flags = flagsNow(view);
  for (const [k, box] of Object.entries(view.filterBoxes)) box.checked = Boolean(flags[k]);
  view.isolateButton.textContent = f.isolated ? "Show all" : "Isolate";
  view.isolateButton.classList.toggle("dcw-active", Boolean(f.isolated));
}

/** @param {any} view */
export function syncHistory(view) {
  const h = view.model.get("history") || {};
  view.actionButtons.undo.disabled = !(h.undo > 0);
  view.actionButtons.redo.disabled = !(h.redo > 0);
}

/** The colour menu follows `color_options`; its value follows `color_by`. @param {any} view @param {string[]} options @param {string} mode */
export function syncColorMenu(view, options, mode) {
  const sel = view.colorSelect;
  if (mode && !options.includes(mode)) options = [...options, mode]; // a column set from Python (crafter.color_by)
  if (sel.options.length !== options.length || [...sel.options].some((o, k) => o.value !== options[k])) {
    sel.replaceChildren();
    for (const v of options) { const o = el("option", "", sel); o.value = v; o.textContent = v; }
  }
  sel.value = mode;
}
