"""Runs the built widget bundle in a bare page with a minimal fake anywidget model.

No JupyterLab and no server: playwright's request routing answers every request to
http://dcw.test/ from memory. Used by the fast front-end browser tests and by
benchmarks/bench_widget.py. The fake model implements the small part of the anywidget model API
the widget uses (get / set / save_changes / on / off / send) and records what it sends; its
thumbnail requests go to the real CrafterWidget in this process (POST /msg), whose reply comes
back as the custom message a kernel would send.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[2]
STATIC = ROOT / "datacrafter_widget" / "static"
BASE = "http://dcw.test"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><link rel="stylesheet" href="/widget.css">
<style>body{margin:0;padding:8px;font-family:sans-serif} #host{width:%(width)dpx} %(css)s</style></head>
<body><div id="host"></div>
<script type="module">
class FakeModel {
  constructor(state) { this.state = state; this.handlers = {}; this.sent = []; this.saves = 0; }
  get(k) { return this.state[k]; }
  set(k, v) { this.state[k] = v; (this.handlers["change:" + k] || []).slice().forEach((f) => f()); }
  save_changes() { this.saves++; }
  on(e, f) { (this.handlers[e] = this.handlers[e] || []).push(f); }
  off(e, f) { this.handlers[e] = (this.handlers[e] || []).filter((g) => g !== f); }
  send(content, callbacks, buffers) {
    this.sent.push({ content, buffers: (buffers || []).map((b) => Array.from(new Uint32Array(b))) });
    if (content && content.type === "thumbs") this.ask(content, buffers);
  }
  async ask(content, buffers) {  // the kernel's side of a thumbnail request: the widget in the test's process
    const body = buffers && buffers.length ? new Uint8Array(buffers[0]) : new Uint8Array(0);
    const r = await fetch("/msg?content=" + encodeURIComponent(JSON.stringify(content)), { method: "POST", body });
    const reply = JSON.parse(r.headers.get("x-content"));
    const data = await r.arrayBuffer();
    this.emit(reply, data.byteLength ? [new DataView(data)] : []);
  }
  emit(msg, buffers) { (this.handlers["msg:custom"] || []).slice().forEach((f) => f(msg, buffers || [])); }
}
window.FakeModel = FakeModel;
const state = await (await fetch("/state.json")).json();
for (const k of state.__binary__) state[k] = new DataView(await (await fetch("/bin/" + k)).arrayBuffer());
delete state.__binary__;
const mod = await import("/widget.js");
window.__model = new FakeModel(state);
window.__tRender = performance.now();
window.__cleanup = mod.default.render({ model: window.__model, el: document.getElementById("host") });
window.__rendered = true;
</script></body></html>
"""


def synthetic_frame(n: int, classes: int = 4, seed: int = 0) -> pd.DataFrame:
    """Random clustered projection with real/generated points, rounds, feedback and flags."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    centers = rng.uniform(-10, 10, (classes, 2))
    xy = centers[label] + rng.normal(0, 2.5, (n, 2))
    generated = rng.random(n) < 0.6
    return pd.DataFrame(
        {
            "x": xy[:, 0].astype(np.float32),
            "y": xy[:, 1].astype(np.float32),
            "label": [f"class {k}" for k in label],
            "source": np.where(generated, "generated", "real"),
            "round": np.where(generated, rng.integers(1, 4, n), 0),
            "feedback": "",
            "flag": "",
        }
    )


def synthetic_thumbnails(frame: pd.DataFrame, size: int = 32) -> np.ndarray:
    """uint8 (n, size, size, 3) coloured squares with a lighter centre, one colour per class."""
    classes = sorted(frame["label"].unique())
    palette = np.array([[230, 80, 60], [60, 140, 230], [70, 190, 90], [240, 190, 40], [160, 90, 200]], np.uint8)
    idx = frame["label"].map({c: k for k, c in enumerate(classes)}).to_numpy() % len(palette)
    tiles = np.repeat(palette[idx][:, None, None, :], size, 1).repeat(size, 2)
    q = size // 4
    tiles[:, q:-q, q:-q, :] = np.minimum(255, tiles[:, q:-q, q:-q, :].astype(int) + 70).astype(np.uint8)
    return tiles


class WidgetState(dict):
    """The synced state of a widget, and the widget that answers the page's thumbnail requests."""

    widget: Any = None


