"""The set of models a DataCrafter uses, and a factory for Stable Diffusion + open_clip (+ captioner).

Every model is chosen by name or path; nothing is hard-wired to one checkpoint. A model that is
missing is represented by a `MissingModel` placeholder which is falsy and raises a
`MissingModelError` naming the model and the fix as soon as it is used.
"""

from __future__ import annotations

import json
from pathlib import Path
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, Union, overload

import torch
from PIL import Image

from .embedder import auto_device, model_dtype

if TYPE_CHECKING:
    from ..loop.content_labels import Labeler
    from ..loop.student import Student
    from .embedder import Embedder
    from .generator import Generator

#: a captioner: images -> one caption each (Captioner, RetrievalCaptioner, or any such callable)
CaptionFn = Callable[[Sequence[Image.Image]], list[str]]

_KINDS = ("generator", "embedder", "captioner", "labeler", "student")

_FIX = {
    "generator": "pass models=dc.starter.models() (offline) or dc.Models.stable_diffusion('stabilityai/sd-turbo', ...)",
    "embedder": "pass models=dc.starter.models() (offline) or dc.Models.stable_diffusion(..., clip=('ViT-B-32', 'laion2b_s34b_b79k'))",
    "captioner": "pass captioner='Salesforce/blip-image-captioning-base' to dc.Models.stable_diffusion, use the starter models, or give the dataset captions",
    "labeler": "pass labeler=... to dc.Models (see datacrafter_widget.loop.content_labels)",
    "student": "pass student=... to dc.Models or call crafter.train_student()",
}


def _article(word: str) -> str:
    """'a' or 'an' before `word` (by its first letter: an embedder, a generator)."""
    return "an" if word[:1].lower() in "aeiou" else "a"


class MissingModelError(RuntimeError):
    """A step needs a model that was not given; the message names it and how to provide it."""


class MissingModel:
    """Placeholder for a model that was not given: falsy, and any use raises MissingModelError."""

    def __init__(self, kind: str) -> None:
        object.__setattr__(self, "kind", kind)

    def error(self, purpose: str = "") -> MissingModelError:
        what = f"{purpose} needs" if purpose else "this step needs"
        return MissingModelError(
            f"{what} {_article(self.kind)} {self.kind} but none was given: {_FIX.get(self.kind, '')}"
        )

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"MissingModel({self.kind!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise self.error()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise self.error()


class Models:
    """Container of the backends: generator, embedder, captioner, labeler, student (any may be None)."""

    def __init__(
        self,
        generator: Generator | None = None,
        embedder: Embedder | None = None,
        captioner: CaptionFn | None = None,
        labeler: Labeler | None = None,
        student: Student | None = None,
        name: str = "",
    ) -> None:
        self._models: dict[str, Any] = {}
        for kind, value in zip(_KINDS, (generator, embedder, captioner, labeler, student)):
            self._models[kind] = value
        self.name = name
        self.spec: Any = None  # models.spec.ModelSpec: how a worker process loads the same bundle (set by factories)

    def __getattr__(self, name: str) -> Any:
        models = self.__dict__.get("_models")
        if models is not None and name in _KINDS:
            value = models.get(name)
            return value if value is not None else MissingModel(name)
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _KINDS:
            self._models[name] = value
        else:
            object.__setattr__(self, name, value)

    def has(self, kind: str) -> bool:
        return self._models.get(kind) is not None

    @overload
    def require(self, kind: Literal["generator"], purpose: str = "") -> Generator: ...
    @overload
    def require(self, kind: Literal["embedder"], purpose: str = "") -> Embedder: ...
    @overload
    def require(self, kind: Literal["captioner"], purpose: str = "") -> CaptionFn: ...
    @overload
    def require(self, kind: Literal["labeler"], purpose: str = "") -> Labeler: ...
    @overload
    def require(self, kind: Literal["student"], purpose: str = "") -> Student: ...
    def require(self, kind: str, purpose: str = "") -> Union[Generator, Embedder, CaptionFn, Labeler, Student]:
        """The model of this kind, or a MissingModelError naming what needs it and the fix."""
        value = self._models.get(kind)
        if value is None:
            raise MissingModel(kind).error(purpose)
        return value

    def describe(self) -> dict[str, str]:
        """Plain-data description (stored in the project for provenance)."""
        return {k: str(getattr(v, "name", type(v).__name__)) for k, v in self._models.items() if v is not None}

    def __repr__(self) -> str:
        parts = ", ".join(f"{k}={v}" for k, v in self.describe().items())
        return f"Models({parts})"

    # ---- factories ----------------------------------------------------------------------------
    @classmethod
    def stable_diffusion(
        cls,
        model: str,
        clip: tuple[str, str] | Any | None = ("ViT-B-32", "laion2b_s34b_b79k"),
        captioner: str | Any | None = None,
        device: str = "auto",
        dtype: torch.dtype | None = None,
        scheduler: str | None = None,
        steps: int | None = None,
        guidance: float | None = None,
        memory_savers: bool = True,
        guidance_min_sigma: float | None = None,
    ) -> "Models":
        """Stable Diffusion 1.x / 2.x / Turbo by hub id or local folder, + open_clip + optional captioner.

        fp16 on CUDA, fp32 elsewhere (float16 asked for on the CPU loads float32, with a warning).
        `scheduler` by name (see generator.SCHEDULERS). Turbo checkpoints default to 2 steps and
        guidance 0 (what they were distilled for).
        guidance_min_sigma: no classifier-free guidance below this noise level (see Generator).
        """
        from .captioner import Captioner
        from .embedder import Embedder
        from .generator import Generator

        dev = auto_device(device)
        dtype = model_dtype(dtype, dev, f"Stable Diffusion {str(model)!r}")
        pipe = load_stable_diffusion(model, dtype=dtype)
        on_device = _place(pipe, dev, memory_savers)
        turbo = "turbo" in str(model).lower()
        gen = Generator(
            pipe,
            name=str(model),
            default_steps=steps or (2 if turbo else 30),
            default_guidance=guidance if guidance is not None else (0.0 if turbo else 7.5),
            scheduler=scheduler,
            guidance_min_sigma=guidance_min_sigma,
        )
        gen.placement = on_device
        emb: Embedder | None
        if clip is None or isinstance(clip, Embedder):
            emb = clip
        else:
            arch, pretrained = clip
            emb = Embedder.from_open_clip(arch, pretrained, device=dev)
        if captioner is None or callable(captioner) and not isinstance(captioner, str):
            cap = captioner
        else:
            cap = Captioner.from_pretrained(captioner, device=dev)
        models = cls(generator=gen, embedder=emb, captioner=cap, name=str(model))
        if (clip is None or isinstance(clip, tuple)) and (captioner is None or isinstance(captioner, str)):
            from .spec import ModelSpec  # other processes (Ray workers) rebuild the bundle from this recipe

            models.spec = ModelSpec(
                "datacrafter_widget.models.bundle:Models.stable_diffusion",
                dict(
                    model=str(model),
                    clip=clip,
                    captioner=captioner,
                    device=device,
                    dtype=dtype,
                    scheduler=scheduler,
                    steps=steps,
                    guidance=guidance,
                    memory_savers=memory_savers,
                    guidance_min_sigma=guidance_min_sigma,
                ),
            )
        return models


