"""M2M projection: quality against UMAP alone (labels at the centroid of their images) and speed.

    python benchmarks/bench_projection.py [--n 10000] [--labels 300] [--new 200] [--threads 2]
                                          [--starter] [--quick]

Prints one table per data set. Quality: image-image trustworthiness (scikit-learn, k=10; on a
2,000-point subsample when there are more images, the same subsample for both methods) and
image-label agreement (share of each image's labels among its 3 nearest labels in 2D, divided by
min(3, number of its labels)). Speed: full projection time, incremental placement of new images,
and the median displacement of existing points as % of the layout width.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from datacrafter_widget.loop.m2m import (  # noqa: E402
    M2MConfig,
    label_agreement,
    place,
    project,
)


def synthetic(n: int, n_labels: int, dim: int = 512, n_classes: int = 20, seed: int = 0):
    """Clustered CLIP-like embeddings: class direction + attribute directions + noise.

    Labels are the class names and attribute words (three attribute groups: colour, background,
    style). Attributes correlate with the class (each class prefers a few values of each group),
    and an image's labels are its class and its attribute values, with 10% of labels dropped and
    5% replaced by a random word, as a labeler would err.
    """
    rng = np.random.default_rng(seed)
    n_attr = n_labels - n_classes
    groups = np.array_split(np.arange(n_attr), 3)
    weights = [0.55, 0.45, 0.35]
    class_dir = rng.normal(size=(n_classes, dim))
    attr_dir = rng.normal(size=(n_attr, dim))
    class_dir /= np.linalg.norm(class_dir, axis=1, keepdims=True)
    attr_dir /= np.linalg.norm(attr_dir, axis=1, keepdims=True)
    cls = rng.integers(n_classes, size=n)
    emb = class_dir[cls].copy()
    labels: list[list[int]] = [[int(c)] for c in cls]
    prefs = [rng.choice(len(g), size=(n_classes, 6)) for g in groups]
    for gi, g in enumerate(groups):
        liked = prefs[gi][cls, rng.integers(6, size=n)]
        anyv = rng.integers(len(g), size=n)
        val = np.where(rng.random(n) < 0.7, liked, anyv)
        emb += weights[gi] * attr_dir[g[val]]
        for i in range(n):
            labels[i].append(n_classes + int(g[val[i]]))
    emb += rng.normal(scale=1.2 / np.sqrt(dim), size=emb.shape)  # noise norm ~1.2
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = []
    for labs in labels:
        kept = [j for j in labs if rng.random() > 0.10]
        if rng.random() < 0.05:
            kept.append(int(rng.integers(n_labels)))
        out.append(sorted(set(kept)))
    texts = [f"class_{c}" for c in range(n_classes)] + [f"word_{j}" for j in range(n_attr)]
    label_emb = np.concatenate([class_dir, attr_dir])
    return emb.astype(np.float32), texts, out, label_emb.astype(np.float32)


def trust(emb: np.ndarray, xy: np.ndarray, sub: np.ndarray) -> float:
    from sklearn.manifold import trustworthiness

    return float(trustworthiness(emb[sub], xy[sub], n_neighbors=10))


def umap_centroid_baseline(emb, mem, seed):
    """UMAP alone (same settings: 15 neighbours, min_dist 0.1, cosine) + labels at their centroid."""
    import warnings

    import umap

    cfg = M2MConfig()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        xy = (
            umap.UMAP(n_neighbors=cfg.n_neighbors, min_dist=cfg.min_dist, metric="cosine", random_state=seed)
            .fit_transform(emb)
            .astype(np.float32)
        )
    counts = np.asarray(mem.sum(axis=0)).ravel()
    lab = np.asarray(mem.T.astype(np.float32) @ xy) / np.maximum(counts, 1)[:, None]
    return xy, lab


def run(name, emb, texts, memberships, label_emb, n_new, seed=0):
    from datacrafter_widget.loop.m2m import membership_matrix

    n_total = emb.shape[0]
    n = n_total - n_new
    old_emb, new_emb = emb[:n], emb[n:]
    old_mem, new_mem = memberships[:n], memberships[n:]
    mem_old = membership_matrix(old_mem, n, texts)

    t = time.perf_counter()
    bxy, blab = umap_centroid_baseline(old_emb, mem_old, seed)
    t_base = time.perf_counter() - t

    t = time.perf_counter()
    lay = project(old_emb, texts, old_mem, label_emb, seed=seed)
    t_m2m = time.perf_counter() - t

    t = time.perf_counter()
    lay2 = place(lay, new_emb, new_mem)
    t_place = time.perf_counter() - t
    disp = np.linalg.norm(lay2.image_xy[:n] - lay.image_xy, axis=1)
    disp_lab = np.linalg.norm(lay2.label_xy - lay.label_xy, axis=1)
    width = lay.width

    rng = np.random.default_rng(seed)
    sub = rng.choice(n, size=min(n, 2000), replace=False) if n > 2000 else np.arange(n)
    unit = old_emb / np.linalg.norm(old_emb, axis=1, keepdims=True)
    tw_b, tw_m = trust(unit, bxy, sub), trust(unit, lay.image_xy, sub)
    ag_b = label_agreement(bxy, blab, mem_old)
    ag_m = label_agreement(lay.image_xy, lay.label_xy, mem_old)
    # new images: are they among their embedding-space neighbours in 2D too?
    ag_new = label_agreement(lay2.image_xy[n:], lay2.label_xy, lay2.memberships[n:])

    sub_note = f"subsample of {len(sub)}" if len(sub) < n else "all points"
    print(f"\n== {name}: {n} images + {len(texts)} labels (+{n_new} placed), dim {emb.shape[1]} ==")
    print(f"{'measure':<52}{'UMAP+centroid':>15}{'M2M':>12}{'M2M/base':>10}")
    print(f"{'trustworthiness k=10 (' + sub_note + ')':<52}{tw_b:>15.4f}{tw_m:>12.4f}{tw_m / tw_b:>10.3f}")
    print(f"{'  difference M2M - UMAP (bar: >= -0.02)':<52}{'':>15}{tw_m - tw_b:>12.4f}")
    print(f"{'image-label agreement (3 nearest labels)':<52}{ag_b:>15.4f}{ag_m:>12.4f}{ag_m / ag_b:>10.3f}")
    print(f"{'full projection time, s (bar: <= 60)':<52}{t_base:>15.2f}{t_m2m:>12.2f}{t_m2m / t_base:>10.2f}")
    print(f"{f'place {n_new} new images, s (bar: <= 3)':<52}{'':>15}{t_place:>12.3f}")
    print(f"{'median displacement, existing images, % width':<52}{'':>15}{100 * np.median(disp) / width:>12.3f}")
    print(f"{'median displacement, labels, % width':<52}{'':>15}{100 * np.median(disp_lab) / width:>12.3f}")
    print(f"{'image-label agreement of the placed images':<52}{'':>15}{ag_new:>12.4f}")
    return dict(
        tw_b=tw_b, tw_m=tw_m, ag_b=ag_b, ag_m=ag_m, t_m2m=t_m2m, t_place=t_place, disp=float(np.median(disp) / width)
    )


def starter_data(n_new: int):
    """Starter coloured digits embedded by the starter CLIP; labels from the CLIP labeler."""
    import datacrafter_widget as dc
    from datacrafter_widget.loop.content_labels import ClipVocabularyLabeler

    ds = dc.starter.colored_digits(shots=5, seed=0)
    models = dc.starter.models()
    pool = ds.pool if ds.pool is not None else ds
    images = pool.images()
    emb = models.embedder.embed_images(images)
    lab = ClipVocabularyLabeler(models.embedder, class_names=pool.classes, captions=[c for c in pool.captions if c])
    labels = lab(images, embeddings=emb)
    texts = sorted({t for ls in labels for t in ls})
    label_emb = models.embedder.embed_texts(texts)
    return emb, texts, labels, label_emb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--labels", type=int, default=300)
    ap.add_argument("--new", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--starter", action="store_true", help="also run on starter coloured digits")
    ap.add_argument("--quick", action="store_true", help="2,000 images (smoke run)")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    n = 2000 if args.quick else args.n
    print(f"load average at start: {os.getloadavg()}, cpus: {os.cpu_count()}, torch threads: {args.threads}")
    # warm numba's JIT (compile time is paid once per process, and cached on disk by umap-learn)
    e, tx, mb, le = synthetic(300, 40, seed=1)
    t = time.perf_counter()
    project(e, tx, mb, le)
    print(f"warm-up (numba JIT compile + 300-image projection): {time.perf_counter() - t:.1f} s")
    emb, texts, mem, lemb = synthetic(n + args.new, args.labels)
    run("synthetic clustered embeddings", emb, texts, mem, lemb, args.new)
    if args.starter:
        try:
            emb, texts, mem, lemb = starter_data(args.new)
        except Exception as exc:  # starter weights may not be built yet
            print(f"\nstarter data skipped: {type(exc).__name__}: {exc}")
        else:
            perm = np.random.default_rng(0).permutation(len(emb))
            run(
                "starter coloured digits (starter CLIP)",
                emb[perm],
                texts,
                [mem[i] for i in perm],
                lemb,
                min(args.new, len(emb) // 5),
            )
    print(f"\nload average at end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
