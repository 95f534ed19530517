"""The anywidget: the whole notebook UI (map, toolbar, gallery, generate, prompts, chart) as synced state.

`CrafterWidget` holds traits and carries two kinds of message: a named command from the browser
(``{"type": "command", "name", "args"}``), handed to the one handler registered with `on_command`,
and a hover request answered by `on_details`. It never touches models or the store; `CrafterView`
(ui/view.py) binds it to a controller and ui/commands.py is the table of what each command does.
The codecs that fill the binary traits are pure functions in ui/codecs.py.
"""

from __future__ import annotations

import logging
import pathlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import anywidget
import numpy as np
import pandas as pd
import traitlets as t
from PIL import Image

from .codecs import (
    COLOR_MODES,
    build_atlas,
    facets_from_frame,
    png_bytes,
    thumbnail,
    points_from_frame,
    selection_from_bytes,
    selection_to_bytes,
)
from .commands import COMMANDS

if TYPE_CHECKING:
    from ..controller.crafter import DataCrafter

__all__ = [
    "COMMANDS",
    "COLOR_MODES",
    "CrafterWidget",
    "build_atlas",
    "crafter_view",
    "points_from_frame",
    "selection_from_bytes",
    "selection_to_bytes",
]

log = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).parent.parent / "static"

CommandHandler = Callable[[str, Mapping[str, Any]], Any]
DetailsCallback = Callable[[int], Mapping[str, Any]]
# Thumbnails of point indices -> uint8 (k, tile, tile, 3); called only for what the browser asks for.
ThumbnailSource = Callable[[np.ndarray], np.ndarray]
PAGE_MAX = 256  # thumbnails per page: a 16 x 16 block of the browser's page texture


def _bytes_from_json(value: Any, _widget: Any) -> bytes:
    """Binary traits arrive from the browser as memoryviews; store them as bytes."""
    if value is None:
        return b""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    return memoryview(value).tobytes()


def _binary() -> t.Bytes:
    return t.Bytes(b"").tag(sync=True, from_json=_bytes_from_json)


