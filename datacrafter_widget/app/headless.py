"""`datacrafter run CONFIG.toml`: the loop without a notebook, driven through DataCrafter's public API.

Every step is a `DataCrafter` call, the same a notebook user makes, so the CLI and the API give the
same rounds, the same seeds (DataCrafter's seed policy) and the same stored rows:
dataset -> train_student + evaluate (real only) -> generate per [[rounds]] -> optional simulated
feedback (the starter's independent checker marks off-prompt images bad; feedback()) -> optional
evolve() + generate_evolved() -> optional adversarial() (GAP) -> train_student + evaluate after each
stage -> metrics -> optional export() -> report.html. Every line it prints carries the seconds since
the start; long steps show tqdm bars. The config schema is in config.py (examples/starter.toml).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from .config import ConfigError, backend_config, load_config, round_spec

__all__ = [
    "ConfigError",
    "RunResult",
    "load_config",
    "run",
    "cli_main",
    "simulated_feedback",
    "simulated_fewer",
    "prompted_attributes",
    "starter_checker",
]

Checker = Callable[[list[Image.Image]], pd.DataFrame]


# ---- simulated feedback --------------------------------------------------------------------------
def prompted_attributes(prompt: str, label: str) -> dict[str, str | None]:
    """What a prompt asks for in the starter's vocabulary: digit (the class), foreground, background."""
    import re

    from ..starter.digits import BACKGROUNDS, FOREGROUNDS

    low = f" {prompt.lower()} "
    bg = next((b for b in BACKGROUNDS if f"on a {b} background" in low), None)
    body = low.split(" on a ")[0] if bg else low
    fg = next((f for f in FOREGROUNDS if re.search(rf"\b{re.escape(f)}\b", body)), None)
    return {"digit": str(label), "foreground": fg, "background": bg}


def simulated_feedback(crafter: Any, ids: Sequence[str], checker: Checker) -> dict[str, Any]:
    """Mark as bad (crafter.feedback) the images whose checked digit / colours differ from their prompt.

    A simulated person lassoing off-prompt images. `checker(images)` returns a frame with columns
    digit, foreground, background (an independent classifier, not the CLIP the loop uses). Bad
    images are grouped by the wrong digit they show, which becomes their unwanted label.
    """
    ids = [str(i) for i in ids]
    if not ids:
        return {"checked": 0, "bad": 0, "off_digit": 0, "off_colour": 0}
    rows = crafter.samples.set_index("id").loc[ids]
    found = checker([crafter.image(i) for i in ids]).reset_index(drop=True)
    bad: dict[str, list[str]] = {}
    off_digit = off_colour = 0
    for k, (sid, row) in enumerate(rows.iterrows()):
        want = prompted_attributes(str(row["prompt"]), str(row["label"]))
        got = found.iloc[k]
        reason = None
        if str(got["digit"]) != want["digit"]:
            off_digit += 1
            reason = f"looks like {got['digit']}"
        elif (want["background"] and str(got["background"]) != want["background"]) or (
            want["foreground"] and str(got["foreground"]) != want["foreground"]
        ):
            off_colour += 1
            reason = "wrong colour"
        if reason:
            bad.setdefault(reason, []).append(str(sid))
    for reason, group in bad.items():
        labels = [reason.replace("looks like ", "")] if reason.startswith("looks like") else []
        crafter.feedback(bad=group, bad_labels=labels)
    n_bad = sum(len(v) for v in bad.values())
    return {"checked": len(ids), "bad": n_bad, "off_digit": off_digit, "off_colour": off_colour}


