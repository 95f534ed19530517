"""`datacrafter run CONFIG.toml`: the whole loop without a notebook, ending in an HTML report.

dataset -> student on real data only -> generation rounds (strategies, counts) -> optional
simulated feedback (an independent checker marks off-prompt images bad) -> optional prompt
evolution + a round with the evolved prompts -> optional GAP -> final student -> metrics.csv,
report.html, student/ in the project folder. See examples/starter.toml for every key.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

__all__ = ["ConfigError", "RunResult", "load_config", "run", "add_run", "simulated_feedback", "prompted_attributes"]


class ConfigError(ValueError):
    """A bad run configuration; the message names the key and the fix."""


_SECTIONS = {"project", "seed", "title", "dataset", "models", "rounds", "feedback", "evolve", "gap", "student", "backend"}
_DEFAULTS: dict[str, Any] = {
    "project": "runs/headless",
    "seed": 0,
    "title": "datacrafter run",
    "dataset": {"kind": "starter", "shots": 5, "spurious": 0.0, "seed": 0},
    "models": {"kind": "starter"},
    "rounds": [],
    "feedback": {"simulate": False},
    "evolve": {"enabled": False, "population": 4, "generations": 1, "batch": 4, "per_class": 5},
    "gap": {"enabled": False, "per_class": 3, "steps": 30},
    "student": {"kind": "auto", "epochs": None, "seed": 0, "evaluate_each_round": True},
    "backend": {"kind": "local"},   # or kind = "ray", address = "auto", workers = 2, gpus_per_worker = 1 (docs/ray.md)
}


def load_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a TOML config (or a dict); unknown keys and bad values get clear errors."""
    if isinstance(source, Mapping):
        raw = dict(source)
        base = Path.cwd()
    else:
        import tomllib

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist: pass the path of a .toml file (see examples/starter.toml)")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        base = path.parent
    unknown = sorted(set(raw) - _SECTIONS)
    if unknown:
        raise ConfigError(f"unknown config key(s) {unknown}: the keys are {sorted(_SECTIONS)}")
    cfg: dict[str, Any] = {}
    for key, default in _DEFAULTS.items():
        value = raw.get(key, default)
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"[{key}] must be a table, got {type(value).__name__}")
            value = {**default, **value}
        cfg[key] = value
    if not isinstance(cfg["rounds"], list):
        raise ConfigError("rounds must be an array of tables: [[rounds]] strategy = \"class\" per_class = 5")
    from ..controller.round_spec import RoundSpec, RoundSpecError
    from ..loop.strategies import GENERATE_STRATEGIES

    for i, r in enumerate(cfg["rounds"]):
        if not isinstance(r, Mapping) or "strategy" not in r:
            raise ConfigError(f"rounds[{i}] needs a strategy (one of {list(GENERATE_STRATEGIES)})")
        try:  # a round table is a RoundSpec: the same checks as crafter.generate and the widget
            RoundSpec.from_dict({"per_class": 5, **r})
        except RoundSpecError as err:
            raise ConfigError(f"rounds[{i}]: {err}") from err
    kind = cfg["dataset"].get("kind")
    if kind not in ("starter", "folder"):
        raise ConfigError(f"dataset.kind {kind!r} is unknown: use 'starter' (colored digits) or 'folder' (ImageFolder layout)")
    if kind == "folder" and not cfg["dataset"].get("path"):
        raise ConfigError("dataset.kind = 'folder' needs dataset.path (a folder of class/xxx.jpg)")
    if cfg["models"].get("kind") not in ("starter", "stable_diffusion"):
        raise ConfigError(f"models.kind {cfg['models'].get('kind')!r} is unknown: use 'starter' or 'stable_diffusion'")
    if cfg["models"]["kind"] == "stable_diffusion" and not cfg["models"].get("model"):
        raise ConfigError("models.kind = 'stable_diffusion' needs models.model (a hub id or a local folder)")
    if cfg["gap"].get("enabled") and int(cfg["gap"].get("steps", 0)) <= 0:
        raise ConfigError("gap.steps must be at least 1")
    if cfg["gap"].get("sources", "none") not in ("none", "train"):
        raise ConfigError(f"gap.sources {cfg['gap']['sources']!r} is unknown: use 'train' (start from the real train images "
                          "of each class) or 'none' (text-to-image)")
    if cfg["gap"].get("masks", "none") not in ("none", "plain-background"):
        raise ConfigError(f"gap.masks {cfg['gap']['masks']!r} is unknown: use 'plain-background' (keep each source's object) "
                          "or 'none'")
    if cfg["gap"].get("masks", "none") != "none" and cfg["gap"].get("sources", "none") == "none":
        raise ConfigError("gap.masks needs gap.sources = 'train': masks keep the object of a source image")
    from ..controller.backends import BackendError, backend_from_config

    try:
        backend_from_config(cfg["backend"])
    except (BackendError, TypeError, ValueError) as err:
        raise ConfigError(f"[backend]: {err}") from err
    cfg["_base"] = str(base)
    return cfg


