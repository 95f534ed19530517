"""The persistent project folder: every real and generated image with its full provenance.

Layout of a project folder::

    project.json                  {"schema_version": 1, ...}
    samples.parquet               the compacted samples table (+ "compacted_through" in its metadata)
    segments/seg-00000042.parquet append log: each add() / update() writes one small segment
    images/<hash>.png             images by content hash (identical images are stored once)
    embeddings/<key-slug>/part-00000003.safetensors   embedding cache per embedder key
    rounds.json, prompts.json     small json documents (read_json / write_json)
    .lock                         pid / host / time of the writer (fcntl.flock, dies with the process)

Why segments: appending one sample must not rewrite a 50k-row table. Each add() writes its PNGs
(temp file, fsync, rename), then one small parquet segment holding full rows (temp, fsync, rename);
the segment's rename is the commit point. Segments are replayed in order over the base table with
"last row per id wins", so an update() is just a segment holding the changed rows. Every
`COMPACT_SEGMENTS` segments the table is rewritten into `samples.parquet` (atomically) with the
highest folded segment number in its metadata; folded segments are then deleted (and ignored on
open if a kill came first). Replaying a folded segment again would be harmless anyway: segments
hold full row snapshots, so the replay is idempotent.

A process killed at any moment leaves only complete files under their real names; stale
`*.tmp-<pid>` files are ignored by readers and removed by the next writer.

Files damaged from outside (a disk, a sync tool, a hand edit) are named, never read as garbage:
primary files (samples.parquet, a segment, project.json, rounds.json, feedback.json, an image)
raise DamagedFileError with the file and what to do; a missing segment in the middle of the log
warns (DamagedProjectWarning); derived files (embedding parts, read_json(..., derived=True)
documents such as map.json) count as missing and are computed again.
"""

from __future__ import annotations

import errno
import fcntl
import io
import json
import math
import os
import re
import socket
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from .. import limits
from .commits import LOG_NAME, base_entry, commit_entry, describe, read_log, sha256
from .files import atomic_write_bytes, atomic_write_many, slug
from .images import content_hash, png_bytes, to_rgb

SCHEMA_VERSION = 1

# Contract columns (docs/architecture.md) with their types and defaults.
COLUMNS: dict[str, tuple[pa.DataType, Any]] = {
    "id": (pa.string(), ""),
    "hash": (pa.string(), ""),
    "file": (pa.string(), ""),
    "label": (pa.string(), ""),
    "split": (pa.string(), ""),
    "source": (pa.string(), ""),
    "prompt": (pa.string(), ""),
    "negative_prompt": (pa.string(), ""),
    "seed": (pa.int64(), -1),
    "steps": (pa.int64(), -1),
    "guidance": (pa.float64(), math.nan),
    "strength": (pa.float64(), math.nan),
    "parent_id": (pa.string(), ""),
    "round": (pa.int64(), 0),
    "strategy": (pa.string(), ""),
    "model": (pa.string(), ""),
    "feedback": (pa.string(), ""),
    "feedback_labels": (pa.string(), "[]"),
    "flag": (pa.string(), ""),
    "flag_reason": (pa.string(), ""),
    "caption": (pa.string(), ""),
    "created": (pa.float64(), math.nan),
}
FEEDBACK_VALUES = ("", "good", "bad", "removed")
_COMPUTED = ("id", "hash", "file")  # set by the store, never by the caller
_LAYOUT = {"project.json", LOG_NAME, "samples.parquet", "segments", "images", "embeddings", ".lock"}
_TMP = re.compile(r"\.tmp-\d+$")
_SEGMENT = re.compile(r"^seg-(\d{8,})\.parquet$")
_PART = re.compile(r"^part-(\d{8,})\.safetensors$")
_ID = re.compile(r"^([a-z])(\d+)$")
_META_KEY = b"datacrafter"


class StoreError(RuntimeError):
    """A project folder problem; the message names the folder and the fix."""


class ProjectLockedError(StoreError):
    """Another writer (process or SampleStore object) holds the project's write lock."""


class SchemaVersionError(StoreError):
    """The project was written by a newer version of datacrafter-widget."""


class ReadOnlyError(StoreError):
    """A write was attempted on a store opened with readonly=True."""


class DamagedFileError(StoreError):
    """A file of the project cannot be read (truncated, edited or missing); the message names it and the fix."""


class DamagedProjectWarning(RuntimeWarning):
    """Part of a project is missing or unreadable but the rest opens (a deleted segment, a damaged cache)."""


class ProjectNote(UserWarning):
    """Something worth knowing about a project that is not damage (e.g. it predates the commit log)."""


class _Retry(Exception):
    """A readonly view read files from two moments of a writer's compaction: read again."""


# What to do when a primary json document is damaged (derived ones are rebuilt instead).
_JSON_FIX = {
    "project.json": "restore it from a backup (it holds the schema version and the class list); the samples, "
    "images and other files are untouched",
    "rounds.json": "restore it from a backup, or move it aside (e.g. rename it to rounds.json.bad) to start a new "
    "round log; the samples keep their round numbers",
    "feedback.json": "restore it from a backup, or move it aside to start a new feedback log; the good / bad marks "
    "themselves are kept in the samples table",
    "prompts.json": "restore it from a backup, or move it aside and run crafter.evolve() again",
}


# The primary documents whose absence the commit log notices once they were written, with their empty form.
_EMPTY_DOCUMENT = {"rounds.json": "[]", "feedback.json": "[]", "prompts.json": "{}"}


# ---- atomic file helpers (data/files.py) ----------------------------------------------------
def _atomic_write_table(path: Path, table: pa.Table, *, fsync: bool = True) -> bytes:
    """Write a parquet file atomically; returns its bytes (for the commit list's checksum)."""
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    atomic_write_bytes(path, data, fsync=fsync)
    return data


