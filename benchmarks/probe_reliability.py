"""Reliability probe (issue 24): kill, starve and damage a project and its exports; print tried / held.

    python benchmarks/probe_reliability.py [--points 20] [--only kill-export,kill-round,disk-export,disk-round,damage]

Classes of probe, each with its own variations:

- kill-export: SIGKILL an `export(..., overwrite=True)` at N evenly spread file operations (every
  os.replace / rename / unlink / rmdir / mkdir / open-for-write is one point), imagefolder and csv.
  Held: the target is a complete export (old or new, every file its manifest lists, nothing else),
  the next export cleans up and succeeds.
- kill-round: SIGKILL `generate()` (tiny random-weight models) at N file operations. Held: the
  project opens for writing with no damage warning, the round is marked interrupted or done with
  the count it stored, every sample's image is present with its content hash.
- disk-export / disk-round: a real full disk (a small tmpfs; ENOSPC injected at the same points
  where mounting is not allowed). Held: an OSError naming no space, the old export intact, no temp
  folder left, the project opens and, once space is back, takes the next commit.
- damage: every file of a project (json documents, table, segments, commit log, images, embedding
  parts, student) deleted, truncated, zero-filled, bytes flipped, and json of the wrong shape.
  Held: the damage is named (an error or warning that names the file), or the file is derived and
  rebuilt, or what the project shows is unchanged; failing silently or with an error that names
  nothing (AttributeError, KeyError ...) is not held.

In every trial the files a person keeps beside the project and the export (notes, a folder of
their own, the dataset folder the images came from) are hashed before and after: "user files
intact" counts the trials where none changed.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

ROWS: list[tuple[str, str, int, int, int, str]] = []  # class, variation, tried, held, user-intact, notes


class Tally:
    """Trials of one probe variation: tried, held, user files intact, and the first reasons for not held."""

    def __init__(self) -> None:
        self.tried = self.held = self.intact = 0
        self.notes: list[str] = []

    def add(self, why: str, intact: bool, where: str) -> None:
        self.tried += 1
        self.held += not why
        self.intact += intact
        if why:
            self.notes.append(f"{where}: {why}")

    def record(self, cls: str, variation: str) -> None:
        ROWS.append((cls, variation, self.tried, self.held, self.intact, "; ".join(self.notes[:3])))


# ---- the hook every child process installs: count file operations, act at the n-th ----------------------
HOOK = textwrap.dedent(
    """
    import builtins, errno, os, signal, sys
    from pathlib import Path
    AT = int(os.environ.get("PROBE_AT", "0"))
    ACT = os.environ.get("PROBE_ACT", "kill")
    COUNT = [0]
    ARMED = [False]
    def _tick(what):
        if not ARMED[0]:
            return
        COUNT[0] += 1
        if COUNT[0] == AT:
            if ACT == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(errno.ENOSPC, "No space left on device (injected)", what)
    def _wrap(mod, name):
        real = getattr(mod, name)
        def f(*a, **k):
            _tick(name)
            return real(*a, **k)
        setattr(mod, name, f)
    for _n in ("replace", "rename", "unlink", "rmdir", "mkdir"):
        _wrap(os, _n)
    _open = builtins.open
    def _hooked_open(file, mode="r", *a, **k):
        if any(c in mode for c in "wax+"):
            _tick("open")
        return _open(file, mode, *a, **k)
    builtins.open = _hooked_open
    def arm():
        ARMED[0] = True
    def done():
        print("ops", COUNT[0], flush=True)
    """
)

EXPORT_CHILD = textwrap.dedent(
    """
    import sys, types
    pkg = types.ModuleType("datacrafter_widget")   # skip the package __init__: fast trials
    pkg.__path__ = [sys.argv[4]]
    sys.modules["datacrafter_widget"] = pkg
    from datacrafter_widget.data.store import SampleStore
    from datacrafter_widget.controller.export import export_project
    store = SampleStore(sys.argv[1], readonly=True)
    arm()
    export_project(store, ["a", "b"], sys.argv[2], format=sys.argv[3], overwrite=True)
    done()
    """
)

ROUND_CHILD = textwrap.dedent(
    """
    import sys, warnings
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(1)
    import datacrafter_widget as dc
    from datacrafter_widget.models.generator import Generator
    from tiny_models import tiny_sd_pipeline
    gen = Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2)
    c = dc.DataCrafter.open(sys.argv[1], models=dc.Models(generator=gen), batch_size=2)
    arm()
    c.generate(per_class=int(sys.argv[2]), strategy="class", progress=False)
    c.close()
    done()
    """
)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    return env


def run_child(script: Path, args: list[str], at: int, act: str = "kill") -> subprocess.CompletedProcess[str]:
    env = child_env() | {"PROBE_AT": str(at), "PROBE_ACT": act}
    return subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def ops_of(proc: subprocess.CompletedProcess[str]) -> int:
    for line in proc.stdout.splitlines():
        if line.startswith("ops "):
            return int(line.split()[1])
    raise RuntimeError(f"the child did not finish:\n{proc.stdout}\n{proc.stderr[-3000:]}")


def points(total: int, n: int) -> list[int]:
    """n operation numbers spread evenly over 1..total (all of them when there are fewer)."""
    if total <= n:
        return list(range(1, total + 1))
    return sorted({1 + round(k * (total - 1) / (n - 1)) for k in range(n)})


# ---- user files ------------------------------------------------------------------------------------------
def user_files(root: Path) -> dict[str, str]:
    """Hashes of the files a person keeps under `root` (everything under a name starting with 'user')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and any(part.startswith("user") for part in rel.parts):
            out[rel.as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def plant_user_files(root: Path) -> None:
    (root / "user_notes.txt").write_text("my notes, not the product's")
    (root / "user_dir").mkdir(exist_ok=True)
    (root / "user_dir" / "draft.tex").write_text("\\documentclass{article}")


# ---- projects ----------------------------------------------------------------------------------------------
def make_image(i: int, size: int = 16):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(i)
    return Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8), mode="RGB")