def simulated_fewer(crafter: Any, ids: Sequence[str], checker: Checker, attributes: Sequence[str]) -> int:
    """Lasso, without words, the images of each attribute value beyond an even share ("fewer of these").

    A simulated person who colours the map by an attribute, sees one value far too common and
    lassoes the excess: one lasso per value, so evolution can read each lasso (loop/balance.py).
    Images already marked are left alone. Returns how many images were lassoed.
    """
    from ..starter.digits import BACKGROUNDS, FOREGROUNDS

    values = {"background": list(BACKGROUNDS), "foreground": list(FOREGROUNDS)}
    s = crafter.samples.set_index("id").loc[[str(i) for i in ids]]
    ok = [str(i) for i in s.index[s["feedback"].fillna("").astype(str) == ""]]
    if not ok or not attributes:
        return 0
    found = checker([crafter.image(i) for i in ok]).reset_index(drop=True)
    rng = np.random.default_rng(0)
    taken: set[str] = set()
    for attr in attributes:
        even = len(ok) // len(values[attr])
        for value in values[attr]:
            cell = [i for k, i in enumerate(ok) if str(found.at[k, attr]) == value and i not in taken]
            extra = [cell[j] for j in rng.permutation(len(cell))][: max(0, len(cell) - even)]
            if extra:
                crafter.feedback(bad=extra)
                taken.update(extra)
    return len(taken)


def starter_checker() -> Checker:
    """The starter kit's independent checker, shipped trained (starter/weights/checker.safetensors)."""
    from ..starter.checker import WEIGHTS, load_checker, train_checker

    if WEIGHTS.is_file():
        inst = load_checker()
    else:  # a checkout without the shipped weights: train it here, with a progress bar
        print(
            f"no shipped checker weights at {WEIGHTS}: training the checker now (minutes; "
            "`python -m datacrafter_widget.starter.checker` saves them for next time)",
            file=sys.stderr,
            flush=True,
        )
        inst = train_checker(progress=True)

    def check(images: list[Image.Image]) -> pd.DataFrame:
        return pd.DataFrame(inst.predict(list(images)))

    return check


_starter_checker = starter_checker  # the benchmarks' name for it


# ---- the run -----------------------------------------------------------------------------------
@dataclass
class RunResult:
    """What a run leaves behind: the project folder, the per-stage table, the report's path."""

    project: Path
    metrics: pd.DataFrame
    report: Path
    evolution: list[str] = field(default_factory=list)


#: seconds without output (no log line, no progress bar drawn) before a run says it is still working
QUIET_S = 5.0


