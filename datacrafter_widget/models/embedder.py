"""Image and text embeddings from an open_clip CLIP model.

The embeddings feed the projection, the class filter, the metrics and the student; they are
cached in the store by image hash under `Embedder.name`, so `name` must identify the weights.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from typing import Any

import numpy as np
import torch
from PIL import Image

from .. import compute
from ..data.images import to_rgb


def auto_device(device: str | None = "auto") -> str:
    """'auto' -> cuda, then mps, then cpu."""
    if device not in (None, "auto"):
        return str(device)
    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    return "cpu"


def model_dtype(dtype: torch.dtype | None, device: str, what: str = "the model") -> torch.dtype:
    """The dtype to load a model in: float16 on CUDA and float32 elsewhere by default.

    float16 asked for on the CPU becomes float32, with a warning: the CPU has no float16 kernels, so
    an SD-1.5-shaped UNet step runs ~18x and a VAE decode ~90x slower than in float32 (measured by
    benchmarks/bench_real_size.py's shapes); bfloat16 is the CPU's half precision and is kept.
    """
    if dtype is None:
        return torch.float16 if device == "cuda" else torch.float32
    if dtype == torch.float16 and device == "cpu":
        warnings.warn(
            f"dtype=torch.float16 on the CPU would run {what} many times slower than float32 (the CPU has no "
            "float16 kernels): loading it in float32. Pass dtype=torch.bfloat16 for half precision on a CPU, "
            "or device='cuda' for float16",
            stacklevel=3,
        )
        return torch.float32
    return dtype


class Embedder:
    """open_clip CLIP model + preprocess + tokenizer -> float32 L2-normalised embeddings."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        name: str,
        batch_size: int | None = None,
        templates: Sequence[str] = ("a photo of a {}",),
    ) -> None:
        self.model: Any = model.eval()  # an open_clip CLIP: encode_image / encode_text are its own methods
        # Zero-shot prompt templates that suit this model (a model trained on its own captions,
        # like the starter CLIP, can set templates that match them).
        self.templates = tuple(templates)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.name = str(name)
        self._batch_size = None if batch_size is None else max(1, int(batch_size))

    def __repr__(self) -> str:
        return f"Embedder({self.name!r}, dim={self.dim}, image_size={self.image_size}, device={self.device!r})"

    @classmethod
    def from_open_clip(
        cls, arch: str, pretrained: str | None = None, device: str = "auto", name: str | None = None
    ) -> "Embedder":
        """Load `arch` with a pretrained tag (downloads on a user's machine) or a local checkpoint file."""
        import open_clip

        if arch not in open_clip.list_models() and not arch.startswith(("hf-hub:", "local-dir:")):
            raise ValueError(f"unknown open_clip architecture {arch!r}: see open_clip.list_models() (e.g. 'ViT-B-32')")
        path = None if pretrained is None else Path(pretrained)
        looks_like_path = path is not None and (
            path.suffix in (".pt", ".pth", ".bin", ".safetensors") or "/" in str(pretrained) or "\\" in str(pretrained)
        )
        if path is not None and looks_like_path and not path.is_file():
            raise FileNotFoundError(
                f"open_clip checkpoint {pretrained!r} does not exist: pass a local .safetensors/.pt file, or a "
                f"pretrained tag from open_clip.list_pretrained_tags_by_model({arch!r})"
            )
        dev = auto_device(device)
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=pretrained, device=dev)
        except (OSError, RuntimeError, ValueError) as err:
            raise RuntimeError(
                f"could not load open_clip {arch!r} with pretrained={pretrained!r}: {err}. Offline, pass a local "
                "checkpoint file; online, check the tag with open_clip.list_pretrained_tags_by_model()"
            ) from err
        tokenizer = open_clip.get_tokenizer(arch)
        label = path.stem if path is not None and looks_like_path else (pretrained or "random")
        return cls(model, preprocess, tokenizer, name or f"open_clip:{arch}:{label}")

    # ---- properties -----------------------------------------------------------------------------
    @property
    def device(self) -> str:
        try:
            return str(next(self.model.parameters()).device)
        except StopIteration:
            return "cpu"

    @property
    def batch_size(self) -> int:
        """Images per forward pass: the one given, else by image size (1,024 at 32 px, 85 at 224 px).

        Small batches waste most of a CPU's time on per-call overhead: the starter CLIP embeds 2,048
        images 3-5x faster in batches of 512-1,024 than of 64 (benchmarks/bench_crafter_map.py).
        """
        if self._batch_size is not None:
            return self._batch_size
        return max(16, min(1024, (256 * 256 * 64) // max(1, self.image_size**2)))

    @batch_size.setter
    def batch_size(self, value: int | None) -> None:
        self._batch_size = None if value is None else max(1, int(value))

    @property
    def image_size(self) -> int:
        size = getattr(getattr(self.model, "visual", None), "image_size", 224)
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def dim(self) -> int:
        proj = getattr(self.model, "text_projection", None)
        if proj is not None:
            return int(proj.shape[-1] if isinstance(proj, torch.Tensor) else proj.out_features)
        return int(self.embed_texts(["x"]).shape[1])

    # ---- embeddings -----------------------------------------------------------------------------
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """float32 (n, d), rows L2-normalised."""
        images = [images] if isinstance(images, Image.Image) else list(images)
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        dtype = next(self.model.parameters()).dtype
        out = []
        step = self.batch_size
        with torch.no_grad(), compute.step("embed"):
            for start in range(0, len(images), step):
                chunk = images[start : start + step]
                x = torch.stack([self.preprocess(to_rgb(im)) for im in chunk]).to(self.device, dtype)
                out.append(self.model.encode_image(x).float())
        return _normalise(torch.cat(out))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """float32 (n, d), rows L2-normalised."""
        texts = [texts] if isinstance(texts, str) else [str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        step = max(self.batch_size, 256)  # token sequences are small next to images
        with torch.no_grad():
            for start in range(0, len(texts), step):
                tokens = self.tokenizer(texts[start : start + step]).to(self.device)
                out.append(self.model.encode_text(tokens).float())
        return _normalise(torch.cat(out))

    def class_text_embeddings(self, class_names: Sequence[str], templates: Sequence[str] | None = None) -> np.ndarray:
        """One L2-normalised text embedding per class: the mean over the templates (CLIP's recipe)."""
        templates = self.templates if templates is None else templates
        rows = []
        for c in class_names:
            e = self.embed_texts([t.format(c) for t in templates]).mean(axis=0)
            rows.append(e / max(float(np.linalg.norm(e)), 1e-12))
        return np.stack(rows).astype(np.float32)

    @property
    def logit_scale(self) -> float:
        scale = getattr(self.model, "logit_scale", None)
        if scale is None:
            return 100.0
        return float(min(100.0, float(torch.as_tensor(scale).detach().float().exp())))

    def zero_shot(
        self,
        images_or_embeddings: Sequence[Image.Image] | np.ndarray,
        class_names: Sequence[str],
        templates: Sequence[str] | None = None,
    ) -> np.ndarray:
        """Class probabilities (n, k) from CLIP zero-shot classification (templates default to self.templates)."""
        templates = self.templates if templates is None else templates
        if isinstance(images_or_embeddings, np.ndarray):
            emb = images_or_embeddings.astype(np.float32)
        else:
            emb = self.embed_images(images_or_embeddings)
        text = self.class_text_embeddings(class_names, templates)
        logits = self.logit_scale * emb @ text.T
        logits = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _normalise(x: torch.Tensor) -> np.ndarray:
    x = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return x.cpu().numpy().astype(np.float32)
