"""Argument checks shared by several modules."""

from __future__ import annotations

from typing import Any

MIN_BITS = 2
MAX_BITS = 16  # tf.quantization.fake_quant_* accepts 2..16 bits; so do we (METHOD §3)


def check_bits(bits: Any, name: str = "bits") -> int:
    """Return ``bits`` if it is an int in [2, 16], else raise a ValueError naming ``name``."""
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise ValueError(
            f"`{name}` must be an int in [{MIN_BITS}, {MAX_BITS}]; got {bits!r}."
        )
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"`{name}` must be in [{MIN_BITS}, {MAX_BITS}]; got {bits}.")
    return bits
