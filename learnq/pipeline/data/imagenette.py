"""Imagenette (or any ImageNet-style folder tree) from a local directory, resized to a small square.

No paper; layout of https://github.com/fastai/imagenette : ``root/train/<class>/*.JPEG`` and
``root/val/<class>/*.JPEG`` (``val`` is the test split). Classes are the sorted folder names under ``train/``; label
``k`` is the ``k``-th of them. JPEG and PNG files are read with Pillow, converted to RGB, resized so that the shorter
side is ``image_size`` (bilinear), then centre-cropped to ``image_size`` x ``image_size`` (default 64: Imagenette at
full size does not fit a small machine's memory).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from learnq.errors import DataError
from learnq.pipeline.data._validate import check_int
from learnq.pipeline.data.splits import LoadRequest, RawData, limit_indices

EXTENSIONS = (".jpg", ".jpeg", ".png")
DEFAULT_IMAGE_SIZE = 64


def image_options(options: dict[str, object]) -> dict[str, object]:
    return {"image_size": check_int("image_size", options.get("image_size", DEFAULT_IMAGE_SIZE), 1, 1024)}


def list_images(directory: Path, classes: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """Image files under ``directory/<class>/`` in sorted order, their labels, and the class names.

    With ``classes`` given (the training classes), a folder that is not one of them is a ``DataError``.
    """
    if not directory.is_dir():
        raise DataError(f"image folder not found: expected {directory} with one sub-folder per class")
    folders = sorted(p for p in directory.iterdir() if p.is_dir())
    if not folders:
        raise DataError(f"{directory} has no class sub-folders; expected {directory}/<class>/<image>.JPEG")
    names = [p.name for p in folders]
    if classes is None:
        classes = names
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DataError(f"{directory} has class folders {unknown} that the training folder does not have")
    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)
        if not images:
            raise DataError(f"class folder {folder} holds no image ({', '.join(EXTENSIONS)} files)")
        files += images
        labels += [classes.index(folder.name)] * len(images)
    return files, labels, classes


def read_image(path: Path, size: int) -> np.ndarray:
    """One image as (3, size, size) uint8: RGB, shorter side resized to ``size`` (bilinear), centre crop."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    width, height = image.size
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    if (new_w, new_h) != (width, height):
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)


def read_images(files: list[Path], size: int, progress: bool, desc: str) -> np.ndarray:
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    items = enumerate(files)
    if progress:
        from tqdm import tqdm

        items = tqdm(items, total=len(files), desc=desc, unit="img")
    for i, path in items:
        out[i] = read_image(path, size)
    return out


def load_imagenette_raw(request: LoadRequest) -> RawData:
    """Imagenette from ``request.root``: (N, 3, S, S) float32 in [0, 1], S = ``image_size``."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise DataError("the imagenette data set needs the Pillow package, which is not installed; "
                        "install it with: pip install 'learnq[data]'") from None
    assert request.root is not None  # checked by load_dataset
    options = image_options(request.options)
    size = int(options["image_size"])
    root = request.root
    if not root.is_dir():
        raise DataError(f"data directory {root} does not exist; it should hold train/<class>/ and val/<class>/")
    train_files, train_labels, classes = list_images(root / "train", None)
    test_files, test_labels, _ = list_images(root / "val", classes)
    train_y = np.asarray(train_labels, dtype=np.int64)
    keep = limit_indices(train_y, request.limit, request.seed)
    if keep is not None:  # decode only the images kept
        train_files, train_y = [train_files[i] for i in keep], train_y[keep]
    train_x = read_images(train_files, size, request.progress, "imagenette train").astype(np.float32)
    test_x = read_images(test_files, size, request.progress, "imagenette val").astype(np.float32)
    train_x /= np.float32(255.0)
    test_x /= np.float32(255.0)
    info = {"divide_by": 255.0, "classes": classes,
            "resize": {"image_size": size, "method": "shorter side to image_size (bilinear), centre crop"}}
    return RawData(train_x, train_y, test_x, np.asarray(test_labels, dtype=np.int64), num_classes=len(classes),
                   options=options, info=info, limited=True)
