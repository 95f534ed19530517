"""prompts.json, the prompt book: each class's current prompt, its mixture and its history.

The only module that defines, reads or writes the document. Prompt evolution (loop/evolution.py)
computes genomes and results and never sees the file; the book turns its result into the next
document (`apply_evolution`), the map's prompt edits (`set_prompt` / `accept` / `revert`) likewise,
and `generate(strategy="evolved")` reads the prompts back (`evolved`). The edit functions are pure
(document in, next document out) so they can be tested and reused without a project.

Document: {"schema_version": 1, "classes": {class: {"prompt", "negative_prompt", "phrases",
"negative", "mixture", "balance", "ranked", "accepted", "history": [{action, time, prompt, ...}]}}}.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar

from ..data.store import SampleStore
from ..loop.strategies import StrategyError, check_classes
from .map_view import MapToolError

if TYPE_CHECKING:
    from ..loop.evolution import EvolutionResult, Genome

PROMPTS_FILE = "prompts.json"
PROMPT_ACTIONS = ("evolved", "edit", "accept", "revert")
_T = TypeVar("_T")

__all__ = [
    "PROMPTS_FILE",
    "PromptBook",
    "PromptEntry",
    "prompts",
    "set_prompt",
    "accept_prompt",
    "revert_prompt",
    "current_prompts",
    "apply_to_prompts_doc",
    "prompts_shape",
]


def prompts_shape(doc: Any) -> str:
    """prompts.json: a dict whose "classes" (if any) maps class names to entries (dicts); '' if it fits."""
    if not isinstance(doc, dict):
        return f"it holds a {type(doc).__name__}, not a prompts document (a dict)"
    classes = doc.get("classes", {})
    if not isinstance(classes, dict):
        return f"its classes are {str(classes)[:40]!r}, not {{class: entry}}"
    for cls, e in classes.items():
        if not isinstance(e, dict):
            return f"class {cls!r} has {str(e)[:40]!r}, not a prompt entry"
        if not isinstance(e.get("history", []), list):
            return f"class {cls!r} has a history that is not a list"
        for key in ("prompt", "negative_prompt"):
            if key in e and not isinstance(e[key], str) and not (key == "negative_prompt" and e[key] is None):
                return f"class {cls!r} has {key} {e[key]!r}, not text"
    return ""


class PromptEntry(TypedDict):
    """One class's prompt state as `crafter.prompts` shows it."""

    current: str
    negative_prompt: str
    mixture: list[str]  # the prompts a rebalanced class's images cycle through ([] when one prompt)
    accepted: bool
    history: list[dict[str, object]]


class PromptBook:
    """The prompt book of one project (prompts.json)."""

    def __init__(self, store: SampleStore, classes: Sequence[str]) -> None:
        self.store = store
        self.classes = list(classes)

    def document(self) -> dict[str, object]:
        """The stored document ({} before the first evolution or edit)."""
        return dict(self.store.read_json(PROMPTS_FILE, {}, shape=prompts_shape) or {})

    def entries(self) -> dict[str, PromptEntry]:
        return prompts(self.document(), self.classes)

    def genomes(self, classes: Sequence[str]) -> dict[str, Genome]:
        """What evolution starts from: each class's current genome (empty where none)."""
        return current_prompts(self.document(), classes)

    def evolved(self, classes: Sequence[str] | None) -> tuple[dict[str, list[str]], dict[str, str]]:
        """The prompts and negative prompts of the classes that have one (a rebalanced class has a
        mixture: its images cycle through the list), for `generate(strategy="evolved")`."""
        use = check_classes(classes, self.classes)
        found = {c: e for c, e in prompts(self.document(), use).items() if e["current"]}
        if not found:
            raise StrategyError(
                "no evolved prompts yet: mark images with crafter.feedback(...) and run crafter.evolve() first"
            )
        return (
            {c: list(e["mixture"]) or [e["current"]] for c, e in found.items()},
            {c: e["negative_prompt"] for c, e in found.items()},
        )

    def apply_evolution(self, result: EvolutionResult) -> None:
        self.store.write_json(PROMPTS_FILE, apply_to_prompts_doc(self.document(), result))

    def set_prompt(self, cls: str, prompt: str, *, negative_prompt: str | None = None) -> dict[str, object]:
        return self._edit(lambda doc: set_prompt(doc, self.classes, cls, prompt, negative_prompt=negative_prompt))

    def accept(self, cls: str) -> dict[str, object]:
        return self._edit(lambda doc: accept_prompt(doc, self.classes, cls))

    def revert(self, cls: str, index: int = -2) -> dict[str, object]:
        return self._edit(lambda doc: revert_prompt(doc, self.classes, cls, index))

    def _edit(self, edit: Callable[[dict[str, object]], tuple[dict[str, object], _T]]) -> _T:
        doc, result = edit(self.document())
        self.store.write_json(PROMPTS_FILE, doc)
        return result


