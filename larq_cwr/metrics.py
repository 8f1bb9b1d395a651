"""Continual-learning metrics: per-class accuracy matrix, average accuracy, forgetting.

METHOD §1: after each experience, accuracy on the classes seen so far and on all
classes; at the end, average accuracy over experiences, final accuracy and forgetting
(per class: best earlier accuracy minus final accuracy, averaged).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt

from larq_cwr._checks import (
    check_classes,
    check_finite,
    check_inputs,
    check_int,
    check_labels,
    check_nonempty,
    check_positive_int,
    check_same_length,
)

__all__ = ["AccuracyMatrix"]


class AccuracyMatrix:
    """acc[i, c]: accuracy on test class c after training experience i.

    Keeps, per evaluated experience i and class c, the number of test samples of class c
    (`total`) and how many of them were predicted correctly (`correct`); every metric is
    computed from these counts, so accuracies over groups of classes are weighted by
    their test samples. Counts are stored as float64 (exact up to 2**53 samples) so
    the divisions and the NaN marking "not evaluated" need no casts.

    Call `update` after experience i with the test labels and predictions (all at once
    or batch by batch; calls add up). Pass the whole test set so that `accuracy_all` is
    over all classes; `accuracy_seen` picks the seen classes out of the same counts.

    Args:
        n_experiences: Positive int, number of experiences in the stream.
        num_classes: Positive int, number of classes (test labels are in
            `[0, num_classes)`).
        experience_classes: For each experience, the classes it trains on (for example
            `[e.classes for e in scenario]`). Classes may recur across experiences (NI).

    Raises:
        ValueError: Non-positive sizes, `experience_classes` of the wrong length, with an
            empty experience, a repeated class or a class outside `[0, num_classes)`.

    Example:
        >>> acc = AccuracyMatrix(2, 2, experience_classes=[[0], [1]])
        >>> acc.update([0, 0, 1, 1], [0, 0, 0, 0], experience_index=0)
        >>> acc.update([0, 0, 1, 1], [0, 1, 1, 1], experience_index=1)
        >>> acc.accuracy_seen(0), acc.final_accuracy(), acc.forgetting()
        (1.0, 0.75, 0.5)
    """

    def __init__(
        self,
        n_experiences: int,
        num_classes: int,
        *,
        experience_classes: Sequence[Sequence[int]],
    ) -> None:
        n_experiences = check_positive_int(n_experiences, "n_experiences")
        num_classes = check_positive_int(num_classes, "num_classes")
        if len(experience_classes) != n_experiences:
            raise ValueError(
                f"`experience_classes` has the wrong length; expected one entry per "
                f"experience, n_experiences={n_experiences}, got "
                f"{len(experience_classes)}."
            )
        classes = []
        for i, group in enumerate(experience_classes):
            name = f"experience_classes[{i}]"
            check_nonempty(group, name, what="class")
            checked = check_classes(group, name, num_classes=num_classes, distinct=True)
            classes.append(tuple(sorted(checked)))
        self._n_experiences = n_experiences
        self._num_classes = num_classes
        self._experience_classes = tuple(classes)
        self._correct = np.zeros((self._n_experiences, self._num_classes), np.float64)
        self._total = np.zeros((self._n_experiences, self._num_classes), np.float64)

    @property
    def n_experiences(self) -> int:
        """Number of experiences (rows)."""
        return self._n_experiences

    @property
    def num_classes(self) -> int:
        """Number of classes (columns)."""
        return self._num_classes

    @property
    def experience_classes(self) -> tuple[tuple[int, ...], ...]:
        """Sorted classes of each experience."""
        return self._experience_classes

    @property
    def correct(self) -> np.ndarray:
        """float64 `(n_experiences, num_classes)`: correctly classified test samples."""
        return self._correct.copy()

    @property
    def total(self) -> np.ndarray:
        """float64 `(n_experiences, num_classes)`: evaluated test samples."""
        return self._total.copy()

    def update(
        self, y_true: npt.ArrayLike, y_pred: npt.ArrayLike, *, experience_index: int
    ) -> None:
        """Add test results obtained after training experience `experience_index`.

        Args:
            y_true: Integer labels `(n,)` (or `(n, 1)`) in `[0, num_classes)`; integral
                floats are accepted.
            y_pred: Predicted labels `(n,)` (or `(n, 1)`), or finite scores, logits or
                probabilities `(n, num_classes)` (their argmax is the prediction).
            experience_index: Int in `[0, n_experiences)`.

        Raises:
            ValueError: Index out of range, wrong shapes or dtypes, labels out of range,
                or non-finite scores. The counts are unchanged then.
        """
        last = self._n_experiences - 1
        experience_index = check_int(
            experience_index, "experience_index", minimum=0, maximum=last
        )
        true = check_labels(y_true, "y_true", num_classes=self._num_classes)
        pred = np.asarray(y_pred)
        if pred.ndim == 2 and pred.shape[1] == self._num_classes:
            pred = check_inputs(pred, "y_pred")  # scores: real and finite
            pred = np.argmax(pred, axis=1) if len(pred) else np.zeros(0, np.int64)
        elif pred.ndim == 2 and pred.shape[1] != 1:
            raise ValueError(
                f"`y_pred` has the wrong shape; expected scores (n, num_classes="
                f"{self._num_classes}) or labels (n,), got {pred.shape}."
            )
        else:
            pred = check_labels(pred, "y_pred", num_classes=self._num_classes)
        check_same_length({"y_true": true, "y_pred": pred})
        n = self._num_classes
        self._total[experience_index] += np.bincount(true, minlength=n)
        self._correct[experience_index] += np.bincount(true[true == pred], minlength=n)

    @property
    def matrix(self) -> np.ndarray:
        """float64 `(n_experiences, num_classes)` accuracies; NaN where not evaluated."""
        return _ratio(self._correct, self._total)

    def accuracy_seen(self, i: int) -> float:
        """Accuracy after experience `i` over test samples of classes seen in `0..i`.

        NaN when no test sample of those classes was evaluated after experience `i`.
        """
        self._check_index(i)
        seen = sorted({c for group in self._experience_classes[: i + 1] for c in group})
        return _ratio(self._correct[i, seen].sum(), self._total[i, seen].sum())

    def accuracy_all(self, i: int) -> float:
        """Accuracy after experience `i` over all evaluated test samples (NaN if none)."""
        self._check_index(i)
        return _ratio(self._correct[i].sum(), self._total[i].sum())

    def average_accuracy(self) -> float:
        """Mean over experiences of `accuracy_seen(i)`; NaN if one was not evaluated."""
        return float(np.mean([self.accuracy_seen(i) for i in range(self._n_experiences)]))

    def final_accuracy(self) -> float:
        """`accuracy_all` after the last experience."""
        return self.accuracy_all(self._n_experiences - 1)

    def forgetting(self) -> float:
        """Mean over classes seen before the last experience of best minus final accuracy.

        For each class c first trained in experience f < n_experiences - 1: the largest
        `acc[i, c]` for `f <= i <= n_experiences - 2` minus `acc[-1, c]`. Not clipped,
        so a class that improved counts negatively. Unevaluated entries (NaN) are
        skipped; a class with no evaluated earlier entry or no final entry is left out.

        Returns:
            The mean; 0.0 when no class is seen before the last experience (one
            experience, or classes all new in the last one: nothing can be forgotten);
            NaN when such classes exist but none has the accuracies needed.
        """
        last = self._n_experiences - 1
        acc = self.matrix
        first_seen: dict[int, int] = {}
        for i, group in enumerate(self._experience_classes[:last]):
            for c in group:
                first_seen.setdefault(c, i)
        if not first_seen:
            return 0.0
        drops = []
        for c, f in sorted(first_seen.items()):
            earlier = acc[f:last, c]
            if np.isnan(acc[last, c]) or np.isnan(earlier).all():
                continue
            drops.append(np.nanmax(earlier) - acc[last, c])
        return float(np.mean(drops)) if drops else math.nan

    def experience_matrix(self) -> np.ndarray:
        """float64 `(n_experiences, n_experiences)`: entry `[i, j]` is the accuracy on the
        test samples of experience j's classes after experience i (NaN if none)."""
        out = np.empty((self._n_experiences, self._n_experiences), np.float64)
        for j, group in enumerate(self._experience_classes):
            columns = list(group)
            out[:, j] = _ratio(
                self._correct[:, columns].sum(axis=1), self._total[:, columns].sum(axis=1)
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable summary: counts, matrices and metrics (None for NaN).

        `AccuracyMatrix.from_dict` rebuilds the object from it.
        """
        n = self._n_experiences
        return {
            "n_experiences": n,
            "num_classes": self._num_classes,
            "experience_classes": [list(group) for group in self._experience_classes],
            "correct": self._correct.astype(np.int64).tolist(),
            "total": self._total.astype(np.int64).tolist(),
            "matrix": _to_json(self.matrix),
            "experience_matrix": _to_json(self.experience_matrix()),
            "accuracy_seen": _to_json([self.accuracy_seen(i) for i in range(n)]),
            "accuracy_all": _to_json([self.accuracy_all(i) for i in range(n)]),
            "average_accuracy": _to_json(self.average_accuracy()),
            "final_accuracy": _to_json(self.final_accuracy()),
            "forgetting": _to_json(self.forgetting()),
        }

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "AccuracyMatrix":
        """Rebuild from `to_dict()` output (only the sizes, classes and counts are read).

        Raises:
            ValueError: Counts of the wrong shape, NaN/Inf, negative, or correct > total.
        """
        out = cls(
            config["n_experiences"],
            config["num_classes"],
            experience_classes=config["experience_classes"],
        )
        correct = np.asarray(config["correct"], np.float64)
        total = np.asarray(config["total"], np.float64)
        shape = out._total.shape
        if correct.shape != shape or total.shape != shape:
            raise ValueError(
                f"`correct` and `total` have the wrong shape; expected {shape} each, got "
                f"{correct.shape} and {total.shape}."
            )
        check_finite(correct, "correct")
        check_finite(total, "total")
        bad = np.argwhere((correct < 0) | (correct > total))
        if bad.size:
            i, c = (int(v) for v in bad[0])
            raise ValueError(
                "`correct` is out of range; expected 0 <= correct <= total, got "
                f"correct={correct[i, c]} for total={total[i, c]} at [{i}, {c}]."
            )
        out._correct, out._total = correct, total
        return out

    def __repr__(self) -> str:
        return (
            f"AccuracyMatrix(n_experiences={self._n_experiences}, "
            f"num_classes={self._num_classes}, evaluated_rows="
            f"{int((self._total.sum(axis=1) > 0).sum())})"
        )

    def _check_index(self, i: int) -> None:
        check_int(i, "i", minimum=0, maximum=self._n_experiences - 1)


def _ratio(correct, total):
    """correct / total, NaN where total is 0 (float for scalars, array otherwise)."""
    correct, total = np.asarray(correct, np.float64), np.asarray(total, np.float64)
    out = np.divide(correct, total, out=np.full(total.shape, np.nan), where=total > 0)
    return float(out) if out.ndim == 0 else out


def _to_json(value):
    """Floats and nested lists with None for NaN."""
    array = np.asarray(value, np.float64)
    if array.ndim == 0:
        return None if np.isnan(array) else float(array)
    return [_to_json(v) for v in array]
