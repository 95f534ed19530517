"""Dataset loaders: folder, dataframe, PIL list, Hugging Face datasets; conversions and reports."""

from __future__ import annotations

import io
from pathlib import Path
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datacrafter_widget.data.dataset import (
    Dataset,
    DatasetError,
    DatasetNote,
    DuplicateImageWarning,
    LoadWarning,
)
from datacrafter_widget.data.images import MAX_IMAGE_SIDE


def jpeg_bytes(image: Image.Image, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, **kw)
    return buffer.getvalue()


@pytest.fixture
def messy_folder(tmp_path):
    """Two classes with every awkward kind of file; returns (root, expected pixel per valid file)."""
    root = tmp_path / "pets"
    cats, dogs = root / "cats", root / "dogs"
    (cats / "more").mkdir(parents=True)
    dogs.mkdir()
    expected = {}
    Image.new("RGB", (40, 30), (20, 200, 40)).save(cats / "rgb.jpg", quality=95)
    expected["cats/rgb.jpg"] = (20, 200, 40)
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(cats / "cmyk.jpg", quality=95)
    expected["cats/cmyk.jpg"] = (255, 0, 0)
    Image.new("L", (20, 20), 100).save(cats / "more" / "gray.png")  # nested sub-folder counts as the class
    expected["cats/more/gray.png"] = (100, 100, 100)
    good = jpeg_bytes(Image.new("RGB", (64, 64), (1, 2, 3)))
    (cats / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (cats / "garbage.jpg").write_bytes(b"this is not really a jpeg" * 3)
    (cats / "notes.txt").write_text("not an image")
    (cats / ".DS_Store").write_bytes(b"\0\0")  # hidden files are ignored silently
    sixteen = np.full((16, 16), 32768, dtype=np.uint16)
    Image.fromarray(sixteen).save(dogs / "sixteen.png")
    expected["dogs/sixteen.png"] = (128, 128, 128)
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 0))  # fully transparent -> white
    rgba.paste((0, 0, 255, 255), (0, 0, 8, 16))  # left half opaque blue
    rgba.save(dogs / "rgba.png")
    expected["dogs/rgba.png"] = (255, 255, 255)  # sampled at the centre of the right half
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 250, 120, 10] + [0] * (256 * 3 - 6))
    palette.save(dogs / "palette.png")
    expected["dogs/palette.png"] = (250, 120, 10)
    (root / "stray.png").write_bytes(b"")  # a file at the top level is not in any class
    return root, expected