def _read_parquet(path: Path, data: bytes | None = None) -> pa.Table:
    """Read a parquet file in one go: pyarrow may open a path more than once, which could mix
    an old and a new file if a writer replaces it in between. A damaged file is named with the fix."""
    data = path.read_bytes() if data is None else data
    try:
        return pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        project = path.parent if path.name == "samples.parquet" else path.parent.parent
        if path.name == "samples.parquet":
            fix = (
                "restore samples.parquet from a backup of the project; it holds every sample up to the last "
                "compaction, so it cannot be rebuilt from the other files"
            )
        else:
            fix = (
                f"restore it from a backup, or move it out of {path.parent} to open the project without the "
                f"samples added or changed in that one commit"
            )
        raise DamagedFileError(
            f"project {project}: {path.relative_to(project)} is damaged ({len(data)} bytes, not readable as "
            f"parquet: {type(exc).__name__}): {fix}"
        ) from None


# ---- the store -----------------------------------------------------------------------------
class SampleStore:
    """A project folder of samples (parquet), images (PNG by hash), embeddings and json documents.

    Opening for writing takes an exclusive lock; open with `readonly=True` to browse a project
    that a running kernel is writing. Use as a context manager or call `close()`.
    """

    COMPACT_SEGMENTS = 64  # fold the append log into samples.parquet after this many segments
    COMPACT_PARTS = 16  # same for the embedding cache parts of one key

    def __init__(
        self, path: str | os.PathLike, *, create: bool = True, readonly: bool = False, durable: bool = True
    ) -> None:
        """Open (or create) the project at `path`.

        durable=False skips fsync: commits stay atomic if the process is killed, but the last
        ones may be lost on a power failure (about 4x faster single-sample adds on slow disks).
        """
        self.path = Path(path).expanduser().absolute()
        self.readonly = bool(readonly)
        self.durable = bool(durable)
        self._lock = threading.RLock()
        self._lock_fd: int | None = None
        self._closed = False
        self._frame = pd.DataFrame()
        self._pending: list[list[dict[str, Any]]] = []  # committed rows not yet in _frame
        self._positions: dict[str, int] | None = None
        self._next: dict[str, int] = {}
        self._segment_seq = 0
        self._segment_count = 0
        self._embeddings: dict[str, dict[str, Any]] = {}
        self._log: dict[str, Any] = {"version": 1, "base": None, "commits": []}
        self._marked = False  # project.json says the project keeps commits.json

        exists = (self.path / "project.json").is_file()
        if not exists:
            if readonly or not create:
                raise StoreError(
                    f"{self.path} is not a datacrafter project (no project.json): "
                    f"check the path, or open it with create=True (and readonly=False) to start a new project"
                )
            if self.path.exists() and not self.path.is_dir():
                raise StoreError(f"{self.path} is a file, not a folder: choose another project path")
            if self.path.is_dir():
                foreign = [p.name for p in self.path.iterdir() if p.name not in _LAYOUT and not _TMP.search(p.name)]
                if foreign:
                    raise StoreError(
                        f"{self.path} already holds other files ({', '.join(sorted(foreign)[:5])}) and is not a "
                        f"datacrafter project: choose an empty or new folder for the project"
                    )
        if not readonly:
            self.path.mkdir(parents=True, exist_ok=True)
            self._acquire_lock()
        try:
            if not exists:
                for sub in ("images", "segments", "embeddings"):
                    (self.path / sub).mkdir(exist_ok=True)
                atomic_write_bytes(
                    self.path / "project.json",
                    _dumps(
                        {
                            "schema_version": SCHEMA_VERSION,
                            "created": time.time(),
                            "format": "datacrafter-widget project",
                            "commit_log": 1,
                        }
                    ),
                )
                atomic_write_bytes(self.path / LOG_NAME, _dumps({"version": 1, "base": None, "commits": []}))
            self._check_schema()
            if not readonly:
                for sub in ("images", "segments", "embeddings"):
                    (self.path / sub).mkdir(exist_ok=True)
                self._clean_stale()
            self._load()
        except BaseException:
            self._release_lock()
            raise

    # ---- lock ----------------------------------------------------------------------------
    def _acquire_lock(self) -> None:
        lock_path = self.path / ".lock"
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            try:
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            except (ValueError, OSError):
                holder = {}
            os.close(fd)
            who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
            if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                who += " (this process: another SampleStore / DataCrafter object is still open)"
            since = holder.get("time")
            when = f" since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}" if since else ""
            raise ProjectLockedError(
                f"project {self.path} is open for writing by {who}{when}. Close the other kernel or "
                f"call .close() on the other object, or open this one with readonly=True to browse it"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}).encode(), 0)
        self._lock_fd = fd

    def _release_lock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def close(self) -> None:
        """Release the write lock (folding a long append log first). Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            try:
                if not self.readonly and self._segment_count > 8:
                    self.compact()
            finally:
                self._closed = True
                self._release_lock()

    def __enter__(self) -> "SampleStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self._release_lock()
        except Exception:
            pass

    def __repr__(self) -> str:
        mode = "readonly" if self.readonly else ("closed" if self._closed else "writable")
        return f"SampleStore({str(self.path)!r}, {len(self)} samples, {mode})"

    def __len__(self) -> int:
        return len(self._frame) + sum(len(p) for p in self._pending)

    # ---- open ----------------------------------------------------------------------------
    def _check_schema(self) -> None:
        meta = self.read_json("project.json", None)
        if not isinstance(meta, dict) or "schema_version" not in meta:
            raise StoreError(
                f"{self.path / 'project.json'} has no schema_version: the project file is damaged or not ours"
            )
        problem = _project_meta_problem(meta)
        if problem:
            raise DamagedFileError(
                f"project {self.path}: project.json is damaged ({problem}): {_JSON_FIX['project.json']}"
            )
        version = int(meta["schema_version"])
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"project {self.path} has schema_version {version}, but this datacrafter-widget reads up to "
                f"{SCHEMA_VERSION}: upgrade with `pip install -U datacrafter-widget`"
            )

    def _clean_stale(self) -> None:
        """Remove temp files left by killed writers (we hold the lock, so none is live)."""
        dirs = [self.path, self.path / "images", self.path / "segments", self.path / "embeddings"]
        dirs += [d for d in (self.path / "embeddings").iterdir() if d.is_dir()]
        for d in dirs:
            for p in d.iterdir():
                if _TMP.search(p.name):
                    try:
                        p.unlink()
                    except FileNotFoundError:
                        pass

    def _segments(self) -> list[tuple[int, Path]]:
        seg_dir = self.path / "segments"
        if not seg_dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in seg_dir.iterdir() if (m := _SEGMENT.match(p.name))]
        return sorted(found)

    def _load(self) -> None:
        """Read the base table and replay the append log (retrying if a writer compacts meanwhile)."""
        for attempt in range(20):
            try:
                notes = self._load_once(last_try=attempt == 19)
                break
            except (FileNotFoundError, _Retry):
                if not self.readonly or attempt == 19:
                    raise
                time.sleep(0.05)
        for message, category in notes:
            warnings.warn(message, category, stacklevel=4)

    def _load_once(self, *, last_try: bool) -> list[tuple[str, type[Warning]]]:
        base_path = self.path / "samples.parquet"
        through = 0
        parts: list[pd.DataFrame] = []
        notes: list[tuple[str, type[Warning]]] = []
        # Read the commit list, then list the segments, then read the base: a writer commits a
        # segment before listing it, and compacts (base, list, delete) in that order, so a commit
        # listed here is either on disk or folded into the base read afterwards (else: retry).
        log, log_problem = read_log(self.path / LOG_NAME)
        marked = bool((self.read_json("project.json", {}) or {}).get("commit_log"))
        self._marked = marked
        segments = self._segments()
        base_data = base_path.read_bytes() if base_path.exists() else None
        if base_data is not None:
            table = _read_parquet(base_path, base_data)
            meta = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
            through = int(meta.get("compacted_through", 0))
            parts.append(table.to_pandas())
        live = [(n, p) for n, p in segments if n > through]
        live_data = {n: p.read_bytes() for n, p in live}
        if log is not None:
            notes += self._check_log(log, base_data, through, live_data, last_try=last_try)
        else:
            notes += self._check_gaps(through, live)
            if marked:
                notes.append(
                    (
                        f"project {self.path}: its commit list {LOG_NAME} is {log_problem}, so a missing newest commit "
                        f"cannot be detected this time; "
                        + (
                            "it is written again now from the segments present"
                            if not self.readonly
                            else "a writer writes it again from the segments present"
                        ),
                        DamagedProjectWarning,
                    )
                )
            elif segments or base_data is not None:
                notes.append(
                    (
                        f"project {self.path} was made before projects kept a commit log ({LOG_NAME}): "
                        + (
                            "it is written now"
                            if not self.readonly
                            else "it is written the next time the project is opened for writing"
                        )
                        + "; a commit lost before that cannot be detected",
                        ProjectNote,
                    )
                )
        if not self.readonly:
            for n, p in segments:
                if n <= through:
                    p.unlink(missing_ok=True)
        frames = [_read_parquet(p, live_data[n]).to_pandas() for n, p in live]
        named = [(base_path, f) for f in parts] + [(p, f) for (_, p), f in zip(live, frames)]
        for file, frame in named:
            problem = _table_problem(frame)
            if problem:
                raise DamagedFileError(
                    f"project {self.path}: {file.relative_to(self.path)} is damaged ({problem}): restore it from a "
                    f"backup of the project"
                    + (
                        f", or move it out of {file.parent} to open the project without that one commit"
                        if file != base_path
                        else ""
                    )
                )
        self._frame = _replay(parts + frames)
        self._pending = []
        self._positions = None
        logged = [int(e["seq"]) for e in (log or {}).get("commits", [])]
        self._segment_seq = max([through] + [n for n, _ in segments] + logged)  # a lost number is never reused
        self._segment_count = len(live)
        self._next = {}
        for sid in self._frame["id"].tolist():
            m = _ID.match(sid)
            if m:
                self._next[m.group(1)] = max(self._next.get(m.group(1), 0), int(m.group(2)) + 1)
        self._embeddings = {}
        self._log = self._repaired_log(log, base_data, through, parts, live, live_data, frames)
        if not self.readonly and self._log != log:
            self._write_log()
        return notes

    def _check_log(
        self, log: dict[str, Any], base: bytes | None, through: int, live: dict[int, bytes], *, last_try: bool
    ) -> list[tuple[str, type[Warning]]]:
        """Compare what is on disk with the commit list: changed files raise, missing ones are named."""
        notes: list[tuple[str, type[Warning]]] = []
        logged_base = log.get("base")
        if logged_base is not None:
            if base is None:
                raise DamagedFileError(
                    f"project {self.path}: samples.parquet is missing; it held {logged_base.get('rows', '?')} samples "
                    f"(every commit up to {logged_base['through']}): restore samples.parquet from a backup of the "
                    f"project; it cannot be rebuilt from the other files"
                )
            if sha256(base) != logged_base["sha256"]:
                if self.readonly and not last_try:
                    raise _Retry  # a writer compacted between our reads
                notes.append(
                    (
                        f"project {self.path}: samples.parquet is not the file the last compaction wrote (its sha256 "
                        f"differs from {LOG_NAME}): it was replaced, e.g. by an older backup, or damaged; samples "
                        f"committed after that backup may be missing",
                        DamagedProjectWarning,
                    )
                )
        entries = {int(e["seq"]): e for e in log["commits"] if int(e["seq"]) > through}
        for n, data in live.items():
            e = entries.get(n)
            if e is not None and sha256(data) != e["sha256"]:
                raise DamagedFileError(
                    f"project {self.path}: segments/seg-{n:08d}.parquet is damaged (its sha256 checksum differs from "
                    f"the one in {LOG_NAME}; it held {describe(e)}): restore it from a backup, or move it out of "
                    f"{self.path / 'segments'} to open the project without that one commit"
                )
        missing = [e for n, e in sorted(entries.items()) if n not in live]
        if missing:
            shown = "; ".join(
                f"segments/seg-{int(e['seq']):08d}.parquet is missing (it held {describe(e)})" for e in missing[:5]
            )
            more = f"; and {len(missing) - 5} more" if len(missing) > 5 else ""
            notes.append(
                (
                    f"project {self.path}: {len(missing)} commit(s) of the append log are gone: {shown}{more}. The "
                    f"project opens without them. Restore them into {self.path / 'segments'} from a backup before "
                    f"writing to the project",
                    DamagedProjectWarning,
                )
            )
        return notes

    def _check_gaps(self, through: int, live: list[tuple[int, Path]]) -> list[tuple[str, type[Warning]]]:
        """Without a commit list: commits are numbered without gaps, so a gap is a deleted segment."""
        if not live:
            return []
        have = {n for n, _ in live}
        lost = [n for n in range(through + 1, live[-1][0]) if n not in have]
        if not lost:
            return []
        names = ", ".join(f"seg-{n:08d}.parquet" for n in lost[:5]) + (" ..." if len(lost) > 5 else "")
        return [
            (
                f"project {self.path}: {len(lost)} segment(s) of the append log are missing ({names}): the samples "
                f"added or changed in those commits are not in the project. Restore them into "
                f"{self.path / 'segments'} from a backup before writing to the project",
                DamagedProjectWarning,
            )
        ]

    def _repaired_log(
        self,
        log: dict[str, Any] | None,
        base: bytes | None,
        through: int,
        parts: list[pd.DataFrame],
        live: list[tuple[int, Path]],
        live_data: dict[int, bytes],
        frames: list[pd.DataFrame],
    ) -> dict[str, Any]:
        """The commit list with every present segment it lacks (a kill before the list was rewritten, an
        older project): the segment itself is complete, so it is a commit."""
        out: dict[str, Any] = {"version": 1, "base": None, "commits": []}
        if log is not None:
            out = {**log, "commits": [e for e in log["commits"] if int(e["seq"]) > through]}
        if out.get("base") is None and base is not None:
            out["base"] = base_entry(through, base, len(parts[0]) if parts else 0)
        known = {int(e["seq"]) for e in out["commits"]}
        seen: set[str] = set(parts[0]["id"].astype(str)) if parts else set()
        for (n, _), frame in zip(live, frames):
            ids = frame["id"].astype(str).tolist() if "id" in frame.columns else []
            if n not in known:
                kind = "update" if ids and all(i in seen for i in ids) else "add"
                out["commits"].append(commit_entry(n, live_data[n], ids, kind))
            seen.update(ids)
        out["commits"].sort(key=lambda e: int(e["seq"]))
        return out

    def _write_log(self) -> None:
        """Rewrite commits.json. Not fsynced: the segments it lists already are, and a list that a power
        loss or a full disk leaves older than the segments only lacks commits, which the next open lists."""
        try:
            atomic_write_bytes(self.path / LOG_NAME, json.dumps(self._log).encode(), fsync=False)
        except OSError as exc:
            warnings.warn(
                f"project {self.path}: could not rewrite {LOG_NAME} ({exc}); the commits are stored, and the "
                f"next successful write lists them",
                DamagedProjectWarning,
                stacklevel=4,
            )
            return
        if not self._marked:
            meta = self.read_json("project.json", {}) or {}
            self.write_json("project.json", meta if isinstance(meta, dict) else {})
            self._marked = True

    def reload(self) -> None:
        """Re-read the project from disk (for a readonly view of a project another kernel writes)."""
        with self._lock:
            self._load()

    # ---- reading -------------------------------------------------------------------------
    def _materialize(self) -> pd.DataFrame:
        if self._pending:
            records = [r for batch in self._pending for r in batch]
            new = _normalize(pd.DataFrame.from_records(records))
            self._frame = pd.concat([self._frame, new], ignore_index=True) if len(self._frame) else new
            self._pending = []
            self._positions = None
        return self._frame

    def _index(self) -> dict[str, int]:
        frame = self._materialize()
        if self._positions is None:
            self._positions = {sid: i for i, sid in enumerate(frame["id"].tolist())}
        return self._positions

    @property
    def samples(self) -> pd.DataFrame:
        """All samples, one row per image, in insertion order (a copy)."""
        with self._lock:
            return self._materialize().copy()

    def __contains__(self, sample_id: object) -> bool:
        with self._lock:
            return sample_id in self._index()

    def row(self, sample_id: str) -> dict[str, Any]:
        """One sample's row as a dict."""
        with self._lock:
            pos = self._index().get(sample_id)
            if pos is None:
                raise KeyError(f"no sample with id {sample_id!r} in project {self.path}")
            return self._frame.iloc[pos].to_dict()

    def image_path(self, sample_id: str) -> Path:
        """The image file of a sample; refuses a `file` entry that leads outside the project."""
        return self.project_file(self.row(sample_id)["file"], f"sample {sample_id}: its file column")

    def project_file(self, rel: object, what: str) -> Path:
        """A path read from the samples table (image, GAP tokens, mask), resolved inside the project.

        A value that leads outside (`../x`, an absolute path, a link out of the folder) is refused:
        the table was edited by hand or damaged, and nothing outside the project is read."""
        root = self.path.resolve()
        path = (root / str(rel)).resolve()
        if not isinstance(rel, str) or not rel or root not in path.parents:
            raise DamagedFileError(
                f"{what} {rel!r} points outside project {self.path}; the samples table was edited by hand or "
                f"damaged, and nothing outside the project is read. Restore samples.parquet from a backup"
            )
        return path

    def image(self, sample_id: str) -> Image.Image:
        """The stored image of a sample (RGB); a missing or damaged file is named with the sample."""
        path = self.image_path(sample_id)
        fix = f"restore it from a backup, or leave the sample out with crafter.feedback(removed=[{sample_id!r}])"
        try:
            with Image.open(path) as im:
                im.load()
                return to_rgb(im)
        except FileNotFoundError:
            raise DamagedFileError(
                f"sample {sample_id}: its image file {path.relative_to(self.path.resolve())} is "
                f"missing from project {self.path}: {fix}"
            ) from None
        except (OSError, SyntaxError, ValueError) as exc:  # truncated or not an image
            raise DamagedFileError(
                f"sample {sample_id}: its image file {path.relative_to(self.path.resolve())} in "
                f"project {self.path} is damaged ({exc}): {fix}"
            ) from None

    # ---- writing -------------------------------------------------------------------------
    def _writable(self) -> None:
        if self.readonly:
            raise ReadOnlyError(
                f"project {self.path} was opened with readonly=True: open it without readonly to change it"
            )
        if self._closed:
            raise StoreError(f"project {self.path} was closed: open it again to change it")

    def _commit_segment(self, table: pa.Table, kind: str, columns: Sequence[str] = ()) -> None:
        # The number is taken only once the write succeeded, so a gap always means a lost segment.
        seq = self._segment_seq + 1
        data = _atomic_write_table(self.path / "segments" / f"seg-{seq:08d}.parquet", table, fsync=self.durable)
        self._segment_seq = seq
        self._segment_count += 1
        self._log["commits"].append(commit_entry(seq, data, table.column("id").to_pylist(), kind, columns))
        self._write_log()

    def add(self, images: Sequence[Image.Image], rows: Sequence[Mapping[str, object]]) -> list[str]:
        """Store images with their rows in one atomic commit; returns the new sample ids.

        A row gives any contract column except id/hash/file (set here); missing ones get
        defaults. `source` defaults to "generated" when split == "generated", else "real";
        ids are "r000001" for real and "g000001" for generated samples.
        """
        if len(images) != len(rows):
            raise ValueError(f"add() got {len(images)} images but {len(rows)} rows: pass one row per image")
        with self._lock:
            self._writable()
            if not images:
                return []
            records = []
            blobs: dict[str, bytes] = {}
            now = time.time()
            next_ids = dict(self._next)
            for i, (im, row) in enumerate(zip(images, rows)):
                if not isinstance(im, Image.Image):
                    raise TypeError(f"images[{i}] is a {type(im).__name__}, not a PIL image")
                limits.check("image_pixels", im.width * im.height, f"images[{i}] ({im.width}x{im.height}): pixels")
                bad = [k for k in _COMPUTED if k in row]
                if bad:
                    raise ValueError(f"rows[{i}] sets {bad}: the store assigns id, hash and file itself; drop them")
                data = png_bytes(im)
                h = content_hash(data)
                blobs[h] = data
                record = {name: default for name, (_, default) in COLUMNS.items()}
                record.update(row)
                if "source" not in row:
                    record["source"] = "generated" if record["split"] == "generated" else "real"
                if record["source"] not in ("real", "generated"):
                    raise ValueError(f"rows[{i}]['source'] is {record['source']!r}: use 'real' or 'generated'")
                if record["feedback"] not in FEEDBACK_VALUES:
                    raise ValueError(f"rows[{i}]['feedback'] is {record['feedback']!r}: use one of {FEEDBACK_VALUES}")
                if not isinstance(record["feedback_labels"], str):
                    record["feedback_labels"] = json.dumps(list(record["feedback_labels"]))
                if record["created"] is None or (
                    isinstance(record["created"], float) and math.isnan(record["created"])
                ):
                    record["created"] = now
                prefix = "g" if record["source"] == "generated" else "r"
                n = next_ids.get(prefix, 1)
                next_ids[prefix] = n + 1
                record["id"] = f"{prefix}{n:06d}"
                record["hash"] = h
                record["file"] = f"images/{h}.png"
                records.append(_coerce(record))
            # 1) images first (each complete under its real name), 2) then the segment = commit.
            image_dir = self.path / "images"
            new = [(image_dir / f"{h}.png", data) for h, data in blobs.items()]
            atomic_write_many([(t, data) for t, data in new if not t.exists()], fsync=self.durable)
            self._commit_segment(_records_table(records), "add")
            self._next = next_ids
            self._pending.append(records)
            self._positions = None
            self._maybe_compact()
            return [r["id"] for r in records]

    def update(self, ids: Sequence[str], **columns: object) -> None:
        """Set columns for the given samples in one atomic commit, e.g. update(ids, feedback="bad").

        A value may be a scalar (applied to all ids) or a sequence with one value per id.
        Unknown column names add a new column (empty for other rows).
        """
        ids = list(ids)
        with self._lock:
            self._writable()
            if not ids or not columns:
                return
            frozen = [c for c in _COMPUTED if c in columns]
            if frozen:
                raise ValueError(f"update() cannot change {frozen}: they identify the stored image")
            index = self._index()
            missing = [i for i in ids if i not in index]
            if missing:
                raise KeyError(f"no samples with ids {missing[:5]} in project {self.path}; nothing was changed")
            frame = self._frame
            positions = [index[i] for i in ids]
            values: dict[str, list[Any]] = {}
            for name, value in columns.items():
                seq = _per_id(name, value, len(ids))
                if name == "feedback":
                    bad = sorted({v for v in seq if v not in FEEDBACK_VALUES})
                    if bad:
                        raise ValueError(f"feedback values {bad} are not allowed: use one of {FEEDBACK_VALUES}")
                values[name] = seq
            changed = frame.iloc[positions].copy()
            for name, seq in values.items():
                changed[name] = pd.Series(seq, index=changed.index, dtype=object)
            changed = _normalize(changed)
            self._commit_segment(_to_table(changed), "update", list(values))
            for name in values:
                if name not in frame.columns:
                    frame[name] = None
                col = changed[name]
                if frame[name].dtype != col.dtype:
                    try:
                        frame[name] = frame[name].astype(col.dtype)
                    except (TypeError, ValueError):
                        frame[name] = frame[name].astype(object)
                frame.loc[frame.index[positions], name] = col.to_numpy()
            self._maybe_compact()

    def _maybe_compact(self) -> None:
        if self._segment_count >= self.COMPACT_SEGMENTS:
            self.compact()

    def compact(self) -> None:
        """Fold the append log into samples.parquet (atomically), then delete the folded segments."""
        with self._lock:
            self._writable()
            frame = self._materialize()
            table = _to_table(frame).replace_schema_metadata(
                {
                    _META_KEY: json.dumps(
                        {"compacted_through": self._segment_seq, "schema_version": SCHEMA_VERSION}
                    ).encode()
                }
            )
            data = _atomic_write_table(self.path / "samples.parquet", table, fsync=self.durable)
            self._log = {
                **self._log,
                "base": base_entry(self._segment_seq, data, len(frame)),
                "commits": [e for e in self._log["commits"] if int(e["seq"]) > self._segment_seq],
            }
            self._write_log()  # before the folded segments go: a reader never sees them listed but deleted
            for n, p in self._segments():
                if n <= self._segment_seq:
                    p.unlink(missing_ok=True)
            self._segment_count = 0

    # ---- embeddings cache ----------------------------------------------------------------
    def _emb_dir(self, key: str) -> Path:
        return self.path / "embeddings" / slug(key)

    def _emb_cache(self, key: str) -> dict[str, Any]:
        cache = self._embeddings.get(key)
        if cache is not None:
            return cache
        from safetensors.numpy import load

        cache = {"index": {}, "blocks": [], "dim": None, "seq": 0, "parts": 0}
        d = self._emb_dir(key)
        parts = sorted((int(m.group(1)), p) for p in d.iterdir() if (m := _PART.match(p.name))) if d.is_dir() else []
        for n, p in parts:
            cache["seq"] = n
            try:
                data = p.read_bytes()  # one read: the file is never seen half-replaced
            except FileNotFoundError:  # a writer compacted it away meanwhile; its rows are in a later part
                continue
            try:
                header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
                hashes = json.loads(header["__metadata__"]["hashes"])
                array = load(data)["embeddings"]
                if array.ndim != 2 or array.shape[0] != len(hashes):
                    raise ValueError(f"{array.shape[0]} rows for {len(hashes)} hashes")
                checksum = header["__metadata__"].get("sha256")
                if checksum is not None and sha256(np.ascontiguousarray(array).tobytes()) != checksum:
                    raise ValueError("its values do not match their sha256 checksum")
                if not np.isfinite(array).all():
                    raise ValueError("it holds values that are not finite numbers")
                if cache["dim"] is not None and array.shape[1] != cache["dim"]:
                    raise ValueError(f"size {array.shape[1]}, the other parts have {cache['dim']}")
            except Exception as exc:  # noqa: BLE001 - a cache: drop the part, its rows are embedded again
                warnings.warn(
                    f"project {self.path}: embedding cache part {p.relative_to(self.path)} is damaged "
                    f"({type(exc).__name__}: {exc}); its embeddings will be computed again",
                    DamagedProjectWarning,
                    stacklevel=3,
                )
                if not self.readonly:
                    p.unlink(missing_ok=True)
                continue
            _merge(cache, hashes, array, key, self.path)
        cache["parts"] = len(parts)
        self._embeddings[key] = cache
        return cache

    def embeddings(self, hashes: Sequence[str], key: str, *, partial: bool = False) -> np.ndarray | None:
        """Cached embeddings (float32, one row per hash) for an embedder `key`.

        Returns None when any hash is missing (use `missing_embeddings` to find which), or with
        partial=True an array whose missing rows are NaN (None if the key has no cache at all).
        """
        with self._lock:
            cache = self._emb_cache(key)
            if cache["dim"] is None:
                return None
            index = cache["index"]
            if not partial and any(h not in index for h in hashes):
                return None
            matrix = _stack(cache)
            out = np.full((len(hashes), cache["dim"]), np.nan, dtype=np.float32)
            for i, h in enumerate(hashes):
                j = index.get(h)
                if j is not None:
                    out[i] = matrix[j]
            return out

    def missing_embeddings(self, hashes: Sequence[str], key: str) -> list[str]:
        """The hashes (in order, without repeats) that have no cached embedding for `key`."""
        with self._lock:
            index = self._emb_cache(key)["index"]
            return list(dict.fromkeys(h for h in hashes if h not in index))

    def put_embeddings(self, hashes: Sequence[str], key: str, array: np.ndarray) -> None:
        """Cache embeddings for image hashes under an embedder key (one atomic part file)."""
        from safetensors.numpy import save

        array = np.ascontiguousarray(np.asarray(array, dtype=np.float32))
        hashes = [str(h) for h in hashes]
        if array.ndim != 2 or array.shape[0] != len(hashes):
            raise ValueError(
                f"put_embeddings: array shape {array.shape} does not match {len(hashes)} hashes: pass (n, d)"
            )
        if not np.isfinite(array).all():
            raise ValueError(
                f"put_embeddings: the embeddings for key {key!r} hold NaN or infinite values: check the embedder "
                f"(e.g. fp16 overflow); nothing was cached"
            )
        with self._lock:
            self._writable()
            if not hashes:
                return
            cache = self._emb_cache(key)
            if cache["dim"] is not None and cache["dim"] != array.shape[1]:
                raise ValueError(
                    f"embeddings for key {key!r} have size {cache['dim']}, got {array.shape[1]}: "
                    f"use a different key for a different embedder"
                )
            d = self._emb_dir(key)
            d.mkdir(parents=True, exist_ok=True)
            cache["seq"] += 1
            data = save({"embeddings": array}, metadata=_part_metadata(array, hashes, key))
            atomic_write_bytes(d / f"part-{cache['seq']:08d}.safetensors", data, fsync=self.durable)
            _merge(cache, hashes, array, key, self.path)
            cache["parts"] += 1
            if cache["parts"] >= self.COMPACT_PARTS:
                self._compact_embeddings(key)

    def _compact_embeddings(self, key: str) -> None:
        """Write all of a key's rows as one new part, then delete the older parts (duplicates are harmless)."""
        from safetensors.numpy import save

        cache = self._emb_cache(key)
        # A hash stored twice keeps only its latest row: the matrix may hold more rows than hashes.
        hashes = list(cache["index"])
        matrix = np.ascontiguousarray(_stack(cache)[[cache["index"][h] for h in hashes]])
        cache["blocks"] = [matrix]
        cache["index"] = {h: j for j, h in enumerate(hashes)}
        d = self._emb_dir(key)
        cache["seq"] += 1
        data = save({"embeddings": matrix}, metadata=_part_metadata(matrix, hashes, key))
        atomic_write_bytes(d / f"part-{cache['seq']:08d}.safetensors", data, fsync=self.durable)
        for p in d.iterdir():
            m = _PART.match(p.name)
            if m and int(m.group(1)) < cache["seq"]:
                p.unlink(missing_ok=True)
        cache["parts"] = 1

    # ---- json documents ------------------------------------------------------------------
    def _json_path(self, name: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name) or name.startswith("."):
            raise ValueError(f"json document name {name!r} must be a plain file name such as 'rounds.json'")
        if not name.endswith(".json"):
            name += ".json"
        return self.path / name

    def read_json(
        self, name: str, default: Any = None, *, derived: bool = False, shape: Callable[[Any], str] | None = None
    ) -> Any:
        """A json document of the project (e.g. "rounds.json"), or `default` if it does not exist.

        A damaged document raises DamagedFileError naming it and the fix; with derived=True (a cache
        that can be computed again, such as map.json) it counts as missing instead. `shape` (the owning
        module's check) returns what is wrong with a well-formed document of the wrong shape, '' if nothing:
        a wrong shape is damage too."""
        path = self._json_path(name)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            check = shape if shape is not None else _SHAPES.get(path.name)
            problem = check(doc) if check is not None and not derived else ""
            if problem:
                raise ValueError(problem)
            return doc
        except FileNotFoundError:
            written = (self._log.get("documents") or {}).get(path.name)
            aside = any(p.name.startswith(path.name + ".") and not _TMP.search(p.name) for p in self.path.iterdir())
            if derived or written is None or aside:
                return default
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(written)))
            raise DamagedFileError(
                f"project {self.path}: {path.name} is missing, though the project wrote it (first on {when}): it was "
                f"deleted or moved from outside. Restore it from a backup; to start it anew instead, write "
                f"{_EMPTY_DOCUMENT.get(path.name, '{}')} into {path}"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            if derived:
                return default
            fix = _JSON_FIX.get(path.name, "restore it from a backup, or move it aside if it is not needed")
            raise DamagedFileError(f"project {self.path}: {path.name} is damaged ({exc}): {fix}") from None

    def write_json(self, name: str, obj: object) -> None:
        """Replace a json document atomically. project.json always keeps its schema_version."""
        with self._lock:
            self._writable()
            path = self._json_path(name)
            if path.name == "project.json":
                if not isinstance(obj, dict):
                    raise ValueError("project.json must be a dict")
                obj = {**obj, "schema_version": SCHEMA_VERSION, "commit_log": 1}
            atomic_write_bytes(path, _dumps(obj), fsync=self.durable)
            documents = self._log.setdefault("documents", {})
            if path.name in _EMPTY_DOCUMENT and path.name not in documents:
                documents[path.name] = time.time()  # from now on its absence is damage, not "none yet"
                self._write_log()


# ---- helpers -------------------------------------------------------------------------------
# Shapes checked on every read of a document the store itself owns; the modules that own the other
# documents (rounds_log, feedback_log, prompt_book) pass theirs with read_json(..., shape=...).
_SHAPES: dict[str, Callable[[Any], str]] = {
    "project.json": lambda doc: "" if isinstance(doc, dict) else f"it holds a {type(doc).__name__}, not a dict",
}


def _project_meta_problem(meta: dict[str, Any]) -> str:
    """What is wrong with project.json's fields ('' if nothing): valid json of the wrong shape is damage too."""
    version = meta.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        return f"schema_version is {version!r}, not a whole number"
    classes = meta.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        return f"classes is {str(classes)[:80]}, not a list of class names"
    backend = meta.get("backend")
    if backend is not None and not isinstance(backend, (dict, str)):
        return f"backend is {backend!r}, not a backend config"
    return ""


def _table_problem(frame: pd.DataFrame) -> str:
    """What makes a samples table or segment unusable ('' if nothing): a missing key column, or a typed column
    holding values that are not of its type."""
    for name in ("id", "hash", "file"):
        if name not in frame.columns:
            return f"it has no {name!r} column"
    ids = frame["id"]
    if not all(isinstance(v, str) and _ID.match(v) for v in ids):
        bad = next(v for v in ids if not (isinstance(v, str) and _ID.match(v)))
        return f"sample id {bad!r} is not an id such as 'r000001'"
    for name, (dtype, _) in COLUMNS.items():
        if name in frame.columns and not pa.types.is_string(dtype):
            try:
                pd.to_numeric(frame[name], errors="raise")
            except (ValueError, TypeError):
                return f"column {name!r} holds values that are not numbers"
    return ""


def _part_metadata(array: np.ndarray, hashes: list[str], key: str) -> dict[str, str]:
    """An embedding part's metadata: its image hashes, embedder key and the sha256 of its float32 values."""
    return {"hashes": json.dumps(hashes), "key": key, "sha256": sha256(np.ascontiguousarray(array).tobytes())}


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, ensure_ascii=False, allow_nan=True).encode("utf-8")