def small_project(path: Path, per_class: int = 30) -> None:
    from datacrafter_widget.data.store import SampleStore

    with SampleStore(path) as store:
        store.add(
            [make_image(100 * k + j, 24) for k in range(2) for j in range(per_class)],
            [{"label": c, "split": "train"} for c in ("a", "b") for _ in range(per_class)],
        )
        store.write_json("project.json", {**store.read_json("project.json"), "classes": ["a", "b"]})


def export_complete(out: Path) -> str:
    """'' if `out` is a complete export (every listed file present with its hash, nothing else), else why not."""
    from datacrafter_widget.controller.export import MANIFEST, _foreign, _manifest
    from datacrafter_widget.data.images import content_hash

    m = _manifest(out) if out.is_dir() else None
    if m is None or not m.get("complete"):
        return "no complete manifest"
    for rel, h in m["files"].items():
        p = out / rel
        if not p.is_file() or content_hash(p.read_bytes()) != h:
            return f"{rel} missing or changed"
    foreign = [f for f in _foreign(out) if not f.startswith(MANIFEST)]
    return f"extra files {foreign[:3]}" if foreign else ""


# ---- kill-export -------------------------------------------------------------------------------------------
def probe_kill_export(work: Path, n: int) -> None:
    from datacrafter_widget.controller.export import clean_stale, export_project
    from datacrafter_widget.data.store import SampleStore

    script = work / "export_child.py"
    script.write_text(HOOK + EXPORT_CHILD)
    for fmt in ("imagefolder", "csv"):
        base = work / f"kx-{fmt}"
        small_project(base / "p", per_class=20)
        export_project(SampleStore(base / "p", readonly=True), ["a", "b"], base / "exports" / "ds", format=fmt)
        with SampleStore(base / "p") as store:  # the new export differs from the old one
            store.add([make_image(900 + k, 24) for k in range(10)], [{"label": "a"}] * 10)
        plant_user_files(base / "exports")
        pkg = str(REPO / "datacrafter_widget")
        trial = work / "kx-trial"
        args = [str(trial / "p"), str(trial / "exports" / "ds"), fmt, pkg]
        shutil.copytree(base, trial)
        total = ops_of(run_child(script, args, 0))
        shutil.rmtree(trial)
        tally = Tally()
        for at in points(total, n):
            shutil.copytree(base, trial)
            before = user_files(trial)
            proc = run_child(script, args, at)
            why = export_complete(trial / "exports" / "ds") if proc.returncode == -9 else f"rc {proc.returncode}"
            if not why:
                clean_stale(trial / "exports" / "ds")
                left = sorted(p.name for p in (trial / "exports").iterdir())
                if left != ["ds", "user_dir", "user_notes.txt"]:
                    why = f"left {left}"
            if not why:
                try:
                    export_project(
                        SampleStore(trial / "p", readonly=True),
                        ["a", "b"],
                        trial / "exports" / "ds",
                        format=fmt,
                        overwrite=True,
                    )
                    why = export_complete(trial / "exports" / "ds")
                except Exception as exc:  # noqa: BLE001 - a probe records every failure
                    why = f"next export: {type(exc).__name__}: {exc}"[:120]
            tally.add(why, user_files(trial) == before, f"op {at}")
            shutil.rmtree(trial)
        tally.record("kill-export", f"{fmt}, {total} file ops, killed at {tally.tried} of them")


