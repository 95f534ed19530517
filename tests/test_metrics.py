"""Round metrics react in the right direction and reject bad input with clear messages."""

from __future__ import annotations

import altair as alt
import numpy as np
import pandas as pd
import pytest

from datacrafter_widget.loop.metrics import (
    METRICS,
    MetricsError,
    class_maintenance,
    cmmd,
    embedding_spread,
    entropy,
    informativeness,
    metrics_chart,
    prediction_diversity,
    round_metrics,
    seed_class_maintenance,
)

K, D = 4, 64


def unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def world():
    """Real images: 4 classes of CLIP-like embeddings; a 'classifier' = softmax of similarity to
    class prototypes, so predictions follow the embeddings as a zero-shot classifier's would."""
    rng = np.random.default_rng(0)
    protos = unit(rng.normal(size=(K, D)))
    labels = np.repeat(np.arange(K), 50)
    real = unit(protos[labels] * 1.0 + rng.normal(scale=0.12, size=(len(labels), D)))

    def classify(e):
        z = 20 * unit(e) @ protos.T
        z = np.exp(z - z.max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    return dict(rng=rng, protos=protos, labels=labels, real=real, classify=classify)


def test_entropy_values():
    assert entropy(np.array([[1.0, 0.0]]))[0] == pytest.approx(0.0, abs=1e-9)
    assert entropy(np.full((1, 4), 0.25))[0] == pytest.approx(np.log(4))


def test_cmmd_zero_for_same_set_and_grows_with_shift(world):
    real = world["real"]
    assert cmmd(real, real) == pytest.approx(0.0, abs=1e-9)
    rng = world["rng"]
    near = unit(real + rng.normal(scale=0.01, size=real.shape))
    far = unit(real + rng.normal(scale=0.5, size=real.shape))
    other = unit(rng.normal(size=real.shape))
    d_near, d_far, d_other = cmmd(near, real), cmmd(far, real), cmmd(other, real)
    assert d_near < d_far < d_other
    assert d_near < 0.05 * d_other
    # sklearn's rbf_kernel is the kernel; check the formula by hand on a tiny pair of sets
    x, y = real[:3], real[3:5]
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / 200.0)
    assert cmmd(x, y) == pytest.approx(1000 * (k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean()), rel=1e-6)


def test_near_copies_low_distance_low_diversity_high_maintenance(world):
    real, labels, classify, rng = world["real"], world["labels"], world["classify"], world["rng"]
    idx = rng.choice(len(real), size=80, replace=False)
    copies = unit(real[idx] + rng.normal(scale=0.005, size=(80, D)))
    # varied: same classes, but pushed around the class (between classes and off the manifold)
    varied = unit(real[idx] + rng.normal(scale=0.25, size=(80, D)) + 0.5 * world["protos"][rng.integers(K, size=80)])
    seed_p = classify(real[idx])
    m_copy = round_metrics(classify(copies), labels[idx], copies, real, seed_probs=seed_p, round=1)
    m_var = round_metrics(classify(varied), labels[idx], varied, real, seed_probs=seed_p, round=2)
    assert m_copy["distance"] < m_var["distance"]
    assert m_copy["diversity"] < m_var["diversity"]
    assert m_copy["embedding_spread"] < m_var["embedding_spread"]
    assert abs(m_copy["informativeness"]) < 0.05  # a copy tells nothing new
    assert m_var["informativeness"] > m_copy["informativeness"]
    assert m_copy["class_maintenance"] > 0.9
    assert m_copy["seed_class_maintenance"] > 0.9
    assert set(METRICS) <= set(m_copy) and m_copy["round"] == 1 and m_copy["n_generated"] == 80


