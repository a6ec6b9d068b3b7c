"""learnq.pipeline.data.imagenette: class folders of PNG/JPEG images written here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from learnq.errors import ConfigError, DataError
from learnq.pipeline.data import dataset_from_preprocessing, load_dataset
from learnq.pipeline.data.imagenette import read_image

COLOURS = {"n01": (255, 0, 0), "n02": (0, 128, 255), "n03": (10, 200, 30)}


def write_tree(root: Path, per_class: int = 3) -> None:
    """Solid-colour images of mixed sizes and formats: train/<class>/ and val/<class>/."""
    for split, count in (("train", per_class), ("val", 1)):
        for cls, colour in COLOURS.items():
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(count):
                size = (40 + 7 * i, 30 + 5 * i)
                image = Image.new("RGB", size, colour)
                if i % 2:
                    image.save(folder / f"img{i}.JPEG", quality=95)
                else:
                    image.save(folder / f"img{i}.png")
            (folder / "notes.txt").write_text("not an image")


def test_imagenette_shapes_labels_and_colours(tmp_path):
    write_tree(tmp_path)
    s = load_dataset("imagenette", str(tmp_path), image_size=16, calib_size=4)
    assert s.input_shape == (3, 16, 16) and s.num_classes == 3
    assert [len(s.train), len(s.calib), len(s.test)] == [9, 4, 3]
    assert s.train.tensors[1].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2] and s.test.tensors[1].tolist() == [0, 1, 2]
    assert s.preprocessing["classes"] == ["n01", "n02", "n03"]
    assert s.preprocessing["options"] == {"image_size": 16}
    norm = s.preprocessing["normalisation"]
    mean, std = torch.tensor(norm["mean"]).view(3, 1, 1), torch.tensor(norm["std"]).view(3, 1, 1)
    for x, y in zip(*s.test.tensors, strict=True):  # val images are PNG: lossless solid colours
        pixels = x.double() * std.double() + mean.double()
        expected = torch.tensor(list(COLOURS.values())[int(y)], dtype=torch.float64).view(3, 1, 1) / 255
        assert torch.allclose(pixels, expected.expand(3, 16, 16), atol=1e-6)


def test_default_size_and_round_trip(tmp_path):
    write_tree(tmp_path, per_class=2)
    s = load_dataset("imagenette", str(tmp_path), calib_size=2)
    assert s.input_shape == (3, 64, 64)
    rebuilt = dataset_from_preprocessing(json.loads(json.dumps(s.preprocessing)))
    for part in ("train", "calib", "test"):
        for a, b in zip(getattr(s, part).tensors, getattr(rebuilt, part).tensors, strict=True):
            assert torch.equal(a, b)


def test_limit_decodes_a_stratified_subset(tmp_path):
    write_tree(tmp_path, per_class=4)
    s = load_dataset("imagenette", str(tmp_path), image_size=8, limit=6, progress=False)
    assert np.bincount(s.train.tensors[1].numpy()).tolist() == [2, 2, 2]


def test_read_image_resizes_shorter_side_then_centre_crops(tmp_path):
    image = np.zeros((20, 40, 3), dtype=np.uint8)  # height 20, width 40: left half black, right half white
    image[:, 20:] = 255
    Image.fromarray(image).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png", 10)  # -> 20x10 after resize, crop columns 5..15
    assert out.shape == (3, 10, 10) and out.dtype == np.uint8
    assert np.all(out[:, :, :4] == 0) and np.all(out[:, :, 6:] == 255)


def test_missing_folders_and_bad_images(tmp_path):
    root = tmp_path.resolve()
    with pytest.raises(DataError, match=f"expected {root / 'train'} with one sub-folder per class"):
        (tmp_path / "val").mkdir()
        load_dataset("imagenette", str(tmp_path))
    write_tree(tmp_path / "t")
    (tmp_path / "t" / "val" / "n99").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "t" / "val" / "n99" / "a.png")
    with pytest.raises(DataError, match=r"class folders \['n99'\] that the training folder does not have"):
        load_dataset("imagenette", str(tmp_path / "t"))
    write_tree(tmp_path / "u")
    bad = tmp_path / "u" / "train" / "n02" / "img0.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read image {bad.resolve()}"):
        load_dataset("imagenette", str(tmp_path / "u"))
    write_tree(tmp_path / "v")
    for f in (tmp_path / "v" / "train" / "n03").iterdir():
        f.unlink()
    with pytest.raises(DataError, match="n03 holds no image"):
        load_dataset("imagenette", str(tmp_path / "v"))


@pytest.mark.parametrize("size", [0, 2000, "big"])
def test_bad_image_size(tmp_path, size):
    with pytest.raises(ConfigError, match="image_size"):
        load_dataset("imagenette", str(tmp_path), image_size=size)
