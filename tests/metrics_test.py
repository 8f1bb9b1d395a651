"""Tests for larq_cwr.metrics.AccuracyMatrix against a hand-computed example."""

import json
import math

import numpy as np
import pytest

from larq_cwr.metrics import AccuracyMatrix

# Counts are exact in float64 and every expected value below is a ratio of small
# integers, so the only error is one rounding of each division: rtol 1e-12 is far above
# it and far below any formula mistake (the closest wrong answers differ by > 1e-2).
RTOL = 1e-12

# 3 experiences x 2 classes: experience 0 trains classes (0, 1), 1 trains (2, 3), 2 trains
# (4, 5). The test set has 4 samples of class 0 and 2 of every other class, so
# sample-weighted and class-averaged accuracies differ.
EXPERIENCE_CLASSES = [(0, 1), (2, 3), (4, 5)]
Y_TRUE = np.array([0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
Y_PRED = [
    # after experience 0: class 0 3/4, 1 1/2, 2 0/2, 3 2/2 (lucky, before being trained),
    # 4 0/2, 5 0/2
    np.array([0, 0, 0, 1, 1, 0, 0, 1, 3, 3, 0, 0, 1, 0]),
    # after experience 1: class 0 2/4, 1 2/2, 2 2/2, 3 1/2, 4 0/2, 5 0/2
    np.array([0, 0, 2, 2, 1, 1, 2, 2, 3, 2, 2, 3, 0, 1]),
    # after experience 2: class 0 1/4, 1 1/2, 2 1/2, 3 2/2, 4 2/2, 5 2/2
    np.array([0, 4, 4, 4, 1, 5, 2, 4, 3, 3, 4, 4, 5, 5]),
]
EXPECTED_MATRIX = np.array(
    [
        [3 / 4, 1 / 2, 0.0, 1.0, 0.0, 0.0],
        [2 / 4, 1.0, 1.0, 1 / 2, 0.0, 0.0],
        [1 / 4, 1 / 2, 1 / 2, 1.0, 1.0, 1.0],
    ]
)
# Seen classes, sample-weighted (correct / total over their test samples):
#   after 0: classes 0,1: (3 + 1) / (4 + 2) = 4/6      (class average would be 0.625)
#   after 1: classes 0-3: (2 + 2 + 2 + 1) / 10 = 7/10
#   after 2: all:         (1 + 1 + 1 + 2 + 2 + 2) / 14 = 9/14
EXPECTED_SEEN = [4 / 6, 7 / 10, 9 / 14]
# All classes: (3 + 1 + 0 + 2 + 0 + 0) / 14, (2 + 2 + 2 + 1 + 0 + 0) / 14, 9/14
EXPECTED_ALL = [6 / 14, 7 / 14, 9 / 14]
EXPECTED_AVERAGE = (4 / 6 + 7 / 10 + 9 / 14) / 3  # = 0.66984...
EXPECTED_FINAL = 9 / 14
# Forgetting over classes seen before the last experience (0, 1 from experience 0;
# 2, 3 from experience 1), best accuracy from first-seen to experience 1 minus final:
#   class 0: max(3/4, 2/4) - 1/4 = 1/2        class 1: max(1/2, 1) - 1/2 = 1/2
#   class 2: acc[1, 2] - 1/2 = 1/2            class 3: acc[1, 3] - 1 = -1/2
#   (class 3's lucky acc[0, 3] = 1 comes before it was seen: counting it would give 0)
#   mean = (1/2 + 1/2 + 1/2 - 1/2) / 4 = 1/4
EXPECTED_FORGETTING = 0.25
# Accuracy on experience j's classes after experience i, sample-weighted:
#   i=0: (3+1)/6, (0+2)/4, 0/4    i=1: (2+2)/6, (2+1)/4, 0/4    i=2: (1+1)/6, (1+2)/4, 4/4
EXPECTED_EXPERIENCE_MATRIX = np.array(
    [[4 / 6, 2 / 4, 0.0], [4 / 6, 3 / 4, 0.0], [2 / 6, 3 / 4, 1.0]]
)


def filled(y_pred=Y_PRED):
    acc = AccuracyMatrix(3, 6, experience_classes=EXPERIENCE_CLASSES)
    for i, pred in enumerate(y_pred):
        acc.update(Y_TRUE, pred, experience_index=i)
    return acc


def assert_matches_hand_computed(acc):
    np.testing.assert_allclose(acc.matrix, EXPECTED_MATRIX, rtol=RTOL)
    np.testing.assert_allclose(
        [acc.accuracy_seen(i) for i in range(3)], EXPECTED_SEEN, rtol=RTOL
    )
    np.testing.assert_allclose(
        [acc.accuracy_all(i) for i in range(3)], EXPECTED_ALL, rtol=RTOL
    )
    np.testing.assert_allclose(acc.average_accuracy(), EXPECTED_AVERAGE, rtol=RTOL)
    np.testing.assert_allclose(acc.final_accuracy(), EXPECTED_FINAL, rtol=RTOL)
    np.testing.assert_allclose(acc.forgetting(), EXPECTED_FORGETTING, rtol=RTOL)
    np.testing.assert_allclose(
        acc.experience_matrix(), EXPECTED_EXPERIENCE_MATRIX, rtol=RTOL
    )


def test_hand_computed_example():
    acc = filled()
    assert_matches_hand_computed(acc)
    assert acc.matrix.dtype == np.float64 and acc.matrix.shape == (3, 6)
    np.testing.assert_array_equal(acc.total, np.tile([4, 2, 2, 2, 2, 2], (3, 1)))
    assert isinstance(acc.forgetting(), float) and isinstance(acc.accuracy_seen(0), float)


def test_scores_are_argmaxed():
    # Logits whose argmax is the predicted label, with noise below the margin.
    rng = np.random.default_rng(0)
    scores = []
    for pred in Y_PRED:
        logits = rng.uniform(-1, 1, (len(pred), 6)).astype(np.float32)
        logits[np.arange(len(pred)), pred] = 5.0
        scores.append(logits)
    assert_matches_hand_computed(filled(scores))


def test_updates_accumulate_over_batches():
    acc = AccuracyMatrix(3, 6, experience_classes=EXPERIENCE_CLASSES)
    for i, pred in enumerate(Y_PRED):
        for start in range(0, len(Y_TRUE), 5):
            acc.update(
                Y_TRUE[start : start + 5], pred[start : start + 5], experience_index=i
            )
        acc.update(
            Y_TRUE[:0], pred[:0], experience_index=i
        )  # an empty batch changes nothing
    assert_matches_hand_computed(acc)


def test_unevaluated_entries_are_nan():
    acc = AccuracyMatrix(3, 6, experience_classes=EXPERIENCE_CLASSES)
    assert np.isnan(acc.matrix).all()
    seen = np.isin(Y_TRUE, [0, 1])
    acc.update(Y_TRUE[seen], Y_PRED[0][seen], experience_index=0)  # seen classes only
    np.testing.assert_allclose(acc.matrix[0, :2], [3 / 4, 1 / 2], rtol=RTOL)
    assert np.isnan(acc.matrix[0, 2:]).all() and np.isnan(acc.matrix[1:]).all()
    np.testing.assert_allclose(acc.accuracy_seen(0), 4 / 6, rtol=RTOL)
    np.testing.assert_allclose(acc.accuracy_all(0), 4 / 6, rtol=RTOL)  # evaluated ones
    assert math.isnan(acc.accuracy_seen(1)) and math.isnan(acc.final_accuracy())
    assert math.isnan(acc.average_accuracy())
    assert math.isnan(acc.forgetting())  # classes to judge, but no final accuracy
    assert np.isnan(acc.experience_matrix()[0, 1:]).all()


def test_forgetting_when_nothing_can_be_forgotten():
    single = AccuracyMatrix(1, 2, experience_classes=[(0, 1)])
    single.update([0, 1], [0, 0], experience_index=0)
    assert single.forgetting() == 0.0
    assert single.average_accuracy() == single.final_accuracy() == 0.5


def test_ni_forgetting_counts_all_classes_from_the_first_experience():
    # NI: both experiences train both classes. Class 0: 1 -> 1/2 (forgets 1/2),
    # class 1: 0 -> 1 (improves, -1): mean (1/2 - 1) / 2 = -1/4.
    acc = AccuracyMatrix(2, 2, experience_classes=[(0, 1), (0, 1)])
    acc.update([0, 0, 1, 1], [0, 0, 0, 0], experience_index=0)
    acc.update([0, 0, 1, 1], [0, 1, 1, 1], experience_index=1)
    np.testing.assert_allclose(acc.forgetting(), -0.25, rtol=RTOL)
    np.testing.assert_allclose(acc.accuracy_seen(0), 0.5, rtol=RTOL)


def test_to_dict_is_json_and_round_trips():
    acc = AccuracyMatrix(3, 6, experience_classes=EXPERIENCE_CLASSES)
    for i in range(2):  # last experience not evaluated: NaN entries become None
        acc.update(Y_TRUE, Y_PRED[i], experience_index=i)
    summary = json.loads(json.dumps(acc.to_dict(), allow_nan=False))
    assert summary["matrix"][2] == [None] * 6 and summary["final_accuracy"] is None
    assert summary["experience_classes"] == [[0, 1], [2, 3], [4, 5]]
    np.testing.assert_allclose(summary["matrix"][:2], EXPECTED_MATRIX[:2], rtol=RTOL)
    np.testing.assert_allclose(summary["accuracy_seen"][:2], EXPECTED_SEEN[:2], rtol=RTOL)
    assert summary["correct"][0] == [3, 1, 0, 2, 0, 0]
    restored = AccuracyMatrix.from_dict(summary)
    np.testing.assert_array_equal(restored.matrix, acc.matrix)
    restored.update(Y_TRUE, Y_PRED[2], experience_index=2)
    assert_matches_hand_computed(restored)
    bad = dict(summary, correct=np.tile(summary["total"][0], (3, 1)) + 1)
    with pytest.raises(ValueError, match="0 <= correct <= total"):
        AccuracyMatrix.from_dict(bad)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 6, []), "`n_experiences` is out of range; expected n_experiences >= 1"),
        ((3, 0, EXPERIENCE_CLASSES), "`num_classes` is out of range.*got 0"),
        ((2, 6, EXPERIENCE_CLASSES), "has the wrong length; expected one entry per"),
        (
            (3, 6, [(0, 1), (2, 6), (4, 5)]),
            r"`experience_classes\[1\]` has a class out of range; expected 0 <= class < "
            "num_classes=6, got 6",
        ),
        ((3, 6, [(0, 1), (2, -1), (4, 5)]), r"`experience_classes\[1\]` .*got -1"),
        ((3, 6, [(0, 1), (), (4, 5)]), r"`experience_classes\[1\]` is empty; expected"),
        ((3, 6, [(0, 0), (2, 3), (4, 5)]), "repeats a class"),
        ((3, 6, [(0, 1.5), (2, 3), (4, 5)]), "expected integer classes, got 1.5"),
    ],
)
def test_constructor_rejects_bad_arguments(args, match):
    n_experiences, num_classes, experience_classes = args
    with pytest.raises(ValueError, match=match):
        AccuracyMatrix(n_experiences, num_classes, experience_classes=experience_classes)


