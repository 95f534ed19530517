"""Train the offline starter models from scratch: `python -m datacrafter_widget.starter.train`.

Three stages, all on the colored-digits `pool` split, seeded, CPU only:
1. a small open_clip CLIP (ViT image tower + causal text transformer), contrastive (ClipLoss);
2. a small diffusers AutoencoderKL, 32x32 RGB <-> 16x16x4 latents;
3. a small diffusers UNet2DConditionModel (epsilon prediction, DDPM noise schedule), conditioned on
   the CLIP text tower's token states (frozen, converted to a transformers CLIPTextModel), with 10%
   empty-prompt dropout so classifier-free guidance and negative prompts work.
(The shipped versions: a ResNet-image CLIP, an 8x8x4-latent VAE whose decoder is then fine-tuned with
the encoder frozen, and a UNet trained in two phases: 1500 steps, then 2500 more from its EMA weights
at a lower lr; see MODEL_CARD.md.)
Held out from all training: 10% of the pool's source scans (to measure CLIP zero-shot) and the
(digit, foreground, background) triples in HELDOUT_TRIPLES (to measure prompt following on unseen
attribute combinations). Writes safetensors + json configs to `--out` (default: starter/weights).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .digits import BACKGROUNDS, CLASSES, FOREGROUNDS, SLANTS, THICKNESSES, colored_digits
from .loader import (
    MODEL_NAME,
    WEIGHTS_DIR,
    build_clip,
    clip_text_to_hf,
    compact_clip_state,
    hf_clip_tokenizer,
    open_clip_tokenizer,
)

SEED = 0
CONTEXT_LENGTH = 24  # the longest starter caption is 18 tokens
FG_NAMES = list(FOREGROUNDS)
BG_NAMES = list(BACKGROUNDS)
# Two unseen (digit, foreground, background) combinations per digit; every colour appears in some.
HELDOUT_TRIPLES: list[tuple[str, str, str]] = [
    (str(d), FG_NAMES[(d + k) % 5], BG_NAMES[(d + 1 + 3 * k) % 5]) for d in range(10) for k in (0, 2)
]
HELDOUT_SCAN_FRACTION = 0.1
TOKEN_INIT_STD = 0.5
_HELDOUT_SCAN_SEED = 1234

CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"layers": 3, "width": 64, "head_width": 32, "patch_size": 4, "image_size": 32, "mlp_ratio": 4.0},
    "text_cfg": {"context_length": CONTEXT_LENGTH, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 3},
}
# The shipped CLIP: open_clip's ModifiedResNet image tower (learns digit shapes much faster on a CPU
# budget than the ViT of CLIP_CONFIG did) + the causal text transformer of CLIP_CONFIG.
FINAL_CLIP_CONFIG: dict[str, Any] = {
    **CLIP_CONFIG,
    "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16, "image_size": 32},
}
# 32x32 RGB <-> 8x8x4 latents (the digits come from 8x8 scans, so 8x8 keeps their structure).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "sample_size": 32,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [16, 32, 64],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 1,
    "block_out_channels": [32, 64, 64],
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "cross_attention_dim": 64,
    "attention_head_dim": 4,
    "norm_num_groups": 16,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}
DEFAULT_GUIDANCE = 6.0
# No classifier-free guidance below this noise level (Generator.guidance_min_sigma): without it,
# guidance toward another digit redrew the source digit at image-to-image strength 0.3 (see MODEL_CARD).
GUIDANCE_MIN_SIGMA = 0.3
# Karras sigma spacing for the DPM-Solver sampler ("DPM++ 2M Karras"): spends more of the 20 steps at low
# noise, so image-to-image at strength 0.3 starts from sigma ~0.27 (t ~ 70) instead of ~0.83 (t ~ 300).
SAMPLER_KARRAS_SIGMAS = True
DEFAULT_STEPS = 20


def heldout_sources(pool_sources: np.ndarray) -> set[int]:
    """Pool source scans kept out of all training (fixed, seed independent)."""
    uniq = np.unique(pool_sources)
    rng = np.random.default_rng(_HELDOUT_SCAN_SEED)
    n = max(1, int(round(len(uniq) * HELDOUT_SCAN_FRACTION)))
    return set(int(s) for s in rng.choice(uniq, size=n, replace=False))


def prompt_text(
    digit: str | None,
    fg: str | None = None,
    bg: str | None = None,
    thickness: str = "regular",
    slant: str = "upright",
    photo: bool = False,
) -> str:
    """Caption-style prompt with optional parts; with everything given it equals `caption_for`."""
    stroke = "" if thickness == "regular" else f"{thickness} "
    colour = f"{fg} " if fg else ""
    where = f" on a {bg} background" if bg else ""
    lean = "" if slant == "upright" else f", slanted {slant}"
    return f"{'a photo of a' if photo else 'a'} {stroke}{colour}{digit or 'digit'}{where}{lean}"


def sample_prompt(rng: np.random.Generator, digit: str, fg: str, bg: str, thickness: str, slant: str) -> str:
    """A random caption variant: the full caption, or one with some attributes left unsaid."""
    if rng.random() < 0.4:
        return prompt_text(digit, fg, bg, thickness, slant)
    return prompt_text(
        digit if rng.random() > 0.1 else None,
        fg if rng.random() < 0.6 else None,
        bg if rng.random() < 0.6 else None,
        thickness if rng.random() < 0.5 else "regular",
        slant if rng.random() < 0.5 else "upright",
        photo=rng.random() < 0.3,
    )


def all_vocabulary_texts() -> list[str]:
    """Every prompt the training can produce (used to decide which token rows to ship)."""
    texts = {""}
    for photo in (False, True):
        for d in CLASSES + [None]:
            for fg in FG_NAMES + [None]:
                for bg in BG_NAMES + [None]:
                    for t in THICKNESSES:
                        for s in SLANTS:
                            texts.add(prompt_text(d, fg, bg, t, s, photo))
    return sorted(texts)


@dataclass
class PoolData:
    images: torch.Tensor  # uint8 (n, 3, 32, 32)
    digit: np.ndarray  # str arrays, one per attribute
    fg: np.ndarray
    bg: np.ndarray
    thickness: np.ndarray
    slant: np.ndarray
    source: np.ndarray  # int source scan index


def pool_data(variants: int, seed: int, limit: int | None = None) -> tuple[PoolData, PoolData]:
    """Render the pool `variants` times; split into (train, held-out scans). Train drops HELDOUT_TRIPLES."""
    pool = colored_digits(shots=1, seed=seed, pool_variants=variants).pool
    assert pool is not None  # colored_digits always makes a pool split
    frame = pool.frame
    held = heldout_sources(frame["source_index"].to_numpy())
    triples = set(HELDOUT_TRIPLES)
    is_held = frame["source_index"].isin(held).to_numpy()
    is_triple = np.array(
        [(d, f, b) in triples for d, f, b in zip(frame["digit"], frame["foreground"], frame["background"])]
    )

    def take(mask: np.ndarray) -> PoolData:
        sub = frame[mask]
        if limit is not None:
            sub = sub.iloc[:limit]
        imgs = np.stack([np.asarray(im, dtype=np.uint8) for im in sub["image"]]).transpose(0, 3, 1, 2)
        return PoolData(
            torch.from_numpy(np.ascontiguousarray(imgs)),
            sub["digit"].to_numpy(),
            sub["foreground"].to_numpy(),
            sub["background"].to_numpy(),
            sub["thickness"].to_numpy(),
            sub["slant"].to_numpy(),
            sub["source_index"].to_numpy(),
        )

    return take(~is_held & ~is_triple), take(is_held)


def to_unit(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 (n,3,32,32) -> float in [-1, 1], the diffusion/VAE convention."""
    return images_uint8.float() / 127.5 - 1.0


