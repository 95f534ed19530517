"""GAP: guided adversarial prompts (closed loop with the student).

A few new prompt token embeddings are learned textual-inversion style (only those rows change;
the models stay frozen) by backpropagating through a short differentiable DDIM sampler, the VAE
decoder and the student:

    L = w_adv * CE(student(x), uniform)            # make the student uncertain on x
      + lt * || Et(prompt) - et ||^2                # text guidance toward a target description
      + li * (1 - cos(Ei(x), ei))                   # image guidance toward unlabelled target images

The class stays in the prompt ("a photo of a {class} <t1> ... <tk>"); the guidance keeps the
images in the target distribution. Text-to-image alone does not keep the label: on the starter
digits most learned-token images drifted off their class. So GAP can also start from real labelled
source images (img2img: the source latents noised to `strength`) and paste the source's object back
after decoding, x = mask * source + (1 - mask) * generated (the paper inpaints outside the object
mask). The student loss is then computed on that composite, the gradient reaches only the context,
and the adversarial term can only make the student uncertain by changing the context (e.g. a
spurious background), never the object. With image guidance the adversarial
term is off for the first 20% of steps (as in the paper). The new tokens are injected through a
forward hook on the text encoder's token-embedding layer at their positions, so no tokenizer or
model is modified. Final images use more sampler steps; the learned embeddings are saved as
safetensors (with the template and positions in their metadata) so any image can be regenerated.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .. import compute

if TYPE_CHECKING:
    from ..models.embedder import Embedder
    from ..models.generator import Generator
    from .student import Student

__all__ = [
    "GapError",
    "GapConfig",
    "GapResult",
    "optimise_prompt_tokens",
    "generate_with_tokens",
    "load_tokens",
    "load_mask",
    "gap_images",
    "mask_for",
    "student_loss_on",
    "composite",
    "target_modes",
    "failure_targets",
    "uses_checkpointing",
]

PLACEHOLDER = "x"
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class GapError(ValueError):
    """GAP cannot run with this input; the message names the thing and the fix."""


@dataclass
class GapConfig:
    """Settings; defaults follow the GAP paper where it fits a CPU (see methods.md)."""

    n_tokens: int = 8
    steps: int = 200
    lr: float = 1e-3
    sampler_steps: int = 5  # DDIM steps with gradient during optimisation
    final_steps: int = 15  # steps for the final images
    guidance: float = 5.0  # classifier-free guidance scale
    batch: int = 4
    template: str = "a photo of a {class}"
    adversarial_weight: float = 1.0
    text_weight: float = 20.0  # lt (used when a target description is given)
    image_weight: float = 10.0  # li (used when target images are given)
    warmup: float = 0.2  # adversarial term off for this fraction of steps (image guidance only)
    # Recompute UNet and VAE activations block by block in backward, each UNet call and the decoder
    # below its output resolution once more as a whole, and trim the C heap between stages (less
    # memory, ~1.5x the time). None: on for latents of 64 x 64 or more (512 px), where one UNet call's
    # and the VAE decoder's activations are 3.6 and 6 GB at batch 1 (benchmarks/bench_gap_memory.py);
    # off for the starter.
    checkpointing: bool | None = None
    fixed_noise: bool = False  # same starting noise every step (for diagnostics)
    strength: float = 0.8  # img2img strength when starting from source images (1 = ignore their latents)
    # "uniform": cross entropy against the uniform label (the paper: make the student unsure);
    # "true-label": push down the student's probability of the true label, -log(1 - p_true), for
    # source images whose object is kept (a kept object cannot become a second object).
    # "other-class": the paper's "cross entropy toward the other class" for many classes: token set k
    # asks the student to read the class as another class t_k, the t_k chosen to be different failure
    # modes of the student (`failure_targets`), so the sets spread over the student's weak spots
    # instead of piling onto the single hardest one.
    loss: str = "uniform"
    # Token sets per class; with target images, set k is guided toward the k-th cluster of the
    # target images' embeddings, so a class covers the target's modes instead of collapsing onto one.
    # With several target descriptions, set k is guided toward description k (cycled) instead.
    token_sets: int = 1
    # "class": tokens start at the class name's embedding; "target": set k starts at the token
    # embeddings of its target description (e.g. a caption of a target image without its object),
    # so the sets start spread over the target distribution and the adversarial term moves each.
    init: str = "class"
    # Weight of a class-keeping term: cross entropy of the embedder's zero-shot reading of x against
    # the class. A kept object can still be hidden (a background of the object's own colour), which
    # the adversarial term likes; this keeps the label readable (needs an embedder).
    class_weight: float = 0.0
    # With init="target" and more descriptions than token_sets, each description is rendered on this
    # many batches (no gradient) and the token_sets the student finds hardest are kept.
    screen_batches: int = 2


@dataclass
class GapResult:
    """The learned tokens for one class and the optimisation trace."""

    label: str
    embeddings: torch.Tensor  # (n_tokens, width), or (token_sets, n_tokens, width) for several sets
    prompt: str  # the tokenised prompt text, placeholders written as <gap1>..<gapk>
    template_text: str  # the text that is tokenised (placeholders are the PLACEHOLDER word)
    positions: list[int]
    config: GapConfig
    history: list[dict[str, float]] = field(default_factory=list)
    target: str = ""
    model: str = ""
    file: str = ""
    assignment: dict[int, int] = field(default_factory=dict)  # final image seed -> token set
    targets: list[str] = field(default_factory=list)  # loss="other-class": the class each set aims at
    screen: dict[str, float] = field(default_factory=dict)  # screened description -> adversarial loss

    @property
    def sets(self) -> torch.Tensor:
        """The embeddings as (token_sets, n_tokens, width)."""
        return self.embeddings if self.embeddings.dim() == 3 else self.embeddings.unsqueeze(0)

    def set_of(self, seed: int, position: int) -> int:
        """The token set that renders the image of `seed` (position in its call when not recorded)."""
        return int(self.assignment.get(int(seed), position % len(self.sets)))

    def save(self, path: str | os.PathLike) -> Path:
        """safetensors with the embeddings; template, positions and config in its metadata (no pickle)."""
        from safetensors.torch import save as to_safetensors_bytes

        from ..data.files import atomic_write_bytes

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "label": self.label,
            "prompt": self.prompt,
            "template_text": self.template_text,
            "positions": json.dumps(self.positions),
            "config": json.dumps(asdict(self.config)),
            "target": self.target,
            "model": self.model,
            "assignment": json.dumps({str(k): v for k, v in self.assignment.items()}),
            "targets": json.dumps(self.targets),
            "screen": json.dumps(self.screen),
            "format": "datacrafter-gap-tokens-v1",
        }
        atomic_write_bytes(
            path,
            to_safetensors_bytes({"embeddings": self.embeddings.detach().float().cpu().contiguous()}, metadata=meta),
        )
        self.file = str(path)
        return path


def load_tokens(path: str | os.PathLike) -> GapResult:
    """Read tokens written by `GapResult.save`."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        emb = f.get_tensor("embeddings")
    if meta.get("format") != "datacrafter-gap-tokens-v1":
        raise GapError(f"{path} is not a GAP token file written by datacrafter-widget")
    return GapResult(
        label=meta["label"],
        embeddings=emb,
        prompt=meta["prompt"],
        template_text=meta["template_text"],
        positions=json.loads(meta["positions"]),
        config=GapConfig(**json.loads(meta["config"])),
        target=meta.get("target", ""),
        model=meta.get("model", ""),
        file=str(path),
        assignment={int(k): int(v) for k, v in json.loads(meta.get("assignment", "{}")).items()},
        targets=[str(t) for t in json.loads(meta.get("targets", "[]"))],
        screen={str(k): float(v) for k, v in json.loads(meta.get("screen", "{}")).items()},
    )


