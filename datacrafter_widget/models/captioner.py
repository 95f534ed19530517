"""Image captions for the "caption" strategy (captions as prompts, methods.md section 3).

`Captioner` wraps any transformers image-to-text model (BLIP, BLIP-2, ...), greedy decoding with
at most 16 new tokens as in the paper. `RetrievalCaptioner` needs no captioning model: it picks,
per attribute, the phrase CLIP scores highest; the offline starter kit uses it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..data.images import to_rgb


class Captioner:
    """transformers processor + image-to-text model -> one caption per image (greedy)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        name: str,
        max_new_tokens: int = 16,
        prompt: str | None = None,
        batch_size: int = 16,
    ) -> None:
        self.model = model.eval()
        self.processor = processor
        self.name = str(name)
        self.max_new_tokens = int(max_new_tokens)
        self.prompt = prompt
        self.batch_size = int(batch_size)

    def __repr__(self) -> str:
        return f"Captioner({self.name!r}, max_new_tokens={self.max_new_tokens})"

    @classmethod
    def from_pretrained(
        cls, model: str, device: str = "auto", dtype: torch.dtype | None = None, **kwargs: Any
    ) -> "Captioner":
        """Load a hub id (on a user's machine) or a local folder, e.g. Salesforce/blip-image-captioning-base."""
        import transformers

        from .embedder import auto_device, model_dtype

        path = Path(model).expanduser()
        if _looks_like_path(model) and not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"captioner folder {str(path)!r} has no config.json: pass a transformers image-to-text model "
                "folder (config.json, weights, preprocessor/tokenizer files) or a hub id such as "
                "'Salesforce/blip-image-captioning-base'"
            )
        dev = auto_device(device)
        dtype = model_dtype(dtype, dev, f"the captioner {model!r}")
        processor = transformers.AutoProcessor.from_pretrained(str(path) if path.exists() else model)
        last_err: Exception | None = None
        for class_name in ("AutoModelForImageTextToText", "AutoModelForVision2Seq", "BlipForConditionalGeneration"):
            auto = getattr(transformers, class_name, None)
            if auto is None:
                continue
            try:
                m = auto.from_pretrained(str(path) if path.exists() else model, dtype=dtype)
                break
            except (ValueError, KeyError) as err:  # not this auto class's architecture
                last_err = err
        else:
            raise ValueError(f"{model!r} is not an image-to-text model transformers can load: {last_err}")
        return cls(m.to(dev), processor, name=model, **kwargs)

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        images = [images] if isinstance(images, Image.Image) else list(images)
        out: list[str] = []
        param = next(self.model.parameters())
        for start in range(0, len(images), self.batch_size):
            chunk = [to_rgb(im) for im in images[start : start + self.batch_size]]
            kwargs: dict[str, Any] = {"images": chunk, "return_tensors": "pt"}
            if self.prompt:
                kwargs["text"] = [self.prompt] * len(chunk)
            inputs = self.processor(**kwargs).to(param.device)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = inputs["pixel_values"].to(param.dtype)
            with torch.no_grad():
                ids = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1)
            texts = self.processor.batch_decode(ids, skip_special_tokens=True)
            for t in texts:
                t = t.strip()
                if self.prompt and t.lower().startswith(self.prompt.lower()):
                    t = t[len(self.prompt) :].strip()
                out.append(t)
        return out


class RetrievalCaptioner:
    """Compose a caption from per-attribute phrases chosen by CLIP similarity (no captioning model).

    `vocabulary` maps attribute name -> candidate phrases; `template` builds the caption from one
    phrase per attribute (a callable taking the attributes as keyword arguments, or a format string).
    When the full product of choices is small (<= `max_combinations`) every caption is scored and the
    best one wins (exact); otherwise attributes are chosen one at a time, twice over (coordinate ascent).
    """

    def __init__(
        self,
        embedder: Any,
        vocabulary: Mapping[str, Sequence[str]],
        template: Callable[..., str] | str,
        name: str | None = None,
        max_combinations: int = 20000,
    ) -> None:
        if not vocabulary or any(len(v) == 0 for v in vocabulary.values()):
            raise ValueError("vocabulary needs at least one attribute with at least one phrase")
        self.embedder = embedder
        self.vocabulary = {k: [str(p) for p in v] for k, v in vocabulary.items()}
        self.template = template
        self.name = name or f"retrieval:{getattr(embedder, 'name', 'clip')}"
        self.max_combinations = int(max_combinations)
        self._combos: list[dict[str, str]] | None = None
        self._combo_emb: np.ndarray | None = None
        self._text_cache: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        return f"RetrievalCaptioner({self.name!r}, attributes={list(self.vocabulary)})"

    def compose(self, choice: dict[str, str]) -> str:
        if callable(self.template):
            return str(self.template(**choice))
        return str(self.template).format(**choice)

    def _embed(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            for t, e in zip(missing, self.embedder.embed_texts(missing)):
                self._text_cache[t] = e
        return np.stack([self._text_cache[t] for t in texts])

    def attributes(self, images: Sequence[Image.Image] | np.ndarray) -> list[dict[str, str]]:
        """The chosen phrase per attribute for every image."""
        emb = images if isinstance(images, np.ndarray) else self.embedder.embed_images(images)
        keys = list(self.vocabulary)
        total = int(np.prod([len(self.vocabulary[k]) for k in keys]))
        if total <= self.max_combinations:
            if self._combos is None:
                self._combos = [
                    dict(zip(keys, values)) for values in itertools.product(*(self.vocabulary[k] for k in keys))
                ]
                self._combo_emb = self.embedder.embed_texts([self.compose(c) for c in self._combos])
            assert self._combo_emb is not None  # embedded with the combinations above
            best = (emb @ self._combo_emb.T).argmax(axis=1)
            return [dict(self._combos[int(b)]) for b in best]
        results = []
        for e in emb:
            choice = {k: v[0] for k, v in self.vocabulary.items()}
            for _ in range(2):
                for k in keys:
                    options = [dict(choice, **{k: p}) for p in self.vocabulary[k]]
                    scores = self._embed([self.compose(o) for o in options]) @ e
                    choice[k] = self.vocabulary[k][int(scores.argmax())]
            results.append(choice)
        return results

    def __call__(self, images: Sequence[Image.Image]) -> list[str]:
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            return []
        return [self.compose(c) for c in self.attributes(images)]


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or Path(name).expanduser().exists()