def test_from_folder_loads_valid_images_as_rgb_and_reports_the_rest(messy_folder):
    root, expected = messy_folder
    with pytest.warns(LoadWarning, match="skipped 4"):
        ds = Dataset.from_folder(root)
    assert ds.classes == ["cats", "dogs"]
    assert len(ds) == len(expected) == 6
    assert ds.labels.count("cats") == 3 and ds.labels.count("dogs") == 3
    by_file = {str(p).split("pets/", 1)[1]: i for i, p in enumerate(ds.frame["image"])}
    assert set(by_file) == set(expected)
    for rel, colour in expected.items():
        im = ds.image(by_file[rel])
        assert im.mode == "RGB"
        x = im.width * 3 // 4 if rel == "dogs/rgba.png" else im.width // 2
        got = np.array(im.getpixel((x, im.height // 2)), dtype=int)
        assert np.abs(got - np.array(colour)).max() <= 6, (rel, got, colour)
    blue = ds.image(by_file["dogs/rgba.png"]).getpixel((2, 8))
    assert blue == (0, 0, 255)
    reasons = {path.split("pets/", 1)[1]: why for path, why in ds.report}
    assert set(reasons) == {"cats/truncated.jpg", "cats/garbage.jpg", "cats/notes.txt", "stray.png"}
    assert "truncated" in reasons["cats/truncated.jpg"]
    assert "not an image" in reasons["cats/garbage.jpg"]
    assert ".txt" in reasons["cats/notes.txt"]
    assert "class folder" in reasons["stray.png"]
    # paths are stored, pixels are not
    assert all(isinstance(v, str) for v in ds.frame["image"])
    assert len(ds.images([0, 1])) == 2


def test_from_folder_errors(tmp_path, messy_folder):
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.from_folder(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="no class folders"):
        Dataset.from_folder(empty)
    root, _ = messy_folder
    (root / "birds").mkdir()
    (root / "birds" / "readme.txt").write_text("todo")
    with pytest.raises(DatasetError, match=r"\['birds'\].*add images or remove the folder"):
        Dataset.from_folder(root)
    only = tmp_path / "only"
    (only / "a").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(only / "a" / "x.PNG")  # extension match is case-insensitive
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing skipped -> no warning
        ds = Dataset.from_folder(only)
    assert len(ds) == 1 and ds.report == []
    with pytest.raises(DatasetError, match=r"\['a'\]"):
        Dataset.from_folder(only, extensions=["jpg"])


def test_from_dataframe_paths_pil_and_bytes(tmp_path, messy_folder):
    root, _ = messy_folder
    df = pd.DataFrame(
        {
            "file": ["cats/rgb.jpg", "cats/garbage.jpg", "dogs/palette.png", "missing.png"],
            "kind": ["cat", "cat", "dog", "dog"],
            "text": ["a green cat", "x", "an orange dog", "y"],
            "weight": [1.0, 2.0, 3.0, 4.0],
        }
    )
    with pytest.warns(LoadWarning, match="skipped 2"):
        ds = Dataset.from_dataframe(df, image="file", label="kind", caption="text", root=root)
    assert len(ds) == 2 and ds.classes == ["cat", "dog"]
    assert ds.captions == ["a green cat", "an orange dog"]
    assert ds.attributes == ["weight"] and ds.frame["weight"].tolist() == [1.0, 3.0]
    assert ds.image(1).getpixel((3, 3)) == (250, 120, 10)
    reasons = dict(ds.report)
    assert reasons[str(root / "missing.png")] == "file not found"
    assert "not an image" in reasons[str(root / "cats" / "garbage.jpg")]

    gray = Image.new("L", (8, 8), 50)
    encoded = io.BytesIO()
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(encoded, format="PNG")
    mixed = pd.DataFrame(
        {
            "path": [gray, encoded.getvalue(), jpeg_bytes(Image.new("CMYK", (8, 8), (255, 0, 255, 0)))],
            "label": [1, 2, 2],
        }
    )
    ds = Dataset.from_dataframe(mixed)
    assert ds.classes == ["1", "2"]
    assert [ds.image(i).mode for i in range(3)] == ["RGB"] * 3
    assert ds.image(0).getpixel((0, 0)) == (50, 50, 50)
    assert ds.image(1).getpixel((0, 0)) == (255, 255, 255)
    r, g, b = ds.image(2).getpixel((4, 4))
    assert g > 200 and r < 40 and b < 40  # CMYK (255, 0, 255, 0) is green


def test_from_dataframe_errors(tmp_path):
    df = pd.DataFrame({"img": ["a.png"], "y": ["a"]})
    with pytest.raises(DatasetError, match=r"\['path', 'label'\].*available columns: \['img', 'y'\]"):
        Dataset.from_dataframe(df)
    with pytest.raises(DatasetError, match=r"\['cap'\]"):
        Dataset.from_dataframe(df, image="img", label="y", caption="cap")
    with pytest.raises(DatasetError, match="no rows"):
        Dataset.from_dataframe(df.iloc[:0], image="img", label="y")
    with pytest.raises(DatasetError, match="none of the 1 rows"):
        Dataset.from_dataframe(df, image="img", label="y", root=tmp_path)


def test_from_images():
    ds = Dataset.from_images([Image.new("P", (4, 4)), Image.new("LA", (4, 4))], ["a", "b"])
    assert [ds.image(i).mode for i in range(2)] == ["RGB", "RGB"]
    with pytest.raises(DatasetError, match="no images"):
        Dataset.from_images([], [])


def test_from_hf(tmp_path):
    datasets = pytest.importorskip("datasets")
    images = [Image.new("L", (8, 8), 10 * i) for i in range(4)]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=["airplane", "bird"]),
            "note": datasets.Value("string"),
        }
    )
    hf = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 1, 0], "note": list("wxyz")}, features=features)
    ds = Dataset.from_hf(hf, caption="note")
    assert ds.labels == ["airplane", "bird", "bird", "airplane"] and ds.classes == ["airplane", "bird"]
    assert ds.captions == list("wxyz")
    assert isinstance(ds.frame.at[0, "image"], (dict, bytes))  # kept encoded, decoded on access
    assert ds.image(3).getpixel((0, 0)) == (30, 30, 30)
    with pytest.raises(DatasetError, match=r"\['img'\].*available columns"):
        Dataset.from_hf(hf, image="img")
    with pytest.raises(DatasetError, match="splits="):
        Dataset.from_hf(datasets.DatasetDict({"train": hf, "unsupervised": hf}))


