"""Argument checks shared by several modules: one function per rule, one message style
("`name` ...; expected X, got Y")."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BITS = 2
MAX_BITS = 16  # 2^16 levels still fit float32's 24-bit mantissa exactly (METHOD §3)


def check_bits(bits: Any, name: str = "bits") -> int:
    """``bits`` if it is an int in [2, 16]; else a ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(
            f"`{name}` must be an int in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}."
        )
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"`{name}` must be in [{MIN_BITS}, {MAX_BITS}]; got {bits}.")
    return bits


def check_optional_bits(bits: Any, name: str) -> int | None:
    """``None`` (float) or a valid bit width (see ``check_bits``)."""
    return None if bits is None else check_bits(bits, name)


def check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    """``value`` if it is one of ``choices``; else a ValueError naming ``name``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {tuple(choices)}; got {value!r}.")
    return value


def check_positive_int(value: Any, name: str) -> int:
    """``value`` if it is an int >= 1; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def check_positive_number(value: Any, name: str) -> float:
    """``value`` if it is a finite number > 0; else a ValueError naming ``name``."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not np.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a positive number; got {value!r}.")
    return float(value)
