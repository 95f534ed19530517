"""Image generation through a diffusers Stable Diffusion pipeline.

`Generator` wraps one `StableDiffusionPipeline`; image-to-image runs through
`StableDiffusionImg2ImgPipeline(**pipe.components)`, i.e. the very same modules, so there is one
model in memory and one code path. Every image gets its own seeded `torch.Generator` (on the CPU,
so its noise does not depend on the device or on the other images in the batch). Regenerated
alone, an image equals its batched original up to float rounding (batched kernels may choose
other algorithms, so the last bit can differ); replaying the same batch is bit-exact, which is
why the controller stores each image's batch composition in its provenance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from diffusers import DiffusionPipeline
from diffusers.callbacks import MultiPipelineCallbacks, SDCFGCutoffCallback
from PIL import Image

from .. import compute
from ..data.images import to_rgb
from ..seeds import image_seed

# Scheduler choice by name: plain data (name -> diffusers class name), resolved lazily.
SCHEDULERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {}),
    "dpm++_karras": ("DPMSolverMultistepScheduler", {"use_karras_sigmas": True}),
    "dpm++_sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}

ProgressFn = Callable[[float, int], None]  # (images done, fractional; total images)
Tensors = dict[str, torch.Tensor]  # a diffusers step callback's callback_kwargs


class GenerationError(RuntimeError):
    """Generation could not run; the message names the cause and the fix."""


class GenerationCancelled(Exception):
    """Raised by `Generator.__call__(..., strict_cancel=True)`; `images` holds the finished ones."""

    def __init__(self, images: list[Image.Image]):
        super().__init__(f"generation cancelled after {len(images)} finished image(s)")
        self.images = images


def scheduler_like(source: Any, cls: Any, **extra: Any) -> Any:
    """A `cls` scheduler built from `source`'s config that samples as `source` does.

    `from_config` fills settings the source's class lacks with `cls`'s defaults, and DDIM's
    defaults (`clip_sample=True`, `set_alpha_to_one=True`) clip the predicted clean latent to
    [-1, 1] at every step, which turns latents with a wider range (the starter's, std 1 with
    values past +-5) into textured noise. A source without these keys does not clip (unless it
    thresholds) and keeps the usual Stable Diffusion final alpha, so they are set that way.
    """
    config = dict(source.config)
    config.setdefault("clip_sample", bool(config.get("thresholding", False)))
    config.setdefault("set_alpha_to_one", False)
    for key in ("clip_sample", "set_alpha_to_one"):
        if config[key] is None:
            config[key] = False
    return cls.from_config(config, **extra)


def set_scheduler(pipe: Any, name: str) -> None:
    """Swap the pipeline's scheduler for `name` (see SCHEDULERS), keeping the checkpoint's sampling settings."""
    import diffusers

    key = name.lower().replace(" ", "").replace("-", "_")
    key = {"dpmpp": "dpm++", "dpm++2m": "dpm++", "dpmsolver": "dpm++", "euler_ancestral": "euler_a"}.get(key, key)
    if key not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}: choose one of {sorted(SCHEDULERS)}")
    class_name, extra = SCHEDULERS[key]
    pipe.scheduler = scheduler_like(pipe.scheduler, getattr(diffusers, class_name), **extra)


def _check_prompts(prompts: Sequence[str]) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompt {i} is empty ({p!r}): give every image a non-empty text prompt")
        out.append(p)
    if not out:
        raise ValueError("no prompts given: pass a list with at least one prompt")
    return out


def _per_image(value: Any, n: int, what: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{len(value)} {what} for {n} prompts: pass one per prompt or a single value")
        return list(value)
    return [value] * n


def square(image: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to the generator's resolution (img2img sources)."""
    return centre_square(to_rgb(image), size, Image.Resampling.BICUBIC)


def centre_square(image: Image.Image, size: int, resample: int) -> Image.Image:
    """The crop and resize of `square` in any image mode (NEAREST keeps an object mask binary)."""
    w, h = image.size
    if w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        image = image.crop((left, top, left + s, top + s))
    if image.size != (size, size):
        image = image.resize((size, size), resample)
    return image


def perturb_latents(latents: torch.Tensor, scale: float, seed: int) -> torch.Tensor:
    """GIF-style latent perturbation z' = z * (1 + e) + b, per channel, seeded.

    e ~ U(0, 1) * scale and b ~ N(0, 1) * scale, one value per latent channel (methods.md, GIF).
    """
    g = torch.Generator().manual_seed(int(seed) + 7919)  # separate stream from the diffusion noise
    c = latents.shape[1]
    e = torch.rand((1, c, 1, 1), generator=g) * scale
    b = torch.randn((1, c, 1, 1), generator=g) * scale
    return latents * (1 + e.to(latents)) + b.to(latents)


