"""Data-efficiency benchmark in three tracks, each built so the mechanism it tests has room to work.

Every track has a "none" row (no images added) and an "ideal" row (real pool images in place of
generated ones: a perfect generator), runs over seeds and an N grid, and scores the student on a
test split where every held-out scan is rendered on all five backgrounds (random foreground,
stroke and slant), so one seed's test noise is small and per-background accuracy is exact.

- gap:      spurious 0.95. Every arm starts from real + `--gap-base` class-prompt images per class
            (the student already knows shapes); each method adds N images. Rows: none, ideal,
            class, search (discrete search over background words scored by the student's loss),
            gap (guided adversarial prompts: per class, 8 contexts of pool-image captions are screened
            by the base student's loss, 4 token sets start at the hardest and are optimised for 30
            steps with the true-label loss, a zero-shot class-keeping term and text guidance to their
            contexts; text-to-image). Reports accuracy on test images whose background is not the
            class's tied one, and the share of added images in the student's high-loss
            (class, background) cells.
- loop:     spurious 0.95. A simulated person compares the class-prompt round with a target
            attribute histogram read (independent checker) from unlabelled pool images, lassoes
            wrong digits (naming the digit shown) and, one lasso per over-represented cell, the
            excess images without words; DataCrafter.feedback -> evolve (a mixture of prompts per
            class, loop/balance.py) -> generate_evolved. The loop arm has a project of its own (round 1
            with the class arm's seeds), so evolution reads no other arm's images as kept;
            --loop-rounds repeats lassos -> evolve -> evolved round. Rows: none, class, loop, ideal.
            Reports histogram distance, accuracy on classes 8 and 9, student accuracy, and the share
            of the class->ideal gap closed.
- captions: spurious 0. Rows: none, class, caption-train (captions of the 50 train images, the
            product's "caption" strategy), caption-pool (captions of many unlabelled pool images),
            ideal. Reports attribute entropy and per-background accuracy.

Generated images live in DataCrafter projects under --cache (PNG + parquet; arms.json lists the
ids of each arm), and every student score is cached there too, so a re-run only computes what is
missing.

    python benchmarks/bench_data_efficiency.py --track gap --seeds 0,1,2
    python benchmarks/bench_data_efficiency.py --track all --n-seeds 5 --student-steps 600
Results: benchmarks/results/<track>/{rows.csv,summary.csv,summary.json,table.txt}.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

import datacrafter_widget as dc  # noqa: E402
from datacrafter_widget.controller.crafter import DataCrafter  # noqa: E402
from datacrafter_widget.loop.student import train_student  # noqa: E402
from datacrafter_widget.starter.digits import (
    BACKGROUNDS,
    CLASSES,
    FOREGROUNDS,
    SLANTS,
    TIED_BACKGROUND,  # noqa: E402
    THICKNESSES,
    caption_for,
    render,
)

RESULTS = REPO / "benchmarks" / "results"
TRACKS = ("gap", "loop", "captions")
ARMS = {
    "gap": ["none", "ideal", "class", "search", "gap"],
    "loop": ["none", "ideal", "class", "loop"],
    "captions": ["none", "ideal", "class", "caption-train", "caption-pool"],
}
BGS = list(BACKGROUNDS)
FGS = list(FOREGROUNDS)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def atomic_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


# ---- test split: every held-out scan on every background -------------------------------------------
def multi_variant_test(ds: dc.Dataset, seed: int) -> pd.DataFrame:
    """Each test scan rendered on all 5 backgrounds (random fg / stroke / slant): 5x the images, exact per-bg cells."""
    from sklearn.datasets import load_digits

    scans = load_digits().images
    rng = np.random.default_rng(10_000 + seed)
    rows = []
    for src, label in zip(ds.test.frame["source_index"], ds.test.labels):
        for bg in BGS:
            fg, th, sl = str(rng.choice(FGS)), str(rng.choice(THICKNESSES)), str(rng.choice(SLANTS))
            rows.append(
                {
                    "image": render(scans[int(src)], fg, bg, th, sl),
                    "label": str(label),
                    "background": bg,
                    "foreground": fg,
                    "tied": TIED_BACKGROUND[str(label)] == bg,
                }
            )
    return pd.DataFrame(rows)


def score_student(images: list[Image.Image], labels: list[str], test: pd.DataFrame, seed: int, args) -> dict[str, Any]:
    """Train the default student from scratch (fixed optimiser steps at every N) and score it on the test split."""
    import inspect

    kw: dict[str, Any] = {} if args.width is None else {"width": args.width}
    if "steps" in inspect.signature(train_student).parameters:
        if args.student_steps:
            kw["steps"] = args.student_steps
    else:  # the first student counts epochs: the same number of optimiser steps (batch 32) at every N
        kw["epochs"] = max(1, math.ceil((args.student_steps or 400) / math.ceil(len(images) / 32)))
    st = train_student(images, labels, CLASSES, seed=seed, progress=False, **kw)
    pred = np.array(st.predict(list(test["image"])))
    ok = pred == test["label"].to_numpy()
    out: dict[str, Any] = {
        "accuracy": float(ok.mean()),
        "acc_nontied": float(ok[~test["tied"].to_numpy()].mean()),
        "acc_8_9": float(ok[test["label"].isin(["8", "9"]).to_numpy()].mean()),
    }
    for bg in BGS:
        out[f"acc_bg_{bg}"] = float(ok[(test["background"] == bg).to_numpy()].mean())
    out["_student"] = st
    return out


# ---- helpers on generated images ------------------------------------------------------------------
def accepted(store, ids: Sequence[str]) -> dict[str, list[str]]:
    """Accepted ids per class (no class-filter flag, not marked bad/removed), in generation order."""
    if not ids:
        return {c: [] for c in CLASSES}
    s = store.samples.set_index("id").loc[list(ids)]
    ok = s[(s["flag"].fillna("") == "") & (~s["feedback"].fillna("").isin(["bad", "removed"]))]
    return {c: ok.index[ok["label"] == c].tolist() for c in CLASSES}


def take(per_class: dict[str, list], n: int, seed: int) -> list:
    """n items spread evenly over the classes (remainder to a seed-rotated set of classes); nested in n."""
    k, r = divmod(int(n), len(CLASSES))
    extra = {CLASSES[(seed + j) % len(CLASSES)] for j in range(r)}
    out = []
    for c in CLASSES:
        out += list(per_class.get(c, []))[: k + (1 if c in extra else 0)]
    return out


def hist(values: Sequence[str], names: Sequence[str]) -> np.ndarray:
    v = pd.Series(list(values), dtype=object)
    h = np.array([(v == x).sum() for x in names], dtype=float)
    return h / max(1.0, h.sum())


def tv(p: np.ndarray, q: np.ndarray) -> float:
    """Total-variation distance between two histograms (0 = equal, 1 = disjoint)."""
    return float(0.5 * np.abs(p - q).sum())


def top_background_share(labels: Sequence[str], backgrounds: Sequence[str]) -> float:
    """Mean over classes of the share of a class's images on its most common background (1 = collapsed)."""
    df = pd.DataFrame({"label": list(labels), "bg": list(backgrounds)})
    if df.empty:
        return float("nan")
    return float(df.groupby("label")["bg"].agg(lambda v: v.value_counts(normalize=True).iloc[0]).mean())


