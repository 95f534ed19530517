"""Captioner over a real (tiny, random-weight) BLIP, and the CLIP retrieval captioner."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
from PIL import Image

from datacrafter_widget.models.captioner import Captioner, RetrievalCaptioner
from tiny_models import tiny_blip

torch.set_num_threads(1)


def images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(n)]


def test_blip_captioner_is_greedy_and_bounded():
    model, processor = tiny_blip()
    with torch.no_grad():  # only words, never [SEP]: the 16-token bound is what stops decoding
        model.text_decoder.cls.predictions.bias[: len(processor.tokenizer.all_special_ids) + 1] = -1e4
    cap = Captioner(model, processor, name="tiny-blip", max_new_tokens=16, batch_size=2)
    ims = images(3)
    out = cap(ims)
    assert isinstance(out, list) and len(out) == 3 and all(isinstance(c, str) and c for c in out)
    assert all(len(c.split()) <= 16 for c in out)
    assert out == cap(ims), "greedy decoding is deterministic"
    assert cap(ims[1:2]) == out[1:2], "batching does not change a caption"
    inputs = processor(images=ims, return_tensors="pt")
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=16, do_sample=False, num_beams=1)
    assert ids.shape[1] <= 16 + 1  # the [DEC] start token + at most 16 new tokens
    assert [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)] == out


def test_captioner_from_local_folder(tmp_path):
    model, processor = tiny_blip()
    model.save_pretrained(tmp_path / "blip")
    processor.save_pretrained(tmp_path / "blip")
    loaded = Captioner.from_pretrained(str(tmp_path / "blip"), device="cpu")
    ims = images(2)
    assert loaded(ims) == Captioner(model, processor, name="x")(ims)
    with pytest.raises(FileNotFoundError, match="config.json"):
        Captioner.from_pretrained(str(tmp_path / "missing"), device="cpu")


class WordEmbedder:
    """A transparent embedder: texts are bags of known words; an image 'shows' the words in its info."""

    def __init__(self, words):
        self.words = list(words)
        self.name = "words"
        self.text_calls = 0

    def _vec(self, words):
        v = np.array([float(w in words) for w in self.words], dtype=np.float32)
        return v / max(np.linalg.norm(v), 1e-12)

    def embed_texts(self, texts):
        self.text_calls += 1
        return np.stack([self._vec(t.replace(",", " ").split()) for t in texts])

    def embed_images(self, ims):
        return np.stack([self._vec(im.info["words"].split()) for im in ims])


def picture(words):
    im = Image.new("RGB", (8, 8))
    im.info["words"] = words
    return im


@pytest.mark.parametrize("max_combinations", [20000, 1])
def test_retrieval_captioner_picks_the_best_phrase_per_attribute(max_combinations):
    vocab = {"fg": ["red", "green", "blue"], "bg": ["black", "white"], "digit": ["3", "7"]}
    words = ["red", "green", "blue", "black", "white", "3", "7", "a", "on", "background"]
    emb = WordEmbedder(words)
    cap = RetrievalCaptioner(
        emb,
        vocab,
        template=lambda fg, bg, digit: f"a {fg} {digit} on a {bg} background",
        max_combinations=max_combinations,
    )
    out = cap([picture("a green 7 on a white background"), picture("a blue 3 on a black background")])
    assert out == ["a green 7 on a white background", "a blue 3 on a black background"]
    assert cap.attributes([picture("red 3 black")]) == [{"fg": "red", "bg": "black", "digit": "3"}]
    fmt = RetrievalCaptioner(emb, vocab, template="{fg} {digit} on {bg}", max_combinations=max_combinations)
    assert fmt([picture("blue 7 white")]) == ["blue 7 on white"]
    with pytest.raises(ValueError, match="at least one phrase"):
        RetrievalCaptioner(emb, {"fg": []}, template="{fg}")
