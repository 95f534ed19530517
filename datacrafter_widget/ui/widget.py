"""The notebook front end: an anywidget projection view plus ipywidgets controls around it.

`CrafterWidget` only shows data and reports what the person did; it never touches models or the
sample store. `CrafterView` binds it to a controller through the `CrafterController` protocol
(`DataCrafter` implements it): it fills the traits (coordinates, per-point attributes, a thumbnail
atlas, content labels, prompts, progress) and turns button presses (`on_action`) and hover
requests (`on_details`) into controller calls. Large data moves as binary buffers: float32
coordinates, small integer attribute arrays, a uint32 selection and one PNG sprite atlas. The
selection travels only through its trait; a feedback change resends only the feedback array.
"""

from __future__ import annotations

import io
import logging
import math
import pathlib
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Protocol, Sequence, Union

import anywidget
import numpy as np
import pandas as pd
import traitlets as t
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import ipywidgets

    from ..controller.jobs import Job
    from ..controller.map_view import ViewState
    from ..controller.prompt_book import PromptEntry
    from ..loop.evolution import EvolutionResult
    from ..controller.round_spec import RoundSpec

__all__ = [
    "ACTIONS",
    "COLOR_MODES",
    "CrafterController",
    "CrafterView",
    "CrafterWidget",
    "build_atlas",
    "build_layout",
    "points_from_frame",
    "selection_from_bytes",
    "selection_to_bytes",
]

log = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).parent.parent / "static"
COLOR_MODES = ("class", "round", "feedback", "flag")  # computed in the browser; other columns arrive as codes
FEEDBACK_CODES = {"": 0, "good": 1, "bad": 2, "removed": 3}
KIND_CODES = {"real": 0, "generated": 1}  # 2: a held-out test image (real, split "test"): shown apart, never marked
KIND_TEST = 2
#: Action names the front end (and `build_layout`'s controls) can send to the controller.
ACTIONS = (
    "bad",
    "good",
    "remove",
    "unmark",
    "undo",
    "redo",
    "evolve",
    "unwanted_label",
    "generate",
    "cancel",
    "prompt_accept",
    "prompt_edit",
    "prompt_revert",
    "search",
    "neighbors",
    "filter",
    "isolate",
    "gallery_mark",
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
    info = {
        "cols": cols,
        "rows": rows,
        "tile": tile,
        "count": n,
        "width": cols * tile,
        "height": rows * tile,
        "format": format,
    }
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
    if "split" in frame.columns:
        kind[(frame["split"].astype(str) == "test").to_numpy() & (kind == 0)] = KIND_TEST
    rnd = frame["round"].fillna(0).to_numpy(dtype=np.int64) if "round" in frame.columns else np.zeros(n, np.int64)
    fb = _codes(frame["feedback"], FEEDBACK_CODES, "feedback") if "feedback" in frame.columns else np.zeros(n, np.uint8)
    flag = (
        (frame["flag"].fillna("").astype(str) != "").to_numpy(dtype=np.uint8)
        if "flag" in frame.columns
        else np.zeros(n, np.uint8)
    )
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
    kind = _binary()  # uint8 per point: 0 real, 1 generated, 2 held-out test (never selectable)
    cls = _binary()  # uint16 class index into class_names
    round = _binary()  # uint16 generation round (0 = real)
    feedback = _binary()  # uint8: 0 none, 1 good, 2 bad, 3 removed
    flag = _binary()  # uint8: 1 when the class filter flagged the image
    hidden = _binary()  # uint8: 1 when a filter hides the point (not drawn, not selectable); empty: none hidden
    color_codes = _binary()  # uint16 category per point when color_by is a column the browser does not compute
    color_names = t.List(t.Unicode()).tag(sync=True)  # names of those categories
    color_options = t.List(t.Unicode(), list(COLOR_MODES)).tag(sync=True)  # the colour menu
    filters = t.Dict({"show_test": False, "show_removed": False, "isolated": False}).tag(sync=True)
    history = t.Dict({"undo": 0, "redo": 0}).tag(sync=True)  # feedback actions that can be undone / redone
    class_names = t.List(t.Unicode()).tag(sync=True)
    atlas = _binary()  # PNG sprite atlas
    atlas_grid = t.Dict().tag(sync=True)  # cols, rows, tile, count, width, height
    thumb_size = t.Int(32).tag(sync=True)
    labels = t.List(t.Dict()).tag(sync=True)  # {text, x, y, n, members?: [int]}
    selection = _binary()  # uint32 point indices, sorted
    color_by = t.Unicode("class").tag(sync=True)
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

    def zoom_to(self, indices: Iterable[int] | np.ndarray) -> None:
        """Asks the browser to fit these points in view (a message, not state: a later pan wins)."""
        self.send({"type": "zoom"}, buffers=[selection_to_bytes(indices, self.n)])

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
            payload = dict(content.get("payload") or {})  # the selection is read from its trait
            try:
                self.trigger(name, payload)
            except Exception:
                pass  # already reported in status and the log; never kill the comm


# --------------------------------------------------------------------------- layout
def _generate_controls(widget: CrafterWidget, strategies: Sequence[str]) -> Any:
    """Strategy, count and prompt; the progress bar and Cancel live once, in the map's footer."""
    import ipywidgets as w

    narrow = {"description_width": "64px"}  # the descriptions must leave the inputs room in a 280 px panel
    strategy = w.Dropdown(
        options=list(strategies),
        value="caption" if "caption" in strategies else strategies[0],
        description="strategy",
        layout=w.Layout(width="98%"),
        style=narrow,
    )
    count = w.BoundedIntText(
        value=8, min=1, max=10000, description="per class", layout=w.Layout(width="98%"), style=narrow
    )
    custom = w.Text(
        placeholder="a photo of a {class} at night",
        description="prompt",
        style=narrow,
        layout=w.Layout(width="98%", display="none"),
    )
    hint = w.HTML("")
    generate = w.Button(description="Generate", button_style="primary", icon="play", layout=w.Layout(width="98%"))

    def on_strategy(change: dict) -> None:
        custom.layout.display = "" if change["new"] == "custom" else "none"
        hint.value = (
            "<small>uses each class's current prompt from the panel below</small>" if change["new"] == "evolved" else ""
        )

    def on_progress(change: dict | None = None) -> None:
        generate.disabled = bool((widget.progress or {}).get("running"))

    strategy.observe(on_strategy, names="value")
    widget.observe(on_progress, names="progress")
    on_progress()
    generate.on_click(
        lambda _b: widget.trigger(
            "generate", {"strategy": strategy.value, "count": int(count.value), "prompt": custom.value}
        )
    )
    box = w.VBox([w.HTML("<b>Generate</b>"), strategy, count, custom, hint, generate], layout=w.Layout(width="100%"))
    box.generate_button = generate  # handles for tests and scripting
    box.strategy, box.count, box.custom = strategy, count, custom
    return box


def _prompts_panel(widget: CrafterWidget) -> Any:
    """One block per class: the current prompt (editable), Accept, Save edit, and Revert to a past prompt."""
    import ipywidgets as w

    panel = w.VBox([], layout=w.Layout(width="100%"))
    panel.rows = {}

    def rebuild(change: dict | None = None) -> None:
        rows: list[Any] = [w.HTML("<b>Prompts per class</b>")]
        if not widget.prompts:
            rows.append(
                w.HTML(
                    "<small>none yet: mark images, then Evolve prompts (or type one with crafter.set_prompt)</small>"
                )
            )
        panel.rows = {}
        for cls_name, entry in (widget.prompts or {}).items():
            entry = entry or {}
            history = [h for h in entry.get("history", []) if isinstance(h, Mapping)]
            text = w.Textarea(value=str(entry.get("current", "")), rows=2, layout=w.Layout(width="100%"))
            accept = w.Button(description="Accept", tooltip="keep the current prompt", layout=w.Layout(width="auto"))
            edit = w.Button(description="Save edit", tooltip="use the text as typed", layout=w.Layout(width="auto"))
            options = [
                (f"{k + 1}. {h.get('action', '')}: {str(h.get('prompt', ''))[:60]}", k) for k, h in enumerate(history)
            ]
            past = w.Dropdown(
                options=options, value=(len(options) - 1) if options else None, layout=w.Layout(width="100%")
            )
            revert = w.Button(
                description="Revert",
                tooltip="go back to the chosen earlier prompt",
                disabled=not history,
                layout=w.Layout(width="auto"),
            )
            accept.on_click(
                lambda _b, c=cls_name, tx=text: widget.trigger("prompt_accept", {"class": c, "prompt": tx.value})
            )
            edit.on_click(
                lambda _b, c=cls_name, tx=text: widget.trigger("prompt_edit", {"class": c, "prompt": tx.value})
            )
            revert.on_click(
                lambda _b, c=cls_name, d=past: widget.trigger("prompt_revert", {"class": c, "index": d.value})
            )
            mixture = [str(p) for p in entry.get("mixture") or []]
            # A rebalanced class cycles through several prompts; the text box shows the base one.
            mix = w.Label(
                f"its images cycle through {len(set(mixture))} prompts, e.g. {mixture[1]!r}; Save edit replaces them"
                if len(set(mixture)) > 1
                else ""
            )
            block = w.VBox(
                [w.Label(str(cls_name)), text, mix, w.HBox([accept, edit, revert]), past],
                layout=w.Layout(width="100%", border_bottom="1px solid var(--jp-border-color2, #ddd)"),
            )
            block.text, block.accept, block.edit, block.revert, block.past = text, accept, edit, revert, past
            block.mixture = mix
            panel.rows[str(cls_name)] = block
            rows.append(block)
        panel.children = rows

    widget.observe(rebuild, names="prompts")
    rebuild()
    return panel


def build_layout(
    widget: CrafterWidget,
    metrics_chart: Any | None = None,
    strategies: Sequence[str] = ("class", "caption", "perturb", "custom"),
) -> Any:
    """The whole interface: projection on the left, generate controls and prompts on the right,
    the metrics chart (an `alt.JupyterChart`, updated by the controller) below."""
    import ipywidgets as w

    side = w.VBox(
        [_generate_controls(widget, strategies), _prompts_panel(widget)],
        layout=w.Layout(width="280px", flex="0 0 280px", overflow="hidden auto", max_height=f"{widget.height + 120}px"),
    )
    widget.layout = w.Layout(flex="1 1 auto", width="auto", min_width="360px")
    top = w.HBox([widget, side], layout=w.Layout(width="100%", align_items="flex-start"))
    children = [top] if metrics_chart is None else [top, metrics_chart]
    box = w.VBox(children, layout=w.Layout(width="100%"))
    box.side_panel = side
    return box


# --------------------------------------------------------------------------- controller binding
_Ids = Union[Iterable[str], None]  # sample ids
_Labels = Union[Sequence[str], None]  # feedback labels


class CrafterController(Protocol):
    """What the view needs from a controller (`DataCrafter` implements it); the view uses nothing else."""

    classes: list[str]
    selection: list[str]

    @property
    def samples(self) -> pd.DataFrame: ...
    @property
    def projection(self) -> pd.DataFrame: ...
    @property
    def map_is_current(self) -> bool: ...
    @property
    def view(self) -> ViewState: ...
    @property
    def prompts(self) -> dict[str, PromptEntry]: ...
    @property
    def metrics(self) -> pd.DataFrame: ...
    def metrics_table(self, *, progress: bool = True) -> pd.DataFrame: ...
    @property
    def can_undo(self) -> tuple[int, int]: ...
    def on(self, event: str, fn: Callable[..., None]) -> None: ...
    def off(self, event: str, fn: Callable[..., None]) -> None: ...
    def update_projection(self, *, full: bool = False) -> pd.DataFrame: ...
    def image(self, sample_id: str) -> Image.Image: ...
    def feedback(
        self, bad: _Ids = None, good: _Ids = None, bad_labels: _Labels = None, removed: _Ids = None, clear: _Ids = None
    ) -> dict[str, int]: ...
    def undo(self) -> list[str]: ...
    def redo(self) -> list[str]: ...
    def generate_background(self, spec: RoundSpec | None = None, **settings: Any) -> Job: ...
    def generate_evolved(self, per_class: int = 20, **options: Any) -> list[str]: ...
    def cancel(self) -> None: ...
    def evolve(self, **options: Any) -> EvolutionResult: ...
    def set_prompt(self, cls: str, prompt: str, *, negative_prompt: str | None = None) -> dict[str, object]: ...
    def accept_prompt(self, cls: str) -> dict[str, object]: ...
    def revert_prompt(self, cls: str, index: int = -2) -> dict[str, object]: ...
    def search(self, query: str, *, mode: str = "text", k: int = 24, select: bool = True) -> list[str]: ...
    def neighbors(self, sample_id: str, k: int = 12, *, select: bool = True) -> list[str]: ...
    def color_by(self, column: str) -> None: ...
    def filter(
        self,
        *,
        show_test: bool | None = None,
        show_removed: bool | None = None,
        rounds: Iterable[int] | None | str = "keep",
    ) -> None: ...
    def isolate(self, ids: Iterable[str] | None) -> None: ...
    def color_codes(self, column: str) -> tuple[np.ndarray, list[str]]: ...
    def color_columns(self) -> list[str]: ...


QUICK_THUMBNAILS = 2000  # up to this many images the view reads its thumbnails before it is shown


def _strategies() -> tuple[str, ...]:
    """The strategy menu: the controller's one list of strategies a Generate can use ("evolved"
    generates from the prompts panel)."""
    from ..loop.strategies import GENERATE_STRATEGIES

    return tuple(GENERATE_STRATEGIES)


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
        block = image_xy[start : start + 4096]
        d = ((block[:, None, :] - label_xy[None, :, :]) ** 2).sum(axis=2)
        nearest[start : start + 4096] = d.argmin(axis=1)
    return [np.flatnonzero(nearest == j) for j in range(len(label_xy))]


def label_anchor(
    member_xy: np.ndarray,
    bounds: tuple[float, float, float, float],
    bins: int = 12,
    previous: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """Where a content label goes: on the densest group of its members, not at their centroid (which
    lands in empty space when members sit in several clusters). A previous anchor is kept while its
    cell still holds at least half as many members as the densest one, so labels do not jump."""
    if len(member_xy) == 0:
        raise ValueError("a label anchor needs at least one member")
    x0, y0, x1, y1 = bounds
    w = h = max(x1 - x0, y1 - y0, 1e-9)  # square cells: a flat map must not make them slivers
    cx = np.clip(((member_xy[:, 0] - x0) / w * bins).astype(int), 0, bins - 1)
    cy = np.clip(((member_xy[:, 1] - y0) / h * bins).astype(int), 0, bins - 1)
    cell = cy * bins + cx
    # Members per 3x3 block of cells around each cell: a spread-out group is not outweighed by a small
    # tight pile that happens to fall in one cell (which made labels jump when images were added).
    grid = np.bincount(cell, minlength=bins * bins).reshape(bins, bins)
    padded = np.pad(grid, 1)
    counts = sum(
        (padded[dy : dy + bins, dx : dx + bins] for dy in range(3) for dx in range(3)), np.zeros_like(grid)
    ).ravel()
    if previous is not None:
        px = min(bins - 1, max(0, int((previous[0] - x0) / w * bins)))
        py = min(bins - 1, max(0, int((previous[1] - y0) / h * bins)))
        if counts[py * bins + px] * 2 >= counts.max():
            return previous
    top = int(counts.argmax())
    ty, tx = divmod(top, bins)
    near = (np.abs(cy - ty) <= 1) & (np.abs(cx - tx) <= 1)
    best = member_xy[near & (grid.ravel()[cell] > 0)]
    med = np.median(best, axis=0)
    k = int(((best - med) ** 2).sum(axis=1).argmin())  # snap onto a member: never empty space
    return float(best[k, 0]), float(best[k, 1])


def _fb_codes(samples: pd.DataFrame) -> bytes:
    return _codes(samples["feedback"], FEEDBACK_CODES, "feedback").tobytes()


class CrafterView:
    """Binds a CrafterWidget to a controller (see `CrafterController`; `DataCrafter` is one).

    Controller -> widget: events "samples", "projection" redraw; "feedback" resends only the
    feedback (and hidden) arrays; "selection" highlights; "view" recolours, filters or zooms;
    "progress" (a Job) drives the one progress bar. Widget -> controller: the selection trait sets
    `crafter.selection`; buttons call the controller methods of the same names. The first map of a
    project is computed in a background job while the images show in a grid per class.
    """

    def __init__(self, crafter: CrafterController, thumb_size: int = 32) -> None:
        self.crafter = crafter
        self.widget = CrafterWidget(thumb_size=thumb_size)
        self.ids: list[str] = []
        self._index: dict[str, int] = {}
        self._split: np.ndarray = np.zeros(0, dtype=object)
        self._thumbs: dict[str, np.ndarray] = {}  # by image hash
        self._syncing = False
        self._lock = threading.RLock()
        self._job: Any = None  # the view's own background work the user waits for (first map, evolve)
        # The metrics chart's computation (it may train a held-out student) runs apart and quietly: it never
        # blocks Evolve or Generate, and a request while it runs is served by one more run when it ends.
        self._metrics_job: Any = None
        self._metrics_again = False
        self._metrics_lock = threading.Lock()
        self._atlas_key: tuple = ()
        self._label_pos: dict[str, tuple[float, float]] = {}
        self._point_labels: dict[int, list[str]] = {}
        self.chart: Any = None
        self.strategies = _strategies()
        self.layout = build_layout(self.widget, None, self.strategies)
        self.widget.color_options = list(crafter.color_columns())
        samples = crafter.samples
        # Small projects show complete at once; larger ones show their points at once (a grid per class
        # until the map exists) and load thumbnails and the map in a background job.
        quick = crafter.map_is_current and samples["hash"].nunique() <= QUICK_THUMBNAILS
        self.refresh(compute=crafter.map_is_current, thumbnails=quick)
        self.widget.on_action(self._on_action)
        self.widget.on_details(self._details)
        self.widget.observe(self._widget_selection, names="selection")
        self.widget.observe(self._widget_color, names="color_by")
        for event, fn in (
            ("samples", self._refresh_event),
            ("feedback", self._feedback_event),
            ("projection", self._refresh_event),
            ("selection", self._crafter_selection),
            ("progress", self._progress),
            ("view", self._view_event),
        ):
            crafter.on(event, fn)
        if not quick:
            self._first_map()
        else:
            self._metrics_in_background()

    # ----------------------------------------------------------------- background work
    def _run(
        self,
        description: str,
        work: Callable[[Any], Any],
        done: Callable[[Any], None] | None = None,
        quiet: bool = False,
        finished: Callable[[Any], None] | None = None,
    ) -> Any:
        """Runs `work(ctx)` in a Job (the kernel stays free); progress and the final status go to the footer."""
        from ..controller.jobs import Job

        job = Job(work, total=0, description=description)

        def on_progress(j: Any) -> None:
            if not quiet:
                self.widget.set_progress(int(j.done), int(j.total), str(j.message or description), bool(j.running))
            if j.running:
                return
            if j.status == "failed" and quiet:
                log.warning("%s failed: %s", description, j.error)
            elif j.status == "failed":
                self.widget.status = f"{description} failed: {j.error}"
            elif not quiet or j.status != "done":
                self.widget.status = f"{description}: {j.status}"
            if j.status == "done" and done is not None:
                done(j.result)
            if finished is not None:
                finished(j)

        job.on_progress(on_progress)
        if quiet:
            self._metrics_job = job.start()
            return job
        self.widget.set_progress(0, 0, description + " ...", True)
        self._job = job.start()
        return job

    def _first_map(self) -> None:
        n = len(self.ids)
        current = self.crafter.map_is_current
        what = "loading thumbnails" if current else f"computing the map of {n} images"
        if not current:
            self.widget.status = (
                f"computing the map of {n} images (embeddings, content labels, layout); "
                "the grid by class shows them meanwhile"
            )

        def work(ctx: Any) -> None:
            self._load_thumbnails(self.crafter.samples, ctx)
            if current:
                self.refresh()
            else:
                ctx.report(0, 0, f"computing the map of {n} images")
                self.crafter.update_projection()  # its "projection" event redraws the view

        def done(_result: Any) -> None:
            self.widget.status = f"{n} images on the map"  # not "loading thumbnails: done"
            self._metrics_in_background()

        self._run(what, work, done=done)

    def _load_thumbnails(self, samples: pd.DataFrame, ctx: Any = None) -> None:
        """Reads and shrinks the images not yet in the thumbnail cache (by image hash)."""
        new = [h for h in samples["hash"].unique() if h not in self._thumbs]
        if not new:
            return
        first = samples.drop_duplicates("hash").set_index("hash")["id"]
        for k, h in enumerate(new):
            if ctx is not None and k % 250 == 0:
                ctx.check()
                ctx.report(k, len(new), f"thumbnails {k}/{len(new)}")
            self._thumbs[h] = _thumbnail(self.crafter.image(first[h]), self.widget.thumb_size)

    def _metrics_in_background(self) -> None:
        with self._metrics_lock:
            if self._metrics_job is not None and self._metrics_job.running:
                self._metrics_again = True  # rerun once the running one ends, with the newest rounds
                return
            self._metrics_again = False

        def work(ctx: Any) -> Any:
            return self.crafter.metrics_table(progress=False)  # no tqdm bar under the widget

        def finished(_job: Any) -> None:
            with self._metrics_lock:
                again, self._metrics_again = self._metrics_again, False
            if again:
                self._metrics_in_background()

        self._run("metrics", work, done=self._show_metrics, quiet=True, finished=finished)

    def wait(self, timeout: float | None = 600) -> None:
        """Waits for the view's background jobs (first map, evolve, then metrics); for scripts and tests."""
        seen: set[int] = set()
        while True:
            pending = [j for j in (self._job, self._metrics_job) if j is not None and id(j) not in seen]
            if not pending:
                break
            for job in pending:
                seen.add(id(job))
                try:
                    job.wait(timeout=timeout)
                except Exception:  # noqa: BLE001 - reported in the status already
                    pass

    # ----------------------------------------------------------------- controller -> widget
    def _refresh_event(self, _payload: Any = None) -> None:
        self.refresh()

    def refresh(self, compute: bool = True, thumbnails: bool = True) -> None:
        """Re-reads samples + projection and sends the points, thumbnails and labels.

        compute=False uses the grid per class instead of computing a projection that is not ready;
        thumbnails=False sends no atlas when images are still to be read (a later refresh sends it).
        """
        with self._lock:
            self._refresh(compute, thumbnails)

    def _refresh(self, compute: bool, thumbnails: bool = True) -> None:
        crafter = self.crafter
        samples = crafter.samples.reset_index(drop=True)
        proj = crafter.projection if compute else pd.DataFrame()
        images = proj[proj["kind"] == "image"] if len(proj) else proj
        pos = {
            str(i): (float(x), float(y))
            for i, x, y in zip(images.get("id", []), images.get("x", []), images.get("y", []))
        }
        if pos and all(str(i) in pos for i in samples["id"]):
            xy = np.array([pos[str(i)] for i in samples["id"]], np.float32).reshape(-1, 2)
            labels_frame = proj[proj["kind"] == "label"]
        else:  # no projection yet (or it lags behind new samples): grid per class
            xy = _fallback_layout(samples, crafter.classes)
            labels_frame = pd.DataFrame(columns=["kind", "id", "text", "x", "y"])
        frame = samples.assign(x=xy[:, 0], y=xy[:, 1])
        if thumbnails:
            self._load_thumbnails(samples)
        # Feedback or projection changes keep the same images: do not rebuild and resend the atlas.
        atlas_key = tuple(samples["hash"])
        tiles = None
        if atlas_key != self._atlas_key and len(samples) and all(h in self._thumbs for h in samples["hash"]):
            tiles = np.stack([self._thumbs[h] for h in samples["hash"]])
            self._atlas_key = atlas_key
        self.ids = [str(i) for i in samples["id"]]
        self._index = {sid: k for k, sid in enumerate(self.ids)}
        self._split = samples["split"].astype(str).to_numpy()
        visible = crafter.view.visible(samples)
        labels = self._labels(labels_frame, xy, visible)
        self._syncing = True
        try:
            with self.widget.hold_sync():
                self.widget.set_frame(frame, class_names=list(crafter.classes), thumbnails=tiles, labels=labels)
                self.widget.hidden = (~visible).astype(np.uint8).tobytes()
                self._send_view_state(samples)
                self.widget.selected = [self._index[i] for i in crafter.selection if i in self._index]
                self.widget.prompts = crafter.prompts
                self._send_history()
        finally:
            self._syncing = False

    def _labels(self, labels_frame: pd.DataFrame, xy: np.ndarray, visible: np.ndarray) -> list[dict]:
        """Content labels on the densest group of their visible members; labels with none are dropped."""
        self._point_labels = {}
        if len(labels_frame) == 0 or len(xy) == 0:
            return []
        if "members" in labels_frame.columns:  # explicit memberships (sample ids) from the projection
            members = [
                np.array(
                    sorted(
                        self._index[i]
                        for i in (m if isinstance(m, (list, tuple, np.ndarray)) else [])
                        if i in self._index
                    ),
                    np.int64,
                )
                for m in labels_frame["members"]
            ]
        else:
            members = _label_members(labels_frame[["x", "y"]].to_numpy(np.float32), xy)
        shown = xy[visible] if visible.any() else xy
        bounds = (
            float(shown[:, 0].min()),
            float(shown[:, 1].min()),
            float(shown[:, 0].max()),
            float(shown[:, 1].max()),
        )
        out, positions = [], {}
        for text, m in zip(labels_frame["text"].astype(str), members):
            m = m[visible[m]] if len(m) else m
            for i in m.tolist():
                self._point_labels.setdefault(i, []).append(text)
            if len(m) == 0:
                continue  # e.g. a class name whose class has no image on the map
            x, y = label_anchor(xy[m], bounds, previous=self._label_pos.get(text))
            positions[text] = (x, y)
            out.append({"text": text, "x": x, "y": y, "n": int(len(m)), "members": m.tolist()})
        self._label_pos = positions
        return out

    def _send_view_state(self, samples: pd.DataFrame) -> None:
        state = self.crafter.view
        mode = state.color_by
        if mode not in COLOR_MODES:
            codes, names = self.crafter.color_codes(mode)
            self.widget.color_codes = codes.astype("<u2").tobytes()
            self.widget.color_names = names
        self.widget.color_by = mode
        self.widget.filters = {
            "show_test": bool(state.show_test),
            "show_removed": bool(state.show_removed),
            "isolated": state.isolate is not None,
        }

    def _send_history(self) -> None:
        undo, redo = self.crafter.can_undo
        self.widget.history = {"undo": int(undo), "redo": int(redo)}

    def _feedback_event(self, _ids: Any = None) -> None:
        """Feedback changed: resend the feedback codes and the hidden mask only (not the points)."""
        with self._lock:
            samples = self.crafter.samples.reset_index(drop=True)
            if samples["id"].astype(str).tolist() != self.ids:
                self._refresh(True)
                return
            with self.widget.hold_sync():
                self.widget.feedback = _fb_codes(samples)
                self.widget.hidden = (~self.crafter.view.visible(samples)).astype(np.uint8).tobytes()
                if self.crafter.view.color_by not in COLOR_MODES:
                    self._send_view_state(samples)
                self._send_history()

    def _view_event(self, payload: Mapping[str, Any]) -> None:
        if "zoom" in payload:
            idx = [self._index[i] for i in payload["zoom"] if i in self._index]
            if idx:
                self.widget.zoom_to(idx)
            return
        with self._lock:
            samples = self.crafter.samples.reset_index(drop=True)
            with self.widget.hold_sync():
                self.widget.hidden = (~self.crafter.view.visible(samples)).astype(np.uint8).tobytes()
                self._send_view_state(samples)

    def _crafter_selection(self, ids: Sequence[str]) -> None:
        if self._syncing:
            return
        self._syncing = True
        try:
            self.widget.selected = [self._index[i] for i in ids if i in self._index]
        finally:
            self._syncing = False

    def _progress(self, job: Any) -> None:
        running = bool(getattr(job, "running", False))
        self.widget.set_progress(int(round(job.done)), int(job.total), str(job.message or job.description), running)
        if not running:
            kept = (
                f"; {len(job.result)} images kept" if job.status == "cancelled" and isinstance(job.result, list) else ""
            )
            error = f": {job.error}" if job.status == "failed" else ""
            self.widget.status = f"{job.description}: {job.status}{kept}{error}"
            self._metrics_in_background()

    def update_metrics(self) -> None:
        """Recomputes `crafter.metrics` and shows it (blocking; the view does it in the background)."""
        try:
            frame = self.crafter.metrics_table(progress=False)
        except Exception as err:  # noqa: BLE001 - metrics must never break the view
            log.warning("crafter.metrics failed: %s", err)
            return
        self._show_metrics(frame)

    def _show_metrics(self, frame: Any) -> None:
        """The metrics (one row per round) as an alt.JupyterChart below the map, once there is a round.
        The chart's JavaScript comes bundled by vl-convert (JupyterChart's offline mode): no CDN."""
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            return
        try:
            import altair as alt

            from ..loop.metrics import metrics_chart

            alt.JupyterChart.enable_offline()
            chart = metrics_chart(frame)
        except Exception as err:  # noqa: BLE001
            self.widget.status = f"metrics chart unavailable: {err} (pip install vl-convert-python for offline charts)"
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

    def _widget_color(self, change: dict) -> None:
        if self._syncing or change["new"] == self.crafter.view.color_by:
            return
        self.crafter.color_by(str(change["new"]))

    def _markable(self, indices: Iterable[int]) -> tuple[list[str], int]:
        """Sample ids of the given points that may be marked (held-out test images may not)."""
        ids, test = [], 0
        for i in indices:
            if i >= len(self.ids):
                continue
            if self._split[i] == "test":
                test += 1
            else:
                ids.append(self.ids[i])
        return ids, test

    def _on_action(self, name: str, payload: dict) -> str | None:
        crafter = self.crafter
        ids, test = self._markable(payload.get("indices", []))
        skipped = f" ({test} held-out test images skipped: they are never marked)" if test else ""
        if name in ("bad", "good", "remove", "unmark"):
            if not ids:
                return "select images first (lasso, box, search, or click a label)" + skipped
            key = {"bad": "bad", "good": "good", "remove": "removed", "unmark": "clear"}[name]
            counts = crafter.feedback(**{key: ids})
            verb = "unmarked" if key == "clear" else f"marked {key}"
            if key == "removed":
                self._syncing = True
                try:
                    crafter.selection = []
                    self.widget.selected = []
                finally:
                    self._syncing = False
            return f"{verb}: {counts['cleared' if key == 'clear' else key]} images{skipped} (Undo: ctrl+z)"
        if name == "gallery_mark":
            value = str(payload.get("value", ""))
            one, test = self._markable([int(payload.get("index", -1))])
            if not one:
                return "held-out test images are never marked" if test else "no such image"
            mark = {"bad": "bad", "good": "good", "remove": "removed", "clear": "clear"}.get(value)
            if mark is None:
                raise ValueError(f"unknown mark {value!r}: use bad, good, remove or clear")
            crafter.feedback(**{mark: one})
            return f"{one[0]}: {'unmarked' if mark == 'clear' else mark}"
        if name in ("undo", "redo"):
            changed = crafter.undo() if name == "undo" else crafter.redo()
            return f"{name}: {len(changed)} images restored"
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
            return self._generate(payload)
        if name == "cancel":
            crafter.cancel()
            if self._job is not None and self._job.running:
                self._job.cancel()
            return "cancelling; finished work is kept"
        if name in ("prompt_accept", "prompt_edit", "prompt_revert"):
            cls = str(payload["class"])
            if name == "prompt_accept":
                crafter.accept_prompt(cls)
            elif name == "prompt_edit":
                crafter.set_prompt(cls, str(payload.get("prompt", "")))
            else:
                index = payload.get("index")
                if index is None:
                    return f"choose an earlier prompt of {cls!r} to revert to"
                crafter.revert_prompt(cls, int(index))
            self.widget.prompts = crafter.prompts
            verb = {"prompt_accept": "accepted", "prompt_edit": "saved", "prompt_revert": "reverted"}[name]
            return f"prompt for {cls!r} {verb}: {crafter.prompts[cls]['current']!r}"
        if name == "search":
            query, mode = str(payload.get("query", "")).strip(), str(payload.get("mode", "text"))
            if not query:
                self.crafter.selection = []
                return "search cleared"
            found = crafter.search(query, mode=mode, k=int(payload.get("k", 24)), select=False)
            hidden = np.frombuffer(self.widget.hidden, np.uint8) if len(self.widget.hidden) == len(self.ids) else None
            shown = [i for i in found if hidden is None or not hidden[self._index[i]]]
            crafter.selection = shown  # what is on the map; crafter.search(...) returns every match
            off = f" ({len(found) - len(shown)} more hidden by filters)" if len(found) > len(shown) else ""
            return f"{len(shown)} {'nearest images to' if mode == 'clip' else 'matches for'} {query!r}{off}"
        if name == "neighbors":
            idx = payload.get("indices", [])
            if not idx:
                return "select one image first, then Neighbours"
            k = int(payload.get("k", 12))
            sid = self.ids[idx[0]]
            hidden = np.frombuffer(self.widget.hidden, np.uint8) if len(self.widget.hidden) == len(self.ids) else None
            # The k nearest among the images on the map: hidden ones (held-out test images, filtered out)
            # would otherwise take most of the k places and leave one or two neighbours selected.
            near = crafter.neighbors(sid, len(self.ids) if hidden is not None and hidden.any() else k, select=False)
            shown = [i for i in near if hidden is None or not hidden[self._index[i]]][:k]
            crafter.selection = [sid] + shown
            return f"the {len(crafter.selection) - 1} nearest images (CLIP) to {sid} on the map"
        if name == "filter":
            crafter.filter(show_test=payload.get("show_test"), show_removed=payload.get("show_removed"))
            return None
        if name == "isolate":
            if payload.get("clear") or not payload.get("indices"):
                crafter.isolate(None)
                return "showing every image"
            crafter.isolate([self.ids[i] for i in payload["indices"]])
            return f"showing only the {len(payload['indices'])} selected images (Show all to undo)"
        return None

    def _generate(self, payload: Mapping[str, Any]) -> str:
        """The Generate button's settings become a RoundSpec: the same checks and errors as crafter.generate."""
        from ..controller.round_spec import RoundSpec

        table: dict[str, Any] = {
            "strategy": str(payload.get("strategy", "caption")),
            "per_class": payload.get("count", 8),
        }
        if table["strategy"] == "custom":
            table["prompts"] = str(payload.get("prompt") or "")
        job = self.crafter.generate_background(RoundSpec.from_dict(table))
        return f"generating: {getattr(job, 'description', 'job')}"

    def _evolve(self, ids: Sequence[str]) -> str | None:
        """Prompt evolution for the classes of the selected images, in a worker thread so the
        notebook stays responsive; progress and the new prompts come back through the traits."""
        if self._job is not None and self._job.running:
            return "background work is running (Cancel stops it)"
        frame = self.crafter.samples.set_index("id")
        classes = sorted({str(frame.at[i, "label"]) for i in ids}) or None
        what = f"evolving prompts for {', '.join(classes)}" if classes else "evolving prompts"

        def work(ctx: Any) -> Any:
            return self.crafter.evolve(classes=classes, progress=False, cancel=ctx.cancel_event)

        def done(_result: Any) -> None:
            self.widget.prompts = self.crafter.prompts
            self.widget.status = f"{what}: done; review the prompts panel, then Generate with strategy 'evolved'"

        self._run(what, work, done=done)
        return None

    def _details(self, index: int) -> dict:
        """Compact hover details: what made the image, its content labels and marks (class, kind and
        round are already shown by the browser)."""
        sid = self.ids[index]
        row = self.crafter.samples.set_index("id").loc[sid]
        out: dict[str, Any] = {"id": sid}
        if row.get("source") == "generated":
            out["strategy"] = row.get("strategy", "")
            out["prompt"] = row.get("prompt", "")
        else:
            out["split"] = row.get("split", "")
            if row.get("caption"):
                out["caption"] = row["caption"]
        labels = self._point_labels.get(index)
        if labels:
            out["labels"] = ", ".join(labels[:6])
        for col in ("feedback", "feedback_labels", "flag_reason"):
            v = row.get(col)
            if v not in (None, "", "[]") and not (isinstance(v, float) and math.isnan(v)):
                out[col] = v
        out["image"] = self.crafter.image(sid)
        return out


def crafter_view(crafter: CrafterController) -> ipywidgets.Widget:
    """The notebook view of a DataCrafter: projection widget, controls and metrics in one layout."""
    view = CrafterView(crafter)
    view.layout.crafter_view = view  # keep the binding alive with the displayed layout
    return view.layout
