"""Picking up after a killed kernel: a first import cut short (rounds left "running" are marked
by their owner, RoundsLog.mark_interrupted).

Why here: the store makes every commit atomic, but the controller's own bookkeeping (a round's
status in rounds.json, the class list written at the end of the first import) can still be left
half-way. Opening a project for writing repairs what can be repaired and says how to finish the rest.
"""

from __future__ import annotations

from collections import Counter

import pandas as pd

from ..data.store import SampleStore


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
