"""Reading the source files that are pickles: CIFAR-10's python batches, CORe50's paths.pkl.

Warning:
    Unpickling can run arbitrary code: a pickle file must come from a trusted source
    (e.g. the official CIFAR-10 / CORe50 downloads, checked against their published
    checksums). Nothing else in `larq_cwr.datasets` reads or writes pickles: the cache
    is read with ``np.load(..., allow_pickle=False)``.
"""

from __future__ import annotations

import pathlib
import pickle
from typing import Any


def load_pickle(path: pathlib.Path) -> Any:
    """Unpickles ``path``, keeping bytes as bytes (Python 2 pickles). Trusted files only.

    Raises:
        ValueError: ``path`` is not a readable pickle.
    """
    try:
        with open(path, "rb") as file:
            return pickle.load(file, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, ImportError) as error:
        raise ValueError(f"{path}: not a readable pickle ({error}).") from error