# ---- kill-round --------------------------------------------------------------------------------------------
def round_project(path: Path) -> None:
    import datacrafter_widget as dc

    ds = dc.Dataset.from_images([make_image(k, 24) for k in range(8)], ["a"] * 4 + ["b"] * 4)
    with dc.DataCrafter(ds, project=path) as c:
        c.store.update(["r000001"], feedback="good")


def check_round_project(path: Path) -> str:
    """'' if the project opens for writing with nothing damaged and its round is accounted for."""
    import datacrafter_widget as dc
    from datacrafter_widget.data.images import content_hash
    from datacrafter_widget.data.store import DamagedProjectWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            c = dc.DataCrafter.open(path)
        except Exception as exc:  # noqa: BLE001
            return f"open: {type(exc).__name__}: {exc}"[:150]
    damaged = [str(w.message)[:100] for w in caught if issubclass(w.category, DamagedProjectWarning)]
    with c:
        if damaged:
            return f"warned: {damaged[0]}"
        s = c.samples
        for r in s.itertuples():
            p = c.project / str(r.file)
            if not p.is_file() or content_hash(p.read_bytes()) != r.hash:
                return f"{r.id}: image missing or changed"
        if s.loc[s["id"] == "r000001", "feedback"].item() != "good":
            return "the earlier 'good' mark is gone"
        gen = s[s["source"] == "generated"]
        if c.rounds:
            last = c.rounds[-1]
            if last["status"] not in ("interrupted", "done", "failed", "cancelled"):
                return f"round left {last['status']}"
            if int(last.get("stored", -1)) != int((gen["round"] == last["round"]).sum()):
                return f"round says {last.get('stored')} stored, table has {int((gen['round'] == last['round']).sum())}"
        elif len(gen):
            return "generated rows without a round entry"
        c.store.add([make_image(5000, 24)], [{"label": "a"}])  # the next commit works
    return ""


def probe_kill_round(work: Path, n: int) -> None:
    script = work / "round_child.py"
    script.write_text(HOOK + ROUND_CHILD)
    base = work / "kr"
    round_project(base / "p")
    plant_user_files(base)
    trial = work / "kr-trial"
    shutil.copytree(base, trial)
    total = ops_of(run_child(script, [str(trial / "p"), "3"], 0))
    shutil.rmtree(trial)
    tally = Tally()
    for at in points(total, n):
        shutil.copytree(base, trial)
        before = user_files(trial)
        proc = run_child(script, [str(trial / "p"), "3"], at)
        why = (
            check_round_project(trial / "p") if proc.returncode == -9 else f"rc {proc.returncode}: {proc.stderr[-200:]}"
        )
        tally.add(why, user_files(trial) == before, f"op {at}")
        shutil.rmtree(trial)
    tally.record("kill-round", f"generate 6 images, {total} file ops, killed at {tally.tried}")


