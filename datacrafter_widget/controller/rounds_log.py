"""rounds.json: one entry per generation round (settings, counts, status); the only module that reads or writes it.

A round's entry is written when its plan is made (status "running") and finished when its job
ends ("done", "cancelled", "failed"); a project opened after a killed kernel marks what was left
"running" as "interrupted", with the number of images that did get stored.
"""

from __future__ import annotations

import time
from typing import Any

import pandas as pd

from ..data.store import DamagedFileError, SampleStore

ROUNDS_FILE = "rounds.json"

__all__ = ["ROUNDS_FILE", "RoundsLog"]


def rounds_shape(doc: Any) -> str:
    """rounds.json: a list of round entries, each a dict with a whole-number round."""
    if not isinstance(doc, list):
        return f"it holds a {type(doc).__name__}, not a list of round entries"
    for k, e in enumerate(doc):
        if not isinstance(e, dict):
            return f"entry {k} is {str(e)[:40]!r}, not a round entry"
        rnd = e.get("round")
        if isinstance(rnd, bool) or not isinstance(rnd, int) or rnd < 0:
            return f"entry {k} has round {rnd!r}, not a whole number"
        if not isinstance(e.get("status", ""), str):
            return f"entry {k} has status {e.get('status')!r}, not text"
    return ""


class RoundsLog:
    """The rounds log of one project."""

    def __init__(self, store: SampleStore) -> None:
        self.store = store

    def entries(self) -> list[dict[str, Any]]:
        """Every round's entry, in round order."""
        return list(self.store.read_json(ROUNDS_FILE, [], shape=rounds_shape) or [])

    def entry(self, rnd: int) -> dict[str, Any] | None:
        return next((r for r in self.entries() if int(r.get("round", -1)) == int(rnd)), None)

    def next_round(self, samples: pd.DataFrame | None = None) -> int:
        """One past the highest round in the samples or the log (a round that stored nothing still counts)."""
        s = self.store.samples if samples is None else samples
        last = int(s["round"].max()) if len(s) else 0
        logged = max([int(r.get("round", 0)) for r in self.entries()] or [0])
        return max(last, logged) + 1

    def log(self, entry: dict[str, Any]) -> None:
        """Record (or replace) the entry of round `entry["round"]`."""
        if "round" not in entry:
            raise ValueError("a round entry needs its 'round' number: use crafter.next_round()")
        rounds = [r for r in self.entries() if int(r.get("round", -1)) != int(entry["round"])]
        rounds.append(dict(entry))
        rounds.sort(key=lambda r: int(r.get("round", 0)))
        self.store.write_json(ROUNDS_FILE, rounds)

    def update(self, rnd: int, **fields: Any) -> None:
        """Add fields to round `rnd`'s entry (its class filter's report, its final status)."""
        entry = self.entry(rnd) or {"round": int(rnd)}
        entry.update(fields)
        self.log(entry)

    def finish(self, rnd: int, status: str, stored: int) -> None:
        self.update(rnd, status=status, stored=int(stored), finished=time.time())

    def mark_interrupted(self) -> list[dict[str, Any]]:
        """Mark rounds still "running" as "interrupted", with the number of images that were stored.

        Only a writer calls this (when a project opens): it holds the project's write lock, so no live
        process can be running one of these rounds. Returns the entries that were changed."""
        if self.store.readonly:
            return []
        try:
            rounds = self.entries()
        except DamagedFileError:
            return []  # reported with its fix where the rounds are used
        stale = [r for r in rounds if isinstance(r, dict) and r.get("status") == "running"]
        if not stale:
            return []
        s = self.store.samples
        counts = s.loc[s["source"] == "generated", "round"].value_counts()
        now = time.time()
        for entry in stale:
            stored = int(counts.get(int(entry.get("round", -1)), 0))
            entry.update(status="interrupted", stored=stored, interrupted_found=now)
        self.store.write_json(ROUNDS_FILE, rounds)
        return stale
