"""Dataset loaders: folder, dataframe, PIL list, Hugging Face datasets; conversions and reports."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from datacrafter_widget.data.dataset import Dataset, DatasetError, LoadWarning


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
    with pytest.raises(DatasetError, match="one split"):
        Dataset.from_hf(datasets.DatasetDict({"train": hf}))
