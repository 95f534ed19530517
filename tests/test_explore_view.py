"""Issue 22's filters, colour and sample view behind the widget: the Python twins, what the widget's
commands do through the controller, and the view state kept with the project (view.json)."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

import datacrafter_widget as dc
from datacrafter_widget.controller import map_view
from datacrafter_widget.ui.codecs import facets_from_frame


@pytest.fixture()
def crafter(tmp_path: pathlib.Path):
    c = dc.DataCrafter(dc.starter.colored_digits(shots=2), project=tmp_path / "p")
    yield c
    c.close()


def shown_labels(c: dc.DataCrafter) -> set[str]:
    s = c.samples
    return set(s["label"][c.view.visible(s)])


def test_hide_and_only_by_field_and_the_filters_survive_reopening(crafter, tmp_path: pathlib.Path) -> None:
    classes = list(crafter.classes)
    crafter.filter(hide={"label": [classes[3], classes[5]]})
    assert shown_labels(crafter) == set(classes) - {classes[3], classes[5]}
    crafter.filter(hide={"split": ["train"]})  # a second field adds to the first
    s = crafter.samples
    assert not (s["split"][crafter.view.visible(s)] == "train").any()
    assert crafter.view.hidden_values == {"label": sorted([classes[3], classes[5]]), "split": ["train"]}
    crafter.filter(show_test=True, only={"label": [classes[1]]})
    assert shown_labels(crafter) == {classes[1]}
    crafter.isolate(crafter.samples["id"][:40])
    crafter.close()
    again = dc.DataCrafter.open(tmp_path / "p")  # a new kernel: the view is in view.json
    try:
        assert again.view.hidden_values["label"] == sorted(set(classes) - {classes[1]})
        assert again.view.show_test and again.view.isolate is not None and len(again.view.isolate) == 40
        assert shown_labels(again) <= {classes[1]}
        again.filter(hide={"label": []})  # an empty list shows the field's values again
        assert "label" not in again.view.hidden_values
        again.filter(hide=None)
        assert again.view.hidden_values == {}
        with pytest.raises(map_view.MapToolError, match="cannot filter by 'no_such'"):
            again.filter(hide={"no_such": ["x"]})
    finally:
        again.close()


def test_a_damaged_view_json_opens_with_the_default_view(crafter, tmp_path: pathlib.Path) -> None:
    crafter.filter(hide={"label": [crafter.classes[0]]})
    crafter.close()
    (tmp_path / "p" / "view.json").write_text("{not json")
    again = dc.DataCrafter.open(tmp_path / "p")
    try:
        assert again.view.hidden_values == {}
    finally:
        again.close()


def test_content_label_filter_hides_the_labels_members() -> None:
    samples = map_view.pd.DataFrame({"id": ["a", "b", "c"], "label": ["x", "y", "x"]})
    state = map_view.updated_view(map_view.ViewState(), samples, hide={"content_label": ["stripes"]})
    assert state.visible(samples, {"stripes": ["a", "c"]}).tolist() == [False, True, False]
    only = map_view.updated_view(
        map_view.ViewState(), samples, only={"content_label": ["dots"]}, members={"stripes": ["a"], "dots": ["b"]}
    )
    assert only.hidden_values == {"content_label": ["stripes"]}


def test_facets_give_each_point_its_value_per_field() -> None:
    frame = map_view.pd.DataFrame(
        {
            "label": ["cat", "dog", "cat"],
            "round": [0, 2, 10],
            "feedback": ["", "bad", ""],
            "strategy": ["", "caption", "class"],
        }
    )
    facets, codes = facets_from_frame(frame, {"stripes": [0, 2]})
    by = {f["field"]: f for f in facets}
    assert by["round"]["names"] == ["0", "2", "10"]  # numbers in numeric order
    blocks = np.frombuffer(codes, "<u2").reshape(-1, 3)
    assert len(blocks) == 4 and [f["field"] for f in facets[:4]] == ["label", "round", "strategy", "feedback"]
    assert [by["label"]["names"][k] for k in blocks[0]] == ["cat", "dog", "cat"]
    assert [by["feedback"]["names"][k] for k in blocks[3]] == ["", "bad", ""]
    assert by["content_label"] == {
        "field": "content_label",
        "title": "content label",
        "names": ["stripes"],
        "members": [[0, 2]],
    }


def test_widget_filter_commands_reach_the_controller_and_the_map(crafter) -> None:
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    view.wait()
    w = view.widget
    w.send = lambda content, buffers=None: None
    cls = crafter.classes[2]
    w.run("filter", {"hide": {"label": [cls]}})
    hidden = np.frombuffer(w.hidden, np.uint8).astype(bool)
    is_cls = (crafter.samples["label"] == cls).to_numpy()
    assert hidden[is_cls].all() and w.filters["hide"] == {"label": [cls]}
    assert "hidden: class: " + cls in w.status
    w.run("filter", {"only": {"label": [cls]}, "show_test": True})
    hidden = np.frombuffer(w.hidden, np.uint8).astype(bool)
    assert not hidden[is_cls].any() and hidden[~is_cls].all()
    w.run("filter", {"reset": True})
    assert w.filters["hide"] == {} and not np.frombuffer(w.hidden, np.uint8).any()
    # The sidebar's fields arrive with the points: one code per point per field.
    fields = [f["field"] for f in w.facets]
    assert fields[:2] == ["label", "round"] and "split" in fields and "feedback" in fields
    assert len(w.facet_codes) == 2 * w.n * len([f for f in w.facets if "members" not in f])


def test_numeric_columns_go_on_a_sequential_scale() -> None:
    from datacrafter_widget.ui.widget import CrafterWidget

    frame = map_view.pd.DataFrame(
        {"x": np.arange(30.0), "y": np.zeros(30), "label": ["a"] * 30, "v": np.linspace(-1, 2, 30), "k": [1, 2] * 15}
    )
    frame.loc[3, "v"] = np.nan
    values = map_view.column_numbers(frame, "v")
    assert values is not None and values.dtype == np.float32 and np.isnan(values[3])
    assert map_view.column_numbers(frame, "k") is None  # few values: categories
    assert map_view.column_numbers(frame, "label") is None
    w = CrafterWidget()
    w.set_frame(frame)
    w.set_color_values(values)
    assert w.color_scale == {"min": -1.0, "max": 2.0} and len(w.color_values) == 4 * 30
    w.set_color_values(None)
    assert w.color_values == b"" and w.color_scale == {}
    with pytest.raises(ValueError, match="one per point"):
        w.set_color_values([1.0, 2.0])


def test_show_sample_by_id_carries_the_provenance_and_the_image(crafter) -> None:
    from datacrafter_widget.ui.widget import CrafterView

    view = CrafterView(crafter)
    view.wait()
    w = view.widget
    w.send = lambda content, buffers=None: None
    sid = crafter.samples["id"].iloc[4]
    w.show_sample(sid)
    fields = dict(w.sample["fields"])
    row = crafter.samples.set_index("id").loc[sid]
    assert w.sample["id"] == sid and w.sample["index"] == 4
    assert fields["class"] == row["label"] and fields["caption"] == row["caption"] and fields["split"] == row["split"]
    assert w.sample_image.startswith(b"\x89PNG")
    # The browser's commands: open by index, and Regenerate refuses a real image with the reason.
    w.run("show_sample", {"index": 6})
    assert w.sample["id"] == crafter.samples["id"].iloc[6]
    assert "real image" in w.run("regenerate", {"index": 6})
    w.show_sample(None)
    assert w.sample == {} and w.sample_image == b""
    with pytest.raises(KeyError, match="no sample 'nope'"):
        w.show_sample("nope")


def test_chart_panels_say_which_way_is_better() -> None:
    """Each metric panel's title tells a person what to look for (and, where a metric is low, what to do)."""
    pytest.importorskip("vl_convert")
    from datacrafter_widget.ui.view import metrics_svg

    frame = map_view.pd.DataFrame(
        {
            "round": [1, 2],
            "student_acc": [0.5, 0.6],
            "distance": [0.4, 0.3],
            "class_maintenance": [0.9, 0.8],
            "diversity": [0.1, 0.2],
        }
    )
    svg = metrics_svg(frame)
    assert "student accuracy, held-out (↑ better)" in svg and "distance to real, CMMD (↓ better)" in svg
    assert "low: mark bad, Evolve" in svg and "low: try caption" in svg