def test_off_class_images_low_class_maintenance(world):
    real, labels, classify, protos, rng = (
        world["real"],
        world["labels"],
        world["classify"],
        world["protos"],
        world["rng"],
    )
    intended = np.repeat(np.arange(K), 10)
    on = unit(protos[intended] + rng.normal(scale=0.12, size=(40, D)))
    off = unit(protos[(intended + 1) % K] + rng.normal(scale=0.12, size=(40, D)))
    cm_on = class_maintenance(classify(on), intended).mean()
    cm_off = class_maintenance(classify(off), intended).mean()
    assert cm_on > 0.8 and cm_off < 0.1
    m_off = round_metrics(classify(off), intended, off, real, real_probs=classify(real), real_labels=labels)
    assert m_off["class_maintenance"] < 0.1
    assert np.isnan(m_off["seed_class_maintenance"])  # text-to-image: no seeds


def test_informativeness_seedless_uses_class_mean_of_real():
    real_probs = np.array([[0.9, 0.1], [0.7, 0.3], [0.5, 0.5], [0.5, 0.5]])
    real_labels = np.array([0, 0, 1, 1])
    gen = np.array([[0.5, 0.5], [0.5, 0.5], [0.6, 0.4]])
    seeds = np.array([[np.nan, np.nan], [np.nan, np.nan], [0.6, 0.4]])
    out = informativeness(gen, seeds, labels=np.array([0, 1, 0]), real_probs=real_probs, real_labels=real_labels)
    h = entropy
    assert out[0] == pytest.approx(h(gen[:1])[0] - h(real_probs[:2]).mean())
    assert out[1] == pytest.approx(0.0, abs=1e-9)  # class 1 real images are already maximal entropy
    assert out[2] == pytest.approx(0.0, abs=1e-9)  # same prediction as its seed
    with pytest.raises(MetricsError, match="no seed"):
        informativeness(gen, seeds)
    sc = seed_class_maintenance(gen, seeds)
    assert np.isnan(sc[:2]).all() and sc[2] == pytest.approx(0.6)


def test_diversity_within_class_not_across():
    # two classes, each batch internally identical: no diversity, even though the classes differ
    p = np.array([[0.9, 0.1]] * 5 + [[0.1, 0.9]] * 5)
    assert prediction_diversity(p, np.array([0] * 5 + [1] * 5)) == pytest.approx(0.0, abs=1e-9)
    assert prediction_diversity(p) > 0.3
    assert np.isnan(prediction_diversity(p[:1]))
    e = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert embedding_spread(e) == pytest.approx((0 + 1 + 1) / 3)
    assert embedding_spread(e, np.array([0, 0, 1])) == pytest.approx(0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(gen_probs=np.zeros((0, 3))), "no images"),
        (dict(gen_probs=np.array([[2.0, -1.0, 0.0]])), "not logits"),
        (dict(gen_probs=np.array([[np.nan, 0.5, 0.5]])), "NaN"),
        (dict(gen_emb=np.array([[np.nan] * 8])), "NaN"),
        (dict(gen_emb=np.ones((2, 8))), "one row per generated image"),
        (dict(real_emb=np.ones((3, 5))), "same model"),
        (dict(gen_labels=np.array([7])), "outside"),
        (dict(gen_labels=np.array(["cat"])), "integer class indices"),
        (dict(real_emb=np.zeros((0, 8))), "empty"),
    ],
)
def test_bad_input_clear_errors(kwargs, match):
    args = dict(
        gen_probs=np.array([[0.2, 0.3, 0.5]]),
        gen_labels=np.array([2]),
        gen_emb=np.ones((1, 8)),
        real_emb=np.ones((3, 8)),
        seed_probs=np.array([[0.2, 0.3, 0.5]]),
    )
    args.update(kwargs)
    with pytest.raises(MetricsError, match=match):
        round_metrics(**args)


def test_one_image_round_is_measured():
    m = round_metrics(
        np.array([[0.2, 0.8]]), np.array([1]), np.ones((1, 4)), np.eye(4), seed_probs=np.array([[0.5, 0.5]])
    )
    assert m["class_maintenance"] == pytest.approx(0.8)
    assert np.isnan(m["diversity"]) and np.isnan(m["embedding_spread"])
    assert m["distance"] > 0