def _dataset(cfg: Mapping[str, Any], base: Path):
    from ..data.dataset import Dataset
    from ..starter import colored_digits

    d = cfg["dataset"]
    if d["kind"] == "starter":
        return colored_digits(shots=int(d.get("shots", 5)), spurious=float(d.get("spurious", 0.0)), seed=int(d.get("seed", 0)))
    path = Path(d["path"])
    path = path if path.is_absolute() else base / path
    ds = Dataset.from_folder(path)
    if d.get("test"):
        test_path = Path(d["test"]) if Path(d["test"]).is_absolute() else base / d["test"]
        test = Dataset.from_folder(test_path)
        ds.splits = {"train": ds, "test": test}
    return ds


def _models(cfg: Mapping[str, Any]):
    from ..models.bundle import Models

    m = cfg["models"]
    if m["kind"] == "starter":
        from .. import starter

        return starter.models()
    clip = tuple(m["clip"]) if m.get("clip") else ("ViT-B-32", "laion2b_s34b_b79k")
    return Models.stable_diffusion(m["model"], clip=clip, captioner=m.get("captioner"), device=m.get("device", "auto"),
                                   steps=m.get("steps"), guidance=m.get("guidance"))


# ---- simulated feedback --------------------------------------------------------------------------
def prompted_attributes(prompt: str, label: str) -> dict[str, str | None]:
    """What a prompt asks for in the starter's vocabulary: digit (the class), foreground, background."""
    from ..starter.digits import BACKGROUNDS, FOREGROUNDS

    low = f" {prompt.lower()} "
    bg = next((b for b in BACKGROUNDS if f"on a {b} background" in low), None)
    body = low.split(" on a ")[0] if bg else low
    fg = next((f for f in FOREGROUNDS if re.search(rf"\b{re.escape(f)}\b", body)), None)
    return {"digit": str(label), "foreground": fg, "background": bg}


def simulated_feedback(crafter: Any, ids: Sequence[str], checker: Callable[[list[Image.Image]], pd.DataFrame]) -> dict[str, Any]:
    """Mark as bad the images whose checked digit / colours differ from what their prompt asked.

    A simulated person lassoing off-prompt images. `checker(images)` returns a frame with columns
    digit, foreground, background (an independent classifier, not the CLIP the loop uses). Bad
    images are grouped by the wrong digit they show, which becomes their unwanted label.
    """
    ids = list(ids)
    if not ids:
        return {"checked": 0, "bad": 0, "off_digit": 0, "off_colour": 0}
    rows = crafter.store.samples.set_index("id").loc[ids]
    found = checker([crafter.store.image(i) for i in ids]).reset_index(drop=True)
    bad: dict[str, list[str]] = {}
    off_digit = off_colour = 0
    for k, (sid, row) in enumerate(rows.iterrows()):
        want = prompted_attributes(str(row["prompt"]), str(row["label"]))
        got = found.iloc[k]
        reason = None
        if str(got["digit"]) != want["digit"]:
            off_digit += 1
            reason = f"looks like {got['digit']}"
        elif (want["background"] and str(got["background"]) != want["background"]) or \
             (want["foreground"] and str(got["foreground"]) != want["foreground"]):
            off_colour += 1
            reason = "wrong colour"
        if reason:
            bad.setdefault(reason, []).append(str(sid))
    for reason, group in bad.items():
        labels = [reason.replace("looks like ", "")] if reason.startswith("looks like") else []
        crafter.feedback(bad=group, bad_labels=labels)
    n_bad = sum(len(v) for v in bad.values())
    return {"checked": len(ids), "bad": n_bad, "off_digit": off_digit, "off_colour": off_colour}


