"""The controller's map: content labels + M2M layout for every sample, kept when samples are added
and when the project is reopened (with or without models)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

import datacrafter_widget as dc
from datacrafter_widget.models.embedder import Embedder
from datacrafter_widget.models.generator import Generator
from tiny_models import tiny_open_clip, tiny_sd_pipeline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models():
    model, preprocess, tokenizer = tiny_open_clip()
    return dc.Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )


def test_projection_covers_every_sample_and_keeps_old_points_when_new_ones_arrive(models, tmp_path):
    ds = dc.starter.colored_digits(shots=3, seed=0)
    c = dc.DataCrafter(ds, models=models, project=tmp_path / "p")
    try:
        first = c.projection
        images = first[first.kind == "image"]
        labels = first[first.kind == "label"]
        assert sorted(images.id) == sorted(c.samples.id)  # every real image is placed
        assert len(labels) > 0 and labels.text.notna().all()  # with the content labels
        assert np.isfinite(first[["x", "y"]].to_numpy()).all()
        member_ids = {i for m in labels.members for i in m}
        assert member_ids <= set(c.samples.id) and member_ids  # labels say which images carry them

        seen = []
        c.on("projection", seen.append)
        c.generate(per_class=1, strategy="class", filter=False, progress=False)
        second = c.update_projection()
        assert len(seen) == 1
        im2 = second[second.kind == "image"].set_index("id")
        assert set(im2.index) == set(c.samples.id)
        old = images.set_index("id")
        # incremental placement: what the person has already seen does not move
        np.testing.assert_array_equal(im2.loc[old.index, ["x", "y"]].to_numpy(), old[["x", "y"]].to_numpy())
        labels_by_id = c.content_labels()
        assert set(labels_by_id) == set(c.samples.id)
    finally:
        c.close()

    # reopened without models: the stored map is shown as it was
    browse = dc.DataCrafter.open(tmp_path / "p", readonly=True)
    try:
        again = browse.projection.set_index("id")
        imgs = again[again.kind == "image"]
        np.testing.assert_array_equal(imgs.loc[im2.index, ["x", "y"]].to_numpy(), im2[["x", "y"]].to_numpy())
    finally:
        browse.close()

    # reopened with models: the same map continues (no full re-layout)
    c = dc.DataCrafter.open(tmp_path / "p", models=models)
    try:
        cont = c.projection.set_index("id")
        cont = cont[cont.kind == "image"]
        np.testing.assert_array_equal(cont.loc[im2.index, ["x", "y"]].to_numpy(), im2[["x", "y"]].to_numpy())
    finally:
        c.close()


def test_projection_needs_an_embedder_and_two_images(tmp_path):
    ds = dc.starter.colored_digits(shots=1, seed=0)
    c = dc.DataCrafter(ds, project=tmp_path / "q")
    try:
        assert len(c.projection) == 0  # browsing without models: nothing to show yet, no error
        with pytest.raises(dc.MissingModelError, match="embedder"):
            c.update_projection()
    finally:
        c.close()