# ---- splits on the way in ------------------------------------------------------------------------------
def colour(i: int) -> Image.Image:
    """A 12 x 12 image of its own colour (distinct for i < 256)."""
    return Image.new("RGB", (12, 12), (i, 255 - i, (7 * i) % 256))


def split_tree(root, layout: dict[str, dict[str, int]]) -> dict[str, str]:
    """root/<split>/<class>/<n>.png; returns {file: class}."""
    labels, k = {}, 0
    for split, counts in layout.items():
        for cls, n in counts.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                path = root / split / cls / f"{k}.png"
                colour(k).save(path)
                labels[str(path)] = cls
                k += 1
    return labels


def test_from_folder_reads_a_train_test_tree_as_splits_and_the_project_keeps_test_out_of_training(tmp_path):
    root = tmp_path / "kaggle"
    split_tree(root, {"train": {"cat": 3, "dog": 2}, "test": {"cat": 1, "dog": 2}, "val": {"cat": 1}})
    with pytest.warns(DatasetNote, match=r"read as splits train \(5 images\), val \(1 images\), test \(3 images\)"):
        ds = Dataset.from_folder(root)
    assert ds.classes == ["cat", "dog"]  # not ["test", "train", "val"]
    assert sorted(ds.splits) == ["test", "train", "val"] and ds.train is ds
    assert sorted(ds.labels) == ["cat"] * 3 + ["dog"] * 2
    assert sorted(ds.test.labels) == ["cat", "dog", "dog"] and ds.val.labels == ["cat"]
    assert all("/test/" in f for f in ds.test.frame["image"]) and all("/train/" in f for f in ds.frame["image"])

    from datacrafter_widget import DataCrafter

    crafter = DataCrafter(ds, project=tmp_path / "project")
    try:
        real = crafter.samples
        assert real["split"].value_counts().to_dict() == {"train": 5, "test": 3}
        assert sorted(real[real["split"] == "train"]["label"]) == ["cat"] * 3 + ["dog"] * 2
        assert crafter.dataset.test is not None and len(crafter.dataset.test) == 3
    finally:
        crafter.store.close()


def test_ambiguous_folder_layouts_say_what_was_found_and_how_to_say_what_is_meant(tmp_path):
    mixed = tmp_path / "mixed"
    split_tree(mixed, {"train": {"cat": 1}, "test": {"cat": 1}, "dog": {"x": 1}})
    with pytest.raises(
        DatasetError, match=r"mixes split folders \['test', 'train'\] with other folders \['dog'\].*splits=False"
    ):
        Dataset.from_folder(mixed)
    loose = tmp_path / "loose"
    (loose / "train").mkdir(parents=True)
    (loose / "test").mkdir()
    colour(1).save(loose / "train" / "a.png")
    colour(2).save(loose / "test" / "b.png")
    with pytest.raises(DatasetError, match=r"test/ holds images directly.*pass splits=False.*test/<class>/"):
        Dataset.from_folder(loose)
    classes_named_train = Dataset.from_folder(loose, splits=False)  # said what is meant: two classes
    assert classes_named_train.classes == ["test", "train"] and not classes_named_train.splits
    flat = tmp_path / "flat"
    split_tree(flat, {"cat": {"a": 1}})
    with pytest.raises(DatasetError, match="splits=True but .* no split folders"):
        Dataset.from_folder(flat / "cat", splits=True)


