"""Data-efficiency benchmark: which generated images help a few-shot student under a spurious shift?

Setup: the starter coloured digits, `shots` real images per class in train with the background
colour tied to the class (spurious=0.95), and a test split with uniform backgrounds. For each seed,
each strategy generates a pool of at most max(N) images through the product (DataCrafter with its
class filter, the starter models); for every N the student (the default small CNN, retrained from
scratch) is trained on the real images plus the accepted images among the first N generated
(nested subsets, N/10 per class) and evaluated on test.

Strategies: none (real only) | class | caption | perturb | loop (class prompts -> a simulated
person lassoes the images the independent checker finds off-prompt -> evolve -> regenerate;
half the budget from each round) | gap (guided adversarial prompts against the real-only student,
image guidance toward unlabelled pool images; by default one token set per class, each image made
from a real train image of its class with its digit strokes kept: --gap-sources train
--gap-masks plain-background; --gap-sources none is the old text-to-image GAP).

    python benchmarks/bench_data_efficiency.py                # plan sized to ~15 min on this machine
    python benchmarks/bench_data_efficiency.py --seeds 3 --ns 50,100,200
Prints the table (mean ± std over seeds) and writes benchmarks/results/data_efficiency.{csv,html,json}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import datacrafter_widget as dc  # noqa: E402
from datacrafter_widget.loop.gap import GapConfig  # noqa: E402
from datacrafter_widget.controller.rounds import evolve_store, gap_round, image_fn  # noqa: E402
from datacrafter_widget.controller.crafter import DataCrafter  # noqa: E402
from datacrafter_widget.starter.prompts import starter_compose, starter_vocabulary  # noqa: E402
from datacrafter_widget.app.headless import simulated_feedback  # noqa: E402
from datacrafter_widget.loop.student import evaluate, train_student  # noqa: E402

STRATEGIES = ["none", "class", "caption", "perturb", "loop", "gap"]
RESULTS = REPO / "benchmarks" / "results"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def student_epochs(n: int, args) -> int:
    """Epochs giving about args.student_steps optimiser steps (batch 32), at least 20."""
    return max(20, math.ceil(args.student_steps / math.ceil(n / 32)))


def accepted_by_class(store, ids, classes) -> dict[str, list[str]]:
    """Accepted generated ids per class, in generation order (flag-free, not marked bad)."""
    s = store.samples.set_index("id").loc[list(ids)]
    ok = s[(s["flag"] == "") & (~s["feedback"].isin(["bad", "removed"]))]
    return {c: ok.index[ok["label"] == c].tolist() for c in classes}


def take(pools: list[dict[str, list[str]]], classes, k: int) -> list[str]:
    """The first k generated-per-class slots, split evenly over the pools (rounds), accepted ones kept."""
    out = []
    parts = len(pools)
    for c in classes:
        for j, pool in enumerate(pools):
            share = k // parts + (1 if j < k % parts else 0)
            out += pool.get(c, [])[:share]
    return out


def measure(models, ds, args) -> dict[str, float]:
    """Seconds per generated image (txt2img), per GAP step, per student training on 250 images."""
    gen = models.generator
    t = time.time()
    gen(["a photo of a 3"] * 8, seed=0, batch_size=8)
    per_image = (time.time() - t) / 8
    s0 = train_student(ds.images(), ds.labels, ds.classes, epochs=2, width=args.width, progress=False)
    from datacrafter_widget.loop.gap import optimise_prompt_tokens

    t = time.time()
    gap_src = {}
    if args.gap_sources == "train":
        from datacrafter_widget.loop.masks import plain_background_mask

        srcs = [im for im, l in zip(ds.images(), ds.labels) if l == "3"]
        gap_src = {"sources": srcs, "masks": [plain_background_mask(im) for im in srcs] if args.gap_masks != "none" else None,
                   "strength": args.gap_strength}
    optimise_prompt_tokens(gen, s0, "3", steps=2, batch=args.gap_batch, sampler_steps=args.gap_sampler_steps, n_tokens=4,
                           lr=1e-2, **gap_src)
    per_gap_step = (time.time() - t) / 2
    imgs = ds.images() * 5
    t = time.time()
    train_student(imgs, ds.labels * 5, ds.classes, epochs=2, width=args.width, progress=False)
    per_train = (time.time() - t) / 2 * student_epochs(250, args)
    return {"gen_image_s": per_image, "gap_step_s": per_gap_step, "train_250_s": per_train}


def run_seed(seed: int, models, checker, ns: list[int], strategies: list[str], args) -> list[dict]:
    ds = dc.starter.colored_digits(shots=args.shots, spurious=args.spurious, seed=seed)
    classes = ds.classes
    kmax = max(ns) // len(classes)
    rows = []
    real_images, real_labels = ds.images(), ds.labels
    test = ds.test

    def score(strategy: str, n: int, ids: list[str], store, extra: dict | None = None) -> None:
        images = real_images + [store.image(i) for i in ids]
        labels = real_labels + [store.row(i)["label"] for i in ids] if ids else real_labels
        st = train_student(images, labels, classes, epochs=student_epochs(len(images), args), width=args.width,
                           seed=seed, progress=False)
        ev = evaluate(st, test)
        rows.append({"seed": seed, "strategy": strategy, "N": n, "used": len(ids), "accuracy": ev["accuracy"],
                     "worst_class": float(ev["per_class"]["accuracy"].min()), **(extra or {})})
        log(f"seed {seed} {strategy:8s} N={n:3d} used={len(ids):3d} acc={ev['accuracy']:.3f}")
        return st

    with tempfile.TemporaryDirectory(prefix="dc-bench-") as tmp:
        crafter = DataCrafter(ds, models=models, project=Path(tmp) / "proj")
        store = crafter.store
        base = seed * 1_000_000
        student0 = score("none", 0, [], store)

        def score_pool(strat, pool, store):   # right away, so a run cut short keeps what it measured
            for n in ns:
                score(strat, n, take(pool, classes, n // len(classes)), store)
        pools: dict[str, list[dict[str, list[str]]]] = {}
        class_ids: list[str] = []
        if "loop" in strategies and "class" not in strategies:
            raise SystemExit("the loop strategy starts from the class-prompt images: include 'class' in --strategies")
        info: dict[str, dict] = {}
        for strat in ("class", "caption", "perturb"):
            if strat not in strategies:
                continue
            t = time.time()
            ids = crafter.generate(per_class=kmax, strategy=strat, seed=base + 10_000 * len(pools) + 1, progress=False)
            if strat == "class":
                class_ids = list(ids)
            pools[strat] = [accepted_by_class(store, ids, classes)]
            info[strat] = {"gen_s": time.time() - t, "generated": len(ids)}
            score_pool(strat, pools[strat], store)
            n_ok = sum(len(v) for v in pools[strat][0].values())
            log(f"seed {seed} {strat}: {len(ids)} images in {time.time() - t:.0f}s, {len(ids) - n_ok} flagged off-class")
        if "loop" in strategies:
            t = time.time()
            half = math.ceil(kmax / 2)
            # Round 1 of the loop is the first half of the class-prompt images (the same images the
            # "class" row uses), so the loop adds feedback, evolution and one regeneration round.
            s_all = store.samples
            cls_rows = s_all[s_all["id"].isin(class_ids)]
            ids1 = [i for c in classes for i in cls_rows[cls_rows["label"] == c]["id"].tolist()[:half]]
            fb1 = simulated_feedback(crafter, ids1, checker)
            log(f"seed {seed} loop: round 1 done ({time.time() - t:.0f}s), evolving")
            result = evolve_store(store, classes=classes, generate=image_fn(models.generator, batch_size=16), embedder=models.embedder,
                                  vocabulary=starter_vocabulary(), compose=starter_compose, population=args.population,
                                  generations=1, batch=args.evolve_batch, seed=seed)
            ids2 = crafter.generate(per_class=half, strategy="custom", prompts={c: [p] for c, p in result.prompts.items()},
                                    negative_prompts=result.negative_prompts, classes=list(result.prompts),
                                    seed=base + 600_001, progress=False)
            fb2 = simulated_feedback(crafter, ids2, checker)
            # Classes evolution left alone (no feedback) keep their class prompts for the second half.
            rest = [c for c in classes if c not in result.prompts]
            if rest:
                ids2 += crafter.generate(per_class=half, strategy="class", classes=rest, seed=base + 700_001, progress=False)
            pools["loop"] = [accepted_by_class(store, ids1, classes), accepted_by_class(store, ids2, classes)]
            score_pool("loop", pools["loop"], store)
            info["loop"] = {"gen_s": time.time() - t, "generated": len(ids1) + len(ids2),
                            "off_prompt_before": fb1["bad"] / max(1, fb1["checked"]),
                            "off_prompt_after": fb2["bad"] / max(1, fb2["checked"]),
                            "evolution": result.report()}
            log(f"seed {seed} loop ({time.time() - t:.0f}s): off-prompt {fb1['bad']}/{fb1['checked']} with class prompts -> "
                f"{fb2['bad']}/{fb2['checked']} with evolved prompts")
            log(result.report())
        if "gap" in strategies:
            t = time.time()
            target_images = ds.pool.images(list(range(0, len(ds.pool), max(1, len(ds.pool) // 40))))
            cfg = GapConfig(steps=args.gap_steps, lr=args.gap_lr, n_tokens=4, sampler_steps=args.gap_sampler_steps,
                            batch=args.gap_batch, final_steps=models.generator.default_steps,
                            guidance=models.generator.default_guidance, template="a photo of a {class}",
                            image_weight=args.gap_image_weight, strength=args.gap_strength)
            # Sources: the real train images of each class (the same biased split the student saw).
            ids, res = gap_round(store, models.generator, student0, classes, target_images=target_images,
                                 embedder=models.embedder, per_class=kmax, round=90, seed=seed, config=cfg,
                                 shared=args.gap_shared, sources=None if args.gap_sources == "none" else args.gap_sources,
                                 masks=None if args.gap_masks == "none" or args.gap_sources == "none" else args.gap_masks)
            t_gap = time.time() - t
            from datacrafter_widget.loop.gap import student_loss_on

            ce_gap = float(np.mean([student_loss_on(student0, [store.image(i) for i in ids if store.row(i)["label"] == c], c)
                                    for c in classes]))
            # GAP images go through the same class filter as every other strategy.
            from datacrafter_widget.loop.class_filter import ClassFilter

            emb = models.embedder.embed_images([store.image(i) for i in ids])
            flt = ClassFilter(models.embedder, classes)
            if hasattr(flt, "fit"):  # the same filter the controller fits on the real training images
                flt.fit(models.embedder.embed_images(real_images), real_labels)
            checks = flt.check(emb, [store.row(i)["label"] for i in ids])
            flagged = [i for i, (flag, _) in zip(ids, checks) if flag]
            if flagged:
                store.update(flagged, flag="off-class")
            pools["gap"] = [accepted_by_class(store, ids, classes)]
            score_pool("gap", pools["gap"], store)
            adv0 = np.mean([r.history[0]["adversarial"] for r in res.values()])
            adv1 = np.mean([np.mean([h["adversarial"] for h in r.history[-3:]]) for r in res.values()])
            info["gap"] = {"gen_s": time.time() - t, "gap_s": t_gap, "generated": len(ids), "adv_first": adv0, "adv_last": adv1,
                           "flagged": len(flagged), "student0_ce_on_gap": ce_gap}
            extra = ""
            if class_ids:
                ce_cls = float(np.mean([student_loss_on(student0, [store.image(i) for i in class_ids if store.row(i)["label"] == c], c)
                                        for c in classes]))
                info["gap"]["student0_ce_on_class"] = ce_cls
                extra = f", real-only student CE on class-prompt images {ce_cls:.2f}"
            log(f"seed {seed} gap ({time.time() - t:.0f}s, tokens+images {t_gap:.0f}s): adversarial loss {adv0:.3f} -> {adv1:.3f}, "
                f"{len(flagged)} flagged off-class, real-only student CE on GAP images {ce_gap:.2f}{extra}")
        crafter.close()
    for r in rows:
        r.update({k: v for k, v in info.get(r["strategy"], {}).items() if k in ("gen_s", "off_prompt_before", "off_prompt_after")})
    return rows, info


def load_models(weights: str | None):
    """dc.starter.models(), or the same models from another weights folder (e.g. a training run in progress)."""
    if not weights:
        return dc.starter.models()
    from datacrafter_widget.starter.loader import load_starter_models

    return load_starter_models(weights_dir=weights)


def load_checker(steps: int | None, weights: str | None = None):
    """The starter's independent checker: saved weights, a fresh training run, or the cached default."""
    from datacrafter_widget.app.headless import _starter_checker
    from datacrafter_widget.starter import checker as ck

    if weights:
        from safetensors.torch import load_file

        net = ck.CheckerNet()
        net.load_state_dict(load_file(weights))
        inst = ck.Checker(net=net.eval())
        return lambda images: pd.DataFrame(inst.predict(list(images)))
    if steps is None:
        return _starter_checker()
    inst = ck.train_checker(steps=steps)
    return lambda images: pd.DataFrame(inst.predict(list(images)))


