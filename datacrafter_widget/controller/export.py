"""Export a project's expanded dataset (imagefolder, csv or a Hugging Face dataset) without losing anything.

Why a module of its own: an export writes outside the project, into a folder the user names, so it
must never delete what it did not write and never leave a half-written dataset under the real name.

- The target may not be, contain or lie inside the project folder.
- Every export folder carries a manifest (`datacrafter-export.json`) that lists each file the export
  wrote with its content hash. `overwrite=True` deletes only files listed there whose content still
  matches; any other file in the target (a person's notes, an edited samples.csv, a folder that
  merely holds a copied manifest) stops the export, and the message lists them. A folder is never
  removed wholesale: files are deleted one by one, folders only once empty.
- The new export is written into a temp sibling `<name>.tmp-<pid>` and swapped in with one atomic
  exchange of the two folders (Linux renameat2 RENAME_EXCHANGE; elsewhere two renames), so the old
  export stays until the new one is complete. A failed export removes its temp folder; temp folders
  left by killed runs are cleaned on the next export to the same target, again only of the files an
  export writes.
- A target under a file, or a symbolic link that points nowhere, is refused by name (a dangling link
  would make the export create a folder outside the tree the person chose).
- ImageFolder class folders are the class names, percent-encoded where a character is not safe in a
  file name (`a/b` -> `a%2Fb`, `.` -> `%2E`): unique and reversed by `urllib.parse.unquote`. Names
  too long for a file system get a hash suffix; the manifest maps every folder to its class.
- Each image is checked against its content hash as it is copied, so a missing, truncated or
  foreign image file is reported with its sample id instead of being exported silently.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import re
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import pandas as pd

from ..data.images import content_hash
from ..data.files import atomic_write_bytes
from ..data.store import DamagedFileError, SampleStore

EXPORT_FORMATS = ("imagefolder", "csv", "hf")
# The exported columns, one row per image (the public schema; README "Export"), then the dataset's
# own attribute columns. Missing values are null (empty in CSV): a real image has no seed, prompt...
# file: the image's path in the export (metadata.jsonl: file_name, relative to its split folder).
# split: train or test (generated images are train); source: real or generated.
EXPORT_COLUMNS = (
    "file",
    "id",
    "label",
    "split",
    "source",
    "caption",
    "prompt",
    "negative_prompt",
    "seed",
    "steps",
    "guidance",
    "strength",
    "parent_id",
    "round",
    "strategy",
    "model",
    "scheduler",
    "latent_perturbation",
    "guidance_min_sigma",
    "feedback",
    "feedback_labels",
    "flag",
    "flag_reason",
    "hash",
    "created",
)
# Project internals, never exported: paths inside the project folder and batch bookkeeping.
_INTERNAL = ("embeddings_file", "mask_file", "batch_id", "batch_index", "export_split")
_INTS = ("seed", "steps", "round")
_FLOATS = ("guidance", "strength", "latent_perturbation", "guidance_min_sigma", "created")
MANIFEST = "datacrafter-export.json"
MAX_NAME_BYTES = 200  # below the usual 255-byte limit, leaving room for suffixes
_UNSAFE = set('/\\:*?"<>|%')
_lock = threading.Lock()  # one export at a time per process: temp names carry the pid


class ExportError(ValueError):
    """The export cannot be written as asked; the message names the thing and the fix."""


def class_folder(label: str) -> str:
    """The folder name of a class: percent-encoded where unsafe, reversible with urllib.parse.unquote.

    Names longer than MAX_NAME_BYTES keep a readable prefix plus a hash (the manifest maps them back).
    """
    label = str(label)
    if not label:
        raise ExportError("a class has an empty name: it cannot be a folder; rename the class")
    out = []
    last = len(label) - 1
    for k, ch in enumerate(label):
        edge = (k == 0 and ch in ". ") or (k == last and ch in ". ")
        if ch in _UNSAFE or ord(ch) < 32 or ord(ch) == 127 or edge:
            out.append("".join(f"%{b:02X}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    name = "".join(out)
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        digest = content_hash(label.encode("utf-8"))[:12]
        prefix = name.encode("utf-8")[: MAX_NAME_BYTES - 14].decode("utf-8", errors="ignore")
        prefix = re.sub(r"%[0-9A-F]?$", "", prefix)  # never cut an escape in half
        name = f"{prefix}~{digest}"
    return name


def class_folders(classes: Sequence[str]) -> dict[str, str]:
    """{class: folder} for all classes; refuses classes whose folders would collide (also on
    case-insensitive file systems such as macOS and Windows)."""
    folders = {str(c): class_folder(c) for c in classes}
    seen: dict[str, str] = {}
    for c, f in folders.items():
        key = f.casefold()
        if key in seen:
            raise ExportError(
                f"classes {seen[key]!r} and {c!r} would share the folder {f!r} (file names ignore case on macOS "
                f"and Windows): rename one of them, or export with format='csv' or 'hf'"
            )
        seen[key] = c
    return folders


class ExportOptions(TypedDict, total=False):
    """The keyword options of `export_project` (and `crafter.export`)."""

    include_flagged: bool  # keep generated images with a quality flag (default False)
    include_bad: bool  # keep generated images marked bad (default False)
    overwrite: bool  # replace an earlier export at `out` once the new one is complete (default False)


def export_project(
    store: SampleStore,
    classes: Sequence[str],
    out: str | os.PathLike,
    format: str = "imagefolder",
    *,
    include_flagged: bool = False,
    include_bad: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write the expanded dataset of `store` to `out` (see DataCrafter.export); returns the folder."""
    if format not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {format!r}: use one of {list(EXPORT_FORMATS)}")
    out = _target(out)
    _check_target(out, store.path, overwrite)
    rows = _rows(store.samples, include_flagged=include_flagged, include_bad=include_bad)
    folders = class_folders(classes) if format == "imagefolder" else {}
    with _lock:
        _make_parent(out)
        clean_stale(out)
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        _remove_ours(tmp)
        manifest = {
            "format": "datacrafter-export",
            "export_format": format,
            "project": str(store.path),
            "complete": False,
            "started": time.time(),
        }
        try:
            tmp.mkdir()
            _write_manifest(tmp, manifest)  # marks the temp folder as ours from the start
            if format == "hf":
                counts = _write_hf(store, rows, classes, tmp)
            else:
                counts = _write_files(store, rows, format, folders, tmp)
            manifest.update(
                complete=True,
                finished=time.time(),
                counts=counts,
                classes=[str(c) for c in classes],
                attributes=attribute_columns(rows),
                class_folders={f: c for c, f in folders.items()},
                files=_listing(tmp),
            )
            _write_manifest(tmp, manifest)
            _swap_in(tmp, out)
        except BaseException:
            _remove_ours(tmp)
            raise
    return out


