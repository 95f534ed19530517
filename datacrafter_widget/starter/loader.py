"""Loading the offline starter models (small CLIP + small text-to-image pipeline) from shipped weights.

Everything here is built from configs (json) and safetensors in `starter/weights/` through the
same classes the product uses for real models (open_clip's CLIP, diffusers' StableDiffusionPipeline,
transformers' CLIPTextModel / CLIPTokenizer), so no hub or network is ever touched.

The diffusion pipeline's text encoder *is* the starter CLIP's text tower, converted at load time
into a transformers `CLIPTextModel` (the weights are shipped once, in `clip.safetensors`).
"""

from __future__ import annotations

import itertools

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

WEIGHTS_DIR = Path(__file__).with_name("weights")
MODEL_NAME = "starter/colored-digits-v1"


class StarterWeightsError(RuntimeError):
    """Raised when the shipped starter weights are missing or incomplete."""


# ---------------------------------------------------------------------------------------------
# Tokenizers: open_clip's bundled BPE for both the open_clip model and the transformers pipeline
# ---------------------------------------------------------------------------------------------


def open_clip_tokenizer(context_length: int):
    """open_clip's bundled BPE tokenizer (no download) at the starter CLIP's context length."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer(context_length=context_length)


_SPECIALS = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}


def hf_clip_tokenizer(context_length: int):
    """A transformers CLIPTokenizer built from open_clip's bundled BPE vocabulary (no download).

    Pads with "!" (id 0) like open_clip, so both tokenizers give identical ids for our prompts.
    """
    import tempfile

    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer

    simple = SimpleTokenizer()
    # open_clip 3.x spells the specials "<start_of_text>"; CLIPTokenizer expects the classic names.
    vocab = {_SPECIALS.get(k, k): v for k, v in simple.encoder.items()}
    merges = [" ".join(pair) for pair, _ in sorted(simple.bpe_ranks.items(), key=lambda kv: kv[1])]
    # vocab.json + merges.txt is the file format every transformers version reads.
    with tempfile.TemporaryDirectory(prefix="dc-starter-tok-") as tmp:
        (Path(tmp) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (Path(tmp) / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        tok = CLIPTokenizer.from_pretrained(
            tmp, model_max_length=int(context_length), pad_token="!", local_files_only=True
        )
    return tok


# ---------------------------------------------------------------------------------------------
# open_clip text tower -> transformers CLIPTextModel
# ---------------------------------------------------------------------------------------------


def clip_text_to_hf(clip: Any) -> Any:
    """Convert an open_clip CLIP's text tower into a transformers CLIPTextModel with equal outputs.

    Both are pre-LN causal transformers with token + learned positional embeddings and a final
    LayerNorm; open_clip packs q/k/v in one in_proj matrix, transformers keeps them apart.
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    width = clip.token_embedding.weight.shape[1]
    ctx = clip.positional_embedding.shape[0]
    blocks = clip.transformer.resblocks
    heads = blocks[0].attn.num_heads
    mlp = blocks[0].mlp.c_fc.weight.shape[0]
    act = blocks[0].mlp.gelu
    hidden_act = "quick_gelu" if type(act).__name__ == "QuickGELU" else "gelu"
    cfg = CLIPTextConfig(
        vocab_size=clip.token_embedding.weight.shape[0],
        hidden_size=width,
        intermediate_size=mlp,
        projection_dim=width,
        num_hidden_layers=len(blocks),
        num_attention_heads=heads,
        max_position_embeddings=ctx,
        hidden_act=hidden_act,
        layer_norm_eps=blocks[0].ln_1.eps,
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=0,
    )
    model = CLIPTextModel(cfg)
    sd: dict[str, torch.Tensor] = {
        "text_model.embeddings.token_embedding.weight": clip.token_embedding.weight,
        "text_model.embeddings.position_embedding.weight": clip.positional_embedding,
        "text_model.final_layer_norm.weight": clip.ln_final.weight,
        "text_model.final_layer_norm.bias": clip.ln_final.bias,
    }
    for i, b in enumerate(blocks):
        p = f"text_model.encoder.layers.{i}."
        qw, kw, vw = b.attn.in_proj_weight.chunk(3, dim=0)
        qb, kb, vb = b.attn.in_proj_bias.chunk(3, dim=0)
        sd.update(
            {
                p + "self_attn.q_proj.weight": qw,
                p + "self_attn.q_proj.bias": qb,
                p + "self_attn.k_proj.weight": kw,
                p + "self_attn.k_proj.bias": kb,
                p + "self_attn.v_proj.weight": vw,
                p + "self_attn.v_proj.bias": vb,
                p + "self_attn.out_proj.weight": b.attn.out_proj.weight,
                p + "self_attn.out_proj.bias": b.attn.out_proj.bias,
                p + "layer_norm1.weight": b.ln_1.weight,
                p + "layer_norm1.bias": b.ln_1.bias,
                p + "layer_norm2.weight": b.ln_2.weight,
                p + "layer_norm2.bias": b.ln_2.bias,
                p + "mlp.fc1.weight": b.mlp.c_fc.weight,
                p + "mlp.fc1.bias": b.mlp.c_fc.bias,
                p + "mlp.fc2.weight": b.mlp.c_proj.weight,
                p + "mlp.fc2.bias": b.mlp.c_proj.bias,
            }
        )
    # transformers 4.x prefixes keys with "text_model.", 5.x does not: follow the model's own names.
    prefix = "text_model." if any(k.startswith("text_model.") for k in model.state_dict()) else ""
    sd = {prefix + k[len("text_model.") :]: v.detach().clone().float() for k, v in sd.items()}
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise StarterWeightsError(f"text tower conversion mismatch: missing={missing} unexpected={unexpected}")
    return model.eval()