def plot(table: pd.DataFrame, path: Path) -> Path:
    import altair as alt

    agg = table.groupby(["strategy", "N"])["accuracy"].agg(["mean", "std"]).reset_index().fillna(0)
    agg["lo"], agg["hi"] = agg["mean"] - agg["std"], agg["mean"] + agg["std"]
    base = alt.Chart(agg).encode(x=alt.X("N:Q", title="generated images added (N)"), color="strategy:N")
    chart = (base.mark_line(point=True).encode(y=alt.Y("mean:Q", title="student test accuracy", scale=alt.Scale(zero=False)))
             + base.mark_errorbar().encode(y="lo:Q", y2="hi:Q")).properties(
        width=480, height=300, title="Few-shot coloured digits, spurious background in train")
    html_path = path.with_suffix(".html")
    chart.save(str(html_path))
    try:
        chart.save(str(path.with_suffix(".png")))
    except Exception:  # noqa: BLE001 - PNG needs vl-convert, which is optional
        pass
    return html_path


def report(rows: list[dict], infos: dict, args, speed: dict, seeds: int, t0: float) -> None:
    """Print the table and write csv / json / plot for the seeds finished so far."""
    table = pd.DataFrame(rows)
    RESULTS.mkdir(parents=True, exist_ok=True)
    table.to_csv(RESULTS / "data_efficiency.csv", index=False)
    agg = table.groupby(["strategy", "N"])["accuracy"].agg(["mean", "std", "count"]).reset_index()
    used = table.groupby(["strategy", "N"])["used"].mean().reset_index()
    agg = agg.merge(used, on=["strategy", "N"])
    order = [s for s in STRATEGIES if s in set(agg["strategy"])]
    wide = agg.assign(cell=[f"{m:.3f} ± {0 if math.isnan(s) else s:.3f}" for m, s in zip(agg["mean"], agg["std"])]) \
        .pivot(index="strategy", columns="N", values="cell").reindex(order)
    print()
    print(f"student test accuracy (mean ± std over {seeds} seed(s)); shots={args.shots}, spurious={args.spurious}, "
          f"test without the correlation; N = generated images added")
    print(wide.to_string())
    print()
    print("accepted images used (mean):")
    print(agg.pivot(index="strategy", columns="N", values="used").reindex(order).round(1).to_string())
    html = plot(table, RESULTS / "data_efficiency")
    summary = {"args": vars(args), "speed": speed, "seeds": seeds, "minutes": (time.time() - t0) / 60,
               "info": {str(k): {s: {kk: vv for kk, vv in v.items() if kk != "evolution"} for s, v in i.items()} for k, i in infos.items()},
               "evolution": {str(k): i.get("loop", {}).get("evolution", "") for k, i in infos.items()}}
    (RESULTS / "data_efficiency.json").write_text(json.dumps(summary, indent=1, default=float))
    log(f"wrote {RESULTS / 'data_efficiency.csv'}, {html}; total {(time.time() - t0) / 60:.1f} min")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default: sized to the budget, max 3)")
    p.add_argument("--ns", default="50,100,200")
    p.add_argument("--strategies", default=",".join(STRATEGIES))
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--spurious", type=float, default=0.95)
    p.add_argument("--student-steps", type=int, default=200, help="optimiser steps per student training (batch 32)")
    p.add_argument("--width", type=int, default=16, help="student CNN width (16 keeps the benchmark inside its budget)")
    p.add_argument("--population", type=int, default=3)
    p.add_argument("--evolve-batch", type=int, default=2)
    p.add_argument("--gap-steps", type=int, default=15, help="optimisation steps per class (total if --gap-shared)")
    p.add_argument("--gap-lr", type=float, default=2e-2)
    p.add_argument("--gap-batch", type=int, default=3)
    p.add_argument("--gap-shared", action="store_true", help="one token set for all classes")
    p.add_argument("--gap-image-weight", type=float, default=10.0)
    p.add_argument("--gap-sources", choices=["train", "none"], default="train",
                   help="start GAP images from the real train images of the class (img2img), or 'none' (text-to-image)")
    p.add_argument("--gap-masks", choices=["plain-background", "none"], default="plain-background",
                   help="keep each source's object (digit strokes) and change only the background")
    p.add_argument("--gap-strength", type=float, default=0.8, help="img2img strength from the sources")
    p.add_argument("--gap-sampler-steps", type=int, default=4, help="DDIM steps during GAP optimisation")
    p.add_argument("--budget-min", type=float, default=15.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="sampler steps for generation (default: the model's)")
    p.add_argument("--weights", default=None, help="starter weights folder (default: the shipped ones)")
    p.add_argument("--checker-weights", default=None, help="safetensors of a trained starter checker (CheckerNet)")
    p.add_argument("--checker-steps", type=int, default=None, help="train the checker for this many steps instead of loading it")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ns = [int(x) for x in args.ns.split(",")]
    strategies = [s for s in args.strategies.split(",") if s]
    t0 = time.time()
    models = load_models(args.weights)
    if args.steps:
        models.generator.default_steps = int(args.steps)
    checker = load_checker(args.checker_steps, args.checker_weights)
    log(f"models and checker ready ({time.time() - t0:.0f}s)")
    ds0 = dc.starter.colored_digits(shots=args.shots, spurious=args.spurious, seed=0)
    speed = measure(models, ds0, args)
    log("speed: " + json.dumps({k: round(v, 3) for k, v in speed.items()}))
    kmax = max(ns)
    gen_per_seed = sum(kmax if s != "loop" else kmax // 2 for s in ("class", "caption", "perturb", "loop", "gap") if s in strategies)
    evolve_images = 10 * (args.population + 1) * args.evolve_batch if "loop" in strategies else 0
    trainings = 1 + len([s for s in strategies if s != "none"]) * len(ns)
    mean_train = speed["train_250_s"]  # a fixed number of optimiser steps, whatever the set size
    per_seed = (gen_per_seed + evolve_images) * speed["gen_image_s"] + (1 if args.gap_shared else 10) * args.gap_steps * speed["gap_step_s"] * ("gap" in strategies) \
        + trainings * mean_train
    seeds = args.seeds or max(1, min(3, int(args.budget_min * 60 / per_seed)))
    log(f"plan: {seeds} seed(s) x ({gen_per_seed} + ~{evolve_images} evolution images, {trainings} student trainings); "
        f"estimated {per_seed / 60:.1f} min per seed")
    rows, infos = [], {}
    for seed in range(seeds):
        r, info = run_seed(seed, models, checker, ns, strategies, args)
        rows += r
        infos[seed] = info
        report(rows, infos, args, speed, seed + 1, t0)   # after every seed, so a cut-off run keeps its results
    return 0


if __name__ == "__main__":
    sys.exit(main())
