"""The IDX file format of MNIST and Fashion-MNIST: `read_idx` and IDX directory loading."""

from __future__ import annotations

import gzip
import pathlib
import zlib
from typing import Callable

import numpy as np

from larq_cwr._checks import check_array, check_labels, check_same_length
from larq_cwr.datasets._cache import load_cached, stamp
from larq_cwr.datasets._dataset import Arrays, ImageDataset, PathLike

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
    """Loads the four IDX files of ``data_dir`` through the cache."""
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

    return load_cached(
        name,
        {"files": stamp(list(files.values()))},
        decode,
        class_names,
        cache_root,
        image_size,
    )


def _read_idx_splits(read: Callable[[str], np.ndarray], num_classes: int) -> Arrays:
    """Reads and checks the train and test images/labels via ``read(stem)``."""
    arrays: Arrays = {}
    for split, (image_stem, label_stem) in _IDX_STEMS.items():
        images = check_array(read(image_stem), image_stem, dtype=np.uint8, ndim=3)
        labels = check_labels(read(label_stem), label_stem, num_classes=num_classes)
        check_same_length({image_stem: images, label_stem: labels})
        arrays[f"x_{split}"] = images[..., np.newaxis]
        arrays[f"y_{split}"] = labels.astype(np.int32)
    return arrays
