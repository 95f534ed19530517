"""Real-architecture models with random weights, saved as a downloaded model is, and photo-like images.

The configs in configs/ are those of the checkpoints users load (Stable Diffusion 1.5's UNet, VAE,
text encoder and scheduler; BLIP's image-captioning-base); open_clip ships ViT-B-32's own. Each
model is built through the class a user's download is loaded with, given random weights and
written with `save_pretrained` (or, for open_clip, a safetensors checkpoint), so the product loads
it through the very call a user makes:

    dc.Models.stable_diffusion(paths.sd, clip=(paths.clip_arch, paths.clip_weights), captioner=paths.captioner)

`shrink` divides every channel width (UNet, VAE, text encoders, ViTs) and keeps the layer counts,
resolutions and token lengths: shrink=1 is the full SD-1.5 / ViT-B-32 / BLIP-base shape (about 4 GB
of fp32 weights for SD-1.5: built into a cache folder, never committed), shrink=8 the CI shape
(512 px images, 64 x 64 latents, 224 px CLIP and 384 px BLIP inputs, a few MB of weights).

    python benchmarks/real_size/build.py ROOT [--shrink 1]   # builds what ROOT lacks (a process of its own)
"""

from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CONFIGS = Path(__file__).resolve().parent / "configs"
CLIP_CONTEXT = 77  # CLIP's text length (SD's text encoder and open_clip)
CLASSES = ("ball", "box", "bottle")


@dataclass(frozen=True)
class RealSizePaths:
    """Where the built models are: what a user would pass to dc.Models.stable_diffusion."""

    sd: Path
    clip_arch: str
    clip_weights: Path
    clip_config: Path | None  # open_clip config to register (reduced widths), None for the stock ViT-B-32
    captioner: Path

    def register_clip(self) -> None:
        """Make a reduced-width open_clip architecture known to open_clip (as a user's own config would be)."""
        if self.clip_config is not None:
            import open_clip

            open_clip.add_model_config(self.clip_config)


def _config(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text(encoding="utf-8"))


