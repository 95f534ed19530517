// @ts-check
// Pointer and keyboard: pan, wheel zoom, lasso and box selection (through the grid index in
// spatial.js), clicks on points and labels, hover with lazily fetched details, and the shortcuts.
import { combineSelection } from "./spatial.js";
import { hideTooltip, placeTooltip, showTooltip } from "./overlay.js";
import { isolate } from "./toolbar.js";

export function bindPointer(view) {
  const stage = view.stage;
  const opFor = (ev) => (ev.altKey || ev.ctrlKey || ev.metaKey ? "subtract" : ev.shiftKey ? "add" : "replace");
  const down = (ev) => {
    if (ev.button !== 0) return;
    const [sx, sy] = localXY(view, ev);
    const modified = ev.shiftKey || ev.altKey || ev.ctrlKey || ev.metaKey;
    let kind = view.mode;
    if (kind === "pan" && modified) kind = "lasso";
    view.drag = { kind, op: opFor(ev), start: [sx, sy], last: [sx, sy], moved: false, view: { ...view.view } };
    if (kind !== "pan") view.lasso = { kind, points: [[sx, sy]] };
    else stage.style.cursor = "grabbing";
    stage.setPointerCapture?.(ev.pointerId);
    view.root.focus({ preventScroll: true }); // keyboard shortcuts go to this map
    hideTooltip(view);
    ev.preventDefault();
  };
  const move = (ev) => {
    const [sx, sy] = localXY(view, ev);
    const d = view.drag;
    if (!d) { scheduleHover(view, sx, sy); return; }
    if (Math.hypot(sx - d.start[0], sy - d.start[1]) > 3) d.moved = true;
    if (d.kind === "pan") {
      view.view = { k: d.view.k, tx: d.view.tx + sx - d.start[0], ty: d.view.ty + sy - d.start[1] };
      view.userMoved = true;
    } else if (d.kind === "box") {
      view.lasso.points = [d.start, [sx, sy]];
    } else {
      const last = view.lasso.points[view.lasso.points.length - 1];
      if (Math.hypot(sx - last[0], sy - last[1]) >= 1) view.lasso.points.push([sx, sy]);
    }
    d.last = [sx, sy];
    view.requestDraw();
  };
  const up = (ev) => {
    const d = view.drag;
    if (!d) return;
    view.drag = null;
    stage.style.cursor = view.mode === "pan" ? "grab" : "crosshair";
    const [sx, sy] = localXY(view, ev);
    const lasso = view.lasso;
    view.lasso = null;
    if (!d.moved) {
      click(view, sx, sy, d.op);
    } else if (d.kind === "lasso" && lasso.points.length >= 3) {
      selectPolygon(view, lasso.points, d.op);
    } else if (d.kind === "box") {
      const [a, b] = [view.toData(...d.start), view.toData(sx, sy)];
      view.commitSelection(combineSelection(view.n, view.selection, view.selectableOnly(view.index.box(a[0], a[1], b[0], b[1])), d.op));
    }
    view.requestDraw();
  };
  // The wheel zooms the map only when it has focus (click it first) or with Ctrl / Cmd held
  // (wheel_zoom "focus"), only with the modifier ("modifier"), or always ("always"); else the page scrolls.
  const wheel = (ev) => {
    const how = view.model.get("wheel_zoom") || "focus";
    const mod = ev.ctrlKey || ev.metaKey;
    const focused = view.root.contains(document.activeElement);
    if (!(how === "always" || mod || (how === "focus" && focused))) {
      view.showHint(how === "focus" ? "click the map (or hold Ctrl) to zoom with the wheel" : "hold Ctrl to zoom with the wheel");
      return;
    }
    ev.preventDefault();
    const [sx, sy] = localXY(view, ev);
    zoomBy(view, Math.exp(-ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.0015)), sx, sy);
  };
  const leave = () => { if (!view.drag) hideTooltip(view); };
  // Escape abandons a lasso or box being drawn.
  const key = (ev) => {
    if (ev.key === "Escape" && view.drag) { view.drag = null; view.lasso = null; view.requestDraw(); }
  };
  window.addEventListener("keydown", key);
  view.disposers.push(() => window.removeEventListener("keydown", key));
  // Double-click: on an image, its sample view; elsewhere, fit everything in view.
  const dbl = (ev) => {
    const [sx, sy] = localXY(view, ev);
    const i = pointAt(view, sx, sy);
    if (i >= 0) { view.command("show_sample", { index: i }); return; }
    view.userMoved = false; view.fitView(); view.requestDraw();
  };
  stage.addEventListener("pointerdown", down);
  stage.addEventListener("pointermove", move);
  stage.addEventListener("pointerup", up);
  stage.addEventListener("pointercancel", up);
  stage.addEventListener("wheel", wheel, { passive: false });
  stage.addEventListener("pointerleave", leave);
  stage.addEventListener("dblclick", dbl);
  view.disposers.push(() => {
    stage.removeEventListener("pointerdown", down);
    stage.removeEventListener("pointermove", move);
    stage.removeEventListener("pointerup", up);
    stage.removeEventListener("pointercancel", up);
    stage.removeEventListener("wheel", wheel);
    stage.removeEventListener("pointerleave", leave);
    stage.removeEventListener("dblclick", dbl);
  });
}