# ---- prompt plumbing ---------------------------------------------------------------------------
def _tokenize(tokenizer: Any, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


def _prompt_layout(tokenizer: Any, label: str, template: str, k: int) -> tuple[str, str, list[int]]:
    base = template.replace("{class}", label).replace("{}", label)
    text = base + " " + " ".join([PLACEHOLDER] * k)
    ids = tokenizer(text, truncation=False).input_ids
    base_ids = tokenizer(base, truncation=False).input_ids
    start = len(base_ids) - 1  # drop base's end-of-text token
    positions = list(range(start, start + k))
    ph = tokenizer(PLACEHOLDER, add_special_tokens=False).input_ids
    if len(ph) != 1 or ids[start : start + k] != ph * k:
        raise GapError(f"cannot place {k} prompt tokens after {base!r} with this tokenizer")
    if len(ids) > tokenizer.model_max_length:
        raise GapError(
            f"the prompt {base!r} plus {k} learned tokens is {len(ids)} tokens, more than the text "
            f"encoder's {tokenizer.model_max_length}: use fewer tokens (n_tokens) or a shorter template"
        )
    readable = base + " " + " ".join(f"<gap{i + 1}>" for i in range(k))
    return text, readable, positions


@contextlib.contextmanager
def _inject(text_encoder: Any, positions: list[int], vectors: torch.Tensor):
    """Replace the token embeddings at `positions` with `vectors` during the forward pass.

    vectors: (k, width) for every row, or (rows, k, width), one set per row of the batch.
    """
    layer = text_encoder.get_input_embeddings()

    def hook(module, inputs, output):
        out = output.clone()
        v = vectors.to(out.dtype)
        out[:, positions, :] = v if v.dim() == 3 else v.unsqueeze(0).expand(out.shape[0], -1, -1)
        return out

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _encode(pipe: Any, ids: torch.Tensor, positions: list[int] | None = None, vectors: torch.Tensor | None = None):
    """(last hidden states, pooled output) of the pipeline's text encoder, with tokens injected."""
    ids = ids.to(pipe.text_encoder.device)
    ctx = _inject(pipe.text_encoder, positions or [], vectors) if vectors is not None else contextlib.nullcontext()
    with ctx:
        out = pipe.text_encoder(ids)
    pooled = getattr(out, "pooler_output", None)
    if pooled is None:
        pooled = out[0][torch.arange(ids.shape[0]), ids.argmax(-1)]
    return out[0], pooled


def _image_features(embedder: Any, x: torch.Tensor) -> torch.Tensor:
    """Differentiable CLIP image embedding of pixels in [0, 1] (L2-normalised)."""
    model = embedder.model
    size = int(getattr(embedder, "image_size", 224))
    visual = getattr(model, "visual", None)
    mean = getattr(visual, "image_mean", None) or _CLIP_MEAN
    std = getattr(visual, "image_std", None) or _CLIP_STD
    param = next(model.parameters())
    x = F.interpolate(x.to(param.device, torch.float32), size=(size, size), mode="bicubic", align_corners=False).clamp(
        0, 1
    )
    x = (x - torch.tensor(mean, device=x.device).view(1, 3, 1, 1)) / torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return F.normalize(model.encode_image(x.to(param.dtype)).float(), dim=-1)


def _ddim(pipe: Any, steps: int):
    from diffusers import DDIMScheduler

    from ..models.generator import scheduler_like

    sched = scheduler_like(pipe.scheduler, DDIMScheduler)
    sched.set_timesteps(int(steps), device=pipe.unet.device)
    return sched


def _sample(
    pipe: Any,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    latents: torch.Tensor,
    sched: Any,
    guidance: float,
    checkpointing: bool,
    start: int = 0,
    release: bool = False,
) -> torch.Tensor:
    """Differentiable DDIM (eta 0) from `latents` at timestep index `start`; returns decoded pixels in [0, 1].

    release: hand the memory the UNet calls freed back to the OS before the VAE decode (see
    `release_freed_memory`)."""
    unet, vae = pipe.unet, pipe.vae
    b = latents.shape[0]
    hidden = torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)]) if guidance > 1 else cond.expand(b, -1, -1)

    def run_unet(x, t, h):
        if release:  # also when the backward recomputes the call: returns what the VAE's backward freed
            release_freed_memory()
        return unet(x, t, encoder_hidden_states=h).sample

    for t in sched.timesteps[int(start) :]:
        x_in = torch.cat([latents] * 2) if guidance > 1 else latents
        x_in = sched.scale_model_input(x_in, t)
        if checkpointing:
            from torch.utils.checkpoint import checkpoint

            noise = checkpoint(run_unet, x_in, t, hidden, use_reentrant=False)
        else:
            noise = run_unet(x_in, t, hidden)
        if guidance > 1:
            n_u, n_c = noise.chunk(2)
            noise = n_u + guidance * (n_c - n_u)
        latents = sched.step(noise, t, latents, eta=0.0).prev_sample
    if release:
        release_freed_memory()
    image = _decode(vae, latents / vae.config.scaling_factor, nested=checkpointing, release=release)
    return (image / 2 + 0.5).clamp(0, 1)


