"""The embedded demo set: real CIFAR-10 images, small enough to ship inside the package.

``tesla ... --dataset demo`` must work with no download and finish in minutes on a
laptop CPU, so the package carries ``embedded/demo16.npz`` (2.8 MB): all 10 CIFAR-10
classes downsampled to 16x16, 300 training and 80 test images per class, made by
``scripts/make_demo_data.py`` from the CIFAR-10 subset in ``shared/data``. It is read
through :mod:`importlib.resources`, so it works from a wheel or a source checkout.

Mean/std are computed from the demo training images themselves (16 px area-averaged
images have slightly different statistics from 32 px CIFAR); ``zca=True`` fits kornia's
ZCA on them instead (768x768: a fraction of a second, so no cache).
"""

from __future__ import annotations

import io
from importlib import resources

import numpy as np
import torch

from tesla.adapters.data.base import DataError, ImageSet, channel_stats, encode_uint8
from tesla.adapters.torch.normalize import Normalizer

RESOURCE = "demo16.npz"
ZCA_EPS = 0.1


def _read_arrays() -> dict[str, np.ndarray]:
    ref = resources.files("tesla.adapters.data").joinpath("embedded", RESOURCE)
    try:
        raw = ref.read_bytes()
    except FileNotFoundError:
        raise DataError(
            f"embedded demo data {RESOURCE} is missing from the package: reinstall tesla,"
            " or run scripts/make_demo_data.py in a source checkout"
        ) from None
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def load_demo(zca: bool = False) -> ImageSet:
    """The embedded 10-class 16x16 demo set, in model space.

    Args:
        zca: ZCA-whiten (eps 0.1, fitted on the demo training images) instead of mean/std.

    Returns:
        An :class:`ImageSet` named ``demo``: train (3000, 3, 16, 16), test (800, 3, 16, 16),
        300 / 80 images per class.
    """
    a = _read_arrays()
    train_u8, test_u8 = a["train_x"], a["test_x"]
    if zca:
        normalizer = Normalizer.fit_zca(torch.from_numpy(train_u8).to(torch.float32).div_(255.0), eps=ZCA_EPS)
    else:
        mean, std = channel_stats(train_u8)
        normalizer = Normalizer(mean=mean, std=std)
    class_names = [str(n) for n in a["class_names"]]
    return ImageSet(
        name="demo",
        num_classes=len(class_names),
        class_names=class_names,
        image_shape=tuple(train_u8.shape[1:]),
        normalizer=normalizer,
        train_x=encode_uint8(train_u8, normalizer),
        train_y=torch.from_numpy(a["train_y"].astype(np.int64)),
        test_x=encode_uint8(test_u8, normalizer),
        test_y=torch.from_numpy(a["test_y"].astype(np.int64)),
    )