def _coerce(record: dict[str, Any]) -> dict[str, Any]:
    """Cast a row's contract columns to their stored types (None / NaN -> the column default)."""
    for name, (dtype, default) in COLUMNS.items():
        v = record.get(name)
        if v is None or (isinstance(v, float) and math.isnan(v)):
            record[name] = default
        elif pa.types.is_string(dtype):
            record[name] = str(v)
        elif pa.types.is_integer(dtype):
            record[name] = int(v)
        else:
            record[name] = float(v)
    return record


def _records_table(records: list[dict[str, Any]]) -> pa.Table:
    """Coerced row dicts -> an arrow table with the contract schema (+ inferred extra columns)."""
    table = pa.Table.from_pylist(records, schema=pa.schema([pa.field(n, t) for n, (t, _) in COLUMNS.items()]))
    extra = list(dict.fromkeys(k for r in records for k in r if k not in COLUMNS))
    for name in extra:
        table = table.append_column(name, pa.array([r.get(name) for r in records]))
    return table


def _per_id(name: str, value: Any, n: int) -> list[Any]:
    """A scalar applies to all ids, a sequence gives one value per id. feedback_labels takes a list
    of str (for all ids), a json string, or a list of lists (one per id); it is stored as json."""
    if name == "feedback_labels":
        if isinstance(value, str):
            return [value] * n
        value = list(value)
        if not (value and all(isinstance(v, (list, tuple)) for v in value)):
            return [json.dumps([str(v) for v in value])] * n
        seq = [json.dumps([str(x) for x in v]) for v in value]
    elif isinstance(value, (list, tuple, np.ndarray, pd.Series)):
        seq = list(value)
    else:
        return [value] * n
    if len(seq) != n:
        raise ValueError(f"update({name}=...) has {len(seq)} values for {n} ids: pass one per id or a scalar")
    return seq