# ---- reading ------------------------------------------------------------------------------------
def prompts(doc: Mapping[str, object], classes: Sequence[str]) -> dict[str, PromptEntry]:
    """class -> {current, negative_prompt, mixture, accepted, history: [{action, prompt, time, ...}]}."""
    out: dict[str, PromptEntry] = {}
    entries = doc.get("classes")
    for c, e in entries.items() if isinstance(entries, Mapping) else ():
        if not isinstance(e, Mapping) or str(c) not in classes:
            continue
        history: list[dict[str, object]] = []
        for h in e.get("history", []):
            if isinstance(h, Mapping):
                history.append({**h, "action": str(h.get("action", "evolved")), "prompt": str(h.get("prompt", ""))})
        out[str(c)] = {
            "current": str(e.get("prompt", "")),
            "negative_prompt": str(e.get("negative_prompt") or ""),
            "mixture": [str(p) for p in e.get("mixture") or []],
            "accepted": bool(e.get("accepted", False)),
            "history": history,
        }
    return out


def current_prompts(doc: Mapping[str, Any] | None, classes: Sequence[str]) -> dict[str, Genome]:
    """The current genome per class (empty genome where none): where evolution starts."""
    from ..loop.evolution import Genome

    out = {}
    entries = (doc or {}).get("classes", {})
    for c in classes:
        e = entries.get(c) or {}
        out[c] = Genome(c, tuple(e.get("phrases", ())), tuple(e.get("negative", ())))
    return out


# ---- writing (pure: a document in, the next document out) -----------------------------------------
def apply_to_prompts_doc(doc: Mapping[str, Any] | None, result: EvolutionResult) -> dict[str, Any]:
    """The next document: the winners as current prompts, their ranked candidates, history entries appended."""
    new: dict[str, Any] = json.loads(json.dumps(dict(doc or {})))
    new.setdefault("schema_version", 1)
    entries = new.setdefault("classes", {})
    for c, r in result.classes.items():
        e = entries.setdefault(c, {"history": []})
        best = r.best
        e.update(
            {
                "prompt": best.prompt,
                "negative_prompt": best.genome.negative_prompt(),
                "phrases": list(best.genome.phrases),
                "negative": list(best.genome.negative),
                "mixture": list(r.mixture),
                "balance": {b.axis: {p or "(none)": round(w, 4) for p, w in b.weights.items()} for b in r.balance},
                "ranked": [
                    {
                        "prompt": k.prompt,
                        "negative_prompt": k.genome.negative_prompt(),
                        "fitness": _finite(k.fitness),
                        "parts": {n: _finite(v) for n, v in k.parts.items()},
                    }
                    for k in r.ranked
                ],
            }
        )
        e.setdefault("history", []).append(
            {
                "round": result.round,
                "time": time.time(),
                "prompt": best.prompt,
                "negative_prompt": best.genome.negative_prompt(),
                "fitness": _finite(best.fitness),
                "parts": {n: _finite(v) for n, v in best.parts.items()},
                "diff": list(r.diff),
            }
        )
    return new