def entropy_bits(values: Sequence[str]) -> float:
    v = pd.Series(list(values)).value_counts(normalize=True).to_numpy()
    return float(-(v * np.log2(v)).sum()) if len(v) else 0.0


# ---- one (track, seed) context: dataset, crafter project, caches -------------------------------------
class Ctx:
    """Dataset, DataCrafter project, arms.json (generated ids per arm) and scores.json (student scores) for one track and seed."""

    def __init__(self, track: str, seed: int, spurious: float, models, checker, args, sub: str = "") -> None:
        self.track, self.seed, self.args, self.models, self.checker = track, seed, args, models, checker
        self.spurious = spurious
        self.ds = dc.starter.colored_digits(shots=args.shots, spurious=spurious, seed=seed)
        self.test = multi_variant_test(self.ds, seed)
        # `sub`: an arm with a project of its own (the loop arm: its evolution sees only its own rounds)
        self.dir = Path(args.cache) / track / f"seed{seed}" / sub if sub else Path(args.cache) / track / f"seed{seed}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.crafter = DataCrafter(self.ds, models=models, project=self.dir / "project")
        self.store = self.crafter.store
        self.arms_path, self.scores_path = self.dir / "arms.json", self.dir / "scores.json"
        self.arms: dict[str, Any] = json.loads(self.arms_path.read_text()) if self.arms_path.exists() else {}
        self.scores: dict[str, Any] = json.loads(self.scores_path.read_text()) if self.scores_path.exists() else {}
        self.real_images, self.real_labels = self.ds.images(), [str(x) for x in self.ds.labels]
        self._checked: dict[str, dict[str, str]] = {}
        self.fills: dict[str, dict[str, int]] = {}

    def arm(self, key: str, make: Callable[[], Any]) -> Any:
        """Cached arm: make() runs once; its JSON-able result (ids, info) is kept in arms.json."""
        if key not in self.arms:
            t = time.time()
            self.arms[key] = make()
            log(f"{self.track} seed {self.seed}: made {key} in {time.time() - t:.0f}s")
            atomic_json(self.arms_path, self.arms)
        return self.arms[key]

    def generate(self, per_class: int, seed_offset: int, **kw: Any) -> list[str]:
        return list(
            self.crafter.generate(
                per_class=per_class,
                seed=self.seed * 1_000_000 + seed_offset,
                steps=self.args.sampler_steps,
                progress=False,
                **kw,
            )
        )

    def filled(
        self,
        key: str,
        ids: Sequence[str],
        need: int,
        more: Callable[[list[str], int, int], list[str]],
        cap: int | None = None,
    ) -> dict[str, list[str]]:
        """Accepted ids per class, topped up until every class has `need` (the arm is never short).

        A class the class filter left short gets more images, `more(classes, k, attempt)` (k per
        short class, new seeds per attempt), at most `cap` attempts; the extra ids and the attempts
        are kept in arms.json under `key|fill`, and `self.fills[key]` says what it took.
        """
        cap = self.args.fill_cap if cap is None else cap
        done = self.arms.get(f"{key}|fill", {"ids": [], "attempts": 0})
        every = list(ids) + list(done["ids"])
        acc = accepted(self.store, every)
        attempts = int(done["attempts"])
        while attempts < cap:
            short = [c for c in CLASSES if len(acc[c]) < need]
            if not short:
                break
            # ask for what the class filter's acceptance so far says it takes (seed 2 of the loop track
            # was left 2 eights short after 4 top-ups of 1.5x the gap)
            made = self.store.samples.set_index("id").loc[every, "label"].astype(str).value_counts()
            rate = min(max(len(acc[c]), 1) / max(int(made.get(c, 0)), 1) for c in short)
            k = max(need - len(acc[c]) for c in short)
            new = list(more(short, math.ceil(1.25 * k / max(rate, 0.1)), attempts))
            attempts += 1
            done = {"ids": list(done["ids"]) + new, "attempts": attempts}
            self.arms[f"{key}|fill"] = done
            atomic_json(self.arms_path, self.arms)
            every += new
            acc = accepted(self.store, every)
        left = {c: need - len(acc[c]) for c in CLASSES if len(acc[c]) < need}
        self.fills[key] = {"generated": len(every), "fill_attempts": attempts, "short": sum(left.values())}
        if left:
            log(f"{self.track} seed {self.seed} {key}: still short after {attempts} top-ups: {left}")
        return acc

    def top_up_offset(self, arm_no: int, attempt: int) -> int:
        """Seed offset of a top-up batch: clear of every arm's first batch and of other top-ups."""
        return 10_000 * arm_no + 1_000 * (attempt + 1)

    def check(self, ids: Sequence[str]) -> pd.DataFrame:
        """Independent checker's digit / foreground / background reading of stored images (memoised)."""
        todo = [i for i in ids if i not in self._checked]
        if todo:
            found = self.checker([self.store.image(i) for i in todo])
            for i, (_, r) in zip(todo, found.iterrows()):
                self._checked[i] = {
                    "digit": str(r["digit"]),
                    "foreground": str(r["foreground"]),
                    "background": str(r["background"]),
                }
        return pd.DataFrame(
            [self._checked[i] for i in ids], index=list(ids), columns=["digit", "foreground", "background"]
        )

    def pool_rows(self, k_per_class: int, offset: int = 0) -> dict[str, list[int]]:
        """Indices of real pool images per class (the ideal generator), seed-shuffled, nested."""
        rng = np.random.default_rng(500 + self.seed)
        labels = np.array([str(x) for x in self.ds.pool.labels])
        return {
            c: rng.permutation(np.flatnonzero(labels == c))[offset : offset + k_per_class].tolist() for c in CLASSES
        }

    def score(
        self,
        key: str,
        images: Callable[[], tuple[list[Image.Image], list[str]]],
        extra: dict | None = None,
        keep_student: bool = False,
    ) -> dict[str, Any]:
        """Cached student score for one cell; the key includes the student settings."""
        a = self.args
        if a.generate_only:  # fill the image cache only (images that do not depend on the student)
            return {"accuracy": float("nan"), "acc_nontied": float("nan"), "acc_8_9": float("nan")}
        full = f"{key}|steps={a.student_steps}|w={a.width}|{student_id()}"
        if full in self.scores and not keep_student:
            return self.scores[full]
        ims, labs = images()
        t = time.time()
        res = score_student(self.real_images + ims, self.real_labels + labs, self.test, self.seed, a)
        st = res.pop("_student")
        res.update({"train_s": time.time() - t, "added": len(ims), **(extra or {})})
        self.scores[full] = res
        atomic_json(self.scores_path, self.scores)
        log(
            f"{self.track} seed {self.seed} {key}: acc {res['accuracy']:.3f} non-tied {res['acc_nontied']:.3f} "
            f"8/9 {res['acc_8_9']:.3f} ({res['train_s']:.0f}s)"
        )
        return {**res, "_student": st} if keep_student else res

    def images_of(self, ids: Sequence[str]) -> tuple[list[Image.Image], list[str]]:
        return [self.store.image(i) for i in ids], [str(self.store.row(i)["label"]) for i in ids]

    def pool_images(self, idx: Sequence[int]) -> tuple[list[Image.Image], list[str]]:
        return self.ds.pool.images(list(idx)), [str(self.ds.pool.labels[i]) for i in idx]

    def close(self) -> None:
        self.crafter.close()


