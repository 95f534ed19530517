// @ts-check
// The sample view: one image large with its provenance (caption, prompt, seed, round, parent, feedback),
// Good / Bad, Regenerate (the image made again from its prompt and seed, shown beside it) and Zoom.
// Opened from a gallery tile, a double-click on a point, or widget.show_sample(id) in Python.
// Every field is model or user text: textContent only.
import { bytesOf, button, el } from "./dom.js";

/** @param {any} view the ProjectionView @param {HTMLElement} parent */
export function samplePanel(view, parent) {
  const { model } = view;
  const box = el("div", "dcw-sample", parent);
  box.dataset.role = "sample";
  // The map's pointer and wheel handlers stay out of the panel.
  for (const type of ["pointerdown", "pointermove", "pointerup", "wheel", "dblclick"]) box.addEventListener(type, (ev) => ev.stopPropagation());
  const head = el("div", "dcw-sample-head", box);
  const title = el("span", "dcw-sample-title", head);
  const close = button(head, "✕", "close the sample view  [Escape]", () => hide());
  close.dataset.action = "sample-close";
  const body = el("div", "dcw-sample-body", box);
  const figures = el("div", "dcw-sample-figures", body);
  const stored = el("figure", "", figures);
  const img = el("img", "", stored);
  img.alt = "the stored image";
  img.dataset.role = "sample-image";
  el("figcaption", "", stored).textContent = "stored";
  const again = el("figure", "", figures);
  const img2 = el("img", "", again);
  img2.alt = "the image generated again";
  img2.dataset.role = "sample-regenerated";
  el("figcaption", "", again).textContent = "regenerated from its prompt and seed";
  const side = el("div", "dcw-sample-side", body);
  const fields = el("dl", "", side);
  const row = el("div", "dcw-row dcw-sample-actions", side);
  const index = () => Number((model.get("sample") || {}).index);
  const act = (name, text, tip, fn, cls = "") => { const b = button(row, text, tip, fn, cls); b.dataset.action = name; return b; };
  act("sample-good", "Good", "mark this image good", () => view.command("gallery_mark", { index: index(), value: "good" }), "dcw-good");
  act("sample-bad", "Bad", "mark this image bad", () => view.command("gallery_mark", { index: index(), value: "bad" }), "dcw-bad");
  act("sample-unmark", "Unmark", "clear this image's mark", () => view.command("gallery_mark", { index: index(), value: "clear" }));
  const regen = act("sample-regenerate", "Regenerate", "make this image again from its stored prompt and seed", () => view.command("regenerate", { index: index() }));
  act("sample-zoom", "Zoom to it", "close this view and zoom the map to the image", () => { const i = index(); hide(); view.zoomTo([i], 6); });
  const urls = { img: "", img2: "" };
  const setImage = (key, target, data) => {
    if (urls[key]) URL.revokeObjectURL(urls[key]);
    const bytes = bytesOf(data);
    urls[key] = bytes.length ? URL.createObjectURL(new Blob([bytes], { type: "image/png" })) : "";
    if (urls[key]) target.src = urls[key]; else target.removeAttribute("src");
    return bytes.length > 0;
  };
  const hide = () => {
    model.set("sample", {});
    model.save_changes();
  };
  const sync = () => {
    const s = model.get("sample") || {};
    const open = Number.isInteger(s.index) && s.index >= 0 && s.index < view.n;
    box.style.display = open ? "flex" : "none";
    if (!open) return;
    title.textContent = String(s.id ?? s.index);
    setImage("img", img, model.get("sample_image"));
    again.style.display = setImage("img2", img2, model.get("sample_regenerated")) ? "" : "none";
    fields.replaceChildren();
    for (const f of Array.isArray(s.fields) ? s.fields : []) {
      if (!Array.isArray(f) || f.length < 2) continue;
      el("dt", "", fields).textContent = String(f[0]);
      el("dd", "", fields).textContent = String(f[1]);
    }
    regen.disabled = view.attrs.kind[s.index] !== 1; // only generated images have a prompt and seed
    const fb = ["", "good", "bad", "removed"][view.attrs.feedback[s.index]] || "";
    box.dataset.feedback = fb;
  };
  sync();
  return { box, sync, hide, isOpen: () => box.style.display !== "none", dispose: () => Object.values(urls).forEach((u) => u && URL.revokeObjectURL(u)) };
}
