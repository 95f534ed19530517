"""Diagnostic for masked GAP on the starter digits (class 3, seed 0), as run for benchmarks/results/NOTES.md.

Trains the real-only student as the benchmark does (width 32, 150 epochs on 50 images), learns GAP tokens
for class "3" from its 5 train images with plain-background masks (15 steps, lr 0.02, batch 3, 4 sampler
steps at strength 0.8, image guidance to pool images), and compares the student's CE on 20 fresh images
from the learned tokens, from the untrained tokens (lr=0: same img2img + composite) and from the plain
class prompt. Writes a montage: rows = source, learned tokens, untrained tokens, class prompt.

    PYTHONPATH=. python benchmarks/diag_gap_masked.py
"""

import torch

torch.set_num_threads(1)
import datacrafter_widget as dc
from datacrafter_widget.loop.gap import optimise_prompt_tokens, generate_with_tokens, student_loss_on
from datacrafter_widget.loop.masks import plain_background_mask
from datacrafter_widget.loop.student import train_student
from PIL import Image

ds = dc.starter.colored_digits(shots=5, spurious=0.95, seed=0)
models = dc.starter.models()
gen = models.generator
gen.default_steps = 8
st = train_student(ds.images(), ds.labels, ds.classes, epochs=150, width=32, progress=False, seed=0)
ti = ds.pool.images(list(range(0, len(ds.pool), len(ds.pool) // 40)))
lab = "3"
srcs = [im for im, l in zip(ds.images(), ds.labels) if l == lab]
mks = [plain_background_mask(im) for im in srcs]
kw = dict(
    n_tokens=4,
    sampler_steps=4,
    batch=3,
    sources=srcs,
    masks=mks,
    target_images=ti,
    embedder=models.embedder,
    image_weight=10.0,
    strength=0.8,
    final_steps=8,
    guidance=gen.default_guidance,
)
res = optimise_prompt_tokens(gen, st, lab, steps=15, lr=0.02, seed=0, **kw)
print("adv", [round(h["adversarial"], 2) for h in res.history])
print("p_label", [round(h["p_label"], 2) for h in res.history])
print("image", [round(h.get("image", float("nan")), 3) for h in res.history])
base = optimise_prompt_tokens(gen, st, lab, steps=1, lr=0.0, seed=0, **kw)
seeds = list(range(100, 120))
S = [srcs[i % 5] for i in range(20)]
M = [mks[i % 5] for i in range(20)]
hard = generate_with_tokens(gen, res, seeds, sources=S, masks=M)
plain = generate_with_tokens(gen, base, seeds, sources=S, masks=M)
cls = gen([f"a photo of a {lab}"] * 20, seed=seeds)
print(
    "CE learned",
    student_loss_on(st, hard, lab),
    "untrained tokens",
    student_loss_on(st, plain, lab),
    "class prompt",
    student_loss_on(st, cls, lab),
    "sources",
    student_loss_on(st, srcs, lab),
)
row = Image.new("RGB", (32 * 10, 128))
for i in range(10):
    for r, im in enumerate([S[i], hard[i], plain[i], cls[i]]):
        row.paste(im, (32 * i, 32 * r))
row.resize((640, 256), Image.NEAREST).save("benchmarks/results/gap_masked_seed0_n50_200/gap_examples_class3.png")