def answer(widget: Any, query: str, body: bytes) -> tuple[dict, bytes]:
    """The widget's reply to a message the page POSTed to /msg (content in the query string)."""
    import urllib.parse

    content = json.loads(urllib.parse.parse_qs(query)["content"][0])
    reply, out = widget._answer_thumbs(content, [body])
    return reply, out[0] if out else b""


def widget_state(widget: Any) -> WidgetState:
    """The synced state of a CrafterWidget, as the page's fake model will hold it."""
    keys = [
        "xy",
        "kind",
        "cls",
        "round",
        "feedback",
        "flag",
        "class_names",
        "thumbs",
        "thumb_size",
        "labels",
        "selection",
        "color_by",
        "progress",
        "prompts",
        "status",
        "height",
        "fullscreen",
        "wheel_zoom",
        "sample",
        "sample_image",
        "sample_regenerated",
        "primitive",
        "hidden",
        "color_codes",
        "color_names",
        "color_values",
        "color_scale",
        "color_options",
        "filters",
        "facets",
        "facet_codes",
        "history",
        "strategies",
        "chart",
        "theme",
    ]
    state = WidgetState({k: getattr(widget, k) for k in keys})
    state.widget = widget
    return state


class _Server:
    """A local HTTP server in a thread for large payloads (playwright routing copies bodies slowly)."""

    def __init__(self, files: dict, widget: Any = None) -> None:
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server API)
                path = self.path.split("?")[0]
                if path not in files:
                    self.send_error(404)
                    return
                ctype, body = files[path]
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                path, _, query = self.path.partition("?")
                if path != "/msg" or widget is None:
                    self.send_error(404)
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                reply, data = answer(widget, query, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("x-content", json.dumps(reply))
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def open_standalone(
    page: Any,
    state: dict,
    width: int = 900,
    timeout_ms: int = 60000,
    http: bool = False,
    css: str = "",
    static: pathlib.Path | None = None,
) -> Any:
    """Serves the bundle + state to `page` and renders the widget; waits until it has drawn.

    http=True serves from a local HTTP server in a thread (returned; call .close()) instead of
    playwright routing, for the 100 MB payloads of the benchmark. `css` is added to the page's
    style (e.g. a host theme's variables). `static` is another folder with widget.js and widget.css
    (e.g. an older commit's bundle, for a benchmark's baseline).
    """
    static = static or STATIC
    binary = {k: v for k, v in state.items() if isinstance(v, (bytes, bytearray))}
    plain = {k: v for k, v in state.items() if k not in binary}
    plain["__binary__"] = sorted(binary)
    files = {
        "/": ("text/html", (PAGE % {"width": width, "css": css}).encode()),
        "/widget.js": ("text/javascript", (static / "widget.js").read_bytes()),
        "/widget.css": ("text/css", (static / "widget.css").read_bytes()),
        "/state.json": ("application/json", json.dumps(plain).encode()),
    }
    for k, v in binary.items():
        files[f"/bin/{k}"] = ("application/octet-stream", bytes(v))

    widget = getattr(state, "widget", None)

    def handle(route: Any) -> None:
        path, _, query = route.request.url[len(BASE) :].partition("?")
        path = path or "/"
        if path == "/msg" and widget is not None:
            reply, data = answer(widget, query, route.request.post_data_buffer or b"")
            route.fulfill(status=200, headers={"x-content": json.dumps(reply)}, body=data)
        elif path in files:
            ctype, body = files[path]
            route.fulfill(status=200, content_type=ctype, body=body)
        else:
            route.fulfill(status=404, body=b"not found")

    server = None
    if http:
        server = _Server(files, widget)
        page.goto(server.url + "/")
    else:
        page.route(BASE + "/**", handle)
        page.goto(BASE + "/")
    page.wait_for_function("window.__rendered === true && window.__dcw && window.__dcw.length > 0", timeout=timeout_ms)
    page.wait_for_function("window.__dcw[0].frames > 0", timeout=timeout_ms)
    return server


def wait_thumbnails(page: Any, timeout_ms: int = 30000) -> dict:
    """Waits until every point in view that can show a thumbnail has it (pages asked for and received),
    draws a frame, and returns the widget's thumbnail counters."""
    h = "window.__dcw[window.__dcw.length - 1]"
    page.wait_for_function(
        f"{h}.thumbsShown && {h}.thumbsReady",  # counters of the current view: none missing, none on the way
        timeout=timeout_ms,
    )
    page.evaluate(f"{h}.drawNow()")
    return page.evaluate(f"{h}.thumbStats")


def thumbnails_as_images(tiles: np.ndarray) -> list[Image.Image]:
    return [Image.fromarray(t) for t in tiles]
