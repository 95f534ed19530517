"""The widget's commands: one table from a name to its typed arguments and a small handler.

A command arrives from the browser as a name and a JSON object; `parse` turns the object into the
command's frozen dataclass (unknown keys and wrong types are refused with the field named), and the
handler does one thing through the controller's public methods. The selection is never an argument:
it is `crafter.selection`, its one owner. Handlers return the status line to show.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Mapping, TypeVar

if TYPE_CHECKING:
    from .view import CrafterView

__all__ = ["COMMANDS", "Command", "parse"]

A = TypeVar("A")
FIELD_TITLES = {"label": "class", "content_label": "content label"}
SELECT_FIRST = "select images first (lasso, box, search, or click a label)"


@dataclass(frozen=True)
class NoArgs:
    """A command that needs nothing but the selection."""


@dataclass(frozen=True)
class GalleryMark:
    index: int  # the point's index on the map
    value: str  # good | bad | remove | clear


@dataclass(frozen=True)
class UnwantedLabel:
    label: str = ""  # the content label clicked on the map


@dataclass(frozen=True)
class Generate:
    strategy: str = "caption"
    count: int = 8  # images per class
    prompt: str = ""  # the custom strategy's template


@dataclass(frozen=True)
class PromptAccept:
    class_name: str


@dataclass(frozen=True)
class PromptEdit:
    class_name: str
    prompt: str


@dataclass(frozen=True)
class PromptRevert:
    class_name: str
    index: int | None = None  # position in the class's prompt history


@dataclass(frozen=True)
class Search:
    query: str = ""
    mode: str = "text"  # text | clip
    k: int = 24


@dataclass(frozen=True)
class Neighbors:
    k: int = 12


@dataclass(frozen=True)
class Filter:
    show_test: bool | None = None
    show_removed: bool | None = None
    hide: dict[str, list[str]] | None = None  # per field: the values to hide (the field's whole list)
    only: dict[str, list[str]] | None = None  # per field: the values to show alone (the legend's alt-click)
    reset: bool = False  # show every value of every field again


@dataclass(frozen=True)
class Isolate:
    clear: bool = False


@dataclass(frozen=True)
class Sample:
    index: int  # the point's index on the map


@dataclass(frozen=True)
class Command(Generic[A]):
    name: str
    args: type[A]
    handler: Callable[[CrafterView, A], str | None]


def parse(command: Command[A], raw: Mapping[str, Any]) -> A:
    """The command's arguments from a JSON object, each checked against its field's type."""
    hints = typing.get_type_hints(command.args)
    names = {f.name for f in dataclasses.fields(command.args)}  # type: ignore[arg-type]
    unknown = sorted(set(raw) - names)
    if unknown:
        raise TypeError(f"command {command.name!r} takes {sorted(names) or 'no arguments'}, not {unknown}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        want = hints[key]
        allowed = typing.get_args(want) or (want,)
        if value is None and type(None) in allowed:
            values[key] = None
            continue
        base = next(a for a in allowed if a is not type(None))
        base = typing.get_origin(base) or base  # dict[str, list[str]] is checked as a dict
        if base is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, base) or (base is int and isinstance(value, bool)):
            raise TypeError(f"command {command.name!r}: {key} must be {base.__name__}, got {value!r}")
        values[key] = value
    return command.args(**values)


# ----------------------------------------------------------------------------- handlers
def _mark(key: str) -> Callable[[CrafterView, NoArgs], str]:
    def handler(view: CrafterView, _args: NoArgs) -> str:
        ids, skipped = view.markable(view.crafter.selection)
        note = f" ({skipped} held-out test images skipped: they are never marked)" if skipped else ""
        if not ids:
            return SELECT_FIRST + note
        counts = view.crafter.feedback(**{key: ids})
        if key == "removed":
            view.crafter.selection = []  # removed images leave the map
        verb = "unmarked" if key == "clear" else f"marked {key}"
        return f"{verb}: {counts['cleared' if key == 'clear' else key]} images{note} (Undo: ctrl+z)"

    return handler


def gallery_mark(view: CrafterView, args: GalleryMark) -> str:
    key = {"bad": "bad", "good": "good", "remove": "removed", "clear": "clear"}.get(args.value)
    if key is None:
        raise ValueError(f"unknown mark {args.value!r}: use bad, good, remove or clear")
    if not 0 <= args.index < len(view.ids):
        return "no such image"
    one, skipped = view.markable([view.ids[args.index]])
    if not one:
        return "held-out test images are never marked"
    view.crafter.feedback(**{key: one})
    return f"{one[0]}: {'unmarked' if key == 'clear' else key}"


def undo(view: CrafterView, _args: NoArgs) -> str:
    return f"undo: {len(view.crafter.undo())} images restored"


def redo(view: CrafterView, _args: NoArgs) -> str:
    return f"redo: the marks of {len(view.crafter.redo())} images applied again"


def unwanted_label(view: CrafterView, args: UnwantedLabel) -> str:
    if not args.label:
        return "click a content label first"
    ids, _ = view.markable(view.crafter.selection)
    gen = [i for i in ids if view.row(i).get("source") == "generated"]
    view.crafter.feedback(bad=gen, bad_labels=[args.label])
    return f"label {args.label!r} marked unwanted on {len(gen)} generated images"


def evolve(view: CrafterView, _args: NoArgs) -> str | None:
    ids, _ = view.markable(view.crafter.selection)
    return view.evolve(ids)


def generate(view: CrafterView, args: Generate) -> str:
    """The Generate panel's settings become a RoundSpec: the same checks and errors as crafter.generate."""
    from ..controller.round_spec import RoundSpec

    table: dict[str, Any] = {"strategy": args.strategy, "per_class": args.count}
    if args.strategy == "custom":
        table["prompts"] = args.prompt
    job = view.crafter.generate_background(RoundSpec.from_dict(table))
    return f"generating: {getattr(job, 'description', 'job')}"