# ---- checks -----------------------------------------------------------------------------------
def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _target(out: str | os.PathLike) -> Path:
    """The folder to write: a link to a folder stands for that folder; a link that points nowhere is refused."""
    out = Path(out).expanduser().absolute()
    if out.is_symlink():
        if not out.exists():
            raise ExportError(
                f"{out} is a symbolic link that points to {os.readlink(out)}, which does not exist (a dangling link): "
                f"the export will not create a folder outside the tree you chose. Create the folder the link points "
                f"to, remove the link, or choose another folder"
            )
        out = out.resolve()  # replace the folder it points to, not the link
    return out


def _make_parent(out: Path) -> None:
    """Create the folders above `out`, naming the file that is in the way."""
    for above in reversed(out.parents):
        if above.exists() and not above.is_dir():
            raise ExportError(
                f"{above} is a file, so the export folder {out} cannot be made under it: choose a folder path"
            )
        if above.is_symlink() and not above.exists():
            raise ExportError(
                f"{above} is a symbolic link to {os.readlink(above)}, which does not exist: the export will not "
                f"create folders outside the tree you chose. Fix the link or choose another folder"
            )
    out.parent.mkdir(parents=True, exist_ok=True)


def _check_target(out: Path, project: Path, overwrite: bool) -> None:
    target, proj = out.resolve(), Path(project).resolve()
    if _inside(target, proj):
        raise ExportError(
            f"cannot export into the project folder {proj} itself or a folder inside it: "
            f"choose a folder outside the project, e.g. {proj.parent / (proj.name + '-export')}"
        )
    if _inside(proj, target):
        raise ExportError(
            f"cannot export to {out}: it contains the project {proj}, which the export would "
            f"replace; choose a new folder outside the project, e.g. {proj.parent / (proj.name + '-export')}"
        )
    for above in [out, *out.parents]:
        if above.exists() and not above.is_dir():
            what = "is a file" if above == out else "is a file, so the export folder cannot be made under it"
            raise ExportError(f"{above} {what}: choose a folder path for the export, e.g. {out.parent / 'export'}")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty: choose a new folder or pass overwrite=True")
        if not _is_ours(out):
            raise ExportError(
                f"{out} holds files that no datacrafter export wrote (it has no {MANIFEST}), so overwrite=True "
                f"will not replace it: choose a new folder, or move or delete {out} yourself"
            )
        foreign = _foreign(out)
        if foreign:
            shown = "; ".join(foreign[:10]) + (f"; and {len(foreign) - 10} more" if len(foreign) > 10 else "")
            raise ExportError(
                f"{out} holds {len(foreign)} file(s) that its export manifest does not list with their content, so "
                f"overwrite=True will not delete them: {shown}. Move them out of {out} (or choose a new folder), "
                f"then export again"
            )


