"""Python side of the widget: the codecs, selection sync, typed commands, hover details, the display."""

from __future__ import annotations

import io
import pathlib
import shutil
import subprocess
import time

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datacrafter_widget.ui.codecs import thumbnail
from datacrafter_widget.ui.commands import COMMANDS, Generate, PromptRevert, parse
from datacrafter_widget.ui.widget import (
    CrafterWidget,
    build_atlas,
    points_from_frame,
    selection_from_bytes,
    selection_to_bytes,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def colour(i: int) -> tuple[int, int, int]:
    return (i * 37 % 256, i * 91 % 256, i * 53 % 256)


def frame(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "x": np.linspace(0, 1, n),
            "y": np.linspace(1, 0, n),
            "label": ["cat", "dog"] * (n // 2),
            "source": ["real"] * (n // 2) + ["generated"] * (n - n // 2),
            "round": [0] * (n // 2) + [2] * (n - n // 2),
            "feedback": ["", "good", "bad", "removed"] + [""] * (n - 4),
            "flag": [""] * (n - 1) + ["off-class"],
        }
    )


# ----------------------------------------------------------------- atlas
def test_atlas_places_each_thumbnail_in_its_tile() -> None:
    images = [Image.new("RGB", (40, 30), colour(i)) for i in range(10)]
    images[3] = images[3].convert("L").convert("RGB")  # any mode is fine
    images[4] = Image.new("RGBA", (20, 20), colour(4) + (255,))
    png, grid = build_atlas(images, size=16)
    assert grid == {"cols": 4, "rows": 3, "tile": 16, "count": 10, "width": 64, "height": 48, "format": "png"}
    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert sheet.shape == (48, 64, 3)
    for i, im in enumerate(images):
        r, c = divmod(i, 4)
        tile = sheet[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16]
        expected = np.asarray(im.convert("RGB"))[0, 0]
        assert (tile == expected).all(), f"tile {i} has the wrong pixels"
    assert (sheet[32:, 32:] == 0).all()  # unused cells stay black


def test_atlas_shrinks_tiles_to_fit_the_texture_limit() -> None:
    arr = np.zeros((50, 8, 8, 3), np.uint8)
    arr[:, :, :, 0] = np.arange(50)[:, None, None]
    png, grid = build_atlas(arr, size=8, max_side=64)  # 8 cols x 8 px = 64
    assert grid["tile"] == 8 and grid["cols"] == 8 and grid["width"] <= 64
    _, grid = build_atlas([Image.new("RGB", (32, 32))] * 50, size=32, max_side=64)
    assert grid["tile"] == 8 and grid["width"] == 64
    with pytest.raises(ValueError, match="do not fit"):
        build_atlas([Image.new("RGB", (4, 4))] * 500, size=32, max_side=64)
    assert build_atlas([], size=32)[0] == b""
    assert build_atlas(arr, size=8)[1]["format"] == "png"  # auto: PNG for small sets
    jpg, grid = build_atlas(arr, size=8, format="jpeg")
    assert jpg[:2] == b"\xff\xd8" and grid["format"] == "jpeg"
    with pytest.raises(ValueError, match="format"):
        build_atlas(arr, format="gif")


def test_atlas_for_50000_thumbnails_fits_8192() -> None:
    arr = np.zeros((50_000, 32, 32, 3), np.uint8)
    data, grid = build_atlas(arr, size=32)
    assert grid["width"] <= 8192 and grid["height"] <= 8192 and grid["tile"] == 32
    assert grid["format"] == "jpeg" and data[:2] == b"\xff\xd8"  # auto: JPEG for large sets


# ----------------------------------------------------------------- point arrays
def test_points_from_frame_encodes_attributes() -> None:
    pts = points_from_frame(frame(), class_names=["cat", "dog", "fox"])
    xy = np.frombuffer(pts["xy"], "<f4").reshape(-1, 2)
    assert np.allclose(xy[:, 0], np.linspace(0, 1, 6)) and np.allclose(xy[:, 1], np.linspace(1, 0, 6))
    assert np.frombuffer(pts["cls"], "<u2").tolist() == [0, 1, 0, 1, 0, 1]
    assert np.frombuffer(pts["kind"], np.uint8).tolist() == [0, 0, 0, 1, 1, 1]
    assert np.frombuffer(pts["round"], "<u2").tolist() == [0, 0, 0, 2, 2, 2]
    assert np.frombuffer(pts["feedback"], np.uint8).tolist() == [0, 1, 2, 3, 0, 0]
    assert np.frombuffer(pts["flag"], np.uint8).tolist() == [0, 0, 0, 0, 0, 1]
    assert pts["class_names"] == ["cat", "dog", "fox"]
    assert points_from_frame(frame())["class_names"] == ["cat", "dog"]


def test_points_from_frame_rejects_bad_input_clearly() -> None:
    with pytest.raises(KeyError, match="x"):
        points_from_frame(pd.DataFrame({"y": [1.0]}))
    bad = frame()
    bad.loc[0, "x"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        points_from_frame(bad)
    with pytest.raises(ValueError, match="not in class_names"):
        points_from_frame(frame(), class_names=["cat"])
    bad = frame()
    bad.loc[0, "feedback"] = "meh"
    with pytest.raises(ValueError, match="feedback"):
        points_from_frame(bad)


# ----------------------------------------------------------------- selection
def test_selection_bytes_round_trip() -> None:
    b = selection_to_bytes([5, 1, 5, 3])
    assert b == np.array([1, 3, 5], "<u4").tobytes()
    assert selection_from_bytes(b).tolist() == [1, 3, 5]
    assert selection_from_bytes(memoryview(b)).dtype == np.uint32
    assert selection_to_bytes([]) == b"" and selection_from_bytes(b"").size == 0
    assert selection_to_bytes(np.array([2.0, 1.0])) == np.array([1, 2], "<u4").tobytes()
    with pytest.raises(IndexError):
        selection_to_bytes([0, 6], n=6)
    with pytest.raises(IndexError):
        selection_to_bytes([-1])
    with pytest.raises(TypeError):
        selection_to_bytes([0.5])


def test_selection_from_browser_updates_python_once() -> None:
    w = CrafterWidget()
    w.set_frame(frame())
    seen = []
    w.observe(lambda ch: seen.append(selection_from_bytes(ch["new"]).tolist()), names="selection")
    # What ipywidgets does with a state update from the browser: buffers arrive as memoryviews.
    w.set_state({"selection": memoryview(np.array([1, 4], "<u4").tobytes())})
    assert w.selected.tolist() == [1, 4] and seen == [[1, 4]]
    assert isinstance(w.selection, bytes)
    w.set_state({"selection": memoryview(np.array([1, 4], "<u4").tobytes())})  # same value: no event
    assert seen == [[1, 4]]
    w.selected = [0, 2]
    assert seen[-1] == [0, 2]
    with pytest.raises(IndexError):
        w.selected = [99]


def test_state_serialises_binary_traits_as_buffers() -> None:
    w = CrafterWidget()
    w.set_frame(frame(), thumbnails=[Image.new("RGB", (8, 8), colour(i)) for i in range(6)])
    state = w.get_state()
    assert isinstance(state["xy"], bytes) and len(state["xy"]) == 6 * 8
    assert state["thumbs"]["count"] == 6 and state["thumbs"]["tile"] == 32
    assert "atlas" not in state  # thumbnails travel on demand, never in the state


def _ask(w: CrafterWidget, indices: list[int], version: int | None = None) -> tuple[dict, list]:
    """Sends a "thumbs" request as the browser does and waits for the reply the widget sends."""
    import threading

    got: list = []
    done = threading.Event()

    def send(content: dict, buffers: list | None = None) -> None:
        got.append((content, buffers or []))
        done.set()

    w.send = send  # type: ignore[method-assign]
    v = w.thumbs["version"] if version is None else version
    content = {"type": "thumbs", "req": 7, "version": v}
    w._on_custom_msg(w, content, [memoryview(np.array(indices, "<u4").tobytes())])
    assert done.wait(10), "no thumbnail reply"
    return got[0]


def test_thumbnails_are_sent_on_request_in_pages() -> None:
    """Nothing is encoded when the frame is set; a "thumbs" request gets one page of exactly those
    points, tile k of the sheet being the k-th index asked for."""
    calls: list[list[int]] = []
    w = CrafterWidget()
    w.set_frame(frame(6))

    def source(idx: np.ndarray) -> np.ndarray:
        calls.append(idx.tolist())
        return np.stack([np.full((32, 32, 3), colour(int(i)), np.uint8) for i in idx])

    w.set_thumbnail_source(source, 6)
    assert calls == [] and w.thumbs["count"] == 6
    reply, buffers = _ask(w, [4, 1])
    assert calls == [[4, 1]] and reply["req"] == 7 and reply["count"] == 2 and reply["cols"] == 2
    sheet = np.asarray(Image.open(io.BytesIO(bytes(buffers[0]))).convert("RGB"))
    assert sheet[16, 16].tolist() == list(colour(4)) and sheet[16, 48].tolist() == list(colour(1))
    # A request for an older set (the points changed meanwhile) is answered "stale", without work.
    w.set_thumbnails(np.zeros((6, 32, 32, 3), np.uint8))
    reply, buffers = _ask(w, [0], version=reply["version"])
    assert reply.get("stale") and buffers == [] and len(calls) == 1
    # A failing source or a bad index is an error reply naming it, not a dead comm.
    reply, _ = _ask(w, [9])
    assert "out of range" in reply["error"]


def test_thumbnails_of_large_photos_are_shrunk_cheaply() -> None:
    """A 512 px photo becomes a 32 px thumbnail of its centre square (reduced before resampling)."""
    img = Image.new("RGB", (768, 512), (10, 20, 30))
    img.paste((200, 0, 0), (128, 0, 640, 512))  # the centre square is red, the sides dark
    t = thumbnail(img, 32)
    assert t.shape == (32, 32, 3) and t[16, 16].tolist() == [200, 0, 0] and t[:, 0].max() > 150


def test_set_frame_keeps_selection_that_still_exists() -> None:
    w = CrafterWidget()
    w.set_frame(frame(6))
    w.selected = [1, 5]
    w.set_frame(frame(4))
    assert w.n == 4 and w.selected.tolist() == [1]
    with pytest.raises(ValueError, match="thumbnails"):
        w.set_frame(frame(4), thumbnails=[Image.new("RGB", (4, 4))])


# ----------------------------------------------------------------- actions and details
def test_command_message_reaches_the_one_handler() -> None:
    w = CrafterWidget()
    w.set_frame(frame())
    sent = []
    w.send = lambda content, buffers=None: sent.append((content, buffers))
    calls = []
    w.on_command(lambda name, args: calls.append((name, dict(args))) or f"{name} x{len(w.selected)}")
    w.selected = [2, 3]
    # A stray buffer is ignored: the selection trait is the only channel for the selection.
    w._on_custom_msg(w, {"type": "command", "name": "bad", "args": {}}, [np.array([7], "<u4").tobytes()])
    assert calls == [("bad", {})]
    assert w.status == "bad x2"
    assert sent[-1][0] == {"type": "result", "name": "bad", "ok": True, "message": "bad x2"}
    w._on_custom_msg(w, {"type": "command", "name": "unwanted_label", "args": {"label": "blurry"}}, [])
    assert calls[-1] == ("unwanted_label", {"label": "blurry"})
    w._on_custom_msg(w, {"type": "command", "name": "rm -rf", "args": {}}, [])
    assert "unknown command" in w.status and len(calls) == 2


def test_failing_handler_reports_in_status_and_keeps_the_comm_alive() -> None:
    w = CrafterWidget()
    w.set_frame(frame())
    w.send = lambda content, buffers=None: None

    def boom(name: str, args: dict) -> None:
        raise RuntimeError("no generator loaded")

    w.on_command(boom)
    w._on_custom_msg(w, {"type": "command", "name": "generate", "args": {}}, [])  # does not raise
    assert w.status == "generate failed: no generator loaded"
    with pytest.raises(RuntimeError):
        w.run("generate")
    w.on_command(None)
    assert w.run("generate") is None
    with pytest.raises(ValueError, match="unknown command"):
        w.run("explode")
    assert set(COMMANDS) >= {"bad", "good", "remove", "evolve", "generate", "cancel", "unwanted_label"}


def test_command_arguments_are_typed() -> None:
    """Each command's arguments are a frozen dataclass; JSON that does not fit is refused by name."""
    assert parse(COMMANDS["generate"], {"strategy": "class", "count": 3}) == Generate("class", 3, "")
    assert parse(COMMANDS["generate"], {"count": 3.0}).count == 3  # a JSON number that is whole
    assert parse(COMMANDS["prompt_revert"], {"class_name": "cat", "index": None}) == PromptRevert("cat", None)
    with pytest.raises(TypeError, match="count must be int"):
        parse(COMMANDS["generate"], {"count": "many"})
    with pytest.raises(TypeError, match="count must be int"):
        parse(COMMANDS["generate"], {"count": True})
    with pytest.raises(TypeError, match=r"takes .*not \['indices'\]"):
        parse(COMMANDS["bad"], {"indices": [1]})
    with pytest.raises(TypeError, match="missing"):
        parse(COMMANDS["prompt_edit"], {"class_name": "cat"})


def test_details_reply_carries_text_fields_and_png() -> None:
    w = CrafterWidget()
    w.set_frame(frame())
    sent = []
    w.send = lambda content, buffers=None: sent.append((content, buffers))
    w.on_details(
        lambda i: {
            "prompt": f"a photo of {i}",
            "seed": 7,
            "parent": None,
            "image": Image.new("RGB", (64, 48), (1, 2, 3)),
        }
    )
    w._on_custom_msg(w, {"type": "details", "index": 2}, [])
    content, buffers = sent[-1]
    assert content == {
        "type": "details",
        "index": 2,
        "fields": [["prompt", "a photo of 2"], ["seed", "7"], ["parent", ""]],
    }
    img = Image.open(io.BytesIO(buffers[0]))
    assert img.size == (64, 48) and img.getpixel((0, 0)) == (1, 2, 3)
    # Out-of-range and failing callbacks answer with an error field instead of breaking.
    w._on_custom_msg(w, {"type": "details", "index": 99}, [])
    assert sent[-1][0]["fields"][0][0] == "error" and sent[-1][1] is None
    w.on_details(None)
    assert w.details(1) == ([], None)


# ----------------------------------------------------------------- bundle
def test_widget_loads_the_built_bundle() -> None:
    esm = (ROOT / "datacrafter_widget" / "static" / "widget.js").read_text()
    assert "render" in esm and "webgl2" in esm
    assert CrafterWidget()._esm == esm
    assert "innerHTML" not in esm and "insertAdjacentHTML" not in esm  # text goes in as text


@pytest.mark.skipif(
    not (ROOT / "js" / "node_modules" / "esbuild").exists() or shutil.which("node") is None,
    reason="needs `npm ci` in js/",
)
def test_committed_bundle_matches_sources(tmp_path: pathlib.Path) -> None:
    subprocess.run(["node", "build.mjs", f"--outdir={tmp_path}"], cwd=ROOT / "js", check=True, capture_output=True)
    for name in ("widget.js", "widget.css"):
        assert (tmp_path / name).read_bytes() == (ROOT / "datacrafter_widget" / "static" / name).read_bytes(), (
            f"static/{name} is stale: run `npm run build` in js/"
        )


# ----------------------------------------------------------------- the real controller behind the view
@pytest.fixture(scope="module")
def crafter(tmp_path_factory: pytest.TempPathFactory):
    import datacrafter_widget as dc

    c = dc.DataCrafter(dc.starter.colored_digits(shots=2), project=tmp_path_factory.mktemp("proj") / "p")
    yield c
    c.close()


def test_crafter_view_shows_every_sample_and_syncs_selection(crafter) -> None:
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    w = view.widget
    samples = crafter.samples
    assert w.n == len(samples) and view.ids == samples["id"].tolist()
    assert w.class_names == list(crafter.classes) and w.thumbs["count"] == len(samples)
    # Lasso in the browser -> crafter.selection holds the sample ids.
    w.set_state({"selection": memoryview(np.array([0, 3, 7], "<u4").tobytes())})
    assert crafter.selection == [view.ids[0], view.ids[3], view.ids[7]]
    # Python sets crafter.selection -> highlighted in the widget.
    crafter.selection = [view.ids[5], view.ids[1]]
    assert w.selected.tolist() == [1, 5]


def test_crafter_view_buttons_reach_the_store(crafter) -> None:
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    w = view.widget
    w.send = lambda content, buffers=None: None
    atlas_changes = []
    w.observe(lambda ch: atlas_changes.append(1), names="thumbs")
    view.wait()  # the first map (none here: no embedder) and the metrics run in the background
    w.set_state({"selection": memoryview(np.array([2, 4], "<u4").tobytes())})  # the selection's only channel
    hidden_sends = []
    for name in ("xy", "cls", "kind"):
        w.observe(lambda ch: hidden_sends.append(ch["name"]), names=name)
    w._on_custom_msg(w, {"type": "command", "name": "bad", "args": {}}, [])
    assert atlas_changes == []  # feedback redraws colours, the thumbnails are not resent
    s = crafter.samples.set_index("id")
    assert s.loc[[view.ids[2], view.ids[4]], "feedback"].tolist() == ["bad", "bad"]
    assert w.status.startswith("marked bad: 2 images") and hidden_sends == []  # only the feedback array is resent
    assert np.frombuffer(w.feedback, np.uint8)[[2, 4]].tolist() == [2, 2]  # redrawn from the "feedback" event
    # Generating without a generator: the controller's clear error lands in the status line.
    w._on_custom_msg(w, {"type": "command", "name": "generate", "args": {"strategy": "class", "count": 1}}, [])
    assert w.status.startswith("generate failed:") and "generator" in w.status
    # Evolve runs in a worker thread; without models its clear error comes back the same way.
    w.set_state({"selection": memoryview(np.array([2], "<u4").tobytes())})
    w._on_custom_msg(w, {"type": "command", "name": "evolve", "args": {}}, [])
    with pytest.raises(Exception, match="generator"):
        view._job.wait(timeout=60)
    for _ in range(100):  # the job's last listener call runs just after wait() returns
        if "failed" in w.status:
            break
        time.sleep(0.05)
    assert w.status.startswith("evolving prompts for ") and "failed" in w.status and "generator" in w.status
    assert w.progress["running"] is False
    fields, png = w.details(2)
    names = dict(fields)
    assert names["id"] == view.ids[2] and names["feedback"] == "bad" and "caption" in names
    assert Image.open(io.BytesIO(png)).size == crafter.store.image(view.ids[2]).size


def test_crafter_view_follows_the_projection(crafter) -> None:
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    ids = crafter.samples["id"].tolist()
    rng = np.random.default_rng(0)
    xy = rng.normal(size=(len(ids), 2)).astype(np.float32)
    proj = pd.DataFrame(
        {
            "kind": ["image"] * len(ids) + ["label", "label"],
            "id": ids + ["", ""],
            "text": [""] * len(ids) + ["red", "<b>thin</b>"],
            "x": list(xy[:, 0]) + [-5.0, 5.0],
            "y": list(xy[:, 1]) + [0.0, 0.0],
        }
    )
    crafter.set_projection(proj)
    got = np.frombuffer(view.widget.xy, "<f4").reshape(-1, 2)
    assert np.allclose(got, xy)
    labels = view.widget.labels
    assert [lab["text"] for lab in labels] == ["red", "<b>thin</b>"]
    train = (crafter.samples["split"] != "test").to_numpy()  # held-out test images are off the map by default
    left = sorted(np.flatnonzero((xy[:, 0] < 0) & train).tolist())  # nearest label: x=-5 vs x=5
    assert labels[0]["members"] == left and labels[0]["n"] == len(left)
    # Each label sits on one of its members (the densest group), never in empty space between clusters.
    assert any(np.allclose([labels[0]["x"], labels[0]["y"]], xy[i]) for i in left)
    assert np.frombuffer(view.widget.hidden, np.uint8).tolist() == (~train).astype(np.uint8).tolist()
    assert set(np.frombuffer(view.widget.kind, np.uint8)[~train].tolist()) == {2}


def test_crafter_view_shows_metrics_once_there_are_rounds(crafter, monkeypatch) -> None:
    """The chart is SVG drawn in the kernel (no Vega in the browser), in the page's light or dark colours."""
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    view.wait()
    assert view.widget.chart == ""  # no rounds yet: no chart
    # Round 0 alone, its held-out student still training: nothing to plot, so no title-only box either.
    table = {"df": pd.DataFrame({"round": [0], "n_generated": [np.nan], "student_acc": [np.nan]})}
    monkeypatch.setattr(type(crafter), "metrics_table", lambda self, progress=True: table["df"])
    view.update_metrics()
    assert view.widget.chart == "" and "unavailable" not in view.widget.status
    # crafter.metrics is a computed property (one row per round); stand in for two rounds of it.
    table["df"] = pd.DataFrame({"round": [1], "distance": [0.4], "diversity": [0.2]})
    view.update_metrics()
    light = view.widget.chart
    assert light.startswith("<svg") and "distance" in light and "diversity" in light
    table["df"] = pd.DataFrame({"round": [1, 2], "distance": [0.4, 0.3], "diversity": [0.2, 0.25]})
    view.update_metrics()
    assert view.widget.chart != light
    two = view.widget.chart
    view.widget.theme = "dark"  # what the browser reports on a dark page
    assert view.widget.chart != two and view.widget.chart.startswith("<svg")


def test_crafter_view_tools_reach_the_controller(crafter) -> None:
    """Every toolbar action goes through the controller's twin: search, undo / redo, gallery marks,
    filters, isolate, colour by a column, prompt edits; test images are never marked."""
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    view.wait()
    w = view.widget
    w.send = lambda content, buffers=None: None
    act = lambda name, **args: w._on_custom_msg(w, {"type": "command", "name": name, "args": args}, [])  # noqa: E731
    s = crafter.samples
    test = (s["split"] == "test").to_numpy()
    # Search: the matches on the map become the selection (test images are off the map).
    act("search", query="blue", mode="text")
    want = [i for i in crafter.search("blue", select=False) if not test[view._index[i]]]
    assert want and crafter.selection == want and w.selected.tolist() == sorted(view._index[i] for i in want)
    # Bad, then undo and redo, through the buttons.
    fb = lambda: crafter.samples.set_index("id").loc[want, "feedback"].tolist()  # noqa: E731
    before, undo0 = fb(), w.history["undo"]  # the module's crafter may carry marks from earlier tests
    act("bad")
    assert fb() == ["bad"] * len(want) and w.history == {"undo": undo0 + 1, "redo": 0}
    act("undo")
    assert fb() == before and w.history == {"undo": undo0, "redo": 1}
    act("redo")
    assert fb() == ["bad"] * len(want)
    # One image from the gallery; a test image is refused.
    i = view._index[want[0]]
    act("gallery_mark", index=i, value="good")
    assert crafter.samples.set_index("id").at[want[0], "feedback"] == "good"
    t = int(np.flatnonzero(test)[0])
    act("gallery_mark", index=t, value="bad")
    assert "never marked" in w.status and crafter.samples["feedback"].to_numpy()[t] == ""
    w.selected = [t, i]
    act("remove")
    assert "1 held-out test images skipped" in w.status
    assert crafter.samples.set_index("id").at[want[0], "feedback"] == "removed"
    assert np.frombuffer(w.hidden, np.uint8)[i] == 1 and w.selected.tolist() == []  # removed: off the map
    # Filters and isolate are the controller's view state.
    act("filter", show_test=True)
    assert crafter.view.show_test and np.frombuffer(w.hidden, np.uint8)[t] == 0 and w.filters["show_test"]
    w.selected = [1, 2]
    act("isolate")
    assert crafter.view.isolate == (view.ids[1], view.ids[2]) and np.frombuffer(w.hidden, np.uint8).sum() == len(s) - 2
    act("isolate", clear=True)
    assert crafter.view.isolate is None
    # Colour by a column: codes and names come from Python.
    w.color_by = "split"
    assert crafter.view.color_by == "split" and set(w.color_names) >= {"train", "test"}
    assert len(np.frombuffer(w.color_codes, "<u2")) == len(s)
    # Prompt edits.
    cls = crafter.classes[2]
    act("prompt_edit", class_name=cls, prompt="a photo of a two")
    assert w.prompts[cls]["current"] == "a photo of a two" and "saved" in w.status
    act("prompt_revert", class_name=cls, index=0)
    assert [h["action"] for h in crafter.prompts[cls]["history"]] == ["edit", "revert"]
    # Generate "evolved" without a generator: the controller's error, in full, in the status line.
    act("generate", strategy="evolved", count=1)
    assert w.status.startswith("generate failed:") and "generator" in w.status


def test_slow_metrics_never_block_evolve(crafter, monkeypatch) -> None:
    """The metrics chart's computation (it may train a held-out student) runs quietly apart: while it
    runs, Evolve still starts and shows its own outcome, and a second request (a round that finished)
    starts at once, not queued behind the first."""
    import threading

    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    view.wait()
    release, calls = threading.Event(), []

    def slow_metrics(self, progress=True, train=True):
        calls.append(1)
        release.wait(30)
        return pd.DataFrame()

    monkeypatch.setattr(type(crafter), "metrics_table", slow_metrics)
    view._metrics_in_background()
    view._metrics_in_background()  # while the first runs: starts too
    assert view._quick_job is not None and view._quick_job.is_alive()
    for _ in range(100):
        if len(calls) == 2:
            break
        time.sleep(0.05)
    assert len(calls) == 2  # both running before either ends
    w = view.widget
    w.send = lambda content, buffers=None: None
    w.set_state({"selection": memoryview(np.array([2], "<u4").tobytes())})
    w._on_custom_msg(w, {"type": "command", "name": "evolve", "args": {}}, [])
    assert "background work is running" not in w.status
    with pytest.raises(Exception, match="generator"):  # no models: the evolution's own error
        view._job.wait(timeout=60)
    for _ in range(100):
        if "failed" in w.status:
            break
        time.sleep(0.05)
    assert w.status.startswith("evolving prompts for ") and "failed" in w.status
    release.set()
    view.wait()
    for _ in range(100):
        if len(calls) == 2 and not view._quick_job.is_alive():
            break
        time.sleep(0.05)
    assert len(calls) == 2


def test_view_metrics_print_no_progress_bar(tmp_path: pathlib.Path, capfd) -> None:
    """The view's background metrics job trains the held-out student quietly: no tqdm bar lands in
    the notebook cell under the widget (the widget shows its own progress); crafter.metrics still does."""
    import datacrafter_widget as dc
    from datacrafter_widget.ui.widget import CrafterView

    c = dc.DataCrafter(dc.starter.colored_digits(shots=2), models=dc.starter.models(), project=tmp_path / "p")
    try:
        c.heldout_options = {"steps": 4}
        assert c.heldout is not None and len(c.heldout) > 0  # the student is trained, so a bar could show
        capfd.readouterr()
        view = CrafterView(c)
        for _ in range(600):  # the first map's job starts the metrics job as it ends
            view.wait()
            if view._metrics_job is not None and not view._metrics_job.running:
                break
            time.sleep(0.1)
        out, err = capfd.readouterr()
        assert view._metrics_job is not None and view._metrics_job.error is None
        assert (pathlib.Path(c.store.path) / "heldout" / "round_0").exists()  # the student was trained in the job
        assert "training" not in out + err and "%|" not in out + err, (out, err)
        # The user's own crafter.metrics keeps its bar (a fresh round-0 student: the cache is keyed on options).
        c.heldout_options = {"steps": 5}
        c.metrics
        out, err = capfd.readouterr()
        assert "training" in out + err
    finally:
        c.close()


# ----------------------------------------------------------------- display and lifetime
def _files(root: pathlib.Path) -> dict[str, float]:
    return {str(p.relative_to(root)): p.stat().st_mtime for p in root.rglob("*") if p.name != ".lock"}


def test_repr_outside_a_notebook_builds_nothing(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture) -> None:
    """Echoing `crafter` in terminal IPython (or repr in a script) shows text: no view is built, no
    map or metrics job starts, nothing is written into the project."""
    import threading

    from IPython.core.interactiveshell import InteractiveShell

    import datacrafter_widget as dc

    c = dc.DataCrafter(dc.starter.colored_digits(shots=2), project=tmp_path / "p")
    try:
        shell = InteractiveShell.instance()  # what terminal IPython runs: a shell with no kernel
        try:
            before, threads = _files(tmp_path / "p"), {t.ident for t in threading.enumerate()}
            shell.displayhook(c)  # echoing `crafter` at the prompt
            printed = capsys.readouterr().out
            data, _meta = shell.display_formatter.format(c)
            assert set(c._repr_mimebundle_()) == {"text/plain"}
            time.sleep(0.5)  # a job started by the repr would be writing by now
            started = [t.name for t in threading.enumerate() if t.ident not in threads]
        finally:
            InteractiveShell.clear_instance()
        assert set(data) == {"text/plain"}, sorted(data)
        assert "DataCrafter project" in printed and "real images" in printed, printed
        assert started == [] and _files(tmp_path / "p") == before, started
    finally:
        c.close()


def test_every_display_in_a_kernel_is_one_widget_with_a_picture_and_text(crafter, monkeypatch) -> None:
    """In a notebook kernel the output carries the widget, a PNG of the map drawn in the kernel and a text
    summary (what nbconvert, GitHub and a closed kernel show); a second display or a reload shows the same
    widget, so nothing is built or started twice."""
    import base64

    from datacrafter_widget.ui import display

    monkeypatch.setattr(display, "in_notebook_kernel", lambda: True)
    first = crafter._repr_mimebundle_()
    second = crafter._repr_mimebundle_()
    view = first["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"] == second["application/vnd.jupyter.widget-view+json"]["model_id"]
    assert crafter.show().model_id == view["model_id"]
    assert crafter._display_() is crafter.show()  # marimo's hook: the same anywidget
    assert (
        first["text/plain"].startswith("DataCrafter project")
        and f"{len(crafter.classes)} classes" in first["text/plain"]
    )
    png = Image.open(io.BytesIO(base64.b64decode(first["image/png"]))).convert("RGB")
    pixels = np.asarray(png).reshape(-1, 3)
    assert png.size[0] >= 600 and (pixels.min(axis=1) < 200).mean() > 0.02  # the map's images, not a blank page


def test_a_second_crafter_on_an_open_project_shares_it(tmp_path: pathlib.Path) -> None:
    """What a marimo page reload or a second viewer does (the notebook's cells run again in the same
    process): a second DataCrafter on the open project shares it instead of raising ProjectLockedError;
    the folder's lock goes when the last one closes."""
    import datacrafter_widget as dc
    from datacrafter_widget.data.store import ProjectLockedError, SampleStore

    ds, project = dc.starter.colored_digits(shots=2), tmp_path / "p"
    first = dc.DataCrafter(ds, project=project)
    second = dc.DataCrafter(ds, project=project)
    third = dc.DataCrafter.open(project)
    sid = str(first.samples["id"].iloc[0])
    first.feedback(bad=[sid])
    assert second.samples.set_index("id").at[sid, "feedback"] == "bad"
    first.close()
    second.feedback(good=[sid])  # still open for the others
    assert third.samples.set_index("id").at[sid, "feedback"] == "good"
    with pytest.raises(ProjectLockedError):
        SampleStore(project)  # another writer that is not a DataCrafter is still kept out
    second.close()
    third.close()
    SampleStore(project).close()  # the last one released the folder


def test_nbconvert_html_shows_a_picture_of_the_map_and_the_summary(tmp_path: pathlib.Path) -> None:
    """A notebook that displays `crafter`, executed by a real kernel and exported with nbconvert: the HTML
    (no widget state, no kernel) shows the kernel-drawn PNG of the map and loads nothing from a CDN for it."""
    import base64

    import nbformat
    from nbclient import NotebookClient
    from nbconvert import HTMLExporter

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            "import datacrafter_widget as dc\n"
            "crafter = dc.DataCrafter(dc.starter.colored_digits(shots=2), project='p')\n"
            "crafter"
        )
    ]
    # As JupyterLab saves a notebook by default: outputs, no widget state.
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        store_widget_state=False,
        resources={"metadata": {"path": str(tmp_path)}},
    ).execute()
    data = nb.cells[0].outputs[-1]["data"]
    assert "application/vnd.jupyter.widget-view+json" in data and data["text/plain"].startswith("DataCrafter project")
    html, _ = HTMLExporter().from_notebook_node(nb)
    images = html.count('<img alt="No description has been provided for this image"')
    assert images == 1, "the crafter's output should be the one image in the page"
    start = html.index('src="data:image/png;base64,', html.index("jp-RenderedImage jp-OutputArea-output"))
    start += len('src="data:image/png;base64,')
    png = Image.open(io.BytesIO(base64.b64decode(html[start : html.index('"', start)])))
    assert png.size[0] >= 600
    assert "application/vnd.jupyter.widget-view+json" not in html  # no empty widget placeholder in its place