def _decode(vae: Any, latents: torch.Tensor, nested: bool = False, release: bool = False) -> torch.Tensor:
    """vae.decode(latents).sample, the same computation; `nested` (with the decoder's block checkpointing
    on) also recomputes everything below the output resolution (post_quant_conv up to the last up
    block's input) as one span in the backward.

    The backward's peak is the last up block's at 512 px; without the outer span the inputs the
    lower blocks keep for their own backward (~0.5 GB at SD-1.5 shape) are live under it. Their
    forward runs once more for that (a third of the decoder's)."""
    dec: Any = getattr(vae, "decoder", None)
    plain = (
        type(dec).__name__ == "Decoder"
        and getattr(dec, "gradient_checkpointing", False)
        and not getattr(vae, "use_tiling", False)
        and not getattr(vae, "use_slicing", False)
    )
    if not (nested and plain and torch.is_grad_enabled()):
        return vae.decode(latents).sample
    from torch.utils.checkpoint import checkpoint

    by_block = dec._gradient_checkpointing_func

    def below_output(z: torch.Tensor) -> torch.Tensor:
        if release:  # also when the backward recomputes the span
            release_freed_memory()
        if getattr(vae, "post_quant_conv", None) is not None:
            z = vae.post_quant_conv(z)
        h = by_block(dec.mid_block, dec.conv_in(z), None)
        for block in dec.up_blocks[:-1]:
            h = by_block(block, h, None)
        return h

    h = by_block(dec.up_blocks[-1], checkpoint(below_output, latents, use_reentrant=False), None)
    return dec.conv_out(dec.conv_act(dec.conv_norm_out(h)))


def _latent_shape(pipe: Any, batch: int) -> tuple[int, int, int, int]:
    size = int(pipe.unet.config.sample_size)
    return (batch, int(pipe.unet.config.in_channels), size, size)


def _img2img_start(steps: int, strength: float) -> int:
    """Index of the first DDIM timestep run when starting from a noised source (as diffusers' img2img)."""
    if not 0.0 < float(strength) <= 1.0:
        raise GapError(f"strength={strength}: the img2img strength for source images must be in (0, 1]")
    run = min(int(steps), max(1, int(int(steps) * float(strength))))
    return int(steps) - run


def composite(generated: torch.Tensor, source: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """mask * source + (1 - mask) * generated: the object comes from the source, the context from the generator."""
    return mask * source + (1.0 - mask) * generated


@dataclass
class _Sources:
    """Source images of one or more classes, ready for the sampler (pixels, masks and latents on the device)."""

    pixels: torch.Tensor  # (n, 3, H, W) in [0, 1]
    masks: torch.Tensor | None  # (n, 1, H, W) in [0, 1], None = no composite (img2img only)
    latents: torch.Tensor  # (n, C, h, w), scaled like the UNet's input
    label_of: list[int]  # index into the optimised labels, per source


def _pixel_size(pipe: Any) -> int:
    return int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))


@torch.no_grad()
def _prepare_sources(
    pipe: Any, images: Sequence[Image.Image], masks: Sequence[Any] | None, label_of: list[int]
) -> _Sources:
    from ..models.generator import centre_square, square
    from .masks import mask_from_image, mask_to_image

    size = _pixel_size(pipe)
    if masks is not None and len(masks) != len(images):
        raise GapError(f"got {len(images)} source images but {len(masks)} masks: pass one mask per source image")
    pix = torch.stack(
        [
            torch.from_numpy(np.asarray(square(im.convert("RGB"), size), dtype=np.float32) / 255.0).permute(2, 0, 1)
            for im in images
        ]
    )
    mk = None
    if masks is not None:
        rows = []
        for i, m in enumerate(masks):
            a = np.asarray(m, dtype=np.float32)
            if a.ndim != 2:
                raise GapError(
                    f"masks[{i}] has shape {a.shape}: a mask is 2-D (H x W), 1 on the object, 0 on the context"
                )
            if a.shape != (size, size):  # the same centre crop as `square` applies to the source, nearest resize
                a = mask_from_image(centre_square(mask_to_image(a), size, Image.Resampling.NEAREST))
            rows.append(torch.from_numpy(np.clip(a, 0.0, 1.0)))
        mk = torch.stack(rows).unsqueeze(1)
    vae = pipe.vae
    device, dtype = pipe.unet.device, pipe.unet.dtype
    lat = vae.encode((pix * 2 - 1).to(vae.device, vae.dtype)).latent_dist.mean * vae.config.scaling_factor
    return _Sources(
        pixels=pix.to(device),
        masks=None if mk is None else mk.to(device),
        latents=lat.to(device, dtype),
        label_of=list(label_of),
    )


def _sources_for(labels: list[str], sources: Any, masks: Any) -> tuple[list[Image.Image], list[Any] | None, list[int]]:
    """Flatten sources given as a list (one class) or a mapping class -> list into (images, masks, label index)."""
    if isinstance(sources, Mapping):
        unknown = [k for k in sources if str(k) not in labels]
        if unknown:
            raise GapError(f"sources for {unknown}, which are not among the classes being optimised {labels}")
        images: list[Image.Image] = []
        mks: list[Any] | None = [] if masks is not None else None
        label_of: list[int] = []
        for li, l in enumerate(labels):
            got = list(sources.get(l, []))
            if not got:
                raise GapError(f"no source images for class {l!r}: pass at least one real image of it")
            images += got
            label_of += [li] * len(got)
            if mks is not None:
                if not isinstance(masks, Mapping) or l not in masks:
                    raise GapError(f"sources are given per class, so masks must be too: no masks for class {l!r}")
                mks += list(masks[l])
        return images, mks, label_of
    if len(labels) > 1:
        raise GapError("shared tokens over several classes need sources per class: pass {class: [images]} as sources")
    images = list(sources)
    if not images:
        raise GapError(f"sources is empty: pass at least one real image of class {labels[0]!r}")
    return images, (list(masks) if masks is not None else None), [0] * len(images)