def cancel(view: CrafterView, _args: NoArgs) -> str:
    view.cancel()
    return "cancelling; finished work is kept"


def prompt_accept(view: CrafterView, args: PromptAccept) -> str:
    view.crafter.accept_prompt(args.class_name)
    return view.prompts_changed(args.class_name, "accepted")


def prompt_edit(view: CrafterView, args: PromptEdit) -> str:
    view.crafter.set_prompt(args.class_name, args.prompt)
    return view.prompts_changed(args.class_name, "saved")


def prompt_revert(view: CrafterView, args: PromptRevert) -> str:
    if args.index is None:
        return f"choose an earlier prompt of {args.class_name!r} to revert to"
    view.crafter.revert_prompt(args.class_name, args.index)
    return view.prompts_changed(args.class_name, "reverted")


def search(view: CrafterView, args: Search) -> str:
    query = args.query.strip()
    if not query:
        view.crafter.selection = []
        return "search cleared"
    found = view.crafter.search(query, mode=args.mode, k=args.k, select=False)
    shown = [i for i in found if view.visible(i)]
    view.crafter.selection = shown  # what is on the map; crafter.search(...) returns every match
    off = f" ({len(found) - len(shown)} more hidden by filters)" if len(found) > len(shown) else ""
    return f"{len(shown)} {'nearest images to' if args.mode == 'clip' else 'matches for'} {query!r}{off}"


def neighbors(view: CrafterView, args: Neighbors) -> str:
    selected = view.crafter.selection
    if not selected:
        return "select one image first, then Similar"
    sid = selected[0]
    # The k nearest among the images on the map: hidden ones (held-out test images, filtered out)
    # would otherwise take most of the k places and leave one or two neighbours selected.
    ask = len(view.ids) if view.any_hidden() else args.k
    near = [i for i in view.crafter.neighbors(sid, ask, select=False) if view.visible(i)][: args.k]
    view.crafter.selection = [sid, *near]
    return f"the {len(near)} nearest images (CLIP) to {sid} on the map"


def filter_(view: CrafterView, args: Filter) -> str | None:
    hide: dict[str, list[str]] | None | str = None if args.reset else (args.hide or "keep")
    view.crafter.filter(show_test=args.show_test, show_removed=args.show_removed, hide=hide, only=args.only)
    hidden = view.crafter.view.hidden_values
    if args.reset or args.hide is not None or args.only:
        shown = int(view.visible_count())
        what = "; ".join(
            f"{FIELD_TITLES.get(f, f)}: {', '.join(v or '(none)' for v in vs)}" for f, vs in hidden.items()
        )
        return f"{shown} images shown" + (f" (hidden: {what})" if what else "")
    return None


def isolate(view: CrafterView, args: Isolate) -> str:
    selected = view.crafter.selection
    if args.clear or not selected:
        view.crafter.isolate(None)
        return "showing every image"
    view.crafter.isolate(selected)
    return f"showing only the {len(selected)} selected images (Show all to undo)"


def show_sample(view: CrafterView, args: Sample) -> None:
    view.widget.show_sample(args.index)


def regenerate(view: CrafterView, args: Sample) -> str | None:
    if not 0 <= args.index < len(view.ids):
        return "no such image"
    return view.regenerate(view.ids[args.index])


def _table(*commands: Command[Any]) -> dict[str, Command[Any]]:
    return {c.name: c for c in commands}


#: Every command the front end can send, by name.
COMMANDS: dict[str, Command[Any]] = _table(
    Command("bad", NoArgs, _mark("bad")),
    Command("good", NoArgs, _mark("good")),
    Command("remove", NoArgs, _mark("removed")),
    Command("unmark", NoArgs, _mark("clear")),
    Command("gallery_mark", GalleryMark, gallery_mark),
    Command("undo", NoArgs, undo),
    Command("redo", NoArgs, redo),
    Command("unwanted_label", UnwantedLabel, unwanted_label),
    Command("evolve", NoArgs, evolve),
    Command("generate", Generate, generate),
    Command("cancel", NoArgs, cancel),
    Command("prompt_accept", PromptAccept, prompt_accept),
    Command("prompt_edit", PromptEdit, prompt_edit),
    Command("prompt_revert", PromptRevert, prompt_revert),
    Command("search", Search, search),
    Command("neighbors", Neighbors, neighbors),
    Command("filter", Filter, filter_),
    Command("isolate", Isolate, isolate),
    Command("show_sample", Sample, show_sample),
    Command("regenerate", Sample, regenerate),
)
