"""The project's own list of its commits (commits.json), so a lost or changed commit is named.

Why: the append log is a folder of segment files, and a folder cannot tell a deleted newest file
from one never written; a sync tool or a hand removing the newest segment would silently show
the project one commit earlier. commits.json lists every segment since the last compaction with
its sha256, size and what it held (added samples, or the columns an update set, with ids), and
the compacted samples.parquet with its sha256. It is rewritten atomically after each segment; the
segment's rename stays the commit point, so a kill between the two loses nothing (a complete
segment newer than the list is accepted and listed on the next write).

Document shape: {"version": 1, "base": {"through", "sha256", "rows", "time"} | null,
"commits": [{"seq", "sha256", "bytes", "rows", "kind", "ids", "columns", "time"}, ...],
"documents": {"rounds.json": first written (unix time), ...}}: a primary json document the project
has written and that is now missing is named on read instead of read as "none yet".
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

LOG_NAME = "commits.json"
LOG_VERSION = 1
SHOWN_IDS = 6  # ids kept per commit: enough to say what it held without a 50k-id list

__all__ = ["LOG_NAME", "base_entry", "commit_entry", "describe", "read_log", "sha256"]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def commit_entry(seq: int, data: bytes, ids: Sequence[str], kind: str, columns: Sequence[str] = ()) -> dict[str, Any]:
    """The log entry of one segment: its checksum and what it held."""
    ids = [str(i) for i in ids]
    shown = ids if len(ids) <= SHOWN_IDS else ids[: SHOWN_IDS - 1] + ids[-1:]
    return {
        "seq": int(seq),
        "sha256": sha256(data),
        "bytes": len(data),
        "rows": len(ids),
        "kind": kind,
        "ids": shown,
        "columns": [str(c) for c in columns],
        "time": time.time(),
    }


def base_entry(through: int, data: bytes, rows: int) -> dict[str, Any]:
    """The log entry of a compacted samples.parquet."""
    return {"through": int(through), "sha256": sha256(data), "rows": int(rows), "time": time.time()}


def describe(entry: dict[str, Any]) -> str:
    """What a commit held, for a message: 'a change of feedback on 1 sample(s): r000001, made 2026-12-07 04:10:00'."""
    rows = int(entry.get("rows", 0))
    ids = [str(i) for i in entry.get("ids", [])]
    listed = ", ".join(ids[:-1] + (["...", ids[-1]] if rows > len(ids) else ids[-1:])) if ids else ""
    kind = entry.get("kind", "")
    if kind == "add":
        what = f"{rows} new sample(s)"
    elif kind == "update":
        cols = ", ".join(entry.get("columns") or []) or "columns"
        what = f"a change of {cols} on {rows} sample(s)"
    else:
        what = f"{rows} sample row(s)"
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(entry.get("time", 0))))
    return f"{what}{': ' + listed if listed else ''}, made {when}"


def read_log(path: Path) -> tuple[dict[str, Any] | None, str]:
    """(the log, '') or (None, why it cannot be used: 'missing' or what is wrong with it)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "missing"
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        return None, f"damaged ({type(exc).__name__})"
    problem = _shape_problem(doc)
    return (None, f"damaged ({problem})") if problem else (doc, "")


def _shape_problem(doc: Any) -> str:
    if not isinstance(doc, dict) or not isinstance(doc.get("commits"), list):
        return "not a dict with a 'commits' list"
    base = doc.get("base")
    if base is not None and not (
        isinstance(base, dict) and isinstance(base.get("through"), int) and isinstance(base.get("sha256"), str)
    ):
        return "its 'base' entry is not {through, sha256, rows}"
    if not isinstance(doc.get("documents", {}), dict):
        return "its 'documents' entry is not {name: time}"
    for k, e in enumerate(doc["commits"]):
        if not (isinstance(e, dict) and isinstance(e.get("seq"), int) and isinstance(e.get("sha256"), str)):
            return f"commit entry {k} is not {{seq, sha256, ...}}"
    return ""