def _starter_checker() -> Callable[[list[Image.Image]], pd.DataFrame]:
    """The starter kit's independent checker (a CNN trained on real renders only) as images -> frame."""
    from ..starter import checker as ck

    inst = None
    for name in ("load_checker", "get_checker", "default_checker", "load"):
        fn = getattr(ck, name, None)
        if callable(fn):
            inst = fn()
            break
    if inst is None and callable(getattr(ck, "train_checker", None)):
        inst = _cached_trained_checker(ck)
    if inst is None or not callable(getattr(inst, "predict", None)):
        raise ConfigError("the starter checker (datacrafter_widget.starter.checker) offers no checker with predict(): "
                          "simulated feedback needs it")

    def check(images: list[Image.Image]) -> pd.DataFrame:
        return pd.DataFrame(inst.predict(list(images)))
    return check


def _cached_trained_checker(ck: Any) -> Any:
    """Train the starter checker once and keep its weights (safetensors) in the user cache.

    Training takes minutes on a busy CPU; the cache key includes the checker module's source, so a
    changed checker is retrained.
    """
    import hashlib
    import inspect
    import os

    from safetensors.torch import load_file
    from safetensors.torch import save as to_safetensors_bytes

    from ..data.store import atomic_write_bytes

    key = hashlib.sha256(inspect.getsource(ck).encode()).hexdigest()[:12]
    cache = Path(os.environ.get("DATACRAFTER_CACHE", Path.home() / ".cache" / "datacrafter-widget"))
    path = cache / f"starter-checker-{key}.safetensors"
    if path.is_file():
        net = ck.CheckerNet()
        net.load_state_dict(load_file(str(path)))
        return ck.Checker(net=net.eval())
    inst = ck.train_checker()
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, to_safetensors_bytes({k: v.contiguous() for k, v in inst.net.state_dict().items()}))
    return inst


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    project: Path
    metrics: pd.DataFrame
    report: Path
    evolution: list[str] = field(default_factory=list)


def _train_eval(crafter: Any, cfg: Mapping[str, Any], stage: str, test: Any, progress: bool) -> tuple[Any, dict[str, Any]]:
    from ..loop.student import evaluate, train_student, training_set_from_samples

    s = cfg["student"]
    images, labels, ids = training_set_from_samples(crafter.store.samples, crafter.store.image)
    student = train_student(images, labels, crafter.classes, kind=s.get("kind", "auto"),
                            embedder=crafter.models.embedder if crafter.models.has("embedder") else None,
                            epochs=s.get("epochs"), seed=int(s.get("seed", 0)), progress=progress)
    row: dict[str, Any] = {"stage": stage, "n_train": len(images),
                           "n_generated": int(sum(1 for i in ids if i.startswith("g")))}
    if test is not None and len(test):
        ev = evaluate(student, test)
        row["accuracy"] = ev["accuracy"]
        row["worst_class_accuracy"] = float(ev["per_class"]["accuracy"].min())
        row["_per_class"] = ev["per_class"].assign(stage=stage)
    return student, row