_STUDENT_ID: str | None = None


def student_id() -> str:
    """Hash of loop/student.py, so cached scores are recomputed when the student changes."""
    global _STUDENT_ID
    if _STUDENT_ID is None:
        import datacrafter_widget.loop.student as m

        _STUDENT_ID = hashlib.sha256(Path(m.__file__).read_bytes()).hexdigest()[:10]
    return _STUDENT_ID


def row(track: str, seed: int, arm: str, n: int, res: dict, **extra: Any) -> dict:
    return {
        "track": track,
        "seed": seed,
        "arm": arm,
        "N": n,
        **{k: v for k, v in res.items() if not k.startswith("_")},
        **extra,
    }


def more_of(ctx: Ctx, arm_no: int, **kw: Any) -> Callable[[list[str], int, int], list[str]]:
    """Top-up generator for `Ctx.filled`: k more images of each short class, as the arm made them."""
    prompts = kw.pop("prompts", None)

    def more(classes: list[str], k: int, attempt: int) -> list[str]:
        extra = {"prompts": {c: prompts[c] for c in classes}} if prompts is not None else {}
        return ctx.generate(k, ctx.top_up_offset(arm_no, attempt), classes=classes, **kw, **extra)

    return more


def prompts_of(ctx: Ctx, ids: Sequence[str]) -> dict[str, list[str]]:
    """The distinct prompts each class's images were made with (for topping up a custom-prompt arm)."""
    s = ctx.store.samples.set_index("id").loc[list(ids)]
    return {c: list(dict.fromkeys(s.loc[s["label"] == c, "prompt"].astype(str))) for c in CLASSES}


def gap_descriptions(ctx: Ctx, k: int, n_captions: int) -> dict[str, list[str]]:
    """k target descriptions per class: the contexts (the caption without its object) of captions of
    unlabelled pool images, the class's own captions spread farthest-first (as the caption-pool arm)."""
    from datacrafter_widget.loop.strategies import spread_first

    rng = np.random.default_rng(700 + ctx.seed)
    idx = rng.choice(len(ctx.ds.pool), size=min(n_captions, len(ctx.ds.pool)), replace=False).tolist()
    attrs = ctx.models.captioner.attributes(ctx.ds.pool.images(idx))
    out: dict[str, list[str]] = {}
    for c in CLASSES:
        mine = [a for a in attrs if a["digit"] == c] or attrs
        caps = [caption_for(a["digit"], a["fg"], a["bg"], a["thickness"], a["slant"]) for a in mine]
        order = spread_first(ctx.models.embedder.embed_texts(caps))
        ctxs = [caps[i].split(f" {mine[i]['digit']} ", 1)[-1] for i in order]
        out[c] = list(dict.fromkeys(ctxs))[:k]
    return out


