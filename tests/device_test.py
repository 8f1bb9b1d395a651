"""DeviceLearner: parity with the Keras model, restarts, state files, bad inputs."""

import hashlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import zipfile

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
from device_fixtures import EXPERIENCES, digits_data, digits_run, experience_data

import larq_cwr.device
from larq_cwr import CWRStar
from larq_cwr.device import STATE_FORMAT_VERSION, DeviceLearner, batch_order

EPOCHS, BATCH_SIZE, LEARNING_RATE = 2, 32, 0.0025  # METHOD §4 reference learning rate
DEVICE_PY = pathlib.Path(larq_cwr.device.__file__)


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    return digits_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def data():
    return digits_data()


def _sha(path):
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _batches(x, y, order):
    """The batches of `batch_order` as one dataset: Keras sees the device's order."""
    parts = [tf.data.Dataset.from_tensors((x[b], y[b])) for epoch in order for b in epoch]
    dataset = parts[0]
    for part in parts[1:]:
        dataset = dataset.concatenate(part)
    return dataset


def _keras_model(run, *, upper):
    model = tf.keras.models.load_model(run / "model.keras")
    if upper:
        model = model.upper_model()
    model.compile(
        tf.keras.optimizers.SGD(LEARNING_RATE),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _learn_both(model, learner, data, *, keras_inputs):
    """Feed the stream's later experiences to a Keras model (with CWRStar, in the
    device's batch order, shuffle=False) and to the DeviceLearner."""
    for index, classes in enumerate(EXPERIENCES):
        x, y = experience_data(data, classes)
        order = batch_order(len(x), epochs=EPOCHS, batch_size=BATCH_SIZE, seed=index)
        inputs = keras_inputs(x)
        model.fit(
            _batches(inputs, y, order),
            epochs=1,
            shuffle=False,
            verbose=0,
            callbacks=[CWRStar(model.head, labels=y)],
        )
        learner.learn_experience(
            x,
            y,
            epochs=EPOCHS,
            batch_size=BATCH_SIZE,
            learning_rate=LEARNING_RATE,
            seed=index,
        )


def _sixteen_bit_step(kernel):
    """One step of the 16-bit zero-exact grid of `kernel`'s range."""
    return (max(kernel.max(), 0.0) - min(kernel.min(), 0.0)) / (2**16 - 1)


def test_device_matches_keras_head_on_the_exported_backbone_features(digits_export, data):
    """The Keras model's head path (``upper_model()``, what ``larq-cwr run`` trains on
    precomputed features) fed the exported backbone's features, against the device on
    images: the same hybrid 8/16 arithmetic gives the same consolidated weights."""
    run, export = digits_export
    learner = DeviceLearner(export)
    model = _keras_model(run, upper=True)
    _learn_both(model, learner, data, keras_inputs=learner.features)
    keras = model.head.consolidated_kernel
    device = learner.state()["consolidated_kernel"]
    assert np.abs(keras - device).max() <= _sixteen_bit_step(keras)  # measured: 0
    np.testing.assert_array_equal(learner.state()["past_counts"], model.head.past_counts)
    features = learner.features(data.x_test)
    agree = model.predict(features, verbose=0).argmax(1) == learner.predict(
        data.x_test
    ).argmax(1)
    assert agree.mean() >= 0.99


def test_device_matches_keras_model_on_images(digits_export, data):
    """The whole Keras model trained on images. Its features differ from LCE's by
    ~1e-5 relative (test_lce_features_match_keras_per_sample), which moves a few 8-bit
    feature levels by one; the per-tensor grids of the kernel spread such a change, so
    the kernels drift apart by many 16-bit steps but stay within 1% (relative L2; a
    consolidation without the sqrt weighting moves them by far more) and predict alike."""
    run, export = digits_export
    learner = DeviceLearner(export)
    model = _keras_model(run, upper=False)
    _learn_both(model, learner, data, keras_inputs=lambda x: x)
    keras = model.head.consolidated_kernel
    device = learner.state()["consolidated_kernel"]
    assert np.linalg.norm(keras - device) <= 0.01 * np.linalg.norm(keras)
    predicted = model.predict(data.x_test, verbose=0).argmax(1)
    assert np.mean(predicted == learner.predict(data.x_test).argmax(1)) >= 0.99
    assert learner.consolidated_experiences == model.head.consolidated_experiences == 4


# -- restarts and state files --------------------------------------------------------------


def _learn(learner, data, index):
    x, y = experience_data(data, EXPERIENCES[index])
    return learner.learn_experience(x, y, seed=index)  # the manifest's settings


def test_restart_from_state_file_continues_like_an_uninterrupted_run(
    digits_export, data, tmp_path
):
    _, export = digits_export
    uninterrupted = DeviceLearner(export)
    for index in range(3):
        _learn(uninterrupted, data, index)
    state_path = tmp_path / "state.npz"
    for index in range(3):  # a new process per experience: restore, learn, save
        learner = DeviceLearner(export, state_path=state_path)
        assert learner.consolidated_experiences == 1 + index
        _learn(learner, data, index)
    restored = DeviceLearner(export, state_path=state_path).state()
    for name, value in uninterrupted.state().items():
        np.testing.assert_array_equal(restored[name], value, err_msg=name)


_KILLED_CHILD = """
import importlib.util, json, os, signal, sys
import numpy as np

# What any TFLite + LCE interpreter user loads. (Importing TensorFlow also loads Keras'
# optimizers module, TensorFlow's own import-time side effect.)
import tensorflow, larq_compute_engine.tflite.python.interpreter
before = set(sys.modules)
spec = importlib.util.spec_from_file_location("device", sys.argv[1])
device = importlib.util.module_from_spec(spec)
sys.modules["device"] = device
spec.loader.exec_module(device)  # device.py alone: no larq_cwr package
learner = device.DeviceLearner(sys.argv[2], state_path=sys.argv[3])
with np.load(sys.argv[4]) as stream:
    experiences = [(stream[f"x{i}"], stream[f"y{i}"]) for i in range(2)]
learner.learn_experience(*experiences[0], seed=0)
keras = ("keras", "tf_keras", "larq", "larq_zoo", "larq_cwr")
loaded = {
    "added": sorted(m for m in set(sys.modules) - before if m.split(".")[0] in keras),
    "training": sorted(m for m in sys.modules if m.split(".")[0] in keras[1:]),
}
print(json.dumps(loaded), flush=True)
train = learner._runners["train"]
steps = []

def train_then_lose_power(**inputs):
    steps.append(1)
    if len(steps) == 3:  # mid-experience
        os.kill(os.getpid(), signal.SIGKILL)
    return train(**inputs)

learner._runners["train"] = train_then_lose_power
learner.learn_experience(*experiences[1], seed=1)
"""


def test_power_loss_mid_experience_keeps_the_last_state_and_no_training_code(
    digits_export, data, tmp_path
):
    _, export = digits_export
    stream = {}
    for index in range(2):
        stream[f"x{index}"], stream[f"y{index}"] = experience_data(data, EXPERIENCES[index])
    np.savez(tmp_path / "stream.npz", **stream)
    state_path = tmp_path / "state.npz"
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            _KILLED_CHILD,
            str(DEVICE_PY),
            str(export),
            str(state_path),
            str(tmp_path / "stream.npz"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert completed.returncode == -signal.SIGKILL, completed.stderr[-3000:]
    # The device runner loaded no Keras model code, no larq and no larq_cwr module.
    loaded = json.loads(completed.stdout.splitlines()[-1])
    assert loaded == {"added": [], "training": []}
    reference = DeviceLearner(export)
    _learn(reference, data, 0)
    after_power_loss = DeviceLearner(export, state_path=state_path)
    for name, value in reference.state().items():  # the file of experience 0
        np.testing.assert_array_equal(after_power_loss.state()[name], value)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    for learner in (reference, after_power_loss):  # redo the interrupted experience
        _learn(learner, data, 1)
    for name, value in reference.state().items():
        np.testing.assert_array_equal(after_power_loss.state()[name], value)


@pytest.fixture(scope="module")
def saved_state(digits_export, data, tmp_path_factory):
    """A state file after experience 0 (learned once per module)."""
    _, export = digits_export
    path = tmp_path_factory.mktemp("saved") / "state.npz"
    _learn(DeviceLearner(export, state_path=path), data, 0)
    return path


def _saved_state(export, saved_state, directory):
    """A learner restored from a copy of `saved_state` in `directory`."""
    path = directory / "state.npz"
    shutil.copy(saved_state, path)
    return DeviceLearner(export, state_path=path), path


def _rewrite(path, **changes):
    with np.load(path) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays.update(changes)
    np.savez(path, **arrays)


def _drop(path, name):
    with np.load(path) as archive:
        arrays = {n: archive[n] for n in archive.files if n != name}
    np.savez(path, **arrays)


def _lone_array(path):
    with open(path, "wb") as file:
        np.save(file, np.zeros(3))


def _truncated(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the kernel's bytes: CRC-32 mismatch
    path.write_bytes(bytes(data))


BAD_STATE_FILES = {
    "truncated": (_truncated, "unreadable"),
    "corrupt": (_corrupt, "unreadable"),
    "empty": (lambda p: p.write_bytes(b""), "unreadable"),
    "not an archive": (lambda p: p.write_text('{"kernel": 1}'), "unreadable"),
    "lone array": (_lone_array, "not a state archive"),
    "other export": (
        lambda p: _rewrite(p, model_id=np.array("0" * 64)),
        "saved for another export",
    ),
    "other shape": (
        lambda p: _rewrite(p, **{"state.kernel": np.zeros((128, 10), np.float32)}),
        r"kernel of shape \(128, 10\).*expected shape \(256, 10\)",
    ),
    "other dtype": (
        lambda p: _rewrite(p, **{"state.past_counts": np.zeros(10, np.int32)}),
        "past_counts of shape .* dtype int32",
    ),
    "missing array": (
        lambda p: _drop(p, "state.noise_counter"),
        r"missing \['noise_counter'\]",
    ),
    "newer format": (
        lambda p: _rewrite(p, format_version=np.array(STATE_FORMAT_VERSION + 1)),
        "format_version",
    ),
    "NaN kernel": (
        lambda p: _rewrite(p, **{"state.kernel": np.full((256, 10), np.nan, np.float32)}),
        "non-finite",
    ),
}


@pytest.mark.parametrize("case", list(BAD_STATE_FILES))
def test_bad_state_file_is_refused_and_kept(digits_export, saved_state, tmp_path, case):
    _, export = digits_export
    damage, message = BAD_STATE_FILES[case]
    learner, path = _saved_state(export, saved_state, tmp_path)
    damage(path)
    before, state = _sha(path), learner.state()
    with pytest.raises(ValueError, match=message) as error:
        DeviceLearner(export, state_path=path)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match=message):
        learner.load_state(path)
    assert _sha(path) == before  # left as it was, for inspection
    for name, value in learner.state().items():
        np.testing.assert_array_equal(value, state[name])


def test_failed_save_keeps_the_previous_file(
    digits_export, data, saved_state, tmp_path, monkeypatch
):
    _, export = digits_export
    learner, path = _saved_state(export, saved_state, tmp_path)
    before = _sha(path)

    def power_loss(source, target):
        raise OSError("power loss before the rename")

    monkeypatch.setattr(os, "replace", power_loss)
    with pytest.raises(OSError, match="power loss"):
        _learn(learner, data, 1)
    monkeypatch.undo()
    assert _sha(path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.npz"]  # no temp file
    with zipfile.ZipFile(path) as archive:
        assert archive.testzip() is None


def test_state_file_holds_version_model_id_and_no_pickle(digits_export, saved_state):
    _, export = digits_export
    with np.load(saved_state, allow_pickle=False) as archive:
        assert int(archive["format_version"]) == STATE_FORMAT_VERSION
        manifest = json.loads((export / "manifest.json").read_text())
        assert str(archive["model_id"]) == manifest["files"]["head.tflite"]["sha256"]
        assert all(archive[name].dtype != object for name in archive.files)


def test_corrupt_export_is_refused(digits_export, tmp_path):
    _, export = digits_export
    copy = shutil.copytree(export, tmp_path / "export")
    head = bytearray((copy / "head.tflite").read_bytes())
    head[-100] ^= 0x01
    (copy / "head.tflite").write_bytes(bytes(head))
    with pytest.raises(ValueError, match="head.tflite.*SHA-256 differs"):
        DeviceLearner(copy)


# -- bad inputs ----------------------------------------------------------------------------


def _bad_inputs(data):
    x, y = experience_data(data, EXPERIENCES[0])
    nan = x.copy()
    nan[3, 5, 5, 0] = np.nan
    return {
        "float64 images": ((x.astype(np.float64), y), {}, "float32"),
        "uint8 images": (((x * 255).astype(np.uint8), y), {}, "float32"),
        "images 0-255": ((x * 255, y), {}, r"values in \[0, 1\]"),
        "no batch axis": ((x[0], y[:1]), {}, "shape"),
        "wrong size": ((x[:, :8, :8], y), {}, r"shape \(n, 16, 16, 1\)"),
        "NaN image": ((nan, y), {}, "NaN"),
        "label 10": ((x, np.where(y == y[0], 10, y)), {}, "has class 10"),
        "negative label": ((x, y - 10), {}, "has class -"),
        "float labels": ((x, y.astype(np.float32)), {}, "integer class indices"),
        "labels too short": ((x, y[:-1]), {}, "one per image"),
        "zero epochs": ((x, y), {"epochs": 0}, "epochs"),
        "NaN learning rate": ((x, y), {"learning_rate": float("nan")}, "learning_rate"),
        "negative seed": ((x, y), {"seed": -1}, "seed"),
    }


@pytest.mark.parametrize("case", list(_bad_inputs(digits_data())))
def test_bad_input_is_refused_before_any_state_change(
    digits_export, data, saved_state, tmp_path, case
):
    _, export = digits_export
    (images, labels), options, message = _bad_inputs(data)[case]
    learner, path = _saved_state(export, saved_state, tmp_path)
    before, state = _sha(path), learner.state()
    with pytest.raises(ValueError, match=message):
        learner.learn_experience(images, labels, **options)
    if case in ("float64 images", "uint8 images", "wrong size", "NaN image"):
        with pytest.raises(ValueError, match=message):
            learner.predict(images)
    assert _sha(path) == before
    for name, value in learner.state().items():
        np.testing.assert_array_equal(value, state[name])


def test_batch_order_is_seeded_and_covers_every_sample():
    first = batch_order(103, epochs=3, batch_size=50, seed=5)
    again = batch_order(103, epochs=3, batch_size=50, seed=5)
    assert [len(b) for b in first[0]] == [50, 50, 3]
    for epoch, same in zip(first, again):
        assert sorted(np.concatenate(epoch)) == list(range(103))
        assert all(np.array_equal(a, b) for a, b in zip(epoch, same))
    assert not np.array_equal(first[0][0], first[1][0])  # reshuffled each epoch
    other = batch_order(103, epochs=1, batch_size=50, seed=6)
    assert not np.array_equal(first[0][0], other[0][0])
    with pytest.raises(ValueError, match="batch_size"):
        batch_order(10, epochs=1, batch_size=0, seed=0)
