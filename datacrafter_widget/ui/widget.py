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
    color_options = t.List(t.Unicode(), list(COLOR_MODES)).tag(sync=True)  # the colour menu
    filters = t.Dict({"show_test": False, "show_removed": False, "isolated": False, "hide": {}}).tag(sync=True)
    # The filter sidebar: fields [{field, title, names, members?}] and their codes (uint16, n per field).
    facets = t.List(t.Dict()).tag(sync=True)
    facet_codes = _binary()
    history = t.Dict({"undo": 0, "redo": 0}).tag(sync=True)  # feedback actions that can be undone / redone
    class_names = t.List(t.Unicode()).tag(sync=True)
    atlas = _binary()  # PNG (or JPEG) sprite atlas
    atlas_grid = t.Dict().tag(sync=True)  # cols, rows, tile, count, width, height, format
    thumb_size = t.Int(32).tag(sync=True)
    labels = t.List(t.Dict()).tag(sync=True)  # {text, x, y, n, members?: [int]}
    selection = _binary()  # uint32 point indices, sorted
    color_by = t.Unicode("class").tag(sync=True)
    progress = t.Dict({"running": False, "done": 0, "total": 0, "message": ""}).tag(sync=True)
    status = t.Unicode("").tag(sync=True)
    height = t.Int(520).tag(sync=True)  # the map's height in CSS px (the widget fills the cell's width)
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
