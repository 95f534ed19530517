"""The offline starter models: offline loading, determinism, the training script, the conversions."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datacrafter_widget.starter import loader as sm
from datacrafter_widget.starter import train as st

SHIPPED = sm.WEIGHTS_DIR
HAS_SHIPPED = (SHIPPED / "unet" / "diffusion_pytorch_model.safetensors").exists()


@pytest.fixture(scope="module")
def quick_weights(tmp_path_factory) -> Path:
    """Weights from `train --quick` (a few steps on tiny data): exercises the whole script."""
    out = tmp_path_factory.mktemp("starter_quick")
    info = st.main(["--quick", "--out", str(out)])
    assert info["quick"] is True and info["unet_steps_done"] == 2
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails loudly."""

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _weights(quick_weights: Path) -> Path:
    return SHIPPED if HAS_SHIPPED else quick_weights


def test_quick_training_writes_safetensors_and_json_only(quick_weights):
    files = sorted(p.relative_to(quick_weights).as_posix() for p in quick_weights.rglob("*") if p.is_file())
    assert {
        "clip.safetensors",
        "clip_config.json",
        "vae/diffusion_pytorch_model.safetensors",
        "vae/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "unet/config.json",
        "scheduler/scheduler_config.json",
        "generator.json",
        "training.json",
    } <= set(files)
    assert all(f.endswith((".safetensors", ".json")) for f in files), files
    info = json.loads((quick_weights / "training.json").read_text())
    assert info["seed"] == st.SEED and info["steps"]["unet"] == 2


def test_loads_offline_without_network(quick_weights, no_network):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextModel

    models = sm.load_starter_models(weights_dir=_weights(quick_weights))
    assert isinstance(models.generator.pipe, StableDiffusionPipeline)
    assert isinstance(models.generator.pipe.text_encoder, CLIPTextModel)
    assert models.generator.resolution == 32 and models.generator.default_steps == 20
    e = models.embedder.embed_texts(["a photo of a 3", "a red 7 on a white background"])
    assert e.shape == (2, st.CLIP_CONFIG["embed_dim"]) and np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    caps = models.captioner([Image.new("RGB", (32, 32), (245, 245, 245))])
    assert len(caps) == 1 and caps[0].startswith("a ") and "background" in caps[0]


def test_same_seed_same_image_and_sizes(quick_weights, no_network):
    gen = sm.load_starter_models(weights_dir=_weights(quick_weights)).generator
    a = gen(["a red 3 on a white background", "a photo of a 7"], seed=[5, 6], steps=4)
    b = gen(["a red 3 on a white background", "a photo of a 7"], seed=[5, 6], steps=4)
    c = gen(["a red 3 on a white background"], seed=[99], steps=4)
    assert all(im.size == (32, 32) and im.mode == "RGB" for im in a)
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(np.asarray(a[1]), np.asarray(b[1]))
    assert not np.array_equal(np.asarray(a[0]), np.asarray(c[0]))
    # one image regenerates on its own, outside its batch, up to float rounding (batched CPU kernels
    # may sum in another order: a pixel can move by one level; see the Generator docs)
    alone = gen(["a photo of a 7"], seed=[6], steps=4)
    diff = np.abs(np.asarray(alone[0]).astype(int) - np.asarray(a[1]).astype(int))
    assert diff.max() <= 2 and diff.mean() < 0.01, (diff.max(), diff.mean())
    i2i = gen(
        ["a blue 5 on a pink background"],
        image=[a[0]],
        strength=0.5,
        seed=1,
        steps=4,
        negative_prompt="a digit on a black background",
    )
    assert i2i[0].size == (32, 32) and i2i[0].mode == "RGB"


def test_tokenizers_agree_on_every_training_prompt():
    hf = sm.hf_clip_tokenizer(st.CONTEXT_LENGTH)
    oc = sm.open_clip_tokenizer(st.CONTEXT_LENGTH)
    texts = st.all_vocabulary_texts()
    a = hf(texts, padding="max_length", max_length=st.CONTEXT_LENGTH, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(a, oc(texts))
    assert max(int((row != 0).sum()) for row in a) < st.CONTEXT_LENGTH  # no training prompt is truncated


def test_text_tower_conversion_is_exact():
    torch.manual_seed(0)
    clip = sm.build_clip(st.CLIP_CONFIG).eval()
    te = sm.clip_text_to_hf(clip)
    ids = sm.open_clip_tokenizer(st.CONTEXT_LENGTH)(["a thick red 3 on a white background, slanted left", ""])
    with torch.no_grad():
        hf = te(ids).last_hidden_state
        x = clip.token_embedding(ids) + clip.positional_embedding
        x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask))
        pooled = te(ids).pooler_output @ clip.text_projection
    assert torch.allclose(hf, x, atol=1e-5)
    assert torch.allclose(pooled, clip.encode_text(ids), atol=1e-5)


def test_compact_clip_state_round_trips():
    torch.manual_seed(0)
    clip = sm.build_clip(st.CLIP_CONFIG)
    used = [0, 320, 49406, 49407]
    sd = sm.expand_clip_state(sm.compact_clip_state(clip, used))
    full = clip.state_dict()["token_embedding.weight"]
    assert torch.equal(sd["token_embedding.weight"][used], full[used])
    assert float(sd["token_embedding.weight"][1000].abs().sum()) == 0.0


def test_missing_weights_error_names_the_fix(tmp_path):
    with pytest.raises(sm.StarterWeightsError, match="starter.train"):
        sm.load_clip(tmp_path)


@pytest.mark.skipif(not HAS_SHIPPED, reason="starter weights not built yet")
def test_shipped_weights_are_small_and_safe():
    files = [p for p in SHIPPED.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    assert all(p.suffix in (".safetensors", ".json") or p.name == ".gitkeep" for p in files)


@pytest.mark.skipif(not HAS_SHIPPED, reason="starter weights not built yet")
def test_shipped_generator_follows_background_prompt(no_network):
    """A cheap prompt-following check: black vs white backgrounds are told apart in pixels."""
    gen = sm.load_starter_models().generator
    dark = gen([f"a red {d} on a black background" for d in "0369"], seed=0, steps=10)
    light = gen([f"a red {d} on a white background" for d in "0369"], seed=0, steps=10)
    corner = lambda im: float(np.asarray(im, dtype=np.float32)[:3, :3].mean())  # noqa: E731
    assert max(corner(im) for im in dark) < 90 < min(corner(im) for im in light)


@pytest.mark.skipif(not HAS_SHIPPED, reason="starter weights not built yet")
def test_a_crafter_renders_in_the_generators_batch_unless_told_otherwise(tmp_path, no_network):
    """The starter's 32 px pipeline renders 64 images per call (its images/s triples from 8 to 64);
    a crafter uses its generator's batch size until one is set, and None goes back to it."""
    import datacrafter_widget as dc

    models = sm.load_starter_models()
    assert models.generator.default_batch_size == sm.STARTER_BATCH_SIZE == 64
    crafter = dc.DataCrafter(dc.starter.colored_digits(shots=1), models=models, project=tmp_path / "p")
    assert crafter.batch_size == 64
    crafter.batch_size = 4
    assert crafter.batch_size == 4
    crafter.batch_size = None
    assert crafter.batch_size == 64
    with pytest.raises(ValueError, match="batch_size=0 must be at least 1"):
        crafter.batch_size = 0
    again = dc.DataCrafter(dc.starter.colored_digits(shots=1), models=models, project=tmp_path / "q", batch_size=16)
    assert again.batch_size == 16