def _is_ours(folder: Path) -> bool:
    return _manifest(folder) is not None


def _manifest(folder: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("format") == "datacrafter-export" else None


def _walk(folder: Path) -> Iterator[tuple[str, Path]]:
    """Every entry under `folder` that is not a real folder (files, links), as (posix relative name, path);
    links are never followed."""
    for root, dirs, files in os.walk(folder, followlinks=False):
        base = Path(root)
        for name in sorted(files) + sorted(d for d in dirs if (base / d).is_symlink()):
            path = base / name
            yield path.relative_to(folder).as_posix(), path


def _listing(folder: Path) -> dict[str, str]:
    """{relative file name: content hash} of every file an export just wrote (the manifest excepted)."""
    return {rel: content_hash(p.read_bytes()) for rel, p in _walk(folder) if rel != MANIFEST}


def _owned(rel: str, path: Path, listed: dict[str, Any]) -> str:
    """'' when the export owns this file (listed, a plain file, same content), else why not."""
    if rel == MANIFEST:
        return ""
    if rel not in listed:
        return f"{rel} (not written by the export)"
    if path.is_symlink() or not path.is_file():
        return f"{rel} (not the file the export wrote)"
    try:
        same = content_hash(path.read_bytes()) == listed[rel]
    except OSError:
        same = False
    return "" if same else f"{rel} (changed since the export)"


def _foreign(folder: Path) -> list[str]:
    """Files of an export folder that its manifest does not list with their current content."""
    listed = (_manifest(folder) or {}).get("files")
    listed = listed if isinstance(listed, dict) else {}
    return [why for rel, path in _walk(folder) if (why := _owned(rel, path, listed))]


def _rows(s: pd.DataFrame, *, include_flagged: bool, include_bad: bool) -> pd.DataFrame:
    gen = s["source"] == "generated"
    fb = s["feedback"].astype(str)
    drop = fb == "removed"
    if not include_bad:
        drop |= gen & (fb == "bad")
    if not include_flagged:
        drop |= gen & (s["flag"].astype(str) != "") & (fb != "good")
    rows = s[~drop].copy()
    rows["export_split"] = np.where(rows["split"] == "test", "test", "train")
    return rows


def image_bytes(store: SampleStore, sample_id: str, file: str, expected_hash: str) -> bytes:
    """The stored PNG of a sample, checked: inside the project, present, and matching its content hash."""
    path = _project_file(store, sample_id, file)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DamagedFileError(
            f"sample {sample_id}: its image file {file} is missing from project {store.path}: restore the file from "
            f"a backup, or drop the sample with crafter.feedback(removed=[{sample_id!r}]) and export again"
        ) from None
    if expected_hash and content_hash(data) != expected_hash:
        raise DamagedFileError(
            f"sample {sample_id}: its image file {file} in project {store.path} is truncated or changed (its content "
            f"hash is not {expected_hash}): restore the file from a backup, or drop the sample with "
            f"crafter.feedback(removed=[{sample_id!r}]) and export again"
        )
    return data


def _project_file(store: SampleStore, sample_id: str, file: str) -> Path:
    root = Path(store.path).resolve()
    path = (root / str(file)).resolve()
    if not _inside(path, root) or path == root:
        raise DamagedFileError(
            f"sample {sample_id}: its file column {file!r} points outside project {store.path}; the samples table "
            f"was edited by hand or damaged: nothing outside the project is read. Restore samples.parquet from a backup"
        )
    return path


# ---- writers ------------------------------------------------------------------------------------
def attribute_columns(rows: pd.DataFrame) -> list[str]:
    """The dataset's own columns (e.g. the starter's digit, background): exported after EXPORT_COLUMNS."""
    return [str(c) for c in rows.columns if c not in EXPORT_COLUMNS and c not in _INTERNAL and c != "split"]


def public_table(rows: pd.DataFrame, files: Sequence[str] | None = None) -> pd.DataFrame:
    """The exported columns (EXPORT_COLUMNS, then the dataset's attributes) of the rows to export.

    No project internals; `split` is the export split; values that do not apply are null."""
    table = pd.DataFrame(index=range(len(rows)))
    table["file"] = list(files) if files is not None else None
    for col in EXPORT_COLUMNS[1:]:
        values = rows["export_split"] if col == "split" else rows[col] if col in rows.columns else None
        if values is None:
            table[col] = None
        elif col in _INTS:
            ints = pd.to_numeric(values, errors="coerce").astype("Int64").reset_index(drop=True)
            table[col] = ints.mask(ints < 0) if col != "round" else ints
        elif col in _FLOATS:
            table[col] = pd.to_numeric(values, errors="coerce").astype(float).to_numpy()
        else:
            text = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in values]
            table[col] = [None if t == "" else t for t in text]
    for col in attribute_columns(rows):
        table[col] = rows[col].to_numpy()
    return table


