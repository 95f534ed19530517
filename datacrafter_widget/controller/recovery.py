"""Picking up after a killed kernel: rounds left "running", and a first import cut short.

Why here: the store makes every commit atomic, but the controller's own bookkeeping (a round's
status in rounds.json, the class list written at the end of the first import) can still be left
half-way. Opening a project for writing repairs what can be repaired and says how to finish the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pandas as pd

from ..data.store import DamagedFileError, SampleStore


def mark_interrupted_rounds(store: SampleStore) -> list[dict[str, Any]]:
    """Mark rounds still "running" as "interrupted", with the number of images that were stored.

    Only a writer calls this: it holds the project's write lock, so no live process can be running
    one of these rounds. Returns the entries that were changed."""
    if store.readonly:
        return []
    try:
        rounds = store.read_json("rounds.json", []) or []
    except DamagedFileError:
        return []  # reported with its fix where the rounds are used
    stale = [r for r in rounds if isinstance(r, dict) and r.get("status") == "running"]
    if not stale:
        return []
    s = store.samples
    counts = s.loc[s["source"] == "generated", "round"].value_counts()
    now = time.time()
    for entry in stale:
        stored = int(counts.get(int(entry.get("round", -1)), 0))
        entry.update(status="interrupted", stored=stored, interrupted_found=now)
    store.write_json("rounds.json", rounds)
    return stale


def unfinished_import_message(store: SampleStore) -> str:
    """What open() says about a folder whose first import was cut short (no class list yet)."""
    s = store.samples
    real = int((s["source"] == "real").sum()) if len(s) else 0
    return (
        f"{store.path} is not a complete DataCrafter project: its first import of real images was interrupted "
        f"({real} image(s) stored, no class list yet). Resume it with dc.DataCrafter(ds, project={str(store.path)!r}) "
        f"and the same dataset: images already stored are skipped"
    )


def import_counter(samples: pd.DataFrame) -> Counter[tuple[str, str, str]]:
    """How many real images of each (hash, split, label) are already stored, for a resumed import.

    The label is part of the key: an identical image under another label is another sample."""
    if not len(samples):
        return Counter()
    real = samples[samples["source"] == "real"]
    return Counter(zip(real["hash"].astype(str), real["split"].astype(str), real["label"].astype(str)))