def load_stable_diffusion(model: str, dtype: torch.dtype = torch.float32) -> Any:
    """StableDiffusionPipeline from a hub id, a local diffusers folder, or a single .safetensors/.ckpt file."""
    from diffusers import StableDiffusionPipeline

    path = Path(str(model)).expanduser()
    if path.exists() or _looks_like_path(str(model)):
        if path.is_file() and path.suffix in (".safetensors", ".ckpt"):
            try:
                return StableDiffusionPipeline.from_single_file(str(path), torch_dtype=dtype)
            except Exception as err:  # noqa: BLE001 - re-raised with the path and the fix
                raise ValueError(f"could not load the single-file checkpoint {str(path)!r}: {err}") from err
        index = path / "model_index.json"
        if not path.is_dir() or not index.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} is not a diffusers Stable Diffusion folder: a valid folder contains model_index.json "
                "and the subfolders unet/, vae/, text_encoder/, tokenizer/, scheduler/ (as saved by "
                "pipe.save_pretrained(folder)); or pass a hub id such as 'stabilityai/sd-turbo'"
            )
        class_name = json.loads(index.read_text(encoding="utf-8")).get("_class_name", "")
        _check_family(class_name, str(path))
        return StableDiffusionPipeline.from_pretrained(
            str(path), torch_dtype=dtype, safety_checker=None, requires_safety_checker=False
        )
    try:
        return StableDiffusionPipeline.from_pretrained(str(model), torch_dtype=dtype)
    except (OSError, ValueError) as err:
        raise OSError(
            f"could not load Stable Diffusion {str(model)!r} from the Hugging Face hub: {err}. Check the id and the "
            "network (HF_HUB_OFFLINE unset), or pass a local folder containing model_index.json"
        ) from err


def _check_family(class_name: str, where: str) -> None:
    if "XL" in class_name or "StableDiffusion3" in class_name or "Flux" in class_name:
        raise ValueError(
            f"{where!r} is a {class_name} checkpoint; this version supports the Stable Diffusion 1.x / 2.x / Turbo "
            "family (StableDiffusionPipeline): pass e.g. 'stabilityai/sd-turbo' or 'runwayml/stable-diffusion-v1-5'"
        )


def _place(pipe: Any, device: str, memory_savers: bool) -> str:
    """Move the pipeline to the device; use diffusers' memory savers where they help."""
    if device == "cuda" and memory_savers:
        total = torch.cuda.get_device_properties(0).total_memory
        if total < 8 * 1024**3:  # small GPUs: keep only the active module on the GPU
            pipe.enable_model_cpu_offload()
            return "cuda (model cpu offload)"
    pipe.to(device)
    if device == "mps" and memory_savers:
        pipe.enable_attention_slicing()  # diffusers' advice for Apple silicon
    if memory_savers and hasattr(pipe, "enable_vae_slicing"):
        try:
            pipe.enable_vae_slicing()  # decode a batch one image at a time: same result, less peak memory
        except Exception:  # noqa: BLE001 - optional
            pass
    return device


def _looks_like_path(name: str) -> bool:
    return (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith((".safetensors", ".ckpt"))
    )
