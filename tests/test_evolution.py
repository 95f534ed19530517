"""Prompt evolution: planted unwanted patterns end up in the negative prompt and become rarer."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from datacrafter_widget.controller.prompt_book import apply_to_prompts_doc, current_prompts
from datacrafter_widget.controller.rounds import evolve_store
from datacrafter_widget.loop.evolution import (
    EvolutionError,
    Genome,
    evolve_prompts,
)
from datacrafter_widget.starter.prompts import starter_compose
from datacrafter_widget.data.store import SampleStore

COLOURS = {
    "pink": (250, 185, 205),
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "gray": (128, 128, 128),
    "lightblue": (160, 210, 245),
}
NAMES = list(COLOURS)
VOCAB = [f"on a {c} background" for c in NAMES] + ["thick", "thin"]


class ColourWorld:
    """A deterministic stand-in for generator + CLIP whose output colour follows the prompt words.

    Background: the colour named in the prompt; otherwise drawn from the seed, skipping colours
    named in the negative prompt. Pink is planted: with no colour asked for, half the images are pink.
    """

    calls = 0

    def generate(self, prompts, negatives, seeds):
        self.calls += len(prompts)
        out = []
        for p, n, s in zip(prompts, negatives, seeds):
            rng = np.random.default_rng(s)
            named = [c for c in NAMES if c in p.split() or f"{c} " in p]
            allowed = [c for c in NAMES if c not in (n or "")]
            if named:
                bg = named[0]
            elif rng.random() < 0.5 and "pink" in allowed:
                bg = "pink"
            else:
                bg = str(rng.choice([c for c in allowed if c != "pink"] or NAMES))
            a = np.zeros((16, 16, 3), np.uint8) + np.array(COLOURS[bg], np.uint8)
            a[5:11, 7:9] = (220, 35, 35)
            out.append(Image.fromarray(a))
        return out

    @staticmethod
    def colour_of(im):
        px = np.asarray(im)[0, 0].astype(float)
        return min(NAMES, key=lambda c: np.abs(px - COLOURS[c]).sum())

    # -- embedder interface: colour histograms for images, colour words for texts
    def embed_images(self, images):
        e = np.zeros((len(images), len(NAMES) + 1), np.float32)
        for i, im in enumerate(images):
            e[i, NAMES.index(self.colour_of(im))] = 1.0
            e[i, -1] = 0.5
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def embed_texts(self, texts):
        e = np.zeros((len(texts), len(NAMES) + 1), np.float32)
        for i, t in enumerate(texts):
            for j, c in enumerate(NAMES):
                if c in t:
                    e[i, j] = 1.0
            e[i, -1] = 0.5
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    def zero_shot(self, emb, names):
        """Reads a pink image as "pink" when that is among the names, anything else as the first name."""
        logits = 10.0 * np.asarray(emb) @ self.embed_texts(list(names)).T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        return (p / p.sum(axis=1, keepdims=True)).astype(np.float32)


def _class_3_round(tmp_path, world, n: int):
    """A store holding one class-prompt round of n images of class "3"; returns it and the ids of the pink ones."""
    store = SampleStore(tmp_path / "proj", durable=False)
    seeds = list(range(n))
    images = world.generate(["a photo of a 3"] * n, [""] * n, seeds)
    rows = [
        dict(label="3", split="generated", prompt="a photo of a 3", seed=s, round=1, strategy="class") for s in seeds
    ]
    ids = store.add(images, rows)
    return store, ids, images, [i for i, im in zip(ids, images) if world.colour_of(im) == "pink"]


def _project(tmp_path, world, mark_labels: bool, mark_good: bool = True):
    store, ids, images, pink = _class_3_round(tmp_path, world, 12)
    good = [i for i, im in zip(ids, images) if world.colour_of(im) != "pink"][:3]
    assert 3 <= len(pink) <= 9  # the planted pattern is there
    store.update(pink, feedback="bad", feedback_labels=json.dumps(["pink"]) if mark_labels else "[]")
    if mark_good:
        store.update(good, feedback="good")
    return store, pink


def _pink_rate(world, prompt, negative, n=40):
    images = world.generate([prompt] * n, [negative] * n, list(range(500, 500 + n)))
    return np.mean([world.colour_of(im) == "pink" for im in images])


def _evolve_3(store, world, **options):
    """evolve_store for class "3" of the colour world, with its vocabulary."""
    return evolve_store(store, classes=["3"], generate=world.generate, embedder=world, vocabulary=VOCAB, **options)


def test_unwanted_label_becomes_negative_and_fewer_such_images(tmp_path):
    world = ColourWorld()
    store, _ = _project(tmp_path, world, mark_labels=True)
    result = _evolve_3(store, world, population=4, generations=2, batch=4, seed=0)
    best = result.classes["3"].best
    assert "pink" in best.genome.negative
    assert not any("pink" in p for p in best.genome.phrases)
    assert any("'pink' moved to negative: marked unwanted" in d for d in result.classes["3"].diff)
    before = _pink_rate(world, "a photo of a 3", "")
    after = _pink_rate(world, best.prompt, best.genome.negative_prompt())
    assert before > 0.3 and after < before / 3
    doc = store.read_json("prompts.json", {})
    entry = doc["classes"]["3"]
    assert entry["prompt"] == best.prompt and "pink" in entry["negative_prompt"]
    assert entry["history"][-1]["diff"] == result.classes["3"].diff
    assert [r["fitness"] for r in entry["ranked"]] == sorted((r["fitness"] for r in entry["ranked"]), reverse=True)
    store.close()


def _evolve_lassoed_3(store, world):
    """Evolve class "3" from the store's lasso marks (no labels, no good marks) with the settings these tests share."""
    return evolve_prompts(
        store.samples,
        classes=["3"],
        generate=world.generate,
        embedder=world,
        load_image=store.image,
        vocabulary=VOCAB,
        population=6,
        generations=3,
        batch=6,
        seed=1,
    )