def _write_metadata(tmp: Path, table: pd.DataFrame) -> None:
    """metadata.parquet in each split folder, as `datasets.load_dataset("imagefolder")` reads it.

    Parquet, not jsonl / csv: `datasets` refuses split metadata files whose inferred column types
    differ, and a test split of real images only has every provenance column empty (null type in
    jsonl, float in csv). One arrow schema for all splits keeps the types equal."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = table.drop(columns=["file"])
    meta.insert(0, "file_name", [f.split("/", 1)[1] for f in table["file"]])
    for col in meta.columns:  # attribute columns of mixed types: text, as a CSV would hold them
        try:
            pa.array(meta[col], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            meta[col] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in meta[col]]
    inferred = pa.Table.from_pandas(meta, preserve_index=False).schema.remove_metadata()
    types = {c: pa.int64() if c in _INTS else pa.float64() if c in _FLOATS else pa.string() for c in EXPORT_COLUMNS}
    types["file_name"] = pa.string()
    schema = pa.schema([pa.field(f.name, types.get(f.name, f.type)) for f in inferred])
    for split in sorted(set(table["split"])):
        part = meta[(table["split"] == split).to_numpy()]
        buffer = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False), buffer)
        atomic_write_bytes(tmp / str(split) / "metadata.parquet", buffer.getvalue().to_pybytes())


def _write_files(
    store: SampleStore, rows: pd.DataFrame, format: str, folders: dict[str, str], tmp: Path
) -> dict[str, int]:
    files = []
    for r in rows.itertuples(index=False):
        if format == "imagefolder":
            rel = Path(r.export_split) / folders[str(r.label)] / f"{r.id}.png"
        else:
            rel = Path("images") / f"{r.id}.png"
        data = image_bytes(store, str(r.id), str(r.file), str(r.hash))
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(data)
        files.append(rel.as_posix())
    table = public_table(rows, files)
    if format == "imagefolder":
        _write_metadata(tmp, table)
    table.to_csv(tmp / "samples.csv", index=False)
    return {str(k): int(v) for k, v in rows["export_split"].value_counts().items()}


def _write_hf(store: SampleStore, rows: pd.DataFrame, classes: Sequence[str], tmp: Path) -> dict[str, int]:
    try:
        import datasets
    except ImportError as err:
        raise ImportError("format='hf' needs the `datasets` package: pip install 'datacrafter-widget[hf]'") from err
    images = [
        {"bytes": image_bytes(store, str(i), str(f), str(h)), "path": None}
        for i, f, h in zip(rows["id"], rows["file"], rows["hash"])
    ]
    data: dict[str, list[Any]] = {"image": images}
    for c, col in public_table(rows).drop(columns=["file"]).items():
        if c in _INTS:
            data[str(c)] = [None if pd.isna(v) else int(v) for v in col]
        elif pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col):
            data[str(c)] = [None if pd.isna(v) else v for v in col.tolist()]
        else:  # text, or mixed attribute columns: strings with None for missing
            data[str(c)] = [None if v is None or (isinstance(v, float) and math.isnan(v)) else str(v) for v in col]
    ds = datasets.Dataset.from_dict(data)
    ds = ds.cast_column("image", datasets.Image())
    ds = ds.cast_column("label", datasets.ClassLabel(names=list(classes)))
    dd = datasets.DatasetDict(
        {split: ds.filter(lambda e, s=split: e["split"] == s) for split in sorted(set(rows["export_split"]))}
    )
    dd.save_to_disk(str(tmp))
    return {str(k): len(v) for k, v in dd.items()}


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8"))


# ---- swap and clean-up -----------------------------------------------------------------------------
def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the complete export `tmp` under the name `out`; the old export's files are deleted only afterwards."""
    if not out.exists():
        os.rename(tmp, out)
        return
    if not any(out.iterdir()):
        os.rename(tmp, out)  # over an empty folder: one atomic rename
        return
    if _exchange(tmp, out):  # tmp now holds the old export
        _retire(tmp, out)
        return
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    os.rename(out, old)  # a kill right here leaves old + tmp; clean_stale puts old back
    os.rename(tmp, out)
    _retire(old, out)


