"""The notebook front end: an anywidget projection view plus ipywidgets controls around it.

`CrafterWidget` only shows data and reports what the person did; it never touches models or the
sample store. The controller (`DataCrafter`) fills its traits (coordinates, per-point attributes,
a thumbnail atlas, content labels, prompts, progress) and registers callbacks for the buttons
(`on_action`) and for hover details (`on_details`). Large data moves as binary buffers: float32
coordinates, small integer attribute arrays, a uint32 selection and one PNG sprite atlas.
"""
from __future__ import annotations

import io
import logging
import math
import pathlib
from typing import Any, Callable, Iterable, Mapping, Sequence

import anywidget
import numpy as np
import pandas as pd
import traitlets as t
from PIL import Image, ImageOps

__all__ = [
    "ACTIONS",
    "COLOR_MODES",
    "CrafterWidget",
    "build_atlas",
    "build_layout",
    "points_from_frame",
    "selection_from_bytes",
    "selection_to_bytes",
]

log = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).parent.parent / "static"
COLOR_MODES = ("class", "round", "feedback", "flag")
FEEDBACK_CODES = {"": 0, "good": 1, "bad": 2, "removed": 3}
KIND_CODES = {"real": 0, "generated": 1}
#: Action names the front end (and `build_layout`'s controls) can send to the controller.
ACTIONS = (
    "bad", "good", "remove", "evolve", "unwanted_label",
    "generate", "cancel", "prompt_accept", "prompt_edit", "prompt_revert",
)
MAX_ATLAS_SIDE = 8192  # WebGL texture limit the projector convention assumes
PNG_ATLAS_MAX = 10_000  # above this many thumbnails, format="auto" sends the atlas as JPEG

ActionCallback = Callable[[str, dict], Any]
DetailsCallback = Callable[[int], Mapping[str, Any]]


