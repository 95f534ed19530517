"""M2M: images and their content labels in one 2D layout.

DataCrafter's released M2M trains a shared MLP (features -> 512 -> 2) for 1000 epochs, the first 700
with only the image-image term. We keep its loss (weighted InfoNCE terms with a UMAP-style low-dim
kernel, the weights and temperatures of methods.md) but optimise the 2D *positions* directly:

1. UMAP (umap-learn, min_dist 0.1, 15 neighbours, cosine) on the image embeddings gives the
   image-image structure; it plays the role of M2M's 700 image-only epochs and is much cheaper.
2. Labels start at the centroid of their images; then image and label positions are refined
   together with torch Adam and sampled negatives: image-image (weight 2, temperature 0.15,
   positives from the 15 nearest neighbours in embedding space), image-label (1, 0.1; positives
   are the image's own labels, negatives sampled by label frequency^0.75), label-image-cluster
   (0.1) and label-label (1e-5).

Why positions and not an MLP: a few hundred full-batch steps on (n+m) x 2 parameters take seconds on
a CPU (10k images in well under a minute including UMAP), and incremental placement is exact:
existing images stay where the person last saw them, and new images are optimised alone against
the frozen layout (labels may drift a little, held by an anchor). An MLP would let new images be
mapped without optimisation, but retraining it moves every point, which is what the person must not
see between rounds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import compute

__all__ = [
    "M2MConfig",
    "Layout",
    "ProjectionError",
    "project",
    "place",
    "projection_frame",
    "membership_matrix",
    "label_agreement",
    "save_layout",
    "load_layout",
]


class ProjectionError(ValueError):
    """Input that cannot be projected; the message names the input and the fix."""


@dataclass
class M2MConfig:
    """Settings of the M2M projection; defaults follow DataCrafter's M2M (methods.md)."""

    n_neighbors: int = 15
    min_dist: float = 0.1
    metric: str = "cosine"
    umap_epochs: int = 200
    epochs: int = 300
    place_epochs: int = 100
    lr: float = 0.05
    label_lr: float = 0.2  # labels are few and start at centroids; they need to travel further
    negatives: int = 16
    batch_size: int = 8192
    w_image_image: float = 2.0
    t_image_image: float = 0.15
    w_image_label: float = 1.0
    t_image_label: float = 0.1
    w_label_cluster: float = 0.1
    w_label_label: float = 1e-5
    label_anchor: float = 1.0
    exact_knn_max: int = 20000
    threads: int | None = None  # torch threads for the refinement (None: the compute policy's map threads)


@dataclass
class Layout:
    """A 2D layout of images and labels, with what `place` needs to add images to it."""

    image_xy: np.ndarray  # (n, 2) float32
    label_xy: np.ndarray  # (m, 2) float32
    label_texts: list[str]
    image_emb: np.ndarray  # (n, d) float32, L2-normalised
    memberships: sp.csr_matrix  # (n, m) bool
    config: M2MConfig = field(default_factory=M2MConfig)
    seed: int = 0

    @property
    def n_images(self) -> int:
        return int(self.image_xy.shape[0])

    @property
    def width(self) -> float:
        """Extent of the image layout (max of x and y range), the unit for displacement."""
        if self.n_images == 0:
            return 0.0
        span = self.image_xy.max(axis=0) - self.image_xy.min(axis=0)
        return float(span.max())


# ----------------------------------------------------------------------------- input checks


def _check_embeddings(emb: np.ndarray, name: str, *, min_rows: int) -> np.ndarray:
    arr = np.asarray(emb)
    if arr.ndim != 2:
        raise ProjectionError(f"{name} must be a 2D array (n, d); got shape {arr.shape}.")
    if arr.shape[0] == 0:
        raise ProjectionError(f"{name} is empty: there are no images to project; add images first.")
    if arr.shape[0] < min_rows:
        raise ProjectionError(
            f"{name} has {arr.shape[0]} row(s); a projection needs at least {min_rows} images "
            "(one image has no neighbours to place it against). Add more images."
        )
    if arr.shape[1] == 0:
        raise ProjectionError(f"{name} has 0 columns; pass embeddings of shape (n, d).")
    if not np.issubdtype(arr.dtype, np.number):
        raise ProjectionError(f"{name} must be numeric; got dtype {arr.dtype}.")
    arr = arr.astype(np.float32, copy=False)
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise ProjectionError(
            f"{name} has NaN or inf values in {int(bad.sum())} row(s) (first: {rows}); "
            "re-embed those images or drop them."
        )
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        rows = np.flatnonzero(norms[:, 0] == 0)[:5].tolist()
        raise ProjectionError(f"{name} has all-zero rows {rows}; re-embed those images.")
    return (arr / norms).astype(np.float32)