def test_from_dataframe_honours_a_split_column(tmp_path):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(6):
        colour(i).save(root / f"{i}.png")
    df = pd.DataFrame(
        {
            "path": [f"{i}.png" for i in range(6)],
            "label": ["a", "b", "a", "b", "a", "b"],
            "split": ["train", "train", "TEST", "test", "valid", "train"],
        }
    )
    with pytest.warns(DatasetNote, match="read as splits"):
        ds = Dataset.from_dataframe(df, root=root)
    assert len(ds) == 3 and ds.labels == ["a", "b", "b"] and "split" not in ds.attributes
    assert ds.test.labels == ["a", "b"] and ds.val.labels == ["a"]
    assert [Path(f).name for f in ds.test.frame["image"]] == ["2.png", "3.png"]

    from datacrafter_widget import DataCrafter

    crafter = DataCrafter(ds, project=tmp_path / "project")
    try:
        s = crafter.samples
        assert s["split"].value_counts().to_dict() == {"train": 3, "test": 2}
    finally:
        crafter.store.close()

    with pytest.raises(DatasetError, match=r"split values \['holdout'\].*replace.*split=None"):
        Dataset.from_dataframe(df.assign(split=["train"] * 5 + ["holdout"]), root=root)
    assert not Dataset.from_dataframe(df, root=root, split=None).splits  # said what is meant: one set
    with pytest.raises(DatasetError, match=r"\['fold'\]"):
        Dataset.from_dataframe(df, root=root, split="fold")


def test_from_hf_datasetdict_keeps_classlabel_order_and_every_declared_class(tmp_path):
    datasets = pytest.importorskip("datasets")
    names = ["zebra", "apple", "mango"]  # not alphabetical
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    train = datasets.Dataset.from_dict(
        {"image": [colour(i) for i in range(6)], "label": [0, 1, 2, 0, 1, 2]}, features=features
    )
    test = datasets.Dataset.from_dict(
        {"image": [colour(10), colour(11)], "label": [1, 0]}, features=features
    )  # no mango
    dd = datasets.DatasetDict({"train": train, "validation": test.select([0]), "test": test})
    with pytest.warns(DatasetNote, match="read as splits"):
        ds = Dataset.from_hf(dd)
    assert ds.classes == names and ds.test.classes == names
    assert ds.labels == ["zebra", "apple", "mango"] * 2
    assert ds.test.labels == ["apple", "zebra"] and ds.val.labels == ["apple"]
    assert ds.test.image(0).getpixel((0, 0)) == colour(10).getpixel((0, 0))
    only_two = datasets.Dataset.from_dict({"image": [colour(1)], "label": [2]}, features=features)
    assert Dataset.from_hf(only_two).classes == names  # a single split keeps the declared classes too
    named = Dataset.from_hf(
        datasets.DatasetDict({"fit": train, "holdout": test}), splits={"train": "fit", "test": "holdout"}
    )
    assert len(named) == 6 and len(named.test) == 2
    with pytest.raises(DatasetError, match=r"splits \['fit', 'holdout'\].*splits=\{'train': 'fit'"):
        Dataset.from_hf(datasets.DatasetDict({"fit": train, "holdout": test}))


