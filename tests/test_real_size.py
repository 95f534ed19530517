"""The real-size path at reduced channel widths: 512 px photos, an SD-1.5-shaped pipeline with 64 x 64
latents, open_clip ViT-B-32 at 224 px and a BLIP-shaped captioner at 384 px, each saved to a folder as
a download is and loaded through dc.Models.stable_diffusion, then a round of the loop.

The models come from benchmarks/real_size/build.py (the configs of the real checkpoints with every
channel width divided by 8); benchmarks/bench_real_size.py runs the same path at full width.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datacrafter_widget as dc
from datacrafter_widget.ui.widget import CrafterView

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_size.build import build_all, write_photos  # noqa: E402

SHRINK = 8


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-size")
    p = build_all(root / "models", shrink=SHRINK)
    p.register_clip()
    photos = write_photos(root / "photos", per_class=2, size=512, seed=3)
    return p, photos


@pytest.fixture(scope="module")
def models(real_size):
    p, _ = real_size
    return dc.Models.stable_diffusion(
        str(p.sd), clip=(p.clip_arch, str(p.clip_weights)), captioner=str(p.captioner), device="cpu", steps=1
    )


def test_saved_folders_load_as_a_download_does(real_size, models):
    p, _ = real_size
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (p.sd / part).is_dir(), part
    assert (p.sd / "model_index.json").is_file() and (p.captioner / "config.json").is_file()
    gen = models.generator
    assert gen.resolution == 512 and gen.pipe.unet.config.sample_size == 64
    assert gen.pipe.tokenizer.model_max_length == 77
    assert gen.pipe.unet.dtype == torch.float32
    assert models.embedder.image_size == 224
    assert models.captioner.processor.image_processor.size == {"height": 384, "width": 384}


def test_one_round_of_the_loop_at_512_px(real_size, models, tmp_path):
    _, photos = real_size
    ds = dc.Dataset.from_folder(photos)
    assert {im.size for im in ds.images()} == {(512, 512)}
    with dc.DataCrafter(ds, models=models, project=tmp_path / "project", batch_size=2) as crafter:
        crafter.update_projection()
        ids = crafter.generate(per_class=1, strategy="caption", classes=["ball", "box"], steps=1, progress=False)
        assert len(ids) == 2
        s = crafter.samples.set_index("id")
        real = s[s["source"] == "real"]
        asked = real[real["label"].isin(["ball", "box"])]
        assert (asked["caption"].str.len() > 0).all(), "the BLIP-shaped captioner captioned the round's real photos"
        for i in ids:  # caption prompts: the class and a real photo's caption
            assert s.loc[i, "label"] in s.loc[i, "prompt"] and s.loc[i, "parent_id"] in real.index, s.loc[i]
        assert {crafter.image(i).size for i in ids} == {(512, 512)}
        assert crafter.embeddings(ids).shape == (2, models.embedder.dim)
        view = CrafterView(crafter)  # what crafter.show() displays
        view.wait(timeout=300)
        meta = view.widget.thumbs  # thumbnails go on demand: a page is what the browser receives
        assert meta["count"] == len(crafter.samples) and meta["tile"] <= 32
        data, grid = view.widget.thumbnail_page(range(min(256, meta["count"])))
        page = Image.open(__import__("io").BytesIO(data))
        assert page.size == (grid["width"], grid["height"]) and grid["tile"] == meta["tile"]
        out = crafter.export(tmp_path / "export")
        exported = sorted(out.rglob("g*.png"))
        assert len(exported) == 2 and {Image.open(f).size for f in exported} == {(512, 512)}


def test_float16_on_the_cpu_loads_float32(real_size):
    """float16 has no fast CPU kernels: a dtype meant for a GPU must not make a CPU run many times slower."""
    p, _ = real_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = dc.Models.stable_diffusion(str(p.sd), clip=None, device="cpu", dtype=torch.float16, steps=1)
    assert m.generator.pipe.unet.dtype == torch.float32
    assert any("float16" in str(w.message) and "float32" in str(w.message) for w in caught)
    image = m.generator(["a photo of a ball"], seed=0, steps=1)[0]
    assert image.size == (512, 512) and np.asarray(image).std() > 0