def test_lasso_without_labels_is_turned_into_a_negative_or_a_better_phrase(tmp_path):
    """No label given: evolution must itself find what the bad images share (pink) and avoid it."""
    world = ColourWorld()
    store, _ = _project(tmp_path, world, mark_labels=False, mark_good=False)
    result = _evolve_lassoed_3(store, world)
    best = result.classes["3"].best
    assert not any("pink" in p for p in best.genome.phrases)
    before = _pink_rate(world, "a photo of a 3", "")
    after = _pink_rate(world, best.prompt, best.genome.negative_prompt())
    assert after < before / 3
    # The unmarked images are the reference: keeping their variety beats pinning one colour, so
    # the pink phrase goes to the negative prompt, with the reason.
    assert "on a pink background" in best.genome.negative
    assert any(d.startswith("- 'on a pink background' moved to negative (close to") for d in result.classes["3"].diff)
    store.close()


def test_no_feedback_and_bad_input_errors(tmp_path):
    world = ColourWorld()
    store = SampleStore(tmp_path / "p", durable=False)
    store.add(world.generate(["a 3"], [""], [0]), [dict(label="3", split="generated")])
    with pytest.raises(EvolutionError, match="no feedback yet"):
        evolve_store(store, classes=["3"], generate=world.generate, embedder=world)
    store.update([store.samples["id"][0]], feedback="bad")
    with pytest.raises(EvolutionError, match="unknown class"):
        evolve_store(store, classes=["3"], generate=world.generate, embedder=world, only_classes=["7"])
    with pytest.raises(EvolutionError, match="needs a generator"):
        evolve_store(store, classes=["3"], generate=None, embedder=world)
    store.close()


def test_prompt_doc_roundtrip_and_starter_grammar():
    g = Genome("3", ("thick", "on a black background", "red", "slanted left"), ("pink",))
    assert starter_compose(g) == "a photo of a thick red 3 on a black background, slanted left"
    # A genome without attribute phrases is the class prompt the "class" strategy wrote: a class
    # that evolution leaves unchanged keeps its prompt (the bare grammar 'a 3' is another prompt).
    assert starter_compose(Genome("3", (), ("2",))) == "a photo of a 3"
    doc = {"classes": {"3": {"phrases": list(g.phrases), "negative": ["pink"], "history": []}}}
    assert current_prompts(doc, ["3", "4"]) == {"3": g, "4": Genome("4")}
    assert json.loads(json.dumps(apply_to_prompts_doc(doc, type("R", (), {"classes": {}, "round": 1})()))) == {
        **doc,
        "schema_version": 1,
    }


