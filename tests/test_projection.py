"""M2M projection: structure, labels near their images, incremental placement, clear errors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from datacrafter_widget.loop.m2m import (
    Layout,
    M2MConfig,
    load_layout,
    save_layout,
    ProjectionError,
    label_agreement,
    membership_matrix,
    place,
    project,
    projection_frame,
)

FAST = M2MConfig(umap_epochs=100, epochs=120, place_epochs=60)


def clustered(n_per: int = 40, k: int = 4, dim: int = 32, seed: int = 0):
    """k well-separated clusters; each cluster's images carry the cluster word and a shared word."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim)) * 3
    cls = np.repeat(np.arange(k), n_per)
    emb = centres[cls] + rng.normal(size=(len(cls), dim))
    texts = [f"cluster{c}" for c in range(k)] + ["shared"]
    mem = [[int(c), k] for c in cls]
    return emb.astype(np.float32), texts, mem, cls


@pytest.fixture(scope="module")
def layout_and_data():
    emb, texts, mem, cls = clustered()
    return project(emb, texts, mem, seed=0, config=FAST), emb, texts, mem, cls


def test_layout_shapes_and_types(layout_and_data):
    lay, emb, texts, _, _ = layout_and_data
    assert isinstance(lay, Layout)
    assert lay.image_xy.shape == (len(emb), 2) and lay.image_xy.dtype == np.float32
    assert lay.label_xy.shape == (len(texts), 2) and lay.label_xy.dtype == np.float32
    assert np.isfinite(lay.image_xy).all() and np.isfinite(lay.label_xy).all()
    assert lay.label_texts == texts


def test_clusters_stay_apart_and_labels_sit_with_their_images(layout_and_data):
    lay, _, texts, mem, cls = layout_and_data
    xy = lay.image_xy
    # nearest 2D neighbour of each image is from the same cluster
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (cls[d.argmin(1)] == cls).mean() > 0.95
    # each cluster word is nearer its own cluster's centroid than any other cluster's
    for c in range(4):
        cent = np.stack([xy[cls == j].mean(0) for j in range(4)])
        assert np.linalg.norm(cent - lay.label_xy[c], axis=1).argmin() == c
    # a word shared by all clusters can sit near one of them only; the nearest label is the image's own
    mat = membership_matrix(mem, len(mem), texts)
    assert label_agreement(xy, lay.label_xy, mat, k=1) > 0.9


def attributed(n: int = 600, k: int = 6, n_attr: int = 18, dim: int = 64, seed: int = 0):
    """Classes plus one attribute word per image that correlates with the class (70%) but is shared
    across classes, as colours or backgrounds are."""
    rng = np.random.default_rng(seed)
    cdir, adir = rng.normal(size=(k, dim)), rng.normal(size=(n_attr, dim))
    cls = rng.integers(k, size=n)
    pref = rng.integers(n_attr, size=(k, 3))
    attr = np.where(rng.random(n) < 0.7, pref[cls, rng.integers(3, size=n)], rng.integers(n_attr, size=n))
    emb = cdir[cls] + 0.6 * adir[attr] + rng.normal(scale=0.5, size=(n, dim))
    texts = [f"class{c}" for c in range(k)] + [f"attr{a}" for a in range(n_attr)]
    return emb.astype(np.float32), texts, [[int(c), k + int(a)] for c, a in zip(cls, attr)]


def test_beats_centroid_labels_on_agreement():
    emb, texts, mem = attributed()
    lay = project(emb, texts, mem, seed=0, config=M2MConfig(umap_epochs=100, epochs=150))
    mat = membership_matrix(mem, len(mem), texts)
    counts = np.asarray(mat.sum(0)).ravel()
    centroid = np.asarray(mat.T.astype(np.float32) @ lay.image_xy) / counts[:, None]
    ours = label_agreement(lay.image_xy, lay.label_xy, mat, k=3)
    assert ours > label_agreement(lay.image_xy, centroid, mat, k=3)
    assert ours > 0.7


