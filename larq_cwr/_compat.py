"""Keras 2 guard: larq needs tf-keras (Keras 2), which TensorFlow 2.16+ only loads
when ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is imported."""

import os
import sys

LEGACY_KERAS_VARIABLE = "TF_USE_LEGACY_KERAS"
_TRUE_VALUES = ("1", "true", "True")  # the values TensorFlow's lazy loader accepts

_FIX = (
    "Set the environment variable TF_USE_LEGACY_KERAS=1 before TensorFlow is imported "
    "(for example `export TF_USE_LEGACY_KERAS=1`, or `import larq_cwr` before "
    "`import tensorflow`), and install tf-keras matching your TensorFlow "
    "(`pip install tf-keras~=2.19.0`)."
)


def _legacy_keras_requested() -> bool:
    return os.environ.get(LEGACY_KERAS_VARIABLE, "") in _TRUE_VALUES


def ensure_legacy_keras() -> None:
    """Arrange for ``tf.keras`` to be Keras 2, or explain why it cannot be.

    Raises:
        ImportError: TensorFlow was already imported with Keras 3 as ``tf.keras``,
            or ``TF_USE_LEGACY_KERAS`` is set to a false value.
    """
    value = os.environ.get(LEGACY_KERAS_VARIABLE)
    if value is not None and not _legacy_keras_requested():
        raise ImportError(
            f"larq_cwr needs Keras 2 (tf-keras) but {LEGACY_KERAS_VARIABLE}={value!r} "
            f"asks TensorFlow for Keras 3. {_FIX}"
        )
    if "tensorflow" not in sys.modules:
        os.environ[LEGACY_KERAS_VARIABLE] = "1"
        return
    if value is None:
        # TensorFlow binds `tensorflow.keras` imports at its own import time, so the
        # variable cannot be set after the fact (larq's imports would get Keras 3).
        raise ImportError(
            "larq_cwr needs Keras 2 (tf-keras), but TensorFlow was imported before "
            f"larq_cwr without {LEGACY_KERAS_VARIABLE}=1, so `tf.keras` is Keras 3, "
            f"which larq cannot use. {_FIX}"
        )
    keras_version = _loaded_keras_version()
    if keras_version is not None and not keras_version.startswith("2"):
        raise ImportError(
            "larq_cwr needs Keras 2 (tf-keras), but TensorFlow was already imported "
            f"with Keras {keras_version} as `tf.keras`, which larq cannot use. "
            f"Import larq_cwr first, in a new Python process. {_FIX}"
        )


def _loaded_keras_version() -> "str | None":
    """Version of the Keras that the already-imported ``tensorflow`` serves as tf.keras."""
    tf = sys.modules["tensorflow"]
    try:
        keras = tf.keras
        if keras.Model.__module__.startswith("tf_keras"):
            return "2 (tf-keras)"
        return str(keras.__version__)
    except (AttributeError, ImportError):  # TensorFlow still importing, or no Keras at all
        return None
