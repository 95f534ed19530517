"""Samplers built from another sampler's config sample as the pipeline does (no silent clipping).

DDIM's defaults clip the predicted clean latent to [-1, 1] at every step. A pipeline whose own
sampler has no such setting (the starter's DPM-Solver, most SD checkpoints' configs) must not get
it by accident when GAP or `scheduler="ddim"` builds a DDIM from its config: on the starter's
latents (std 1, values past +-5) that clipping turns every image into textured noise.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from datacrafter_widget.loop import gap
from datacrafter_widget.models.generator import Generator, scheduler_like, set_scheduler
from tests.tiny_models import tiny_sd_pipeline

CLASSES = [str(d) for d in range(10)]


def test_ddim_from_a_config_without_clip_settings_does_not_clip():
    pipe = tiny_sd_pipeline(scheduler="pndm")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)  # no clip_sample key
    assert "clip_sample" not in DPMSolverMultistepScheduler.from_config(pipe.scheduler.config).config
    for sched in (gap._ddim(pipe, 4), scheduler_like(pipe.scheduler, DDIMScheduler)):
        assert sched.config.clip_sample is False
        assert sched.config.set_alpha_to_one is False
    set_scheduler(pipe, "ddim")
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.clip_sample is False


def test_a_config_that_clips_keeps_clipping():
    src = DDIMScheduler(clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=True)
    built = scheduler_like(src, DDIMScheduler)
    assert built.config.clip_sample is True and built.config.set_alpha_to_one is True


@pytest.fixture(scope="module")
def starter():
    import datacrafter_widget as dc
    from datacrafter_widget.starter.checker import load_checker

    try:
        models = dc.starter.models()
    except FileNotFoundError as e:  # pragma: no cover - the weights ship with the package
        pytest.skip(str(e))
    return models, load_checker()


def _digit_accuracy(checker, images, labels) -> float:
    got = checker.predict(images)["digit"]
    return sum(g == l for g, l in zip(got, labels)) / len(labels)


@torch.no_grad()
def _gap_sampler_images(pipe, prompts: list[str], seeds: list[int], steps: int, guidance: float):
    """Plain prompts through GAP's differentiable DDIM (the sampler its tokens are optimised through)."""
    from PIL import Image

    out = []
    uncond, _ = gap._encode(pipe, gap._tokenize(pipe.tokenizer, [""]))
    for p, s in zip(prompts, seeds):
        cond, _ = gap._encode(pipe, gap._tokenize(pipe.tokenizer, [p]))
        sched = gap._ddim(pipe, steps)
        noise = torch.randn(gap._latent_shape(pipe, 1), generator=torch.Generator().manual_seed(s))
        x = gap._sample(pipe, cond, uncond, noise * sched.init_noise_sigma, sched, guidance, False)
        a = (x[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        out.append(Image.fromarray(a))
    return out


def test_gap_and_ddim_samplers_draw_the_prompted_digit_as_the_pipeline_does(starter):
    models, checker = starter
    gen = models.generator
    labels = [c for c in CLASSES for _ in range(3)]
    prompts = [f"a photo of a {c}" for c in labels]
    seeds = list(range(len(prompts)))
    own = gen(prompts, seed=seeds, steps=12)
    saved = gen.pipe.scheduler
    try:
        via_ddim = Generator(gen.pipe, default_guidance=gen.default_guidance, scheduler="ddim")(
            prompts, seed=seeds, steps=12
        )
    finally:
        gen.pipe.scheduler = saved
    via_gap = _gap_sampler_images(gen.pipe, prompts, seeds, steps=12, guidance=gen.default_guidance)
    acc_own = _digit_accuracy(checker, own, labels)
    acc_ddim = _digit_accuracy(checker, via_ddim, labels)
    acc_gap = _digit_accuracy(checker, via_gap, labels)
    assert acc_own >= 0.7, f"the starter's own sampler drew the prompted digit {acc_own:.2f} of the time"
    assert acc_ddim >= acc_own - 0.15, f"scheduler='ddim' {acc_ddim:.2f} against the pipeline's {acc_own:.2f}"
    assert acc_gap >= acc_own - 0.15, f"GAP's sampler {acc_gap:.2f} against the pipeline's {acc_own:.2f}"
