"""The Keras 2 guard, each case in a fresh interpreter (TensorFlow can load only once)."""

import os
import subprocess
import sys

import pytest


def _run(code, **env):
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    environment.update(env, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )


def test_import_first_gives_keras_2_and_larq_works():
    done = _run(
        "import os, larq_cwr, tensorflow as tf, larq;"
        "print(os.environ['TF_USE_LEGACY_KERAS'], tf.keras.Model.__module__)"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["1", "tf_keras.src.engine.training"]


def test_tensorflow_imported_first_with_keras_3_raises_clear_error():
    done = _run("import tensorflow; import larq_cwr")
    assert done.returncode != 0
    assert "ImportError" in done.stderr and "TF_USE_LEGACY_KERAS=1" in done.stderr


@pytest.mark.parametrize("value", ["0", "false"])
def test_variable_asking_for_keras_3_raises(value):
    done = _run("import larq_cwr", TF_USE_LEGACY_KERAS=value)
    assert done.returncode != 0 and f"TF_USE_LEGACY_KERAS={value!r}" in done.stderr


def test_tensorflow_first_with_variable_set_is_accepted():
    done = _run("import tensorflow, larq_cwr, larq; print('ok')", TF_USE_LEGACY_KERAS="1")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