def _narrow(width: int, shrink: int, multiple: int = 1) -> int:
    return max(multiple, (int(width) // shrink) // multiple * multiple)


def unet_config(shrink: int = 1) -> dict:
    cfg = _config("sd15_unet.json")
    if shrink > 1:
        groups = max(1, cfg["norm_num_groups"] // shrink)
        cfg["norm_num_groups"] = groups
        # SD-1.x names its head count attention_head_dim. Fewer heads of the real width (40 channels at the
        # first level): the attention over 64 x 64 latents costs one softmax of 4096 x 4096 per head, which
        # 8 heads of 5 channels would make 8x the cost of the rest of the narrowed UNet.
        heads = cfg["attention_head_dim"] = max(1, cfg["attention_head_dim"] // shrink)
        cfg["block_out_channels"] = [_narrow(c, shrink, math.lcm(groups, heads)) for c in cfg["block_out_channels"]]
        cfg["cross_attention_dim"] = _narrow(cfg["cross_attention_dim"], shrink, 12)
    return cfg


def vae_config(shrink: int = 1) -> dict:
    cfg = _config("sd15_vae.json")
    if shrink > 1:
        groups = max(1, cfg["norm_num_groups"] // shrink)
        cfg["norm_num_groups"] = groups
        cfg["block_out_channels"] = [_narrow(c, shrink, groups) for c in cfg["block_out_channels"]]
    return cfg


def text_encoder_config(shrink: int = 1) -> dict:
    cfg = _config("sd15_text_encoder.json")
    if shrink > 1:
        cfg["hidden_size"] = cfg["projection_dim"] = unet_config(shrink)["cross_attention_dim"]
        cfg["intermediate_size"] = 4 * cfg["hidden_size"]
    return cfg


def blip_config(shrink: int = 1) -> dict:
    cfg = _config("blip_captioning_base.json")
    if shrink > 1:
        heads = cfg["vision_config"]["num_attention_heads"]
        width = _narrow(cfg["vision_config"]["hidden_size"], shrink, heads)
        for part in ("vision_config", "text_config"):
            cfg[part]["hidden_size"] = width
            cfg[part]["intermediate_size"] = 4 * width
        cfg["text_config"]["encoder_hidden_size"] = width
        cfg["projection_dim"] = _narrow(cfg["projection_dim"], shrink)
        cfg["image_text_hidden_size"] = _narrow(cfg["image_text_hidden_size"], shrink)
    return cfg


def open_clip_config(shrink: int = 1) -> dict:
    import open_clip

    cfg = open_clip.get_model_config("ViT-B-32")
    if shrink > 1:
        cfg = json.loads(json.dumps(cfg))
        vision, text = cfg["vision_cfg"], cfg["text_cfg"]
        vision["head_width"] = _narrow(64, shrink)  # keeps ViT-B's 12 heads
        vision["width"] = _narrow(vision["width"], shrink, vision["head_width"])
        text["width"] = _narrow(text["width"], shrink, text["heads"])
        cfg["embed_dim"] = _narrow(cfg["embed_dim"], shrink)
    return cfg


# ---- tokenizers ------------------------------------------------------------------------------------
def _bpe_merges() -> list[tuple[str, ...]]:
    import open_clip

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]


def clip_tokenizer(folder: Path):
    """SD's CLIPTokenizer from open_clip's bundled BPE vocabulary (the ids match open_clip's tokenizer)."""
    from open_clip.tokenizer import bytes_to_unicode
    from transformers import CLIPTokenizer

    merges = _bpe_merges()
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_CONTEXT, pad_token="<|endoftext|>")


def blip_tokenizer(folder: Path, vocab_size: int):
    """A BERT-uncased-shaped WordPiece tokenizer for BLIP: the special tokens at BERT's ids, then
    whole English words from open_clip's BPE vocabulary, filled up to BERT's 30,522 entries."""
    from transformers import BertTokenizer

    size = vocab_size - 2  # BLIP adds [DEC] (and keeps one spare id) on top of bert-base-uncased
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    seen = set(tokens)
    for merge in _bpe_merges():
        word = "".join(merge)
        if word.endswith("</w>") and word[:-4].isalpha() and word[:-4].isascii():
            word = word[:-4].lower()
            if word not in seen:
                seen.add(word)
                tokens.append(word)
        if len(tokens) >= size:
            break
    tokens += [f"[unused{i}]" for i in range(99, 99 + size - len(tokens))]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    tokenizer = BertTokenizer.from_pretrained(str(folder), do_lower_case=True, model_max_length=512)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


# ---- builders --------------------------------------------------------------------------------------
def build_stable_diffusion(dest: Path, shrink: int = 1, seed: int = 0) -> Path:
    """An SD-1.5-shaped StableDiffusionPipeline with random weights, saved with save_pretrained."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = clip_tokenizer(dest.parent / f".tokenizer-{os.getpid()}")
    unet = UNet2DConditionModel.from_config(unet_config(shrink))
    vae = AutoencoderKL.from_config(vae_config(shrink))
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_encoder_config(shrink)))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=PNDMScheduler.from_config(_config("sd15_scheduler.json")),
        safety_checker=None,
        feature_extractor=CLIPImageProcessor(crop_size=224, size={"shortest_edge": 224}),
        requires_safety_checker=False,
    )
    pipe.save_pretrained(str(dest), safe_serialization=True)
    shutil.rmtree(dest.parent / f".tokenizer-{os.getpid()}", ignore_errors=True)
    del pipe, unet, vae, text_encoder
    gc.collect()
    return dest


def build_open_clip(dest: Path, shrink: int = 1, seed: int = 0) -> tuple[str, Path, Path | None]:
    """ViT-B-32 (or its reduced-width twin, with its config file) with random weights as a safetensors file."""
    import open_clip
    import torch
    from safetensors.torch import save_file

    dest.mkdir(parents=True, exist_ok=True)
    arch, config_file = "ViT-B-32", None
    if shrink > 1:
        arch = f"ViT-B-32-w{shrink}"
        config_file = dest / f"{arch}.json"
        config_file.write_text(json.dumps(open_clip_config(shrink), indent=1), encoding="utf-8")
        open_clip.add_model_config(config_file)
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    weights = dest / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    del model
    gc.collect()
    return arch, weights, config_file


def build_blip(dest: Path, shrink: int = 1, seed: int = 0) -> Path:
    """A BLIP image-captioning-base-shaped captioner with random weights, model and processor saved."""
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    cfg = blip_config(shrink)
    tokenizer = blip_tokenizer(dest.parent / f".blip-vocab-{os.getpid()}", cfg["text_config"]["vocab_size"])
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(**cfg)).eval()
    size = cfg["vision_config"]["image_size"]
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(
            size={"height": size, "width": size},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        tokenizer=tokenizer,
    )
    model.save_pretrained(str(dest), safe_serialization=True)
    processor.save_pretrained(str(dest))
    shutil.rmtree(dest.parent / f".blip-vocab-{os.getpid()}", ignore_errors=True)
    del model
    gc.collect()
    return dest


def build_all(root: str | os.PathLike, shrink: int = 1, seed: int = 0) -> RealSizePaths:
    """Builds into root/w<shrink>/ what is not there yet (a `.done-<part>` file marks a finished part)."""
    base = Path(root).expanduser() / f"w{shrink}"
    base.mkdir(parents=True, exist_ok=True)

    def done(part: str) -> Path:
        return base / f".done-{part}"

    if not done("sd").is_file():
        build_stable_diffusion(base / "stable-diffusion-v1-5", shrink, seed)
        done("sd").write_text("ok")
    if not done("clip").is_file():
        build_open_clip(base / "open_clip", shrink, seed)
        done("clip").write_text("ok")
    if not done("blip").is_file():
        build_blip(base / "blip-image-captioning-base", shrink, seed)
        done("blip").write_text("ok")
    return paths(root, shrink)


def paths(root: str | os.PathLike, shrink: int = 1) -> RealSizePaths:
    base = Path(root).expanduser() / f"w{shrink}"
    arch = "ViT-B-32" if shrink == 1 else f"ViT-B-32-w{shrink}"
    return RealSizePaths(
        sd=base / "stable-diffusion-v1-5",
        clip_arch=arch,
        clip_weights=base / "open_clip" / "open_clip_model.safetensors",
        clip_config=None if shrink == 1 else base / "open_clip" / f"{arch}.json",
        captioner=base / "blip-image-captioning-base",
    )


# ---- photo-like images -----------------------------------------------------------------------------
def render_photo(kind: str, size: int = 512, seed: int = 0) -> Image.Image:
    """A photo-like scene: sky and textured ground under one light, an object of `kind` (ball, box,
    bottle) with shading, a highlight and a shadow, then lens blur and sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    horizon = rng.uniform(0.35, 0.6)
    sky_top, sky_low = rng.uniform([60, 110, 170], [140, 180, 240]), rng.uniform([170, 190, 200], [235, 235, 245])
    t = np.clip(yy / horizon, 0, 1)[..., None]
    img = sky_top * (1 - t) + sky_low * t
    ground = rng.uniform([70, 60, 40], [150, 140, 110])
    grain = np.asarray(
        Image.fromarray(rng.integers(0, 255, (size // 8, size // 8), dtype=np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        ),
        np.float32,
    )[..., None]
    below = (yy > horizon)[..., None]
    depth = np.clip((yy - horizon) / (1 - horizon), 0, 1)[..., None]
    img = np.where(below, ground * (0.6 + 0.5 * depth) + (grain - 128) * 0.25, img)
    light = np.array([rng.uniform(-0.8, 0.8), -0.6, 0.8])
    light /= np.linalg.norm(light)
    colour = rng.uniform([40, 40, 40], [230, 230, 230])
    cx, s = rng.uniform(0.35, 0.65), rng.uniform(0.18, 0.3)
    base_y = rng.uniform(horizon + 0.15, 0.92)
    shadow = ((xx - cx - light[0] * 0.1) / (s * 1.1)) ** 2 + ((yy - base_y) / (s * 0.25)) ** 2 < 1
    img[shadow] *= 0.55
    if kind == "ball":
        cy = base_y - s
        dx, dy = (xx - cx) / s, (yy - cy) / s
        inside = dx**2 + dy**2 < 1
        dz = np.sqrt(np.clip(1 - dx**2 - dy**2, 0, 1))
        shade = np.clip(dx * light[0] + dy * light[1] + dz * light[2], 0, 1)
        spec = np.clip(shade, 0, 1) ** 40 * 255
        obj = colour * (0.25 + 0.75 * shade[..., None]) + spec[..., None]
        img = np.where(inside[..., None], obj, img)
    elif kind == "box":
        pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(pil)
        w, h, d = s * size, s * size * rng.uniform(0.8, 1.4), s * size * 0.45
        x0, y1 = cx * size - w / 2, base_y * size
        front = [(x0, y1 - h), (x0 + w, y1 - h), (x0 + w, y1), (x0, y1)]
        top = [(x0, y1 - h), (x0 + d, y1 - h - d * 0.6), (x0 + w + d, y1 - h - d * 0.6), (x0 + w, y1 - h)]
        side = [(x0 + w, y1 - h), (x0 + w + d, y1 - h - d * 0.6), (x0 + w + d, y1 - d * 0.6), (x0 + w, y1)]
        for poly, k in ((front, 0.55 + 0.3 * light[2]), (top, 0.95), (side, 0.35 + 0.3 * max(light[0], 0))):
            draw.polygon(poly, fill=tuple(int(c) for c in np.clip(colour * k, 0, 255)))
        img = np.asarray(pil, np.float32)
    elif kind == "bottle":
        r, h = s * 0.45, s * rng.uniform(2.0, 2.8)
        dx = (xx - cx) / r
        neck = (np.abs(xx - cx) < r * 0.35) & (yy > base_y - h - s * 0.6) & (yy <= base_y - h + r * 0.3)
        body = (np.abs(dx) < 1) & (yy > base_y - h) & (yy < base_y)
        shoulder = ((xx - cx) / r) ** 2 + ((yy - (base_y - h)) / (r * 0.6)) ** 2 < 1
        inside = body | neck | shoulder
        shade = np.clip(np.sqrt(np.clip(1 - np.clip(dx, -1, 1) ** 2, 0, 1)) * light[2] + dx * light[0], 0, 1)
        glint = (np.abs(dx + 0.45) < 0.08).astype(np.float32) * 120
        obj = colour * (0.2 + 0.8 * shade[..., None]) + glint[..., None]
        img = np.where(inside[..., None], obj, img)
    else:
        raise ValueError(f"unknown object {kind!r}: choose one of {CLASSES}")
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(size / 512))
    noisy = np.asarray(pil, np.float32) + rng.normal(0, 4, (size, size, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def write_photos(folder: str | os.PathLike, per_class: int, size: int = 512, seed: int = 0) -> Path:
    """folder/<class>/<class>_<k>.jpg: `per_class` photo-like JPEGs of each class (ImageFolder layout)."""
    root = Path(folder)
    for c, kind in enumerate(CLASSES):
        (root / kind).mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            out = root / kind / f"{kind}_{k:04d}.jpg"
            if not out.is_file():
                render_photo(kind, size, seed=seed * 1_000_003 + c * 100_003 + k).save(out, quality=90)
    return root


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--shrink", type=int, default=1)
    args = ap.parse_args()
    print(build_all(args.root, args.shrink))


if __name__ == "__main__":
    main()