def run(config: str | Path | Mapping[str, Any], *, project: str | Path | None = None, progress: bool = True,
        log: Callable[[str], None] = print, models: Any = None,
        checker: Callable[[list[Image.Image]], pd.DataFrame] | None = None) -> RunResult:
    """Run the loop a config describes; writes the project, metrics.csv and report.html.

    models / checker override the config's models and the starter checker (scripts and tests).
    """
    from ..controller.crafter import DataCrafter
    from ..controller.round_spec import RoundSpec, round_seed
    from ..controller.rounds import evolve_store, gap_round
    from ..loop.evolution import default_compose
    from ..starter.prompts import starter_compose, starter_vocabulary

    cfg = load_config(config)
    base = Path(cfg["_base"])
    project = Path(project or cfg["project"])
    project = project if project.is_absolute() else base / project
    t0 = time.time()
    ds = _dataset(cfg, base)
    test = ds.test
    models = models if models is not None else _models(cfg)
    crafter = DataCrafter(ds, models=models, project=project, backend=cfg["backend"])
    starter_kit = cfg["models"]["kind"] == "starter"
    rows: list[dict[str, Any]] = []
    per_class_frames: list[pd.DataFrame] = []
    gap_histories: list[pd.DataFrame] = []
    fb_rows: list[dict[str, Any]] = []
    evolution_lines: list[str] = []
    if not cfg["feedback"].get("simulate"):
        checker = None
    elif checker is None:
        if cfg["dataset"]["kind"] != "starter":
            raise ConfigError("feedback.simulate uses the starter kit's independent checker: it works with the starter dataset only")
        checker = _starter_checker()

    def record(stage: str) -> Any:
        student, row = _train_eval(crafter, cfg, stage, test, progress)
        pcf = row.pop("_per_class", None)
        if pcf is not None:
            per_class_frames.append(pcf)
        row["elapsed_s"] = round(time.time() - t0, 1)
        rows.append(row)
        log(f"[{row['elapsed_s']:7.1f}s] {stage}: {row['n_train']} training images, test accuracy {row.get('accuracy', float('nan')):.3f}")
        return student

    try:
        student = record("real only")
        each = bool(cfg["student"].get("evaluate_each_round", True))
        for i, r in enumerate(cfg["rounds"]):
            # the round's spec is the TOML table; its seeds follow the one seed policy (round_seed), so the
            # same table gives the same images as crafter.generate(spec=...) in the same round number
            ids = crafter.generate(spec=RoundSpec.from_dict({"per_class": 5, **r}), progress=progress)
            name = r["strategy"] if isinstance(r["strategy"], str) else "+".join(r["strategy"])
            if checker is not None:
                fb = simulated_feedback(crafter, ids, checker)
                fb_rows.append({"stage": f"round {i + 1}: {name}", **fb})
                log(f"  simulated feedback: {fb['bad']} of {fb['checked']} images off-prompt")
            if each:
                student = record(f"round {i + 1}: {name}")
        ev_cfg = cfg["evolve"]
        if ev_cfg.get("enabled"):
            gen = crafter.models.require("generator", "prompt evolution")
            result = evolve_store(
                crafter.store, classes=crafter.classes, generate=crafter.rounds_runner.image_fn(gen, steps=ev_cfg.get("steps")),
                embedder=crafter.models.require("embedder", "prompt evolution"),
                vocabulary=ev_cfg.get("vocabulary") or (starter_vocabulary() if starter_kit else None),
                compose=starter_compose if starter_kit else default_compose(ev_cfg.get("template", "a photo of a {class}")),
                population=int(ev_cfg.get("population", 4)), generations=int(ev_cfg.get("generations", 1)),
                batch=int(ev_cfg.get("batch", 4)), seed=round_seed(crafter.next_round()), progress=progress,
            )
            evolution_lines = result.report().splitlines()
            log("prompt evolution:\n" + result.report())
            ids = crafter.generate(per_class=int(ev_cfg.get("per_class", 5)), strategy="evolved",
                                   classes=list(result.prompts), progress=progress)
            if checker is not None:
                fb = simulated_feedback(crafter, ids, checker)
                fb_rows.append({"stage": "evolved prompts", **fb})
                log(f"  simulated feedback: {fb['bad']} of {fb['checked']} images off-prompt")
            student = record("evolved prompts")
        gap_cfg = cfg["gap"]
        if gap_cfg.get("enabled"):
            from ..loop.gap import GapConfig

            settings = {k: v for k, v in gap_cfg.items() if k in GapConfig.__dataclass_fields__}
            rnd = crafter.next_round()
            ids, results = gap_round(crafter.store, crafter.models.require("generator", "GAP"), student, crafter.classes,
                                     target=gap_cfg.get("target"), embedder=crafter.models.embedder if crafter.models.has("embedder") else None,
                                     per_class=int(gap_cfg.get("per_class", 3)), round=rnd, seed=None,
                                     config=GapConfig(**settings), progress=progress,
                                     shared=bool(gap_cfg.get("shared", False)),
                                     sources=None if gap_cfg.get("sources", "none") == "none" else gap_cfg["sources"],
                                     masks=None if gap_cfg.get("masks", "none") == "none" else gap_cfg["masks"])
            crafter.log_round({"round": rnd, "strategies": ["gap"], "requested": len(ids), "stored": len(ids),
                               "status": "done", "target": gap_cfg.get("target", ""), "finished": time.time()})
            for c, res in results.items():
                gap_histories.append(pd.DataFrame(res.history).assign(**{"class": c}))
            if checker is not None:
                fb = simulated_feedback(crafter, ids, checker)
                fb_rows.append({"stage": "GAP", **fb})
            student = record("GAP")
        if not each and cfg["rounds"] and not ev_cfg.get("enabled") and not gap_cfg.get("enabled"):
            student = record("final")
        student.save(project / "student")
        metrics = pd.DataFrame(rows)
        metrics.to_csv(project / "metrics.csv", index=False)
        report = _write_report(cfg, crafter, metrics, per_class_frames, gap_histories, fb_rows, evolution_lines,
                               time.time() - t0)
        log(f"wrote {report} and {project / 'metrics.csv'} in {time.time() - t0:.0f}s")
        return RunResult(project, metrics, report, evolution_lines)
    finally:
        crafter.close()