def membership_matrix(
    memberships: Sequence[Sequence[int | str]] | sp.spmatrix | np.ndarray,
    n_images: int,
    label_texts: Sequence[str],
) -> sp.csr_matrix:
    """(n_images, n_labels) bool CSR from per-image label lists (indices or texts) or a matrix."""
    m = len(label_texts)
    if sp.issparse(memberships) or isinstance(memberships, np.ndarray):
        mat = sp.csr_matrix(memberships, dtype=bool)
        if mat.shape != (n_images, m):
            raise ProjectionError(
                f"memberships has shape {mat.shape} but there are {n_images} images and {m} labels; "
                "pass an (n_images, n_labels) matrix."
            )
        return mat
    if len(memberships) != n_images:
        raise ProjectionError(
            f"memberships has {len(memberships)} entries but there are {n_images} images; "
            "pass one list of labels per image."
        )
    index = {t: j for j, t in enumerate(label_texts)}
    rows: list[int] = []
    cols: list[int] = []
    for i, labs in enumerate(memberships):
        for lab in labs:
            if isinstance(lab, str):
                if lab not in index:
                    raise ProjectionError(
                        f"image {i} has label {lab!r} which is not in label_texts; add it to label_texts."
                    )
                j = index[lab]
            else:
                j = int(lab)
                if not 0 <= j < m:
                    raise ProjectionError(f"image {i} has label index {j}, outside 0..{m - 1} (there are {m} labels).")
            rows.append(i)
            cols.append(j)
    data = np.ones(len(rows), dtype=bool)
    mat = sp.csr_matrix((data, (rows, cols)), shape=(n_images, m), dtype=bool)
    mat.sum_duplicates()
    return mat


# ----------------------------------------------------------------------------- neighbours