export function bindKeys(view) {
  const root = view.root;
  const key = (ev) => {
    const tag = (ev.target && ev.target.tagName) || "";
    if (/^(INPUT|SELECT|TEXTAREA)$/.test(tag)) return;
    const mod = ev.ctrlKey || ev.metaKey;
    const k = ev.key;
    let done = true;
    if (k === "Escape") {
      if (view.drag) { view.drag = null; view.lasso = null; view.requestDraw(); }
      else if (view.sample.isOpen()) view.sample.hide();
      else if (view.model.get("fullscreen")) view.setFullscreen(false);
      else { view.activeLabel = null; view.commitSelection(new Uint32Array(0)); }
    } else if (mod && (k === "z" || k === "Z")) view.command(ev.shiftKey ? "redo" : "undo");
    else if (mod && k === "y") view.command("redo");
    else if (mod) done = false;
    else if (k === "b") view.command("bad");
    else if (k === "g") view.command("good");
    else if (k === "Delete" || k === "Backspace") view.command("remove");
    else if (k === "u") view.command("unmark");
    else if (k === "z") view.zoomToSelection();
    else if (k === "f" || k === "0") { view.userMoved = false; view.fitView(); view.requestDraw(); }
    else if (k === "l") view.setMode("lasso");
    else if (k === "p") view.setMode("pan");
    else if (k === "x") view.setMode("box");
    else if (k === "i") isolate(view);
    else if (k === "n") view.command("neighbors");
    else if (k === "/") view.searchInput.focus();
    else done = false;
    if (done) { ev.preventDefault(); ev.stopPropagation(); }
  };
  root.addEventListener("keydown", key);
  view.disposers.push(() => root.removeEventListener("keydown", key));
}

/** Lasso in screen px -> data polygon -> grid-index query; records its time for the benchmark. */
export function selectPolygon(view, points, op) {
  const t = performance.now();
  const poly = new Float64Array(points.length * 2);
  points.forEach(([sx, sy], j) => {
    const [x, y] = view.toData(sx, sy);
    poly[2 * j] = x;
    poly[2 * j + 1] = y;
  });
  const hits = view.selectableOnly(view.index.lasso(poly));
  const sel = combineSelection(view.n, view.selection, hits, op);
  view.timings.lassoMs = performance.now() - t;
  view.lastPolygon = points.map((p) => [p[0], p[1]]);
  view.commitSelection(sel);
  return sel;
}

export function click(view, sx, sy, op) {
  const label = labelAt(view, sx, sy);
  if (label) {
    view.activeLabel = label;
    view.commitSelection(combineSelection(view.n, view.selection, label.members ? view.selectableOnly(label.members) : [], op));
    view.applySelectionToState();
    return;
  }
  const i = pointAt(view, sx, sy);
  if (i >= 0 && !view.selectable(i)) {
    view.statusEl.textContent = "a held-out test image: shown for reference, never selected or marked";
  } else if (i >= 0) {
    const isSel = view.state[4 * i + 1] === 1;
    view.commitSelection(combineSelection(view.n, view.selection, [i], op === "add" && isSel ? "subtract" : op));
  } else if (op === "replace") {
    view.activeLabel = null;
    view.commitSelection(new Uint32Array(0));
  }
}

export function scheduleHover(view, sx, sy) {
  view.pendingHover = [sx, sy];
  if (view.hoverRaf) return;
  view.hoverRaf = requestAnimationFrame(() => {
    view.hoverRaf = 0;
    const [hx, hy] = view.pendingHover;
    view.stage.style.cursor = labelAt(view, hx, hy) ? "pointer" : view.mode === "pan" ? "grab" : "crosshair";
    const i = pointAt(view, hx, hy);
    if (i !== view.hover) {
      view.hover = i;
      clearTimeout(view.detailTimer);
      if (i < 0) { hideTooltip(view); return; }
      showTooltip(view, i);
      if (!view.details.has(i)) {
        view.detailTimer = setTimeout(() => {
          if (view.hover === i && !view.details.has(i)) view.model.send({ type: "details", index: i });
        }, 120);
      }
    }
    view.lastHoverXY = [hx, hy];
    if (i >= 0) placeTooltip(view, hx, hy);
  });
}

/** One step of a zoom gesture around (sx, sy); frames during the gesture may show the last frame
 *  scaled (large maps on software WebGL), and a sharp frame follows 160 ms after the last step. */
export function zoomBy(view, f, sx, sy) {
  const k = Math.min(1e9, Math.max(1e-9, view.view.k * f));
  const r = k / view.view.k;
  view.view = { k, tx: sx - (sx - view.view.tx) * r, ty: sy - (sy - view.view.ty) * r };
  view.userMoved = true;
  hideTooltip(view);
  view.zooming = true;
  clearTimeout(view.zoomTimer);
  view.zoomTimer = setTimeout(() => { view.zooming = false; view.requestDraw(); }, 160);
  view.requestDraw();
}

export function labelAt(view, sx, sy) {
  for (let j = view.placedLabels.length - 1; j >= 0; j--) {
    const { box, label } = view.placedLabels[j];
    if (sx >= box[0] && sx <= box[2] && sy >= box[1] && sy <= box[3]) return label;
  }
  return null;
}

export function pointAt(view, sx, sy) {
  if (!view.index || view.n === 0) return -1;
  const { size } = view.markSize();
  const r = Math.max(size / 2, 5) / view.view.k;
  const [x, y] = view.toData(sx, sy);
  return view.index.nearest(x, y, r, (i) => view.hidden[i] === 1);
}

export function localXY(view, ev) {
  const r = view.glCanvas.getBoundingClientRect(); // inside the stage's border
  return [ev.clientX - r.left, ev.clientY - r.top];
}