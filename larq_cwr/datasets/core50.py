"""CORe50 (Lomonaco & Maltoni, 2017) from the official ``core50_imgs.npz`` + ``paths.pkl``.

Warning:
    ``paths.pkl`` is a pickle, and unpickling can run arbitrary code: load only files
    from a trusted source (the official CORe50 download). ``core50_imgs.npz`` is read
    with ``allow_pickle=False``.
"""

from __future__ import annotations

import logging
import pathlib
import re

import numpy as np

from larq_cwr._checks import (
    check_array,
    check_choice,
    check_int,
    check_same_length,
    check_sample_shape,
)
from larq_cwr.datasets._archives import read_npz
from larq_cwr.datasets._cache import cache_root, load_cached, stamp
from larq_cwr.datasets._dataset import Arrays, ImageDataset, PathLike
from larq_cwr.datasets._images import check_image_size
from larq_cwr.datasets._pickles import load_pickle

logger = logging.getLogger(__name__)

#: CORe50 sessions held out for testing in the official protocol (Lomonaco & Maltoni, 2017).
CORE50_TEST_SESSIONS = (3, 7, 10)

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

_CORE50_IMAGES = "core50_imgs.npz"
_CORE50_PATHS = "paths.pkl"
_CORE50_PATH_PATTERN = re.compile(r"(?:^|/)s(\d+)/o(\d+)/")


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

    **Warning:** ``paths.pkl`` is a pickle, and pickles can run arbitrary code when
    loaded: only load files from a trusted source (the official CORe50 download).

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
    check_image_size(image_size)
    num_classes = check_int(num_classes, "num_classes")
    check_choice(
        num_classes, (len(CORE50_CATEGORY_NAMES), _CORE50_NUM_OBJECTS), "num_classes"
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
    fingerprint = {"files": stamp(files), "num_classes": num_classes}
    return load_cached(
        "core50",
        fingerprint,
        lambda: _read_core50(root, num_classes),
        class_names,
        cache_root(cache_dir),
        image_size,
    )


def _read_core50(root: pathlib.Path, num_classes: int) -> Arrays:
    paths_file, images_file = root / _CORE50_PATHS, root / _CORE50_IMAGES
    paths = load_pickle(paths_file)
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
    x = read_npz(images_file, ["x"], expected="the uint8 image array under 'x'")["x"]
    check_array(x, f"{images_file}:x", dtype=np.uint8, ndim=4)
    check_sample_shape(x, f"{images_file}:x", expected=(None, None, 3))
    check_same_length({f"{images_file}:x": x, str(paths_file): paths})

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