def test_controller_evolve_then_generate_evolved(tmp_path):
    from datacrafter_widget.loop.strategies import StrategyError
    from tests.test_student import _tiny_crafter

    crafter, _ = _tiny_crafter(tmp_path)
    ids = crafter.generate(per_class=2, strategy="class", classes=["0"], filter=False, progress=False)
    with pytest.raises(EvolutionError, match="no feedback yet"):
        crafter.evolve(progress=False)
    with pytest.raises(StrategyError, match="no evolved prompts yet"):
        crafter.generate_evolved(per_class=1, progress=False)
    crafter.feedback(bad=[ids[0]], bad_labels=["pink"])
    # The tiny models' CLIP is random, so nothing can be measured: the negative is taken as asked.
    result = crafter.evolve(population=2, generations=1, batch=1, progress=False, test_negatives=False)
    assert "pink" in result.negative_prompts["0"]
    doc = crafter.store.read_json("prompts.json", {})
    assert doc["classes"]["0"]["history"][-1]["diff"] == result.classes["0"].diff
    new = crafter.generate_evolved(per_class=2, progress=False)
    rows = crafter.samples.set_index("id").loc[new]
    assert set(rows["strategy"]) == {"evolved"} and set(rows["label"]) == {"0"}
    assert all("pink" in n for n in rows["negative_prompt"])
    crafter.close()


def test_starter_compose_never_names_two_values_of_one_attribute():
    """A genome may hold two backgrounds (mutation adds, crossover merges): the prompt keeps only the first."""
    g = Genome("9", ("on a lightblue background", "on a pink background"))
    assert starter_compose(g) == "a photo of a 9 on a lightblue background"
    g = Genome("3", ("red", "green", "thin", "thick", "slanted left", "slanted right", "sharp"))
    assert starter_compose(g) == "a photo of a thin red 3, slanted left, sharp"


def test_reference_is_the_unmarked_generated_images_not_the_biased_real_train(tmp_path):
    """Without good marks, the reference is the class's unmarked generated images; the real train split
    (here every image on the class's tied white background) is used only when there are none."""
    from datacrafter_widget.loop.evolution import _collect

    world = ColourWorld()
    store, pink = _project(tmp_path, world, mark_labels=False, mark_good=False)
    white = np.zeros((16, 16, 3), np.uint8) + np.array(COLOURS["white"], np.uint8)
    store.add([Image.fromarray(white)] * 5, [dict(label="3", split="train", caption="a 3 on a white background")] * 5)
    samples = store.samples
    unmarked = samples[(samples["source"] == "generated") & (samples["feedback"].fillna("") == "")]
    fb = _collect(samples, ["3"], store.image, world.embed_images, [], None)
    assert len(fb.good["3"]) == len(unmarked) == 12 - len(pink)
    # Real-train-only reference: all white. A flagged (off-class) image is no reference either.
    store.update(list(unmarked["id"][:-1]), feedback="bad")
    store.update([unmarked["id"].iloc[-1]], flag="off-class")
    fb = _collect(store.samples, ["3"], store.image, world.embed_images, [], None)
    assert len(fb.good["3"]) == 5
    assert np.allclose(fb.good["3"], world.embed_images([Image.fromarray(white)])[0])
    store.close()


def test_without_good_marks_evolution_adds_no_positive_phrase(tmp_path):
    """Lassoed images say what is unwanted; an added attribute phrase would pin it for the whole class."""
    world = ColourWorld()
    store, _ = _project(tmp_path, world, mark_labels=False, mark_good=False)
    result = _evolve_lassoed_3(store, world)
    ranked = result.classes["3"].ranked
    assert ranked
    assert all(k.genome.phrases == () for k in ranked)
    assert "on a pink background" in ranked[0].genome.negative
    store.close()


