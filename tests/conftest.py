"""Shared fixtures: seeded sklearn digits and a clean Keras session per test."""

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits


@pytest.fixture(autouse=True)
def _clear_keras_session():
    tf.keras.backend.clear_session()
    yield
    tf.keras.backend.clear_session()


@pytest.fixture(scope="module")
def digits():
    """(x, y): 1,797 digits as float32 (n, 8, 8, 1) in [0, 1] and int32 labels."""
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[..., None]
    return x, data.target.astype(np.int32)