# ---- GAP track -----------------------------------------------------------------------------------
def run_gap(ctx: Ctx, ns: list[int], args) -> list[dict]:
    seed, kmax = ctx.seed, math.ceil(max(ns) / len(CLASSES))
    margin = 3
    base_ids = ctx.arm("base_class", lambda: ctx.generate(args.gap_base + margin, 1, strategy="class"))
    base_acc = ctx.filled("base_class", base_ids, args.gap_base, more_of(ctx, 6, strategy="class"))
    base = take(base_acc, args.gap_base * len(CLASSES), seed)
    if args.generate_only:  # search and gap are scored by the base student: they need the real run
        ctx.arm("class_more", lambda: ctx.generate(kmax + margin, 2, strategy="class"))
        return []
    none = ctx.score("none", lambda: ctx.images_of(base), keep_student=True)
    student0 = none.pop("_student")
    rows = [row("gap", seed, "none", 0, none, share_high_loss=float("nan"))]
    # (real images only, no class-prompt base: the loop track's "none" row, same data and seed)

    # The base student's high-loss (class, background) cells, measured on labelled pool renders.
    rng = np.random.default_rng(900 + seed)
    pidx = rng.choice(len(ctx.ds.pool), size=min(1000, len(ctx.ds.pool)), replace=False).tolist()
    pf = ctx.ds.pool.frame.iloc[pidx]
    with torch.no_grad():
        logits = student0.logits(ctx.ds.pool.images(pidx))
    y = torch.tensor([CLASSES.index(str(l)) for l in pf["label"]])
    ce = torch.nn.functional.cross_entropy(logits, y, reduction="none").numpy()
    cells = (
        pd.DataFrame({"label": pf["label"].astype(str).to_numpy(), "background": pf["background"].to_numpy(), "ce": ce})
        .groupby(["label", "background"])["ce"]
        .mean()
    )
    high = set(cells.sort_values(ascending=False).index[: max(1, len(cells) // 4)])

    def share_high(labels: Sequence[str], backgrounds: Sequence[str]) -> float:
        return (
            float(np.mean([(str(l), str(b)) in high for l, b in zip(labels, backgrounds)]))
            if len(labels)
            else float("nan")
        )

    # ideal: real pool images (backgrounds read by the checker too, for a like-for-like share).
    pool = ctx.pool_rows(kmax)
    for n in ns if "ideal" in args.arms else []:
        idx = take(pool, n, seed)
        bg = ctx.checker(ctx.ds.pool.images(idx))["background"].tolist()

        def base_plus_pool(idx=idx) -> tuple[list[Image.Image], list[str]]:
            bi, bl = ctx.images_of(base)
            pi, pl = ctx.pool_images(idx)
            return bi + pi, bl + pl

        res = ctx.score(f"ideal+base|{n}", base_plus_pool)
        rows.append(
            row("gap", seed, "ideal", n, res, share_high_loss=share_high([ctx.ds.pool.labels[i] for i in idx], bg))
        )

    def add_rows(arm: str, ids_by_class: dict[str, list[str]], key: str = "", fill: str = "") -> None:
        for n in ns:
            ids = take(ids_by_class, n, seed)
            chk = ctx.check(ids)
            labels = [str(ctx.store.row(i)["label"]) for i in ids]
            res = ctx.score(f"{key or arm}|{n}", lambda ids=ids: ctx.images_of(base + ids))
            rows.append(
                row(
                    "gap",
                    seed,
                    arm,
                    n,
                    res,
                    share_high_loss=share_high(labels, chk["background"].tolist()),
                    checker_digit_ok=float(np.mean(chk["digit"].to_numpy() == np.array(labels))),
                    top_bg_share=top_background_share(labels, chk["background"].tolist()),
                    used=len(ids),
                    **ctx.fills.get(fill or key or arm, {}),
                )
            )

    if "class" in args.arms:
        class_ids = ctx.arm("class_more", lambda: ctx.generate(kmax + margin, 2, strategy="class"))
        add_rows(
            "class", ctx.filled("class_more", class_ids, kmax, more_of(ctx, 1, strategy="class")), fill="class_more"
        )

    # search: for each class, every background word, scored by the base student's loss on a few images.
    def make_search() -> dict:
        cand = {c: [f"a {c} on a {b} background" for b in BGS] for c in CLASSES}
        ids = ctx.generate(args.search_batch, 3, strategy="custom", prompts=cand, filter=False)
        s = ctx.store.samples.set_index("id").loc[ids]
        losses: dict[str, dict[str, float]] = {}
        for c in CLASSES:
            for p in cand[c]:
                got = s.index[(s["label"] == c) & (s["prompt"] == p)].tolist()
                with torch.no_grad():
                    lg = student0.logits([ctx.store.image(i) for i in got])
                losses.setdefault(c, {})[p] = (
                    float(torch.nn.functional.cross_entropy(lg, torch.full((len(got),), CLASSES.index(c))).item())
                    if got
                    else float("-inf")
                )
        best = {c: sorted(v, key=lambda p: -v[p])[:2] for c, v in losses.items()}
        final = ctx.generate(kmax + margin, 4, strategy="custom", prompts=best)
        return {"ids": final, "candidate_ids": ids, "losses": losses, "chosen": best}

    if "search" in args.arms:
        search = ctx.arm("search", make_search)
        more = more_of(ctx, 4, strategy="custom", prompts=search["chosen"])
        add_rows("search", ctx.filled("search", search["ids"], kmax, more))

    # gap: guided adversarial prompts against the base student, image guidance toward unlabelled pool images.
    def make_gap(classes: Sequence[str] = CLASSES, per_class: int = kmax + margin, attempt: int = -1) -> dict:
        from datacrafter_widget.controller.rounds import gap_round
        from datacrafter_widget.loop.gap import GapConfig
        from datacrafter_widget.loop.class_filter import ClassFilter

        gen = ctx.models.generator
        every = max(1, len(ctx.ds.pool) // args.gap_target_images)
        target = ctx.ds.pool.images(list(range(0, len(ctx.ds.pool), every))[: args.gap_target_images])
        kept = args.gap_sources != "none"  # img2img from labelled images, digit strokes kept
        if args.gap_sources == "class":  # fresh class-prompt images the class filter accepted: new digit shapes
            made = ctx.arm(
                f"gap_sources|{attempt}" + ("" if list(classes) == list(CLASSES) else "|" + ",".join(classes)),
                lambda: ctx.generate(per_class, ctx.top_up_offset(8, attempt), strategy="class", classes=list(classes)),
            )
            ok = accepted(ctx.store, made)
            labels = ctx.store.samples.set_index("id").loc[made, "label"].astype(str)
            sources: Any = {c: ok[c] or labels.index[labels == c].tolist() for c in classes}
        else:
            sources = "train" if kept else None
        descs = gap_descriptions(ctx, args.gap_candidates, args.pool_captions) if args.gap_init == "captions" else None
        cfg = GapConfig(
            steps=args.gap_steps,
            lr=args.gap_lr,
            n_tokens=4,
            sampler_steps=4,
            batch=3,
            final_steps=args.gap_final_steps or (4 if kept else args.sampler_steps or gen.default_steps),
            guidance=gen.default_guidance,
            template="a photo of a {class}",
            image_weight=10.0,
            loss=args.gap_loss,
            token_sets=args.gap_sets,
            strength=args.gap_strength,
            init="target" if descs else "class",
            class_weight=args.gap_class_weight,
        )
        ids, res = gap_round(
            ctx.store,
            gen,
            student0,
            list(classes),
            target={c: descs[c] for c in classes} if descs else None,
            target_images=target,
            embedder=ctx.models.embedder,
            per_class=per_class,
            round=ctx.crafter.next_round(),
            seed=seed if attempt < 0 else seed * 1_000_000 + ctx.top_up_offset(7, attempt),
            config=cfg,
            sources=sources,
            masks="plain-background" if kept else None,
        )
        flt = ClassFilter(ctx.models.embedder, CLASSES)
        flt.fit(ctx.models.embedder.embed_images(ctx.real_images), ctx.real_labels)
        checks = flt.check(
            ctx.models.embedder.embed_images([ctx.store.image(i) for i in ids]),
            [ctx.store.row(i)["label"] for i in ids],
        )
        flagged = [i for i, (f, _) in zip(ids, checks) if f]
        if flagged:
            ctx.store.update(flagged, flag="off-class")
        adv = {c: [round(h["adversarial"], 3) for h in r.history] for c, r in res.items()}
        aims = {c: r.targets for c, r in res.items()}
        chosen = {c: json.loads(r.target) if r.target.startswith("[") else r.target for c, r in res.items()}
        screen = {c: r.screen for c, r in res.items()}
        return {
            "ids": list(ids),
            "flagged": len(flagged),
            "adversarial": adv,
            "targets": aims,
            "descriptions": chosen,
            "screen": screen,
        }

    if "gap" in args.arms:
        gkey = f"gap|steps={args.gap_steps}"
        if (args.gap_loss, args.gap_sets, args.gap_sources) != ("uniform", 1, "none"):
            gkey += (
                f"|loss={args.gap_loss}|sets={args.gap_sets}|src={args.gap_sources}|s={args.gap_strength}"
                f"|final={args.gap_final_steps}|lr={args.gap_lr}"
            )
            if args.gap_target_images != 40:
                gkey += f"|tgt={args.gap_target_images}"
            if args.gap_init != "class":
                gkey += f"|init={args.gap_init}"
            if args.gap_class_weight:
                gkey += f"|cw={args.gap_class_weight}"
            if args.gap_init == "captions" and args.gap_candidates != args.gap_sets:
                gkey += f"|cand={args.gap_candidates}"
        g = ctx.arm(gkey, make_gap)

        def more_gap(classes: list[str], k: int, attempt: int) -> list[str]:
            return make_gap(classes, k, attempt)["ids"]

        # Scored under the arm key: images made with other settings are another arm.
        add_rows(
            "gap", ctx.filled(gkey, g["ids"], kmax, more_gap, cap=2), key="gap" if gkey == "gap|steps=10" else gkey
        )
    return rows


# ---- loop track ----------------------------------------------------------------------------------
def target_histograms(ctx: Ctx, n: int = 1000) -> dict[str, np.ndarray]:
    """Attribute histograms of unlabelled pool images, read by the independent checker."""
    rng = np.random.default_rng(300 + ctx.seed)
    idx = rng.choice(len(ctx.ds.pool), size=min(n, len(ctx.ds.pool)), replace=False).tolist()
    got = ctx.checker(ctx.ds.pool.images(idx))
    return {"background": hist(got["background"], BGS), "foreground": hist(got["foreground"], FGS)}


def simulated_person(ctx: Ctx, ids: Sequence[str], target: dict[str, np.ndarray], slack: float) -> dict[str, Any]:
    """Lasso wrong digits and the excess images of over-represented background / foreground cells.

    The person looks at the whole round on the map. A cell is over-represented when its share of
    the round's images exceeds the target share by more than `slack`; the person lassoes the excess
    (images beyond the target count), taken from the classes in turn, so that each class gives up
    its part: one lasso per cell, as on the map coloured by that attribute. Wrong digits carry the digit they show as the unwanted label (what a person would
    type); cell lassos carry no words: evolution has to find what the lassoed images share.
    """
    chk = ctx.check(ids)
    labels = pd.Series([str(ctx.store.row(i)["label"]) for i in ids], index=list(ids))
    bad_digit: dict[str, list[str]] = {}
    bad_cell: list[list[str]] = []
    for i in ids:
        if chk.at[i, "digit"] != labels[i]:
            bad_digit.setdefault(chk.at[i, "digit"], []).append(i)
    wrong = {i for v in bad_digit.values() for i in v}
    mine = [i for i in ids if i not in wrong]
    for attr, names in (("background", BGS), ("foreground", FGS)):
        vals = chk.loc[mine, attr]
        for j, name in enumerate(names):
            cell = vals.index[vals == name].tolist()
            excess = len(cell) - int(round(target[attr][j] * len(mine)))
            if not mine or len(cell) / len(mine) <= target[attr][j] + slack or excess <= 0:
                continue
            taken = {i for group in bad_cell for i in group}
            by_class = [[i for i in cell if labels[i] == c and i not in taken] for c in CLASSES]
            turns = [
                i for k in range(max(map(len, by_class))) for group in by_class if k < len(group) for i in [group[k]]
            ]
            bad_cell.append(turns[:excess])
    for digit, group in bad_digit.items():
        ctx.crafter.feedback(bad=group, bad_labels=[digit])
    for group in bad_cell:  # one lasso per cell, as on the map coloured by that attribute
        if group:
            ctx.crafter.feedback(bad=group)
    return {"checked": len(ids), "wrong_digit": len(wrong), "cell_lassoed": sum(map(len, bad_cell))}


def run_loop(ctx: Ctx, ns: list[int], args) -> list[dict]:
    seed, kmax = ctx.seed, math.ceil(max(ns) / len(CLASSES))
    margin = max(3, kmax // 5)
    target = target_histograms(ctx)
    rows = [row("loop", seed, "none", 0, ctx.score("none", lambda: ([], [])))]

    def stats(labels: Sequence[str], chk: pd.DataFrame) -> dict[str, float]:
        return {
            "tv_background": tv(hist(chk["background"], BGS), target["background"]),
            "tv_foreground": tv(hist(chk["foreground"], FGS), target["foreground"]),
            "checker_digit_ok": float(np.mean(chk["digit"].to_numpy() == np.array(labels)))
            if len(labels)
            else float("nan"),
            "checker_8_9_ok": float(
                np.mean([d == l for d, l in zip(chk["digit"], labels) if l in ("8", "9")] or [np.nan])
            ),
        }

    pool = ctx.pool_rows(kmax)
    for n in ns:
        idx = take(pool, n, seed)
        labels = [str(ctx.ds.pool.labels[i]) for i in idx]
        rows.append(
            row(
                "loop",
                seed,
                "ideal",
                n,
                ctx.score(f"ideal|{n}", lambda idx=idx: ctx.pool_images(idx)),
                **stats(labels, ctx.checker(ctx.ds.pool.images(idx))),
            )
        )

    def add_rows(
        arm: str, ids_by_class: dict[str, list[str]], extra: dict | None = None, key: str = "", c: Ctx = ctx
    ) -> None:
        for n in ns:
            ids = take(ids_by_class, n, seed)
            labels = [str(c.store.row(i)["label"]) for i in ids]
            rows.append(
                row(
                    "loop",
                    seed,
                    arm,
                    n,
                    c.score(f"{key or arm}|{n}", lambda ids=ids: c.images_of(ids)),
                    used=len(ids),
                    **stats(labels, c.check(ids)),
                    **(extra or {}),
                    **c.fills.get(key or arm, {}),
                )
            )

    class_ids = ctx.arm("class", lambda: ctx.generate(kmax + margin, 1, strategy="class"))
    add_rows("class", ctx.filled("class", class_ids, kmax, more_of(ctx, 1, strategy="class")))
    # The loop arm runs in a project of its own, as a user's would: round 1 with the class arm's seeds
    # (the same images), the person's lassos, evolution, the evolved rounds and their top-ups. In a
    # shared project, evolution read the class arm's top-ups and other loop variants as kept images.
    # One project per loop setting and evolution code: a variant never reads another's rounds.
    lkey = loop_key(args)
    sub = "loop-arm-" + hashlib.sha256(lkey.encode()).hexdigest()[:8]
    lctx = Ctx(ctx.track, seed, ctx.spurious, ctx.models, ctx.checker, args, sub=sub)
    try:
        _run_loop_arm(lctx, lkey, kmax, margin, target, args, add_rows)
    finally:
        lctx.close()
    return rows


def loop_key(args) -> str:
    """The loop arm's cache key: its settings and the evolution code (a changed evolution.py makes new images)."""
    import datacrafter_widget.loop.balance as balance
    import datacrafter_widget.loop.evolution as evo
    import datacrafter_widget.starter.prompts as grammar

    code = b"".join(Path(m.__file__).read_bytes() for m in (evo, balance, grammar) if m.__file__)
    ekey = hashlib.sha256(code).hexdigest()[:8]
    return (
        f"loop|pop={args.population}|gen={args.generations}|b={args.evolve_batch}|slack={args.slack}"
        f"|seen={args.feedback_per_class or 'all'}|person=lasso-per-cell|evolution={ekey}|own-project"
    )


def _run_loop_arm(ctx: Ctx, lkey: str, kmax: int, margin: int, target: dict[str, np.ndarray], args, add_rows) -> None:
    """The loop arm in its own project: round 1 of class prompts, then `--loop-rounds` times the person's
    lassos on the last round, evolve, an evolved round (topped up to N); the arm is the last round."""
    seed = ctx.seed
    class_ids = ctx.arm("class", lambda: ctx.generate(kmax + margin, 1, strategy="class"))

    def evolved_round(r: int, shown: list[str]) -> dict:
        # The person looks at the last round: every image the class filter accepted and nobody marked
        # (they are all on the map, and evolution reads an image left unmarked as kept), or the first
        # `feedback_per_class` of each class; then evolve and generate a round with the new prompts.
        s = ctx.store.samples.set_index("id").loc[shown]
        ok = (s["flag"].fillna("") == "") & (~s["feedback"].fillna("").isin(["bad", "removed"]))
        seen = [i for c in CLASSES for i in s.index[(s["label"] == c) & ok].tolist()[: args.feedback_per_class or None]]
        fb = simulated_person(ctx, seen, target, args.slack)
        t = time.time()
        result = ctx.crafter.evolve(
            population=args.population, generations=args.generations, batch=args.evolve_batch, progress=False
        )
        evolve_s = time.time() - t
        offset = 2 if r == 1 else 100 * r
        ids = list(
            ctx.crafter.generate_evolved(
                per_class=kmax + margin, seed=seed * 1_000_000 + offset, steps=args.sampler_steps, progress=False
            )
        )
        evolved = set(result.prompts)
        rest = [c for c in CLASSES if c not in evolved]
        if rest:  # classes without feedback keep their class prompts
            ids += ctx.generate(kmax + margin, offset + 1, strategy="class", classes=rest)
        return {
            "ids": ids,
            "feedback": fb,
            "evolve_s": evolve_s,
            "prompts": result.prompts,
            "negative_prompts": result.negative_prompts,
            "report": result.report(),
        }

    def more_loop(lp: dict, r: int) -> Callable[[list[str], int, int], list[str]]:
        def more(classes: list[str], k: int, attempt: int) -> list[str]:
            evolved = [c for c in classes if c in lp["prompts"]]
            rest = [c for c in classes if c not in lp["prompts"]]
            off = seed * 1_000_000 + ctx.top_up_offset(4 + r, attempt)
            ids = []
            if evolved:
                ids += ctx.crafter.generate_evolved(
                    per_class=k, classes=evolved, seed=off, steps=args.sampler_steps, progress=False
                )
            if rest:
                ids += ctx.generate(k, ctx.top_up_offset(4 + r, attempt) + 500, strategy="class", classes=rest)
            return list(ids)

        return more

    shown, key, lassos = list(class_ids), lkey, {"wrong_digit_lassoed": 0, "cell_lassoed": 0}
    for r in range(1, args.loop_rounds + 1):
        key = lkey if r == 1 else f"{lkey}|round{r}"
        lp = ctx.arm(key, lambda r=r, shown=shown: evolved_round(r, shown))
        lassos = {
            "wrong_digit_lassoed": lassos["wrong_digit_lassoed"] + lp["feedback"]["wrong_digit"],
            "cell_lassoed": lassos["cell_lassoed"] + lp["feedback"]["cell_lassoed"],
        }
        acc = ctx.filled(key, lp["ids"], kmax, more_loop(lp, r))
        shown = [i for c in CLASSES for i in acc[c]]
    add_rows("loop", acc, lassos, key=key, c=ctx)


# ---- captions track ------------------------------------------------------------------------------
def run_captions(ctx: Ctx, ns: list[int], args) -> list[dict]:
    seed, kmax = ctx.seed, math.ceil(max(ns) / len(CLASSES))
    margin = max(3, kmax // 5)
    rows = [row("captions", seed, "none", 0, ctx.score("none", lambda: ([], [])))]

    def stats(chk: pd.DataFrame) -> dict[str, float]:
        return {
            "H_background": entropy_bits(chk["background"]),
            "H_foreground": entropy_bits(chk["foreground"]),
            "H_joint": entropy_bits([f"{a}/{b}" for a, b in zip(chk["foreground"], chk["background"])]),
        }

    pool = ctx.pool_rows(kmax)
    for n in ns:
        idx = take(pool, n, seed)
        rows.append(
            row(
                "captions",
                seed,
                "ideal",
                n,
                ctx.score(f"ideal|{n}", lambda idx=idx: ctx.pool_images(idx)),
                **stats(ctx.checker(ctx.ds.pool.images(idx))),
            )
        )

    def add_rows(arm: str, ids_by_class: dict[str, list[str]], fill: str = "") -> None:
        for n in ns:
            ids = take(ids_by_class, n, seed)
            rows.append(
                row(
                    "captions",
                    seed,
                    arm,
                    n,
                    ctx.score(f"{fill or arm}|{n}", lambda ids=ids: ctx.images_of(ids)),
                    used=len(ids),
                    **stats(ctx.check(ids)),
                    **ctx.fills.get(fill or arm, {}),
                )
            )

    class_ids = ctx.arm("class", lambda: ctx.generate(kmax + margin, 1, strategy="class"))
    add_rows("class", ctx.filled("class", class_ids, kmax, more_of(ctx, 1, strategy="class")))
    if "caption-train" in args.arms.split(","):
        train_ids = ctx.arm("caption-train", lambda: ctx.generate(kmax + margin, 2, strategy="caption"))
        add_rows("caption-train", ctx.filled("caption-train", train_ids, kmax, more_of(ctx, 2, strategy="caption")))

    def make_pool_captions() -> dict:
        # Caption unlabelled pool images (the starter's CLIP-retrieval captioner); a caption goes to the
        # class its digit word names, so each class gets the contexts of pool images that look like it.
        rng = np.random.default_rng(700 + seed)
        idx = rng.choice(len(ctx.ds.pool), size=min(args.pool_captions, len(ctx.ds.pool)), replace=False).tolist()
        attrs = ctx.models.captioner.attributes(ctx.ds.pool.images(idx))
        by_class: dict[str, list[str]] = {c: [] for c in CLASSES}
        for a in attrs:
            by_class[a["digit"]].append(caption_for(a["digit"], a["fg"], a["bg"], a["thickness"], a["slant"]))
        from datacrafter_widget.loop.strategies import CAPTION_TEMPLATE, fill, spread_first

        prompts = {}
        for c in CLASSES:
            caps = by_class[c] or [
                caption_for(c, a["fg"], a["bg"], a["thickness"], a["slant"]) for a in attrs[: kmax + margin]
            ]
            if args.caption_order == "spread":  # every prefix spans the class's captions (N=100 uses the first 10)
                caps = [caps[i] for i in spread_first(ctx.models.embedder.embed_texts(caps))]
            prompts[c] = [fill(CAPTION_TEMPLATE, c, cap) for cap in caps[: kmax + margin]]
        ids = ctx.generate(kmax + margin, 4, strategy="custom", prompts=prompts)
        return {"ids": ids, "captioned": len(idx), "per_class_captions": {c: len(v) for c, v in by_class.items()}}

    pkey = f"caption-pool|{args.pool_captions}" + ("|order=spread" if args.caption_order == "spread" else "")
    pool_ids = ctx.arm(pkey, make_pool_captions)["ids"]
    more = more_of(ctx, 3, strategy="custom", prompts=prompts_of(ctx, pool_ids))
    add_rows("caption-pool", ctx.filled(pkey, pool_ids, kmax, more), fill=pkey)
    return rows


RUNNERS = {"gap": (run_gap, 0.95), "loop": (run_loop, 0.95), "captions": (run_captions, 0.0)}


# ---- tables -----------------------------------------------------------------------------------------
def ci95(x: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean (nan with one seed)."""
    x = np.asarray(x, dtype=float)
    x = x[~np.isnan(x)]
    if len(x) < 2:
        return float("nan")
    from scipy import stats

    return float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))


# Orderings each track tests, read as paired differences (both arms of a pair share a seed's data,
# test split and student seed, so the per-seed difference removes most of the seed-to-seed spread).
PAIRS = {
    "gap": [("search", "class"), ("gap", "class"), ("gap", "search"), ("ideal", "class")],
    "loop": [("loop", "class"), ("ideal", "class")],
    "captions": [("caption-pool", "class"), ("caption-train", "class"), ("ideal", "caption-pool")],
}


def paired_differences(track: str, df: pd.DataFrame) -> list[str]:
    """Per N: mean of (a - b) accuracy over the seeds both arms have, its 95% t-interval and the sign."""
    lines = ["", "paired accuracy differences (mean over seeds ±95% t-interval; 'holds' = interval above 0)"]
    for a, b in PAIRS[track]:
        for n in sorted(df[df["arm"] == a]["N"].unique()):
            x = df[(df["arm"] == a) & (df["N"] == n)].set_index("seed")["accuracy"]
            y = df[(df["arm"] == b) & (df["N"] == n)].set_index("seed")["accuracy"]
            d = (x - y).dropna()
            if d.empty:
                continue
            h = ci95(d.to_numpy())
            verdict = (
                ""
                if math.isnan(h)
                else ("holds" if d.mean() - h > 0 else "reversed" if d.mean() + h < 0 else "not established")
            )
            per_seed = " ".join(f"{v:+.3f}" for v in d)
            lines.append(f"  N={n} {a} - {b}: {d.mean():+.3f} ±{h:.3f} over {len(d)} seed(s) [{per_seed}] {verdict}")
    return lines


def summarise(track: str, rows: list[dict], args) -> str:
    df = pd.DataFrame(rows)
    out = Path(args.results) / track
    out.mkdir(parents=True, exist_ok=True)
    df.to_csv(out / "rows.csv", index=False)
    metrics = [c for c in df.columns if c.startswith(("acc", "share", "tv_", "H_", "checker_")) or c == "used"]
    order = [a for a in ARMS[track] + ["real-only (reference)"] if a in set(df["arm"])]
    summary = []
    for (arm, n), g in df.groupby(["arm", "N"]):
        rec: dict[str, Any] = {"arm": arm, "N": int(n), "seeds": int(g["seed"].nunique())}
        for m in metrics:
            rec[m] = float(g[m].mean())
            rec[m + "_ci95"] = ci95(g[m].to_numpy())
        summary.append(rec)
    sm = pd.DataFrame(summary)
    sm["order"] = sm["arm"].map({a: k for k, a in enumerate(order)})
    sm = sm.sort_values(["order", "N"]).drop(columns="order")
    sm.to_csv(out / "summary.csv", index=False)
    show = {
        "gap": ["accuracy", "acc_nontied", "share_high_loss", "top_bg_share", "checker_digit_ok", "used", "short"],
        "loop": ["accuracy", "acc_8_9", "tv_background", "tv_foreground", "checker_8_9_ok", "used", "short"],
        "captions": ["accuracy", "H_background", "H_foreground", "H_joint"]
        + [f"acc_bg_{b}" for b in BGS]
        + ["used", "short"],
    }[track]
    show = [m for m in show if m in sm.columns]

    def cell(r, m):
        v, h = r[m], r[m + "_ci95"]
        if isinstance(v, float) and math.isnan(v):
            return ""
        return f"{v:.3f}" + ("" if math.isnan(h) else f" ±{h:.3f}") if m != "used" else f"{v:.1f}"

    lines = [
        f"track {track}: mean ±95% t-interval over {df['seed'].nunique()} seed(s) "
        f"(seeds {sorted(df['seed'].unique().tolist())}); student {student_id()}, steps {args.student_steps or 'default'}, width {args.width or 'default'}; "
        f"test = {len(CLASSES) * 30} held-out scans x 5 backgrounds"
    ]
    tab = pd.DataFrame([{"arm": r["arm"], "N": r["N"], **{m: cell(r, m) for m in show}} for _, r in sm.iterrows()])
    lines.append(tab.to_string(index=False))
    if track == "loop":
        lines.append("")
        lines.append(
            "share of the class -> ideal accuracy gap closed by the loop, per N: (loop - class) / (ideal - class)"
        )
        for n in sorted(df[df["arm"] == "loop"]["N"].unique()):
            m = {a: float(df[(df["arm"] == a) & (df["N"] == n)]["accuracy"].mean()) for a in ("class", "loop", "ideal")}
            gap = m["ideal"] - m["class"]
            lines.append(
                f"  N={n}: class {m['class']:.3f}, loop {m['loop']:.3f}, ideal {m['ideal']:.3f} -> "
                f"{(m['loop'] - m['class']) / gap if gap > 0 else float('nan'):.2f}"
            )
    lines += paired_differences(track, df)
    text = "\n".join(lines)
    (out / "table.txt").write_text(text + "\n")
    atomic_json(
        out / "summary.json", {"args": vars(args), "student": student_id(), "rows": sm.to_dict(orient="records")}
    )
    return text


# ---- models, checker, main --------------------------------------------------------------------------
def parse_seeds(seeds: str | None, n_seeds: int | None) -> list[int]:
    """--seeds is always a list ('3' is seed 3); a count is spelled --n-seeds. Default: --n-seeds 3."""
    if seeds is not None and n_seeds is not None:
        raise SystemExit("give --seeds (a list, e.g. 0,1,2) or --n-seeds (a count), not both")
    if seeds is None:
        return list(range(3 if n_seeds is None else int(n_seeds)))
    try:
        out = [int(x) for x in seeds.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--seeds {seeds!r}: give seeds as a comma-separated list of integers, e.g. 0,1,2") from None
    if not out:
        raise SystemExit("--seeds is empty: give at least one seed, e.g. --seeds 0")
    return out


def load_checker(cache: Path, steps: int) -> Callable[[list[Image.Image]], pd.DataFrame]:
    """The starter's independent checker: the shipped weights when they were trained with `steps`, else trained
    once on real renders and kept as safetensors in the cache."""
    from safetensors.torch import load_file, save_file

    from datacrafter_widget.starter import checker as ck

    shipped = ck.load_checker() if ck.WEIGHTS.is_file() else None
    if shipped is not None and int(shipped.settings.get("steps", 0)) == steps:
        log(f"using the shipped checker ({steps} steps; held-out {shipped.heldout_accuracy})")
        return lambda images: pd.DataFrame(shipped.predict(list(images)))
    path = cache / "checker.safetensors"
    if path.exists():
        net = ck.CheckerNet()
        net.load_state_dict(load_file(str(path)))
        inst = ck.Checker(net=net.eval())
    else:
        log(f"training the checker ({steps} steps)")
        inst = ck.train_checker(steps=steps, threads=torch.get_num_threads())
        tmp = cache / "checker.tmp.safetensors"
        save_file({k: v.contiguous() for k, v in inst.net.state_dict().items()}, str(tmp))
        os.replace(tmp, path)
        atomic_json(cache / "checker.json", {"heldout_accuracy": inst.heldout_accuracy, "steps": steps})
    return lambda images: pd.DataFrame(inst.predict(list(images)))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--track", default="all", help="gap | loop | captions | all (comma-separated)")
    p.add_argument("--seeds", default=None, help="the seeds to run, a list: 0,1,2 (or one seed: 3)")
    p.add_argument("--n-seeds", type=int, default=None, help="a count instead of a list: 3 runs seeds 0,1,2")
    p.add_argument("--ns", default=None, help="N grid (default: gap 10,25,50; loop and captions 100,200)")
    p.add_argument("--shots", type=int, default=5)
    p.add_argument(
        "--student-steps",
        type=int,
        default=None,
        help="optimiser steps per student, the same at every N (default: the student's)",
    )
    p.add_argument("--width", type=int, default=None, help="student CNN width (default: the student's)")
    p.add_argument("--sampler-steps", type=int, default=8, help="generator sampler steps")
    p.add_argument(
        "--gap-base", type=int, default=10, help="class-prompt images per class every GAP-track arm starts from"
    )
    p.add_argument("--gap-steps", type=int, default=30, help="GAP token optimisation steps per class")
    p.add_argument("--gap-lr", type=float, default=2e-2)
    p.add_argument(
        "--gap-loss",
        default="true-label",
        choices=["uniform", "true-label", "other-class"],
        help="GAP's adversarial loss (other-class: each token set aims at a different failure mode)",
    )
    p.add_argument("--gap-sets", type=int, default=4, help="GAP token sets per class")
    p.add_argument(
        "--gap-candidates",
        type=int,
        default=8,
        help="with --gap-init captions: caption contexts per class that GAP screens for its token sets",
    )
    p.add_argument(
        "--gap-class-weight",
        type=float,
        default=1.0,
        help="GAP's class-keeping term (zero-shot CLIP cross entropy to the class; 0 = off)",
    )
    p.add_argument(
        "--gap-init",
        default="captions",
        choices=["class", "captions"],
        help="GAP token sets start at the class name, or each at the context of one caption of an unlabelled "
        "pool image (spread over the class's captions) and is guided toward it",
    )
    p.add_argument(
        "--fill-cap", type=int, default=4, help="top-up attempts per arm before a short class is reported as short"
    )
    p.add_argument(
        "--gap-target-images",
        type=int,
        default=200,
        help="unlabelled pool images GAP is guided toward (and reads the student's failure modes on)",
    )
    p.add_argument(
        "--gap-sources",
        default="none",
        choices=["class", "train", "none"],
        help="img2img with the digit strokes kept, from fresh class-prompt images (class) or the real train "
        "images (train); none: text-to-image",
    )
    p.add_argument("--gap-strength", type=float, default=0.8, help="GAP img2img strength from the sources")
    p.add_argument(
        "--gap-final-steps",
        type=int,
        default=None,
        help="sampler steps of GAP's final images (default: with sources, the 4 DDIM steps it optimised through)",
    )
    p.add_argument(
        "--search-batch", type=int, default=3, help="images per candidate prompt in the attribute-word search"
    )
    p.add_argument(
        "--feedback-per-class",
        type=int,
        default=0,
        help="class-prompt images per class the simulated person sees (0: all)",
    )
    p.add_argument(
        "--slack", type=float, default=0.05, help="share above the target at which a cell is over-represented"
    )
    p.add_argument(
        "--loop-rounds",
        type=int,
        default=1,
        help="loop arm: rounds of (the person's lassos on the last round, evolve, an evolved round)",
    )
    p.add_argument("--population", type=int, default=4)
    p.add_argument("--generations", type=int, default=1)
    p.add_argument("--evolve-batch", type=int, default=4)
    p.add_argument("--pool-captions", type=int, default=600, help="unlabelled pool images to caption")
    p.add_argument(
        "--caption-order",
        default="spread",
        choices=["spread", "random"],
        help="order of a class's pool captions: farthest-point (every prefix spans them) or as drawn",
    )
    p.add_argument(
        "--arms",
        default="all",
        help="the arms to run besides none (GAP track: search, gap, class, ideal; captions: caption-train)",
    )
    p.add_argument(
        "--generate-only", action="store_true", help="only fill the image cache (arms that do not need the student)"
    )
    p.add_argument("--stop-after", default="", help="HH:MM (local clock): start no new seed after this time")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", default=str(REPO / "benchmarks" / ".cache"))
    p.add_argument("--checker-steps", type=int, default=600)
    p.add_argument("--results", default=str(RESULTS), help="folder for <track>/ tables")
    p.add_argument(
        "--merge",
        default="",
        help="report only: summarise these rows.csv files (comma-separated; "
        "runs of other seeds) into --results, without running anything",
    )
    args = p.parse_args()
    if args.merge:
        global _STUDENT_ID
        files = [Path(f) for f in args.merge.split(",") if f]
        frames = [pd.read_csv(f) for f in files]
        # The student the rows were scored with (summary.json beside rows.csv), not today's file.
        ran = {
            json.loads((f.parent / "summary.json").read_text())["student"]
            for f in files
            if (f.parent / "summary.json").is_file()
        }
        if ran:
            _STUDENT_ID = "+".join(sorted(ran))
        df = pd.concat(frames).drop_duplicates(subset=["track", "seed", "arm", "N"], keep="last")
        for track, g in df.groupby("track"):
            print(summarise(str(track), g.to_dict(orient="records"), args))
        return 0
    torch.set_num_threads(args.threads)
    args.arms = "search,gap,class,ideal,caption-train" if args.arms == "all" else args.arms
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    if not (cache / ".gitignore").exists():
        (cache / ".gitignore").write_text("*\n")
    tracks = TRACKS if args.track == "all" else [t for t in args.track.split(",") if t]
    seeds = parse_seeds(args.seeds, args.n_seeds)
    t0 = time.time()
    models = dc.starter.models()
    checker = load_checker(cache, args.checker_steps)
    log(f"models and checker ready ({time.time() - t0:.0f}s); student {student_id()}")
    for track in tracks:
        fn, spurious = RUNNERS[track]
        ns = [int(x) for x in (args.ns or ("10,25,50" if track == "gap" else "100,200")).split(",")]
        rows: list[dict] = []
        for seed in seeds:
            if args.stop_after and time.strftime("%H:%M") >= args.stop_after:
                log(f"{track}: not starting seed {seed}, past --stop-after {args.stop_after}")
                break
            ctx = Ctx(track, seed, spurious, models, checker, args)
            try:
                rows += fn(ctx, ns, args)
            finally:
                ctx.close()
            if args.generate_only:
                continue
            text = summarise(track, rows, args)  # after every seed, so a cut-off run keeps its results
            log(
                f"{track}: {len(set(r['seed'] for r in rows))} seed(s) done ({(time.time() - t0) / 60:.1f} min)\n{text}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