def test_same_seed_same_layout():
    emb, texts, mem, _ = clustered(n_per=15, k=3)
    a = project(emb, texts, mem, seed=3, config=FAST)
    b = project(emb, texts, mem, seed=3, config=FAST)
    np.testing.assert_allclose(a.image_xy, b.image_xy, atol=1e-5)
    np.testing.assert_allclose(a.label_xy, b.label_xy, atol=1e-5)


def test_memberships_as_texts_matrix_and_label_emb():
    emb, texts, mem, cls = clustered(n_per=15, k=3)
    as_text = [[texts[j] for j in labs] for labs in mem]
    dense = np.zeros((len(mem), len(texts)), dtype=bool)
    for i, labs in enumerate(mem):
        dense[i, labs] = True
    a = project(emb, texts, as_text, seed=1, config=FAST)
    b = project(emb, texts, dense, seed=1, config=FAST)
    np.testing.assert_allclose(a.image_xy, b.image_xy, atol=1e-5)
    # a label nobody carries goes near the images its embedding resembles
    texts2 = texts + ["lonely"]
    lemb = np.concatenate([np.eye(len(texts2), emb.shape[1])[:-1], emb[cls == 1][:1]], axis=0)
    c = project(emb, texts2, mem, label_emb=lemb, seed=1, config=FAST)
    cent = np.stack([c.image_xy[cls == j].mean(0) for j in range(3)])
    assert np.linalg.norm(cent - c.label_xy[-1], axis=1).argmin() == 1


def test_tiny_inputs_work():
    rng = np.random.default_rng(0)
    for n in (2, 3, 7):
        lay = project(rng.normal(size=(n, 8)), ["a", "b"], [[i % 2] for i in range(n)], config=FAST)
        assert lay.image_xy.shape == (n, 2) and np.isfinite(lay.image_xy).all()
    lay = project(rng.normal(size=(12, 8)), [], [[] for _ in range(12)], config=FAST)
    assert lay.label_xy.shape == (0, 2)


@pytest.mark.parametrize(
    "emb, mem, match",
    [
        (np.zeros((0, 8)), [], "no images"),
        (np.ones((1, 8)), [[0]], "at least 2"),
        (np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]]), [[0]] * 3, "NaN"),
        (np.array([[1.0, np.inf], [0.0, 1.0], [1.0, 1.0]]), [[0]] * 3, "NaN or inf"),
        (np.ones(8), [[0]], "2D array"),
        (np.eye(3, 4), [[0], [0]], "3 images"),
        (np.eye(3, 4), [[0], [5], [0]], "label index 5"),
        (np.eye(3, 4), [[0], ["nope"], [0]], "'nope'"),
        (np.eye(3, 4), np.zeros((3, 2), dtype=bool), r"shape \(3, 2\)"),
    ],
)
def test_bad_input_clear_errors(emb, mem, match):
    with pytest.raises(ProjectionError, match=match):
        project(emb, ["a"], mem, config=FAST)


def test_bad_label_emb_and_duplicates():
    emb, texts, mem, _ = clustered(n_per=5, k=2)
    with pytest.raises(ProjectionError, match="one embedding row per label"):
        project(emb, texts, mem, label_emb=np.ones((2, emb.shape[1])), config=FAST)
    with pytest.raises(ProjectionError, match="same model"):
        project(emb, texts, mem, label_emb=np.ones((len(texts), 3)), config=FAST)
    with pytest.raises(ProjectionError, match="duplicates"):
        project(emb, texts + ["shared"], mem, config=FAST)