# ---------------------------------------------------------------------------------------------
# CLIP: config + (compact) state dict
# ---------------------------------------------------------------------------------------------


def build_clip(cfg: dict[str, Any]) -> Any:
    """Build an open_clip CLIP from the starter's json config (random weights)."""
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    return CLIP(int(cfg["embed_dim"]), CLIPVisionCfg(**cfg["vision_cfg"]), CLIPTextCfg(**cfg["text_cfg"]))


def compact_table(sd: dict[str, torch.Tensor], key: str, used_ids: list[int]) -> dict[str, torch.Tensor]:
    """Replace the embedding table `key` by its used rows (+ ids and row count); see expand_table."""
    sd = dict(sd)
    ids = torch.tensor(sorted(set(int(i) for i in used_ids)), dtype=torch.int64)
    table = sd.pop(key)
    sd[key + ".used_ids"] = ids
    sd[key + ".used_rows"] = table[ids].contiguous()
    sd[key + ".num_rows"] = torch.tensor([table.shape[0]], dtype=torch.int64)
    return sd


def expand_table(sd: dict[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
    """Inverse of `compact_table`: rows never used in training come back as zeros."""
    sd = dict(sd)
    ids = sd.pop(key + ".used_ids")
    rows = sd.pop(key + ".used_rows")
    n = int(sd.pop(key + ".num_rows")[0])
    table = torch.zeros(n, rows.shape[1], dtype=rows.dtype)
    table[ids] = rows
    sd[key] = table
    return sd


def compact_clip_state(clip: torch.nn.Module, used_token_ids: list[int]) -> dict[str, torch.Tensor]:
    """State dict with only the token-embedding rows the training text ever used (keeps size small).

    The full 49,408-row table would be ~25 MB; rows never seen in training carry no information,
    so they are stored as absent and restored as zeros.
    """
    sd = {k: v.detach().float().contiguous() for k, v in clip.state_dict().items() if k != "attn_mask"}
    return compact_table(sd, "token_embedding.weight", used_token_ids)


def expand_clip_state(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of `compact_clip_state`: rebuild the full token-embedding table."""
    return expand_table(sd, "token_embedding.weight")


def load_clip(weights_dir: str | Path = WEIGHTS_DIR) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load the starter open_clip CLIP (eval mode, CPU) and its config."""
    from safetensors.torch import load_file

    d = Path(weights_dir)
    _require(d, ["clip_config.json", "clip.safetensors"])
    cfg = json.loads((d / "clip_config.json").read_text())
    model = build_clip(cfg)
    sd = expand_clip_state(load_file(str(d / "clip.safetensors")))
    missing, unexpected = model.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k != "attn_mask"]
    if missing or unexpected:
        raise StarterWeightsError(
            f"clip.safetensors does not match clip_config.json: missing={missing} unexpected={unexpected}"
        )
    return model.eval(), cfg


# ---------------------------------------------------------------------------------------------
# Diffusion pipeline
# ---------------------------------------------------------------------------------------------


def load_pipeline(clip: torch.nn.Module, cfg: dict[str, Any], weights_dir: str | Path = WEIGHTS_DIR):
    """Assemble the starter StableDiffusionPipeline from shipped VAE/UNet weights and the CLIP text tower."""
    from diffusers import AutoencoderKL, DPMSolverMultistepScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from safetensors.torch import load_file

    d = Path(weights_dir)
    _require(
        d,
        [
            "vae/config.json",
            "vae/diffusion_pytorch_model.safetensors",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json",
        ],
    )
    vae = AutoencoderKL.from_config(json.loads((d / "vae/config.json").read_text()))
    vae.load_state_dict(load_file(str(d / "vae/diffusion_pytorch_model.safetensors")))
    unet = UNet2DConditionModel.from_config(json.loads((d / "unet/config.json").read_text()))
    unet.load_state_dict(load_file(str(d / "unet/diffusion_pytorch_model.safetensors")))
    scheduler = DPMSolverMultistepScheduler.from_config(json.loads((d / "scheduler/scheduler_config.json").read_text()))
    text_encoder = load_text_encoder(d) if (d / "text_encoder.safetensors").exists() else clip_text_to_hf(clip)
    tokenizer = hf_clip_tokenizer(cfg["text_cfg"]["context_length"])
    pipe: Any = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_text_encoder(weights_dir: str | Path = WEIGHTS_DIR):
    """The diffusion model's transformers CLIPTextModel (trained jointly with the UNet)."""
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModel

    d = Path(weights_dir)
    _require(d, ["text_encoder_config.json", "text_encoder.safetensors"])
    cfg = json.loads((d / "text_encoder_config.json").read_text())
    cfg.pop("transformers_version", None)
    model = CLIPTextModel(CLIPTextConfig(**cfg))
    sd = load_file(str(d / "text_encoder.safetensors"))
    key = next(k[: -len(".used_ids")] for k in sd if k.endswith("token_embedding.weight.used_ids"))
    missing, unexpected = model.load_state_dict(expand_table(sd, key), strict=False)
    missing = [k for k in missing if "position_ids" not in k]
    if missing or unexpected:
        raise StarterWeightsError(
            f"text_encoder.safetensors does not match its config: missing={missing} unexpected={unexpected}"
        )
    return model.eval()


#: images per pipeline call for the starter's 32 px pipeline: 64 renders 19-24 images/s on 2 CPU cores
#: against 6-7 at 8 (one run, 64 images each; resident memory 1.21 GB against 1.19), and batch
#: composition changes no image by more than one grey level (benchmarks/bench_generate.py --batches)
STARTER_BATCH_SIZE = 64


def generator_defaults(weights_dir: str | Path = WEIGHTS_DIR) -> dict[str, Any]:
    """Sampler defaults (steps, guidance, guidance floor, resolution) chosen for the shipped weights."""
    p = Path(weights_dir) / "generator.json"
    if p.exists():
        return json.loads(p.read_text())
    return {"default_steps": 20, "default_guidance": 4.0, "resolution": 32}


def _require(d: Path, names: list[str]) -> None:
    missing = [n for n in names if not (d / n).exists()]
    if missing:
        raise StarterWeightsError(
            f"starter weights missing in {d}: {', '.join(missing)}. "
            "Reinstall datacrafter-widget or rebuild them with `python -m datacrafter_widget.starter.train`."
        )


# ---------------------------------------------------------------------------------------------
# The public entry point: dc.starter.models()
# ---------------------------------------------------------------------------------------------


def caption_vocabulary() -> dict[str, list[str]]:
    """Attribute vocabulary of the starter captions, for the CLIP-retrieval captioner."""
    from .digits import BACKGROUNDS, CLASSES, FOREGROUNDS, SLANTS, THICKNESSES

    return {
        "digit": list(CLASSES),
        "fg": list(FOREGROUNDS),
        "bg": list(BACKGROUNDS),
        "thickness": list(THICKNESSES),
        "slant": list(SLANTS),
    }


def _compose_caption(digit: str, fg: str, bg: str, thickness: str, slant: str) -> str:
    from .digits import caption_for

    return caption_for(digit, fg, bg, thickness, slant)


#: what loading the starter models does, in order (progress names these stages)
LOAD_STAGES = (
    "importing open_clip, diffusers and transformers",
    "loading the CLIP weights",
    "building the diffusion pipeline",
    "building the captioner and the content labeler",
)


def load_starter_models(
    device: str = "cpu",
    weights_dir: str | Path = WEIGHTS_DIR,
    progress: bool | Callable[[int, int, str], None] = False,
):
    """The offline starter models: generator, embedder, CLIP-retrieval captioner and CLIP labeler.

    Everything is built from the shipped safetensors/json; no network is used. Returns a
    `datacrafter_widget.models.bundle.Models`. Loading takes seconds to a minute on a busy CPU:
    progress=True shows a tqdm bar over LOAD_STAGES, a callable(done, total, stage) hears each
    stage as it starts (done stages, of total) and once more at the end.
    """
    stage = _Stages(progress, "loading the starter models")
    stage(0)
    import open_clip

    from ..models.captioner import RetrievalCaptioner
    from ..models.embedder import Embedder
    from ..models.generator import Generator
    from ..loop.content_labels import ClipVocabularyLabeler
    from ..models.bundle import Models
    from .digits import CLASSES

    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    stage(1)
    clip, cfg = load_clip(weights_dir)
    stage(2)
    pipe = load_pipeline(clip, cfg, weights_dir)
    stage(3)
    clip = clip.to(dev)
    pipe = pipe.to(dev)
    defaults = generator_defaults(weights_dir)
    name = str(defaults.get("name", MODEL_NAME))
    generator = Generator(
        pipe,
        name=name,
        default_steps=int(defaults.get("default_steps", 20)),
        default_guidance=float(defaults.get("default_guidance", 4.0)),
        guidance_min_sigma=defaults.get("guidance_min_sigma"),
        default_batch_size=int(defaults.get("default_batch_size", STARTER_BATCH_SIZE)),
    )
    preprocess = open_clip.image_transform(int(cfg["vision_cfg"]["image_size"]), is_train=False)
    embedder = Embedder(
        clip,
        preprocess,
        open_clip_tokenizer(int(cfg["text_cfg"]["context_length"])),
        name=name.replace("starter/", "starter-clip/"),
        templates=("a photo of a {}",),
    )
    captioner = RetrievalCaptioner(
        embedder, caption_vocabulary(), _compose_caption, name=name.replace("starter/", "starter-retrieval-captioner/")
    )
    # The caption vocabulary lets the labeler read colour words the way the CLIP saw them in training.
    captions = [_compose_caption(*combo) for combo in itertools.product(*caption_vocabulary().values())]
    labeler = ClipVocabularyLabeler(embedder, class_names=CLASSES, captions=captions, max_captions=len(captions))
    models = Models(generator=generator, embedder=embedder, captioner=captioner, labeler=labeler, name=name)
    from ..models.spec import ModelSpec  # other processes (Ray workers) rebuild the bundle from this recipe

    kwargs: dict[str, Any] = {"device": device}
    if Path(weights_dir) != WEIGHTS_DIR:
        kwargs["weights_dir"] = str(weights_dir)
    models.spec = ModelSpec("datacrafter_widget.starter.loader:load_starter_models", kwargs)
    stage(len(LOAD_STAGES))
    return models


class _Stages:
    """Reports the stages of LOAD_STAGES to a tqdm bar (True), nobody (False) or a callable."""

    def __init__(self, progress: bool | Callable[[int, int, str], None], description: str) -> None:
        self.progress, self.bar = progress, None
        if progress is True:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(LOAD_STAGES), desc=description, leave=False)

    def __call__(self, done: int) -> None:
        total = len(LOAD_STAGES)
        what = LOAD_STAGES[done] if done < total else "done"
        if self.bar is not None:
            self.bar.n = done
            self.bar.set_postfix_str(what)
            if done == total:
                self.bar.close()
        elif callable(self.progress):
            self.progress(done, total, what)
