"""Generator over a real (tiny, random-weight) diffusers StableDiffusionPipeline."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch

from datacrafter_widget.models.generator import (
    GenerationCancelled,
    GenerationError,
    Generator,
    perturb_latents,
    set_scheduler,
)
from datacrafter_widget.models.bundle import Models
from tiny_models import tiny_sd_pipeline

torch.set_num_threads(1)
STEPS = 3


def arr(im):
    return np.asarray(im)


def close(a, b) -> bool:
    """Equal up to float rounding: batched kernels may sum in another order (see Generator docs)."""
    d = np.abs(arr(a).astype(int) - arr(b).astype(int))
    return d.max() <= 3 and d.mean() < 0.05


@pytest.fixture(scope="module")
def gen():
    return Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=STEPS, default_guidance=7.5)


class ProxyPipe:
    """Wraps a real pipeline: counts calls, can raise CUDA OOM for batches above `max_batch`."""

    def __init__(self, pipe, max_batch: int | None = None):
        self._pipe = pipe
        self.max_batch = max_batch
        self.batches: list[int] = []
        self.ooms = 0

    def __getattr__(self, name):
        return getattr(self._pipe, name)

    def __call__(self, **kwargs):
        n = len(kwargs["prompt"])
        if self.max_batch is not None and n > self.max_batch:
            self.ooms += 1
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory (fake, batch {n})")
        self.batches.append(n)
        return self._pipe(**kwargs)


def test_text_to_image_matches_diffusers_and_is_batch_invariant(gen):
    prompts = ["a red 3", "a blue 4 on a black background", "a thin green 7", "a purple 0"]
    negs = ["blurry", None, "", "dark"]
    seeds = [11, 12, 13, 14]
    batch = gen(prompts, negative_prompt=negs, seed=seeds, batch_size=3)
    assert len(batch) == 4 and all(im.size == (gen.resolution, gen.resolution) for im in batch)
    assert gen.last_flags == ["", "", "", ""]
    # each image alone (own seed) equals the same image inside a mixed batch, up to float rounding;
    # replaying the same batch is bit-exact
    for k in (0, 2, 3):
        alone = gen([prompts[k]], negative_prompt=negs[k] or "", seed=[seeds[k]], batch_size=1)[0]
        assert close(alone, batch[k]), f"image {k} changed with batch composition"
    again = gen(prompts, negative_prompt=negs, seed=seeds, batch_size=3)
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(again, batch))
    # and equals calling the diffusers pipeline directly with the same batch and generators
    direct = gen.pipe(
        prompts[:3],
        negative_prompt=["blurry", "", ""],
        num_inference_steps=STEPS,
        guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(s) for s in seeds[:3]],
    ).images
    assert all(np.array_equal(arr(d), arr(b)) for d, b in zip(direct, batch[:3]))
    # different seeds give different images
    assert not np.array_equal(arr(batch[0]), arr(gen(prompts[:1], negative_prompt="blurry", seed=99)[0]))


def test_negative_prompt_and_guidance_change_the_image(gen):
    base = gen(["a red 3"], seed=5)[0]
    assert not np.array_equal(arr(base), arr(gen(["a red 3"], negative_prompt="a blue 3", seed=5)[0]))
    assert not np.array_equal(arr(base), arr(gen(["a red 3"], seed=5, guidance=1.0)[0]))


def test_img2img_shares_components_and_is_batch_invariant(gen):
    sources = gen(["a red 3", "a blue 5", "a green 8"], seed=[1, 2, 3])
    assert gen.img2img.unet is gen.pipe.unet and gen.img2img.vae is gen.pipe.vae
    out = gen(["a red 3", "a blue 5", "a green 8"], image=sources, strength=0.6, seed=[7, 8, 9], batch_size=2)
    alone = gen(["a blue 5"], image=[sources[1]], strength=0.6, seed=[8])[0]
    assert close(out[1], alone)
    # strength matters, and a source of another size is centre-cropped and resized
    assert not np.array_equal(arr(out[1]), arr(gen(["a blue 5"], image=[sources[1]], strength=0.9, seed=[8])[0]))
    wide = sources[0].resize((48, 32))
    assert gen(["a red 3"], image=[wide], strength=0.5, seed=[1])[0].size == (gen.resolution, gen.resolution)


def test_latent_perturbation_is_seeded_per_image(gen):
    src = gen(["a red 3", "a blue 5"], seed=[1, 2])
    plain = gen(["a red 3"], image=src[:1], strength=0.5, seed=[3])[0]
    pert = gen(["a red 3", "a blue 5"], image=src, strength=0.5, seed=[3, 4], latent_perturbation=0.5, batch_size=2)
    again = gen(["a red 3"], image=src[:1], strength=0.5, seed=[3], latent_perturbation=0.5)[0]
    assert close(pert[0], again)
    replay = gen(["a red 3", "a blue 5"], image=src, strength=0.5, seed=[3, 4], latent_perturbation=0.5, batch_size=2)
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(replay, pert))
    assert not np.array_equal(arr(pert[0]), arr(plain))
    with pytest.raises(ValueError, match="latent_perturbation needs source images"):
        gen(["a red 3"], latent_perturbation=0.5)


def test_perturb_latents_formula():
    z = torch.ones(1, 4, 2, 2)
    out = perturb_latents(z, 0.5, seed=3)
    # per channel: z * (1 + e) + b, constant over space; e in [0, 0.5)
    per_channel = out[0, :, 0, 0]
    assert torch.equal(out, per_channel.view(1, 4, 1, 1).expand_as(out))
    assert torch.equal(out, perturb_latents(z, 0.5, seed=3))
    assert not torch.equal(out, perturb_latents(z, 0.5, seed=4))
    zero = torch.zeros(1, 4, 2, 2)
    b = perturb_latents(zero, 0.5, seed=3)[0, :, 0, 0]  # z = 0 isolates b
    e = per_channel - b - 1.0  # z = 1: 1 + e + b
    assert torch.all(e >= 0) and torch.all(e < 0.5)
    assert torch.equal(perturb_latents(z, 0.0, seed=3), z)


def test_progress_and_cancel_between_and_within_batches(gen):
    seen = []
    gen(["a 1", "a 2", "a 3", "a 4"], seed=0, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (4.0, 4) and all(b[0] >= a[0] for a, b in zip(seen, seen[1:]))
    assert any(0 < d < 2 for d, _ in seen), "step-level progress inside the first batch"

    # cancel after the first batch: its images are returned, the rest never run
    done = []
    out = gen(
        ["a 1", "a 2", "a 3", "a 4"],
        seed=0,
        batch_size=2,
        progress=lambda d, t: done.append(d),
        cancel=lambda: bool(done) and done[-1] >= 2,
    )
    assert len(out) == 2
    # cancel inside a batch: the interrupted batch is dropped, nothing half-denoised comes out
    calls = {"n": 0}

    def cancel_mid():
        calls["n"] += 1
        return calls["n"] > 2  # first check before the batch, then after step 1

    assert gen(["a 1", "a 2"], seed=0, batch_size=2, cancel=cancel_mid) == []
    with pytest.raises(GenerationCancelled) as info:
        gen(["a 1", "a 2", "a 3"], seed=0, batch_size=1, cancel=lambda: len(seen) > 0 and True, strict_cancel=True)
    assert info.value.images == []


def test_cuda_oom_halves_the_batch_and_keeps_results():
    pipe = tiny_sd_pipeline()
    reference = Generator(pipe, name="tiny", default_steps=STEPS)(
        ["a 1", "a 2", "a 3", "a 4", "a 5"], seed=0, batch_size=5
    )
    proxy = ProxyPipe(pipe, max_batch=2)
    gen = Generator(proxy, name="tiny", default_steps=STEPS)
    out = gen(["a 1", "a 2", "a 3", "a 4", "a 5"], seed=0, batch_size=5)
    assert proxy.ooms == 1 and proxy.batches == [2, 2, 1]  # 5 -> OOM, halved to 2, which fits
    assert all(close(a, b) for a, b in zip(out, reference))
    always = Generator(ProxyPipe(pipe, max_batch=0), name="tiny", default_steps=STEPS)
    with pytest.raises(GenerationError, match="out of GPU memory"):
        always(["a 1", "a 2"], seed=0, batch_size=2)


def test_nan_and_black_images_are_flagged():
    pipe = tiny_sd_pipeline()
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    gen = Generator(pipe, name="nan", default_steps=2)
    out = gen(["a 1", "a 2"], seed=0)
    assert len(out) == 2 and gen.last_flags == ["nan", "nan"]
    pipe = tiny_sd_pipeline()
    with torch.no_grad():
        pipe.vae.decoder.conv_out.weight.zero_()
        pipe.vae.decoder.conv_out.bias.fill_(-10.0)
    gen = Generator(pipe, name="black", default_steps=2)
    out = gen(["a 1"], seed=0)
    assert arr(out[0]).max() == 0 and gen.last_flags == ["black"]


def test_bad_input_errors(gen):
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        gen(["a 1", "  "])
    with pytest.raises(ValueError, match="no prompts"):
        gen([])
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        gen(["a 1"], seed=[1, 2])
    with pytest.raises(ValueError, match="strength"):
        gen(["a 1"], image=[gen(["a 1"])[0]], strength=1.5)


def test_scheduler_by_name():
    pipe = tiny_sd_pipeline()
    gen = Generator(pipe, name="tiny", default_steps=STEPS, scheduler="euler")
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    a = gen(["a 1"], seed=0)[0]
    set_scheduler(pipe, "dpm++")
    assert type(pipe.scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert gen(["a 1"], seed=0)[0].size == a.size
    with pytest.raises(ValueError, match="unknown scheduler 'nope'"):
        set_scheduler(pipe, "nope")


def test_models_factory_loads_a_local_folder_bit_exactly(tmp_path):
    pipe = tiny_sd_pipeline()
    pipe.save_pretrained(tmp_path / "sd")
    models = Models.stable_diffusion(str(tmp_path / "sd"), clip=None, device="cpu", steps=STEPS, guidance=7.5)
    assert models.generator.device == "cpu" and not models.embedder and not models.captioner
    ours = models.generator(["a red 3"], seed=4)[0]
    theirs = Generator(pipe, name="x", default_steps=STEPS)(["a red 3"], seed=4)[0]
    assert np.array_equal(arr(ours), arr(theirs))


def test_models_factory_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope.*model_index.json"):
        Models.stable_diffusion(str(tmp_path / "nope"), clip=None, device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        Models.stable_diffusion(str(tmp_path / "empty"), clip=None, device="cpu")
    xl = tmp_path / "xl"
    xl.mkdir()
    (xl / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    with pytest.raises(ValueError, match="StableDiffusionXLPipeline"):
        Models.stable_diffusion(str(xl), clip=None, device="cpu")


def _unet_batches(pipe):
    """Record the batch size of every UNet call (2n with classifier-free guidance, n without)."""
    sizes: list[int] = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: sizes.append(int(args[0].shape[0])), with_kwargs=True
    )
    return sizes, handle


def test_guidance_floor_drops_guidance_below_the_noise_level(gen):
    prompts, seeds = ["a red 3", "a blue 5"], [3, 4]
    full = gen(prompts, seed=seeds)
    unguided = gen(prompts, seed=seeds, guidance=1.0)
    floored = Generator(gen.pipe, name="tiny-sd", default_steps=STEPS, default_guidance=7.5, guidance_min_sigma=0.0)
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(floored(prompts, seed=seeds), full))
    floored.guidance_min_sigma = 1e9  # every step is below the floor: the same as no guidance at all
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(floored(prompts, seed=seeds), unguided))
    # a per-call override wins and leaves the generator as it was
    assert all(
        np.array_equal(arr(a), arr(b)) for a, b in zip(floored(prompts, seed=seeds, guidance_min_sigma=None), full)
    )
    assert all(
        np.array_equal(arr(a), arr(b)) for a, b in zip(gen(prompts, seed=seeds, guidance_min_sigma=1e9), unguided)
    )
    assert floored.guidance_min_sigma == 1e9 and gen.guidance_min_sigma is None

    # a floor inside the schedule: the first k steps run guided (batch 2n), the rest conditional only (n)
    sched = type(gen.pipe.scheduler).from_config(gen.pipe.scheduler.config)
    sched.set_timesteps(STEPS)
    abar = sched.alphas_cumprod[sched.timesteps.long()].double()
    sigmas = ((1 - abar) / abar).sqrt()
    floored.guidance_min_sigma = float((sigmas[STEPS // 2 - 1] + sigmas[STEPS // 2]) / 2)
    sizes, handle = _unet_batches(gen.pipe)
    try:
        mixed = floored(prompts, negative_prompt="blurry", seed=seeds)
    finally:
        handle.remove()
    assert sizes == [4] * (STEPS // 2) + [2] * (STEPS - STEPS // 2)
    assert not np.array_equal(arr(mixed[0]), arr(full[0])) and not np.array_equal(arr(mixed[0]), arr(unguided[0]))

    # image-to-image at low strength starts below the floor: no guidance from the first step
    sizes, handle = _unet_batches(gen.pipe)
    try:
        low = floored(prompts, image=full, strength=0.67, seed=seeds)  # the last 2 of 3 steps
    finally:
        handle.remove()
    assert sizes and set(sizes) == {2}
    plain = gen(prompts, image=full, strength=0.67, seed=seeds, guidance=1.0)
    assert all(np.array_equal(arr(a), arr(b)) for a, b in zip(low, plain))
    with pytest.raises(ValueError, match="guidance_min_sigma"):
        Generator(gen.pipe, guidance_min_sigma=-1.0)
    with pytest.raises(ValueError, match="guidance_min_sigma"):
        gen(prompts, seed=seeds, guidance_min_sigma=float("nan"))
    with pytest.raises(ValueError, match="runs no denoising step"):  # int(3 * 0.3) = 0 steps
        gen(prompts, image=full, strength=0.3, seed=seeds)