def _normalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Cast the contract columns to their types (filling defaults), contract columns first."""
    frame = frame.copy()
    for name, (dtype, default) in COLUMNS.items():
        if name not in frame.columns:
            frame[name] = default
        col = frame[name]
        if pa.types.is_string(dtype):
            frame[name] = col.map(
                lambda v, d=default: d if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)
            ).astype(str)
        elif pa.types.is_integer(dtype):
            frame[name] = pd.to_numeric(col, errors="raise").fillna(default).astype("int64")
        else:
            frame[name] = pd.to_numeric(col, errors="raise").astype("float64")
    extra = [c for c in frame.columns if c not in COLUMNS]
    return frame[list(COLUMNS) + extra].reset_index(drop=True)


def _to_table(frame: pd.DataFrame) -> pa.Table:
    fields = [pa.field(name, dtype) for name, (dtype, _) in COLUMNS.items()]
    extra = [c for c in frame.columns if c not in COLUMNS]
    if extra:
        inferred = pa.Table.from_pandas(frame[extra], preserve_index=False).schema
        fields += [inferred.field(c) for c in extra]
    return pa.Table.from_pandas(frame, schema=pa.schema(fields), preserve_index=False)


def _replay(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Base table then segments in order; the last row per id wins, first-insertion order kept."""
    parts = [p for p in parts if len(p.columns)]
    if not parts:
        return _normalize(pd.DataFrame({name: pd.Series(dtype=object) for name in COLUMNS}))
    if len(parts) == 1:
        return _normalize(parts[0])
    combined = pd.concat(parts, ignore_index=True)
    order = combined["id"].drop_duplicates(keep="first")
    last = combined.drop_duplicates("id", keep="last").set_index("id")
    return _normalize(last.loc[order.to_numpy()].reset_index())


def _merge(cache: dict[str, Any], hashes: list[str], array: np.ndarray, key: str, path: Path) -> None:
    if cache["dim"] is None:
        cache["dim"] = int(array.shape[1])
    elif cache["dim"] != array.shape[1]:
        raise StoreError(f"embedding cache for key {key!r} in {path} mixes sizes {cache['dim']} and {array.shape[1]}")
    base = sum(len(b) for b in cache["blocks"])
    cache["blocks"].append(array)
    for i, h in enumerate(hashes):
        cache["index"][h] = base + i


def _stack(cache: dict[str, Any]) -> np.ndarray:
    if len(cache["blocks"]) > 1:
        cache["blocks"] = [np.concatenate(cache["blocks"], axis=0)]
    return cache["blocks"][0]
