"""Tiny random-weight models built locally from configs through the real classes (never a download).

Every backend the product supports is exercised here with the same classes a user loads from the
hub: diffusers' StableDiffusionPipeline, open_clip's CLIP, transformers' BLIP captioner. The
models are a few thousand parameters, so a test runs in seconds on a shared CPU.
Factories cache per process (`functools.cache`), which makes them session-scoped under pytest.
"""

from __future__ import annotations

import functools
import gzip
import json
import tempfile
from pathlib import Path

import torch

CLIP_BPE_CONTEXT = 77


@functools.cache
def clip_tokenizer_dir() -> Path:
    """A folder with vocab.json + merges.txt for a transformers CLIPTokenizer, from open_clip's BPE file.

    Follows open_clip's SimpleTokenizer vocabulary construction, so token ids match open_clip's.
    """
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    vocab = list(bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder = Path(tempfile.mkdtemp(prefix="dc-clip-tokenizer-"))
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    return folder


@functools.cache
def clip_tokenizer():
    from transformers import CLIPTokenizer

    folder = clip_tokenizer_dir()
    # from_pretrained reads vocab.json + merges.txt the same way in transformers 4.x and 5.x.
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=CLIP_BPE_CONTEXT, pad_token="<|endoftext|>")


def tiny_sd_pipeline(seed: int = 0, scheduler: str = "ddim"):
    """A StableDiffusionPipeline at 32x32 px (16x16x4 latents) with random weights.

    Not cached: callers that mutate the pipeline (scheduler, device) get their own. Building takes
    well under a second once the tokenizer is cached.
    """
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = clip_tokenizer()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=4,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=32,
    )
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=CLIP_BPE_CONTEXT,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    common = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)
    if scheduler == "ddim":
        sched = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1, **common)
    else:
        sched = PNDMScheduler(skip_prk_steps=True, steps_offset=1, **common)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sched,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_open_clip(seed: int = 0):
    """(model, preprocess, tokenizer) of a tiny open_clip CLIP for 32x32 images, random weights."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transform import image_transform

    torch.manual_seed(seed)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32),
        text_cfg=CLIPTextCfg(context_length=CLIP_BPE_CONTEXT, vocab_size=49408, width=32, heads=2, layers=1),
    ).eval()
    preprocess = image_transform(32, is_train=False)
    return model, preprocess, SimpleTokenizer(context_length=CLIP_BPE_CONTEXT)


BLIP_WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "green",
    "blue",
    "digit",
    "on",
    "background",
    "black",
    "white",
    "thin",
    "thick",
    "slanted",
    "left",
    "right",
    "one",
    "two",
    "three",
    "cat",
    "dog",
]


@functools.cache
def _blip_vocab_file() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="dc-blip-vocab-"))
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"] + BLIP_WORDS
    (folder / "vocab.txt").write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return folder / "vocab.txt"


def tiny_blip(seed: int = 0):
    """(model, processor) of a tiny BlipForConditionalGeneration, processor built without a download."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    # from_pretrained(folder) reads vocab.txt the same way in transformers 4.x and 5.x
    tokenizer = BertTokenizer.from_pretrained(str(_blip_vocab_file().parent), do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    vocab_size = len(tokenizer)
    config = BlipConfig(
        text_config=dict(
            vocab_size=vocab_size,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            encoder_hidden_size=32,
            max_position_embeddings=64,
            bos_token_id=tokenizer.convert_tokens_to_ids("[DEC]"),
            eos_token_id=tokenizer.sep_token_id,
            sep_token_id=tokenizer.sep_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(config).eval()
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
        tokenizer=tokenizer,
    )
    return model, processor


def tiny_models(seed: int = 0, steps: int = 3, crash_flag: str | None = None):
    """A dc.Models bundle (tiny generator + tiny CLIP) that another process can rebuild from its spec.

    crash_flag: a file path; a generator call that finds the file deletes it and ends its process
    with os._exit(1) (a worker dying mid-round, for the Ray backend's tests).
    """
    import os

    from datacrafter_widget.models.bundle import Models
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.models.generator import Generator
    from datacrafter_widget.models.spec import ModelSpec

    class CrashingGenerator(Generator):
        def _run_batch(self, *args, **kwargs):
            if crash_flag and os.path.exists(crash_flag):
                os.remove(crash_flag)
                os._exit(1)
            return super()._run_batch(*args, **kwargs)

    gen = CrashingGenerator(tiny_sd_pipeline(seed), name=f"tiny-sd-{seed}", default_steps=steps, default_guidance=7.5)
    model, preprocess, tokenizer = tiny_open_clip(seed)
    models = Models(
        generator=gen, embedder=Embedder(model, preprocess, tokenizer, name=f"tiny-clip-{seed}"), name="tiny"
    )
    models.spec = ModelSpec("tiny_models:tiny_models", {"seed": seed, "steps": steps, "crash_flag": crash_flag})
    return models