@dataclass
class BatchResult:
    """One finished pipeline call: the request indices it covered, their images and quality flags."""

    indices: list[int]
    images: list[Image.Image]
    flags: list[str] = field(default_factory=list)  # "" | "nan" | "black" | "nsfw" per image
    batch_size: int = 0


@dataclass(frozen=True)
class _BatchCall:
    """What every pipeline call of one `iter_batches` run shares (checked there)."""

    prompts: list[str]
    negs: list[str]
    seeds: list[int]
    steps: int
    guidance: float
    images: Sequence[Image.Image] | None
    strength: float
    perturbation: float
    progress: ProgressFn | None
    total: int
    is_cancelled: Callable[[], bool]
    floor: float | None


class _OwnFloor:
    """Sentinel: use the Generator's own guidance_min_sigma (None is a real value: guide every step)."""

    def __repr__(self) -> str:
        return "the generator's own"


OWN_FLOOR: Any = _OwnFloor()


class Generator:
    """Text-to-image and image-to-image with one seed per image, in batches, cancellable."""

    def __init__(
        self,
        pipe: Any,
        name: str | None = None,
        default_steps: int = 20,
        default_guidance: float = 7.5,
        scheduler: str | None = None,
        guidance_min_sigma: float | None = None,
        default_batch_size: int = 8,
    ) -> None:
        """default_batch_size: images per pipeline call when neither the round nor the crafter sets one
        (a small model's images/s grows with the batch: the starter kit's is 64).

        guidance_min_sigma: apply classifier-free guidance only while the noise level is above
        this sigma (sqrt((1 - alpha_bar) / alpha_bar)); below it the conditional prediction alone is
        used. Guidance is "largely unnecessary toward the end" of sampling (Kynkaanniemi et al. 2024,
        arXiv 2404.07724), and on a small model it can redraw what low-strength image-to-image is
        meant to keep. None applies guidance at every step, as diffusers does.
        """
        self.pipe = pipe
        self.guidance_min_sigma = _check_floor(guidance_min_sigma)
        self.name = name or getattr(pipe, "name_or_path", None) or type(pipe).__name__
        self.default_steps = int(default_steps)
        self.default_guidance = float(default_guidance)
        if int(default_batch_size) < 1:
            raise ValueError(f"default_batch_size={default_batch_size} must be at least 1")
        self.default_batch_size = int(default_batch_size)
        self.scheduler_name = scheduler
        if scheduler:
            set_scheduler(pipe, scheduler)
        self._img2img: Any = None
        self.placement = ""  # where the weights live, e.g. "cuda (model cpu offload)" (Models.stable_diffusion)
        self.last_flags: list[str] = []
        if hasattr(pipe, "set_progress_bar_config"):
            pipe.set_progress_bar_config(disable=True)

    def __repr__(self) -> str:
        floor = "" if self.guidance_min_sigma is None else f", guidance_min_sigma={self.guidance_min_sigma}"
        return (
            f"Generator({self.name!r}, device={self.device!r}, resolution={self.resolution}, "
            f"steps={self.default_steps}, guidance={self.default_guidance}{floor})"
        )

    # ---- properties -------------------------------------------------------------------------
    @property
    def device(self) -> str:
        return str(getattr(self.pipe, "_execution_device", None) or getattr(self.pipe, "device", "cpu"))

    @property
    def resolution(self) -> int:
        unet = self.pipe.unet
        return int(unet.config.sample_size) * int(getattr(self.pipe, "vae_scale_factor", 8))

    @property
    def img2img(self) -> Any:  # a StableDiffusionImg2ImgPipeline; its components are set at runtime (vae, ...)
        """The img2img pipeline over the same components (built once, shares all weights)."""
        if self._img2img is None:
            from diffusers import StableDiffusionImg2ImgPipeline

            components = dict(self.pipe.components)
            if "requires_safety_checker" not in components:
                components["requires_safety_checker"] = bool(
                    getattr(self.pipe.config, "requires_safety_checker", False)
                )
            pipe = StableDiffusionImg2ImgPipeline(**components)
            if hasattr(pipe, "set_progress_bar_config"):
                pipe.set_progress_bar_config(disable=True)
            self._img2img = pipe
        return self._img2img

    # ---- public call --------------------------------------------------------------------------
    def __call__(
        self,
        prompts: Sequence[str] | str,
        *,
        negative_prompt: str | Sequence[str] | None = None,
        seed: int | Sequence[int] = 0,
        steps: int | None = None,
        guidance: float | None = None,
        image: Sequence[Image.Image] | Image.Image | None = None,
        strength: float = 0.5,
        latent_perturbation: float = 0.0,
        batch_size: int = 8,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | Any = None,
        strict_cancel: bool = False,
        guidance_min_sigma: float | None = OWN_FLOOR,
    ) -> list[Image.Image]:
        """Generate one image per prompt. A single int `seed` means seeds seed, seed+1, ...

        guidance_min_sigma overrides the generator's guidance floor for this call (None: guide at
        every step); regeneration passes the stored one, so a shared generator is never mutated.

        Cancelling returns the images of the batches that finished (or raises GenerationCancelled
        with them when `strict_cancel`). Per-image flags ("nan", "black", "nsfw") land in `last_flags`.
        """
        prompts = _check_prompts(prompts)
        n = len(prompts)
        seeds = [image_seed(seed, i) for i in range(n)] if isinstance(seed, (int, np.integer)) else list(seed)
        if len(seeds) != n:
            raise ValueError(f"{len(seeds)} seeds for {n} prompts: pass one seed per prompt or a single int")
        images = None
        if image is not None:
            images = [image] * n if isinstance(image, Image.Image) else list(image)
            if len(images) != n:
                raise ValueError(f"{len(images)} source images for {n} prompts: pass one image per prompt")
        out: list[Image.Image | None] = [None] * n
        flags = [""] * n
        finished = 0
        for result in self.iter_batches(
            prompts,
            negative_prompts=_per_image(negative_prompt, n, "negative prompts"),
            seeds=seeds,
            steps=steps,
            guidance=guidance,
            images=images,
            strength=strength,
            latent_perturbation=latent_perturbation,
            batch_size=batch_size,
            progress=progress,
            cancel=cancel,
            guidance_min_sigma=guidance_min_sigma,
        ):
            for i, im, fl in zip(result.indices, result.images, result.flags):
                out[i], flags[i] = im, fl
                finished += 1
        done = [im for im in out if im is not None]
        self.last_flags = [f for im, f in zip(out, flags) if im is not None]
        if finished < n and strict_cancel:
            raise GenerationCancelled(done)
        return done

    # ---- batched core -------------------------------------------------------------------------
    def iter_batches(
        self,
        prompts: Sequence[str],
        *,
        negative_prompts: Sequence[str | None] | None = None,
        seeds: Sequence[int],
        steps: int | None = None,
        guidance: float | None = None,
        images: Sequence[Image.Image] | None = None,
        strength: float = 0.5,
        latent_perturbation: float = 0.0,
        batch_size: int = 8,
        progress: ProgressFn | None = None,
        cancel: Callable[[], bool] | Any = None,
        guidance_min_sigma: float | None = OWN_FLOOR,
    ) -> Iterator[BatchResult]:
        """Run the requests in full batches of at most `batch_size`, yielding each finished batch.

        All requests share steps / guidance / strength / mode (one pipeline call needs them equal;
        the controller groups its requests accordingly). Stops quietly when `cancel()` turns true:
        the interrupted batch is dropped, so nothing half-done comes out. On CUDA out-of-memory
        the batch size is halved and the batch retried; at batch size 1 a GenerationError says so.
        """
        prompts = _check_prompts(prompts)
        n = len(prompts)
        negs = ["" if x is None else str(x) for x in (negative_prompts or [None] * n)]
        if len(negs) != n or len(seeds) != n:
            raise ValueError(f"{n} prompts need {n} negative prompts and {n} seeds (got {len(negs)}, {len(seeds)})")
        steps = int(steps or self.default_steps)
        guidance = float(self.default_guidance if guidance is None else guidance)
        if steps < 1:
            raise ValueError(f"steps={steps}: use at least 1 denoising step")
        if images is not None:
            if len(images) != n:
                raise ValueError(f"{len(images)} source images for {n} prompts: pass one image per prompt")
            if not 0.0 < float(strength) <= 1.0:
                raise ValueError(f"strength={strength}: image-to-image strength must be in (0, 1]")
            if int(steps * float(strength)) < 1:
                raise ValueError(
                    f"strength={strength} with {steps} steps runs no denoising step (image-to-image runs "
                    f"int(steps * strength) of them): raise steps or strength"
                )
        if latent_perturbation and images is None:
            raise ValueError("latent_perturbation needs source images: pass image=[...] (image-to-image)")
        floor = self.guidance_min_sigma if guidance_min_sigma is OWN_FLOOR else _check_floor(guidance_min_sigma)
        is_cancelled = _cancel_fn(cancel)
        call = _BatchCall(
            prompts=prompts,
            negs=negs,
            seeds=list(seeds),
            steps=steps,
            guidance=guidance,
            images=images,
            strength=float(strength),
            perturbation=float(latent_perturbation),
            progress=progress,
            total=n,
            is_cancelled=is_cancelled,
            floor=floor,
        )
        size = max(1, int(batch_size))
        start = 0
        while start < n:
            if is_cancelled():
                return
            idx = list(range(start, min(n, start + size)))
            try:
                with compute.step("sampler"):  # the policy's threads, chosen per batch
                    result = self._run_batch(call, idx, start)
            except torch.cuda.OutOfMemoryError as err:
                _free_cuda()
                if size == 1:
                    raise GenerationError(
                        f"out of GPU memory generating a single {self.resolution}px image with {self.name!r}: "
                        "use a smaller model or resolution, enable_model_cpu_offload(), or free GPU memory "
                        "(other models in this kernel)"
                    ) from err
                size = max(1, size // 2)
                continue
            if result is None:  # interrupted mid-batch: drop it
                return
            result.batch_size = size
            yield result
            start += len(idx)
            if progress is not None:
                progress(float(start), n)

    def _run_batch(self, call: _BatchCall, idx: list[int], offset: int) -> BatchResult | None:
        """Requests `idx` of `call` in one pipeline call (`offset` images of the call done before it)."""
        prompts, negs, seeds, steps, guidance = call.prompts, call.negs, call.seeds, call.steps, call.guidance
        images, strength, perturbation, progress = call.images, call.strength, call.perturbation, call.progress
        total, is_cancelled, floor = call.total, call.is_cancelled, call.floor
        gens = [torch.Generator().manual_seed(int(seeds[i])) for i in idx]
        kwargs: dict[str, Any] = dict(
            prompt=[prompts[i] for i in idx],
            negative_prompt=[negs[i] for i in idx],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gens,
            output_type="np",
        )
        if images is None:
            pipe = self.pipe
            kwargs.update(height=self.resolution, width=self.resolution)
        else:
            pipe = self.img2img
            kwargs["strength"] = strength
            sources = [square(images[i], self.resolution) for i in idx]
            if perturbation:
                kwargs["image"] = self._perturbed_latents(sources, [seeds[i] for i in idx], perturbation)
            else:
                kwargs["image"] = sources
        interrupted = {"flag": False}

        def on_step_end(p, step, timestep, tensors):
            steps_total = max(1, int(getattr(p, "_num_timesteps", steps) or steps))
            if progress is not None:
                progress(offset + len(idx) * min(1.0, (step + 1) / steps_total), total)
            if step + 1 < steps_total and is_cancelled():  # after the last step the batch is done: keep it
                interrupted["flag"] = True
                p._interrupt = True
            return tensors

        callbacks: list[Any] = [_StepHook(on_step_end)]
        guided_steps = _guided_steps(pipe, floor, steps, guidance, strength if images is not None else 1.0)
        if guided_steps == 0:
            kwargs["guidance_scale"] = 1.0  # the whole (short) chain runs below the guidance floor
        elif guided_steps is not None:
            callbacks.append(BatchCFGCutoffCallback(cutoff_step_ratio=None, cutoff_step_index=guided_steps - 1))
        kwargs["callback_on_step_end"] = MultiPipelineCallbacks(callbacks)
        with torch.no_grad():
            out = pipe(**kwargs)
        if interrupted["flag"]:
            return None
        arrays = np.asarray(out.images)
        nsfw = getattr(out, "nsfw_content_detected", None) or [False] * len(idx)
        result_images, flags = [], []
        for k in range(len(idx)):
            arr = arrays[k]
            flag = ""
            if not np.isfinite(arr).all():
                flag = "nan"
                arr = np.nan_to_num(arr, nan=0.0, posinf=1.0, neginf=0.0)
            elif nsfw[k]:
                flag = "nsfw"
            elif float(arr.max()) < 0.02:
                flag = "black"
            # The same rounding as diffusers' numpy_to_pil, so results equal the pipeline's PIL output.
            result_images.append(Image.fromarray((np.clip(arr, 0, 1) * 255).round().astype("uint8")))
            flags.append(flag)
        return BatchResult(indices=list(idx), images=result_images, flags=flags)

    def _perturbed_latents(self, sources: list[Image.Image], seeds: list[int], scale: float) -> torch.Tensor:
        """Encode each source with the VAE (seeded, one at a time) and perturb its latent (GIF)."""
        pipe = self.img2img
        vae = pipe.vae
        if int(vae.config.latent_channels) != 4:
            raise GenerationError(
                f"latent perturbation needs a 4-channel VAE (diffusers' img2img takes latents only then); "
                f"{self.name!r} has {vae.config.latent_channels}: use strategy='caption' or 'class' instead"
            )
        device = pipe._execution_device
        latents = []
        with torch.no_grad():
            for im, s in zip(sources, seeds):
                x = pipe.image_processor.preprocess(im).to(device=device, dtype=vae.dtype)
                dist = vae.encode(x).latent_dist
                z = (
                    dist.sample(torch.Generator().manual_seed(int(s) + 104729))
                    if hasattr(dist, "sample")
                    else dist.mode()
                )
                z = z * vae.config.scaling_factor
                latents.append(perturb_latents(z.float(), scale, s).to(vae.dtype))
        return torch.cat(latents, dim=0)


class BatchCFGCutoffCallback(SDCFGCutoffCallback):
    """diffusers' CFG cut-off (the guidance floor), for batches of different prompts.

    After step `cutoff_step_index` the pipeline runs the conditional prediction alone. The stock
    SDCFGCutoffCallback keeps `prompt_embeds[-1:]`, the last prompt's row: right for one prompt, but
    a batch of different prompts then fails with a shape mismatch in the UNet; this keeps the whole
    conditional half (`chunk(2)[1]`, one row per image). Guidance scale 0 after the cut-off, as
    upstream (the pipeline then skips the unconditional pass).
    """

    def callback_fn(
        self, pipeline: DiffusionPipeline, step_index: int, timestep: Tensor, callback_kwargs: Tensors
    ) -> Tensors:
        config: dict[str, Any] = dict(self.config)
        pipe: Any = (
            pipeline  # SD pipelines have num_timesteps / _guidance_scale; DiffusionPipeline does not declare them
        )
        cutoff = config["cutoff_step_index"]
        if cutoff is None:
            cutoff = int(pipe.num_timesteps * config["cutoff_step_ratio"])
        if step_index == cutoff:
            callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[1]
            pipe._guidance_scale = 0.0
        return callback_kwargs


class _StepHook:
    """Progress and cancel after every denoising step, as one of MultiPipelineCallbacks' callbacks."""

    tensor_inputs: list[str] = []

    def __init__(self, fn: Callable[[DiffusionPipeline, int, Tensor, Tensors], Tensors]) -> None:
        self.fn = fn

    def __call__(
        self, pipeline: DiffusionPipeline, step_index: int, timestep: Tensor, callback_kwargs: Tensors
    ) -> Tensors:
        return self.fn(pipeline, step_index, timestep, callback_kwargs)


def _check_floor(value: Any) -> float | None:
    if value is None:
        return None
    if not float(value) >= 0.0:
        raise ValueError(f"guidance_min_sigma={value}: give a noise level >= 0, or None for guidance at every step")
    return float(value)


def _guided_steps(pipe: Any, floor: float | None, steps: int, guidance: float, strength: float) -> int | None:
    """How many of a call's denoising steps run above the guidance floor (None: all of them).

    Rebuilds the schedule the pipeline will use (a fresh scheduler from the same config, and the
    image-to-image truncation by strength) and reads each step's noise level off alphas_cumprod.
    """
    if floor is None or float(guidance) <= 1.0:
        return None
    sched = type(pipe.scheduler).from_config(pipe.scheduler.config)
    sched.set_timesteps(int(steps))
    timesteps = sched.timesteps
    if strength < 1.0:
        keep = min(int(int(steps) * float(strength)), int(steps))
        timesteps = timesteps[max(int(steps) - keep, 0) * sched.order :]
    alpha_bar = sched.alphas_cumprod[timesteps.long().clamp(0, len(sched.alphas_cumprod) - 1)].double()
    sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
    above = int((sigmas > floor).sum())
    # sigmas fall monotonically, so the guided steps are the first `above` ones
    return None if above == len(sigmas) else above


def _cancel_fn(cancel: Any) -> Callable[[], bool]:
    if cancel is None:
        return lambda: False
    if hasattr(cancel, "is_set"):  # threading.Event
        return cancel.is_set
    if callable(cancel):
        return lambda: bool(cancel())
    raise TypeError(f"cancel must be a callable returning bool or a threading.Event, not {type(cancel).__name__}")


def _free_cuda() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
