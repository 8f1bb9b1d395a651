"""Argument and data checks shared by larq_cwr's modules: one function per rule.

Every check raises ``ValueError`` with one message style,
"`name` <what is wrong>; expected <X>, got <Y>.", before the caller touches any state,
and returns the checked value in the type the caller works with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from typing import Any

import numpy as np
import numpy.typing as npt

MAX_SEED = 2**32 - 1  # NumPy's global seed range (tf.keras.utils.set_random_seed, sklearn)
MIN_BITS = 2
MAX_BITS = 16  # 2^16 levels still fit float32's 24-bit mantissa exactly (METHOD §3)
_MAX_LABEL = np.iinfo(np.int32).max  # labels are stored as int32 (scenarios, datasets)
_MAX_COUNT = np.iinfo(np.int64).max
_FINITE_CHUNK = 1 << 22  # elements checked at a time: bounds the boolean temporary
_REAL_KINDS = "iuf"  # numpy dtype kinds of real numbers (bool and complex excluded)


def _error(name: str, problem: str, expected: str, got: Any) -> ValueError:
    """The one message style of larq_cwr's argument errors."""
    return ValueError(f"`{name}` {problem}; expected {expected}, got {got}.")


def describe(value: Any) -> str:
    """``"uint8 array of shape (2, 3)"`` for arrays, else the type name (for errors)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__


# --- scalars ----------------------------------------------------------------------------


def _range_text(name: str, minimum: Any, maximum: Any) -> str:
    if minimum is not None and maximum is not None:
        return f"{minimum} <= {name} <= {maximum}"
    if minimum is not None:
        return f"{name} >= {minimum}"
    return f"{name} <= {maximum}" if maximum is not None else ""


def check_int(
    value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    """``value`` as an int if it is a (numpy) integer in ``[minimum, maximum]``.

    Raises:
        ValueError: ``value`` is a bool, a float (even integral), another type, or out
            of range.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        bounds = _range_text(name, minimum, maximum)
        expected = f"an int with {bounds}" if bounds else "an int"
        raise _error(name, "is not an int", expected, repr(value))
    too_small = minimum is not None and value < minimum
    if too_small or (maximum is not None and value > maximum):
        raise _error(name, "is out of range", _range_text(name, minimum, maximum), value)
    return int(value)


def check_seed(value: Any, name: str = "seed") -> int:
    """``value`` as an int if it is a seed every generator accepts: ``[0, MAX_SEED]``."""
    return check_int(value, name, minimum=0, maximum=MAX_SEED)


def check_positive_int(value: Any, name: str) -> int:
    """``value`` as an int if it is an integer >= 1 (see `check_int`)."""
    return check_int(value, name, minimum=1)


def check_bits(bits: Any, name: str = "bits") -> int:
    """``bits`` if it is a Python int in ``[MIN_BITS, MAX_BITS]`` (it goes into configs)."""
    if not isinstance(bits, int) or isinstance(bits, bool):
        raise _error(
            name, "is not an int", f"an int in [{MIN_BITS}, {MAX_BITS}]", repr(bits)
        )
    return check_int(bits, name, minimum=MIN_BITS, maximum=MAX_BITS)


def check_optional_bits(bits: Any, name: str) -> int | None:
    """``None`` (float) or a valid bit width (see `check_bits`)."""
    return None if bits is None else check_bits(bits, name)


def check_choice(value: Any, choices: Sequence[Any], name: str) -> Any:
    """``value`` if it is one of ``choices``; else a ValueError naming ``name``."""
    if value not in choices:
        raise _error(
            name, f"must be one of {tuple(choices)}", "one of those values", repr(value)
        )
    return value


def _check_real(value: Any, name: str, expected: str) -> float:
    """``value`` as a float if it is a finite real number (not a bool)."""
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, float, np.integer, np.floating))
        or not np.isfinite(value)
    ):
        raise _error(name, "is not a finite number", expected, repr(value))
    return float(value)


def check_positive_number(value: Any, name: str) -> float:
    """``value`` as a float if it is a finite number > 0."""
    number = _check_real(value, name, f"{name} > 0")
    if number <= 0:
        raise _error(name, "is out of range", f"{name} > 0", repr(value))
    return number