def test_metrics_chart(world):
    real, labels, classify, rng = world["real"], world["labels"], world["classify"], world["rng"]
    rows = []
    for r, scale in enumerate([0.01, 0.1, 0.3], start=1):
        g = unit(real[:40] + rng.normal(scale=scale, size=(40, D)))
        rows.append(round_metrics(classify(g), labels[:40], g, real, seed_probs=classify(real[:40]), round=r))
    df = pd.DataFrame(rows)
    chart = metrics_chart(df)
    spec = chart.to_dict()
    assert spec["facet"]["field"] == "metric"
    assert spec["resolve"]["scale"]["y"] == "independent"
    data = pd.DataFrame(spec["datasets"][next(iter(spec["datasets"]))])
    assert set(data["round"]) == {1, 2, 3}
    assert any("CMMD" in m for m in data["metric"])
    jc = alt.JupyterChart(chart)
    assert jc.spec["facet"]["field"] == "metric"
    with pytest.raises(MetricsError, match="non-empty"):
        metrics_chart(pd.DataFrame())
    with pytest.raises(MetricsError, match="round"):
        metrics_chart(pd.DataFrame({"distance": [1.0]}))
    with pytest.raises(MetricsError, match="no metric has a value yet"):
        metrics_chart(pd.DataFrame({"round": [0], "student_acc": [np.nan]}))  # round 0, student training


def test_a_panel_with_one_point_says_its_round_and_what_more_rounds_will_show():
    from datacrafter_widget.ui.view import metrics_svg

    one = pd.DataFrame(
        {"round": [0, 1], "student_acc": [0.25, 0.5], "distance": [np.nan, 0.125], "diversity": [np.nan, 0.375]}
    )
    data = pd.DataFrame(metrics_chart(one).to_dict()["datasets"].popitem()[1])
    notes = dict(zip(data["metric"], data["note"]))
    assert notes["distance to real, CMMD (↓ better)"] == (
        "round 1 only (0.125): more rounds show\nwhether images come closer to the real ones"
    )
    assert "whether rounds keep varying" in notes["diversity, KL from mean (↑; low: try caption)"]
    assert set(data.loc[data["metric"].str.startswith("student accuracy"), "note"]) == {""}  # two points: a line
    svg = metrics_svg(one)  # drawn in the panels, as the widget shows them
    assert svg.count("round 1 only (0.125)") >= 1 and "whether each round helps" not in svg
    two = pd.concat([one, one.assign(round=2)], ignore_index=True)
    assert set(pd.DataFrame(metrics_chart(two).to_dict()["datasets"].popitem()[1])["note"]) == {""}


def test_round_changes_compare_each_round_with_the_one_before_and_name_a_short_class():
    from datacrafter_widget.loop.metrics import round_changes

    rows = []
    for r, per in ((1, {"a": 10, "b": 10, "c": 10}), (2, {"a": 10, "b": 10, "c": 2})):
        for c, k in per.items():
            rows += [{"source": "generated", "round": r, "label": c, "flag": "", "feedback": ""}] * k
            rows += [{"source": "generated", "round": r, "label": c, "flag": "off-class", "feedback": ""}] * (10 - k)
    samples = pd.DataFrame(rows)
    metrics = pd.DataFrame(
        {
            "round": [0, 1, 2],
            "strategies": ["", "class", "evolved"],
            "n_generated": [np.nan, 30, 30],  # as crafter.metrics has it for round 0
            "flagged": [np.nan, 0, 8],
            "bad": [np.nan, 0, 0],
            "student_acc": [0.2, 0.5, 0.45],
        }
    )
    out = round_changes(metrics, samples).set_index("round")
    assert np.isnan(out.loc[0, "change"])
    assert out.loc[1, "change"] == pytest.approx(0.3) and out.loc[1, "why"] == ""
    assert out.loc[2, "change"] == pytest.approx(-0.05)
    assert "class c (2)" in out.loc[2, "why"] and "8 of its 30 images left out" in out.loc[2, "why"]
    # a drop with nothing recorded says so instead of inventing a cause
    metrics.loc[2, "flagged"] = 0
    samples.loc[samples["flag"] != "", "flag"] = ""
    assert round_changes(metrics, samples).set_index("round").loc[2, "why"] == "no cause the project records"