def _exact_knn(query: np.ndarray, base: np.ndarray, k: int, *, exclude_self: bool) -> np.ndarray:
    """Cosine kNN by blocked matrix products + top-k (inputs are unit vectors); exact, fast to ~20k."""
    import torch

    k = min(k, base.shape[0] - (1 if exclude_self else 0))
    out = np.empty((query.shape[0], k), dtype=np.int64)
    block = max(1, int(2e7 // max(base.shape[0], 1)))
    qt, bt = torch.from_numpy(np.ascontiguousarray(query)), torch.from_numpy(np.ascontiguousarray(base))
    with torch.no_grad():
        for s in range(0, query.shape[0], block):
            sim = qt[s : s + block] @ bt.T
            if exclude_self:
                r = torch.arange(sim.shape[0])
                sim[r, s + r] = -float("inf")
            out[s : s + block] = torch.topk(sim, k, dim=1).indices.numpy()
    return out


def _image_knn(emb: np.ndarray, k: int, cfg: M2MConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """kNN including self in column 0 (as umap-learn expects) plus cosine distances."""
    n = emb.shape[0]
    k = min(k, n - 1)
    if n <= cfg.exact_knn_max:
        nbr = _exact_knn(emb, emb, k, exclude_self=True)
    else:  # approximate, as umap-learn would do itself
        from umap.umap_ import nearest_neighbors

        idx, _, _ = nearest_neighbors(emb, k + 1, "cosine", {}, False, np.random.RandomState(seed))
        nbr = idx[:, 1:]
    idx = np.concatenate([np.arange(n)[:, None], nbr], axis=1)
    dist = 1.0 - np.einsum("nd,nkd->nk", emb, emb[idx])
    dist[:, 0] = 0.0
    return idx, np.maximum(dist, 0.0).astype(np.float32)


# ----------------------------------------------------------------------------- init


def _umap_init(emb: np.ndarray, knn_idx: np.ndarray, knn_dist: np.ndarray, cfg: M2MConfig, seed: int) -> np.ndarray:
    n = emb.shape[0]
    if n < 10:
        # UMAP's spectral init and fuzzy graph are undefined for a handful of points; PCA is a
        # faithful 2D start there and the refinement does the rest.
        centred = emb - emb.mean(axis=0)
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        xy = centred @ vt[:2].T
        if xy.shape[1] < 2:
            xy = np.concatenate([xy, np.zeros((n, 2 - xy.shape[1]))], axis=1)
        scale = np.abs(xy).max() or 1.0
        return (xy / scale * 2.0).astype(np.float32)
    import warnings

    import umap

    k = knn_idx.shape[1]
    reducer = umap.UMAP(
        n_neighbors=k,
        min_dist=cfg.min_dist,
        metric=cfg.metric,
        n_epochs=cfg.umap_epochs,
        random_state=seed,
        precomputed_knn=(knn_idx, knn_dist, None),
        init="spectral" if n > 20 else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # precomputed-knn / n_jobs notices are expected here
        xy = reducer.fit_transform(emb)
    return np.asarray(xy, dtype=np.float32)


def _label_centroids(
    image_xy: np.ndarray, mem: sp.csr_matrix, image_emb: np.ndarray, label_emb: np.ndarray | None
) -> np.ndarray:
    """Centroid of each label's images; labels without images go near their most similar images."""
    m = mem.shape[1]
    counts = np.asarray(mem.sum(axis=0)).ravel()
    sums = np.asarray(mem.T.astype(np.float32) @ image_xy)
    xy = np.zeros((m, 2), dtype=np.float32)
    has = counts > 0
    xy[has] = sums[has] / counts[has, None]
    empty = np.flatnonzero(~has)
    if empty.size:
        if label_emb is not None:
            sim = label_emb[empty] @ image_emb.T
            top = np.argsort(-sim, axis=1)[:, : min(5, image_xy.shape[0])]
            xy[empty] = image_xy[top].mean(axis=1)
        else:
            xy[empty] = image_xy.mean(axis=0)
    return xy


# ----------------------------------------------------------------------------- losses


def _kernel(torch, d2, a: float, b: float):
    """UMAP low-dim similarity 1 / (1 + a d^(2b)), in (0, 1]."""
    return 1.0 / (1.0 + a * torch.exp(b * torch.log(d2 + 1e-8)))


def _info_nce(torch, anchor, pos, neg, temp: float, a: float, b: float):
    """InfoNCE with the UMAP kernel as similarity: anchor (B,2), pos (B,2), neg (B,K,2)."""
    sp_ = _kernel(torch, ((anchor - pos) ** 2).sum(-1), a, b)
    sn = _kernel(torch, ((anchor[:, None, :] - neg) ** 2).sum(-1), a, b)
    logits = torch.cat([sp_[:, None], sn], dim=1) / temp
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


@dataclass
class _Problem:
    knn: np.ndarray  # (n_anchor, k) positive candidates, indices into all images
    edges_img: np.ndarray  # (E,) image index of each membership edge
    edges_lab: np.ndarray  # (E,) label index
    label_neg_p: np.ndarray | None  # (m,) negative sampling distribution for labels
    label_members: list[np.ndarray]  # per label: member image indices
    label_pos: np.ndarray | None  # (m,) a partner label for the label-label term (-1: none)


def _label_partners(mem: sp.csr_matrix, label_emb: np.ndarray | None) -> np.ndarray | None:
    m = mem.shape[1]
    if m < 2:
        return None
    if label_emb is not None:
        sim = label_emb @ label_emb.T
    else:
        co = (mem.T.astype(np.float32) @ mem.astype(np.float32)).toarray()
        sim = co
    sim = np.array(sim, dtype=np.float64)
    np.fill_diagonal(sim, -np.inf)
    partner = np.argmax(sim, axis=1)
    if label_emb is None:
        partner[np.max(sim, axis=1) <= 0] = -1
    return partner


def _optimise(
    image_xy: np.ndarray,
    label_xy: np.ndarray,
    prob: _Problem,
    cfg: M2MConfig,
    seed: int,
    *,
    epochs: int,
    free_images: np.ndarray | None = None,
    label_anchor: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Adam on positions. `free_images`: indices that may move (None: all), also the anchors of
    the image-image term. `label_anchor`: label positions to hold labels near (incremental mode)."""
    import torch
    from umap.umap_ import find_ab_params

    old_threads = torch.get_num_threads()
    # the tensors are small (batch x 17 x 2): the policy's map threads (1) beat several on a loaded CPU
    torch.set_num_threads(cfg.threads or compute.threads("map"))
    try:
        a, b = (float(v) for v in find_ab_params(1.0, cfg.min_dist))
        gen = torch.Generator().manual_seed(int(seed))
        n = image_xy.shape[0]
        m = label_xy.shape[0]
        if free_images is None:
            free_images = np.arange(n)
        free_t = torch.as_tensor(free_images, dtype=torch.long)
        fixed_xy = torch.as_tensor(image_xy)
        free_xy = fixed_xy[free_t].clone().requires_grad_(True)
        lab = torch.as_tensor(label_xy).clone().requires_grad_(m > 0)
        groups = [{"params": [free_xy], "lr": cfg.lr}]
        if m > 0:
            groups.append({"params": [lab], "lr": cfg.label_lr})
        opt = torch.optim.Adam(groups)
        knn = torch.as_tensor(prob.knn, dtype=torch.long)
        K = cfg.negatives
        n_free = len(free_images)
        # map an image index to its row in free_xy (-1 if frozen) for the membership edges
        row_of = torch.full((n,), -1, dtype=torch.long)
        row_of[free_t] = torch.arange(n_free)
        e_img = torch.as_tensor(prob.edges_img, dtype=torch.long)
        e_lab = torch.as_tensor(prob.edges_lab, dtype=torch.long)
        keep = row_of[e_img] >= 0 if len(e_img) else torch.zeros(0, dtype=torch.bool)
        e_img, e_lab = e_img[keep], e_lab[keep]
        neg_table = None
        if prob.label_neg_p is not None:
            # a lookup table with each label repeated ~p * 65536 times: sampling is one gather
            reps = np.maximum(np.round(prob.label_neg_p * 65536), 1).astype(np.int64)
            neg_table = torch.as_tensor(np.repeat(np.arange(m), reps), dtype=torch.long)
        counts = torch.as_tensor([len(x) for x in prob.label_members], dtype=torch.long)
        starts = torch.cumsum(counts, 0) - counts
        flat_members = torch.as_tensor(
            np.concatenate(prob.label_members) if len(prob.label_members) else np.zeros(0), dtype=torch.long
        )
        labs_with = torch.nonzero(counts > 0).ravel()
        anchor_t = torch.as_tensor(label_anchor) if label_anchor is not None else None
        partner = torch.as_tensor(prob.label_pos, dtype=torch.long) if prob.label_pos is not None else None

        def all_xy():
            return fixed_xy.index_put((free_t,), free_xy)

        for _ in range(epochs):
            opt.zero_grad(set_to_none=True)
            xy = all_xy()
            loss = torch.zeros(())
            # image-image: each free image, one random kNN positive, K random negatives
            B = min(n_free, cfg.batch_size)
            rows = torch.randperm(n_free, generator=gen)[:B] if B < n_free else torch.arange(n_free)
            anc = free_t[rows]
            pos = knn[rows, torch.randint(knn.shape[1], (len(rows),), generator=gen)]
            neg = torch.randint(n, (len(rows), K), generator=gen)
            loss = loss + cfg.w_image_image * _info_nce(torch, xy[anc], xy[pos], xy[neg], cfg.t_image_image, a, b)
            if m > 1 and len(e_img) and neg_table is not None:
                # image-label: positives are the image's labels, negatives ~ frequency^0.75
                E = min(len(e_img), cfg.batch_size)
                sel = torch.randint(len(e_img), (E,), generator=gen)
                kl = min(K, m - 1)
                nl = neg_table[torch.randint(len(neg_table), (E, kl), generator=gen)]
                loss = loss + cfg.w_image_label * _info_nce(
                    torch, xy[e_img[sel]], lab[e_lab[sel]], lab[nl], cfg.t_image_label, a, b
                )
            if len(labs_with) and cfg.w_label_cluster > 0:
                # label-image-cluster: a label's own images against random images
                u = torch.rand(len(labs_with), generator=gen)
                off = (u * counts[labs_with]).long().clamp_max(counts[labs_with] - 1)
                pos_i = flat_members[starts[labs_with] + off]
                neg_i = torch.randint(n, (len(labs_with), K), generator=gen)
                loss = loss + cfg.w_label_cluster * _info_nce(
                    torch, lab[labs_with], xy[pos_i], xy[neg_i], cfg.t_image_label, a, b
                )
            if partner is not None and cfg.w_label_label > 0:
                ok = torch.nonzero(partner >= 0).ravel()
                if len(ok):
                    kl = min(K, m - 1)
                    nl = torch.randint(m, (len(ok), kl), generator=gen)
                    loss = loss + cfg.w_label_label * _info_nce(
                        torch, lab[ok], lab[partner[ok]], lab[nl], cfg.t_image_label, a, b
                    )
            if anchor_t is not None and m > 0:
                loss = loss + cfg.label_anchor * ((lab - anchor_t) ** 2).sum(-1).mean()
            loss.backward()
            opt.step()
        with torch.no_grad():
            out_img = all_xy().numpy().astype(np.float32)
            out_lab = lab.detach().numpy().astype(np.float32)
        return out_img, out_lab
    finally:
        torch.set_num_threads(old_threads)


def _problem(mem: sp.csr_matrix, knn: np.ndarray, label_emb: np.ndarray | None) -> _Problem:
    coo = mem.tocoo()
    m = mem.shape[1]
    freq = np.asarray(mem.sum(axis=0)).ravel().astype(np.float64)
    neg_p = None
    if m > 1:
        w = (freq + 1.0) ** 0.75
        neg_p = (w / w.sum()).astype(np.float32)
    csc = mem.tocsc()
    members = [csc.indices[csc.indptr[j] : csc.indptr[j + 1]].astype(np.int64) for j in range(m)]
    return _Problem(
        knn=knn,
        edges_img=coo.row.astype(np.int64),
        edges_lab=coo.col.astype(np.int64),
        label_neg_p=neg_p,
        label_members=members,
        label_pos=_label_partners(mem, label_emb),
    )


# ----------------------------------------------------------------------------- public API


def project(
    image_emb: np.ndarray,
    label_texts: Sequence[str],
    memberships: Sequence[Sequence[int | str]] | sp.spmatrix | np.ndarray,
    label_emb: np.ndarray | None = None,
    *,
    seed: int = 0,
    config: M2MConfig | None = None,
) -> Layout:
    """Lay out images and labels together so that similar images sit together and each image sits
    near the labels that describe it.

    memberships: per image, its label indices (or label texts), or an (n_images, n_labels) bool
    matrix. label_emb (optional, (m, d) in the image embedding space) places labels that no image
    carries and picks label-label partners; without it, partners come from co-occurrence.
    """
    cfg = config or M2MConfig()
    emb = _check_embeddings(image_emb, "image_emb", min_rows=2)
    label_texts = [str(t) for t in label_texts]
    if len(set(label_texts)) != len(label_texts):
        dup = sorted({t for t in label_texts if label_texts.count(t) > 1})[:5]
        raise ProjectionError(f"label_texts has duplicates {dup}; pass each label once.")
    mem = membership_matrix(memberships, emb.shape[0], label_texts)
    lemb = None
    if label_emb is not None:
        lemb_arr = np.asarray(label_emb)
        if lemb_arr.ndim != 2 or lemb_arr.shape[0] != len(label_texts):
            raise ProjectionError(
                f"label_emb has shape {lemb_arr.shape} but there are {len(label_texts)} labels; "
                "pass one embedding row per label or None."
            )
        if lemb_arr.shape[1] != emb.shape[1]:
            raise ProjectionError(
                f"label_emb has dimension {lemb_arr.shape[1]} but image_emb has {emb.shape[1]}; "
                "embed labels with the same model as the images."
            )
        if len(label_texts):
            lemb = _check_embeddings(lemb_arr, "label_emb", min_rows=1)
    knn_idx, knn_dist = _image_knn(emb, cfg.n_neighbors, cfg, seed)
    image_xy = _umap_init(emb, knn_idx, knn_dist, cfg, seed)
    label_xy = _label_centroids(image_xy, mem, emb, lemb)
    prob = _problem(mem, knn_idx[:, 1:], lemb)
    image_xy, label_xy = _optimise(image_xy, label_xy, prob, cfg, seed, epochs=cfg.epochs)
    return Layout(image_xy, label_xy, label_texts, emb, mem, dataclasses.replace(cfg), seed)


_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None


def warm_up() -> threading.Thread:
    """Compiles umap-learn's numba kernels in a background thread, once per process.

    A process's first map spends most of its time compiling them (17 of 25 s for the quickstart's
    450 images on 2 busy cores); started while the person does something else, such as a round, the
    map asked for later needs only its own computation (numba's compile lock makes it wait for, not
    repeat, a compilation in progress)."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:

            def run() -> None:
                try:
                    emb = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
                    project(emb / np.linalg.norm(emb, axis=1, keepdims=True), ["a", "b"], [[0]] * 20 + [[1]] * 20)
                except Exception as err:  # noqa: BLE001 - only a head start: the real map reports its own errors
                    logging.getLogger(__name__).debug("umap warm-up failed: %s", err)

            _warm_thread = threading.Thread(target=run, name="dc-umap-warm-up", daemon=True)
            _warm_thread.start()
        return _warm_thread


def place(
    layout: Layout,
    new_image_emb: np.ndarray,
    new_memberships: Sequence[Sequence[int | str]] | sp.spmatrix | np.ndarray,
    *,
    seed: int | None = None,
) -> Layout:
    """Add images to a layout without moving the existing images (the person's mental map stays).

    New images start at the similarity-weighted mean of their nearest existing images and are then
    optimised alone with the same loss; labels may drift towards their new images, held near their
    old positions by an anchor. Label texts in `new_memberships` that the layout lacks are added as
    new labels (starting at their images' centroid). Returns a new Layout; `layout` is not changed.
    """
    cfg = layout.config
    seed = layout.seed + 1 if seed is None else seed
    new = _check_embeddings(new_image_emb, "new_image_emb", min_rows=1)
    if new.shape[1] != layout.image_emb.shape[1]:
        raise ProjectionError(
            f"new_image_emb has dimension {new.shape[1]} but the layout's images have "
            f"{layout.image_emb.shape[1]}; embed new images with the same model."
        )
    texts = list(layout.label_texts)
    if not (sp.issparse(new_memberships) or isinstance(new_memberships, np.ndarray)):
        # label texts the layout has not seen yet become new labels (labelers have open vocabularies)
        known = set(texts)
        for labs in new_memberships:
            for lab in labs:
                if isinstance(lab, str) and lab not in known:
                    texts.append(lab)
                    known.add(lab)
    new_mem = membership_matrix(new_memberships, new.shape[0], texts)
    n_old, n_new = layout.n_images, new.shape[0]
    m_old, m_new = len(layout.label_texts), len(texts) - len(layout.label_texts)
    all_emb = np.concatenate([layout.image_emb, new], axis=0)
    k = min(cfg.n_neighbors, n_old + n_new - 1)
    # positives for new images come from old and new images alike (a new cluster can form)
    knn_all = _exact_knn(new, all_emb, k + 1, exclude_self=False)
    knn_new = np.stack([row[row != n_old + i][:k] for i, row in enumerate(knn_all)])
    # init: weighted mean of the nearest *existing* images' positions
    knn_old = _exact_knn(new, layout.image_emb, min(k, n_old), exclude_self=False)
    sim = np.einsum("nd,nkd->nk", new, layout.image_emb[knn_old])
    w = np.exp((sim - sim.max(axis=1, keepdims=True)) / 0.05)
    w /= w.sum(axis=1, keepdims=True)
    init = np.einsum("nk,nkc->nc", w, layout.image_xy[knn_old]).astype(np.float32)
    rng = np.random.default_rng(seed)
    init += rng.normal(scale=0.01 * max(layout.width, 1e-3), size=init.shape).astype(np.float32)
    image_xy = np.concatenate([layout.image_xy, init], axis=0)
    old_mem = sp.hstack([layout.memberships, sp.csr_matrix((n_old, m_new), dtype=bool)], format="csr")
    mem = sp.vstack([old_mem, new_mem], format="csr").astype(bool)
    label_xy0 = layout.label_xy.copy()
    if m_new:  # a new label starts at the centroid of its new images
        cols = new_mem[:, m_old:].tocsc()
        counts = np.maximum(np.asarray(cols.sum(axis=0)).ravel(), 1)
        label_xy0 = np.concatenate(
            [label_xy0, (np.asarray(cols.T.astype(np.float32) @ init) / counts[:, None]).astype(np.float32)]
        )
    prob = _problem(mem, knn_new, None)
    prob.label_pos = None  # label-label stays as it was; weight 1e-5 anyway
    free = np.arange(n_old, n_old + n_new)
    image_xy, label_xy = _optimise(
        image_xy,
        label_xy0.copy(),
        prob,
        cfg,
        seed,
        epochs=cfg.place_epochs,
        free_images=free,
        label_anchor=label_xy0,
    )
    image_xy[:n_old] = layout.image_xy  # exactly unchanged
    return Layout(image_xy, label_xy, texts, all_emb, mem, cfg, layout.seed)


def projection_frame(layout: Layout, image_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The table behind `crafter.projection`: one row per image, then one per label."""
    n, m = layout.n_images, len(layout.label_texts)
    if image_ids is None:
        image_ids = [str(i) for i in range(n)]
    if len(image_ids) != n:
        raise ProjectionError(f"image_ids has {len(image_ids)} entries but the layout has {n} images.")
    return pd.DataFrame(
        {
            "kind": pd.Series(["image"] * n + ["label"] * m, dtype="string"),
            "id": pd.Series(list(map(str, image_ids)) + [None] * m, dtype="string"),
            "text": pd.Series([None] * n + list(layout.label_texts), dtype="string"),
            "x": np.concatenate([layout.image_xy[:, 0], layout.label_xy[:, 0]]).astype(np.float32),
            "y": np.concatenate([layout.image_xy[:, 1], layout.label_xy[:, 1]]).astype(np.float32),
        }
    )


def label_agreement(image_xy: np.ndarray, label_xy: np.ndarray, memberships: sp.csr_matrix, k: int = 3) -> float:
    """Mean over labelled images of |own labels among the k nearest labels in 2D| / min(k, #own)."""
    mem = sp.csr_matrix(memberships, dtype=bool)
    k = min(k, label_xy.shape[0])
    d2 = ((image_xy[:, None, :] - label_xy[None, :, :]) ** 2).sum(-1) if image_xy.shape[0] <= 5000 else None
    scores = []
    block = 2000
    for s in range(0, image_xy.shape[0], block):
        dd = d2[s : s + block] if d2 is not None else ((image_xy[s : s + block, None, :] - label_xy[None]) ** 2).sum(-1)
        near = np.argpartition(dd, k - 1, axis=1)[:, :k]
        for r in range(dd.shape[0]):
            own = mem.indices[mem.indptr[s + r] : mem.indptr[s + r + 1]]
            if len(own) == 0:
                continue
            scores.append(len(np.intersect1d(near[r], own)) / min(k, len(own)))
    return float(np.mean(scores)) if scores else float("nan")


def save_layout(layout: Layout, path: str) -> None:
    """Store a layout (safetensors arrays, labels and config as json metadata; no pickle) so that
    incremental placement can go on after a kernel restart. Written atomically."""
    import json
    import os

    from safetensors.numpy import save_file

    mem = layout.memberships.tocsr()
    arrays = {
        "image_xy": np.ascontiguousarray(layout.image_xy, dtype=np.float32),
        "label_xy": np.ascontiguousarray(layout.label_xy, dtype=np.float32),
        "image_emb": np.ascontiguousarray(layout.image_emb, dtype=np.float32),
        "mem_indptr": mem.indptr.astype(np.int64),
        "mem_indices": mem.indices.astype(np.int64),
    }
    meta = {
        "label_texts": json.dumps(list(layout.label_texts)),
        "config": json.dumps(dataclasses.asdict(layout.config)),
        "seed": str(int(layout.seed)),
        "format": "datacrafter-m2m-layout/1",
    }
    tmp = f"{path}.tmp-{os.getpid()}"
    save_file(arrays, tmp, metadata=meta)
    os.replace(tmp, path)


def load_layout(path: str) -> Layout:
    """Read a layout written by `save_layout`."""
    import json

    from safetensors import safe_open

    with safe_open(path, framework="numpy") as f:
        meta = f.metadata() or {}
        if meta.get("format") != "datacrafter-m2m-layout/1":
            raise ProjectionError(f"{path} is not a layout written by save_layout (format {meta.get('format')!r}).")
        arr = {k: f.get_tensor(k) for k in f.keys()}
    texts = json.loads(meta["label_texts"])
    known = {f.name for f in dataclasses.fields(M2MConfig)}
    cfg = M2MConfig(**{k: v for k, v in json.loads(meta["config"]).items() if k in known})
    n = arr["image_xy"].shape[0]
    mem = sp.csr_matrix(
        (np.ones(len(arr["mem_indices"]), dtype=bool), arr["mem_indices"], arr["mem_indptr"]),
        shape=(n, len(texts)),
    )
    return Layout(arr["image_xy"], arr["label_xy"], texts, arr["image_emb"], mem, cfg, int(meta["seed"]))
