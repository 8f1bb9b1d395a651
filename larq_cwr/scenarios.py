"""Continual-learning streams: NC (new classes) and NI (new instances), METHOD §1.

A `Scenario` is a plain sequence of `Experience`s (labelled training sets seen one after
the other) plus one shared test set. Factories split a dataset into experiences:

- `nc_scenario`: class-incremental; classes are permuted with a seeded generator and
  split into groups, each experience holds every training sample of its group.
- `ni_scenario`: every experience holds every class; each class's samples are shuffled
  (seeded) and split into near-equal parts.

Images are stored as float32 and labels as int32, whatever the inputs' dtypes.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import numbers
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

__all__ = [
    "SCENARIO_NAMES",
    "Experience",
    "Scenario",
    "make_scenario",
    "nc_scenario",
    "ni_scenario",
]

SCENARIO_NAMES = ("nc", "ni")
"""Names accepted by `make_scenario` (METHOD §1: new classes, new instances)."""

_X_DTYPE = np.float32
_Y_DTYPE = np.int32


@dataclasses.dataclass(frozen=True, eq=False)
class Experience:
    """One labelled training set of a continual-learning stream (METHOD §1).

    Instances compare and hash by identity (their fields hold arrays). The arrays are
    not copied; treat them as read-only.

    Args:
        index: Non-negative int, position of the experience in its stream.
        classes: Sorted tuple of the classes present in `y_train` (all of them).
        x_train: float32 array `(n, ...)` of inputs.
        y_train: int32 array `(n,)` of labels in `[0, num_classes)`.
        num_classes: Positive int, number of classes of the whole stream.

    Raises:
        ValueError: A field has the wrong dtype or shape, or `classes` is not the sorted
            set of labels in `y_train` (an empty experience included).

    Example:
        >>> exp = Experience(0, (0, 1), np.zeros((3, 2), np.float32),
        ...                  np.array([0, 1, 1], np.int32), num_classes=3)
        >>> exp.class_counts
        array([1, 2, 0])
    """

    index: int
    classes: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        _check_int("index", self.index, minimum=0)
        _check_int("num_classes", self.num_classes, minimum=1)
        _check_stored_arrays(self.x_train, self.y_train, "x_train", "y_train")
        present = tuple(int(c) for c in np.unique(self.y_train))
        if not present:
            raise ValueError(f"Experience {self.index} is empty: `y_train` has no samples.")
        if tuple(self.classes) != present:
            raise ValueError(
                f"`classes`={tuple(self.classes)} of experience {self.index}; expected the "
                f"sorted labels present in `y_train`, {present}."
            )
        if present[0] < 0 or present[-1] >= self.num_classes:
            raise ValueError(
                f"`y_train` of experience {self.index} has labels {present}; expected "
                f"0 <= label < num_classes={self.num_classes}."
            )
        object.__setattr__(self, "classes", present)

    def __len__(self) -> int:
        """Number of training samples."""
        return len(self.y_train)

    @property
    def class_counts(self) -> np.ndarray:
        """int64 array `(num_classes,)`: training patterns per class in this experience."""
        return np.bincount(self.y_train, minlength=self.num_classes).astype(np.int64)

    def train_dataset(
        self, batch_size: int, *, shuffle: bool = True, seed: int = 0
    ) -> tf.data.Dataset:
        """Batches `(x, y)` of the training data, reshuffled each epoch when `shuffle`.

        Only indices are shuffled (the images are gathered per batch), so shuffling needs
        no buffer of images. The last batch may be smaller.

        Args:
            batch_size: Positive int, samples per batch.
            shuffle: Whether to shuffle (differently in each iteration over the dataset).
            seed: Int, op-level seed of the shuffle; the same seed gives the same order.

        Returns:
            A `tf.data.Dataset` of `(float32 (b, ...), int32 (b,))` tuples.

        Raises:
            ValueError: `batch_size` is not a positive int.
        """
        _check_int("batch_size", batch_size, minimum=1)
        _check_int("seed", seed, minimum=0)
        return _batched_dataset(
            self.x_train, self.y_train, batch_size, shuffle=shuffle, seed=seed
        )

    def split_validation(
        self, fraction: float, *, seed: int = 0
    ) -> tuple["Experience", tuple[np.ndarray, np.ndarray]]:
        """Split off a stratified validation set, for tuning without the test set.

        Each class gives `round(fraction * n_c)` of its `n_c` samples (chosen by a
        generator seeded with `seed`), but always keeps at least one for training.

        Args:
            fraction: Float in (0, 1), share of each class to hold out.
            seed: Int seeding the choice of validation samples.

        Returns:
            `(train, (x_val, y_val))`: `train` is an `Experience` with the same `index`,
            `classes` and `num_classes`; both parts keep the original sample order.

        Raises:
            ValueError: `fraction` is outside (0, 1) or leaves no validation sample.
        """
        if (
            not isinstance(fraction, numbers.Real)
            or isinstance(fraction, bool)
            or not 0.0 < float(fraction) < 1.0
        ):
            raise ValueError(f"`fraction`={fraction!r}; expected a float in (0, 1).")
        _check_int("seed", seed, minimum=0)
        rng = np.random.default_rng(seed)
        is_validation = np.zeros(len(self.y_train), dtype=bool)
        for c in self.classes:
            members = np.flatnonzero(self.y_train == c)
            n_val = min(int(round(float(fraction) * len(members))), len(members) - 1)
            is_validation[rng.permutation(members)[:n_val]] = True
        if not is_validation.any():
            raise ValueError(
                f"`fraction`={fraction!r} holds out no sample of experience {self.index} "
                f"(class counts {self.class_counts[list(self.classes)].tolist()}); "
                "expected a larger fraction."
            )
        train = dataclasses.replace(
            self,
            x_train=self.x_train[~is_validation],
            y_train=self.y_train[~is_validation],
        )
        return train, (self.x_train[is_validation], self.y_train[is_validation])


@dataclasses.dataclass(frozen=True, eq=False)
class Scenario(collections.abc.Sequence[Experience]):
    """A stream of experiences with one shared test set (METHOD §1).

    A plain sequence: `len(scenario)`, `scenario[i]` and `for experience in scenario`.
    After each experience, evaluate on `test_dataset(classes=seen_classes(i))` (seen
    classes) and on `test_dataset()` (all classes). Compares and hashes by identity.

    Args:
        name: `"nc"` or `"ni"`.
        experiences: Tuple of `Experience`s with indices 0, 1, ... and the same
            `num_classes`.
        x_test: float32 array `(m, ...)`, same sample shape as the training inputs.
        y_test: int32 array `(m,)` of labels in `[0, num_classes)`.
        num_classes: Positive int, number of classes.
        class_order: The classes in the order the stream introduces them (NC: the
            seeded permutation; NI: `0, 1, ..., num_classes - 1`).

    Raises:
        ValueError: The fields are inconsistent (see the messages).
    """

    name: str
    experiences: tuple[Experience, ...]
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_order: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.name not in SCENARIO_NAMES:
            raise ValueError(f"`name`={self.name!r}; expected one of {SCENARIO_NAMES}.")
        _check_int("num_classes", self.num_classes, minimum=1)
        experiences = tuple(self.experiences)
        if not experiences:
            raise ValueError("`experiences` is empty; expected at least one experience.")
        for position, experience in enumerate(experiences):
            if not isinstance(experience, Experience):
                raise ValueError(
                    f"`experiences[{position}]` is a {type(experience).__name__}; "
                    "expected an Experience."
                )
            if experience.index != position or experience.num_classes != self.num_classes:
                raise ValueError(
                    f"`experiences[{position}]` has index={experience.index} and "
                    f"num_classes={experience.num_classes}; expected index={position} "
                    f"and num_classes={self.num_classes}."
                )
        _check_stored_arrays(self.x_test, self.y_test, "x_test", "y_test")
        sample_shape = experiences[0].x_train.shape[1:]
        if self.x_test.shape[1:] != sample_shape:
            raise ValueError(
                f"`x_test` samples have shape {self.x_test.shape[1:]}; expected the "
                f"training sample shape {sample_shape}."
            )
        _check_label_range(self.y_test, "y_test", self.num_classes)
        order = tuple(int(c) for c in self.class_order)
        _check_permutation("class_order", order, self.num_classes)
        object.__setattr__(self, "experiences", experiences)
        object.__setattr__(self, "class_order", order)

    def __len__(self) -> int:
        """Number of experiences."""
        return len(self.experiences)

    def __getitem__(self, index):  # int -> Experience, slice -> tuple of Experiences
        return self.experiences[index]

    def seen_classes(self, index: int) -> tuple[int, ...]:
        """Sorted classes of experiences `0..index` (inclusive).

        Raises:
            ValueError: `index` is not in `[0, len(self))`.
        """
        _check_int("index", index, minimum=0, maximum=len(self) - 1)
        seen: set[int] = set()
        for experience in self.experiences[: index + 1]:
            seen.update(experience.classes)
        return tuple(sorted(seen))

    def test_dataset(
        self, batch_size: int, *, classes: Sequence[int] | None = None
    ) -> tf.data.Dataset:
        """Batches `(x, y)` of the test set restricted to `classes`, in a fixed order.

        Args:
            batch_size: Positive int, samples per batch.
            classes: Classes to keep (for example `seen_classes(i)`); `None` keeps all.

        Returns:
            A `tf.data.Dataset` of `(float32 (b, ...), int32 (b,))` tuples.

        Raises:
            ValueError: `batch_size` is not positive, `classes` holds a class outside
                `[0, num_classes)`, or no test sample belongs to `classes`.
        """
        _check_int("batch_size", batch_size, minimum=1)
        x, y = self.x_test, self.y_test
        if classes is not None:
            wanted = _check_classes("classes", classes, self.num_classes)
            keep = np.isin(y, wanted)
            if not keep.any():
                raise ValueError(
                    f"`classes`={list(wanted)} selects no test sample; expected classes "
                    f"present in `y_test`."
                )
            x, y = x[keep], y[keep]
        return _batched_dataset(x, y, batch_size, shuffle=False, seed=0)

    def joint_experience(self) -> Experience:
        """All training data as one experience (index 0), for the joint upper bound."""
        return Experience(
            index=0,
            classes=tuple(sorted({c for e in self.experiences for c in e.classes})),
            x_train=np.concatenate([e.x_train for e in self.experiences]),
            y_train=np.concatenate([e.y_train for e in self.experiences]),
            num_classes=self.num_classes,
        )


def nc_scenario(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    *,
    n_experiences: int,
    seed: int = 0,
    class_order: Sequence[int] | None = None,
    first_experience_classes: int | None = None,
    num_classes: int | None = None,
) -> Scenario:
    """Class-incremental stream: each experience brings new classes (METHOD §1).

    The classes are permuted by `np.random.default_rng(seed)` (unless `class_order` is
    given) and cut into `n_experiences` consecutive groups of equal size, or, with
    `first_experience_classes`, a first group of that size and equal groups after it.
    Experience i holds every training sample of group i, in the original order.

    Args:
        x_train: Array `(n, ...)` of training inputs, converted to float32.
        y_train: Integer array `(n,)` (or `(n, 1)`) of training labels.
        x_test: Array `(m, ...)` of test inputs, shared by all experiences.
        y_test: Integer array `(m,)` (or `(m, 1)`) of test labels.
        n_experiences: Int in `[1, num_classes]`, number of experiences.
        seed: Int seeding the class permutation.
        class_order: A permutation of `range(num_classes)` to use instead of the seeded
            one (`seed` is then unused).
        first_experience_classes: Number of classes in experience 0 (for example a
            larger base experience); `None` splits all classes evenly.
        num_classes: Number of classes; `None` infers `max label + 1`.

    Returns:
        A `Scenario` named `"nc"` whose `class_order` is the permutation used.

    Raises:
        ValueError: Inconsistent arrays, labels outside `[0, num_classes)`, non-finite
            inputs, a class without training samples, a bad `class_order`, or class
            counts that do not split into `n_experiences` groups as asked.

    Example:
        >>> import numpy as np
        >>> x, y = np.zeros((40, 2)), np.arange(40) % 10
        >>> scenario = nc_scenario(x, y, x, y, n_experiences=5, seed=1)
        >>> np.random.default_rng(1).permutation(10).tolist()  # the class order
        [8, 4, 7, 0, 1, 2, 5, 9, 6, 3]
        >>> [experience.classes for experience in scenario]  # each group sorted
        [(4, 8), (0, 7), (1, 2), (5, 9), (3, 6)]
    """
    x_train, y_train, x_test, y_test, num_classes = _prepare_arrays(
        x_train, y_train, x_test, y_test, num_classes
    )
    _check_int("n_experiences", n_experiences, minimum=1, maximum=num_classes)
    _check_int("seed", seed, minimum=0)
    if class_order is None:
        order = tuple(int(c) for c in np.random.default_rng(seed).permutation(num_classes))
    else:
        order = tuple(_check_classes("class_order", class_order, num_classes))
        _check_permutation("class_order", order, num_classes)
    sizes = _group_sizes(num_classes, n_experiences, first_experience_classes)
    bounds = np.cumsum([0, *sizes])
    experiences = []
    for index in range(n_experiences):
        group = order[bounds[index] : bounds[index + 1]]
        members = np.isin(y_train, group)
        experiences.append(
            Experience(
                index=index,
                classes=tuple(sorted(group)),
                x_train=x_train[members],
                y_train=y_train[members],
                num_classes=num_classes,
            )
        )
    return Scenario("nc", tuple(experiences), x_test, y_test, num_classes, order)


def ni_scenario(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    *,
    n_experiences: int,
    seed: int = 0,
    num_classes: int | None = None,
) -> Scenario:
    """New-instances stream: every experience holds every class (METHOD §1).

    Each class's training samples are shuffled by `np.random.default_rng(seed)` (classes
    in ascending order) and split into `n_experiences` parts whose sizes differ by at
    most one, earlier parts taking the extra samples (`np.array_split`). With CIFAR-10
    and `n_experiences=10`: 500 images per class in each experience.

    Args:
        x_train: Array `(n, ...)` of training inputs, converted to float32.
        y_train: Integer array `(n,)` (or `(n, 1)`) of training labels.
        x_test: Array `(m, ...)` of test inputs, shared by all experiences.
        y_test: Integer array `(m,)` (or `(m, 1)`) of test labels.
        n_experiences: Int in `[1, samples of the smallest class]`.
        seed: Int seeding the shuffles.
        num_classes: Number of classes; `None` infers `max label + 1`.

    Returns:
        A `Scenario` named `"ni"` with `class_order` `(0, 1, ..., num_classes - 1)`.

    Raises:
        ValueError: Inconsistent arrays, labels outside `[0, num_classes)`, non-finite
            inputs, a class without training samples, or `n_experiences` larger than the
            smallest class.
    """
    x_train, y_train, x_test, y_test, num_classes = _prepare_arrays(
        x_train, y_train, x_test, y_test, num_classes
    )
    _check_int("n_experiences", n_experiences, minimum=1)
    _check_int("seed", seed, minimum=0)
    counts = np.bincount(y_train, minlength=num_classes)
    if n_experiences > counts.min():
        smallest = int(np.argmin(counts))
        raise ValueError(
            f"`n_experiences`={n_experiences} exceeds the {counts.min()} training samples "
            f"of class {smallest}; expected n_experiences <= samples per class."
        )
    rng = np.random.default_rng(seed)
    owner = np.empty(len(y_train), dtype=np.int64)  # experience of each training sample
    for c in range(num_classes):
        shuffled = rng.permutation(np.flatnonzero(y_train == c))
        for index, part in enumerate(np.array_split(shuffled, n_experiences)):
            owner[part] = index
    experiences = tuple(
        Experience(
            index=index,
            classes=tuple(range(num_classes)),
            x_train=x_train[owner == index],
            y_train=y_train[owner == index],
            num_classes=num_classes,
        )
        for index in range(n_experiences)
    )
    return Scenario(
        "ni", experiences, x_test, y_test, num_classes, tuple(range(num_classes))
    )


_FACTORIES: dict[str, Callable[..., Scenario]] = {"nc": nc_scenario, "ni": ni_scenario}


def make_scenario(
    name: str,
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    *,
    n_experiences: int,
    seed: int = 0,
    **kwargs,
) -> Scenario:
    """Build the scenario called `name` (one of `SCENARIO_NAMES`).

    Args:
        name: `"nc"` (`nc_scenario`) or `"ni"` (`ni_scenario`).
        x_train, y_train, x_test, y_test, n_experiences, seed: Passed on.
        **kwargs: Further keyword arguments of the chosen factory.

    Returns:
        The `Scenario`.

    Raises:
        ValueError: Unknown `name`, or whatever the factory raises. An argument the
            factory does not take raises `TypeError`.
    """
    if name not in _FACTORIES:
        raise ValueError(f"`name`={name!r}; expected one of {SCENARIO_NAMES}.")
    return _FACTORIES[name](
        x_train, y_train, x_test, y_test, n_experiences=n_experiences, seed=seed, **kwargs
    )


# --- private helpers -------------------------------------------------------------------


def _check_int(
    name: str, value: object, *, minimum: int | None = None, maximum: int | None = None
) -> None:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise ValueError(f"`{name}`={value!r}; expected an int.")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}`={value}; expected {name} >= {minimum}.")
    if maximum is not None and value > maximum:
        raise ValueError(f"`{name}`={value}; expected {name} <= {maximum}.")


def _check_classes(name: str, classes: Sequence[int], num_classes: int) -> list[int]:
    values = np.asarray(classes)
    if values.ndim != 1 or (values.size and not np.issubdtype(values.dtype, np.integer)):
        raise ValueError(f"`{name}`={classes!r}; expected a sequence of int classes.")
    out = [int(c) for c in values]
    bad = [c for c in out if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"`{name}` has classes {bad}; expected 0 <= class < num_classes={num_classes}."
        )
    return out


def _check_permutation(name: str, order: Sequence[int], num_classes: int) -> None:
    if sorted(order) != list(range(num_classes)):
        raise ValueError(
            f"`{name}`={list(order)} is not a permutation of range({num_classes}); "
            "expected every class exactly once."
        )


def _check_label_range(y: np.ndarray, name: str, num_classes: int) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise ValueError(
            f"`{name}` has label {bad}; expected 0 <= label < num_classes={num_classes}."
        )


def _check_stored_arrays(x: object, y: object, x_name: str, y_name: str) -> None:
    """Checks the dtypes and shapes of arrays already converted by the factories."""
    if not isinstance(x, np.ndarray) or x.dtype != _X_DTYPE or x.ndim < 1:
        raise ValueError(f"`{x_name}` must be a float32 numpy array with a sample axis.")
    if not isinstance(y, np.ndarray) or y.dtype != _Y_DTYPE or y.ndim != 1:
        raise ValueError(f"`{y_name}` must be a 1-D int32 numpy array.")
    if len(x) != len(y):
        raise ValueError(
            f"`{x_name}` has {len(x)} samples but `{y_name}` has {len(y)}; expected equal."
        )


def _as_inputs(x: npt.ArrayLike, name: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 1 or not (
        np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)
    ):
        raise ValueError(
            f"`{name}` has dtype {x.dtype} and shape {x.shape}; expected a numeric array "
            "(n, ...)."
        )
    x = x.astype(_X_DTYPE, copy=False)
    if not np.isfinite(x).all():
        raise ValueError(f"`{name}` holds NaN or infinite values; expected finite inputs.")
    return x


def _as_labels(y: npt.ArrayLike, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # Keras datasets give (n, 1) label arrays
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"`{name}` has dtype {y.dtype} and shape {y.shape}; expected integer labels "
            "(n,) or (n, 1)."
        )
    if y.size and (y.min() < np.iinfo(_Y_DTYPE).min or y.max() > np.iinfo(_Y_DTYPE).max):
        raise ValueError(f"`{name}` has labels outside the int32 range.")
    return y.astype(_Y_DTYPE, copy=False)


def _prepare_arrays(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    num_classes: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Converts and validates a dataset; returns it with the number of classes."""
    x_train, x_test = _as_inputs(x_train, "x_train"), _as_inputs(x_test, "x_test")
    y_train, y_test = _as_labels(y_train, "y_train"), _as_labels(y_test, "y_test")
    for x, y, x_name, y_name in (
        (x_train, y_train, "x_train", "y_train"),
        (x_test, y_test, "x_test", "y_test"),
    ):
        if len(x) != len(y):
            raise ValueError(
                f"`{x_name}` has {len(x)} samples but `{y_name}` has {len(y)}; "
                "expected equal."
            )
    if not len(y_train):
        raise ValueError("`y_train` is empty; expected training samples.")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"`x_train` samples have shape {x_train.shape[1:]} but `x_test` samples "
            f"{x_test.shape[1:]}; expected equal."
        )
    if num_classes is None:
        labels = np.concatenate([y_train, y_test])
        num_classes = int(labels.max()) + 1 if labels.min() >= 0 else 1
    _check_int("num_classes", num_classes, minimum=1)
    num_classes = int(num_classes)
    _check_label_range(y_train, "y_train", num_classes)
    _check_label_range(y_test, "y_test", num_classes)
    missing = np.flatnonzero(np.bincount(y_train, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(
            f"`y_train` has no samples of classes {missing.tolist()} "
            f"(num_classes={num_classes}); expected every class in the training set."
        )
    return x_train, y_train, x_test, y_test, num_classes


def _group_sizes(
    num_classes: int, n_experiences: int, first_experience_classes: int | None
) -> list[int]:
    """Classes per experience for the NC split."""
    if first_experience_classes is None:
        if num_classes % n_experiences:
            raise ValueError(
                f"num_classes={num_classes} does not split evenly into "
                f"`n_experiences`={n_experiences}; expected a divisor of {num_classes} "
                "or `first_experience_classes`."
            )
        return [num_classes // n_experiences] * n_experiences
    _check_int("first_experience_classes", first_experience_classes, minimum=1)
    rest, later = num_classes - first_experience_classes, n_experiences - 1
    if rest < later or (later == 0 and rest) or (later and rest % later):
        raise ValueError(
            f"`first_experience_classes`={first_experience_classes} leaves {rest} of "
            f"num_classes={num_classes} classes, which do not split evenly into the "
            f"{later} later experiences of `n_experiences`={n_experiences}."
        )
    if not later:
        return [first_experience_classes]
    return [first_experience_classes] + [rest // later] * later


def _batched_dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle: bool, seed: int
) -> tf.data.Dataset:
    x_tensor, y_tensor = tf.constant(x), tf.constant(y)
    indices = tf.data.Dataset.range(len(y))
    if shuffle:
        indices = indices.shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
    batches = indices.batch(batch_size).map(
        lambda i: (tf.gather(x_tensor, i), tf.gather(y_tensor, i)),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return batches.prefetch(tf.data.AUTOTUNE)
