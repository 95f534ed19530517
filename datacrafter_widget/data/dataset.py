"""Labelled image sets that load lazily.

A `Dataset` is a table (one row per image) whose `image` column holds either a file path, loaded
on demand, or an in-memory PIL image (small synthetic sets such as the starter digits). Nothing
here loads every full-size image at once.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .images import MAX_IMAGE_SIDE, downscaled, to_rgb

_RESERVED = ("image", "label", "caption")
# Split names as other tools write them (torchvision / Kaggle folders, HF DatasetDicts) -> ours.
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
SPLITS = ("train", "val", "test", "pool")
# Hugging Face imagefolder metadata, one per split folder (our exports write parquet)
_METADATA = ("metadata.parquet", "metadata.jsonl", "metadata.csv")
_MANIFEST = "datacrafter-export.json"  # written by crafter.export: class folder -> class name, class order
_ORIENTATION = 0x0112  # EXIF tag: how the camera was held
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif")


class DatasetError(ValueError):
    """Bad dataset input; the message names the thing and the fix."""


class LoadWarning(UserWarning):
    """Some inputs were skipped while loading a dataset; `Dataset.report` lists each and why."""


class DuplicateImageWarning(UserWarning):
    """The same image is labelled with two classes (or sits in train and test); the message names the files."""


class DatasetNote(UserWarning):
    """How a loader read its input (a train/test tree read as splits, large images downscaled)."""


def _open_source(value: Any, root: Path | None = None) -> Image.Image:
    """Open (without decoding) an image held as a path, bytes, or a {"bytes", "path"} dict."""
    if isinstance(value, dict):  # Hugging Face datasets Image(decode=False)
        if value.get("bytes"):
            value = value["bytes"]
        elif value.get("path"):
            value = value["path"]
        else:
            raise DatasetError("image entry holds neither bytes nor a path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Image.open(io.BytesIO(bytes(value)))
    path = Path(value)
    if root is not None and not path.is_absolute():
        path = root / path
    return Image.open(path)


def upright(image: Image.Image) -> Image.Image:
    """The image as the camera saw it: phones store pixels sideways plus an EXIF orientation tag."""
    try:
        orientation = image.getexif().get(_ORIENTATION, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: keep the pixels as stored
        return image
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(image)
    return image


def _inspect(value: Any, root: Path | None = None, *, decode: bool = True) -> tuple[str | None, tuple[int, int]]:
    """(None, size) if the image is readable, else (the reason, (0, 0)). Decodes (at reduced scale
    for JPEG) and drops the pixels at once, so checking a folder never holds more than one image."""
    try:
        with _open_source(value, root) as im:
            size = im.size
            if not decode:
                im.verify()
                return None, size
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads the whole stream
            im.load()
            if im.width < 1 or im.height < 1:
                return "image has no pixels", (0, 0)
        return None, size
    except FileNotFoundError:
        return "file not found", (0, 0)
    except UnidentifiedImageError:
        return "not an image PIL can read", (0, 0)
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})", (0, 0)
    except (OSError, SyntaxError, ValueError, DatasetError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        return f"corrupt or truncated image ({text})", (0, 0)


def check_image(value: Any, root: Path | None = None, *, decode: bool = True) -> str | None:
    """None if the image is readable, else the reason (see `_inspect`)."""
    return _inspect(value, root, decode=decode)[0]


def _digest(value: Any, root: Path | None = None) -> str | None:
    """A key for "the same image": the file's or encoded bytes, or a PIL image's pixels."""
    if isinstance(value, Image.Image):
        return hashlib.sha1(f"{value.mode}{value.size}".encode() + value.tobytes()).hexdigest()
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return hashlib.sha1(bytes(value)).hexdigest()
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if root is not None and not path.is_absolute():
            path = root / path
        try:
            return hashlib.sha1(path.read_bytes()).hexdigest()
        except OSError:
            return None
    return None


def _where(value: Any, row: int) -> str:
    return str(value) if isinstance(value, (str, os.PathLike)) else f"row {row}"


def _report_duplicates(frame: pd.DataFrame, splits: Sequence[str] | None, root: Path | None, what: str) -> list:
    """Warn about one image under two classes, or in train and in test; returns the groups found.

    Each group is (files, labels, splits): the same image content at each file."""
    groups: dict[str, list[int]] = {}
    for i, value in enumerate(frame["image"].tolist()):
        key = _digest(value, root)
        if key is not None:
            groups.setdefault(key, []).append(i)
    labels = frame["label"].astype(str).tolist()
    found = []
    for rows in groups.values():
        if len(rows) < 2:
            continue
        row_labels = [labels[i] for i in rows]
        row_splits = [splits[i] for i in rows] if splits is not None else [""] * len(rows)
        leak = "train" in row_splits and "test" in row_splits
        if len(set(row_labels)) > 1 or leak:
            found.append(([_where(frame.at[i, "image"], i) for i in rows], row_labels, row_splits))
    if found:
        shown = "; ".join(
            " = ".join(f"{f} ({lab}{', ' + sp if sp else ''})" for f, lab, sp in zip(*g)) for g in found[:3]
        )
        more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
        warnings.warn(
            f"{what}: {len(found)} image(s) appear more than once with different classes or in both train and "
            f"test ({shown}{more}): a label is wrong or the test split leaks into training; remove the copies "
            f"you do not mean (the list is in .duplicates)",
            DuplicateImageWarning,
            stacklevel=3,
        )
    return found


def _note_large(frame: pd.DataFrame, sizes: Sequence[tuple[int, int]], what: str) -> pd.DataFrame:
    """Mark images above MAX_IMAGE_SIDE (read downscaled) with their source file and size, and say so."""
    big = [i for i, (w, h) in enumerate(sizes) if max(w, h) > MAX_IMAGE_SIDE]
    if not big:
        return frame
    frame = frame.copy()
    frame["original_file"] = None
    frame["original_size"] = None
    for i in big:
        value = frame.at[i, "image"]
        frame.at[i, "original_file"] = str(value) if isinstance(value, (str, os.PathLike)) else None
        frame.at[i, "original_size"] = f"{sizes[i][0]}x{sizes[i][1]}"
    first = big[0]
    warnings.warn(
        f"{what}: {len(big)} image(s) are larger than {MAX_IMAGE_SIDE} px on a side (e.g. "
        f"{_where(frame.at[first, 'image'], first)}, {frame.at[first, 'original_size']}): they are read downscaled "
        f"to {MAX_IMAGE_SIDE} px (aspect kept; the files are untouched); columns original_file and original_size "
        "keep the source of each",
        DatasetNote,
        stacklevel=3,
    )
    return frame


def _split_of(value: Any) -> str | None:
    text = str(value).strip().lower()
    return "pool" if text == "pool" else SPLIT_ALIASES.get(text)


def _note_splits(what: str, parts: dict[str, "Dataset"]) -> None:
    counts = ", ".join(f"{k} ({len(v)} images)" for k, v in parts.items())
    extra = ""
    if "val" in parts:
        extra = (
            "; val is kept in .val (a project stores train and test only)"
            if "test" in parts
            else "; there is no test split: pass heldout=ds.val to dc.DataCrafter to score the student on val"
        )
    main = "the returned Dataset is the train split" if "train" in parts else "there is no train split"
    warnings.warn(
        f"{what}: read as splits {counts}: {main}; .test is kept out of training{extra}",
        DatasetNote,
        stacklevel=3,
    )


def _warn_report(report: list[tuple[str, str]], what: str) -> None:
    if not report:
        return
    shown = "; ".join(f"{Path(f).name}: {r}" for f, r in report[:3])
    more = f"; and {len(report) - 3} more" if len(report) > 3 else ""
    warnings.warn(
        f"{what}: skipped {len(report)} input(s) ({shown}{more}); see .report for the full list",
        LoadWarning,
        stacklevel=3,
    )


def _check_table(what: str, columns: list[Any], wanted: Sequence[object], rows: int) -> None:
    """The checks every table loader makes first: the named columns exist, and there are rows."""
    missing = [c for c in wanted if c is not None and c not in columns]
    if missing:
        raise DatasetError(
            f"column(s) {missing} not in {what}; available columns: {[str(c) for c in columns]}. "
            f"Pass image=..., label=... (and caption=...) with the right names"
        )
    if rows == 0:
        raise DatasetError(f"{what} has no rows: pass at least one image per class")


def _read_manifest(root: Path) -> dict[str, Any]:
    """Our export's manifest (class folder -> class name, class order), or {} when absent or foreign."""
    try:
        doc = json.loads((root / _MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) and doc.get("format") == "datacrafter-export" else {}


def _ours(file_name: str, manifest: dict[str, Any]) -> bool:
    """Files an export of ours writes beside the split folders (not images, nothing lost by skipping)."""
    return file_name == _MANIFEST or (bool(manifest) and file_name == "samples.csv")


def _read_metadata(folder: Path, keep: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """{file_name: {caption, attributes...}} from a Hugging Face imagefolder metadata file in `folder`.

    keep: the attribute columns to keep (our export names the dataset's own; the rest is provenance)."""
    for fname in _METADATA:
        path = folder / fname
        if not path.is_file():
            continue
        try:
            if fname.endswith(".parquet"):
                table = pd.read_parquet(path)
            else:
                table = pd.read_json(path, lines=True) if fname.endswith(".jsonl") else pd.read_csv(path)
        except (ValueError, OSError) as exc:
            raise DatasetError(f"{path} cannot be read ({exc}): fix it or move it out of the dataset folder") from None
        if "file_name" not in table.columns:
            raise DatasetError(
                f"{path} has no file_name column (columns: {list(table.columns)}): Hugging Face imagefolder "
                "metadata names each image's path relative to its folder in file_name"
            )
        table = table.astype(object).where(table.notna(), None)
        text = "caption" if "caption" in table.columns else ("text" if "text" in table.columns else None)
        out: dict[str, dict[str, Any]] = {}
        for record in table.to_dict("records"):
            key = str(record.pop("file_name"))
            for col in ("label", "split", "image"):
                record.pop(col, None)
            if text is not None:
                record["caption"] = record.pop(text)
            if keep is not None:
                record = {k: v for k, v in record.items() if k == "caption" or k in keep}
            out[key] = record
        return out
    return {}


def _folder_layout(root: Path, splits: bool | None, exts: set[str]) -> list[tuple[str | None, Path]]:
    """[(split, folder holding class folders)]: [(None, root)] for a plain ImageFolder tree.

    A tree whose top folders are all split names is read as splits; a mix, or a split folder with
    images directly inside, is ambiguous: the error says what was found and how to say what is meant."""
    tops = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    named = [p for p in tops if p.name.lower() in SPLIT_ALIASES]
    if splits is False or (splits is None and not named):
        if not tops:
            raise DatasetError(
                f"dataset folder {root} has no class folders: expected the ImageFolder layout "
                f"{root}/<class name>/<image>.jpg"
            )
        return [(None, root)]
    if not named:
        raise DatasetError(
            f"splits=True but {root} has no split folders (train/, test/, val/); it holds "
            f"{[p.name for p in tops]}: pass splits=False (or leave it out) to read them as classes"
        )
    others = [p.name for p in tops if p not in named]
    if others:
        raise DatasetError(
            f"{root} mixes split folders {[p.name for p in named]} with other folders {others}: if they are all "
            f"classes, pass splits=False; if {[p.name for p in named]} are splits, move {others} into them "
            f"(e.g. {root}/train/<class>/)"
        )
    seen: dict[str, str] = {}
    for p in named:
        key = SPLIT_ALIASES[p.name.lower()]
        if key in seen:
            raise DatasetError(
                f"{root} has two folders for the {key} split, {seen[key]}/ and {p.name}/: merge them into one"
            )
        seen[key] = p.name
    for p in named:
        loose = [f.name for f in p.iterdir() if f.is_file() and f.suffix.lower() in exts]
        if loose or not any(d.is_dir() and not d.name.startswith(".") for d in p.iterdir()):
            listed = [q.name for q in named]
            raise DatasetError(
                f"{root} looks like a tree of splits {listed}, but {p.name}/ holds "
                + (f"images directly ({loose[:3]}...)" if loose else "no class folders")
                + f": if {listed} are your class names, pass splits=False; if they are splits, put each image "
                f"in {p.name}/<class>/"
            )
    return [(SPLIT_ALIASES[p.name.lower()], p) for p in named]


def _split_column(column: pd.Series, name: str) -> list[str]:
    """Each row's split from a split column (usual names in any case); unknown values are refused."""
    values = [_split_of(v) if v is not None and not (isinstance(v, float) and pd.isna(v)) else None for v in column]
    bad = sorted({str(v) for v, s in zip(column.tolist(), values) if s is None})
    if bad:
        hint = " (an older datacrafter export: use split='export_split')" if "generated" in bad else ""
        raise DatasetError(
            f"column {name!r} has split values {bad} that are not train / val / test / pool{hint}: rename them, e.g. "
            f"df[{name!r}] = df[{name!r}].replace({{{bad[0]!r}: 'test'}}), or pass split=None to load every row as "
            "one set"
        )
    return [str(v) for v in values]


def _hf_splits(parts: dict[str, Any], splits: dict[str, str] | None) -> dict[str, Any]:
    """{our split name: part} from a DatasetDict's keys (or the mapping the user gave)."""
    if splits is not None:
        wrong = {k: v for k, v in splits.items() if k not in SPLITS or v not in parts}
        if wrong:
            raise DatasetError(
                f"splits={splits}: each key must be one of {list(SPLITS)} and each value a key of the DatasetDict "
                f"({list(parts)})"
            )
        return {k: parts[v] for k, v in splits.items()}
    named = {key: _split_of(key) for key in parts}
    unknown = [k for k, v in named.items() if v is None]
    if unknown or len(set(named.values())) < len(named):
        raise DatasetError(
            f"the DatasetDict has splits {list(parts)}; {unknown or 'two of them'} cannot be read as train / val / "
            f"test: say which is which, e.g. splits={{'train': {list(parts)[0]!r}, 'test': {list(parts)[-1]!r}}}"
        )
    return {str(v): parts[k] for k, v in named.items()}


class Dataset:
    """A labelled image set with optional `pool` / `train` / `test` splits."""

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        classes: Sequence[str] | None = None,
        splits: dict[str, "Dataset"] | None = None,
        report: list[tuple[str, str]] | None = None,
        name: str = "",
        root: str | Path | None = None,
    ) -> None:
        missing = [c for c in ("image", "label") if c not in frame.columns]
        if missing:
            raise DatasetError(f"dataset table is missing column(s) {missing}; it needs 'image' and 'label'")
        frame = frame.reset_index(drop=True).copy()
        frame["label"] = frame["label"].astype(str)
        if "caption" not in frame.columns:
            frame["caption"] = None
        self.frame = frame
        present = sorted(frame["label"].unique().tolist())
        if classes is None:
            classes = present
        else:
            classes = [str(c) for c in classes]
            unknown = sorted(set(present) - set(classes))
            if unknown:
                raise DatasetError(f"labels {unknown} are not among the classes {classes}")
        self.classes: list[str] = list(classes)
        self.splits: dict[str, Dataset] = dict(splits or {})
        self.report: list[tuple[str, str]] = list(report or [])
        # (files, labels, splits) of images found more than once under different classes / in train and test
        self.duplicates: list[tuple[list[str], list[str], list[str]]] = []
        self.name = name
        self.root = Path(root) if root is not None else None

    # ---- size and access -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        counts = self.frame["label"].value_counts()
        per_class = ", ".join(f"{c}: {int(counts.get(c, 0))}" for c in self.classes[:10])
        more = ", ..." if len(self.classes) > 10 else ""
        splits = f", splits={sorted(self.splits)}" if self.splits else ""
        skipped = f", skipped={len(self.report)}" if self.report else ""
        return f"Dataset({self.name or 'unnamed'}: {len(self)} images, {len(self.classes)} classes [{per_class}{more}]{splits}{skipped})"

    def image(self, i: int) -> Image.Image:
        """The i-th image as RGB, read from disk if the row holds a path."""
        value = self.frame.at[int(i), "image"]
        if isinstance(value, Image.Image):
            return downscaled(to_rgb(value))
        try:
            with _open_source(value, self.root) as im:
                if max(im.size) > MAX_IMAGE_SIDE:  # JPEG: decode at a reduced scale still above the target
                    scale = MAX_IMAGE_SIDE / max(im.size)
                    im.draft("RGB", (int(im.width * scale) + 1, int(im.height * scale) + 1))
                im.load()
                return downscaled(to_rgb(upright(im)))
        except (OSError, SyntaxError, ValueError, EOFError) as exc:  # truncated, deleted or not an image
            where = f"{value} (row {i})" if isinstance(value, (str, os.PathLike)) else f"row {i}"
            reason = "file not found" if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {exc}"
            raise DatasetError(
                f"dataset {self.name or 'unnamed'}: image {where} cannot be read ({reason}): replace or remove it, "
                f"or load the dataset with check='decode', which skips unreadable images and lists them in .report"
            ) from None

    def images(self, indices: Sequence[int] | None = None) -> list[Image.Image]:
        indices = range(len(self)) if indices is None else indices
        return [self.image(i) for i in indices]

    def __getitem__(self, i: int) -> tuple[Image.Image, str]:
        return self.image(i), str(self.frame.at[int(i), "label"])

    @property
    def labels(self) -> list[str]:
        return self.frame["label"].tolist()

    @property
    def captions(self) -> list[str | None]:
        return [None if pd.isna(c) else str(c) for c in self.frame["caption"].tolist()]

    @property
    def attributes(self) -> list[str]:
        return [c for c in self.frame.columns if c not in _RESERVED]

    def to_dataframe(self) -> pd.DataFrame:
        """image, label, caption and one column per attribute (a copy)."""
        return self.frame.copy()

    def subset(self, indices: Sequence[int], name: str | None = None) -> "Dataset":
        return Dataset(self.frame.iloc[list(indices)], classes=self.classes, name=name or self.name, root=self.root)

    # ---- splits ------------------------------------------------------------------------------
    def _split(self, key: str) -> "Dataset | None":
        return self.splits.get(key)

    @property
    def pool(self) -> "Dataset | None":
        return self._split("pool")

    @property
    def train(self) -> "Dataset | None":
        return self._split("train")

    @property
    def val(self) -> "Dataset | None":
        return self._split("val")

    @property
    def test(self) -> "Dataset | None":
        return self._split("test")

    @classmethod
    def _with_splits(
        cls,
        frame: pd.DataFrame,
        splits: Sequence[str] | None,
        *,
        classes: Sequence[str] | None,
        report: list[tuple[str, str]],
        name: str,
        root: Path | None,
        what: str,
    ) -> "Dataset":
        """One Dataset, or (splits given: one split name per row) the train split with every split in
        `.splits`, all sharing one class list; duplicates across classes / train and test are reported."""
        frame = frame.reset_index(drop=True)
        if classes is None:
            classes = sorted(frame["label"].astype(str).unique().tolist())
        duplicates = _report_duplicates(frame, splits, root, what)
        if splits is None:
            whole = cls(frame, classes=classes, report=report, name=name, root=root)
            whole.duplicates = duplicates
            return whole
        values = pd.Series(list(splits), dtype=object)
        parts: dict[str, Dataset] = {}
        for key in SPLITS:
            idx = [int(i) for i in (values == key).to_numpy().nonzero()[0]]
            if idx:
                part_name = name if key == "train" else f"{name}/{key}"
                parts[key] = cls(frame.iloc[idx], classes=classes, report=report, name=part_name, root=root)
        for part in parts.values():
            part.splits = parts
            part.duplicates = duplicates
        _note_splits(what, parts)
        if "train" in parts:
            return parts["train"]
        whole = cls(frame, classes=classes, splits=parts, report=report, name=name, root=root)
        whole.duplicates = duplicates
        return whole

    # ---- constructors ------------------------------------------------------------------------
    @classmethod
    def from_images(
        cls,
        images: Sequence[Image.Image],
        labels: Sequence[Any],
        captions: Sequence[str | None] | None = None,
        *,
        name: str = "images",
    ) -> "Dataset":
        """From in-memory PIL images and their labels (converted to RGB)."""
        if len(images) == 0:
            raise DatasetError("no images given: pass at least one PIL image per class")
        if len(images) != len(labels):
            raise DatasetError(f"{len(images)} images but {len(labels)} labels: pass one label per image")
        if captions is not None and len(captions) != len(images):
            raise DatasetError(f"{len(images)} images but {len(captions)} captions: pass one caption per image or none")
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                raise DatasetError(f"images[{i}] is a {type(im).__name__}, not a PIL image")
        frame = pd.DataFrame({"image": [to_rgb(upright(im)) for im in images], "label": [str(l) for l in labels]})
        frame["caption"] = list(captions) if captions is not None else None
        return cls._with_splits(frame, None, classes=None, report=[], name=name, root=None, what="Dataset.from_images")

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        extensions: Iterable[str] | None = None,
        check: str = "decode",
        name: str | None = None,
        splits: bool | None = None,
    ) -> "Dataset":
        """From an ImageFolder layout: `path/<class>/<image>` (sub-folders of a class included), or a
        tree of splits `path/{train,test,val}/<class>/<image>` (torchvision, Kaggle, our imagefolder
        export), read as splits: the train split is returned, `.test` / `.val` / `.splits` hold the rest.

        splits: None reads a tree whose top folders are all split names (train/training, test/testing,
        val/valid/validation) as splits; False reads every top folder as a class; True insists on splits.
        Hugging Face imagefolder metadata (`metadata.jsonl` / `metadata.csv` beside the class folders,
        `file_name` column) gives captions (`caption` or `text`) and attributes; an export's manifest
        gives the class names and order back. Stores file paths and loads pixels lazily. Each file is
        checked once (check="decode": decoded and dropped, catches truncated files; "header": PIL verify
        only, faster for big folders); unreadable and non-image files are skipped and listed in `.report`.
        """
        root = Path(path).expanduser()
        if not root.is_dir():
            hint = (
                "it is a file: pass the folder that holds one sub-folder per class"
                if root.exists()
                else "check the path"
            )
            raise DatasetError(f"dataset folder {root} does not exist or is not a folder: {hint}")
        if check not in ("decode", "header"):
            raise DatasetError(f"check={check!r}: use 'decode' or 'header'")
        exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in (extensions or IMAGE_EXTENSIONS)}
        root = root.absolute()
        what = f"Dataset.from_folder({str(root)!r})"
        manifest = _read_manifest(root)
        layout = _folder_layout(root, splits, exts)
        report: list[tuple[str, str]] = []
        rows: list[dict[str, Any]] = []
        sizes: list[tuple[int, int]] = []
        row_splits: list[str] = []
        hidden = "hidden folder (its name starts with '.'), skipped: rename it to import its images"
        empty: list[str] = []
        folder_class: dict[str, str] = dict(manifest.get("class_folders") or {})
        if layout[0][0] is not None:
            for p in sorted(root.iterdir()):
                if p.is_file() and not p.name.startswith(".") and not _ours(p.name, manifest):
                    report.append((str(p), "not inside a split folder (expected train/<class>/<image>)"))
        for split, base in layout:
            meta = _read_metadata(base, manifest.get("attributes") if manifest else None)
            for p in sorted(base.iterdir()):
                if p.name.startswith("."):
                    if p.is_dir():
                        report.append((str(p), hidden))
                elif p.is_file() and p.name not in _METADATA and not (base == root and _ours(p.name, manifest)):
                    report.append((str(p), f"not inside a class folder (expected {base}/<class>/<image>)"))
            for class_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
                label = folder_class.get(class_dir.name, class_dir.name)
                found = 0
                for dirpath, dirnames, filenames in os.walk(class_dir):
                    report.extend((str(Path(dirpath) / d), hidden) for d in sorted(dirnames) if d.startswith("."))
                    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                    for fname in sorted(filenames):
                        if fname.startswith("."):
                            continue
                        file = Path(dirpath) / fname
                        if file.suffix.lower() not in exts:
                            report.append((str(file), f"not an image file (extension {file.suffix or 'none'!r})"))
                            continue
                        reason, size = _inspect(file, decode=check == "decode")
                        if reason:
                            report.append((str(file), reason))
                            continue
                        row = {"image": str(file), "label": label, "caption": None}
                        row.update(meta.get(file.relative_to(base).as_posix(), {}))
                        rows.append(row)
                        sizes.append(size)
                        row_splits.append(split or "")
                        found += 1
                if not found:
                    empty.append(class_dir.relative_to(root).as_posix())
        if empty:
            raise DatasetError(
                f"class folder(s) {empty} in {root} have no readable images "
                f"({len(report)} file(s) skipped; see the list below): add images or remove the folder\n"
                + "\n".join(f"  {f}: {r}" for f, r in report[:20])
            )
        _warn_report(report, what)
        frame = _note_large(pd.DataFrame(rows), sizes, what)
        found_classes = {str(v) for v in frame["label"]}
        classes = [str(c) for c in manifest.get("classes") or []]
        if not classes or not found_classes <= set(classes):
            classes = sorted(found_classes)
        by_split = row_splits if layout[0][0] is not None else None
        return cls._with_splits(
            frame, by_split, classes=classes, report=report, name=name or root.name, root=root, what=what
        )

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        image: str = "path",
        label: str = "label",
        caption: str | None = None,
        root: str | os.PathLike | None = None,
        *,
        split: str | None = "split",
        classes: Sequence[str] | None = None,
        check: str = "decode",
        name: str = "dataframe",
    ) -> "Dataset":
        """From a table whose `image` column holds file paths (relative to `root`), PIL images or
        encoded bytes. Other columns are kept as attributes. Unreadable rows are skipped and
        listed in `.report` (by path or row number).

        split: the column that says each row's split (train/training, test/testing, val/valid/validation,
        pool); by default a column named "split" when there is one. With it, the train split is
        returned and `.test` / `.val` / `.splits` hold the rest; split=None loads every row as one set.
        classes: the class list in its order (e.g. a ClassLabel's names), classes without rows included;
        default: the sorted labels found."""
        if not isinstance(df, pd.DataFrame):
            raise DatasetError(f"from_dataframe needs a pandas DataFrame, got {type(df).__name__}")
        split_col = split if split is not None and (split != "split" or "split" in df.columns) else None
        _check_table("the table", list(df.columns), (image, label, caption, split_col), len(df))
        if check not in ("decode", "header", "none"):
            raise DatasetError(f"check={check!r}: use 'decode', 'header' or 'none'")
        split_values: list[str] | None = None
        if split_col is not None:
            split_values = _split_column(df[split_col], split_col)
        base = Path(root).expanduser().absolute() if root is not None else None
        report: list[tuple[str, str]] = []
        keep: list[int] = []
        values: list[Any] = []
        sizes: list[tuple[int, int]] = []
        for pos, (value, lab) in enumerate(zip(df[image].tolist(), df[label].tolist())):
            where = f"row {pos}"
            if lab is None or (isinstance(lab, float) and pd.isna(lab)):
                report.append((where, "missing label"))
                continue
            if isinstance(value, Image.Image):
                keep.append(pos)
                values.append(to_rgb(upright(value)))
                sizes.append(value.size)
                continue
            if isinstance(value, (str, os.PathLike)):
                p = Path(value).expanduser()
                if base is not None and not p.is_absolute():
                    p = base / p
                value = str(p.absolute())
                where = value
            elif isinstance(value, (bytes, bytearray, memoryview)):
                value = bytes(value)
            elif isinstance(value, dict) and ("bytes" in value or "path" in value):
                pass
            else:
                report.append((where, f"image cell is a {type(value).__name__}: use a path, PIL image or bytes"))
                continue
            reason, size = (None, (0, 0)) if check == "none" else _inspect(value, decode=check == "decode")
            if reason:
                report.append((where, reason))
                continue
            keep.append(pos)
            values.append(value)
            sizes.append(size)
        if not keep:
            raise DatasetError(
                f"none of the {len(df)} rows has a readable image (first problems: "
                + "; ".join(f"{w}: {r}" for w, r in report[:3])
                + ")"
            )
        kept = df.iloc[keep].reset_index(drop=True)
        frame = pd.DataFrame({"image": pd.Series(values, dtype=object), "label": kept[label].astype(str).tolist()})
        frame["caption"] = kept[caption].tolist() if caption is not None else None
        for col in kept.columns:
            if col in (image, label, caption, split_col):
                continue
            target = f"{col}_original" if col in _RESERVED else str(col)
            frame[target] = kept[col].tolist()
        what = f"dataset {name!r}"
        _warn_report(report, what)
        frame = _note_large(frame, sizes, what)
        if classes is not None:
            classes = [str(c) for c in classes]
            unknown = sorted(set(frame["label"]) - set(classes))
            if unknown:
                raise DatasetError(f"labels {unknown} are not among classes={classes}: add them or fix the labels")
        return cls._with_splits(
            frame,
            [split_values[i] for i in keep] if split_values is not None else None,
            classes=classes,
            report=report,
            name=name,
            root=base,
            what=what,
        )

    @classmethod
    def from_hf(
        cls,
        hf_dataset: Any,
        image: str = "image",
        label: str = "label",
        caption: str | None = None,
        *,
        splits: dict[str, str] | None = None,
        check: str = "header",
        name: str | None = None,
    ) -> "Dataset":
        """From a Hugging Face `datasets.Dataset`, or a `DatasetDict` (or a dict of Datasets) whose
        keys are split names (train/test/validation...). Images are kept encoded (bytes or path) and
        decoded lazily; a ClassLabel gives the classes in its order, every declared class included.

        splits: which key is which split when the keys are not the usual names, e.g.
        {"train": "train", "test": "validation"} (keys not named are left out)."""
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DatasetError("from_hf needs the `datasets` package: pip install 'datacrafter-widget[hf]'") from exc
        if isinstance(hf_dataset, datasets.IterableDatasetDict) or isinstance(hf_dataset, datasets.IterableDataset):
            raise DatasetError("from_hf needs a map-style dataset, not streaming: load it without streaming=True")
        if isinstance(hf_dataset, datasets.Dataset):
            if splits is not None:
                raise DatasetError("splits= names the keys of a DatasetDict; this is a single datasets.Dataset")
            parts = {"": hf_dataset}
        elif isinstance(hf_dataset, dict):  # DatasetDict is a dict
            parts = _hf_splits(hf_dataset, splits)
        else:
            raise DatasetError(
                f"from_hf needs a datasets.Dataset or DatasetDict (not streaming), got {type(hf_dataset).__name__}"
            )
        frames = []
        names: list[str] | None = None
        for key, part in parts.items():
            if not isinstance(part, datasets.Dataset):
                raise DatasetError(f"split {key!r} is a {type(part).__name__}, not a datasets.Dataset")
            columns = list(part.column_names)
            _check_table(
                f"the Hugging Face dataset{f' (split {key})' if key else ''}", columns, (image, label, caption), 1
            )
            if isinstance(part.features[image], datasets.Image):
                part = part.cast_column(image, datasets.Image(decode=False))
            label_feature = part.features[label]
            others = [c for c in columns if c != image]
            df = part.select_columns(others).to_pandas() if others else pd.DataFrame(index=range(len(part)))
            df[image] = list(part[image])
            if isinstance(label_feature, datasets.ClassLabel):
                if names is not None and list(label_feature.names) != names:
                    raise DatasetError(
                        f"split {key!r} has ClassLabel names {label_feature.names}, another split {names}: "
                        "cast every split to one ClassLabel (ds.cast_column('label', ClassLabel(names=...)))"
                    )
                names = list(label_feature.names)
                df[label] = [label_feature.int2str(int(v)) if v is not None and v >= 0 else None for v in df[label]]
            if key:
                df["split"] = key
            frames.append(df)
        first = next(iter(parts.values()))
        return cls.from_dataframe(
            pd.concat(frames, ignore_index=True),
            image=image,
            label=label,
            caption=caption,
            split="split",
            classes=names,
            check=check,
            name=name or (first.info.dataset_name or "hf"),
        )
