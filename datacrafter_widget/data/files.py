"""Files written safely: atomic writes (old file or whole new one, never half) and safe file names.

The lowest layer of file handling: the store, the loop's model files (student, GAP tokens), the
report and the exports all write through `atomic_write_bytes`, and name files with `slug`.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_many", "fsync_dir", "slug"]


def fsync_dir(path: Path) -> None:
    """fsync a folder (so a rename in it survives a power loss); quietly nothing where that is not possible."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True, sync_dir: bool = True) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one.

    The rename alone makes this safe against a killed process; fsync (file, then folder) makes
    it survive a power loss too.
    """
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk leaves no half-written temp file behind
        raise
    if fsync and sync_dir:
        fsync_dir(path.parent)


def atomic_write_many(items: Sequence[tuple[Path, bytes]], *, fsync: bool = True) -> None:
    """atomic_write_bytes for many files of one folder, with the fsyncs batched.

    Every file is written under a temporary name first, then all are fsynced, then renamed: each
    name still appears only with its complete, synced contents, but the fsyncs after the first are
    cheap (ext4 commits the others' data with the first), about 3x faster for thousands of small
    PNGs than one write-fsync-rename per file.
    """
    tmps: list[Path] = []
    try:
        for path, data in items:
            tmp = _tmp_name(path)
            tmps.append(tmp)
            with open(tmp, "wb") as f:
                f.write(data)
        if fsync:
            for tmp in tmps:
                fd = os.open(tmp, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        for tmp, (path, _) in zip(tmps, items):
            os.replace(tmp, path)
    except BaseException:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise
    if fsync and items:
        fsync_dir(items[0][0].parent)


def slug(text: str) -> str:
    """A file-name-safe, readable and unique name for `text`: its safe characters (at most 60) and
    8 hex digits of its sha256, so two texts that read alike never share a file."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._")[:60] or "key"
    return f"{readable}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
