"""The on-disk cache of decoded data sets: ``.npz`` files read without pickle.

A cache file holds the arrays ``x_train``, ``y_train``, ``x_test`` and ``y_test`` of one
data set at one image size, written by `numpy.savez` from numeric arrays only and read
with ``np.load(..., allow_pickle=False)``: a cache file holding an object array (which
would need pickle) counts as unreadable, is deleted and rebuilt, and never runs code.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
from typing import Any, Callable, Sequence

import numpy as np

from larq_cwr._checks import check_labels, check_same_length, describe
from larq_cwr.datasets._archives import read_npz
from larq_cwr.datasets._dataset import Arrays, ImageDataset, PathLike
from larq_cwr.datasets._images import resize_split, to_float

logger = logging.getLogger(__name__)

#: Environment variable overriding the cache directory (see `default_cache_dir`).
CACHE_DIR_VARIABLE = "LARQ_CWR_CACHE"

_CACHE_VERSION = 1  # bump when the cached arrays' meaning changes
_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")


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


def cache_root(cache_dir: PathLike | None) -> pathlib.Path:
    """``cache_dir`` as a path, or `default_cache_dir()` when it is None."""
    if cache_dir is None:
        return default_cache_dir()
    return pathlib.Path(cache_dir).expanduser()


def stamp(files: Sequence[pathlib.Path]) -> list[list[Any]]:
    """Identifies source files by resolved path, size and modification time."""
    stamps = []
    for file in files:
        status = file.stat()
        stamps.append([str(file.resolve()), status.st_size, status.st_mtime_ns])
    return stamps


def load_cached(
    name: str,
    fingerprint: dict[str, Any],
    decode: Callable[[], Arrays],
    class_names: tuple[str, ...],
    root: pathlib.Path,
    image_size: int | None,
) -> ImageDataset:
    """Returns the data set from its cache file, building the file when missing.

    The native-size arrays are cached as uint8; resized ones as float32 in a file of
    their own. A resized load reuses the native cache file when there is one.
    """
    num_classes = len(class_names)
    native_file = _cache_file(root, name, fingerprint, None)
    if image_size is None:
        arrays = _read_cache(native_file, num_classes)
        if arrays is None:
            arrays = decode()
            _write_cache(native_file, arrays, num_classes)
    else:
        resized_file = _cache_file(root, name, fingerprint, image_size)
        arrays = _read_cache(resized_file, num_classes)
        if arrays is None:
            native = _read_cache(native_file, num_classes)
            if native is None:
                native = decode()  # not cached: only the resized arrays are asked for
            arrays = {
                key: resize_split(value, image_size, key) for key, value in native.items()
            }
            _write_cache(resized_file, arrays, num_classes)
    return ImageDataset(
        name=name,
        x_train=to_float(arrays["x_train"]),
        y_train=arrays["y_train"].astype(np.int32, copy=False),
        x_test=to_float(arrays["x_test"]),
        y_test=arrays["y_test"].astype(np.int32, copy=False),
        class_names=class_names,
    )


def _cache_file(
    root: pathlib.Path,
    name: str,
    fingerprint: dict[str, Any],
    image_size: int | None,
) -> pathlib.Path:
    key = {"version": _CACHE_VERSION, "name": name, "source": fingerprint}
    if image_size is not None:
        key["image_size"] = image_size
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    size = "native" if image_size is None else f"{image_size}px"
    return root / f"{name}-{size}-{digest}.npz"


def _read_cache(path: pathlib.Path, num_classes: int) -> Arrays | None:
    """Returns the cached arrays, or None when the file is absent or unusable (deleted):
    unreadable, foreign, or with labels for another number of classes."""
    if not path.is_file():
        return None
    try:
        arrays = read_npz(
            path, _SPLIT_KEYS, expected=f"the arrays {', '.join(_SPLIT_KEYS)}"
        )
        _check_cached_arrays(arrays, num_classes)
    except ValueError as error:
        logger.warning("Deleting unreadable cache file %s (%s); rebuilding.", path, error)
        try:
            path.unlink()
        except OSError as unlink_error:
            logger.warning("Could not delete %s: %s", path, unlink_error)
        return None
    logger.info("Read cached data set %s", path)
    return arrays


def _check_cached_arrays(arrays: Arrays, num_classes: int) -> None:
    """Raises a ValueError unless the arrays are numeric splits (never object arrays)
    with labels in ``[0, num_classes)``."""
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 4 or x.dtype not in (np.uint8, np.float32):
            raise ValueError(
                f"`cached x_{split}` is not an image array; expected a uint8 or float32 "
                f"array of rank 4, got {describe(x)}."
            )
        check_labels(y, f"cached y_{split}", num_classes=num_classes)
        check_same_length({f"cached x_{split}": x, f"cached y_{split}": y})


def _write_cache(path: pathlib.Path, arrays: Arrays, num_classes: int) -> None:
    """Writes ``arrays`` to ``path`` atomically; failures are logged, not raised.

    The arrays are checked first, so `numpy.savez` never pickles (object arrays raise).
    """
    _check_cached_arrays(arrays, num_classes)
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