def test_lassoing_the_excess_of_an_attribute_keeps_it_out_of_the_negative(tmp_path):
    """The person lassoes half of the pink images ("fewer of these"): pink is still in what they kept,
    so no candidate removes it from the class with a negative prompt (that would make a class-specific
    gap, a new shortcut). Lassoing all of them (the test above) still moves it to the negative."""
    world = ColourWorld()
    store, _, _, pink = _class_3_round(tmp_path, world, 24)
    assert len(pink) >= 8
    store.update(pink[: len(pink) // 2], feedback="bad")
    kept_pink = len(pink) - len(pink) // 2
    assert kept_pink / (24 - len(pink) // 2) >= 0.1
    result = _evolve_lassoed_3(store, world)
    ranked = result.classes["3"].ranked
    assert ranked and not any("pink" in p for k in ranked for p in k.genome.negative)
    assert not any("pink" in d for d in result.classes["3"].diff)
    store.close()


def test_fewer_of_these_lassos_rebalance_the_class_with_a_mixture_of_prompts(tmp_path):
    """Half the class is pink; the person lassoes the pink images beyond a fifth, without words.
    One prompt cannot fix that (a negative removes pink, a phrase pins another colour): evolution
    gives the class a mixture over the background phrases whose images are about even."""
    world = ColourWorld()
    store, ids, _, pink = _class_3_round(tmp_path, world, 40)
    assert len(pink) >= 16
    store.update(pink[8:], feedback="bad")
    result = _evolve_3(store, world, axes={"background": VOCAB[:5]}, population=4, generations=1, batch=4, seed=0)
    r = result.classes["3"]
    assert not any("pink" in p for p in r.best.genome.negative)  # pink stays, fewer of it
    mixture = result.mixtures["3"]
    assert len(mixture) == 24 and len(set(mixture)) == 5
    images = world.generate(mixture, [r.best.genome.negative_prompt()] * len(mixture), list(range(len(mixture))))
    shares = {c: np.mean([world.colour_of(im) == c for im in images]) for c in NAMES}
    assert all(0.1 <= v <= 0.3 for v in shares.values()), shares
    assert any(d.startswith("~ balanced background (lassoed more than the rest: on a pink background)") for d in r.diff)
    entry = store.read_json("prompts.json", {})["classes"]["3"]
    assert entry["mixture"] == mixture and abs(sum(entry["balance"]["background"].values()) - 1) < 1e-3
    assert "5 prompts cycled over its images" in result.report()
    store.close()


def test_without_axes_or_without_a_lassoed_cell_there_is_no_mixture(tmp_path):
    world = ColourWorld()
    store, ids, _, pink = _class_3_round(tmp_path, world, 40)
    store.update(pink[8:], feedback="bad")
    plain = _evolve_3(store, world, seed=0)
    assert plain.mixtures["3"] == [plain.classes["3"].best.prompt] and not plain.classes["3"].mixture
    # The same share of every colour lassoed: no cell is "too many".
    store.update(pink[8:], feedback="")
    others = [i for i in ids if i not in pink]
    store.update(pink[::2] + others[::2], feedback="bad")
    even = _evolve_3(store, world, axes={"bg": VOCAB[:5]}, seed=0)
    assert not even.classes["3"].mixture
    store.close()


class DeafWorld(ColourWorld):
    """A generator that ignores negative prompts: a negative prompt changes nothing it makes."""

    def generate(self, prompts, negatives, seeds):
        return super().generate(prompts, [""] * len(prompts), seeds)


def test_an_unwanted_label_whose_negative_does_not_help_stays_out_of_the_negative(tmp_path):
    world = DeafWorld()
    store, _ = _project(tmp_path, world, mark_labels=True)
    result = _evolve_3(store, world, seed=0)
    r = result.classes["3"]
    assert "pink" not in r.best.genome.negative and not any("pink" in p for p in r.best.genome.phrases)
    assert r.diff[0].startswith("~ 'pink' marked unwanted but kept out of the negative prompt: with it ")
    store.close()


def test_generate_evolved_cycles_through_a_class_mixture(tmp_path):
    from datacrafter_widget.controller import prompt_book
    from tests.test_student import _tiny_crafter

    crafter, _ = _tiny_crafter(tmp_path)
    mixture = ["a photo of a 0, on a pink background", "a photo of a 0, on a gray background"]
    doc = {"classes": {"0": {"prompt": "a photo of a 0", "negative_prompt": "blurry", "mixture": mixture}}}
    crafter.store.write_json("prompts.json", doc)
    assert crafter.prompts["0"]["mixture"] == mixture
    new = crafter.generate_evolved(per_class=4, progress=False)
    rows = crafter.samples.set_index("id").loc[new]
    assert list(rows["prompt"]) == mixture * 2 and set(rows["negative_prompt"]) == {"blurry"}
    # A typed prompt serves every image again; accepting keeps the mixture.
    kept, _ = prompt_book.accept_prompt(doc, ["0", "1"], "0")
    assert kept["classes"]["0"]["mixture"] == mixture
    typed, _ = prompt_book.set_prompt(doc, ["0", "1"], "0", "a photo of a 0, sharp")
    assert "mixture" not in typed["classes"]["0"]
    crafter.close()


def test_evolve_store_hands_evolution_the_wordless_lassos_from_the_feedback_log(tmp_path, monkeypatch):
    """Which images were lassoed together comes from feedback.json: wordless "bad" actions only."""
    import datacrafter_widget.loop.evolution as evolution

    world = ColourWorld()
    store, ids, _, pink = _class_3_round(tmp_path, world, 12)
    log = [
        {"bad": pink[:2], "bad_labels": [], "good": []},
        {"bad": [ids[0]], "bad_labels": ["pink"], "good": []},
        {"undo": [ids[0]]},
        {"bad": [], "good": [ids[1]]},
    ]
    store.write_json("feedback.json", log)
    seen = {}
    monkeypatch.setattr(
        evolution, "evolve_prompts", lambda samples, **kw: seen.update(kw) or evolution.EvolutionResult({}, 1)
    )
    evolve_store(store, classes=["3"], generate=world.generate, embedder=world)
    assert seen["lassos"] == [pink[:2]]
    store.close()


def test_a_balanced_axis_leaves_the_negative_prompt(tmp_path):
    """Every pink image lassoed: evolution may put pink in the negative, but the class also gets a
    mixture over the backgrounds, and a negative naming one of its phrases would fight the prompts
    that name it. The mixture owns the axis: pink leaves the negative, and the diff says so."""
    world = ColourWorld()
    store, ids, _, pink = _class_3_round(tmp_path, world, 40)
    store.update(pink, feedback="bad")
    without = _evolve_3(store, world, population=4, generations=1, batch=4, seed=0)
    assert any("pink" in p for p in without.classes["3"].best.genome.negative)  # the premise
    result = _evolve_3(store, world, axes={"background": VOCAB[:5]}, population=4, generations=1, batch=4, seed=0)
    r = result.classes["3"]
    assert r.mixture
    assert not any("pink" in p for p in r.best.genome.negative)
    assert not any("pink" in m for m in result.negative_prompts.values())
    assert any("taken out of the negative prompt" in d for d in r.diff)
    store.close()


def test_evolution_ticks_while_it_renders_not_only_per_generation(tmp_path, monkeypatch):
    """Each rendered batch (a candidate, a phrase measured) may report, so a slow generation still ticks."""
    from datacrafter_widget import compute

    world = ColourWorld()
    store, _ = _project(tmp_path, world, mark_labels=True)
    seen = []
    monkeypatch.setattr(compute, "HEARTBEAT_S", 0.0)  # every batch is "slow": each one reports
    _evolve_3(
        store,
        world,
        population=4,
        generations=1,
        batch=2,
        seed=0,
        render_batch=2,  # one candidate per call
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (1, 1)
    assert len(seen) >= 4  # the candidates' calls before the one generation ends
    store.close()