# ---- full disk ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def small_disk(path: Path, size_kb: int) -> Iterator[bool]:
    """A tmpfs of size_kb at `path` (True), or just the folder (False) where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    ok = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)], capture_output=True, check=False
        ).returncode
        == 0
    )
    try:
        yield ok
    finally:
        if ok:
            subprocess.run(["umount", str(path)], capture_output=True, check=False)


def tree_size_kb(path: Path) -> int:
    """What a tree takes on a tmpfs: whole 4 KB pages per file, plus a page per folder."""
    return sum(4 * (-(-p.stat().st_size // 4096)) if p.is_file() else 4 for p in path.rglob("*")) + 4


def probe_disk_export(work: Path, n: int) -> None:
    from datacrafter_widget.controller.export import export_project
    from datacrafter_widget.data.store import SampleStore

    for fmt in ("imagefolder", "csv", "hf"):
        proj, old_proj = work / f"dx-{fmt}" / "p", work / f"dx-{fmt}" / "old"
        small_project(old_proj, per_class=15)
        shutil.copytree(old_proj, proj)
        probe = work / "dx-size"
        export_project(SampleStore(old_proj, readonly=True), ["a", "b"], probe / "ds", format="csv")
        old_kb = tree_size_kb(probe / "ds")
        shutil.rmtree(probe)
        with SampleStore(proj) as store:
            store.add([make_image(700 + k, 24) for k in range(30)], [{"label": "b"}] * 30)
        tally = Tally()
        full = 0
        real = True
        for k in range(n):
            mnt = work / "dx-mnt"
            # room for the old export plus 10 % .. 100 % of another one: the new one cannot fit
            size = old_kb + 64 + int(old_kb * (0.1 + 0.9 * k / max(1, n - 1)))
            with small_disk(mnt, size) as mounted:
                real = mounted
                try:
                    export_project(SampleStore(old_proj, readonly=True), ["a", "b"], mnt / "ds", format="csv")
                except OSError:
                    continue  # the old export itself does not fit this size
                # the new export (the probed format, twice the images) cannot fit beside the old one
                plant_user_files(mnt)
                before = user_files(mnt)
                old = {p.relative_to(mnt).as_posix(): p.read_bytes() for p in (mnt / "ds").rglob("*") if p.is_file()}
                why = ""
                if not real:  # no tmpfs here: inject ENOSPC at the k-th write instead
                    why = "no tmpfs (run as root for a real full disk)"
                else:
                    try:
                        with SampleStore(proj, readonly=True) as st:
                            with warnings.catch_warnings():
                                warnings.simplefilter("ignore")
                                export_project(st, ["a", "b"], mnt / "ds", format=fmt, overwrite=True)
                        why = export_complete(mnt / "ds")  # it fit after all: then it must be complete
                    except OSError as exc:
                        full += 1
                        if exc.errno != errno.ENOSPC and "No space" not in str(exc):
                            why = f"{type(exc).__name__}: {exc}"[:120]
                        now = {
                            p.relative_to(mnt).as_posix(): p.read_bytes()
                            for p in (mnt / "ds").rglob("*")
                            if p.is_file()
                        }
                        if now != old:
                            why = why or "the old export changed"
                        left = sorted(p.name for p in mnt.iterdir())
                        if left != ["ds", "user_dir", "user_notes.txt"]:
                            why = why or f"left {left}"
                    except Exception as exc:  # noqa: BLE001
                        why = f"{type(exc).__name__}: {exc}"[:120]
                tally.add(why, user_files(mnt) == before, f"{size} KB")
        variation = (
            f"{fmt} over an older export, tmpfs of {n} sizes ({full} ran out of space)" if real else f"{fmt} (no tmpfs)"
        )
        tally.record("disk-export", variation)


def probe_disk_round(work: Path, n: int) -> None:
    script = work / "round_child.py"
    script.write_text(HOOK + ROUND_CHILD)
    base = work / "dr"
    round_project(base / "p")
    proj_kb = tree_size_kb(base / "p")
    tally = Tally()
    real = True
    for k in range(n):
        mnt = work / "dr-mnt"
        size = proj_kb + 48 + 24 * k  # the project plus a little: the round fills it part way
        with small_disk(mnt, size) as mounted:
            real = mounted
            if not real:
                break
            try:
                shutil.copytree(base / "p", mnt / "p")
            except OSError:
                continue
            plant_user_files(mnt)
            before = user_files(mnt)
            proc = run_child(script, [str(mnt / "p"), "6"], 0)
            why = ""
            if proc.returncode != 0 and "No space left" not in proc.stderr:
                why = f"rc {proc.returncode}: {proc.stderr.strip().splitlines()[-1][:120]}"
            if not why:
                subprocess.run(["mount", "-o", f"remount,size={size + 4096}k", str(mnt)], check=False)
                why = check_round_project(mnt / "p")
            tally.add(why, user_files(mnt) == before, f"{size} KB")
    if not real:  # inject ENOSPC at n points of the round instead
        trial = work / "dr-trial"
        shutil.copytree(base, trial)
        total = ops_of(run_child(script, [str(trial / "p"), "3"], 0))
        shutil.rmtree(trial)
        for at in points(total, n):
            shutil.copytree(base, trial)
            plant_user_files(trial)
            before = user_files(trial)
            proc = run_child(script, [str(trial / "p"), "3"], at, act="enospc")
            why = "" if "No space left" in proc.stderr else f"rc {proc.returncode}: {proc.stderr[-150:]}"
            why = why or check_round_project(trial / "p")
            tally.add(why, user_files(trial) == before, f"op {at}")
            shutil.rmtree(trial)
    tally.record("disk-round", f"generate on a tmpfs of {n} sizes" if real else f"ENOSPC injected at {n} points")


# ---- damage ------------------------------------------------------------------------------------------------
DERIVED = ("map.json", "layout.safetensors", "content_labels.json", "embeddings/", "student/")


def rich_project(path: Path) -> None:
    """A project with every kind of file: rounds, feedback, prompts, embeddings, student, several segments."""
    import torch

    import datacrafter_widget as dc
    from datacrafter_widget.models.embedder import Embedder
    from datacrafter_widget.models.generator import Generator
    from tiny_models import tiny_open_clip, tiny_sd_pipeline

    torch.set_num_threads(1)
    model, preprocess, tokenizer = tiny_open_clip()
    models = dc.Models(
        generator=Generator(tiny_sd_pipeline(), name="tiny-sd", default_steps=2),
        embedder=Embedder(model, preprocess, tokenizer, name="tiny-clip"),
    )
    ds = dc.Dataset.from_images([make_image(k, 24) for k in range(12)], ["a"] * 6 + ["b"] * 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with dc.DataCrafter(ds, models=models, project=path) as c:
            c.store.compact()
            ids = c.generate(per_class=2, strategy="class", progress=False)
            c.feedback(good=ids[:1], bad=ids[1:2])
            c.set_prompt("a", "a photo of a red a")
            c.update_projection()
            c.train_student(epochs=1, progress=False, kind="cnn", seed=0)


def observe(path: Path) -> tuple[dict[str, Any] | None, str, list[str]]:
    """What a person sees of the project: (facts or None, the error, warning texts)."""
    import datacrafter_widget as dc

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        facts: dict[str, Any] = {}
        error = ""
        try:
            with dc.DataCrafter.open(path) as c:
                s = c.samples
                facts["samples"] = s.drop(columns=["created"]).to_json()
                facts["rounds"] = json.dumps(
                    [{k: v for k, v in r.items() if k != "finished"} for r in c.rounds], default=str
                )
                facts["feedback"] = json.dumps(c.feedback_log, default=str)
                facts["prompts"] = json.dumps(c.prompts, default=str)
                facts["next_round"] = c.next_round()
                facts["projection"] = len(c.projection)
                facts["embeddings"] = c.store.missing_embeddings(s["hash"].tolist(), "tiny-clip")
                out = Path(tempfile.mkdtemp(dir=path.parent)) / "export"
                c.export(out, format="csv")
                facts["export"] = sorted(p.name for p in (out / "images").iterdir())
                shutil.rmtree(out.parent)
        except Exception as exc:  # noqa: BLE001 - a probe records every failure
            error = f"{type(exc).__name__}: {exc}"
    return (facts if not error else None), error, [f"{w.category.__name__}: {w.message}" for w in caught]


def damages(p: Path) -> list[tuple[str, Callable[[Path], None]]]:
    def cut(f: Path) -> None:
        f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 2)])

    def zero(f: Path) -> None:
        f.write_bytes(b"\0" * f.stat().st_size)

    def flip(f: Path) -> None:
        data = bytearray(f.read_bytes())
        mid = len(data) // 2
        for i in range(mid, min(len(data), mid + 16)):
            data[i] ^= 0xFF
        f.write_bytes(bytes(data))

    out: list[tuple[str, Callable[[Path], None]]] = [
        ("deleted", lambda f: f.unlink()),
        ("truncated", cut),
        ("zero-filled", zero),
        ("16 bytes flipped", flip),
    ]
    if p.suffix == ".json":
        for shape in ('[1, "x"]', "{}", "null", '"x"', "[]"):
            out.append((f"json {shape}", lambda f, s=shape: f.write_text(s)))
    return out


def probe_damage(work: Path) -> None:
    base = work / "dm"
    rich_project(base / "p")
    plant_user_files(base)
    baseline, err, _ = observe(base / "p")
    assert baseline is not None, err
    files = sorted(
        p.relative_to(base / "p").as_posix()
        for p in (base / "p").rglob("*")
        if p.is_file() and p.name != ".lock" and not p.relative_to(base / "p").as_posix().startswith("images/")
    )
    files.append(sorted(p.relative_to(base / "p").as_posix() for p in (base / "p" / "images").iterdir())[0])
    by_file: dict[str, list[int]] = {}
    fails: list[str] = []
    trial = work / "dm-trial"
    for rel in files:
        for name, damage in damages(base / "p" / rel):
            shutil.copytree(base, trial)
            before = user_files(trial)
            damage(trial / "p" / rel)
            facts, error, warned = observe(trial / "p")
            stem = Path(rel).name
            named = stem in error or any(stem in w for w in warned)
            derived = any(rel.startswith(d) or rel == d for d in DERIVED)
            if error:
                ok = named and not error.startswith(("AttributeError", "KeyError", "TypeError", "IndexError"))
            else:
                ok = named or derived or facts == baseline
            if rel.startswith("images/") and error:
                ok = ok or "its image file" in error
            row = by_file.setdefault(rel, [0, 0, 0])
            row[0] += 1
            row[1] += ok
            row[2] += user_files(trial) == before
            if not ok:
                fails.append(f"{rel} {name}: {(error or 'silently different')[:110]}")
            shutil.rmtree(trial)
    groups: dict[str, list[int]] = {}
    for rel, (t, h, u) in by_file.items():
        key = (
            "segments/seg-*.parquet"
            if rel.startswith("segments/")
            else (
                "images/<hash>.png"
                if rel.startswith("images/")
                else ("embeddings/**/part-*.safetensors" if rel.startswith("embeddings/") else rel)
            )
        )
        g = groups.setdefault(key, [0, 0, 0])
        g[0] += t
        g[1] += h
        g[2] += u
    for key, (t, h, u) in sorted(groups.items()):
        notes = "; ".join(f for f in fails if f.startswith(key.split("*")[0].split("<")[0]))[:300]
        ROWS.append(("damage", key, t, h, u, notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=20)
    parser.add_argument("--sizes", type=int, default=6)
    parser.add_argument("--only", default="kill-export,kill-round,disk-export,disk-round,damage")
    args = parser.parse_args()
    only = set(args.only.split(","))
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="dc-probe-"))
    t0 = time.time()
    try:
        if "kill-export" in only:
            probe_kill_export(work, args.points)
        if "kill-round" in only:
            probe_kill_round(work, args.points)
        if "disk-export" in only:
            probe_disk_export(work, args.sizes)
        if "disk-round" in only:
            probe_disk_round(work, args.sizes)
        if "damage" in only:
            probe_damage(work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("\n| class | variation | tried | held | user files intact | not held |\n|---|---|---|---|---|---|")
    for cls, var, tried, held, intact, notes in ROWS:
        print(f"| {cls} | {var} | {tried} | {held} | {intact}/{tried} | {notes.replace('|', '/')} |")
    t = sum(r[2] for r in ROWS)
    h = sum(r[3] for r in ROWS)
    u = sum(r[4] for r in ROWS)
    print(f"| **all** | | **{t}** | **{h}** | **{u}/{t}** | |")
    print(f"\n({time.time() - t0:.0f} s)")


if __name__ == "__main__":
    main()
