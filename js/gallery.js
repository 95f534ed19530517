// @ts-check
// The gallery of the selection: a grid of the selected images (thumbnails asked for on demand), each with
// its class and strategy and its own Good / Bad / Unmark buttons; a click opens the sample view.
import { button, el, FEEDBACK_TEXT, KIND_NAMES } from "./dom.js";
import { facetValue } from "./filters.js";

const GALLERY_MAX = 120;

/** A grid of the selected images (up to GALLERY_MAX), each with its own Good / Bad / Unmark buttons. */
export function renderGallery(view) {
  const G = view.gallery;
  if (!G) return;
  G.replaceChildren();
  const sel = view.selection;
  if (sel.length === 0) { G.style.display = "none"; return; }
  G.style.display = "block";
  const head = el("div", "dcw-gallery-head", G);
  head.textContent = sel.length > GALLERY_MAX ? `Selection: first ${GALLERY_MAX} of ${sel.length}` : `Selection: ${sel.length}`;
  const grid = el("div", "dcw-gallery-grid", G);
  const names = view.model.get("class_names") || [];
  const shown = sel.slice(0, GALLERY_MAX);
  view.thumbs.want(shown); // those not here yet come in pages; the gallery redraws when they do
  for (const i of shown) {
    const tile = el("div", "dcw-tile", grid);
    tile.dataset.index = String(i);
    const fb = view.attrs.feedback[i] || 0;
    if (fb) tile.dataset.feedback = FEEDBACK_TEXT[fb];
    const c = el("canvas", "", tile);
    c.width = c.height = 64;
    c.title = `${names[view.attrs.cls[i]] ?? ""} (${KIND_NAMES[view.attrs.kind[i]] || ""})`;
    view.thumbs.drawInto(c.getContext("2d"), i, 0, 0, 64, 64);
    c.title += " · click: the image large, with its provenance";
    c.addEventListener("click", () => view.command("show_sample", { index: i }));
    // Class and strategy under the image (text from the model: textContent).
    const strategy = facetValue(view, "strategy", i);
    const cap = el("div", "dcw-tile-caption", tile);
    cap.textContent = [names[view.attrs.cls[i]] ?? "", strategy || (view.attrs.kind[i] === 1 ? "" : KIND_NAMES[view.attrs.kind[i]])].filter(Boolean).join(" · ");
    cap.title = cap.textContent;
    const row = el("div", "dcw-tile-buttons", tile);
    for (const [value, text, tip] of [["good", "✓", "mark good"], ["bad", "✗", "mark bad"], ["clear", "↺", "unmark"]]) {
      const b = button(row, text, tip, () => view.command("gallery_mark", { index: i, value }));
      b.dataset.mark = value;
    }
  }
}