def test_the_same_image_under_two_classes_is_reported(tmp_path):
    root = tmp_path / "pets"
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
    colour(1).save(root / "cat" / "a.png")
    colour(2).save(root / "cat" / "b.png")
    colour(3).save(root / "dog" / "c.png")
    (root / "dog" / "a-copy.png").write_bytes((root / "cat" / "a.png").read_bytes())
    with pytest.warns(DuplicateImageWarning, match=r"cat/a.png \(cat\) = .*dog/a-copy.png \(dog\)"):
        ds = Dataset.from_folder(root)
    assert len(ds.duplicates) == 1 and ds.duplicates[0][1] == ["cat", "dog"]
    leak = tmp_path / "leak"
    split_tree(leak, {"train": {"cat": 1}, "test": {"cat": 1}})
    (leak / "test" / "cat" / "1.png").write_bytes((leak / "train" / "cat" / "0.png").read_bytes())
    with pytest.warns(DuplicateImageWarning, match=r"\(cat, test\) = .*\(cat, train\)"):
        Dataset.from_folder(leak)


def test_very_large_images_are_read_downscaled_with_a_note(tmp_path):
    root = tmp_path / "big"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (MAX_IMAGE_SIDE * 2 + 10, 300), (200, 10, 10)).save(root / "a" / "wide.png")
    colour(5).save(root / "b" / "small.png")
    with pytest.warns(
        DatasetNote, match=rf"1 image\(s\) are larger than {MAX_IMAGE_SIDE} px.*{MAX_IMAGE_SIDE * 2 + 10}x300"
    ):
        ds = Dataset.from_folder(root)
    big = ds.labels.index("a")
    im = ds.image(big)
    assert im.size == (MAX_IMAGE_SIDE, round(300 * MAX_IMAGE_SIDE / (MAX_IMAGE_SIDE * 2 + 10)))
    assert im.getpixel((10, 10)) == (200, 10, 10)
    assert ds.frame.at[big, "original_file"] == str(root / "a" / "wide.png")
    assert ds.frame.at[big, "original_size"] == f"{MAX_IMAGE_SIDE * 2 + 10}x300"
    assert ds.image(1 - big).size == (12, 12)
    from datacrafter_widget import DataCrafter

    with DataCrafter(ds, project=tmp_path / "project") as crafter:  # provenance: the source file and size
        row = crafter.samples.set_index("label").loc["a"]
        assert row["original_file"] == str(root / "a" / "wide.png") and row["original_size"].endswith("x300")
        assert crafter.store.image(row["id"]).size == im.size


# ---- our exports load back through the loader that matches them ------------------------------------------
@pytest.fixture
def exported(tmp_path):
    """A project with real train / test images (captions, an attribute; no 'mango' in test), generated
    images with provenance and GAP internals; classes in a non-alphabetical order."""
    from datacrafter_widget.data.store import SampleStore

    classes = ["zebra", "apple", "mango"]
    store = SampleStore(tmp_path / "project")
    images, rows, k = [], [], 0
    for cls in classes:
        for split in ("train", "test"):
            if cls == "mango" and split == "test":
                continue
            images.append(colour(k))
            rows.append(
                {"label": cls, "split": split, "source": "real", "caption": f"a {cls} number {k}", "weight": float(k)}
            )
            k += 1
    store.add(images, rows)
    store.add(
        [colour(100), colour(101)],
        [
            {
                "label": "apple",
                "split": "generated",
                "source": "generated",
                "prompt": "a photo of an apple",
                "seed": 7,
                "steps": 4,
                "guidance": 2.0,
                "round": 1,
                "strategy": "class",
                "parent_id": "r000003",
                "model": "tiny",
                "caption": "a red apple",
                "embeddings_file": "gap/tokens.safetensors",
                "mask_file": "gap/masks/m.png",
                "batch_id": "b1",
                "batch_index": 0,
            },
            {
                "label": "mango",
                "split": "generated",
                "source": "generated",
                "prompt": "a mango",
                "seed": 8,
                "steps": 4,
                "guidance": 2.0,
                "round": 1,
                "strategy": "caption",
                "model": "tiny",
                "caption": "a ripe mango",
            },
        ],
    )
    store.write_json("project.json", {**store.read_json("project.json"), "classes": classes})
    yield store, classes
    store.close()