class _Clock:
    """Prefixes every message with the seconds since the run started, so a log reads as a timeline;
    `watch()` says "still ..." whenever nothing was printed for QUIET_S seconds (a silent step such as
    loading models, or a step slowed down by a busy CPU), so a run never looks hung."""

    def __init__(self, log: Callable[[str], None], started: float | None = None) -> None:
        self.t0 = time.time() if started is None else started
        self.log = log
        self.last_output = time.time()
        self.current = ""

    @property
    def elapsed(self) -> float:
        return time.time() - self.t0

    def __call__(self, message: str, *, step: bool = True) -> None:
        lines = str(message).splitlines() or [""]
        if step:
            self.current = lines[0]
        for line in lines:
            self.log(f"[{self.elapsed:6.1f}s] {line}")
        self.last_output = time.time()

    @contextmanager
    def watch(self) -> Iterator[None]:
        """While the block runs, anything written to stdout or stderr (progress bars included) counts
        as output; after QUIET_S seconds of none, say what is still running."""
        stop = threading.Event()
        streams = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Stamped(sys.stdout, self), _Stamped(sys.stderr, self)

        def beat() -> None:
            while not stop.wait(min(1.0, QUIET_S / 5)):
                quiet = time.time() - self.last_output
                if quiet >= QUIET_S and self.current:
                    self(f"... still {self.current} ({quiet:.0f} s since the last output)", step=False)

        thread = threading.Thread(target=beat, name="datacrafter-run-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            sys.stdout, sys.stderr = streams


class _Stamped:
    """A text stream that notes the time of each write on the clock (and passes everything on)."""

    def __init__(self, stream: Any, clock: _Clock) -> None:
        self._stream, self._clock = stream, clock

    def write(self, text: str) -> int:
        if text:
            self._clock.last_output = time.time()
        return self._stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _resolve(base: Path, path: str | Path) -> Path:
    p = Path(path).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _dataset(cfg: Mapping[str, Any], base: Path) -> Any:
    from ..data.dataset import Dataset
    from ..starter import colored_digits

    d = cfg["dataset"]
    if d["kind"] == "starter":
        return colored_digits(shots=d["shots"], spurious=d["spurious"], seed=d["seed"])
    from ..data.dataset import DatasetError

    try:
        ds = Dataset.from_folder(_resolve(base, d["path"]))
    except DatasetError as err:  # an empty class folder, an ambiguous layout...: name the key
        raise ConfigError(f"path in [dataset] = {d['path']!r}: {err}") from None
    if d["test"]:
        if ds.test is not None:
            raise ConfigError(
                f"path in [dataset] = {d['path']!r} already holds a test split (read as train/ and test/ folders), "
                f"and test in [dataset] = {d['test']!r} gives another: remove one of them"
            )
        try:
            test = Dataset.from_folder(_resolve(base, d["test"]), splits=False)
        except DatasetError as err:
            raise ConfigError(f"test in [dataset] = {d['test']!r}: {err}") from None
        ds.splits = {**ds.splits, "train": ds, "test": test}
    return ds


def _models(cfg: Mapping[str, Any], say: Callable[[str], None]) -> Any:
    from ..models.bundle import Models

    m = cfg["models"]
    if m["kind"] == "starter":
        from .. import starter

        return starter.models(
            progress=lambda done, total, what: say(f"loading the starter models: {what} ({done}/{total})")
        )
    clip = tuple(m["clip"]) if m["clip"] else ("ViT-B-32", "laion2b_s34b_b79k")
    return Models.stable_diffusion(
        m["model"], clip=clip, captioner=m["captioner"], device=m["device"], steps=m["steps"], guidance=m["guidance"]
    )


def _fresh_project(project: Path, overwrite: bool) -> None:
    """A run starts a new project: an earlier run's folder is replaced only when asked (--overwrite)."""
    if not project.exists() or not any(project.iterdir()):
        return
    if not overwrite:
        raise ConfigError(
            f"project folder {project} already exists (an earlier run?): pass --overwrite to replace it, "
            "or --project NEW_FOLDER to keep it"
        )
    if not (project / "project.json").is_file() and not (project / "samples.parquet").is_file():
        raise ConfigError(
            f"{project} is not empty and is not a datacrafter project: refusing to delete it; "
            "choose another --project folder"
        )
    shutil.rmtree(project)


class _Stages:
    """Trains and evaluates the student after each stage through crafter.train_student / crafter.evaluate."""

    def __init__(self, crafter: Any, cfg: Mapping[str, Any], test: Any, progress: bool, say: _Clock) -> None:
        self.crafter, self.cfg, self.test, self.progress, self.say = crafter, cfg, test, progress, say
        self.rows: list[dict[str, Any]] = []
        self.per_class: list[pd.DataFrame] = []

    def _train(self, seed: int) -> Any:
        s = self.cfg["student"]
        options: dict[str, Any] = {"kind": s["kind"], "seed": seed}
        if s["epochs"] is not None:
            options["epochs"] = s["epochs"]
        return self.crafter.train_student(progress=self.progress, **options)

    def record(self, stage: str, *, spread: bool = False) -> None:
        s = self.cfg["student"]
        seeds = [s["seed"] + k for k in range(1, s["seeds"])] if spread else []
        extra = []
        for seed in seeds:  # the extra seeds first: the main seed's student is the one kept in the project
            self.say(f"{stage}: training the student with seed {seed} (seed spread)")
            self._train(seed)
            extra.append(self.crafter.evaluate(self.test)["accuracy"] if self.test is not None else float("nan"))
        s_main = s["seed"]
        n_train = len(self.crafter.samples.query("source == 'real' and split == 'train'"))
        self.say(f"{stage}: training the student (seed {s_main})")
        self._train(s_main)
        row: dict[str, Any] = {"stage": stage, "n_real": n_train, "n_generated_used": self._n_generated_used()}
        if self.test is not None and len(self.test):
            ev = self.crafter.evaluate(self.test)
            row["accuracy"] = ev["accuracy"]
            row["worst_class_accuracy"] = float(ev["per_class"]["accuracy"].min())
            row["n_test"] = int(ev["n"])
            self.per_class.append(ev["per_class"].assign(stage=stage))
            if extra:
                accs = [ev["accuracy"], *extra]
                row["accuracy_min"], row["accuracy_max"] = min(accs), max(accs)
                row["seeds"] = len(accs)
        row["elapsed_s"] = round(self.say.elapsed, 1)
        self.rows.append(row)
        acc = row.get("accuracy")
        self.say(
            f"{stage}: {row['n_real']} real + {row['n_generated_used']} generated training images, "
            + (f"test accuracy {acc:.3f}" if acc is not None else "no test split")
        )

    def _n_generated_used(self) -> int:
        s = self.crafter.samples
        gen = s[s["source"] == "generated"]
        fb = gen["feedback"].fillna("").astype(str)
        keep = ~fb.isin(["bad", "removed"]) & (gen["flag"].fillna("").astype(str).eq("") | fb.eq("good"))
        return int(keep.sum())


def run(
    config: str | Path | Mapping[str, Any],
    *,
    project: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    models: Any = None,
    checker: Checker | None = None,
    overwrite: bool = False,
    started: float | None = None,
) -> RunResult:
    """Run the loop a config describes through DataCrafter; writes the project, metrics.csv and report.html.

    models / checker override the config's models and the starter checker (scripts and tests).
    overwrite=True replaces an earlier run's project folder instead of refusing to touch it.
    started: the time.time() the log's seconds count from (the CLI passes its own start).
    """
    say = _Clock(log, started)
    with say.watch():
        return _run(
            config, say, project=project, progress=progress, models=models, checker=checker, overwrite=overwrite
        )


def _run(
    config: str | Path | Mapping[str, Any],
    say: _Clock,
    *,
    project: str | Path | None,
    progress: bool,
    models: Any,
    checker: Checker | None,
    overwrite: bool,
) -> RunResult:
    say(f"reading the config {config if not isinstance(config, Mapping) else '(a dict)'}")
    cfg = load_config(config)
    base = Path(cfg["_base"])
    project_dir = _resolve(base, project or cfg["project"])
    _fresh_project(project_dir, overwrite)
    if cfg["feedback"]["simulate"] and checker is None:
        say("loading the independent checker (torch; it simulates a person's feedback)")
        checker = starter_checker()
    say(
        "loading the dataset"
        + (" (rendering the starter's coloured digits)" if cfg["dataset"]["kind"] == "starter" else "")
    )
    ds = _dataset(cfg, base)
    test = ds.test
    if models is None:
        say(f"loading the {cfg['models']['kind']} models (torch, diffusers, open_clip)")
        models = _models(cfg, say)
    from ..controller.crafter import DataCrafter

    say(f"creating the project {project_dir}")
    crafter = DataCrafter(ds, models=models, project=project_dir, backend=backend_config(cfg))
    stages = _Stages(crafter, cfg, test, progress, say)
    fb_rows: list[dict[str, Any]] = []
    evolution: pd.DataFrame | None = None
    evolution_lines: list[str] = []

    def feedback(stage: str, ids: Sequence[str]) -> None:
        if checker is None:
            return
        say(f"{stage}: the independent checker looks at {len(ids)} images (simulated lasso)")
        fb = simulated_feedback(crafter, ids, checker)
        say(f"{stage}: {fb['bad']} of {fb['checked']} images off-prompt, marked bad")
        if cfg["feedback"]["fewer"]:
            fb["fewer"] = simulated_fewer(crafter, ids, checker, cfg["feedback"]["fewer"])
            say(f"{stage}: {fb['fewer']} images lassoed as 'fewer of these' ({', '.join(cfg['feedback']['fewer'])})")
        fb_rows.append({"stage": stage, **fb})

    n_rounds = len(cfg["rounds"])
    each = cfg["student"]["evaluate_each_round"]
    # The first and the last stage are trained with every seed of [student] seeds: the seed spread.
    last = (
        "GAP"
        if cfg["gap"]["enabled"]
        else "evolved prompts"
        if cfg["evolve"]["enabled"]
        else (f"round {n_rounds}" if each else "final")
        if n_rounds
        else "real only"
    )
    try:
        stages.record("real only", spread=True)
        for i, r in enumerate(cfg["rounds"]):
            # The [[rounds]] table is a RoundSpec: the same checks and seed policy as crafter.generate(spec=...).
            spec = round_spec(r, i)
            name = "+".join(spec.strategies)
            stage = f"round {i + 1}: {name}"
            say(f"{stage}: generating {spec.per_class} images per class ({i + 1} of {n_rounds} rounds)")
            ids = crafter.generate(spec=spec, progress=progress)
            feedback(stage, ids)
            if each:
                stages.record(stage, spread=stage.startswith(last + ":"))
        ev = cfg["evolve"]
        if ev["enabled"]:
            say(
                f"prompt evolution: population {ev['population']}, {ev['generations']} generation(s), "
                f"{ev['batch']} images per candidate"
            )
            result = crafter.evolve(
                vocabulary=ev["vocabulary"],
                population=ev["population"],
                generations=ev["generations"],
                batch=ev["batch"],
                progress=progress,
            )
            evolution = _evolution_table(result)
            evolution_lines = result.report().splitlines()
            say("prompt evolution:\n" + result.report())
            say(f"evolved prompts: generating {ev['per_class']} images per class")
            ids = crafter.generate_evolved(per_class=ev["per_class"], progress=progress)
            feedback("evolved prompts", ids)
            stages.record("evolved prompts", spread=last == "evolved prompts")
        g = cfg["gap"]
        if g["enabled"]:
            settings = {
                k: g[k]
                for k in (
                    "lr",
                    "n_tokens",
                    "sampler_steps",
                    "final_steps",
                    "guidance",
                    "batch",
                    "template",
                    "text_weight",
                    "adversarial_weight",
                    "strength",
                    "shared",
                )
            }
            say(
                f"GAP: {g['steps']} optimisation steps per class against the current student, then "
                f"{g['per_class']} images per class"
            )
            ids = crafter.adversarial(
                target=g["target"],
                steps=g["steps"],
                per_class=g["per_class"],
                sources=None if g["sources"] == "none" else g["sources"],
                masks=None if g["masks"] == "none" else g["masks"],
                progress=progress,
                **settings,
            )
            feedback("GAP", ids)
            stages.record("GAP", spread=True)
        if not each and n_rounds and not ev["enabled"] and not g["enabled"]:
            stages.record("final", spread=True)
        table = pd.DataFrame(stages.rows)
        table.to_csv(project_dir / "metrics.csv", index=False)
        say("per-round metrics (crafter.metrics: embeddings, class filter)")
        # The stage table above already holds the held-out student accuracy per stage (with the seed
        # spread), so metrics skips its own per-round student (heldout=None) instead of training it twice.
        crafter.heldout = None
        round_metrics = crafter.metrics
        if cfg["export"]["enabled"]:
            # Beside the project, never inside it: export refuses a folder inside the store.
            path = cfg["export"]["path"] or project_dir.with_name(f"{project_dir.name}-export")
            out = _resolve(base, path)
            say(f"exporting the expanded dataset to {out} ({cfg['export']['format']})")
            crafter.export(out, format=cfg["export"]["format"], overwrite=True)
        say("writing the report")
        from .report import run_report

        report = run_report(
            cfg, crafter, table, stages.per_class, round_metrics, fb_rows, evolution, seconds=say.elapsed
        )
        say(f"done: {report} and {project_dir / 'metrics.csv'}")
        return RunResult(project_dir, table, report, evolution_lines)
    finally:
        crafter.close()


def _evolution_table(result: Any) -> pd.DataFrame:
    """One row per evolved class: the phrases before, the prompt after, the negative prompt and why."""
    rows = []
    for c, r in result.classes.items():
        before = ", ".join(r.previous.phrases) if r.previous.phrases else "(no evolved phrases yet)"
        rows.append(
            {
                "class": c,
                "before": before,
                "after": r.best.prompt,
                "negative prompt": r.best.genome.negative_prompt(),
                "fitness": r.best.fitness,
                "why": "; ".join(r.diff) or "unchanged",
            }
        )
    return pd.DataFrame(rows)


# ---- CLI ---------------------------------------------------------------------------------------
def cli_main(args: argparse.Namespace) -> int:
    """`datacrafter run` (the parser is in cli.py): config errors go to stderr with exit code 2."""
    try:
        result = run(
            args.config,
            project=args.project,
            progress=not args.quiet,
            overwrite=args.overwrite,
            log=lambda line: print(line, flush=True),
            started=getattr(args, "started", None),
        )
    except ConfigError as err:
        print(f"datacrafter run: {err}", file=sys.stderr)
        return 2
    print(result.metrics.to_string(index=False))
    print(f"report: {result.report}")
    return 0
