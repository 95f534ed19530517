"""The real-size path at reduced channel widths: 512 px photos, an SD-1.5-shaped pipeline with 64 x 64
latents, open_clip ViT-B-32 at 224 px and a BLIP-shaped captioner at 384 px, each saved to a folder as
a download is and loaded through dc.Models.stable_diffusion, then a round of the loop.

The models come from benchmarks/real_size/build.py (the configs of the real checkpoints with every
channel width divided by 8); benchmarks/bench_real_size.py runs the same path at full width.
"""

from __future__ import annotations

import io
import sys
import warnings
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datacrafter_widget as dc
from datacrafter_widget.ui.widget import CrafterView

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from real_size.build import build_all, write_photos  # noqa: E402

SHRINK = 8


@pytest.fixture(scope="module")
def real_size(tmp_path_factory):
    root = tmp_path_factory.mktemp("real-size")
    p = build_all(root / "models", shrink=SHRINK)
    p.register_clip()
    photos = write_photos(root / "photos", per_class=2, size=512, seed=3)
    return p, photos


@pytest.fixture(scope="module")
def models(real_size):
    p, _ = real_size
    return dc.Models.stable_diffusion(
        str(p.sd), clip=(p.clip_arch, str(p.clip_weights)), captioner=str(p.captioner), device="cpu", steps=1
    )


def test_saved_folders_load_as_a_download_does(real_size, models):
    p, _ = real_size
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (p.sd / part).is_dir(), part
    assert (p.sd / "model_index.json").is_file() and (p.captioner / "config.json").is_file()
    gen = models.generator
    assert gen.resolution == 512 and gen.pipe.unet.config.sample_size == 64
    assert gen.pipe.tokenizer.model_max_length == 77
    assert gen.pipe.unet.dtype == torch.float32
    assert models.embedder.image_size == 224
    assert models.captioner.processor.image_processor.size == {"height": 384, "width": 384}


def test_the_whole_loop_at_512_px(real_size, models, tmp_path):
    """Import, map, a class and a caption round, feedback, evolve, the probe student, a GAP step, the
    widget's view and export, all at the real resolutions (512 px images, 64 x 64 latents)."""
    _, photos = real_size
    ds = dc.Dataset.from_folder(photos)
    assert {im.size for im in ds.images()} == {(512, 512)}
    with dc.DataCrafter(ds, models=models, project=tmp_path / "project", batch_size=2) as crafter:
        crafter.update_projection()
        class_ids = crafter.generate(per_class=1, strategy="class", classes=["ball"], steps=1, progress=False)
        ids = crafter.generate(per_class=1, strategy="caption", classes=["ball", "box"], steps=1, progress=False)
        assert len(class_ids) == 1 and len(ids) == 2
        s = crafter.samples.set_index("id")
        real = s[s["source"] == "real"]
        asked = real[real["label"].isin(["ball", "box"])]
        assert (asked["caption"].str.len() > 0).all(), "the BLIP-shaped captioner captioned the round's real photos"
        for i in ids:  # caption prompts: the class and a real photo's caption
            assert s.loc[i, "label"] in s.loc[i, "prompt"] and s.loc[i, "parent_id"] in real.index, s.loc[i]
        assert {crafter.image(i).size for i in class_ids + ids} == {(512, 512)}
        assert crafter.embeddings(ids).shape == (2, models.embedder.dim)

        assert crafter.feedback(bad=class_ids, bad_labels=["blurry"])["bad"] == 1
        result = crafter.evolve(
            classes=["ball"], population=2, generations=1, batch=1, steps=1, test_negatives=False, progress=False
        )
        assert set(result.prompts) == {"ball"} and result.prompts["ball"].strip()
        assert crafter.prompts["ball"]["history"], "the evolved prompt is kept in prompts.json"

        student = crafter.train_student(kind="probe", progress=False)
        assert student.config.kind == "probe" and student.config.feature_dim == models.embedder.dim
        gap_ids = crafter.adversarial(
            target="a photo of an object on a beach",
            steps=1,
            per_class=1,
            classes=["box"],
            sampler_steps=1,
            final_steps=1,
            batch=1,
            n_tokens=2,
            progress=False,
        )
        assert len(gap_ids) == 1
        row = crafter.samples.set_index("id").loc[gap_ids[0]]
        assert row["strategy"] == "gap" and row["label"] == "box"
        assert (crafter.project / row["embeddings_file"]).is_file()
        assert crafter.image(gap_ids[0]).size == (512, 512)

        view = CrafterView(crafter)  # what crafter.show() displays
        view.wait(timeout=300)
        meta = view.widget.thumb_meta
        assert meta["count"] == len(crafter.samples) and meta["tile"] <= 32
        page, grid = view.widget.thumbnail_page(range(meta["count"]))  # what the browser asks for zoomed in
        assert Image.open(io.BytesIO(page)).size == (grid["width"], grid["height"])
        assert grid["count"] == meta["count"] and grid["tile"] == meta["tile"]

        out = crafter.export(tmp_path / "export")
        s = crafter.samples
        kept = s[(s["source"] == "generated") & (s["flag"] == "") & ~s["id"].isin(class_ids)]  # class_ids: bad
        exported = sorted(out.rglob("g*.png"))
        assert len(kept) >= 1 and {f.stem for f in exported} == set(kept["id"])
        assert {Image.open(f).size for f in exported} <= {(512, 512)}