def check_fraction(value: Any, name: str, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is in ``(0, 1)``, or ``[0, 1)`` with ``allow_zero``."""
    interval = "[0, 1)" if allow_zero else "(0, 1)"
    number = _check_real(value, name, f"a number in {interval}")
    if not (0.0 <= number < 1.0 if allow_zero else 0.0 < number < 1.0):
        raise _error(name, "is out of range", f"a number in {interval}", repr(value))
    return number


# --- sizes ------------------------------------------------------------------------------


def check_nonempty(value: Sized, name: str, *, what: str = "sample") -> None:
    """Raises a ValueError if ``len(value) == 0``; ``what`` names one element."""
    if len(value) == 0:
        raise _error(name, "is empty", f"at least one {what}", 0)


def check_same_length(arrays: Mapping[str, Sized]) -> int:
    """The common length of ``{name: array}``; a ValueError names the first mismatch."""
    items = list(arrays.items())
    first_name, first = items[0]
    for name, array in items[1:]:
        if len(array) != len(first):
            raise _error(
                first_name,
                f"and `{name}` differ in length",
                "the same number of samples",
                f"{len(first)} and {len(array)}",
            )
    return len(first)


# --- arrays of inputs -------------------------------------------------------------------


def check_array(
    value: Any, name: str, *, dtype: npt.DTypeLike, ndim: int | None = None
) -> np.ndarray:
    """``value`` if it is already a numpy array of ``dtype`` and rank ``ndim`` (>= 1 when
    None): for arrays a type stores as given, without converting them."""
    dtype = np.dtype(dtype)
    rank = "rank >= 1" if ndim is None else f"rank {ndim}"
    if (
        not isinstance(value, np.ndarray)
        or value.dtype != dtype
        or (value.ndim < 1 if ndim is None else value.ndim != ndim)
    ):
        raise _error(
            name,
            f"is not a numpy {dtype} array of {rank}",
            f"a numpy {dtype} array of {rank}",
            describe(value),
        )
    return value


def check_finite(array: npt.ArrayLike, name: str) -> None:
    """Raises a ValueError naming the first NaN or infinite entry of a numeric array.

    Large arrays are scanned in chunks along the first axis, so the check needs little
    memory beyond the array itself.
    """
    values = np.asarray(array)
    if values.dtype.kind not in "fc":
        return  # integers are finite
    if values.ndim == 0:
        values = values.reshape(1)
    row_size = values[0].size if len(values) else 1
    rows = max(1, _FINITE_CHUNK // max(1, row_size))
    for start in range(0, len(values), rows):
        chunk = values[start : start + rows]
        bad = ~np.isfinite(chunk)
        if bad.any():
            index = np.argwhere(bad)[0]
            index[0] += start
            where = tuple(int(i) for i in index)
            raise _error(
                name,
                "holds NaN or infinite values",
                "finite numbers",
                f"{values[where]} at index {where if len(where) > 1 else where[0]}",
            )


def check_sample_shape(x: np.ndarray, name: str, *, expected: Sequence[int | None]) -> None:
    """Raises a ValueError unless ``x.shape[1:]`` is ``expected`` (None: any size)."""
    expected = tuple(expected)
    actual = tuple(x.shape[1:])
    if len(actual) != len(expected) or any(
        e is not None and e != a for e, a in zip(expected, actual)
    ):
        raise _error(name, "has the wrong sample shape", str(expected), str(actual))


def check_inputs(
    x: npt.ArrayLike, name: str, *, sample_shape: Sequence[int | None] | None = None
) -> np.ndarray:
    """``x`` as a float32 array ``(n, ...)`` of finite real numbers.

    Args:
        x: Array-like of real numbers with a sample axis.
        name: Argument name for the messages.
        sample_shape: If given, the shape every sample must have (None: any size).

    Raises:
        ValueError: Not a real-valued array of rank >= 1, samples of another shape, or
            NaN/Inf entries.
    """
    x = np.asarray(x)
    if x.ndim < 1 or x.dtype.kind not in _REAL_KINDS:
        raise _error(
            name,
            "is not an array of real numbers",
            "an int or float array of shape (n, ...)",
            describe(x),
        )
    if sample_shape is not None:
        check_sample_shape(x, name, expected=sample_shape)
    x = x.astype(np.float32, copy=False)
    check_finite(x, name)
    return x


def check_images(
    x: npt.ArrayLike, name: str, *, shape: Sequence[int | None] | None = None
) -> np.ndarray:
    """``x`` as float32 images ``(n, height, width, channels)``, finite.

    Args:
        x: Float array-like of images (integer pixels are rejected: images are floats
            in [0, 1] throughout larq_cwr).
        name: Argument name for the messages.
        shape: ``(height, width, channels)`` each image must have (None: any size);
            without it, any size with 1 or 3 channels.

    Raises:
        ValueError: Not a 4-D float array, images of another shape or number of
            channels, or NaN/Inf pixels.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype.kind != "f":
        raise _error(
            name,
            "is not a batch of images",
            "a 4-D float array (n, height, width, channels)",
            describe(x),
        )
    if shape is None and x.shape[-1] not in (1, 3):
        raise _error(name, "has the wrong number of channels", "1 or 3", x.shape[-1])
    return check_inputs(x, name, sample_shape=shape)


# --- class indices and counts -----------------------------------------------------------


def _check_integral(
    values: npt.ArrayLike,
    name: str,
    *,
    words: tuple[str, str],
    minimum: int,
    maximum: int,
    bounds: str,
) -> np.ndarray:
    """``values`` as int64 if they are integers (or integral floats) in range.

    ``words`` names one value and several (``("class", "classes")``), ``bounds`` the
    range, in the messages.
    """
    one, many = words
    values = np.asarray(values)
    if values.size == 0:
        return values.astype(np.int64)
    if values.dtype.kind not in _REAL_KINDS:
        raise _error(
            name,
            f"is not an array of integer {many}",
            "integers (or integral floats)",
            f"dtype {values.dtype}",
        )
    if values.dtype.kind == "f":
        bad = values[~np.isfinite(values)]
        if bad.size:
            raise _error(name, f"holds NaN or infinite {many}", f"integer {many}", bad[0])
        bad = values[values != np.round(values)]
        if bad.size:
            raise _error(name, f"holds a non-integer {one}", f"integer {many}", bad[0])
    bad = values[(values < minimum) | (values > maximum)]
    if bad.size:
        raise _error(name, f"has a {one} out of range", bounds, bad[0].item())
    return values.astype(np.int64)


def _class_bounds(word: str, num_classes: int | None) -> tuple[int, str]:
    if num_classes is None:
        return _MAX_LABEL, f"0 <= {word} <= {_MAX_LABEL}"
    return num_classes - 1, f"0 <= {word} < num_classes={num_classes}"


def check_labels(
    labels: npt.ArrayLike, name: str, *, num_classes: int | None = None
) -> np.ndarray:
    """``labels`` as a 1-D int64 array of class indices in ``[0, num_classes)``.

    Args:
        labels: Integer (or integral float) labels of shape ``(n,)`` or ``(n, 1)``, as
            Keras data sets give them.
        name: Argument (or file) name for the messages.
        num_classes: Number of classes; None only bounds labels by ``0`` and int32.

    Raises:
        ValueError: Another shape, a non-numeric dtype, NaN/Inf, a non-integer or a
            label out of range.
    """
    values = np.asarray(labels)
    if values.ndim == 2 and values.shape[1] == 1:
        values = values[:, 0]
    if values.ndim != 1:
        raise _error(
            name,
            "has the wrong shape",
            "labels of shape (n,) or (n, 1)",
            str(values.shape),
        )
    maximum, bounds = _class_bounds("label", num_classes)
    return _check_integral(
        values, name, words=("label", "labels"), minimum=0, maximum=maximum, bounds=bounds
    )


def check_classes(
    classes: npt.ArrayLike,
    name: str,
    *,
    num_classes: int | None = None,
    distinct: bool = False,
) -> list[int]:
    """``classes`` as a list of class indices in ``[0, num_classes)``.

    Args:
        classes: A 1-D sequence of integer class indices.
        name: Argument name for the messages.
        num_classes: Number of classes; None only bounds classes by ``0`` and int32.
        distinct: Reject a class given twice.

    Raises:
        ValueError: Not 1-D, non-integer, out of range, or (``distinct``) repeated.
    """
    values = np.asarray(classes)
    if values.ndim != 1:
        raise _error(
            name,
            "is not a sequence of classes",
            "a 1-D sequence of int classes",
            repr(classes),
        )
    maximum, bounds = _class_bounds("class", num_classes)
    out = _check_integral(
        values, name, words=("class", "classes"), minimum=0, maximum=maximum, bounds=bounds
    ).tolist()
    if distinct and len(set(out)) != len(out):
        raise _error(name, "repeats a class", "each class once", out)
    return out


def check_permutation(
    order: npt.ArrayLike, name: str, *, num_classes: int
) -> tuple[int, ...]:
    """``order`` as a tuple if it holds every class of ``range(num_classes)`` once."""
    classes = check_classes(order, name, num_classes=num_classes)
    if sorted(classes) != list(range(num_classes)):
        raise _error(
            name,
            f"is not a permutation of range({num_classes})",
            "every class exactly once",
            classes,
        )
    return tuple(classes)


def check_class_counts(
    counts: Mapping[Any, Any] | npt.ArrayLike, name: str, *, num_classes: int
) -> np.ndarray:
    """Class counts of one experience as an int64 array of length ``num_classes``.

    Args:
        counts: ``{class index: count}`` or a length-``num_classes`` sequence.
        name: Argument name for the messages.
        num_classes: Number of classes (of the head the counts are for).

    Raises:
        ValueError: A class outside ``[0, num_classes)``, a negative or non-integer
            count, a wrong length, or no pattern at all.
    """
    if isinstance(counts, Mapping):
        classes = check_classes(
            list(counts.keys()), f"{name}.keys()", num_classes=num_classes
        )
        values = list(counts.values())
    else:
        values = np.asarray(counts)
        if values.ndim != 1 or values.shape[0] != num_classes:
            raise _error(
                name,
                "has the wrong length",
                f"a dict or a 1-D array of length num_classes={num_classes}",
                f"shape {values.shape}",
            )
        classes = list(range(num_classes))
    array = np.zeros(num_classes, dtype=np.int64)
    array[classes] = _check_integral(
        values,
        name,
        words=("count", "counts"),
        minimum=0,
        maximum=_MAX_COUNT,
        bounds="counts >= 0",
    )
    if array.sum() == 0:
        raise _error(
            name,
            "holds no pattern",
            "at least one labelled training pattern",
            array.tolist(),
        )
    return array
