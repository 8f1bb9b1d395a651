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
from typing import Callable, Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from larq_cwr._checks import (
    check_array,
    check_choice,
    check_classes,
    check_fraction,
    check_inputs,
    check_int,
    check_labels,
    check_nonempty,
    check_permutation,
    check_positive_int,
    check_same_length,
    check_sample_shape,
    check_seed,
)

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


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
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
        >>> exp = Experience(index=0, classes=(0, 1), x_train=np.zeros((3, 2), np.float32),
        ...                  y_train=np.array([0, 1, 1], np.int32), num_classes=3)
        >>> exp.class_counts
        array([1, 2, 0])
    """

    index: int
    classes: tuple[int, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        check_int(self.index, "index", minimum=0)
        num_classes = check_positive_int(self.num_classes, "num_classes")
        _check_stored_arrays(self.x_train, self.y_train, "train")
        check_nonempty(self.y_train, "y_train")
        check_labels(self.y_train, "y_train", num_classes=num_classes)
        present = tuple(int(c) for c in np.unique(self.y_train))
        if tuple(self.classes) != present:
            raise ValueError(
                f"`classes` of experience {self.index} are not its labels; expected the "
                f"sorted labels present in `y_train`, {present}, got "
                f"{tuple(self.classes)}."
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
            seed: Int in `[0, 2**32)`, op-level seed of the shuffle; the same seed gives
                the same order.

        Returns:
            A `tf.data.Dataset` of `(float32 (b, ...), int32 (b,))` tuples.

        Raises:
            ValueError: `batch_size` is not a positive int.
        """
        check_positive_int(batch_size, "batch_size")
        check_seed(seed)
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
            seed: Int in `[0, 2**32)` seeding the choice of validation samples.

        Returns:
            `(train, (x_val, y_val))`: `train` is an `Experience` with the same `index`,
            `classes` and `num_classes`; both parts keep the original sample order.

        Raises:
            ValueError: `fraction` is outside (0, 1) or leaves no validation sample.
        """
        fraction = check_fraction(fraction, "fraction")
        check_seed(seed)
        rng = np.random.default_rng(seed)
        is_validation = np.zeros(len(self.y_train), dtype=bool)
        for c in self.classes:
            members = np.flatnonzero(self.y_train == c)
            n_val = min(int(round(fraction * len(members))), len(members) - 1)
            is_validation[rng.permutation(members)[:n_val]] = True
        if not is_validation.any():
            raise ValueError(
                f"`fraction` holds out no sample of experience {self.index} (class counts "
                f"{self.class_counts[list(self.classes)].tolist()}); expected a larger "
                f"fraction, got {fraction}."
            )
        train = dataclasses.replace(
            self,
            x_train=self.x_train[~is_validation],
            y_train=self.y_train[~is_validation],
        )
        return train, (self.x_train[is_validation], self.y_train[is_validation])


@dataclasses.dataclass(frozen=True, eq=False, kw_only=True)
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
        check_choice(self.name, SCENARIO_NAMES, "name")
        num_classes = check_positive_int(self.num_classes, "num_classes")
        experiences = tuple(self.experiences)
        check_nonempty(experiences, "experiences", what="experience")
        for position, experience in enumerate(experiences):
            if not isinstance(experience, Experience):
                raise ValueError(
                    f"`experiences[{position}]` is not an Experience; expected an "
                    f"Experience, got {type(experience).__name__}."
                )
            if experience.index != position or experience.num_classes != num_classes:
                raise ValueError(
                    f"`experiences[{position}]` does not fit the scenario; expected "
                    f"index={position} and num_classes={num_classes}, got "
                    f"index={experience.index} and num_classes={experience.num_classes}."
                )
        _check_stored_arrays(self.x_test, self.y_test, "test")
        check_sample_shape(self.x_test, "x_test", expected=experiences[0].x_train.shape[1:])
        check_labels(self.y_test, "y_test", num_classes=num_classes)
        order = check_permutation(self.class_order, "class_order", num_classes=num_classes)
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
        check_int(index, "index", minimum=0, maximum=len(self) - 1)
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
        check_positive_int(batch_size, "batch_size")
        x, y = self.x_test, self.y_test
        if classes is not None:
            wanted = check_classes(classes, "classes", num_classes=self.num_classes)
            keep = np.isin(y, wanted)
            if not keep.any():
                raise ValueError(
                    "`classes` selects no test sample; expected classes present in "
                    f"`y_test`, got {wanted}."
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
    *,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
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
        seed: Int in `[0, 2**32)` seeding the class permutation.
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
        >>> scenario = nc_scenario(x, y, x_test=x, y_test=y, n_experiences=5, seed=1)
        >>> np.random.default_rng(1).permutation(10).tolist()  # the class order
        [8, 4, 7, 0, 1, 2, 5, 9, 6, 3]
        >>> [experience.classes for experience in scenario]  # each group sorted
        [(4, 8), (0, 7), (1, 2), (5, 9), (3, 6)]
    """
    x_train, y_train, x_test, y_test, num_classes = _prepare_arrays(
        x_train, y_train, x_test, y_test, num_classes
    )
    check_int(n_experiences, "n_experiences", minimum=1, maximum=num_classes)
    check_seed(seed)
    if class_order is None:
        order = tuple(int(c) for c in np.random.default_rng(seed).permutation(num_classes))
    else:
        order = check_permutation(class_order, "class_order", num_classes=num_classes)
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
    return Scenario(
        name="nc",
        experiences=tuple(experiences),
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_order=order,
    )