def _bytes_from_json(value: Any, _widget: Any) -> bytes:
    """Binary traits arrive from the browser as memoryviews; store them as bytes."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return memoryview(value).tobytes()


_BYTES = {"from_json": _bytes_from_json}


def _binary() -> t.Bytes:
    return t.Bytes(b"").tag(sync=True, **_BYTES)


# --------------------------------------------------------------------------- helpers
def selection_to_bytes(indices: Iterable[int] | np.ndarray, n: int | None = None) -> bytes:
    """Sorted, unique uint32 bytes of point indices; raises if an index is out of range."""
    arr = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices)
    if arr.size == 0:
        return b""
    if arr.dtype.kind not in "iu":
        if arr.dtype.kind == "f" and np.all(np.mod(arr, 1) == 0):
            arr = arr.astype(np.int64)
        else:
            raise TypeError(f"selection must be integer point indices, got dtype {arr.dtype}")
    arr = np.unique(arr.astype(np.int64).ravel())
    if arr[0] < 0 or (n is not None and arr[-1] >= n):
        raise IndexError(f"selection index out of range 0..{(n or 0) - 1}: {arr[0] if arr[0] < 0 else arr[-1]}")
    return arr.astype("<u4").tobytes()


def selection_from_bytes(data: bytes | memoryview | None) -> np.ndarray:
    """uint32 array of point indices from the synced selection buffer."""
    if not data:
        return np.zeros(0, dtype=np.uint32)
    return np.frombuffer(bytes(data), dtype="<u4").astype(np.uint32)


def _thumbnail(img: Image.Image | np.ndarray, size: int) -> np.ndarray:
    if isinstance(img, np.ndarray):
        img = Image.fromarray(img.astype(np.uint8))
    if img.mode != "RGB":
        img = img.convert("RGB")
    if img.size != (size, size):
        img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def build_atlas(
    images: Sequence[Image.Image] | np.ndarray,
    size: int = 32,
    max_side: int = MAX_ATLAS_SIDE,
    format: str = "auto",
) -> tuple[bytes, dict]:
    """One PNG sprite atlas of square thumbnails, row-major (image i at col i % cols, row i // cols).

    The browser uploads it as a single WebGL texture (as TensorBoard's projector does), so its side
    must stay within `max_side`; the tile size shrinks when `size` would not fit. Returns the PNG
    bytes and the grid info the front end needs: cols, rows, tile, count, width, height.
    `images` is a list of PIL images (any mode or size) or a uint8 array (n, size, size, 3).
    format: "png" (lossless), "jpeg" (several times smaller for photos: 50,000 noisy 32 px
    thumbnails are ~120 MB as PNG, ~22 MB as JPEG, and encode 20x faster) or "auto" (PNG up to
    PNG_ATLAS_MAX images, JPEG above).
    """
    if format not in ("png", "jpeg", "auto"):
        raise ValueError(f"atlas format must be 'png', 'jpeg' or 'auto', got {format!r}")
    n = len(images)
    if format == "auto":
        format = "png" if n <= PNG_ATLAS_MAX else "jpeg"
    if n == 0:
        return b"", {"cols": 0, "rows": 0, "tile": int(size), "count": 0, "width": 0, "height": 0, "format": format}
    if size < 1:
        raise ValueError(f"thumbnail size must be positive, got {size}")
    cols = math.ceil(math.sqrt(n))
    tile = min(int(size), max_side // cols)
    if tile < 4:
        raise ValueError(
            f"{n} thumbnails do not fit a {max_side}px atlas even at 4px; show fewer images or raise max_side"
        )
    rows = math.ceil(n / cols)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.shape[1:] == (tile, tile, 3):
        stack = images.astype(np.uint8, copy=False)
    else:
        stack = np.stack([_thumbnail(im, tile) for im in images])
    grid = np.zeros((rows * cols, tile, tile, 3), dtype=np.uint8)
    grid[:n] = stack
    sheet = grid.reshape(rows, cols, tile, tile, 3).transpose(0, 2, 1, 3, 4).reshape(rows * tile, cols * tile, 3)
    buf = io.BytesIO()
    if format == "png":
        Image.fromarray(sheet).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(sheet).save(buf, format="JPEG", quality=90)
    info = {"cols": cols, "rows": rows, "tile": tile, "count": n, "width": cols * tile, "height": rows * tile,
            "format": format}
    return buf.getvalue(), info


def _codes(values: pd.Series, mapping: Mapping[str, int], what: str) -> np.ndarray:
    filled = values.fillna("").astype(str)
    unknown = sorted(set(filled.unique()) - set(mapping))
    if unknown:
        raise ValueError(f"unknown {what} value(s) {unknown[:5]}; expected one of {sorted(mapping)}")
    return filled.map(mapping).to_numpy(dtype=np.uint8)


def points_from_frame(frame: pd.DataFrame, class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Binary point arrays for `CrafterWidget` from a frame with one row per image.

    Needs columns x, y; uses label (class name), source ("real"/"generated"), round,
    feedback (""/"good"/"bad"/"removed") and flag ("" or a reason) when present. Row i is point i.
    """
    missing = [c for c in ("x", "y") if c not in frame.columns]
    if missing:
        raise KeyError(f"points_from_frame needs columns {missing}; the projection gives x and y per image")
    n = len(frame)
    xy = frame[["x", "y"]].to_numpy(dtype=np.float32)
    if not np.all(np.isfinite(xy)):
        raise ValueError("projection coordinates contain NaN or infinity")
    if "label" in frame.columns:
        labels = frame["label"].astype(str)
        names = list(class_names) if class_names is not None else sorted(labels.unique())
        lookup = {c: k for k, c in enumerate(names)}
        unknown = sorted(set(labels.unique()) - set(lookup))
        if unknown:
            raise ValueError(f"labels {unknown[:5]} are not in class_names {names[:10]}")
        cls = labels.map(lookup).to_numpy(dtype=np.uint16)
    else:
        names = list(class_names or [])
        cls = np.zeros(n, dtype=np.uint16)
    kind = _codes(frame["source"], KIND_CODES, "source") if "source" in frame.columns else np.zeros(n, np.uint8)
    rnd = frame["round"].fillna(0).to_numpy(dtype=np.int64) if "round" in frame.columns else np.zeros(n, np.int64)
    fb = _codes(frame["feedback"], FEEDBACK_CODES, "feedback") if "feedback" in frame.columns else np.zeros(n, np.uint8)
    flag = (frame["flag"].fillna("").astype(str) != "").to_numpy(dtype=np.uint8) if "flag" in frame.columns else np.zeros(n, np.uint8)
    return {
        "xy": np.ascontiguousarray(xy, dtype="<f4").tobytes(),
        "cls": cls.astype("<u2").tobytes(),
        "kind": kind.tobytes(),
        "round": np.clip(rnd, 0, 65535).astype("<u2").tobytes(),
        "feedback": fb.tobytes(),
        "flag": flag.tobytes(),
        "class_names": [str(c) for c in names],
    }


def _png(image: Image.Image | bytes | None) -> bytes | None:
    if image is None:
        return None
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="PNG")
    return buf.getvalue()


# --------------------------------------------------------------------------- the widget
class CrafterWidget(anywidget.AnyWidget):
    """Projection of all real and generated images with thumbnails, labels, lasso and feedback.

    Set data with `set_frame` (or the raw traits), register `on_action` / `on_details`
    callbacks, read or set `selected`. Index i everywhere is row i of the frame that was shown.
    """

    _esm = STATIC / "widget.js"
    _css = STATIC / "widget.css"

    xy = _binary()  # float32 (n, 2), little-endian
    kind = _binary()  # uint8 per point: 0 real, 1 generated
    cls = _binary()  # uint16 class index into class_names
    round = _binary()  # uint16 generation round (0 = real)
    feedback = _binary()  # uint8: 0 none, 1 good, 2 bad, 3 removed
    flag = _binary()  # uint8: 1 when the class filter flagged the image
    class_names = t.List(t.Unicode()).tag(sync=True)
    atlas = _binary()  # PNG sprite atlas
    atlas_grid = t.Dict().tag(sync=True)  # cols, rows, tile, count, width, height
    thumb_size = t.Int(32).tag(sync=True)
    labels = t.List(t.Dict()).tag(sync=True)  # {text, x, y, n, members?: [int]}
    selection = _binary()  # uint32 point indices, sorted
    color_by = t.Enum(COLOR_MODES, default_value="class").tag(sync=True)
    progress = t.Dict({"running": False, "done": 0, "total": 0, "message": ""}).tag(sync=True)
    prompts = t.Dict().tag(sync=True)  # class -> {current: str, history: [str]}
    status = t.Unicode("").tag(sync=True)
    height = t.Int(520).tag(sync=True)
    # How the browser draws each image: instanced quads, point sprites, or "auto" (quads on a GPU,
    # points where WebGL runs in software, which draws instanced geometry ~20x slower). Read once
    # when the view is created.
    primitive = t.Enum(("auto", "quads", "points"), default_value="auto").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._action_callbacks: list[ActionCallback] = []
        self._details_callback: DetailsCallback | None = None
        self.on_msg(self._on_custom_msg)

    # ----------------------------------------------------------------- data
    @property
    def n(self) -> int:
        """Number of points shown."""
        return len(self.xy) // 8

    def set_frame(
        self,
        frame: pd.DataFrame,
        *,
        class_names: Sequence[str] | None = None,
        thumbnails: Sequence[Image.Image] | np.ndarray | None = None,
        labels: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        """Shows one point per row of `frame` (see `points_from_frame`) in a single sync.

        The selection is kept where its indices still exist. Thumbnails (one per row, same order)
        become the sprite atlas at `thumb_size` px.
        """
        pts = points_from_frame(frame, class_names)
        if thumbnails is not None and len(thumbnails) != len(frame):
            raise ValueError(f"got {len(thumbnails)} thumbnails for {len(frame)} rows; pass one per row")
        n = len(frame)
        keep = self.selected
        keep = keep[keep < n]
        with self.hold_sync():
            for key, value in pts.items():
                setattr(self, key, value)
            if thumbnails is not None:
                self.set_thumbnails(thumbnails)
            if labels is not None:
                self.set_labels(labels)
            self.selection = selection_to_bytes(keep, n)

    def set_thumbnails(
        self, images: Sequence[Image.Image] | np.ndarray, size: int | None = None, format: str = "auto"
    ) -> None:
        """Builds and sends the sprite atlas (see `build_atlas`); image i must belong to point i."""
        png, info = build_atlas(images, size or self.thumb_size, format=format)
        with self.hold_sync():
            self.atlas = png
            self.atlas_grid = info

    def set_labels(self, labels: Sequence[Mapping[str, Any]]) -> None:
        """Content labels as words on the map: each {text, x, y, n, members (point indices, optional)}."""
        out = []
        for lab in labels:
            item = {"text": str(lab["text"]), "x": float(lab["x"]), "y": float(lab["y"]), "n": int(lab.get("n", 1))}
            if lab.get("members") is not None:
                item["members"] = [int(i) for i in lab["members"]]
            out.append(item)
        self.labels = out

    def set_progress(self, done: int, total: int, message: str = "", running: bool = True) -> None:
        """Updates the progress bar (shown with a cancel button while running)."""
        self.progress = {"running": bool(running), "done": int(done), "total": int(total), "message": str(message)}

    @property
    def selected(self) -> np.ndarray:
        """Selected point indices (uint32, sorted)."""
        return selection_from_bytes(self.selection)

    @selected.setter
    def selected(self, indices: Iterable[int] | np.ndarray) -> None:
        self.selection = selection_to_bytes(indices, self.n)

    # ----------------------------------------------------------------- callbacks
    def on_action(self, callback: ActionCallback, remove: bool = False) -> None:
        """Registers `callback(name, payload)` for button presses.

        name is one of ACTIONS; payload always has "indices" (list of selected point indices at
        the time of the press) plus action-specific keys: unwanted_label -> "label";
        generate -> "strategy", "count", "prompt"; prompt_* -> "class", "prompt", "index".
        A callback may return a str, shown as the widget status.
        """
        if remove:
            self._action_callbacks = [c for c in self._action_callbacks if c is not callback]
        elif callback not in self._action_callbacks:
            self._action_callbacks.append(callback)

    def on_details(self, callback: DetailsCallback | None) -> None:
        """Registers `callback(index) -> dict` for hover details.

        The dict maps field names to values shown as text (prompt, labels, provenance); an optional
        "image" key (PIL image or PNG bytes) is shown large.
        """
        self._details_callback = callback

    def trigger(self, name: str, payload: Mapping[str, Any] | None = None) -> list[Any]:
        """Runs the action callbacks as if the button was pressed; returns their results."""
        if name not in ACTIONS:
            raise ValueError(f"unknown action {name!r}; expected one of {ACTIONS}")
        data = dict(payload or {})
        data.setdefault("indices", self.selected.tolist())
        results = []
        try:
            for cb in list(self._action_callbacks):
                results.append(cb(name, data))
        except Exception as err:  # shown to the person; the traceback goes to the log
            log.exception("action %s failed", name)
            self.status = f"{name} failed: {err}"
            self.send({"type": "action_result", "name": name, "ok": False, "message": self.status})
            raise
        messages = [r for r in results if isinstance(r, str)]
        if messages:
            self.status = messages[-1]
        self.send({"type": "action_result", "name": name, "ok": True, "message": messages[-1] if messages else ""})
        return results

    def details(self, index: int) -> tuple[list[list[str]], bytes | None]:
        """Text fields and full-size PNG for point `index` from the details callback."""
        if not 0 <= index < self.n:
            raise IndexError(f"point index {index} out of range 0..{self.n - 1}")
        if self._details_callback is None:
            return [], None
        info = dict(self._details_callback(index) or {})
        png = _png(info.pop("image", None))
        fields = [[str(k), "" if v is None else str(v)] for k, v in info.items()]
        return fields, png

    def _on_custom_msg(self, _widget: Any, content: Any, buffers: list[memoryview] | None) -> None:
        if not isinstance(content, dict):
            return
        kind = content.get("type")
        if kind == "details":
            index = int(content.get("index", -1))
            try:
                fields, png = self.details(index)
            except Exception as err:
                log.exception("details for point %s failed", index)
                fields, png = [["error", str(err)]], None
            self.send({"type": "details", "index": index, "fields": fields}, buffers=[png] if png else None)
        elif kind == "action":
            name = str(content.get("name", ""))
            if name not in ACTIONS:
                self.status = f"unknown action {name!r} from the front end"
                log.warning(self.status)
                return
            payload = dict(content.get("payload") or {})
            if buffers:
                payload["indices"] = selection_from_bytes(buffers[0]).tolist()
            try:
                self.trigger(name, payload)
            except Exception:
                pass  # already reported in status and the log; never kill the comm


# --------------------------------------------------------------------------- layout
def _generate_controls(widget: CrafterWidget) -> Any:
    import ipywidgets as w

    strategy = w.Dropdown(options=["class", "caption", "perturb", "custom"], value="caption", description="strategy")
    count = w.BoundedIntText(value=8, min=1, max=10000, description="per class")
    custom = w.Text(placeholder="custom prompt, e.g. a photo of a {class} at night", description="prompt")
    custom.layout.display = "none"
    generate = w.Button(description="Generate", button_style="primary", icon="play")
    cancel = w.Button(description="Cancel", icon="stop", disabled=True)
    bar = w.IntProgress(value=0, min=0, max=1, description="")
    message = w.Label("")

    def on_strategy(change: dict) -> None:
        custom.layout.display = "" if change["new"] == "custom" else "none"

    def on_progress(change: dict | None = None) -> None:
        p = widget.progress or {}
        bar.max = max(1, int(p.get("total") or 1))
        bar.value = min(bar.max, max(0, int(p.get("done") or 0)))
        message.value = str(p.get("message") or "")
        running = bool(p.get("running"))
        cancel.disabled = not running
        generate.disabled = running

    strategy.observe(on_strategy, names="value")
    widget.observe(on_progress, names="progress")
    on_progress()
    generate.on_click(
        lambda _b: widget.trigger(
            "generate", {"strategy": strategy.value, "count": int(count.value), "prompt": custom.value}
        )
    )
    cancel.on_click(lambda _b: widget.trigger("cancel"))
    box = w.VBox([w.Label("Generate"), strategy, count, custom, w.HBox([generate, cancel]), bar, message])
    box.generate_button, box.cancel_button = generate, cancel  # handles for tests and scripting
    box.strategy, box.count, box.custom = strategy, count, custom
    return box


def _prompts_panel(widget: CrafterWidget) -> Any:
    import ipywidgets as w

    panel = w.VBox([])

    def rebuild(change: dict | None = None) -> None:
        rows = [w.Label("Prompts per class")]
        for cls_name, entry in (widget.prompts or {}).items():
            entry = entry or {}
            history = [str(h) for h in entry.get("history", [])]
            text = w.Text(value=str(entry.get("current", "")), layout=w.Layout(width="100%"))
            accept = w.Button(description="Accept", tooltip="keep the current prompt")
            edit = w.Button(description="Save edit", tooltip="use the text as typed")
            past = w.Dropdown(options=[(h, k) for k, h in enumerate(history)], layout=w.Layout(width="60%"))
            revert = w.Button(description="Revert", tooltip="go back to the chosen earlier prompt", disabled=not history)
            accept.on_click(lambda _b, c=cls_name, tx=text: widget.trigger("prompt_accept", {"class": c, "prompt": tx.value}))
            edit.on_click(lambda _b, c=cls_name, tx=text: widget.trigger("prompt_edit", {"class": c, "prompt": tx.value}))
            revert.on_click(
                lambda _b, c=cls_name, d=past, h=history: widget.trigger(
                    "prompt_revert", {"class": c, "index": d.value, "prompt": h[d.value] if d.value is not None else ""}
                )
            )
            rows.append(w.VBox([w.Label(str(cls_name)), text, w.HBox([accept, edit]), w.HBox([past, revert])]))
        panel.children = rows

    widget.observe(rebuild, names="prompts")
    rebuild()
    return panel


def build_layout(widget: CrafterWidget, metrics_chart: Any | None = None) -> Any:
    """The whole interface: projection on the left, generate controls and prompts on the right,
    the metrics chart (an `alt.JupyterChart`, updated by the controller) below."""
    import ipywidgets as w

    side = w.VBox([_generate_controls(widget), _prompts_panel(widget)], layout=w.Layout(width="340px", flex="0 0 340px"))
    widget.layout = w.Layout(flex="1 1 auto", width="auto", min_width="360px")
    top = w.HBox([widget, side], layout=w.Layout(width="100%", align_items="flex-start"))
    children = [top] if metrics_chart is None else [top, metrics_chart]
    box = w.VBox(children, layout=w.Layout(width="100%"))
    box.side_panel = side
    return box


# --------------------------------------------------------------------------- controller binding
_DETAIL_COLUMNS = ("id", "label", "source", "split", "round", "strategy", "prompt", "negative_prompt", "caption",
                   "seed", "steps", "guidance", "strength", "parent_id", "model", "feedback", "feedback_labels",
                   "flag", "flag_reason")


def _fallback_layout(samples: pd.DataFrame, classes: Sequence[str]) -> np.ndarray:
    """Positions before any projection exists: one block of a grid per class, so images show at once."""
    xy = np.zeros((len(samples), 2), np.float32)
    labels = samples["label"].astype(str).to_numpy()
    counts = [int((labels == c).sum()) for c in classes]
    cols = max(1, math.ceil(math.sqrt(max(counts, default=1))))  # one square block per class
    per_row = max(1, math.ceil(math.sqrt(len(classes))))  # blocks arranged in a square too
    for k, c in enumerate(classes):
        idx = np.flatnonzero(labels == c)
        bx, by = (k % per_row) * (cols + 2), (k // per_row) * (cols + 2)
        xy[idx, 0] = bx + np.arange(len(idx)) % cols
        xy[idx, 1] = -(by + np.arange(len(idx)) // cols)
    return xy


def _label_members(label_xy: np.ndarray, image_xy: np.ndarray) -> list[np.ndarray]:
    """Images whose nearest content label is this one (used when the projection gives no memberships)."""
    if len(label_xy) == 0 or len(image_xy) == 0:
        return [np.zeros(0, np.int64) for _ in range(len(label_xy))]
    nearest = np.empty(len(image_xy), np.int64)
    for start in range(0, len(image_xy), 4096):  # bounded memory for 50,000 x labels
        block = image_xy[start:start + 4096]
        d = ((block[:, None, :] - label_xy[None, :, :]) ** 2).sum(axis=2)
        nearest[start:start + 4096] = d.argmin(axis=1)
    return [np.flatnonzero(nearest == j) for j in range(len(label_xy))]


class CrafterView:
    """Binds a CrafterWidget to a `DataCrafter` through the controller's public hooks only.

    Controller -> widget: events "samples", "feedback", "projection" redraw, "selection" highlights,
    "progress" (a Job) drives the progress bar. Widget -> controller: the selection sets
    `crafter.selection` (sample ids); buttons call `crafter.feedback`, `crafter.generate(background=True)`,
    `crafter.cancel`, `crafter.evolve`; hover details read `crafter.samples` and `crafter.store.image`.
    """

    def __init__(self, crafter: Any, thumb_size: int = 32) -> None:
        self.crafter = crafter
        self.widget = CrafterWidget(thumb_size=thumb_size)
        self.ids: list[str] = []
        self._thumbs: dict[str, np.ndarray] = {}  # by image hash
        self._syncing = False
        self._evolve_job: Any = None
        self._atlas_key: tuple = ()
        self.refresh()
        self.widget.on_action(self._on_action)
        self.widget.on_details(self._details)
        self.widget.observe(self._widget_selection, names="selection")
        for event, fn in (("samples", self._refresh_event), ("feedback", self._refresh_event),
                          ("projection", self._refresh_event), ("selection", self._crafter_selection),
                          ("progress", self._progress)):
            crafter.on(event, fn)
        self.chart: Any = None
        self.layout = build_layout(self.widget, None)
        self.update_metrics()

    # ----------------------------------------------------------------- controller -> widget
    def _refresh_event(self, _payload: Any = None) -> None:
        self.refresh()

    def refresh(self) -> None:
        """Re-reads samples + projection and sends the points, thumbnails and labels."""
        crafter = self.crafter
        samples = crafter.samples.reset_index(drop=True)
        proj = crafter.projection
        images = proj[proj["kind"] == "image"] if len(proj) else proj
        pos = {str(i): (float(x), float(y)) for i, x, y in zip(images.get("id", []), images.get("x", []), images.get("y", []))}
        if pos and all(str(i) in pos for i in samples["id"]):
            xy = np.array([pos[str(i)] for i in samples["id"]], np.float32).reshape(-1, 2)
            labels_frame = proj[proj["kind"] == "label"]
        else:  # no projection yet (or it lags behind new samples): grid per class
            xy = _fallback_layout(samples, crafter.classes)
            labels_frame = proj.iloc[0:0] if len(proj) else proj
        frame = samples.assign(x=xy[:, 0], y=xy[:, 1])
        new = [h for h in samples["hash"].unique() if h not in self._thumbs]
        if new:
            first = samples.drop_duplicates("hash").set_index("hash")["id"]
            for h in new:
                self._thumbs[h] = _thumbnail(crafter.store.image(first[h]), self.widget.thumb_size)
        # Feedback or projection changes keep the same images: do not rebuild and resend the atlas.
        atlas_key = tuple(samples["hash"])
        tiles = None
        if atlas_key != self._atlas_key and len(samples):
            tiles = np.stack([self._thumbs[h] for h in samples["hash"]])
        self._atlas_key = atlas_key
        self.ids = [str(i) for i in samples["id"]]
        index = {sid: k for k, sid in enumerate(self.ids)}
        members = self._members(labels_frame, xy, index)
        labels = [{"text": str(t), "x": float(x), "y": float(y), "n": int(len(m)), "members": m.tolist()}
                  for (t, x, y), m in zip(zip(labels_frame.get("text", []), labels_frame.get("x", []),
                                              labels_frame.get("y", [])), members)]
        self._syncing = True
        try:
            with self.widget.hold_sync():
                self.widget.set_frame(frame, class_names=list(crafter.classes), thumbnails=tiles, labels=labels)
                self.widget.selected = [index[i] for i in crafter.selection if i in index]
                self.widget.prompts = self._prompts()
        finally:
            self._syncing = False

    def _members(self, labels_frame: pd.DataFrame, xy: np.ndarray, index: Mapping[str, int]) -> list[np.ndarray]:
        if len(labels_frame) == 0:
            return []
        if "members" in labels_frame.columns:  # explicit memberships (sample ids) from the projection
            return [np.array(sorted(index[i] for i in (m if isinstance(m, (list, tuple, np.ndarray)) else []) if i in index),
                             np.int64) for m in labels_frame["members"]]
        return _label_members(labels_frame[["x", "y"]].to_numpy(np.float32), xy)

    def _prompts(self) -> dict:
        """class -> {current, history} from the controller's evolved prompts (prompts.json)."""
        prompts = getattr(self.crafter, "prompts", None)
        if prompts is None:
            doc = self.crafter.store.read_json("prompts.json", {}) or {}
            prompts = doc.get("classes", {})
        out = {}
        for c, e in (prompts or {}).items():
            if isinstance(e, Mapping):
                hist = [str(h.get("prompt", h)) if isinstance(h, Mapping) else str(h) for h in e.get("history", [])]
                out[str(c)] = {"current": str(e.get("current", e.get("prompt", ""))), "history": hist}
        return out

    def _crafter_selection(self, ids: Sequence[str]) -> None:
        if self._syncing:
            return
        index = {sid: k for k, sid in enumerate(self.ids)}
        self._syncing = True
        try:
            self.widget.selected = [index[i] for i in ids if i in index]
        finally:
            self._syncing = False

    def _progress(self, job: Any) -> None:
        running = bool(getattr(job, "running", False))
        self.widget.set_progress(int(round(job.done)), int(job.total), str(job.message or job.description), running)
        if not running:
            self.widget.status = f"{job.description}: {job.status}"
            self.update_metrics()

    def update_metrics(self) -> None:
        """Shows `crafter.metrics` (one row per round) as an alt.JupyterChart below the map, once
        there is a round to show; called after each generation job."""
        try:
            frame = getattr(self.crafter, "metrics", None)
        except Exception as err:  # noqa: BLE001 - metrics must never break the view
            log.warning("crafter.metrics failed: %s", err)
            return
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            return
        try:
            import altair as alt

            from ..loop.metrics import metrics_chart

            chart = metrics_chart(frame)
        except Exception as err:  # noqa: BLE001
            self.widget.status = f"metrics chart unavailable: {err}"
            return
        if self.chart is None:
            self.chart = alt.JupyterChart(chart)
            self.layout.children = (*self.layout.children, self.chart)
        else:
            self.chart.chart = chart

    # ----------------------------------------------------------------- widget -> controller
    def _widget_selection(self, _change: dict) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.crafter.selection = [self.ids[i] for i in self.widget.selected if i < len(self.ids)]
        finally:
            self._syncing = False

    def _on_action(self, name: str, payload: dict) -> str | None:
        crafter = self.crafter
        ids = [self.ids[i] for i in payload.get("indices", []) if i < len(self.ids)]
        if name in ("bad", "good", "remove"):
            if not ids:
                return "select images first (lasso, box, or click a label)"
            key = {"bad": "bad", "good": "good", "remove": "removed"}[name]
            counts = crafter.feedback(**{key: ids})
            return f"marked {counts[key]} images {key}"
        if name == "unwanted_label":
            label = str(payload.get("label", ""))
            if not label:
                return "click a content label first"
            source = crafter.samples.set_index("id")["source"]
            gen = [i for i in ids if source.get(i) == "generated"]
            crafter.feedback(bad=gen, bad_labels=[label])
            return f"label {label!r} marked unwanted on {len(gen)} generated images"
        if name == "evolve":
            return self._evolve(ids)
        if name == "generate":
            strategy = str(payload.get("strategy", "caption"))
            options: dict[str, Any] = {"per_class": int(payload.get("count", 8)), "strategy": strategy, "background": True}
            if strategy == "custom":
                options["prompts"] = str(payload.get("prompt") or "")
            job = crafter.generate(**options)
            return f"generating: {getattr(job, 'description', 'job')}"
        if name == "cancel":
            crafter.cancel()
            if self._evolve_job is not None and self._evolve_job.running:
                self._evolve_job.cancel()
            return "cancelling; finished work is kept"
        if name in ("prompt_accept", "prompt_edit", "prompt_revert"):
            setter = getattr(crafter, "set_prompt", None)
            if setter is None:
                return "editing prompts needs DataCrafter.set_prompt(class, prompt) (not available yet)"
            setter(str(payload["class"]), str(payload.get("prompt", "")))
            self.widget.prompts = self._prompts()
            return f"prompt for {payload['class']!r} set"
        return None

    def _evolve(self, ids: Sequence[str]) -> str | None:
        """Prompt evolution for the classes of the selected images, in a worker thread so the
        notebook stays responsive; progress and the new prompts come back through the traits."""
        from ..controller.jobs import Job

        if self._evolve_job is not None and self._evolve_job.running:
            return "prompt evolution is already running (Cancel stops it)"
        frame = self.crafter.samples.set_index("id")
        classes = sorted({str(frame.at[i, "label"]) for i in ids}) or None
        what = f"evolving prompts for {', '.join(classes)}" if classes else "evolving prompts"

        def work(ctx: Any) -> Any:
            return self.crafter.evolve(classes=classes, progress=False, cancel=ctx.cancel_event)

        job = Job(work, total=1, description=what)

        def on_progress(j: Any) -> None:
            self.widget.set_progress(int(j.done), int(j.total), what, bool(j.running))
            if not j.running:
                self.widget.prompts = self._prompts()
                if j.status == "done":
                    self.widget.status = f"{what}: done; see the prompts panel, then crafter.generate_evolved()"
                elif j.status == "failed":
                    self.widget.status = f"{what} failed: {j.error}"
                else:
                    self.widget.status = f"{what}: {j.status}"

        job.on_progress(on_progress)
        self.widget.status = what + " ..."  # before start: the job's own final status must win
        self._evolve_job = job.start()
        return None

    def _details(self, index: int) -> dict:
        sid = self.ids[index]
        row = self.crafter.samples.set_index("id").loc[sid]
        out: dict[str, Any] = {"id": sid}
        for col in _DETAIL_COLUMNS[1:]:
            if col in row.index:
                v = row[col]
                if isinstance(v, float) and math.isnan(v) or v in ("", "[]", -1):
                    continue
                out[col] = v
        out["image"] = self.crafter.store.image(sid)
        return out


def crafter_view(crafter: Any) -> Any:
    """The notebook view of a DataCrafter: projection widget, controls and metrics in one layout."""
    view = CrafterView(crafter)
    view.layout.crafter_view = view  # keep the binding alive with the displayed layout
    return view.layout