def _write_report(cfg, crafter, metrics: pd.DataFrame, per_class: list[pd.DataFrame], gap: list[pd.DataFrame],
                  fb_rows: list[dict[str, Any]], evolution_lines: list[str], seconds: float) -> Path:
    import altair as alt

    from .report import Section, thumbnails_html, write_report

    sections = []
    s = Section("Student test accuracy per stage")
    s.text("The student is retrained from scratch after each stage on the real training images plus the "
           "generated images that were not marked bad or flagged; it is evaluated on the held-out test split.")
    if "accuracy" in metrics:
        order = metrics["stage"].tolist()
        chart = alt.Chart(metrics).mark_bar().encode(
            x=alt.X("stage:N", sort=order, title=None), y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])),
            tooltip=["stage", "n_train", "n_generated", "accuracy"]).properties(width=500, height=220)
        s.chart(chart, metrics)
    else:
        s.table(metrics)
    sections.append(s)
    if per_class:
        pc = pd.concat(per_class, ignore_index=True)
        s = Section("Per-class accuracy")
        chart = alt.Chart(pc).mark_line(point=True).encode(
            x=alt.X("class:N"), y=alt.Y("accuracy:Q", scale=alt.Scale(domain=[0, 1])), color="stage:N",
            tooltip=["stage", "class", "n", "accuracy"]).properties(width=500, height=220)
        sections.append(s.chart(chart, pc))
    samples = crafter.store.samples
    gen = samples[samples["source"] == "generated"].copy()
    if len(gen):
        gen["feedback"] = gen["feedback"].replace("", "none")
        counts = gen.groupby(["round", "strategy", "feedback"]).size().reset_index(name="images")
        s = Section("Generated images by round, strategy and feedback")
        chart = alt.Chart(counts).mark_bar().encode(
            x=alt.X("round:O"), y="images:Q", color="feedback:N", column=alt.Column("strategy:N"),
            tooltip=["round", "strategy", "feedback", "images"]).properties(width=140, height=200)
        s.chart(chart, counts)
        thumbs = []
        for (rnd, strat), grp in gen.groupby(["round", "strategy"]):
            for _, row in grp.head(12).iterrows():
                thumbs.append((crafter.store.image(row["id"]), f"r{rnd} {strat} {row['label']} {row['feedback']}: {row['prompt']}"))
        s.safe_html(thumbnails_html(thumbs[:96], size=48))
        sections.append(s)
    if fb_rows:
        sections.append(Section("Simulated feedback (independent checker)").text(
            "Images whose checked digit or colours differ from their prompt were marked bad.").table(pd.DataFrame(fb_rows)))
    if evolution_lines:
        sections.append(Section("Prompt evolution").lines(evolution_lines))
    if gap:
        g = pd.concat(gap, ignore_index=True)
        s = Section("GAP optimisation")
        s.text("Adversarial loss (cross-entropy of the student against a uniform label) per optimisation step; "
               "lower means the student is less certain on the generated images.")
        chart = alt.Chart(g).mark_line().encode(x="step:Q", y=alt.Y("adversarial:Q", scale=alt.Scale(zero=False)),
                                                color="class:N").properties(width=500, height=220)
        sections.append(s.chart(chart))
    public = {k: v for k, v in cfg.items() if not k.startswith("_")}
    meta = {"project": str(crafter.project), "models": json.dumps(crafter.models.describe()),
            "config": json.dumps(public, default=str), "run time": f"{seconds:.0f} s"}
    return write_report(Path(crafter.project) / "report.html", str(cfg.get("title", "datacrafter run")), sections, meta=meta)


# ---- CLI ---------------------------------------------------------------------------------------
def _cli(args: argparse.Namespace) -> int:
    try:
        result = run(args.config, project=args.project, progress=not args.quiet)
    except ConfigError as err:
        print(f"datacrafter run: {err}")
        return 2
    print(result.metrics.to_string(index=False))
    return 0


def add_run(sub: argparse._SubParsersAction) -> None:
    """Register `datacrafter run CONFIG.toml`."""
    p = sub.add_parser("run", help="run the loop headless from a TOML config and write an HTML report")
    p.add_argument("config", help="path of the TOML config (see examples/starter.toml)")
    p.add_argument("--project", default=None, help="project folder (overrides the config's project)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cli)
