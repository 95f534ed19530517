"""Labelled image sets that load lazily.

A `Dataset` is a table (one row per image) whose `image` column holds either a file path, loaded
on demand, or an in-memory PIL image (small synthetic sets such as the starter digits). Nothing
here loads every full-size image at once.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

from .images import to_rgb

_RESERVED = ("image", "label", "caption")
_ORIENTATION = 0x0112  # EXIF tag: how the camera was held
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".jfif")


class DatasetError(ValueError):
    """Bad dataset input; the message names the thing and the fix."""


class LoadWarning(UserWarning):
    """Some inputs were skipped while loading a dataset; `Dataset.report` lists each and why."""


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


def check_image(value: Any, root: Path | None = None, *, decode: bool = True) -> str | None:
    """None if the image is readable, else the reason. Decodes (at reduced scale for JPEG) and
    drops the pixels at once, so checking a folder never holds more than one image in memory."""
    try:
        with _open_source(value, root) as im:
            if not decode:
                im.verify()
                return None
            im.draft("RGB", (64, 64))  # JPEG: decode at 1/8 scale; still reads the whole stream
            im.load()
            if im.width < 1 or im.height < 1:
                return "image has no pixels"
        return None
    except FileNotFoundError:
        return "file not found"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except Image.DecompressionBombError as exc:
        return f"too large ({exc})"
    except (OSError, SyntaxError, ValueError, DatasetError, EOFError) as exc:
        text = str(exc) or type(exc).__name__
        return f"corrupt or truncated image ({text})"


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
            return to_rgb(value)
        try:
            with _open_source(value, self.root) as im:
                im.load()
                return to_rgb(upright(im))
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
    def test(self) -> "Dataset | None":
        return self._split("test")

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
        return cls(frame, name=name)

    @classmethod
    def from_folder(
        cls,
        path: str | os.PathLike,
        *,
        extensions: Iterable[str] | None = None,
        check: str = "decode",
        name: str | None = None,
    ) -> "Dataset":
        """From an ImageFolder layout: `path/<class>/<image>` (sub-folders of a class included).

        Stores file paths and loads pixels lazily. Each file is checked once (check="decode":
        decoded and dropped, catches truncated files; "header": PIL verify only, faster for big
        folders); unreadable and non-image files are skipped and listed in `.report`.
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
        report: list[tuple[str, str]] = []
        rows: list[dict[str, Any]] = []
        class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        hidden = "hidden folder (its name starts with '.'), skipped: rename it to import its images"
        for p in sorted(root.iterdir()):
            if p.is_file() and not p.name.startswith("."):
                report.append((str(p), "not inside a class folder (expected path/<class>/<image>)"))
            elif p.is_dir() and p.name.startswith("."):
                report.append((str(p), hidden))
        if not class_dirs:
            raise DatasetError(
                f"dataset folder {root} has no class folders: expected the ImageFolder layout "
                f"{root}/<class name>/<image>.jpg"
            )
        empty: list[str] = []
        for class_dir in class_dirs:
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
                    reason = check_image(file, decode=check == "decode")
                    if reason:
                        report.append((str(file), reason))
                        continue
                    rows.append({"image": str(file), "label": class_dir.name})
                    found += 1
            if not found:
                empty.append(class_dir.name)
        if empty:
            raise DatasetError(
                f"class folder(s) {empty} in {root} have no readable images "
                f"({len(report)} file(s) skipped; see the list below): add images or remove the folder\n"
                + "\n".join(f"  {f}: {r}" for f, r in report[:20])
            )
        _warn_report(report, f"Dataset.from_folder({str(root)!r})")
        frame = pd.DataFrame(rows)
        frame["caption"] = None
        return cls(frame, report=report, name=name or root.name, root=root)

    @classmethod
    def from_dataframe(
        cls,
        df: pd.DataFrame,
        image: str = "path",
        label: str = "label",
        caption: str | None = None,
        root: str | os.PathLike | None = None,
        *,
        check: str = "decode",
        name: str = "dataframe",
    ) -> "Dataset":
        """From a table whose `image` column holds file paths (relative to `root`), PIL images or
        encoded bytes. Other columns are kept as attributes. Unreadable rows are skipped and
        listed in `.report` (by path or row number)."""
        if not isinstance(df, pd.DataFrame):
            raise DatasetError(f"from_dataframe needs a pandas DataFrame, got {type(df).__name__}")
        _check_table("the table", list(df.columns), (image, label, caption), len(df))
        if check not in ("decode", "header", "none"):
            raise DatasetError(f"check={check!r}: use 'decode', 'header' or 'none'")
        base = Path(root).expanduser().absolute() if root is not None else None
        report: list[tuple[str, str]] = []
        keep: list[int] = []
        values: list[Any] = []
        for pos, (value, lab) in enumerate(zip(df[image].tolist(), df[label].tolist())):
            where = f"row {pos}"
            if lab is None or (isinstance(lab, float) and pd.isna(lab)):
                report.append((where, "missing label"))
                continue
            if isinstance(value, Image.Image):
                keep.append(pos)
                values.append(to_rgb(upright(value)))
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
            reason = None if check == "none" else check_image(value, decode=check == "decode")
            if reason:
                report.append((where, reason))
                continue
            keep.append(pos)
            values.append(value)
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
            if col in (image, label, caption):
                continue
            target = f"{col}_original" if col in _RESERVED else str(col)
            frame[target] = kept[col].tolist()
        _warn_report(report, "Dataset.from_dataframe")
        return cls(frame, report=report, name=name, root=base)

    @classmethod
    def from_hf(
        cls,
        hf_dataset: Any,
        image: str = "image",
        label: str = "label",
        caption: str | None = None,
        *,
        check: str = "header",
        name: str | None = None,
    ) -> "Dataset":
        """From a Hugging Face `datasets.Dataset` (one split). Images are kept encoded (bytes or
        path) and decoded lazily; ClassLabel integers become their names."""
        try:
            import datasets
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise DatasetError("from_hf needs the `datasets` package: pip install 'datacrafter-widget[hf]'") from exc
        if isinstance(hf_dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
            raise DatasetError(f"got a DatasetDict with splits {list(hf_dataset)}: pass one split, e.g. ds['train']")
        if not isinstance(hf_dataset, datasets.Dataset):
            raise DatasetError(f"from_hf needs a datasets.Dataset (not streaming), got {type(hf_dataset).__name__}")
        columns = list(hf_dataset.column_names)
        _check_table("the Hugging Face dataset", columns, (image, label, caption), len(hf_dataset))
        feature = hf_dataset.features[image]
        if isinstance(feature, datasets.Image):
            hf_dataset = hf_dataset.cast_column(image, datasets.Image(decode=False))
        label_feature = hf_dataset.features[label]
        others = [c for c in columns if c != image]
        df = hf_dataset.select_columns(others).to_pandas() if others else pd.DataFrame(index=range(len(hf_dataset)))
        df[image] = list(hf_dataset[image])
        if isinstance(label_feature, datasets.ClassLabel):
            df[label] = [label_feature.int2str(int(v)) if v is not None and v >= 0 else None for v in df[label]]
        return cls.from_dataframe(
            df,
            image=image,
            label=label,
            caption=caption,
            check=check,
            name=name or (hf_dataset.info.dataset_name or "hf"),
        )