def release_freed_memory() -> None:
    """Return the C heap's free pages to the OS (glibc's malloc_trim; elsewhere nothing).

    A checkpointed UNet call at 512 px allocates and frees many tensors of a few MB; glibc keeps
    such freed blocks in its heaps instead of returning them (1.3 GB after one call at SD-1.5
    shape), and the VAE decoder's larger tensors, mapped fresh, then come on top. Trimming between
    the stages of a GAP step keeps that free memory out of the step's resident peak."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return None


CHECKPOINT_FROM_LATENTS = 64  # checkpointing=None turns on from this latent side (512 px for SD-1.5)


def uses_checkpointing(config: GapConfig, pipe: Any) -> bool:
    """Whether the optimisation recomputes activations: as configured, or by the latent size."""
    if config.checkpointing is not None:
        return bool(config.checkpointing)
    return int(pipe.unet.config.sample_size) >= CHECKPOINT_FROM_LATENTS


def _checkpoint_block(module: Any, *args: Any) -> Any:
    """The checkpoint function diffusers calls per block; inside a VAE decoder's up block, one resnet
    (or upsampler) at a time: the last up block works at the output resolution (3 resnets of 128
    channels at 512 px), and recomputing it whole kept ~3.6 GB live in a 512 px backward."""
    from torch.utils.checkpoint import checkpoint

    if type(module).__name__ == "UpDecoderBlock2D":  # diffusers' forward: the resnets, then the upsamplers
        h, temb = args[0], (args[1] if len(args) > 1 else None)
        for resnet in module.resnets:
            h = checkpoint(resnet, h, temb, use_reentrant=False)
        for upsampler in module.upsamplers or []:
            h = checkpoint(upsampler, h, use_reentrant=False)
        return h
    return checkpoint(module, *args, use_reentrant=False)


@contextlib.contextmanager
def _block_checkpointing(*models: Any) -> Iterator[list[Any]]:
    """Per-block activation checkpointing in the diffusers models that support it, for the span.

    A backward pass keeps only each block's input and recomputes the block's activations when its
    gradient is needed. Checkpointing the whole UNet call instead stores nothing between sampler
    steps but recomputes the call in one piece, so its full activations (and the VAE decoder's at
    the output resolution) are all live at once. Yields the models switched here.
    """
    switched = []
    for m in models:
        if getattr(m, "_supports_gradient_checkpointing", False) and not getattr(m, "is_gradient_checkpointing", True):
            m.enable_gradient_checkpointing(gradient_checkpointing_func=_checkpoint_block)
            switched.append(m)
    try:
        yield switched
    finally:
        for m in switched:
            m.disable_gradient_checkpointing()


@contextlib.contextmanager
def _frozen(*modules: Any):
    saved = []
    for m in modules:
        if m is None:
            continue
        for p in m.parameters():
            saved.append((p, p.requires_grad))
            p.requires_grad_(False)
    try:
        yield
    finally:
        for p, r in saved:
            p.requires_grad_(r)


def _pipe_of(generator: Any) -> Any:
    pipe = getattr(generator, "pipe", generator)
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if getattr(pipe, part, None) is None:
            raise GapError(
                f"GAP needs a Stable Diffusion pipeline with a {part}: pass models with a diffusers generator "
                "(dc.starter.models() or dc.Models.stable_diffusion(...))"
            )
    return pipe


def target_modes(embeddings: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k guidance points over target image embeddings: their mean (k=1) or k-means centroids, largest first.

    Several token sets per class each pulled toward one cluster of the target images cover the
    target distribution's modes (on the starter, mostly its backgrounds) instead of its average.
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if k <= 1 or len(e) < 2:
        return np.repeat(e.mean(0, keepdims=True), max(1, k), axis=0)
    from sklearn.cluster import KMeans

    n = min(int(k), len(e))
    km = KMeans(n_clusters=n, n_init=4, random_state=int(seed) % (2**31)).fit(e)
    order = np.argsort(-np.bincount(km.labels_, minlength=n), kind="stable")
    centres = km.cluster_centers_[order].astype(np.float32)
    return np.concatenate([centres] * (int(k) // n + 1))[: int(k)]


def failure_targets(probs: np.ndarray, exclude: Sequence[int], k: int) -> list[int]:
    """k other classes for a class's token sets to aim at, each a different failure mode of the student.

    probs: the student's class probabilities on unlabelled target images (n x C). Class j's
    prototype is the mean probability vector of the images the student reads as j (soft counts),
    i.e. what the student confuses with j. Classes it confuses through the same cue (two classes
    tied to one background) get near prototypes. Farthest-first from the excluded classes (the
    class itself) picks k targets whose prototypes differ, so the sets leave by different doors.
    """
    p = np.asarray(probs, dtype=np.float64)
    c = p.shape[1]
    proto = (p.T @ p) / np.maximum(p.sum(0)[:, None], 1e-9)  # row j: mean probs of images read as j
    proto /= np.maximum(np.linalg.norm(proto, axis=1, keepdims=True), 1e-12)
    chosen = [int(e) for e in exclude]
    free = [j for j in range(c) if j not in chosen]
    picks: list[int] = []
    for _ in range(min(int(k), len(free))):
        ref = chosen + picks
        dist = [float(np.min(1 - proto[ref] @ proto[j])) if ref else 0.0 for j in free]
        best = free[int(np.argmax(dist))]  # first of the farthest on ties: a stable order
        picks.append(best)
        free.remove(best)
    return picks


# ---- the optimisation ----------------------------------------------------------------------------
def optimise_prompt_tokens(
    generator: Generator,
    student: Student,
    label: str | Sequence[str],
    *,
    target: str | Sequence[str] | None = None,
    target_images: Sequence[Image.Image] | None = None,
    embedder: Embedder | None = None,
    config: GapConfig | None = None,
    seed: int = 0,
    progress: bool | Callable[[int, int], None] = False,
    should_stop: Callable[[], bool] | None = None,
    sources: Sequence[Image.Image] | Mapping[str, Sequence[Image.Image]] | None = None,
    masks: Sequence[np.ndarray] | Mapping[str, Sequence[np.ndarray]] | None = None,
    **overrides: Any,
) -> GapResult:
    """Learn `n_tokens` prompt embeddings for class `label` that fool `student`, guided to the target.

    A list of labels learns one token set shared by those classes ("a photo of a {class} <t1>..<tk>";
    each optimisation batch cycles through the classes): k times cheaper than one set per class.

    generator: a Generator or a diffusers StableDiffusionPipeline. target: a text description of the
    target distribution (text guidance), or several (token set k is guided toward description k,
    and with config.init="target" starts from its words); target_images: unlabelled images from it (image guidance,
    needs `embedder`). Cancelling keeps the tokens learned so far.

    sources: real images of the class (a mapping class -> images for shared tokens); each batch
    item then starts from a source's latents noised to `config.strength` instead of pure noise.
    masks: one object mask per source (H x W, 1 = object): the loss is computed on
    mask * source + (1 - mask) * generated, so only the context can change and the label is kept.
    """
    config = config or GapConfig()
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise GapError(f"unknown GAP setting {k!r}: use one of {sorted(asdict(config))}")
        setattr(config, k, v)
    if student is None:
        raise GapError("GAP needs a student to make uncertain: train one first with crafter.train_student()")
    labels = [str(label)] if isinstance(label, str) else [str(l) for l in label]
    if not labels:
        raise GapError("no class given: pass a class name (or a list of them for shared tokens)")
    if hasattr(student, "class_index"):
        for l in labels:
            student.class_index(l)  # clear error for an unknown class
    if int(config.steps) <= 0:
        raise GapError(
            f"steps={config.steps}: GAP needs at least 1 optimisation step (the paper uses 1000+; 100-300 on a CPU)"
        )
    if int(config.n_tokens) < 1 or int(config.sampler_steps) < 1 or int(config.batch) < 1:
        raise GapError("n_tokens, sampler_steps and batch must all be at least 1")
    if config.loss not in ("uniform", "true-label", "other-class"):
        raise GapError(f"loss={config.loss!r}: use 'uniform' (make the student unsure), 'true-label' or 'other-class'")
    if int(config.token_sets) < 1:
        raise GapError(f"token_sets={config.token_sets}: learn at least 1 token set per class")
    if config.loss != "uniform" and not hasattr(student, "class_index"):
        raise GapError(f"loss={config.loss!r} needs a student that names its classes (student.class_index)")
    n_sets = int(config.token_sets)
    descs = [target] if isinstance(target, str) else [str(t) for t in (target or [])]
    descs = [d for d in descs if d.strip()]
    if config.init not in ("class", "target"):
        raise GapError(f"init={config.init!r}: use 'class' (start at the class name) or 'target'")
    if config.init == "target" and not descs:
        raise GapError("init='target' starts the tokens from target descriptions: pass target=[...]")
    if float(config.class_weight) > 0 and embedder is None:
        raise GapError("class_weight > 0 keeps the class through the embedder's zero-shot reading: pass an embedder")
    if target_images is not None and len(target_images) and embedder is None:
        raise GapError("image guidance (target_images) needs an embedder: pass models with a CLIP embedder")
    pipe = _pipe_of(generator)
    tok, enc = pipe.tokenizer, pipe.text_encoder
    layouts = [_prompt_layout(tok, l, config.template, int(config.n_tokens)) for l in labels]
    text, readable, positions = layouts[0]
    if any(lay[2] != positions for lay in layouts):
        raise GapError(
            f"the classes {labels} tokenize to different lengths, so they cannot share learned tokens: "
            "learn one set per class (shared=False)"
        )
    device = pipe.unet.device
    dtype = pipe.unet.dtype
    if masks is not None and sources is None:
        raise GapError("masks need source images: pass sources=[real images of the class] with one mask each")
    src = _prepare_sources(pipe, *_sources_for(labels, sources, masks)) if sources is not None else None
    start = _img2img_start(int(config.sampler_steps), float(config.strength)) if src is not None else 0
    by_label = (
        [[i for i, li in enumerate(src.label_of) if li == k] for k in range(len(labels))] if src is not None else []
    )

    with torch.no_grad():
        table = enc.get_input_embeddings().weight
        cls_ids = [i for l in labels for i in tok(l, add_special_tokens=False).input_ids]
        init = table[cls_ids].float().mean(0) if cls_ids else table.float().mean(0)
    gen = torch.Generator().manual_seed(int(seed))
    vectors = init.view(1, 1, -1).repeat(n_sets, config.n_tokens, 1) + 0.01 * init.norm() / math.sqrt(
        init.numel()
    ) * torch.randn(n_sets, config.n_tokens, init.numel(), generator=gen)
    if config.init == "target":
        with torch.no_grad():
            for kset in range(n_sets):
                wids = tok(descs[kset % len(descs)], add_special_tokens=False).input_ids[: int(config.n_tokens)]
                vectors[kset, : len(wids)] = table[wids].float()
    vectors = vectors.to(device).requires_grad_(True)
    opt = torch.optim.Adam([vectors], lr=float(config.lr))
    all_ids = _tokenize(tok, [lay[0] for lay in layouts])
    with torch.no_grad():
        uncond, _ = _encode(pipe, _tokenize(tok, [""]))
        et = None  # (n_sets, d): the description each token set is guided toward
        if descs:
            et = F.normalize(_encode(pipe, _tokenize(tok, descs))[1].float(), dim=-1)
            et = et[[k % len(descs) for k in range(n_sets)]]
        ei = None  # (n_sets, d): the target point each token set is guided toward
        if target_images is not None and len(target_images) and embedder is not None:
            found = np.asarray(embedder.embed_images(list(target_images)), dtype=np.float32)
            # other-class sets differ by their target class; all are held to the target's mean
            modes = 1 if config.loss == "other-class" or len(descs) > 1 else n_sets
            ei = torch.from_numpy(np.repeat(target_modes(found, modes, seed=int(seed)), n_sets // modes, axis=0))
            ei = F.normalize(ei, dim=-1).to(next(embedder.model.parameters()).device)
    student_dev = next(student.net.parameters()).device if hasattr(student, "net") else torch.device("cpu")
    aims: list[int] = []
    if config.loss == "other-class":
        seen = list(target_images) if target_images is not None and len(target_images) else None
        if seen is None and sources is not None:
            seen = [im for ims in (sources.values() if isinstance(sources, Mapping) else [sources]) for im in ims]
        if not seen:
            raise GapError("loss='other-class' needs target_images (or sources) to see where the student fails")
        with torch.no_grad():
            probs = F.softmax(student.logits(seen).float(), dim=-1).cpu().numpy()
        aims = failure_targets(probs, [student.class_index(l) for l in labels], n_sets)
        if len(aims) < n_sets:
            raise GapError(f"token_sets={n_sets} but only {len(aims)} other classes to aim at: use fewer sets")
    warm = int(round(config.warmup * config.steps)) if ei is not None else 0
    history: list[dict[str, float]] = []
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.steps, desc=f"GAP tokens for {', '.join(labels)}", leave=False)
    net = getattr(student, "net", None)
    was_training = net.training if net is not None else False
    if net is not None:
        net.eval()
    keep = float(config.class_weight) > 0 and embedder is not None
    clip_model = getattr(embedder, "model", None) if ei is not None or keep else None
    zero_shot = None  # (n_classes, d) class text embeddings, for the class-keeping term
    if keep and embedder is not None:
        names = list(student.classes) if hasattr(student, "classes") else labels
        zero_shot = torch.from_numpy(embedder.class_text_embeddings(names)).float()
        keep_idx = [names.index(lab) for lab in labels]
    fixed = torch.randn(_latent_shape(pipe, config.batch), generator=torch.Generator().manual_seed(int(seed) + 1))

    def render(step: int, sets: list[int], vecs: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
        """Step `step`'s batch (its noise and sources) through the sampler with token vectors `vecs`:
        (the label index of each item, pixels, pooled prompt embedding)."""
        sched = _ddim(pipe, config.sampler_steps)
        noise = (
            fixed
            if config.fixed_noise
            else torch.randn(
                _latent_shape(pipe, config.batch),
                generator=torch.Generator().manual_seed(int(seed) * 100003 + step),
            )
        )
        which = [(step * config.batch + j) % len(labels) for j in range(config.batch)]
        chosen: list[int] = []
        if src is None:
            latents = noise.to(device, dtype) * sched.init_noise_sigma
        else:  # img2img: each batch item starts from a (seeded) random source of its class
            pick = torch.Generator().manual_seed(int(seed) * 100003 + step + 50_000_017)
            chosen = [by_label[w][int(torch.randint(len(by_label[w]), (1,), generator=pick))] for w in which]
            latents = sched.add_noise(src.latents[chosen], noise.to(device, dtype), sched.timesteps[start : start + 1])
        ids = all_ids[which] if len(labels) > 1 or n_sets > 1 else all_ids
        cond, pooled = _encode(pipe, ids, positions, vecs)
        x = _sample(
            pipe,
            cond.to(dtype),
            uncond.to(dtype),
            latents,
            sched,
            float(config.guidance),
            ckpt,  # a UNet without block checkpointing
            start=start,
            release=release,
        )
        if src is not None and src.masks is not None:
            x = composite(x.float(), src.pixels[chosen], src.masks[chosen])
        return which, x, pooled

    def adversarial(log_p: torch.Tensor, which: list[int], sets: list[int]) -> torch.Tensor:
        if config.loss == "true-label":
            true = torch.tensor([student.class_index(labels[w]) for w in which], device=log_p.device)
            p_true = log_p.exp()[torch.arange(len(which)), true]
            return -torch.log1p(-p_true.clamp(max=1 - 1e-6)).mean()
        if config.loss == "other-class":
            aim = torch.tensor([aims[k] for k in sets], device=log_p.device)
            return F.nll_loss(log_p, aim)  # cross entropy toward each set's other class
        return -(log_p.mean(dim=-1)).mean()  # CE against the uniform label

    ckpt = False  # no gradient while screening
    release = uses_checkpointing(config, pipe)  # the real size: trim the heap between stages
    screen: dict[str, float] = {}
    if config.init == "target" and len(descs) > n_sets:
        # More descriptions than sets: render each once (the same first batches, no gradient) and
        # keep the sets' worth the student finds hardest; the optimisation starts from those.
        with _frozen(pipe.unet, pipe.vae, enc, net, clip_model), torch.no_grad(), compute.step("sampler"):
            for d in descs:
                row = vectors[0].clone()
                wids = tok(d, add_special_tokens=False).input_ids[: int(config.n_tokens)]
                row[: len(wids)] = table[wids].float().to(row.device)
                total = 0.0
                for step in range(max(1, int(config.screen_batches))):
                    which, x, _ = render(step, [0] * config.batch, row)
                    log_p = F.log_softmax(student.logits_from_pixels(x.float().to(student_dev)).float(), dim=-1)
                    total += float(adversarial(log_p, which, [0] * len(which)))
                screen[d] = total / max(1, int(config.screen_batches))
        descs = sorted(descs, key=lambda d: -screen[d])[:n_sets]  # stable: the given order breaks ties
        with torch.no_grad():
            for kset, d in enumerate(descs):
                wids = tok(d, add_special_tokens=False).input_ids[: int(config.n_tokens)]
                vectors[kset, : len(wids)] = table[wids].float().to(vectors.device)
            et = F.normalize(_encode(pipe, _tokenize(tok, descs))[1].float(), dim=-1)

    blocks: contextlib.AbstractContextManager[list[Any]] = (
        _block_checkpointing(pipe.unet, pipe.vae) if uses_checkpointing(config, pipe) else contextlib.nullcontext([])
    )
    with (
        _frozen(pipe.unet, pipe.vae, enc, net, clip_model),
        torch.enable_grad(),
        blocks,
        compute.step("sampler"),
    ):
        ckpt = uses_checkpointing(config, pipe)
        for step in range(int(config.steps)):
            if should_stop is not None and should_stop():
                break
            sets = [(step * config.batch + j) % n_sets for j in range(config.batch)]
            which, x, pooled = render(step, sets, vectors[sets] if n_sets > 1 else vectors[0])
            if release:
                release_freed_memory()
            logits = student.logits_from_pixels(x.float().to(student_dev))
            log_p = F.log_softmax(logits.float(), dim=-1)
            adv = adversarial(log_p, which, sets)
            loss = config.adversarial_weight * adv if step >= warm else adv * 0.0
            parts = {"step": step, "adversarial": float(adv.detach())}
            if et is not None:
                t_loss = (F.normalize(pooled.float(), dim=-1) - et[sets]).pow(2).sum(-1).mean()
                loss = loss + config.text_weight * t_loss
                parts["text"] = float(t_loss.detach())
            feats = _image_features(embedder, x) if ei is not None or zero_shot is not None else None
            if zero_shot is not None and feats is not None:
                zs = 100.0 * feats @ zero_shot.to(feats.device).T  # CLIP's logit scale
                want = torch.tensor([keep_idx[w] for w in which], device=zs.device)
                c_loss = F.cross_entropy(zs, want)
                loss = loss + float(config.class_weight) * c_loss
                parts["class"] = float(c_loss.detach())
            if ei is not None and feats is not None:
                i_loss = (1 - (feats * ei[sets]).sum(-1)).mean()
                loss = loss + config.image_weight * i_loss
                parts["image"] = float(i_loss.detach())
            with torch.no_grad():
                parts["student_entropy"] = float(-(log_p.exp() * log_p).sum(-1).mean())
                if hasattr(student, "class_index"):
                    idx = torch.tensor([student.class_index(labels[w]) for w in which])
                    parts["p_label"] = float(log_p.exp()[torch.arange(len(which)), idx].mean())
                else:
                    parts["p_label"] = float("nan")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if release:
                release_freed_memory()
            parts["loss"] = float(loss.detach())
            history.append(parts)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(adv=f"{parts['adversarial']:.3f}")
            elif callable(progress):
                progress(step + 1, int(config.steps))
    if bar is not None:
        bar.close()
    if net is not None:
        net.train(was_training)
    return GapResult(
        label=",".join(labels),
        embeddings=(vectors if n_sets > 1 else vectors[0]).detach().float().cpu(),
        prompt=readable,
        template_text=text,
        positions=positions,
        config=config,
        history=history,
        target=descs[0] if len(descs) == 1 and isinstance(target, str) else (json.dumps(descs) if descs else ""),
        model=str(getattr(generator, "name", type(pipe).__name__)),
        targets=[student.classes[a] for a in aims] if aims else [],
        screen=screen,
    )


@torch.no_grad()
def generate_with_tokens(
    generator: Generator,
    tokens: GapResult,
    seeds: Sequence[int],
    *,
    steps: int | None = None,
    guidance: float | None = None,
    negative_prompt: str = "",
    batch_size: int = 8,
    sources: Sequence[Image.Image] | None = None,
    masks: Sequence[np.ndarray] | None = None,
    strength: float | None = None,
) -> list[Image.Image]:
    """Final images from learned tokens (one seeded noise per image).

    Without sources: text-to-image through the pipeline itself. With `sources` (one real image per
    seed): img2img from each source at `strength` (default: the tokens' config), and with `masks`
    the source's object pixels are pasted back exactly (mask 1), as during optimisation.
    """
    pipe = _pipe_of(generator)
    steps = int(steps or tokens.config.final_steps)
    guidance = float(tokens.config.guidance if guidance is None else guidance)
    ids = _tokenize(pipe.tokenizer, [tokens.template_text])
    device = pipe.unet.device
    conds = torch.cat([_encode(pipe, ids, tokens.positions, v.to(device))[0] for v in tokens.sets])
    neg, _ = _encode(pipe, _tokenize(pipe.tokenizer, [negative_prompt]))
    size = _pixel_size(pipe)
    release = int(pipe.unet.config.sample_size) >= CHECKPOINT_FROM_LATENTS  # the real size: trim between stages
    out: list[Image.Image] = []
    seeds = [int(s) for s in seeds]
    set_of = [tokens.set_of(s, j) for j, s in enumerate(seeds)]
    if masks is not None and sources is None:
        raise GapError("masks need source images: pass sources= (one per seed) with one mask each")
    if sources is not None:
        if len(sources) != len(seeds):
            raise GapError(f"got {len(seeds)} seeds but {len(sources)} source images: pass one source per seed")
        src = _prepare_sources(pipe, list(sources), None if masks is None else list(masks), [0] * len(seeds))
        strength = float(tokens.config.strength if strength is None else strength)
        sched = _ddim(pipe, steps)
        start = _img2img_start(steps, strength)
        dtype = pipe.unet.dtype
        for lo in range(0, len(seeds), batch_size):
            part = list(range(lo, min(lo + batch_size, len(seeds))))
            noise = torch.cat(
                [torch.randn(_latent_shape(pipe, 1), generator=torch.Generator().manual_seed(seeds[i])) for i in part]
            ).to(device, dtype)
            latents = sched.add_noise(src.latents[part], noise, sched.timesteps[start : start + 1])
            cond = conds[[set_of[i] for i in part]].to(dtype)
            x = _sample(pipe, cond, neg.to(dtype), latents, sched, guidance, False, start=start, release=release)
            x = x.float()
            x = torch.nan_to_num(x).clamp(0, 1)
            if src.masks is not None:
                x = composite(x, src.pixels[part], src.masks[part])
            arr = x.permute(0, 2, 3, 1).cpu().numpy()
            out += [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]
        return out
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        if release:
            release_freed_memory()
        res = pipe(
            prompt_embeds=conds[set_of[start : start + len(chunk)]].to(pipe.unet.dtype),
            negative_prompt_embeds=neg.expand(len(chunk), -1, -1).to(pipe.unet.dtype),
            num_inference_steps=steps,
            guidance_scale=guidance,
            height=size,
            width=size,
            generator=[torch.Generator().manual_seed(s) for s in chunk],
            output_type="np",
            **({"callback_on_step_end": _release_after_step} if release else {}),
        )
        arr = np.clip(np.nan_to_num(np.asarray(res.images)), 0, 1)
        out += [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]
    return out


def _release_after_step(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A diffusers step callback: the heap the UNet call freed goes back before the next call or the decode."""
    release_freed_memory()
    return kwargs


def student_loss_on(student: Student, images: Sequence[Image.Image], label: str) -> float:
    """Mean cross-entropy of the student on `images` against the true `label` (how hard they are for it)."""
    logits = student.logits(list(images))
    y = torch.full((len(images),), student.class_index(label), dtype=torch.long)
    return float(F.cross_entropy(logits, y))


def gap_images(
    generator: Generator,
    student: Student,
    classes: Sequence[str],
    *,
    seeds: Mapping[str, Sequence[int]],
    target: str | Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    target_images: Sequence[Image.Image] | None = None,
    embedder: Embedder | None = None,
    config: GapConfig | None = None,
    progress: bool | Callable[[int, int], None] = False,
    should_stop: Callable[[], bool] | None = None,
    shared: bool = False,
    sources: Mapping[str, Sequence[Image.Image]] | None = None,
    masks: Mapping[str, Sequence[np.ndarray]] | None = None,
    **overrides: Any,
) -> Iterator[tuple[str, GapResult, list[Image.Image]]]:
    """Learn tokens per class and render each class's final images: yields (class, tokens, images).

    seeds[c] are class c's final image seeds (the controller takes them from its seed policy);
    the token optimisation of a class is seeded with the first of them (with `shared`, one token
    set for all classes, seeded with the first class's). sources[c] / masks[c]: the class's source
    images and object masks; final image j starts from source j mod n. Touches no store: the
    controller (controller/rounds.py) saves the tokens and stores the images. Stops between
    classes when `should_stop()` says so; a class whose tokens were cut short yields nothing.
    target: one description for every class, or a mapping class -> its descriptions (one per set).
    """
    classes = [str(c) for c in classes]
    if not classes:
        raise GapError("no classes given: pass the classes to generate GAP images for")
    if masks is not None and sources is None:
        raise GapError("masks need source images: pass sources= too")
    missing = [c for c in classes if not seeds.get(c)]
    if missing:
        raise GapError(f"no seeds for class(es) {missing}: give each class at least one final image seed")

    def fresh_config() -> GapConfig:
        return GapConfig(**asdict(config)) if config is not None else GapConfig()

    if isinstance(target, Mapping) and shared:
        raise GapError("per-class target descriptions need one token set per class: use shared=False")

    def target_of(label: str) -> str | Sequence[str] | None:
        return target.get(label) if isinstance(target, Mapping) else target

    shared_res = None
    if shared:
        shared_res = optimise_prompt_tokens(
            generator,
            student,
            classes,
            target=None if isinstance(target, Mapping) else target,
            target_images=target_images,
            embedder=embedder,
            config=fresh_config(),
            seed=int(seeds[classes[0]][0]),
            progress=progress,
            should_stop=should_stop,
            sources=None if sources is None else {c: list(sources[c]) for c in classes},
            masks=None if masks is None else {c: list(masks[c]) for c in classes},
            **overrides,
        )
        if should_stop is not None and should_stop():
            return
    for label in classes:
        if should_stop is not None and should_stop():
            return
        cls_sources = None if sources is None else list(sources[label])
        cls_masks = None if masks is None else list(masks[label])
        if shared_res is not None:
            text, readable, positions = _prompt_layout(
                _pipe_of(generator).tokenizer, label, shared_res.config.template, int(shared_res.config.n_tokens)
            )
            res = GapResult(
                label=label,
                embeddings=shared_res.embeddings,
                prompt=readable,
                template_text=text,
                positions=positions,
                config=shared_res.config,
                history=shared_res.history,
                target=shared_res.target,
                model=shared_res.model,
            )
        else:
            res = optimise_prompt_tokens(
                generator,
                student,
                label,
                target=target_of(label),
                target_images=target_images,
                embedder=embedder,
                config=fresh_config(),
                seed=int(seeds[label][0]),
                progress=progress,
                should_stop=should_stop,
                sources=cls_sources,
                masks=cls_masks,
                **overrides,
            )
            if (
                should_stop is not None and should_stop()
            ):  # tokens half-learned: keep the classes already finished, store nothing more
                return
        n = len(seeds[label])
        res.assignment = {int(s): j % len(res.sets) for j, s in enumerate(seeds[label])}
        picks = [cls_sources[j % len(cls_sources)] for j in range(n)] if cls_sources else None
        pick_masks = (
            [cls_masks[j % len(cls_masks)] for j in range(n)] if cls_sources and cls_masks is not None else None
        )
        yield label, res, generate_with_tokens(generator, res, list(seeds[label]), sources=picks, masks=pick_masks)


def mask_for(
    masks: str | Callable[[Image.Image], np.ndarray] | Mapping[str, np.ndarray], sample_id: str, image: Image.Image
) -> np.ndarray:
    """The object mask of one source image from a masks= argument ('plain-background', a function, or a mapping)."""
    from .masks import plain_background_mask

    if isinstance(masks, str):
        if masks != "plain-background":
            raise GapError(f"masks={masks!r}: use 'plain-background', a function image -> mask, or {{sample id: mask}}")
        return plain_background_mask(image)
    if isinstance(masks, Mapping):
        if sample_id not in masks:
            raise GapError(f"no mask for source {sample_id!r}: pass one mask per source sample id")
        return np.asarray(masks[sample_id], dtype=np.float32)
    if callable(masks):
        return np.asarray(masks(image), dtype=np.float32)
    raise GapError(f"masks must be 'plain-background', a function or a mapping, got {type(masks).__name__}")


def load_mask(path: str | os.PathLike) -> np.ndarray:
    """A mask stored with a GAP round (gap/masks/*.png) as float32 H x W in [0, 1]."""
    from .masks import mask_from_image

    with Image.open(path) as im:
        return mask_from_image(im)
