"""ImageFolder and Tiny-ImageNet readers on tiny trees of real PNG/JPEG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tesla.adapters.data.imagefolder import (
    ImageFolderError,
    ImageFolderSource,
    TinyImageNetSource,
    load_image,
)
from tesla.adapters.data.sources import detect_format
from tesla.app.services.prepare import PrepareError


def _save(path: Path, pixels: np.ndarray, fmt: str = "PNG") -> None:
    """Write (H, W, 3) uint8 pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)


def make_imagefolder(root: Path, classes=("cat", "ant", "dog"), per_class: int = 3, side: int = 64,
                     seed: int = 0) -> dict:
    """root/train/<class>/i.png and root/val/<class>/i.png; returns CHW pixels per split in
    torchvision ImageFolder order (sorted classes, sorted files)."""
    rng = np.random.default_rng(seed)
    out: dict = {}
    for split, n in (("train", per_class), ("val", 1)):
        xs, ys = [], []
        for k, c in enumerate(sorted(classes)):
            for i in range(n):
                px = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
                _save(root / split / c / f"{i}.png", px)
                xs.append(px.transpose(2, 0, 1))
                ys.append(k)
        out[split] = (np.stack(xs), np.array(ys))
    return out


def make_tiny_imagenet(root: Path, wnids=("n02", "n01"), per_class: int = 2, val: int = 3, seed: int = 0) -> dict:
    """Tiny-ImageNet's layout with real JPEG files; returns the decoded CHW pixels."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tEuropean fire salamander\n")
    decoded = lambda p: np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)  # noqa: E731
    train = []
    for w in sorted(wnids):
        for i in range(per_class):
            p = root / "train" / w / "images" / f"{w}_{i}.JPEG"
            _save(p, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
            train.append(decoded(p))
    (root / "train" / wnids[0] / f"{wnids[0]}_boxes.txt").write_text("ignored\n")
    lines, val_x = [], {}
    for i in range(val):
        name = f"val_{i}.JPEG"
        p = root / "val" / "images" / name
        _save(p, rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG")
        lines.append(f"{name}\t{wnids[i % len(wnids)]}\t0\t0\t10\t10")
        val_x[name] = decoded(p)
    (root / "val" / "val_annotations.txt").write_text("\n".join(reversed(lines)) + "\n")
    return {"train": np.stack(train), "val": np.stack([val_x[k] for k in sorted(val_x)])}


def test_imagefolder_reads_pixels_and_classes(tmp_path):
    data = make_imagefolder(tmp_path)
    src = ImageFolderSource(tmp_path, image_size=64)
    assert src.class_names == ["ant", "cat", "dog"] and src.format == "imagefolder"
    np.testing.assert_array_equal(src.train.labels, data["train"][1])
    np.testing.assert_array_equal(src.train.read(0, len(src.train)), data["train"][0])
    np.testing.assert_array_equal(src.test.read(0, 3), data["val"][0])
    np.testing.assert_array_equal(src.test.labels, [0, 1, 2])
    assert detect_format(tmp_path) == "imagefolder"


def test_resize_keeps_aspect_then_centre_crops(tmp_path):
    # 96 wide x 64 high: a 32 px band on each side that the crop must drop.
    px = np.zeros((64, 96, 3), np.uint8)
    px[:, 16:80] = 200
    _save(tmp_path / "wide.png", px)
    x = load_image(tmp_path / "wide.png", 32)
    assert x.shape == (3, 32, 32) and x.dtype == np.uint8
    assert (x[:, :, 2:-2] == 200).all()  # the kept centre is the bright band
    # grey-level and small images are converted to RGB and upscaled
    Image.fromarray(np.full((10, 20), 7, np.uint8)).save(tmp_path / "grey.png")
    y = load_image(tmp_path / "grey.png", 16)
    assert y.shape == (3, 16, 16) and (y == 7).all()


def test_imagefolder_errors(tmp_path):
    with pytest.raises(ImageFolderError, match="no train/ folder"):
        ImageFolderSource(tmp_path)
    make_imagefolder(tmp_path)
    _save(tmp_path / "val" / "zebra" / "0.png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ImageFolderError, match="zebra"):
        ImageFolderSource(tmp_path)


def test_broken_image_names_the_file(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"not a png")
    src = ImageFolderSource(tmp_path)
    with pytest.raises(ImageFolderError, match="bad.png"):
        src.train.read(0, 1)


def test_tiny_imagenet_layout(tmp_path):
    data = make_tiny_imagenet(tmp_path)
    src = TinyImageNetSource(tmp_path)
    assert src.wnids == ["n01", "n02"]
    assert src.class_names == ["goldfish", "European fire salamander"]
    np.testing.assert_array_equal(src.train.labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(src.train.read(0, 4), data["train"])
    # val rows sorted by file name; labels from val_annotations.txt
    np.testing.assert_array_equal(src.test.labels, [1, 0, 1])  # val_0 -> n02, val_1 -> n01, val_2 -> n02
    np.testing.assert_array_equal(src.test.read(0, 3), data["val"])
    assert detect_format(tmp_path) == "tiny-imagenet"


def test_detect_format_refuses_unknown_layouts(tmp_path):
    with pytest.raises(PrepareError, match="cannot tell the layout"):
        detect_format(tmp_path)
    with pytest.raises(PrepareError, match="no such folder"):
        detect_format(tmp_path / "missing")
