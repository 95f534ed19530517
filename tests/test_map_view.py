"""The map tools behind the widget's controls and their DataCrafter twins (controller/map_view.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import datacrafter_widget as dc
from datacrafter_widget.controller import map_view


@pytest.fixture()
def crafter(tmp_path):
    c = dc.DataCrafter(dc.starter.colored_digits(shots=2), project=tmp_path / "p")
    yield c
    c.close()


def test_prompt_edit_accept_revert_survive_reopening(crafter, tmp_path) -> None:
    cls = crafter.classes[0]
    crafter.set_prompt(cls, "a photo of a red digit")
    crafter.set_prompt(cls, "a photo of a blue digit")
    crafter.accept_prompt(cls)
    crafter.revert_prompt(cls, 0)
    hist = crafter.prompts[cls]["history"]
    assert [h["action"] for h in hist] == ["edit", "edit", "accept", "revert"]
    assert crafter.prompts[cls]["current"] == "a photo of a red digit"
    crafter.close()
    again = dc.DataCrafter.open(tmp_path / "p")  # a new kernel: the edit is in prompts.json
    try:
        assert again.prompts[cls]["current"] == "a photo of a red digit"
        assert len(again.prompts[cls]["history"]) == 4
        with pytest.raises(map_view.MapToolError, match="unknown class"):
            again.set_prompt("no-such-class", "x")
        assert again.prompts[cls]["current"] == "a photo of a red digit"  # a refused edit leaves prompts.json
    finally:
        again.close()


def test_empty_prompt_is_refused_clearly(crafter) -> None:
    with pytest.raises(map_view.MapToolError, match="empty"):
        crafter.set_prompt(crafter.classes[0], "   ")


def test_feedback_undo_redo_and_clear(crafter) -> None:
    ids = crafter.samples["id"].tolist()[:3]
    crafter.feedback(bad=ids[:2], bad_labels=["blurry"])
    crafter.feedback(removed=[ids[2]])
    fb = lambda: crafter.samples.set_index("id").loc[ids, "feedback"].tolist()  # noqa: E731
    assert fb() == ["bad", "bad", "removed"]
    assert crafter.undo() == [ids[2]] and fb() == ["bad", "bad", ""]
    assert crafter.undo() == ids[:2] and fb() == ["", "", ""]
    with pytest.raises(map_view.MapToolError, match="nothing to undo"):
        crafter.undo()
    crafter.redo()
    assert fb() == ["bad", "bad", ""]
    assert crafter.samples.set_index("id").at[ids[0], "feedback_labels"] == '["blurry"]'
    crafter.feedback(clear=[ids[0]])
    assert fb() == ["", "bad", ""]
    with pytest.raises(map_view.MapToolError, match="nothing to redo"):
        crafter.redo()  # a new action clears the redo stack


def test_text_search_and_selection(crafter) -> None:
    s = crafter.samples
    cls = crafter.classes[1]
    got = crafter.search(cls)
    assert set(got) >= set(s.loc[s["label"] == cls, "id"]) and crafter.selection == got
    assert crafter.search(s["id"].iloc[4], select=False) == [s["id"].iloc[4]]
    assert crafter.search("zzz-no-such-word") == []


def test_embedding_search_and_neighbours_rank_by_cosine() -> None:
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], np.float32)
    ids = ["a", "b", "c", "d"]
    assert map_view.search_embedding(np.array([1, 0]), emb, ids, 2) == ["a", "b"]
    assert map_view.neighbors(emb, ids, "c", 1) == ["b"]


def test_color_codes_for_text_and_numeric_columns() -> None:
    frame = pd.DataFrame({"split": ["train", "test", "train", ""], "x": np.arange(4.0)})
    codes, names = map_view.column_codes(frame, "split")
    assert [names[c] for c in codes] == ["train", "test", "train", "(empty)"]
    many = pd.DataFrame({"v": np.arange(100.0)})
    codes, names = map_view.column_codes(many, "v")
    assert len(names) == 8 and codes[0] == 0 and codes[-1] == 7
    with pytest.raises(map_view.MapToolError, match="no column"):
        map_view.column_codes(frame, "nope")


def test_view_state_hides_test_and_removed_by_default(crafter) -> None:
    s = crafter.samples
    vis = crafter.view.visible(s)
    assert not vis[(s["split"] == "test").to_numpy()].any()
    events = []
    crafter.on("view", events.append)
    crafter.filter(show_test=True)
    assert crafter.view.visible(crafter.samples).all() and events[-1]["state"].show_test
    crafter.color_by("split")
    assert crafter.view.color_by == "split"
    with pytest.raises(map_view.MapToolError, match="cannot colour by"):
        crafter.color_by("nope")
    crafter.isolate(s["id"].tolist()[:2])
    assert crafter.view.visible(crafter.samples).sum() == 2
    crafter.zoom_to(s["id"].tolist()[:1])
    assert events[-1] == {"zoom": s["id"].tolist()[:1]}