def test_imagefolder_export_loads_in_datasets_imagefolder_with_captions_and_provenance(exported, tmp_path):
    datasets = pytest.importorskip("datasets")
    from datacrafter_widget.controller.export import export_project

    store, classes = exported
    out = export_project(store, classes, tmp_path / "out")
    dd = datasets.load_dataset("imagefolder", data_dir=str(out), cache_dir=str(tmp_path / "hf-cache"))
    assert sorted(dd) == ["test", "train"] and len(dd["train"]) == 3 + 2 and len(dd["test"]) == 2
    train = dd["train"].to_pandas().drop(columns=["image"]).set_index("id")
    assert train.loc["g000001", "caption"] == "a red apple" and train.loc["g000001", "prompt"] == "a photo of an apple"
    assert train.loc["g000001", "seed"] == 7 and train.loc["g000001", "round"] == 1
    assert train.loc["g000001", "strategy"] == "class" and train.loc["g000001", "parent_id"] == "r000003"
    assert train.loc["g000001", "label"] == "apple" and train.loc["g000001", "source"] == "generated"
    assert train.loc["r000001", "caption"] == "a zebra number 0" and pd.isna(train.loc["r000001", "seed"])
    assert set(train["split"]) == {"train"} and set(dd["test"]["split"]) == {"test"}
    assert sorted(dd["test"]["caption"]) == ["a apple number 3", "a zebra number 1"]
    for col in ("embeddings_file", "mask_file", "batch_id", "batch_index", "export_split", "file"):
        assert col not in train.columns
    row = dd["train"].filter(lambda e: e["id"] == "g000002")[0]
    assert np.array_equal(np.asarray(row["image"].convert("RGB")), np.asarray(store.image("g000002")))


def test_exported_columns_are_the_public_schema(exported, tmp_path):
    from datacrafter_widget.controller.export import EXPORT_COLUMNS, export_project

    store, classes = exported
    table = pd.read_csv(export_project(store, classes, tmp_path / "csv", format="csv") / "samples.csv")
    assert list(table.columns) == [*EXPORT_COLUMNS, "weight"]
    assert set(table["split"]) == {"train", "test"} and set(table["source"]) == {"real", "generated"}
    real = table[table["source"] == "real"]
    assert real["seed"].isna().all() and real["steps"].isna().all() and real["prompt"].isna().all()
    assert (table.loc[table["source"] == "generated", "split"] == "train").all()


def test_exports_round_trip_through_their_loaders_with_splits_and_class_order(exported, tmp_path):
    datasets = pytest.importorskip("datasets")
    from datacrafter_widget.controller.export import export_project

    store, classes = exported

    def check(ds: Dataset) -> None:
        assert ds.classes == classes
        assert sorted(ds.labels) == ["apple", "apple", "mango", "mango", "zebra"]
        assert sorted(ds.test.labels) == ["apple", "zebra"]
        captions = dict(zip(ds.labels, ds.captions))
        assert "a ripe mango" in ds.captions and captions["zebra"] == "a zebra number 0"
        assert "weight" in ds.attributes

    with pytest.warns(DatasetNote):
        check(Dataset.from_folder(export_project(store, classes, tmp_path / "if")))
    csv = export_project(store, classes, tmp_path / "csv", format="csv")
    with pytest.warns(DatasetNote):
        check(
            Dataset.from_dataframe(
                pd.read_csv(csv / "samples.csv"), image="file", caption="caption", root=csv, classes=classes
            )
        )
    hf = export_project(store, classes, tmp_path / "hf", format="hf")
    with pytest.warns(DatasetNote):
        check(Dataset.from_hf(datasets.load_from_disk(str(hf)), caption="caption"))
