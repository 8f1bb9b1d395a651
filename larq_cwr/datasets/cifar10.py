"""CIFAR-10 from the official python pickles or the JPEG tarball ``cifar10-jpg.tar.gz``.

Warning:
    The official batches are pickles, and unpickling can run arbitrary code: load only
    files from a trusted source (the official ``cifar-10-python.tar.gz``, checked
    against its published MD5). The JPEG tarball is read without pickle.
"""

from __future__ import annotations

import functools
import logging
import pathlib
from typing import Any

import numpy as np

from larq_cwr._checks import (
    check_array,
    check_labels,
    check_same_length,
    check_sample_shape,
)
from larq_cwr.datasets._archives import read_tar_files
from larq_cwr.datasets._cache import cache_root, load_cached, stamp
from larq_cwr.datasets._dataset import Arrays, ImageDataset, PathLike
from larq_cwr.datasets._images import check_image_size, decode_image
from larq_cwr.datasets._pickles import load_pickle

logger = logging.getLogger(__name__)

#: File name of the JPEG copy of CIFAR-10 (``{train,test}/<class>/NNNN.jpg``).
CIFAR10_JPEG_ARCHIVE = "cifar10-jpg.tar.gz"

# The official CIFAR-10 label order (``batches.meta``), also the JPEG copy's class folders.
CIFAR10_CLASS_NAMES = tuple(
    "airplane automobile bird cat deer dog frog horse ship truck".split()
)

_CIFAR10_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR10_TEST_BATCH = "test_batch"
_CIFAR10_META = "batches.meta"
_CIFAR10_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR10_IMAGE_SIZE = 32
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


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
      ``cifar-10-batches-py/``. Images keep the pickles' order. **Warning:** pickles
      can run arbitrary code when loaded: only load files from a trusted source (the
      official download, its MD5 checked).
    - the JPEG tarball ``cifar10-jpg.tar.gz`` (members ``[prefix/]{train,test}/<class>/
      NNNN.jpg``, class folders named as in `CIFAR10_CLASS_NAMES`), or a directory
      holding it. Images are decoded with Pillow straight from the tarball (nothing is
      extracted; a tarball holding an absolute path, a ``..`` component, a link or a
      device file is rejected) and ordered by split, class index, then file name;
      shuffle before training. Report results on it as "CIFAR-10 (JPEG copy)": JPEG is
      lossy.

    Args:
        path: The directory or tarball, as above.
        cache_dir: Cache directory, default `default_cache_dir()`.
        image_size: Resize to ``image_size x image_size`` (bilinear); None keeps 32 x 32.

    Returns:
        The data set: 50,000 train and 10,000 test RGB images for the full CIFAR-10.

    Raises:
        FileNotFoundError: ``path`` does not exist or holds neither source.
        ValueError: A pickle lacks the keys ``data``/``labels`` or has the wrong shape, the
            tarball holds no images, an unknown split/class folder or an unsafe member,
            an image does not decode, or a label is not in 0..9.
    """
    check_image_size(image_size)
    kind, source = _resolve_cifar10_source(pathlib.Path(path))
    if kind == "pickle":
        files = [source / name for name in (*_CIFAR10_TRAIN_BATCHES, _CIFAR10_TEST_BATCH)]
        meta = source / _CIFAR10_META
        class_names = _read_cifar10_meta(meta) if meta.is_file() else CIFAR10_CLASS_NAMES
        fingerprint = {"pickles": stamp(files)}
        decode = functools.partial(_read_cifar10_pickles, source)
    else:
        class_names = CIFAR10_CLASS_NAMES
        fingerprint = {"jpeg": stamp([source])}
        decode = functools.partial(_read_cifar10_jpeg_tarball, source)
    return load_cached(
        "cifar10", fingerprint, decode, class_names, cache_root(cache_dir), image_size
    )


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


# --- the official pickles (trusted sources only) ---------------------------------------


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
    names = _pickle_field(load_pickle(path), "label_names", path)
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    if len(names) != len(CIFAR10_CLASS_NAMES):
        raise ValueError(
            f"{path}: {len(names)} label names; expected {len(CIFAR10_CLASS_NAMES)}."
        )
    return names


def _read_cifar10_batch(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    batch = load_pickle(path)
    data = np.asarray(_pickle_field(batch, "data", path))
    labels = np.asarray(_pickle_field(batch, "labels", path))
    pixels = 3 * _CIFAR10_IMAGE_SIZE**2  # 3 channel planes of 32 x 32, row-major
    check_array(data, f"{path}:data", dtype=np.uint8, ndim=2)
    check_sample_shape(data, f"{path}:data", expected=(pixels,))
    labels = check_labels(labels, f"{path}:labels", num_classes=len(CIFAR10_CLASS_NAMES))
    check_same_length({f"{path}:data": data, f"{path}:labels": labels})
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


# --- the JPEG tarball -------------------------------------------------------------------


def _read_cifar10_jpeg_tarball(tarball: pathlib.Path) -> Arrays:
    """Decodes ``[prefix/]{train,test}/<class>/<file>.jpg`` members of a tarball."""
    logger.info("Decoding CIFAR-10 JPEG images from %s", tarball)
    class_index = {name: i for i, name in enumerate(CIFAR10_CLASS_NAMES)}
    files = read_tar_files(tarball, lambda name: name.lower().endswith(_IMAGE_SUFFIXES))
    encoded: dict[tuple[str, int, str], bytes] = {}
    for name, data in files.items():
        parts = name.split("/")
        if len(parts) < 3 or parts[-3] not in ("train", "test"):
            raise ValueError(
                f"{tarball}: member {name} is not under train/ or test/; "
                "expected {train,test}/<class>/<file>.jpg."
            )
        if parts[-2] not in class_index:
            raise ValueError(
                f"{tarball}: member {name} has unknown class folder "
                f"{parts[-2]!r}; expected one of {CIFAR10_CLASS_NAMES}."
            )
        encoded[(parts[-3], class_index[parts[-2]], parts[-1])] = data
    files.clear()  # the bytes now live in `encoded` only, released image by image below

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
            images[i] = decode_image(encoded.pop(keys[i]), source, images.shape[1:])
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = np.array([key[1] for key in keys], dtype=np.int32)
    return arrays