def ni_scenario(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
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
        seed: Int in `[0, 2**32)` seeding the shuffles.
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
    check_int(n_experiences, "n_experiences", minimum=1)
    check_seed(seed)
    counts = np.bincount(y_train, minlength=num_classes)
    if n_experiences > counts.min():
        smallest = int(np.argmin(counts))
        raise ValueError(
            f"`n_experiences` exceeds the {counts.min()} training samples of class "
            f"{smallest}; expected n_experiences <= samples per class, got "
            f"{n_experiences}."
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
        name="ni",
        experiences=experiences,
        x_test=x_test,
        y_test=y_test,
        num_classes=num_classes,
        class_order=tuple(range(num_classes)),
    )


_FACTORIES: dict[str, Callable[..., Scenario]] = {"nc": nc_scenario, "ni": ni_scenario}


def make_scenario(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    name: str,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    n_experiences: int,
    seed: int = 0,
    **kwargs,
) -> Scenario:
    """Build the scenario called `name` (one of `SCENARIO_NAMES`).

    Args:
        x_train, y_train: Passed on.
        name: `"nc"` (`nc_scenario`) or `"ni"` (`ni_scenario`).
        x_test, y_test, n_experiences, seed: Passed on.
        **kwargs: Further keyword arguments of the chosen factory.

    Returns:
        The `Scenario`.

    Raises:
        ValueError: Unknown `name`, or whatever the factory raises. An argument the
            factory does not take raises `TypeError`.
    """
    check_choice(name, SCENARIO_NAMES, "name")
    return _FACTORIES[name](
        x_train,
        y_train,
        x_test=x_test,
        y_test=y_test,
        n_experiences=n_experiences,
        seed=seed,
        **kwargs,
    )


# --- private helpers -------------------------------------------------------------------


def _check_stored_arrays(x: object, y: object, split: str) -> None:
    """Checks the dtypes, ranks and lengths of arrays the factories converted."""
    check_array(x, f"x_{split}", dtype=_X_DTYPE)
    check_array(y, f"y_{split}", dtype=_Y_DTYPE, ndim=1)
    check_same_length({f"x_{split}": x, f"y_{split}": y})


def _prepare_arrays(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    x_test: npt.ArrayLike,
    y_test: npt.ArrayLike,
    num_classes: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Converts and validates a dataset; returns it with the number of classes."""
    if num_classes is not None:
        num_classes = check_positive_int(num_classes, "num_classes")
    x_train = check_inputs(x_train, "x_train")
    x_test = check_inputs(x_test, "x_test", sample_shape=x_train.shape[1:])
    y_train = check_labels(y_train, "y_train", num_classes=num_classes)
    y_test = check_labels(y_test, "y_test", num_classes=num_classes)
    check_same_length({"x_train": x_train, "y_train": y_train})
    check_same_length({"x_test": x_test, "y_test": y_test})
    check_nonempty(y_train, "y_train")
    if num_classes is None:
        num_classes = int(np.concatenate([y_train, y_test]).max()) + 1
    missing = np.flatnonzero(np.bincount(y_train, minlength=num_classes) == 0)
    if missing.size:
        raise ValueError(
            f"`y_train` lacks classes; expected samples of every class of "
            f"num_classes={num_classes}, got no samples of classes {missing.tolist()}."
        )
    return (
        x_train,
        y_train.astype(_Y_DTYPE),
        x_test,
        y_test.astype(_Y_DTYPE),
        num_classes,
    )


def _group_sizes(
    num_classes: int, n_experiences: int, first_experience_classes: int | None
) -> list[int]:
    """Classes per experience for the NC split."""
    if first_experience_classes is None:
        if num_classes % n_experiences:
            raise ValueError(
                f"`n_experiences` does not split num_classes={num_classes} evenly; "
                f"expected a divisor of {num_classes} (or `first_experience_classes`), "
                f"got {n_experiences}."
            )
        return [num_classes // n_experiences] * n_experiences
    check_int(
        first_experience_classes,
        "first_experience_classes",
        minimum=1,
        maximum=num_classes,
    )
    rest, later = num_classes - first_experience_classes, n_experiences - 1
    if rest < later or (later == 0 and rest) or (later and rest % later):
        expected = (
            f"a multiple of {later} (at least {later}) left for the {later} later "
            f"experiences of `n_experiences`={n_experiences}"
            if later
            else f"all of them, as `n_experiences`={n_experiences}"
        )
        raise ValueError(
            f"`first_experience_classes` leaves {rest} of num_classes={num_classes} "
            f"classes; expected {expected}, got {first_experience_classes}."
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