@pytest.mark.parametrize(
    "index, y_true, y_pred, match",
    [
        (3, Y_TRUE, Y_PRED[0], "expected 0 <= experience_index <= 2, got 3"),
        (-1, Y_TRUE, Y_PRED[0], "`experience_index` is out of range.*got -1"),
        (True, Y_TRUE, Y_PRED[0], "`experience_index` is not an int.*got True"),
        (0, Y_TRUE, Y_PRED[0][:-1], "`y_true` and `y_pred` differ.*got 14 and 13"),
        (0, Y_TRUE, np.zeros((14, 5)), r"`y_pred` has the wrong shape.*got \(14, 5\)"),
        (0, Y_TRUE, np.full((14, 6), np.nan), "`y_pred` holds NaN or infinite values"),
        (0, np.append(Y_TRUE[:-1], 6), Y_PRED[0], "`y_true` has a label out.*got 6"),
        (0, np.append(Y_TRUE[:-1], -1), Y_PRED[0], "`y_true` has a label out.*got -1"),
        (0, Y_TRUE, np.append(Y_PRED[0][:-1], 9), "`y_pred` has a label out.*got 9"),
        (0, Y_TRUE + 0.5, Y_PRED[0], "`y_true` holds a non-integer label"),
        (0, Y_TRUE, Y_PRED[0].astype(str), "`y_pred` is not an array of integer labels"),
    ],
)
def test_update_rejects_bad_inputs_and_keeps_state(index, y_true, y_pred, match):
    acc = AccuracyMatrix(3, 6, experience_classes=EXPERIENCE_CLASSES)
    acc.update(Y_TRUE, Y_PRED[0], experience_index=0)
    before = acc.matrix
    with pytest.raises(ValueError, match=match):
        acc.update(y_true, y_pred, experience_index=index)
    np.testing.assert_array_equal(acc.matrix, before)  # NaN compare equal here


@pytest.mark.parametrize("i", [-1, 3, 1.0])
def test_metric_index_is_validated(i):
    acc = filled()
    with pytest.raises(ValueError, match="`i` is "):
        acc.accuracy_seen(i)
    with pytest.raises(ValueError, match="`i` is "):
        acc.accuracy_all(i)