def test_a_gap_step_at_512_px_frees_what_its_backward_does_not_need_yet(models):
    """A GAP token step at 64 x 64 latents: while the VAE decoder's 512 px block runs its backward
    (the step's memory peak), none of the tensors the UNet's blocks and the decoder's lower blocks
    got in the forward is still alive; those spans are recomputed later. Kept alive, they were
    ~1 GB of the full-shape step's 9.2 GB (benchmarks/bench_gap_memory.py --profile)."""
    from datacrafter_widget.loop.gap import GapConfig, _block_checkpointing, optimise_prompt_tokens
    from datacrafter_widget.loop.student import train_student
    from real_size.build import render_photo

    pipe = models.generator.pipe
    dec = pipe.vae.decoder
    top = dec.up_blocks[-1].resnets[0].norm1  # the 512 px block's first layer: its recompute is the peak
    lower = [*(m for b in pipe.unet.down_blocks for m in b.resnets), dec.mid_block]  # not the spans' own inputs
    lower += [m for b in dec.up_blocks[:-1] for m in [*(r.norm1 for r in b.resnets), *(b.upsamplers or [])]]
    forward: list[weakref.ref] = []
    alive: list[int] = []
    calls = [0]

    def remember(module, args):
        if torch.is_grad_enabled() and not alive and calls[0] == 0:
            forward.append(weakref.ref(args[0]))

    def at_top(module, args):
        calls[0] += 1
        if calls[0] == 2:  # the second call is the backward's recompute
            alive.append(sum(r() is not None for r in forward))

    images = [render_photo(k, 512, seed=s) for k in ("ball", "box") for s in range(2)]
    student = train_student(
        images, ["ball", "ball", "box", "box"], kind="probe", embedder=models.embedder, epochs=2, progress=False
    )
    hooks = [m.register_forward_pre_hook(remember) for m in lower] + [top.register_forward_pre_hook(at_top)]
    try:
        optimise_prompt_tokens(
            models.generator,
            student,
            "ball",
            target="a photo of an object on a beach",
            config=GapConfig(steps=1, sampler_steps=1, batch=1, n_tokens=2),  # checkpointing: on from 64 x 64
        )
    finally:
        for h in hooks:
            h.remove()
    assert len(forward) >= 10 and alive == [0], (len(forward), alive)

    # The decoder's outer span computes what vae.decode computes, values and gradients.
    from datacrafter_widget.loop.gap import _decode

    z = torch.randn(1, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    plain = z.clone().requires_grad_(True)
    want = pipe.vae.decode(plain).sample
    want.square().mean().backward()
    spanned = z.clone().requires_grad_(True)
    with _block_checkpointing(pipe.vae):
        got = _decode(pipe.vae, spanned, nested=True)
        got.square().mean().backward()
    assert torch.equal(got, want) and torch.equal(spanned.grad, plain.grad)


def test_gap_final_images_at_512_px_give_freed_memory_back_between_steps(models, monkeypatch):
    """GAP's final images at 64 x 64 latents trim the C heap before the pipeline call and after each
    sampler step (a diffusers step callback): without it the heap the UNet calls freed stayed
    resident under the 512 px decode (the loop's GAP step: 7.66-8.00 GB against 7.58 GB)."""
    from datacrafter_widget.loop import gap

    pipe = models.generator.pipe
    text, readable, positions = gap._prompt_layout(pipe.tokenizer, "ball", "a photo of a {class}", 2)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    tokens = gap.GapResult(
        label="ball",
        embeddings=torch.zeros(2, width),
        prompt=readable,
        template_text=text,
        positions=positions,
        config=gap.GapConfig(n_tokens=2, final_steps=2),
    )
    trims: list[int] = []
    calls: list[int] = []
    monkeypatch.setattr(gap, "_malloc_trim", lambda: trims.append)
    hook = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(len(trims)))
    try:
        images = gap.generate_with_tokens(models.generator, tokens, [0], steps=2)
    finally:
        hook.remove()
    assert images[0].size == (512, 512) and calls
    # one trim before the call, then one after each sampler step: before every later UNet call and the decode
    assert calls == list(range(1, len(calls) + 1)) and len(trims) == len(calls) + 1, (calls, trims)


def test_float16_on_the_cpu_loads_float32(real_size):
    """float16 has no fast CPU kernels: a dtype meant for a GPU must not make a CPU run many times slower."""
    p, _ = real_size
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m = dc.Models.stable_diffusion(str(p.sd), clip=None, device="cpu", dtype=torch.float16, steps=1)
    assert m.generator.pipe.unet.dtype == torch.float32
    assert any("float16" in str(w.message) and "float32" in str(w.message) for w in caught)
    image = m.generator(["a photo of a ball"], seed=0, steps=1)[0]
    assert image.size == (512, 512) and np.asarray(image).std() > 0