def _retire(old: Path, out: Path) -> None:
    """Delete the replaced export's own files; anything else (a file added while the new export was
    written) is kept, under a name the warning gives."""
    _remove_ours(old)
    if old.exists():
        kept = out.with_name(f"{out.name}.kept-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
        os.rename(old, kept)
        (kept / MANIFEST).unlink(missing_ok=True)  # what is left is not an export
        left = [rel for rel, _ in _walk(kept)]
        warnings.warn(
            f"{len(left)} file(s) appeared in {out} while the new export was written ({', '.join(left[:5])}); "
            f"they are kept in {kept}",
            UserWarning,
            stacklevel=4,
        )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own leftovers: exports in this process run one at a time
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# The names an export writes, for temp folders whose manifest does not list its files yet.
_EXPORT_NAMES = re.compile(
    rf"({re.escape(MANIFEST)}(\.tmp-\d+)?|samples\.csv|images/[a-z]\d+\.png|(train|test)/[^/]+/[a-z]\d+\.png"
    r"|(train|test)/metadata\.parquet(\.tmp-\d+)?"
    r"|dataset_dict\.json|(train|test)/(dataset_info\.json|state\.json|data-\d{5}-of-\d{5}\.arrow))"
)


def _remove_ours(folder: Path) -> None:
    """Delete from an export folder only the files the export wrote, then the folders left empty.

    A complete export: the files its manifest lists whose content still matches. An unfinished one
    (killed, failed, or a temp folder whose first manifest was never written): only names an export
    writes. Anything else stays, and so does the folder holding it."""
    if not folder.is_dir() or folder.is_symlink():
        return
    manifest = _manifest(folder)
    listed = manifest.get("files") if manifest is not None and manifest.get("complete") else None
    manifest_last = folder / MANIFEST
    for rel, path in list(_walk(folder)):
        if rel == MANIFEST:
            continue
        if isinstance(listed, dict):
            ours = not _owned(rel, path, listed)
        else:
            ours = bool(_EXPORT_NAMES.fullmatch(rel)) and not path.is_symlink()
        if ours:
            path.unlink(missing_ok=True)
    if not [rel for rel, _ in _walk(folder) if rel != MANIFEST]:
        manifest_last.unlink(missing_ok=True)  # last: until now it marked the folder as an export
    for root, _dirs, _files in sorted(os.walk(folder), key=lambda x: -len(x[0])):  # deepest first
        try:
            os.rmdir(root)
        except OSError:
            pass  # not empty: something that is not ours is in it


def clean_stale(out: str | os.PathLike) -> list[Path]:
    """Clean up after exports to `out` killed part way (by dead processes); returns what was removed.

    A killed two-rename swap may have left the old export under `<name>.old-<pid>` and no `out`:
    it is put back first, so the old export is never lost."""
    out = Path(out).expanduser().absolute()
    pattern = re.compile(rf"^{re.escape(out.name)}\.(tmp|old)-(\d+)$")
    stale = []
    if out.parent.is_dir():
        for p in out.parent.iterdir():
            m = pattern.match(p.name)
            if m and p.is_dir() and not _pid_alive(int(m.group(2))):
                stale.append((m.group(1), p))
    for kind, p in sorted(stale, key=lambda x: x[0]):  # "old" before "tmp"
        if kind == "old" and not out.exists() and _is_ours(p):
            os.rename(p, out)
            continue
    removed = []
    for _, p in stale:
        if p.exists():
            _remove_ours(p)
            if not p.exists():
                removed.append(p)
    return removed