def clip_preprocess(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 -> CLIP input normalised with open_clip's OpenAI mean/std (what the Embedder applies)."""
    from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

    x = images_uint8.float() / 255.0
    mean = torch.tensor(OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (edge padding): cheap, label-preserving."""
    n, _, h, w = x.shape
    padded = F.pad(x.float(), (max_shift,) * 4, mode="replicate")
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x, dtype=torch.float32)
    for i in range(n):
        out[i] = padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def _cosine_lr(step: int, total: int, base: float, warmup: int) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, p))))


def _param_groups(model: torch.nn.Module, wd: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ---------------------------------------------------------------------------------------------
# Stage 1: CLIP
# ---------------------------------------------------------------------------------------------


def train_clip(
    train: PoolData,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 2e-3,
    config: dict[str, Any] | None = None,
    digit_only: float = 0.35,
    aux_weight: float = 1.0,
) -> torch.nn.Module:
    """Contrastive training (open_clip ClipLoss) of the starter CLIP on pool images and caption variants.

    Pure contrastive training got stuck on this budget: colours (the easy signal) were learnt, digits
    stayed at chance in both towers (a saddle: text digit features identical -> no digit gradient for
    images, and vice versa). Three things break it: an auxiliary digit-classification loss on the image
    embedding (a linear head, discarded after training), `digit_only` of the captions naming only the
    digit, and token embeddings starting TOKEN_INIT_STD wide.
    """
    from open_clip import ClipLoss

    torch.manual_seed(seed)
    model = build_clip(config or FINAL_CLIP_CONFIG)
    with torch.no_grad():
        model.token_embedding.weight.normal_(0.0, TOKEN_INIT_STD)
    embed_dim = int((config or FINAL_CLIP_CONFIG)["embed_dim"])
    aux_head = torch.nn.Linear(embed_dim, len(CLASSES))
    digit_index = {d: i for i, d in enumerate(CLASSES)}
    tok = open_clip_tokenizer(CONTEXT_LENGTH)
    opt = torch.optim.AdamW(
        _param_groups(model, 0.1) + [{"params": list(aux_head.parameters()), "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    loss_fn = ClipLoss()
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    token_cache: dict[str, torch.Tensor] = {}
    n = len(train.digit)
    model.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        idx = rng.integers(0, n, size=min(batch, n))
        texts = [
            prompt_text(train.digit[i], photo=rng.random() < 0.5)
            if rng.random() < digit_only
            else sample_prompt(rng, train.digit[i], train.fg[i], train.bg[i], train.thickness[i], train.slant[i])
            for i in idx
        ]
        for t in set(texts) - token_cache.keys():
            token_cache[t] = tok([t])[0]
        tokens = torch.stack([token_cache[t] for t in texts])
        images = clip_preprocess(random_shift(train.images[idx], gen).round().clamp(0, 255))
        img = model.encode_image(images)
        txt_f = model.encode_text(tokens, normalize=True)
        loss = loss_fn(F.normalize(img, dim=-1), txt_f, model.logit_scale.exp())
        target = torch.tensor([digit_index[str(train.digit[i])] for i in idx])
        loss = loss + aux_weight * F.cross_entropy(aux_head(img), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 50 == 0 or step == steps - 1:
            _log(f"clip step {step}/{steps} loss {loss.item():.3f} ({(time.time() - t0) / (step + 1):.2f}s/step)")
    return model.eval()


@torch.no_grad()
def clip_zero_shot(model: Any, data: PoolData) -> dict[str, float]:
    """Zero-shot digit / background / foreground accuracy with plain prompts."""
    tok = open_clip_tokenizer(CONTEXT_LENGTH)
    img = F.normalize(model.encode_image(clip_preprocess(data.images)), dim=-1)

    def acc(prompts: list[str], names: list[str], truth: np.ndarray) -> float:
        txt = F.normalize(model.encode_text(tok(prompts)), dim=-1)
        pred = (img @ txt.T).argmax(1).numpy()
        return float(np.mean(np.array(names)[pred] == truth))

    return {
        "digit": acc([f"a photo of a {d}" for d in CLASSES], CLASSES, data.digit),
        "background": acc([f"a photo of a digit on a {b} background" for b in BG_NAMES], BG_NAMES, data.bg),
        "foreground": acc([f"a photo of a {f} digit" for f in FG_NAMES], FG_NAMES, data.fg),
    }


# ---------------------------------------------------------------------------------------------
# Stage 2: VAE
# ---------------------------------------------------------------------------------------------


def train_vae(train: PoolData, steps: int, batch: int, seed: int, lr: float = 2e-3):
    """Train the small AutoencoderKL (MSE + tiny KL), then set its latent scaling factor."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    opt = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 1)
    gen = torch.Generator().manual_seed(seed + 1)
    n = len(train.digit)
    vae.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        idx = rng.integers(0, n, size=min(batch, n))
        x = to_unit(train.images[idx])
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen)
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(
                f"vae step {step}/{steps} loss {loss.item():.4f} mse {F.mse_loss(rec, x).item():.4f} "
                f"({(time.time() - t0) / (step + 1):.2f}s/step)"
            )
    vae.eval()
    with torch.no_grad():
        lat = torch.cat(
            [vae.encode(to_unit(train.images[i : i + 512])).latent_dist.mean for i in range(0, min(n, 2048), 512)]
        )
    vae.register_to_config(scaling_factor=float(1.0 / lat.std()))
    return vae


def finetune_vae_decoder(
    vae, train: PoolData, steps: int, batch: int, seed: int, lr: float = 1e-3, on_checkpoint=None, every: int = 0
):
    """Fine-tune only the VAE decoder (post_quant_conv + decoder); the encoder stays frozen.

    The latent space (encoder, scaling factor) is unchanged, so a UNet trained on it stays valid. The
    400-step VAE lost detail on decoding (checker on round trips of real held-out renders: digit 83%,
    foreground 78% with red/orange confusions, vs 94% / 100% on the renders themselves). The posterior
    (mean, std) of every training image is computed once; each step decodes mean + std * noise.
    """
    vae.eval()
    with torch.no_grad():
        stats = [vae.encode(to_unit(train.images[i : i + 256])).latent_dist for i in range(0, len(train.images), 256)]
        mean = torch.cat([d.mean for d in stats])
        std = torch.cat([d.std for d in stats])
    params = list(vae.post_quant_conv.parameters()) + list(vae.decoder.parameters())
    vae.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    rng = np.random.default_rng(seed + 5)
    gen = torch.Generator().manual_seed(seed + 5)
    n = len(mean)
    vae.decoder.train()
    t0 = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=max(1, steps // 20))
        idx = rng.integers(0, n, size=min(batch, n))
        x = to_unit(train.images[idx])
        z = mean[idx] + std[idx] * torch.randn(mean[idx].shape, generator=gen)
        rec = vae.decode(z).sample
        loss = F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            _log(
                f"vae-decoder step {step}/{steps} loss {loss.item():.4f} ({(time.time() - t0) / (step + 1):.2f}s/step)"
            )
        if on_checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            vae.eval()
            on_checkpoint(vae, step + 1)
            vae.decoder.train()
    vae.requires_grad_(False)
    return vae.eval()


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor) -> torch.Tensor:
    """Deterministic (posterior mean) scaled latents for the whole training set."""
    out = [vae.encode(to_unit(images[i : i + 256])).latent_dist.mean for i in range(0, len(images), 256)]
    return torch.cat(out) * vae.config.scaling_factor


# ---------------------------------------------------------------------------------------------
# Stage 3: UNet
# ---------------------------------------------------------------------------------------------


def train_unet(
    train: PoolData,
    latents: torch.Tensor,
    tokenizer,
    steps: int,
    batch: int,
    seed: int,
    lr: float = 1e-3,
    ema_decay: float = 0.998,
    on_checkpoint=None,
    every: int = 0,
    text_encoder=None,
    init_unet: str | Path | None = None,
    warmup: int | None = None,
    stop_at: int | None = None,
) -> torch.nn.ModuleDict:
    """Denoising training of the UNet, 10% empty prompts for classifier-free guidance.

    With `text_encoder` (the starter CLIP's text tower as a CLIPTextModel) it stays frozen and its
    token states are cached; without one, a fresh CLIPTextModel is trained jointly (like LDM).
    Returns the EMA {"unet", "text_encoder"}. With `init_unet` (a saved UNet folder) training resumes
    from those weights (model and EMA start there; the optimizer state is fresh).
    """
    import copy

    from diffusers import DDPMScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet: Any = (
        UNet2DConditionModel(**UNET_CONFIG)
        if init_unet is None
        else UNet2DConditionModel.from_pretrained(str(init_unet))
    )
    frozen = text_encoder is not None
    if frozen:
        text_encoder = text_encoder.eval().requires_grad_(False)
    else:
        text_encoder = clip_text_to_hf(build_clip(CLIP_CONFIG)).train().requires_grad_(True)
        with torch.no_grad():
            text_encoder.get_input_embeddings().weight.normal_(0.0, TOKEN_INIT_STD)
    joint = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    ema = copy.deepcopy(joint).eval().requires_grad_(False)
    sched: Any = DDPMScheduler(
        **{k: v for k, v in SCHEDULER_CONFIG.items() if k not in ("set_alpha_to_one", "steps_offset")}
    )
    alphas = sched.alphas_cumprod
    snr = alphas / (1 - alphas)
    opt = torch.optim.AdamW(_param_groups(joint["unet"] if frozen else joint, 0.01), lr=lr)
    rng = np.random.default_rng(seed + 2)
    gen = torch.Generator().manual_seed(seed + 2)
    cache: dict[str, torch.Tensor] = {}

    def encode(texts: list[str]) -> torch.Tensor:
        if frozen:
            new = sorted(set(texts) - cache.keys())
            if new:
                with torch.no_grad():
                    ids = tokenizer(
                        new,
                        padding="max_length",
                        max_length=tokenizer.model_max_length,
                        truncation=True,
                        return_tensors="pt",
                    ).input_ids
                    cache.update(zip(new, text_encoder(ids).last_hidden_state))
            return torch.stack([cache[t] for t in texts])
        for t in set(texts) - cache.keys():
            cache[t] = tokenizer(
                [t], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
            ).input_ids[0]
        return text_encoder(torch.stack([cache[t] for t in texts])).last_hidden_state

    n = len(latents)
    joint["unet"].train()
    t0 = time.time()
    for step in range(steps if stop_at is None else min(steps, stop_at)):  # stop_at: end early, same schedule
        for g in opt.param_groups:
            g["lr"] = _cosine_lr(step, steps, lr, warmup=max(1, steps // 25) if warmup is None else max(1, warmup))
        idx = rng.integers(0, n, size=min(batch, n))
        texts = [
            ""
            if rng.random() < 0.1
            else sample_prompt(rng, train.digit[i], train.fg[i], train.bg[i], train.thickness[i], train.slant[i])
            for i in idx
        ]
        cond = encode(texts)
        x0 = latents[idx]
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (len(idx),), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        w = torch.clamp(snr[t], max=5.0) / snr[t]  # min-SNR-5 weighting: faster, steadier training
        loss = (w * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(joint.parameters(), 1.0)
        opt.step()
        d = ema_decay if init_unet is not None else min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), joint.parameters()):
                pe.lerp_(p, 1 - d)
        if step % 100 == 0 or step == steps - 1:
            _log(f"unet step {step}/{steps} loss {loss.item():.4f} ({(time.time() - t0) / (step + 1):.2f}s/step)")
        if on_checkpoint is not None and every and (step + 1) % every == 0 and step + 1 < steps:
            on_checkpoint(ema, step + 1)
    return ema


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_clip(
    out: Path, clip: torch.nn.Module, config: dict[str, Any], zero_shot: dict[str, float], seconds: float
) -> None:
    """Write a CLIP (compact token table) as safetensors + json config; never pickle."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    tok = open_clip_tokenizer(CONTEXT_LENGTH)
    used = set(tok(all_vocabulary_texts()).flatten().tolist())
    save_file(compact_clip_state(clip, sorted(used)), str(out / "clip.safetensors"))
    (out / "clip_config.json").write_text(json.dumps(config, indent=2))
    (out / "clip_training.json").write_text(
        json.dumps({"zero_shot_heldout_scans": zero_shot, "seconds": round(seconds, 1)}, indent=2)
    )


def save_vae(out: Path, vae, seconds: float) -> None:
    """Write the VAE, the sampler (scheduler) config and the generator defaults."""
    from diffusers import DPMSolverMultistepScheduler

    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(out / "vae"), safe_serialization=True)
    # The DDIM keys ride along in the saved config so a DDIM built from it (GAP, scheduler="ddim")
    # samples as training did, without clipping the latents.
    DPMSolverMultistepScheduler.from_config(
        {**SCHEDULER_CONFIG, "use_karras_sigmas": SAMPLER_KARRAS_SIGMAS}
    ).save_pretrained(str(out / "scheduler"))
    (out / "generator.json").write_text(
        json.dumps(
            {
                "name": MODEL_NAME,
                "default_steps": DEFAULT_STEPS,
                "default_guidance": DEFAULT_GUIDANCE,
                "guidance_min_sigma": GUIDANCE_MIN_SIGMA,
                "resolution": 32,
            },
            indent=2,
        )
    )
    (out / "vae_training.json").write_text(json.dumps({"seconds": round(seconds, 1)}, indent=2))


def save_unet(out: Path, joint: Any, info: dict[str, Any]) -> None:
    """Write the UNet, its text encoder (compact token table) and the training record."""
    from safetensors.torch import save_file

    from .loader import compact_table

    joint["unet"].save_pretrained(str(out / "unet"), safe_serialization=True)
    te = joint["text_encoder"]
    if info.get("text_encoder") == "clip_text_tower":  # the loader rebuilds it from clip.safetensors
        for name in ("text_encoder.safetensors", "text_encoder_config.json"):
            (out / name).unlink(missing_ok=True)
        (out / "training.json").write_text(json.dumps(info, indent=2))
        return
    used = set(open_clip_tokenizer(CONTEXT_LENGTH)(all_vocabulary_texts()).flatten().tolist())
    sd = {k: v.detach().float().contiguous() for k, v in te.state_dict().items() if "position_ids" not in k}
    key = next(k for k in sd if k.endswith("token_embedding.weight"))
    save_file(compact_table(sd, key, sorted(used)), str(out / "text_encoder.safetensors"))
    (out / "text_encoder_config.json").write_text(json.dumps(te.config.to_diff_dict(), indent=2, default=str))
    (out / "training.json").write_text(json.dumps(info, indent=2))


def _stage_clip(args, train: PoolData, held: PoolData) -> None:
    t = time.time()
    clip = train_clip(train, args.clip_steps, args.clip_batch, args.seed)
    zs = clip_zero_shot(clip, held)
    _log(f"clip zero-shot on held-out scans: {zs}")
    save_clip(args.out, clip, FINAL_CLIP_CONFIG, zs, time.time() - t)


def _stage_vae(args, train: PoolData) -> None:
    t = time.time()
    vae = train_vae(train, args.vae_steps, args.vae_batch, args.seed)
    if args.vae_decoder_steps > 0:
        vae = finetune_vae_decoder(vae, train, args.vae_decoder_steps, args.vae_batch, args.seed)
    save_vae(args.out, vae, time.time() - t)
    _log("vae saved")


def _stage_vae_decoder(args, train: PoolData) -> None:
    """Decoder-only fine-tuning of the VAE already in --out (what the shipped VAE got after `--stage vae`
    had been run with --vae-decoder-steps 0)."""
    from diffusers import AutoencoderKL

    t = time.time()
    vae = AutoencoderKL.from_pretrained(str(args.out / "vae"))
    vae = finetune_vae_decoder(vae, train, args.vae_decoder_steps, args.vae_batch, args.seed)
    vae.save_pretrained(str(args.out / "vae"), safe_serialization=True)
    prev = json.loads((args.out / "vae_training.json").read_text()) if (args.out / "vae_training.json").exists() else {}
    prev.update(
        {"decoder_finetune_steps": args.vae_decoder_steps, "decoder_finetune_seconds": round(time.time() - t, 1)}
    )
    (args.out / "vae_training.json").write_text(json.dumps(prev, indent=2))
    _log("vae decoder fine-tuned and saved")


def _stage_unet(args, train: PoolData, t_start: float) -> dict[str, Any]:
    from diffusers import AutoencoderKL

    from .loader import load_clip

    clip, _ = load_clip(args.out)  # the shipped CLIP: its text tower is the text encoder
    vae = AutoencoderKL.from_pretrained(str(args.out / "vae")).eval()
    latents = encode_latents(vae, train.images)
    record = {
        n: json.loads((args.out / f"{n}_training.json").read_text())
        for n in ("clip", "vae")
        if (args.out / f"{n}_training.json").exists()
    }
    info: dict[str, Any] = {
        "command": "python -m datacrafter_widget.starter.train " + " ".join(args.argv),
        "seed": args.seed,
        "variants": args.variants,
        "training_renders": len(train.digit),
        "steps": {
            "clip": args.clip_steps,
            "vae": args.vae_steps,
            "vae_decoder": args.vae_decoder_steps,
            "unet": args.unet_steps,
        },
        "batch": {"clip": args.clip_batch, "vae": args.vae_batch, "unet": args.unet_batch},
        "threads_per_process": args.threads,
        "parallel_stages": args.jobs >= 2,
        "clip_zero_shot_heldout_scans": record.get("clip", {}).get("zero_shot_heldout_scans"),
        "heldout_triples": HELDOUT_TRIPLES,
        "quick": bool(args.quick),
        "torch": torch.__version__,
        "seconds": {"clip": record.get("clip", {}).get("seconds"), "vae": record.get("vae", {}).get("seconds")},
    }

    def checkpoint(ema, step: int) -> None:
        save_unet(
            args.out, ema, {**info, "unet_steps_done": step, "wall_seconds_so_far": round(time.time() - t_start, 1)}
        )
        _log(f"checkpoint: unet at step {step} saved")

    t = time.time()
    tokenizer = hf_clip_tokenizer(CONTEXT_LENGTH)
    info["text_encoder"] = "clip_text_tower"
    te = clip_text_to_hf(clip)
    if args.resume is None:
        unet = train_unet(
            train,
            latents,
            tokenizer,
            args.unet_steps,
            args.unet_batch,
            args.seed,
            on_checkpoint=checkpoint,
            every=args.save_every,
            text_encoder=te,
        )
        done = args.unet_steps
    else:
        done = args.resume_steps_before
    if args.unet_resume_steps > 0:
        # Phase 2: continue from the phase-1 UNet (its EMA weights) with a fresh optimizer, a lower lr, a
        # slower EMA and seed + 1 (batches and noise do not repeat phase 1's); stops after --unet-resume-stop-at.
        init = args.resume / "unet" if args.resume is not None else args.out / "unet"
        if args.resume is None:
            save_unet(args.out, unet, {**info, "unet_steps_done": done})
        stop = args.unet_resume_stop_at or args.unet_resume_steps
        info.update(
            {
                "phase2": {
                    "from": str(init),
                    "steps_before": done,
                    "schedule_steps": args.unet_resume_steps,
                    "stopped_at": stop,
                    "lr": args.resume_lr,
                    "ema_decay": args.resume_ema,
                    "seed": args.seed + 1,
                }
            }
        )

        def checkpoint2(ema, step: int) -> None:
            checkpoint(ema, done + step)

        unet = train_unet(
            train,
            latents,
            tokenizer,
            args.unet_resume_steps,
            args.unet_batch,
            args.seed + 1,
            lr=args.resume_lr,
            ema_decay=args.resume_ema,
            on_checkpoint=checkpoint2,
            every=args.save_every,
            text_encoder=te,
            init_unet=init,
            warmup=50,
            stop_at=stop,
        )
        done += stop
    info["seconds"]["unet"] = round(time.time() - t, 1)
    info.update({"unet_steps_done": done, "wall_seconds_total": round(time.time() - t_start, 1)})
    save_unet(args.out, unet, info)
    return info


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry: train the stages (CLIP and VAE side by side, then the UNet) and save them."""
    import subprocess

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--variants", type=int, default=8, help="renderings of each pool scan")
    ap.add_argument("--clip-steps", type=int, default=500)
    ap.add_argument("--vae-steps", type=int, default=400)
    ap.add_argument("--unet-steps", type=int, default=1500)
    ap.add_argument("--clip-batch", type=int, default=128)
    ap.add_argument("--vae-batch", type=int, default=32)
    ap.add_argument("--unet-batch", type=int, default=64)
    ap.add_argument("--save-every", type=int, default=300, help="UNet checkpoint interval (steps)")
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads per process (1 is fastest on a shared 2-core machine)"
    )
    ap.add_argument("--jobs", type=int, default=2, help="2: train the CLIP in a second process while the VAE trains")
    ap.add_argument(
        "--vae-decoder-steps",
        type=int,
        default=1000,
        help="decoder-only fine-tuning after the VAE stage (encoder and latent space unchanged)",
    )
    ap.add_argument(
        "--unet-resume-steps",
        type=int,
        default=3000,
        help="UNet phase 2: schedule length of the continued training (0: none)",
    )
    ap.add_argument("--unet-resume-stop-at", type=int, default=2500, help="phase 2 stops after this many steps")
    ap.add_argument(
        "--resume", type=Path, default=None, help="skip UNet phase 1 and run phase 2 from DIR/unet (--stage unet)"
    )
    ap.add_argument(
        "--resume-steps-before", type=int, default=1500, help="UNet steps already done in --resume (recorded)"
    )
    ap.add_argument("--resume-lr", type=float, default=5e-4)
    ap.add_argument("--resume-ema", type=float, default=0.999)
    ap.add_argument("--stage", choices=["all", "clip", "vae", "vae-decoder", "unet"], default="all")
    ap.add_argument("--quick", action="store_true", help="a handful of steps on tiny data (smoke test)")
    raw = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(raw)
    args.argv = raw
    limit = None
    if args.quick:
        args.variants, limit, args.jobs = 1, 64, 1
        args.clip_steps = args.vae_steps = args.vae_decoder_steps = 2
        args.unet_steps, args.unet_resume_steps = 2, 0  # phase 1 only (phase 2 is the same loop from a saved UNet)
        args.clip_batch = args.vae_batch = args.unet_batch = 16
    torch.set_num_threads(args.threads)
    t_start = time.time()
    train, held = pool_data(args.variants, args.seed, limit=limit)
    _log(f"data: {len(train.digit)} training renders, {len(held.digit)} held-out-scan renders")
    args.out.mkdir(parents=True, exist_ok=True)
    if args.stage == "clip":
        _stage_clip(args, train, held)
        return {}
    if args.stage == "vae":
        _stage_vae(args, train)
        return {}
    if args.stage == "vae-decoder":
        _stage_vae_decoder(args, train)
        return {}
    if args.stage == "all":
        child = None
        if args.jobs >= 2:
            cmd = [
                sys.executable,
                "-m",
                "datacrafter_widget.starter.train",
                "--stage",
                "clip",
                "--out",
                str(args.out),
                "--seed",
                str(args.seed),
                "--variants",
                str(args.variants),
                "--clip-steps",
                str(args.clip_steps),
                "--clip-batch",
                str(args.clip_batch),
                "--threads",
                str(args.threads),
            ]
            child = subprocess.Popen(cmd)
        else:
            _stage_clip(args, train, held)
        _stage_vae(args, train)
        if child is not None and child.wait() != 0:
            raise SystemExit(f"the CLIP stage failed (exit {child.returncode}); see its log above")
    info = _stage_unet(args, train, t_start)
    if args.stage == "all":
        info["wall_seconds_total"] = round(time.time() - t_start, 1)
        (args.out / "training.json").write_text(json.dumps(info, indent=2))
    _log(f"saved to {args.out} in {time.time() - t_start:.0f}s total")
    return info


if __name__ == "__main__":
    main()
