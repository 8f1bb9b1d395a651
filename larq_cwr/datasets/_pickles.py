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

# What unpickling a truncated, corrupt or foreign file raises (measured by fuzzing the
# official CIFAR-10 format): opcode errors, missing modules or attributes, bad lookups.
_CORRUPT_PICKLE_ERRORS = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,  # UnicodeDecodeError included
    TypeError,
    ImportError,
    AttributeError,
    LookupError,
    MemoryError,
    OverflowError,
)


def load_pickle(path: pathlib.Path) -> Any:
    """Unpickles ``path``, keeping bytes as bytes (Python 2 pickles). Trusted files only.

    Raises:
        ValueError: ``path`` is not a readable pickle.
    """
    try:
        with open(path, "rb") as file:
            return pickle.load(file, encoding="bytes")
    except _CORRUPT_PICKLE_ERRORS as error:
        raise ValueError(f"{path}: not a readable pickle ({error}).") from error