def _finite(x: float) -> float | None:
    """json has no NaN: a fitness that could not be measured is stored as null."""
    return float(x) if math.isfinite(float(x)) else None


def _check_class(cls: str, classes: Sequence[str]) -> str:
    if str(cls) not in classes:
        raise MapToolError(f"unknown class {cls!r}: use one of {list(classes)}")
    return str(cls)


def set_prompt(
    doc: Mapping[str, object],
    classes: Sequence[str],
    cls: str,
    prompt: str,
    *,
    negative_prompt: str | None = None,
    action: str = "edit",
) -> tuple[dict[str, object], dict[str, object]]:
    """`doc` (left as it is) with `prompt` as the class's current prompt and the change appended to
    its history: returns (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    if action not in PROMPT_ACTIONS:
        raise MapToolError(f"unknown prompt action {action!r}: use one of {PROMPT_ACTIONS}")
    if not isinstance(prompt, str) or not isinstance(negative_prompt, (str, type(None))):
        bad = prompt if not isinstance(prompt, str) else negative_prompt
        raise MapToolError(
            f"the prompt for {cls!r} is {bad!r} ({type(bad).__name__}), not text: give the prompt as a string, "
            f"e.g. 'a photo of a {cls}'"
        )
    prompt = prompt.strip()
    if not prompt:
        raise MapToolError(f"the prompt for {cls!r} is empty: type a prompt, e.g. 'a photo of a {cls}'")
    new: dict[str, Any] = json.loads(json.dumps(doc))
    new.setdefault("schema_version", 1)
    entry = new.setdefault("classes", {}).setdefault(cls, {"history": []})
    if negative_prompt is None:
        negative_prompt = str(entry.get("negative_prompt", ""))
    if action != "accept" and prompt != entry.get("prompt"):
        # A typed prompt no longer matches evolution's phrase genome: the next evolution starts from the text.
        entry.pop("phrases", None)
        entry.pop("negative", None)
        entry.pop("mixture", None)  # a typed prompt serves every image of the class
        entry.pop("balance", None)
    entry.update(prompt=prompt, negative_prompt=str(negative_prompt), accepted=action in ("accept", "revert", "edit"))
    item: dict[str, object] = {
        "action": action,
        "time": time.time(),
        "prompt": prompt,
        "negative_prompt": str(negative_prompt),
    }
    entry.setdefault("history", []).append(item)
    return new, item


def accept_prompt(
    doc: Mapping[str, object], classes: Sequence[str], cls: str
) -> tuple[dict[str, object], dict[str, object]]:
    """Accept the class's current (evolved) prompt as it is: (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    current = prompts(doc, classes).get(cls)
    if not current or not current["current"]:
        raise MapToolError(f"class {cls!r} has no prompt to accept yet: run crafter.evolve() or crafter.set_prompt()")
    return set_prompt(doc, classes, cls, current["current"], action="accept")


def revert_prompt(
    doc: Mapping[str, object], classes: Sequence[str], cls: str, index: int = -2
) -> tuple[dict[str, object], dict[str, object]]:
    """Make history entry `index` (default: the one before the current prompt) current again:
    (the new document, the history entry)."""
    cls = _check_class(cls, classes)
    entry = prompts(doc, classes).get(cls)
    history = entry["history"] if entry else []
    if not history:
        raise MapToolError(f"class {cls!r} has no prompt history to revert to")
    try:
        old = history[int(index)]
    except IndexError:
        raise MapToolError(
            f"class {cls!r} has {len(history)} prompt(s) in its history; index {index} is out of range"
        ) from None
    negative = old.get("negative_prompt")
    return set_prompt(
        doc,
        classes,
        cls,
        str(old["prompt"]),
        negative_prompt=None if negative is None else str(negative),
        action="revert",
    )
