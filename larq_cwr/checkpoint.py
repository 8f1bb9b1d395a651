"""Resumable experiment runs: the whole continual state, saved after each experience.

``RunCheckpoint`` is one ``.npz`` file (read with ``allow_pickle=False``: no pickle) with a
format version, the run's configuration and what the run completed so far: the
first-experience network, each finished variant's results, the variant in progress
(all its model's weights after its last finished experience, replay memory,
calibration ranges and stochastic-rounding counters included, with its accuracy matrix
and timings), and the joint baseline. It is written atomically (a temporary file in
the same folder, flushed to disk, then renamed over the old one), so a run killed at any
point keeps the last complete checkpoint and loses at most the experience in progress.
"""

from __future__ import annotations

import json
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

__all__ = ["CHECKPOINT_FILE", "FORMAT_VERSION", "RunCheckpoint"]

FORMAT_VERSION = 1
CHECKPOINT_FILE = "checkpoint.npz"
_META = "meta"
# What numpy and json raise for a truncated, corrupt or foreign file.
_UNREADABLE = (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile)


def _corrupt(path: pathlib.Path, error: Exception) -> ValueError:
    return ValueError(
        f"Checkpoint {str(path)!r} is truncated, corrupt or not a larq_cwr checkpoint "
        f"({error})."
    )


class RunCheckpoint:
    """The saved state of a ``run_experiment`` run, in one file.

    The state is a dict of JSON-ready values (``"meta"``) and lists of arrays
    (``"arrays"``: name -> list of arrays). ``load`` refuses a file of another format
    version, of another run configuration, or truncated/corrupt, with a ValueError that
    names the file; ``save`` replaces the file atomically.

    Args:
        path: The checkpoint file.
        key: JSON-ready description of the run (its configuration); a checkpoint
            written with another key is refused.

    Example:
        >>> import tempfile, pathlib, numpy as np
        >>> path = pathlib.Path(tempfile.mkdtemp()) / "checkpoint.npz"
        >>> checkpoint = RunCheckpoint(path, key={"seed": 0})
        >>> checkpoint.save({"done": 1}, {"weights": [np.arange(3)]})
        >>> meta, arrays = checkpoint.load()
        >>> meta["done"], arrays["weights"][0].tolist()
        (1, [0, 1, 2])
    """

    def __init__(self, path: str | os.PathLike, *, key: dict[str, Any]) -> None:
        self.path = pathlib.Path(path)
        self.key = json.loads(json.dumps(key))  # as it reads back

    @staticmethod
    def read_key(path: str | os.PathLike) -> dict[str, Any]:
        """The run configuration a checkpoint file was written for (to resume it).

        Raises:
            FileNotFoundError: No such file.
            ValueError: A truncated, corrupt or foreign file.
        """
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No checkpoint {str(path)!r} to resume from.")
        try:
            with np.load(path, allow_pickle=False) as stored:
                meta = json.loads(str(stored[_META]))
            return meta["key"]
        except _UNREADABLE as error:
            raise _corrupt(path, error) from error

    def exists(self) -> bool:
        """True if the file exists."""
        return self.path.is_file()

    def load(self) -> tuple[dict[str, Any], dict[str, list[np.ndarray]]]:
        """The saved ``(meta, arrays)``.

        Raises:
            FileNotFoundError: No checkpoint file.
            ValueError: A truncated, corrupt or foreign file, another format version or
                another run configuration.
        """
        if not self.exists():
            raise FileNotFoundError(f"No checkpoint {str(self.path)!r} to resume from.")
        try:
            with np.load(self.path, allow_pickle=False) as stored:
                meta = json.loads(str(stored[_META]))
                arrays: dict[str, list[np.ndarray]] = {}
                for name in stored.files:
                    if name == _META:
                        continue
                    group, _, index = name.rpartition("/")
                    arrays.setdefault(group, []).append((int(index), stored[name]))
        except _UNREADABLE as error:
            raise _corrupt(self.path, error) from error
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"Checkpoint {str(self.path)!r} has format version "
                f"{meta.get('format_version')!r}; expected {FORMAT_VERSION}."
            )
        if meta.get("key") != self.key:
            raise ValueError(
                f"Checkpoint {str(self.path)!r} belongs to another run configuration; "
                "expected the configuration of this run."
            )
        ordered = {
            group: [array for _, array in sorted(items, key=lambda item: item[0])]
            for group, items in arrays.items()
        }
        return meta["state"], ordered

    def save(self, meta: dict[str, Any], arrays: dict[str, list[np.ndarray]]) -> None:
        """Write ``meta`` (JSON-ready) and ``arrays`` atomically."""
        payload = {
            _META: np.array(
                json.dumps(
                    {"format_version": FORMAT_VERSION, "key": self.key, "state": meta}
                )
            )
        }
        for group, values in arrays.items():
            for index, value in enumerate(values):
                payload[f"{group}/{index}"] = np.asarray(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            with open(temporary, "wb") as file:
                np.savez(file, **payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
        finally:
            if temporary.exists():
                temporary.unlink()

    def remove(self) -> None:
        """Delete the file (the run finished)."""
        if self.exists():
            self.path.unlink()
