"""The `datacrafter run` configuration: one schema, checked at every depth before anything runs.

A typo (`stpes = 10` under [gap]) or a wrong type (`shots = "five"`) is an error that names the key,
its section and what is allowed, instead of being ignored or failing later with a traceback.
Defaults live in the schema, so examples/starter.toml, the checks and the documentation agree.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..loop.strategies import GENERATE_STRATEGIES as _STRATEGIES

__all__ = ["ConfigError", "Key", "SCHEMA", "load_config", "round_spec"]


class ConfigError(ValueError):
    """A bad run configuration; the message names the key, its section and the fix."""


@dataclass(frozen=True)
class Key:
    """One config key: its type ('int', 'float', 'bool', 'str', 'str list', 'table'), default and help."""

    kind: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None


TOP: dict[str, Key] = {
    "title": Key("str", "datacrafter run", "the report's title"),
    "project": Key("str", "runs/headless", "project folder, relative to the config file"),
}

SCHEMA: dict[str, dict[str, Key]] = {
    "dataset": {
        "kind": Key("str", "starter", "where the images come from", ("starter", "folder")),
        "shots": Key("int", 5, "real training images per class (starter)", minimum=1),
        "spurious": Key(
            "float", 0.0, "share of train images whose background is tied to the class (starter)", minimum=0
        ),
        "seed": Key("int", 0, "which scans and renders make the splits (starter)"),
        "path": Key("str", None, "ImageFolder with class/xxx.jpg (kind = 'folder')"),
        "test": Key("str", None, "an ImageFolder of held-out test images (kind = 'folder')"),
    },
    "models": {
        "kind": Key("str", "starter", "which models", ("starter", "stable_diffusion")),
        "model": Key("str", None, "hub id or local folder of a Stable Diffusion pipeline"),
        "clip": Key("str list", None, "open_clip [architecture, pretrained tag]"),
        "captioner": Key("str", None, "hub id or folder of a transformers image-to-text model"),
        "device": Key("str", "auto", "torch device", ("auto", "cpu", "cuda", "mps")),
        "steps": Key("int", None, "default sampling steps of the generator", minimum=1),
        "guidance": Key("float", None, "default classifier-free guidance scale", minimum=0),
    },
    "feedback": {
        "simulate": Key(
            "bool", False, "the starter's independent checker marks off-prompt images bad (a simulated lasso)"
        ),
        "fewer": Key(
            "str list",
            [],
            "attributes whose excess the simulated person lassoes without words, one lasso per value beyond "
            "an even share, so evolution rebalances them (starter)",
            ("background", "foreground"),
        ),
    },
    "evolve": {
        "enabled": Key("bool", False, "evolve prompts from the feedback, then generate a round with them"),
        "population": Key("int", 4, "candidate prompts per class and generation", minimum=1),
        "generations": Key("int", 1, "rounds of mutation and selection", minimum=1),
        "batch": Key("int", 4, "images generated to score each candidate", minimum=1),
        "per_class": Key("int", 5, "images per class generated with the evolved prompts", minimum=1),
        "vocabulary": Key("str list", None, "phrases evolution may add (default: the starter's attribute words)"),
    },
    "gap": {
        "enabled": Key("bool", False, "learn adversarial prompt tokens against the student (GAP)"),
        "target": Key("str", "a digit on any background", "a description of the test distribution"),
        "per_class": Key("int", 3, "GAP images stored per class", minimum=1),
        "steps": Key("int", 30, "optimisation steps per class", minimum=1),
        "shared": Key("bool", False, "one token set for every class (k times cheaper)"),
        "sources": Key("str", "none", "start from the real train images (img2img) or from noise", ("none", "train")),
        "masks": Key("str", "none", "keep each source's object pixels", ("none", "plain-background")),
        "strength": Key("float", 0.8, "img2img strength from the source", minimum=0),
        "lr": Key("float", 1e-3, "learning rate of the tokens", minimum=0),
        "n_tokens": Key("int", 8, "learned tokens per prompt", minimum=1),
        "sampler_steps": Key("int", 5, "sampling steps with gradient during optimisation", minimum=1),
        "final_steps": Key("int", 15, "sampling steps for the stored images", minimum=1),
        "guidance": Key("float", 5.0, "classifier-free guidance scale", minimum=0),
        "batch": Key("int", 4, "images per optimisation step", minimum=1),
        "template": Key("str", "a photo of a {class}", "the prompt the tokens are appended to"),
        "text_weight": Key("float", 20.0, "weight of the target-description term", minimum=0),
        "adversarial_weight": Key("float", 1.0, "weight of the adversarial term", minimum=0),
    },
    "student": {
        "kind": Key(
            "str",
            "auto",
            "the student classifier (auto: small CNN for small images, else a CLIP probe)",
            ("auto", "cnn", "probe"),
        ),
        "epochs": Key("int", None, "training epochs (default: the student's own budget)", minimum=1),
        "seed": Key("int", 0, "training seed"),
        "seeds": Key(
            "int", 1, "train the first and last stage with this many seeds to show the seed spread", minimum=1
        ),
        "evaluate_each_round": Key("bool", True, "retrain and evaluate after every generation round"),
    },
    "backend": {  # controller/backends.py, docs/ray.md
        "kind": Key("str", "local", "where rounds, captions and embeddings run", ("local", "ray")),
        "address": Key("str", "auto", "Ray cluster: 'auto' (running cluster), 'ray://host:10001' or 'local'"),
        "workers": Key("int", 1, "Ray workers, each loading the models once", minimum=1),
        "gpus_per_worker": Key("float", 0.0, "GPUs per Ray worker", minimum=0),
        "cpus_per_worker": Key("float", 1.0, "CPUs per Ray worker", minimum=0),
        "batch_size": Key("int", None, "images per pipeline call on a worker (default: the round's)", minimum=1),
    },
    "export": {
        "enabled": Key("bool", False, "export the expanded dataset at the end"),
        "format": Key("str", "imagefolder", "export format", ("imagefolder", "csv", "hf")),
        "path": Key("str", "", "folder, relative to this file (default: '<project>-export' beside the project folder)"),
    },
}


def _where(section: str | None) -> str:
    return f"[{section}]" if section else "the top level"


def _unknown(key: str, section: str | None, allowed: Mapping[str, Any]) -> ConfigError:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ConfigError(
        f"unknown key {key!r} in {_where(section)}{hint}: the keys of {_where(section)} are "
        f"{', '.join(sorted(allowed))}"
    )


def _check_value(key: str, value: Any, spec: Key, section: str | None) -> Any:
    where = f"{key} in {_where(section)}"
    kind = spec.kind
    if kind == "bool":
        ok = isinstance(value, bool)
    elif kind == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "float":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif kind == "str":
        ok = isinstance(value, str)
    elif kind == "str list":
        ok = isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    else:  # table
        ok = isinstance(value, Mapping)
    if not ok:
        names = {
            "int": "a whole number",
            "float": "a number",
            "bool": "true or false",
            "str": "a string in quotes",
            "str list": "a string or a list of strings",
            "table": "a table",
        }
        raise ConfigError(
            f"{where} = {value!r} must be {names[kind]} ({spec.help})"
            + (f"; allowed: {', '.join(map(repr, spec.choices))}" if spec.choices else "")
        )
    if spec.choices:
        values = [value] if isinstance(value, str) else list(value) if kind == "str list" else [value]
        bad = [v for v in values if v not in spec.choices]
        if bad:
            raise ConfigError(
                f"{where} = {bad[0]!r} is not allowed: use one of {', '.join(map(repr, spec.choices))} ({spec.help})"
            )
    if spec.minimum is not None and isinstance(value, (int, float)) and value < spec.minimum:
        raise ConfigError(f"{where} = {value!r} must be at least {spec.minimum:g} ({spec.help})")
    return value


def _check_table(raw: Any, keys: Mapping[str, Key], section: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ConfigError(
            f"[{section}] must be a table ([{section}] on its own line, then key = value lines), got {raw!r}"
        )
    for key in raw:
        if key not in keys:
            raise _unknown(str(key), section, keys)
    out = {k: spec.default for k, spec in keys.items()}
    for key, value in raw.items():
        out[key] = _check_value(key, value, keys[key], section)
    return out


def load_config(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """Read and check a TOML config (or a dict) against SCHEMA; returns it with every default filled in.

    `_base` is the folder relative paths are resolved against (the config file's folder).
    """
    if isinstance(source, Mapping):
        raw, base = dict(source), Path.cwd()
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(
                f"config file {str(path)!r} does not exist: pass the path of a .toml file (see examples/starter.toml)"
            )
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        base = path.resolve().parent
    allowed = {**TOP, **SCHEMA, "rounds": Key("table", [], "generation rounds: [[rounds]] tables")}
    for key in raw:
        if key not in allowed:
            raise _unknown(str(key), None, allowed)
    cfg: dict[str, Any] = {k: _check_value(k, raw.get(k, spec.default), spec, None) for k, spec in TOP.items()}
    for section, keys in SCHEMA.items():
        cfg[section] = _check_table(raw.get(section, {}), keys, section)
    rounds = raw.get("rounds", [])
    if not isinstance(rounds, list):
        raise ConfigError('rounds must be an array of tables: [[rounds]] then strategy = "class" and per_class = 5')
    cfg["rounds"] = []
    for i, r in enumerate(rounds):
        round_spec(r, i)  # checked now, before anything runs
        cfg["rounds"].append(dict(r))
    _check_combinations(cfg)
    _check_paths(cfg, base)
    cfg["_base"] = str(base)
    return cfg


def resolve_path(base: Path, value: str) -> Path:
    """A config path: relative ones are relative to the config file's folder."""
    p = Path(value).expanduser()
    return (p if p.is_absolute() else base / p).resolve()


def _check_paths(cfg: Mapping[str, Any], base: Path) -> None:
    """Folders the run reads must exist now, before anything loads: the error names the key and the path."""
    d = cfg["dataset"]
    if d["kind"] != "folder":
        return
    for key, what in (
        ("path", "the images, one folder per class (or train/ and test/ folders)"),
        ("test", "the held-out images"),
    ):
        if not d[key]:
            continue
        folder = resolve_path(base, d[key])
        if not folder.is_dir():
            state = "is a file, not a folder" if folder.exists() else "does not exist"
            raise ConfigError(
                f"{key} in [dataset] = {d[key]!r}: {folder} {state} (relative paths are relative to the config "
                f"file's folder, {base}): set it to the folder holding {what}"
            )


def backend_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The [backend] table as DataCrafter(backend=...) takes it (see controller/backends.py)."""
    b = cfg["backend"]
    return {"kind": "local"} if b["kind"] == "local" else dict(b)


def round_spec(table: Any, i: int) -> Any:
    """A [[rounds]] table as the RoundSpec that crafter.generate(spec=...) runs (per_class defaults to 5).

    The spec's own checks apply (the same as the API and the widget); errors name the table.
    """
    from ..controller.round_spec import RoundSpec, RoundSpecError

    where = f"[[rounds]] table {i + 1}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where} must be a table of settings, got {table!r}")
    allowed = sorted({f.name for f in fields(RoundSpec)} | {"strategy"})
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            raise ConfigError(
                f"unknown key {key!r} in {where}"
                + (f" (did you mean {close[0]!r}?)" if close else "")
                + f": the keys of a round are {', '.join(allowed)}"
            )
    if "strategy" not in table and "strategies" not in table:
        raise ConfigError(f"strategy in {where} is missing: use one of {', '.join(map(repr, _STRATEGIES))}")
    try:
        return RoundSpec.from_dict({"per_class": 5, **table})
    except RoundSpecError as err:
        raise ConfigError(f"{where}: {err}") from err


def _check_combinations(cfg: Mapping[str, Any]) -> None:
    """Rules that involve more than one key."""
    d, m, g = cfg["dataset"], cfg["models"], cfg["gap"]
    if d["kind"] == "folder" and not d["path"]:
        raise ConfigError("dataset.kind = 'folder' needs dataset.path (a folder of class/xxx.jpg)")
    if d["kind"] == "starter" and (d["path"] or d["test"]):
        key = "path" if d["path"] else "test"
        raise ConfigError(
            f"{key} in [dataset] is set, but kind = 'starter' (the default) would ignore it: "
            "set kind = 'folder' in [dataset] to load your own images (see examples/folder.toml)"
        )
    if m["kind"] == "stable_diffusion" and not m["model"]:
        raise ConfigError("models.kind = 'stable_diffusion' needs models.model (a hub id or a local folder)")
    if m["clip"] is not None and (isinstance(m["clip"], str) or len(m["clip"]) != 2):
        raise ConfigError('clip in [models] must be a list of two strings: clip = ["ViT-B-32", "laion2b_s34b_b79k"]')
    if g["masks"] != "none" and g["sources"] == "none":
        raise ConfigError("gap.masks needs gap.sources = 'train': masks keep the object of a source image")
    if cfg["feedback"]["simulate"] and d["kind"] != "starter":
        raise ConfigError(
            "simulate in [feedback] = true needs dataset.kind = 'starter': the simulated person is the starter kit's "
            "checker of digits and colours, which cannot judge your images. Set simulate = false in [feedback] "
            "(and remove fewer) to run without feedback, or give feedback in the notebook (examples/folder.toml)"
        )
    if cfg["feedback"]["fewer"] and not cfg["feedback"]["simulate"]:
        raise ConfigError("feedback.fewer is part of the simulated person: set feedback.simulate = true as well")