class CrafterWidget(anywidget.AnyWidget):
    """Projection of all real and generated images with thumbnails, labels, lasso, feedback, the
    generate and prompts panels and the metrics chart, in one anywidget front end.

    Index i everywhere is row i of the frame that was shown.
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
    # A numeric column on a sequential scale: float32 per point (NaN: missing) and its range; empty: categories.
    color_values = _binary()
    color_scale = t.Dict().tag(sync=True)
    color_options = t.List(t.Unicode(), list(COLOR_MODES)).tag(sync=True)  # the colour menu
    filters = t.Dict({"show_test": False, "show_removed": False, "isolated": False, "hide": {}}).tag(sync=True)
    # The filter sidebar: fields [{field, title, names, members?}] and their codes (uint16, n per field).
    facets = t.List(t.Dict()).tag(sync=True)
    facet_codes = _binary()
    history = t.Dict({"undo": 0, "redo": 0}).tag(sync=True)  # feedback actions that can be undone / redone
    class_names = t.List(t.Unicode()).tag(sync=True)
    # Thumbnails travel on demand: the browser asks for the points it shows zoomed in ("thumbs"
    # messages), in pages of up to PAGE_MAX; this says how many exist, their size and which set
    # (a new version drops the browser's pages).
    thumbs = t.Dict({"count": 0, "tile": 32, "version": 0, "format": "png"}).tag(sync=True)
    thumb_size = t.Int(32).tag(sync=True)
    thumb_format = t.Enum(("png", "jpeg"), default_value="png")  # pages: lossless, or ~4x smaller for photos
    labels = t.List(t.Dict()).tag(sync=True)  # {text, x, y, n, members?: [int]}
    selection = _binary()  # uint32 point indices, sorted
    color_by = t.Unicode("class").tag(sync=True)
    progress = t.Dict({"running": False, "done": 0, "total": 0, "message": ""}).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    # The sample view: one image large with its provenance ({index, id, fields: [[name, text]]}; {}: closed),
    # the stored image and, after Regenerate, the image made again from that provenance.
    sample = t.Dict().tag(sync=True)
    sample_image = _binary()
    sample_regenerated = _binary()
    height = t.Int(520).tag(sync=True)  # the map's height in CSS px (the widget fills the cell's width)
    # The mouse wheel zooms the map when it has focus or with Ctrl / Cmd ("focus"), only with Ctrl / Cmd
    # ("modifier"), or always ("always"); otherwise the wheel scrolls the notebook.
    wheel_zoom = t.Enum(("focus", "modifier", "always"), default_value="focus").tag(sync=True)
    fullscreen = t.Bool(False).tag(sync=True)  # the widget covers the window (the toolbar's button, Escape)
    # The side panel: the Generate menu's strategies (empty: no panel) and each class's prompt with
    # its history ({class: {current, history: [{action, prompt}], mixture?}}).
    strategies = t.List(t.Unicode()).tag(sync=True)
    prompts = t.Dict().tag(sync=True)
    # The metrics chart below the map, rendered kernel-side to SVG (no Vega in the browser, no CDN),
    # in the colours of `theme`, which the browser sets from the host page ("light" or "dark").
    chart = t.Unicode("").tag(sync=True)
    theme = t.Unicode("light").tag(sync=True)
    # How the browser draws each image: instanced quads, point sprites, or "auto" (quads on a GPU,
    # points where WebGL runs in software, which draws instanced geometry ~20x slower). Read once
    # when the view is created.
    primitive = t.Enum(("auto", "quads", "points"), default_value="auto").tag(sync=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._command_handler: CommandHandler | None = None
        self._details_callback: DetailsCallback | None = None
        self._sample_callback: DetailsCallback | None = None
        self.sample_ids: list[str] = []  # the sample id of each point, when a controller shows them
        self._thumb_source: ThumbnailSource | None = None
        self._thumb_lock = threading.Lock()
        # Pages are read and encoded off the kernel's thread, one at a time, so hover and commands
        # are answered while a zoom loads its thumbnails.
        self._thumb_pool: ThreadPoolExecutor | None = None
        self.on_msg(self._on_custom_msg)

    def close(self) -> None:
        """Closes the widget and stops its thumbnail worker (pages not yet sent are dropped)."""
        pool = getattr(self, "_thumb_pool", None)  # close() also runs from __del__ of a half-built widget
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
            self._thumb_pool = None
        super().close()

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
        are sent on demand at `thumb_size` px (see `set_thumbnails`).
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
        self, images: Sequence[Image.Image] | np.ndarray, size: int | None = None, format: str | None = None
    ) -> None:
        """Thumbnails of the points, image i for point i; none is read until the browser shows it.

        `images` is a uint8 array (n, size, size, 3) or a list of PIL images (any mode or size,
        shrunk when asked for). format: "png" or "jpeg" for the pages sent.
        """
        tile = int(size or self.thumb_size)
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[3] != 3:
                raise ValueError(f"thumbnails must be a uint8 array (n, size, size, 3), got shape {images.shape}")
            array = images

            def source(idx: np.ndarray) -> np.ndarray:
                if array.shape[1:3] == (tile, tile):
                    return np.asarray(array[idx], dtype=np.uint8)
                return np.stack([thumbnail(array[i], tile) for i in idx])
        else:
            items = list(images)

            def source(idx: np.ndarray) -> np.ndarray:
                return np.stack([thumbnail(items[i], tile) for i in idx])

        self.set_thumbnail_source(source, len(images), size=tile, format=format)

    def set_thumbnail_source(
        self, source: ThumbnailSource | None, count: int, *, size: int | None = None, format: str | None = None
    ) -> None:
        """Thumbnails computed when the browser asks: `source(indices)` -> uint8 (k, size, size, 3).

        It runs in a worker thread for the points shown zoomed in (a few hundred at a time), so a
        map of a million points costs nothing here until someone zooms in. None: no thumbnails.
        """
        if format is not None:
            self.thumb_format = format
        if size is not None:
            self.thumb_size = int(size)
        if self.thumb_size < 1:
            raise ValueError(f"thumbnail size must be positive, got {self.thumb_size}")
        with self._thumb_lock:
            self._thumb_source = source
            self.thumbs = {
                "count": int(count) if source is not None else 0,
                "tile": int(self.thumb_size),
                "version": self.thumb_meta["version"] + 1,
                "format": self.thumb_format,
            }

    @property
    def thumb_meta(self) -> dict[str, Any]:
        """The `thumbs` trait, typed: count, tile, version, format."""
        meta: dict[str, Any] = dict(self.thumbs)
        return meta

    def thumbnail_tiles(self, indices: Iterable[int] | np.ndarray) -> np.ndarray:
        """uint8 (k, thumb_size, thumb_size, 3): the thumbnails of these points, from the source."""
        with self._thumb_lock:
            source, meta = self._thumb_source, self.thumb_meta
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64).ravel()
        if source is None:
            raise ValueError("this widget has no thumbnails; call set_thumbnails or set_thumbnail_source first")
        if len(idx) and (idx.min() < 0 or idx.max() >= meta["count"]):
            raise IndexError(f"thumbnail index out of range 0..{meta['count'] - 1}")
        tiles = np.asarray(source(idx), dtype=np.uint8) if len(idx) else np.zeros((0, meta["tile"], meta["tile"], 3))
        if tiles.shape != (len(idx), meta["tile"], meta["tile"], 3):
            raise ValueError(
                f"the thumbnail source returned shape {tiles.shape} for {len(idx)} indices; "
                f"expected ({len(idx)}, {meta['tile']}, {meta['tile']}, 3)"
            )
        return tiles.astype(np.uint8, copy=False)

    def thumbnail_page(self, indices: Iterable[int] | np.ndarray) -> tuple[bytes, dict]:
        """One page of thumbnails for these point indices (at most PAGE_MAX): the encoded image (tile k
        at column k % cols, row k // cols) and its grid info, as the browser receives it."""
        idx = np.asarray(list(indices) if not isinstance(indices, np.ndarray) else indices, dtype=np.int64).ravel()
        if len(idx) == 0 or len(idx) > PAGE_MAX:
            raise ValueError(f"a thumbnail page holds 1..{PAGE_MAX} indices, got {len(idx)}")
        meta = self.thumb_meta
        data, grid = build_atlas(self.thumbnail_tiles(idx), meta["tile"], format=meta["format"])
        grid["version"] = meta["version"]
        return data, grid

    def _answer_thumbs(self, content: Mapping[str, Any], buffers: Sequence[Any] | None) -> tuple[dict, list[bytes]]:
        """The reply to one "thumbs" request: {type, req, version, cols, tile, count, format} and the page."""
        req = content.get("req")
        version = int(content.get("version", -1))
        reply: dict[str, Any] = {"type": "thumbs", "req": req, "version": version}
        if version != self.thumb_meta["version"]:
            return {**reply, "stale": True}, []  # the set changed since the browser asked
        try:
            idx = selection_from_bytes(bytes(buffers[0]) if buffers else b"").astype(np.int64)
            data, grid = self.thumbnail_page(idx)
        except Exception as err:  # the browser shows marks for these points and says why
            log.warning("thumbnail page failed: %s", err)
            return {**reply, "error": f"thumbnails failed: {err}"}, []
        reply.update({k: grid[k] for k in ("cols", "rows", "tile", "count", "format")})
        return reply, [data]

    def _serve_thumbs(self, content: Mapping[str, Any], buffers: Sequence[Any] | None) -> None:
        copied = [bytes(b) for b in buffers or []]  # the comm may reuse its buffers once this returns

        def work() -> None:
            reply, out = self._answer_thumbs(content, copied)
            self.send(reply, buffers=out or None)

        if self._thumb_pool is None:
            self._thumb_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dcw-thumbs")
        self._thumb_pool.submit(work)

    def set_labels(self, labels: Sequence[Mapping[str, Any]]) -> None:
        """Content labels as words on the map: each {text, x, y, n, members (point indices, optional)}."""
        out = []
        for lab in labels:
            item = {"text": str(lab["text"]), "x": float(lab["x"]), "y": float(lab["y"]), "n": int(lab.get("n", 1))}
            if lab.get("members") is not None:
                item["members"] = [int(i) for i in lab["members"]]
            out.append(item)
        self.labels = out

    def set_color_values(self, values: np.ndarray | Sequence[float] | None) -> None:
        """Colours the points by these numbers (one per point) on a sequential scale with its colour bar;
        None goes back to the categories of `color_codes`."""
        arr = None if values is None else np.asarray(values, np.float32).reshape(-1)
        if arr is not None and len(arr) != self.n:
            raise ValueError(f"got {len(arr)} colour values for {self.n} points; pass one per point")
        finite = arr[np.isfinite(arr)] if arr is not None else np.zeros(0, np.float32)
        with self.hold_sync():
            self.color_values = b"" if arr is None else arr.astype("<f4").tobytes()
            self.color_scale = (
                {"min": float(finite.min()), "max": float(finite.max())} if arr is not None and len(finite) else {}
            )

    def set_facets(self, frame: pd.DataFrame, members: Mapping[str, Sequence[int]] | None = None) -> None:
        """The filter sidebar's fields from the shown frame (row i = point i) and the content labels'
        member point indices (see `facets_from_frame`)."""
        facets, codes = facets_from_frame(frame, members)
        with self.hold_sync():
            self.facets = facets
            self.facet_codes = codes

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

    # ----------------------------------------------------------------- messages
    def on_command(self, handler: CommandHandler | None) -> None:
        """Registers `handler(name, args)` for the browser's commands (one handler; None removes it).

        name is one of COMMANDS (ui/commands.py says what each carries); the selection is not in
        `args`: it is the selection trait. A str the handler returns becomes the status line.
        """
        self._command_handler = handler

    def on_details(self, callback: DetailsCallback | None) -> None:
        """Registers `callback(index) -> dict` for hover details.

        The dict maps field names to values shown as text (prompt, labels, provenance); an optional
        "image" key (PIL image or PNG bytes) is shown large.
        """
        self._details_callback = callback

    def run(self, name: str, args: Mapping[str, Any] | None = None) -> Any:
        """Runs a command as if its control was used in the browser; returns the handler's result.

        A failure is shown in the status line and raised."""
        if name not in COMMANDS:
            raise ValueError(f"unknown command {name!r}; expected one of {sorted(COMMANDS)}")
        result = None
        try:
            if self._command_handler is not None:
                result = self._command_handler(name, dict(args or {}))
        except Exception as err:  # shown to the person; the traceback goes to the log
            log.exception("command %s failed", name)
            self.status = f"{name} failed: {err}"
            self.send({"type": "result", "name": name, "ok": False, "message": self.status})
            raise
        message = result if isinstance(result, str) else ""
        if message:
            self.status = message
        self.send({"type": "result", "name": name, "ok": True, "message": message})
        return result

    def on_sample(self, callback: DetailsCallback | None) -> None:
        """Registers `callback(index) -> dict` for the sample view: every field worth reading (caption,
        prompt, seed, round, parent, feedback...) and an "image" (PIL image or PNG bytes)."""
        self._sample_callback = callback

    def show_sample(self, which: int | str | None) -> None:
        """Opens the sample view on a point (its index, or its sample id); None closes it."""
        if which is None:
            with self.hold_sync():
                self.sample, self.sample_image, self.sample_regenerated = {}, b"", b""
            return
        if isinstance(which, str):
            if which not in self.sample_ids:
                raise KeyError(f"no sample {which!r} on the map: use an id from crafter.samples['id']")
            index = self.sample_ids.index(which)
        else:
            index = int(which)
        if not 0 <= index < self.n:
            raise IndexError(f"point index {index} out of range 0..{self.n - 1}")
        callback = self._sample_callback or self._details_callback
        info = dict(callback(index) or {}) if callback is not None else {}
        png = png_bytes(info.pop("image", None)) or b""
        sid = self.sample_ids[index] if index < len(self.sample_ids) else str(index)
        fields = [[str(k), "" if v is None else str(v)] for k, v in info.items()]
        with self.hold_sync():
            self.sample_regenerated = b""
            self.sample_image = png
            self.sample = {"index": index, "id": sid, "fields": fields}

    def details(self, index: int) -> tuple[list[list[str]], bytes | None]:
        """Text fields and full-size PNG for point `index` from the details callback."""
        if not 0 <= index < self.n:
            raise IndexError(f"point index {index} out of range 0..{self.n - 1}")
        if self._details_callback is None:
            return [], None
        info = dict(self._details_callback(index) or {})
        png = png_bytes(info.pop("image", None))
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
        elif kind == "thumbs":
            self._serve_thumbs(content, buffers)
        elif kind == "command":
            name = str(content.get("name", ""))
            if name not in COMMANDS:
                self.status = f"unknown command {name!r} from the front end"
                log.warning(self.status)
                return
            args = content.get("args")
            try:
                self.run(name, args if isinstance(args, dict) else {})
            except Exception:
                pass  # already reported in status and the log; never kill the comm


def crafter_view(crafter: DataCrafter) -> CrafterWidget:
    """The notebook view of a DataCrafter: one CrafterWidget bound to it (see ui/view.py)."""
    from .view import CrafterView

    return CrafterView(crafter).widget


def __getattr__(name: str) -> Any:
    # CrafterView imports this module; name it here lazily so `from ui.widget import CrafterView` works.
    if name in ("CrafterView", "CrafterController"):
        from . import view

        return getattr(view, name)
    raise AttributeError(name)
