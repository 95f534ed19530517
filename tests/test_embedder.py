"""Embedder over a real (tiny, random-weight) open_clip CLIP."""

from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from datacrafter_widget.models.embedder import Embedder, auto_device
from tiny_models import tiny_open_clip

torch.set_num_threads(1)


def images(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


@pytest.fixture(scope="module")
def emb():
    model, preprocess, tokenizer = tiny_open_clip()
    return Embedder(model, preprocess, tokenizer, name="tiny-clip", batch_size=3)


def test_image_and_text_embeddings_are_normalised_float32(emb):
    ims = images(5)
    x = emb.embed_images(ims)
    assert x.shape == (5, emb.dim) and x.dtype == np.float32
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    # batching (batch_size=3 splits 5 images) does not change an image's embedding beyond float noise
    assert np.allclose(emb.embed_images(ims[3:4])[0], x[3], atol=1e-5)
    t = emb.embed_texts(["a red 3", "a blue 4", "a red 3"])
    assert t.shape == (3, emb.dim) and t.dtype == np.float32
    assert np.allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    assert np.allclose(t[0], t[2]) and not np.allclose(t[0], t[1])
    # grayscale / RGBA inputs are converted, not rejected
    assert emb.embed_images([ims[0].convert("L"), ims[0].convert("RGBA")]).shape == (2, emb.dim)
    assert emb.embed_images([]).shape == (0, emb.dim)


def test_zero_shot_probabilities(emb):
    ims = images(3)
    p = emb.zero_shot(ims, ["cat", "dog", "bird"])
    assert p.shape == (3, 3) and np.allclose(p.sum(axis=1), 1.0, atol=1e-5) and (p >= 0).all()
    # from embeddings gives the same, and templates are used (different templates, different probs)
    assert np.allclose(emb.zero_shot(emb.embed_images(ims), ["cat", "dog", "bird"]), p, atol=1e-5)
    q = emb.zero_shot(ims, ["cat", "dog", "bird"], templates=["{}", "a drawing of a {}"])
    assert not np.allclose(p, q)
    # the argmax is the class whose text embedding is most similar (CLIP's rule)
    text = emb.class_text_embeddings(["cat", "dog", "bird"])
    assert (p.argmax(1) == (emb.embed_images(ims) @ text.T).argmax(1)).all()


def test_from_open_clip_loads_a_local_checkpoint_offline(tmp_path, emb):
    import open_clip
    from safetensors.torch import save_file

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"layers": 1, "width": 32, "head_width": 16, "patch_size": 8, "image_size": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "dc-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "cfg"))
    ckpt = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in emb.model.state_dict().items()}, str(ckpt))
    loaded = Embedder.from_open_clip("dc-tiny-clip", str(ckpt), device="cpu")
    assert loaded.name == "open_clip:dc-tiny-clip:tiny" and loaded.image_size == 32
    ims = images(2)
    assert np.allclose(loaded.embed_images(ims), emb.embed_images(ims), atol=1e-5)
    assert np.allclose(loaded.embed_texts(["a red 3"]), emb.embed_texts(["a red 3"]), atol=1e-5)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        Embedder.from_open_clip("dc-tiny-clip", str(tmp_path / "missing.safetensors"), device="cpu")
    with pytest.raises(ValueError, match="unknown open_clip architecture 'ViT-Nope'"):
        Embedder.from_open_clip("ViT-Nope", None, device="cpu")


def test_auto_device_prefers_explicit():
    assert auto_device("cpu") == "cpu"
    assert auto_device("auto") in ("cuda", "mps", "cpu")
