"""Fashion-MNIST from IDX files, by default those of the Debian package."""

from __future__ import annotations

import pathlib

from larq_cwr.datasets._cache import cache_root
from larq_cwr.datasets._dataset import ImageDataset, PathLike
from larq_cwr.datasets._images import check_image_size
from larq_cwr.datasets.idx import _load_idx_dataset

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def load_fashion_mnist(
    data_dir: PathLike | None = None,
    *,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Loads Fashion-MNIST from IDX files.

    Args:
        data_dir: Directory holding the four IDX files named as for `load_mnist`, raw or
            gzipped; None uses `FASHION_MNIST_SYSTEM_DIR`, where the Debian package
            ``dataset-fashion-mnist`` installs them.
        cache_dir: Cache directory, default `default_cache_dir()`.
        image_size: Resize to ``image_size x image_size`` (bilinear); None keeps 28 x 28.

    Returns:
        The data set (60,000 train and 10,000 test images), class names as published by
        Zalando Research (``"T-shirt/top"``, ..., ``"Ankle boot"``).

    Raises:
        FileNotFoundError: ``data_dir`` is None and the Debian package is not installed,
            or an IDX file is missing.
        ValueError: An IDX file is malformed, image and label counts differ, or a label
            is not in 0..9.
    """
    check_image_size(image_size)
    if data_dir is None:
        if not FASHION_MNIST_SYSTEM_DIR.is_dir():
            raise FileNotFoundError(
                "Fashion-MNIST not found: `data_dir` is None and "
                f"{FASHION_MNIST_SYSTEM_DIR} does not exist; install the Debian package "
                "`dataset-fashion-mnist` or pass `data_dir`, a directory holding the four "
                "IDX files."
            )
        data_dir = FASHION_MNIST_SYSTEM_DIR
    return _load_idx_dataset(
        "fashion-mnist",
        data_dir,
        FASHION_MNIST_CLASS_NAMES,
        cache_root(cache_dir),
        image_size,
    )