def test_place_keeps_existing_points_and_puts_new_ones_with_their_cluster(layout_and_data):
    lay, emb, texts, mem, cls = layout_and_data
    rng = np.random.default_rng(5)
    # new images: fresh draws from clusters 2 and 3
    new = emb[cls == 2][:10] + rng.normal(scale=0.3, size=(10, emb.shape[1]))
    new = np.concatenate([new, emb[cls == 3][:10] + rng.normal(scale=0.3, size=(10, emb.shape[1]))])
    new_mem = [[2, 4]] * 10 + [[3, 4]] * 10
    lay2 = place(lay, new.astype(np.float32), new_mem)
    assert lay2.image_xy.shape == (len(emb) + 20, 2)
    np.testing.assert_array_equal(lay2.image_xy[: len(emb)], lay.image_xy)
    disp = np.linalg.norm(lay2.label_xy - lay.label_xy, axis=1)
    assert np.median(disp) < 0.02 * lay.width
    cent = np.stack([lay.image_xy[cls == j].mean(0) for j in range(4)])
    for rows, c in ((slice(0, 10), 2), (slice(10, 20), 3)):
        d = np.linalg.norm(lay2.image_xy[len(emb) :][rows, None] - cent[None], axis=2)
        assert (d.argmin(1) == c).all()
    # the original layout is unchanged and placement can be chained
    assert lay.n_images == len(emb)
    lay3 = place(lay2, new[:3], [[2]] * 3)
    assert lay3.n_images == len(emb) + 23


def test_place_adds_new_label_texts(layout_and_data):
    lay, emb, texts, _, cls = layout_and_data
    new = emb[cls == 1][:6] + 0.05
    lay2 = place(lay, new, [["cluster1", "sparkly"]] * 6)
    assert lay2.label_texts == texts + ["sparkly"]
    assert lay2.memberships.shape == (len(emb) + 6, len(texts) + 1)
    assert lay2.memberships[: len(emb), -1].nnz == 0 and lay2.memberships[len(emb) :, -1].nnz == 6
    cent = np.stack([lay.image_xy[cls == j].mean(0) for j in range(4)])
    assert np.linalg.norm(cent - lay2.label_xy[-1], axis=1).argmin() == 1
    np.testing.assert_array_equal(lay2.image_xy[: len(emb)], lay.image_xy)


def test_place_errors(layout_and_data):
    lay = layout_and_data[0]
    with pytest.raises(ProjectionError, match="same model"):
        place(lay, np.ones((2, 5), dtype=np.float32), [[0], [0]])
    with pytest.raises(ProjectionError, match="NaN"):
        place(lay, np.full((1, lay.image_emb.shape[1]), np.nan), [[0]])
    with pytest.raises(ProjectionError, match="no images"):
        place(lay, np.zeros((0, lay.image_emb.shape[1])), [])


def test_projection_frame(layout_and_data):
    lay, emb, texts, _, _ = layout_and_data
    ids = [f"r{i:06d}" for i in range(len(emb))]
    df = projection_frame(lay, ids)
    assert list(df.columns) == ["kind", "id", "text", "x", "y"]
    assert len(df) == len(emb) + len(texts)
    assert (df.kind == "image").sum() == len(emb) and (df.kind == "label").sum() == len(texts)
    assert df.loc[df.kind == "image", "id"].tolist() == ids
    assert df.loc[df.kind == "label", "text"].tolist() == texts
    assert df.loc[df.kind == "label", "id"].isna().all()
    np.testing.assert_allclose(df.loc[df.kind == "label", ["x", "y"]].to_numpy(), lay.label_xy)
    assert isinstance(df, pd.DataFrame)
    with pytest.raises(ProjectionError, match="image_ids"):
        projection_frame(lay, ids[:3])


def test_save_and_load_layout_then_place(layout_and_data, tmp_path):
    lay, emb, texts, _, _ = layout_and_data
    path = tmp_path / "layout.safetensors"
    save_layout(lay, str(path))
    back = load_layout(str(path))
    np.testing.assert_array_equal(back.image_xy, lay.image_xy)
    np.testing.assert_array_equal(back.label_xy, lay.label_xy)
    assert back.label_texts == texts and back.config == lay.config and back.seed == lay.seed
    assert (back.memberships != lay.memberships).nnz == 0
    a = place(lay, emb[:5], [[0]] * 5)
    b = place(back, emb[:5], [[0]] * 5)
    np.testing.assert_allclose(a.image_xy, b.image_xy, atol=1e-5)
    (tmp_path / "other.safetensors").write_bytes(b"not a layout")
    with pytest.raises(Exception):
        load_layout(str(tmp_path / "other.safetensors"))
