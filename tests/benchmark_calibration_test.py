"""The calibration measures of `benchmarks/calibration.py`, on a hand-computed case."""

import pathlib
import sys

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
from calibration import calibration  # noqa: E402


def test_calibration_measures_by_hand():
    # Column norms 5 (the first experience's class 0), then 1, 2, 3: ratio 5 / 2.
    kernel = np.array([[3.0, 1.0, 0.0, 0.0], [4.0, 0.0, 2.0, 3.0]])
    labels = np.array([0, 1, 0, 1, 2, 3, 3, 2])
    predicted = np.array([0, 0, 0, 1, 2, 3, 0, 1])
    result = calibration(kernel, predicted, labels, [0], 4)
    # Predicted shares 1/2, 1/4, 1/8, 1/8: entropy 1.75 bits of 2.
    assert result == pytest.approx(
        {
            "norm_ratio": 2.5,
            "first_share": 0.5,
            "top_share": 0.5,
            "entropy": 0.875,
            "first_accuracy": 1.0,  # both class-0 images right
            "later_accuracy": 0.5,  # one of the two images of each of 1, 2, 3
        },
        abs=1e-9,
    )


def test_uniform_predictions_have_entropy_one():
    labels = np.repeat(np.arange(10), 3)
    result = calibration(np.ones((4, 10)), labels, labels, [0, 1], 10)
    assert result["entropy"] == pytest.approx(1.0, abs=1e-9)
    assert result["norm_ratio"] == pytest.approx(1.0, abs=1e-9)
    assert result["first_share"] == pytest.approx(0.2, abs=1e-9)
