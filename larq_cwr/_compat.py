"""Keras 2 guard: larq needs tf-keras (Keras 2), which TensorFlow 2.16+ only loads
when ``TF_USE_LEGACY_KERAS=1`` is set before TensorFlow is imported."""

import importlib
import os
import re
import sys
import tempfile

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


# TensorFlow's C++ start-up lines that say nothing about the user's run: CUDA plugins
# registered twice or absent on a CPU machine, absl's pre-init notice, CPU features,
# oneDNN's notice that it is on (CPUs with AVX-512 and the like).
# TF_CPP_MIN_LOG_LEVEL does not silence them (absl writes before it is configured).
_STARTUP_NOISE = re.compile(
    r"cuda_(dnn|blas|fft|platform)\.cc|cudart_stub\.cc|computation_placer\.cc|"
    r"absl::InitializeLog|cpu_feature_guard\.cc|"
    r"To enable the following instructions|rebuild TensorFlow with the appropriate|"
    r"oneDNN custom operations are on"
)


def import_tensorflow_quietly() -> None:
    """Import TensorFlow with its C++ start-up noise filtered out of stderr.

    The import writes to file descriptor 2 from C++, below Python's ``sys.stderr``, so
    the descriptor is pointed at a temporary file while TensorFlow loads; afterwards
    every captured line except the known start-up noise (``_STARTUP_NOISE``) is written
    to stderr, so real warnings and errors still reach the user. A no-op when
    TensorFlow is already imported.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable descriptor 2
        importlib.import_module("tensorflow")
        return
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            tensorflow = importlib.import_module("tensorflow")
            # Device discovery (CUDA's init failure on a CPU machine) happens here too,
            # not at the first op; it leaves threading and device options settable.
            tensorflow.config.list_physical_devices()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", "replace").splitlines(keepends=True)
            kept = "".join(line for line in lines if not _STARTUP_NOISE.search(line))
            if kept:
                sys.stderr.write(kept)
                sys.stderr.flush()
