"""One table of bad inputs across larq_cwr's public entry points (issue 10, item 2).

Each row names an entry point, a bad input, the error it must raise (type, and text its
message must hold) and is checked for "nothing saved changed": the weights of the head,
replay memory or backbone the call was given, the arrays passed in, and every file and
folder under the test's temporary directory (compared byte for byte).

A row marked ``xfail`` is an entry point outside the checks' modules that misbehaves
today (a traceback instead of a clear error, or no error): its reason says what happens.

``docs/errors.md`` is generated from the same rows: ``python tests/bad_inputs_test.py``
rewrites its table, and `test_errors_doc_lists_every_row` fails when it is stale.
"""

from __future__ import annotations

import dataclasses
import pathlib
import pickle
import re
import sys
from typing import Any, Callable, NamedTuple

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
from dataset_fakes import (
    cifar_jpeg_members,
    make_idx_arrays,
    write_cifar_pickles,
    write_core50,
    write_idx_dir,
    write_tarball,
)

from larq_cwr import CWRStar, CWRStarHead, HybridQuantizedTrainStep, count_classes, datasets
from larq_cwr.backbones import build_backbone, save_backbone
from larq_cwr.experiment import TrainingConfig
from larq_cwr.metrics import AccuracyMatrix
from larq_cwr.pretraining import pretrain, pretrain_backbone
from larq_cwr.replay import LatentReplayMemory
from larq_cwr.scenarios import Experience, make_scenario, nc_scenario

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "errors.md"
BEGIN, END = "<!-- begin bad-inputs table -->", "<!-- end bad-inputs table -->"

NUM_CLASSES = 3
FEATURES = 4
IMAGE_SHAPE = (16, 16, 1)  # the smallest bnn32 input the pretraining rows build


class Case(NamedTuple):
    """What a row runs: ``call()`` must raise; ``saved()`` is compared before/after."""

    call: Callable[[], Any]
    saved: Callable[[], dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class Row:
    id: str
    kind: str
    entry: str
    bad_input: str
    error: type[Exception]
    message: str  # text the message must hold (the start of it, or a telling part)
    setup: Callable[[pathlib.Path], Case]
    xfail: str = ""  # why the entry point misbehaves today; empty: it behaves


# --- saved state ------------------------------------------------------------------------


def _weights(layer: tf.keras.layers.Layer) -> dict[str, np.ndarray]:
    return {f"{i}:{w.name}": w.numpy().copy() for i, w in enumerate(layer.weights)}


def _arrays(**arrays: Any) -> Callable[[], dict[str, np.ndarray]]:
    """The arrays passed in, copied when ``saved()`` is called."""
    return lambda: {name: np.array(value, copy=True) for name, value in arrays.items()}


def _files(root: pathlib.Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) below ``root``."""
    return {
        str(path.relative_to(root)): (path.read_bytes() if path.is_file() else None)
        for path in sorted(root.rglob("*"))
    }


def _assert_unchanged(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before.keys() == after.keys()
    for key, old in before.items():
        if isinstance(old, np.ndarray):
            np.testing.assert_array_equal(after[key], old, err_msg=key)
        else:
            assert after[key] == old, key


# --- objects the rows work on -----------------------------------------------------------


def _head() -> CWRStarHead:
    """A built head after one consolidated experience: non-zero state to protect."""
    head = CWRStarHead(NUM_CLASSES, name="head")
    head.build((None, FEATURES))
    head.begin_experience({0: 10, 1: 30})
    head.kernel.assign(np.arange(FEATURES * NUM_CLASSES, dtype=np.float32).reshape(4, 3))
    head.consolidate()
    head.load_consolidated()
    return head


def _memory() -> LatentReplayMemory:
    memory = LatentReplayMemory(6, NUM_CLASSES, latent_shape=(FEATURES,), seed=1)
    latents = np.random.default_rng(0).normal(size=(8, FEATURES)).astype(np.float32)
    memory.update(latents, np.arange(8) % NUM_CLASSES)
    return memory


def _latents(n: int = 5) -> np.ndarray:
    return np.random.default_rng(1).normal(size=(n, FEATURES)).astype(np.float32)


def _data(n_per_class: int = 4, shape: tuple[int, ...] = (2,)) -> dict[str, np.ndarray]:
    """A tiny NUM_CLASSES-class data set (train and test) for the scenario rows."""
    rng = np.random.default_rng(2)
    y = np.repeat(np.arange(NUM_CLASSES), n_per_class)
    return {
        "x_train": rng.random((len(y), *shape)).astype(np.float32),
        "y_train": y,
        "x_test": rng.random((len(y), *shape)).astype(np.float32),
        "y_test": y.copy(),
    }


def _scenario_case(**changes: Any) -> Callable[[pathlib.Path], Case]:
    """``nc_scenario`` on `_data` with ``changes`` (arrays or keyword arguments)."""

    def setup(tmp_path: pathlib.Path) -> Case:
        arguments = {**_data(), "n_experiences": NUM_CLASSES, **changes}
        arrays = {k: v for k, v in arguments.items() if isinstance(v, np.ndarray)}
        return Case(lambda: nc_scenario(**arguments), _arrays(**arrays))

    return setup


def _experience() -> Experience:
    data = _data()
    return nc_scenario(**data, n_experiences=1)[0]


def _accuracy_case(index: Any, y_true: Any, y_pred: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        acc = AccuracyMatrix(2, NUM_CLASSES, experience_classes=[[0, 1], [2]])
        acc.update([0, 1, 1], [0, 1, 0], experience_index=0)

        def saved() -> dict[str, np.ndarray]:
            return {"correct": acc.correct, "total": acc.total}

        return Case(lambda: acc.update(y_true, y_pred, experience_index=index), saved)

    return setup


def _head_case(counts: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        head = _head()
        return Case(lambda: head.begin_experience(counts), lambda: _weights(head))

    return setup


def _callback_case(**kwargs: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        head = _head()
        return Case(lambda: CWRStar(head, **kwargs), lambda: _weights(head))

    return setup


def _count_case(labels: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        return Case(lambda: count_classes(labels, NUM_CLASSES), _arrays(labels=labels))

    return setup


def _hybrid_case(**kwargs: Any) -> Callable[[pathlib.Path], Case]:
    """``HybridQuantizedTrainStep`` around a used head (and a filled replay memory)."""

    def setup(tmp_path: pathlib.Path) -> Case:
        head, memory = _head(), _memory()
        inputs = tf.keras.Input((FEATURES,))
        outputs = head(inputs)
        arguments = {k: (memory if v == "memory" else v) for k, v in kwargs.items()}

        def saved() -> dict[str, Any]:
            return {**_weights(head), **_weights(memory)}

        return Case(lambda: HybridQuantizedTrainStep(inputs, outputs, **arguments), saved)

    return setup


def _replay_case(latents: Any, labels: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        memory = _memory()
        return Case(lambda: memory.update(latents, labels), lambda: _weights(memory))

    return setup


def _images(n: int = 24, shape: tuple[int, ...] = IMAGE_SHAPE) -> np.ndarray:
    return np.random.default_rng(3).random((n, *shape)).astype(np.float32)


def _pretrain_case(
    x: Any = None, y: Any = None, **kwargs: Any
) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        tf.keras.utils.set_random_seed(0)
        backbone = build_backbone("bnn32", input_shape=IMAGE_SHAPE)
        images = _images() if x is None else x
        labels = np.arange(len(images)) % 2 if y is None else y
        return Case(
            lambda: pretrain_backbone(
                images, labels, backbone=backbone, epochs=1, **kwargs
            ),
            lambda: {**_weights(backbone), **_arrays(x=images, y=labels)()},
        )

    return setup


def _pretrain_name_case(tmp_path: pathlib.Path) -> Case:
    x, y = _images(), np.arange(24) % 2
    out = tmp_path / "pretrained.h5"
    return Case(lambda: pretrain(x, y, name="bnn32", epochs=0, out_path=out), dict)


def _truncate(path: pathlib.Path, size: int | None) -> pathlib.Path:
    """Keeps the first ``size`` bytes of ``path`` (negative: drops the last; None: half)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if size is None else size])
    return path


def _weights_file(kind: str) -> Callable[[pathlib.Path], Case]:
    """``build_backbone("bnn32", weights=...)`` with a weights file of ``kind``."""

    def setup(tmp_path: pathlib.Path) -> Case:
        shape = IMAGE_SHAPE
        path = tmp_path / "weights.h5"
        if kind in ("truncated", "empty", "other channels", "checkpoint"):
            saved_shape = (16, 16, 3) if kind == "other channels" else shape
            model = build_backbone("bnn32", input_shape=saved_shape)
            if kind == "checkpoint":
                path = tmp_path / "checkpoint" / "backbone"
            save_backbone(model, path)
            if kind == "checkpoint":
                _truncate(pathlib.Path(f"{path}.index"), None)
            if kind == "truncated":
                _truncate(path, None)
            if kind == "empty":
                path.write_bytes(b"")
        elif kind == "other version":
            # A bnn32 of another version: one more weighted layer on its features.
            model = build_backbone("bnn32", input_shape=shape)
            extra = tf.keras.layers.BatchNormalization(name="features_bn")(model.output)
            tf.keras.Model(model.input, extra).save_weights(str(path))
        elif kind == "foreign":
            path.write_bytes(b"<html>404 Not Found</html>\n" * 8)
        tf.keras.backend.clear_session()
        return Case(lambda: build_backbone("bnn32", input_shape=shape, weights=path), dict)

    return setup


def _loader_case(
    load: Callable[..., Any], prepare: Callable[[pathlib.Path], pathlib.Path], **kwargs: Any
) -> Callable[[pathlib.Path], Case]:
    """``load(prepare(tmp_path), cache_dir=<tmp_path>/cache, **kwargs)``."""

    def setup(tmp_path: pathlib.Path) -> Case:
        source, cache = prepare(tmp_path), tmp_path / "cache"
        return Case(lambda: load(source, cache_dir=cache, **kwargs), dict)

    return setup


def _mnist_label_10(tmp_path: pathlib.Path) -> pathlib.Path:
    arrays = make_idx_arrays()
    arrays["train-labels-idx1-ubyte"][3] = 10
    return write_idx_dir(tmp_path / "mnist", arrays)


def _mnist_label_short(tmp_path: pathlib.Path) -> pathlib.Path:
    arrays = make_idx_arrays()
    arrays["t10k-labels-idx1-ubyte"] = arrays["t10k-labels-idx1-ubyte"][:-1]
    return write_idx_dir(tmp_path / "mnist", arrays)


def _mnist_truncated(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = write_idx_dir(tmp_path / "mnist", make_idx_arrays())
    _truncate(directory / "train-images-idx3-ubyte", -7)
    return directory


def _cifar_label_12(tmp_path: pathlib.Path) -> pathlib.Path:
    write_cifar_pickles(tmp_path / "cifar")
    path = tmp_path / "cifar" / "data_batch_1"
    batch = pickle.loads(path.read_bytes())
    batch[b"labels"][0] = 12
    path.write_bytes(pickle.dumps(batch))
    return path.parent


def _cifar_truncated_pickle(tmp_path: pathlib.Path) -> pathlib.Path:
    write_cifar_pickles(tmp_path / "cifar")
    return _truncate(tmp_path / "cifar" / "data_batch_2", 100).parent


def _cifar_truncated_tarball(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / datasets.CIFAR10_JPEG_ARCHIVE
    return _truncate(write_tarball(path, cifar_jpeg_members()), -300)


def _core50(tmp_path: pathlib.Path) -> pathlib.Path:
    write_core50(tmp_path / "core50")
    return tmp_path / "core50"


def _core50_foreign_npz(tmp_path: pathlib.Path) -> pathlib.Path:
    directory = _core50(tmp_path)
    (directory / "core50_imgs.npz").write_bytes(b"PK\x03\x04 not a zip archive")
    return directory


def _foreign_idx_case(tmp_path: pathlib.Path) -> Case:
    path = tmp_path / "labels-idx1-ubyte"
    path.write_text("label\n0\n1\n")  # a CSV saved under an IDX name
    return Case(lambda: datasets.read_idx(path), dict)


def _image_dataset_case(**changes: Any) -> Callable[[pathlib.Path], Case]:
    def setup(tmp_path: pathlib.Path) -> Case:
        arrays = {
            "x_train": np.zeros((4, 2, 2, 1), np.float32),
            "y_train": np.array([0, 1, 2, 1], np.int32),
            "x_test": np.zeros((2, 2, 2, 1), np.float32),
            "y_test": np.array([2, 0], np.int32),
            **changes,
        }
        return Case(
            lambda: datasets.ImageDataset(name="toy", class_names="abc", **arrays),
            _arrays(**arrays),
        )

    return setup


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any):
    """A row setup calling ``function`` with nothing saved to protect but files."""
    return lambda tmp_path: Case(lambda: function(*args, **kwargs), dict)


def _nan(array: np.ndarray, index: tuple[int, ...]) -> np.ndarray:
    array = array.copy()
    array[index] = np.nan
    return array


# --- the table --------------------------------------------------------------------------

E_LABEL = "has a label out of range; expected 0 <= label < num_classes=3, got "
WEIGHTS = "backbones.build_backbone(weights=...)"

ROWS: tuple[Row, ...] = (
    # labels out of range
    Row(
        "count-label-3",
        "labels out of range",
        "count_classes",
        "labels [0, 3], 3 classes",
        ValueError,
        "`labels` " + E_LABEL + "3",
        _count_case([0, 3]),
    ),
    Row(
        "cwrstar-label-11",
        "labels out of range",
        "CWRStar(head, labels=...)",
        "labels [0, 11] for a 3-class head",
        ValueError,
        "`labels` " + E_LABEL + "11",
        _callback_case(labels=[0, 11]),
    ),
    Row(
        "head-class-3",
        "labels out of range",
        "CWRStarHead.begin_experience",
        "class_counts {3: 5} for a 3-class head",
        ValueError,
        "`class_counts.keys()` has a class out of range; expected 0 <= class < "
        "num_classes=3, got 3",
        _head_case({3: 5}),
    ),
    Row(
        "replay-label-9",
        "labels out of range",
        "replay.LatentReplayMemory.update",
        "labels with class 9, memory of 3 classes",
        ValueError,
        "`labels` has class 9; expected 0 <= class < num_classes=3",
        _replay_case(_latents(3), [0, 9, 1]),
    ),
    Row(
        "nc-label-3",
        "labels out of range",
        "scenarios.nc_scenario",
        "y_train holding label 3 with num_classes=3",
        ValueError,
        "`y_train` " + E_LABEL + "3",
        _scenario_case(y_train=np.append(_data()["y_train"][:-1], 3), num_classes=3),
    ),
    Row(
        "accuracy-label-5",
        "labels out of range",
        "metrics.AccuracyMatrix.update",
        "y_true holding 5, 3 classes",
        ValueError,
        "`y_true` " + E_LABEL + "5",
        _accuracy_case(1, [0, 5], [0, 1]),
    ),
    Row(
        "pretrain-label-negative",
        "labels out of range",
        "pretraining.pretrain_backbone",
        "y holding -1",
        ValueError,
        "`y` has a label out of range; expected 0 <= label <= 2147483647, got -1",
        _pretrain_case(y=np.where(np.arange(24) % 2, 1, -1)),
    ),
    Row(
        "mnist-label-10",
        "labels out of range",
        "datasets.load_mnist",
        "IDX labels holding 10",
        ValueError,
        "`train-labels-idx1-ubyte` has a label out of range; expected 0 <= label < "
        "num_classes=10, got 10",
        _loader_case(datasets.load_mnist, _mnist_label_10),
    ),
    Row(
        "cifar-label-12",
        "labels out of range",
        "datasets.load_cifar10",
        "pickled batch holding label 12",
        ValueError,
        "data_batch_1:labels` has a label out of range; expected 0 <= label < "
        "num_classes=10, got 12",
        _loader_case(datasets.load_cifar10, _cifar_label_12),
    ),
    Row(
        "image-dataset-label-3",
        "labels out of range",
        "datasets.ImageDataset",
        "y_test holding 3, 3 class names",
        ValueError,
        "`y_test` " + E_LABEL + "3",
        _image_dataset_case(y_test=np.array([3, 0], np.int32)),
    ),
    # labels of the wrong dtype
    Row(
        "count-strings",
        "labels: strings",
        "count_classes",
        'labels ["a", "b"]',
        ValueError,
        "`labels` is not an array of integer labels; expected integers (or "
        "integral floats), got dtype <U1",
        _count_case(np.array(["a", "b"])),
    ),
    Row(
        "nc-strings",
        "labels: strings",
        "scenarios.nc_scenario",
        "string y_train",
        ValueError,
        "`y_train` is not an array of integer labels",
        _scenario_case(y_train=_data()["y_train"].astype(str)),
    ),
    Row(
        "replay-strings",
        "labels: strings",
        "replay.LatentReplayMemory.update",
        'labels ["a", "b", "c"]',
        ValueError,
        "`labels` must be integer class indices",
        _replay_case(_latents(3), np.array(["a", "b", "c"])),
    ),
    Row(
        "accuracy-float",
        "labels: non-integral floats",
        "metrics.AccuracyMatrix.update",
        "y_pred [0.5, 1.0]",
        ValueError,
        "`y_pred` holds a non-integer label; expected integer labels, got 0.5",
        _accuracy_case(1, [0, 1], [0.5, 1.0]),
    ),
    Row(
        "cwrstar-float",
        "labels: non-integral floats",
        "CWRStar(head, labels=...)",
        "labels [0.5, 1]",
        ValueError,
        "`labels` holds a non-integer label",
        _callback_case(labels=[0.5, 1]),
    ),
    Row(
        "replay-float",
        "labels: non-integral floats",
        "replay.LatentReplayMemory.update",
        "labels [0, 1.5, 2]",
        ValueError,
        "`labels` must be integer class indices",
        _replay_case(_latents(3), [0, 1.5, 2]),
    ),
    Row(
        "pretrain-float",
        "labels: non-integral floats",
        "pretraining.pretrain_backbone",
        "y + 0.5",
        ValueError,
        "`y` holds a non-integer label",
        _pretrain_case(y=np.arange(24) % 2 + 0.5),
    ),
    Row(
        "head-count-float",
        "counts: non-integer",
        "CWRStarHead.begin_experience",
        "class_counts {0: 1.5}",
        ValueError,
        "`class_counts` holds a non-integer count; expected integer counts, got 1.5",
        _head_case({0: 1.5}),
    ),
    # NaN / Inf
    Row(
        "count-nan",
        "NaN/Inf in inputs",
        "count_classes",
        "labels [0.0, nan]",
        ValueError,
        "`labels` holds NaN or infinite labels",
        _count_case([0.0, np.nan]),
    ),
    Row(
        "nc-nan",
        "NaN/Inf in inputs",
        "scenarios.nc_scenario",
        "x_train[4, 1] = nan",
        ValueError,
        "`x_train` holds NaN or infinite values; expected finite numbers, "
        "got nan at index (4, 1)",
        _scenario_case(x_train=_nan(_data()["x_train"], (4, 1))),
    ),
    Row(
        "accuracy-nan",
        "NaN/Inf in inputs",
        "metrics.AccuracyMatrix.update",
        "y_pred scores holding inf",
        ValueError,
        "`y_pred` holds NaN or infinite values; expected finite numbers, got inf",
        _accuracy_case(1, [0, 1], np.array([[0.0, np.inf, 0.0], [1.0, 0.0, 0.0]])),
    ),
    Row(
        "replay-inf",
        "NaN/Inf in inputs",
        "replay.LatentReplayMemory.update",
        "latents holding inf",
        ValueError,
        "`latents` must be finite",
        _replay_case(np.full((2, FEATURES), np.inf, np.float32), [0, 1]),
    ),
    Row(
        "pretrain-nan",
        "NaN/Inf in inputs",
        "pretraining.pretrain_backbone",
        "x[0, 0, 0, 0] = nan",
        ValueError,
        "`x` holds NaN or infinite values",
        _pretrain_case(x=_nan(_images(), (0, 0, 0, 0))),
    ),
    Row(
        "image-dataset-inf",
        "NaN/Inf in inputs",
        "datasets.ImageDataset",
        "x_train of inf",
        ValueError,
        "`x_train` holds NaN or infinite values",
        _image_dataset_case(x_train=np.full((4, 2, 2, 1), np.inf, np.float32)),
    ),
    # wrong shape or channels
    Row(
        "pretrain-channels",
        "wrong shape or channels",
        "pretraining.pretrain_backbone",
        "RGB images for a 1-channel backbone",
        ValueError,
        "`x` has the wrong sample shape; expected (16, 16, 1), got (16, 16, 3)",
        _pretrain_case(x=_images(shape=(16, 16, 3))),
    ),
    Row(
        "pretrain-3d",
        "wrong shape or channels",
        "pretraining.pretrain_backbone",
        "3-D x (no channel axis)",
        ValueError,
        "`x` is not a batch of images; expected a " "4-D float array",
        _pretrain_case(x=_images()[..., 0]),
    ),
    Row(
        "image-dataset-channels",
        "wrong shape or channels",
        "datasets.ImageDataset",
        "x_test with 2 channels",
        ValueError,
        "`x_test` has the wrong number of channels; expected 1 or 3, got 2",
        _image_dataset_case(x_test=np.zeros((2, 2, 2, 2), np.float32)),
    ),
    Row(
        "nc-sample-shape",
        "wrong shape or channels",
        "scenarios.nc_scenario",
        "x_test samples (3,) for x_train samples (2,)",
        ValueError,
        "`x_test` has the wrong sample shape; expected (2,), got (3,)",
        _scenario_case(x_test=np.zeros((12, 3), np.float32)),
    ),
    Row(
        "count-shape",
        "wrong shape or channels",
        "count_classes",
        "labels of shape (2, 2) for 3 classes",
        ValueError,
        "`labels` has the wrong shape; expected labels of shape (n,) or (n, 1), got "
        "(2, 2)",
        _count_case(np.zeros((2, 2), np.int64)),
    ),
    Row(
        "replay-shape",
        "wrong shape or channels",
        "replay.LatentReplayMemory.update",
        "latents (2, 5) for a (4,)-latent memory",
        ValueError,
        "`latents` has the wrong shape; expected (n,) + (4,), got (2, 5)",
        _replay_case(np.zeros((2, 5), np.float32), [0, 1]),
    ),
    Row(
        "head-4d",
        "wrong shape or channels",
        "CWRStarHead.__call__",
        "4-D features (not pooled)",
        ValueError,
        "`inputs` of CWRStarHead are not 2-D",
        lambda tmp_path: Case(lambda: CWRStarHead(3)(tf.keras.Input((4, 4, 8))), dict),
    ),
    # empty
    Row(
        "nc-empty",
        "empty experience",
        "scenarios.nc_scenario",
        "no training sample",
        ValueError,
        "`y_train` is empty; expected at least one sample, got 0",
        _scenario_case(
            x_train=np.zeros((0, 2), np.float32), y_train=np.zeros(0, int), num_classes=3
        ),
    ),
    Row(
        "experience-empty",
        "empty experience",
        "scenarios.Experience",
        "x_train and y_train with 0 samples",
        ValueError,
        "`y_train` is empty",
        _call(
            Experience,
            index=0,
            classes=(),
            x_train=np.zeros((0, 2), np.float32),
            y_train=np.zeros(0, np.int32),
            num_classes=3,
        ),
    ),
    Row(
        "cwrstar-empty",
        "empty experience",
        "CWRStar(head, labels=...)",
        "labels []",
        ValueError,
        "`class_counts` holds no pattern; expected at least one labelled "
        "training pattern",
        _callback_case(labels=[]),
    ),
    Row(
        "head-empty",
        "empty experience",
        "CWRStarHead.begin_experience",
        "class_counts of zeros",
        ValueError,
        "`class_counts` holds no pattern",
        _head_case(np.zeros(NUM_CLASSES)),
    ),
    Row(
        "replay-empty",
        "empty experience",
        "replay.LatentReplayMemory.update",
        "0 latents",
        ValueError,
        "`latents` is empty",
        _replay_case(np.zeros((0, FEATURES), np.float32), np.zeros(0, int)),
    ),
    Row(
        "pretrain-empty",
        "empty experience",
        "pretraining.pretrain_backbone",
        "0 images",
        ValueError,
        "`x` is empty; expected at least one sample, got 0",
        _pretrain_case(x=_images(0), y=np.zeros(0, int)),
    ),
    Row(
        "accuracy-empty-group",
        "empty experience",
        "metrics.AccuracyMatrix",
        "experience_classes [[0, 1], []]",
        ValueError,
        "`experience_classes[1]` is empty; expected at least one class, got 0",
        _call(AccuracyMatrix, 2, 3, experience_classes=[[0, 1], []]),
    ),
    # counts that do not match the head
    Row(
        "head-counts-length",
        "counts not matching the head",
        "CWRStarHead.begin_experience",
        "4 counts for a 3-class head",
        ValueError,
        "`class_counts` has the wrong length; expected a dict or a 1-D array of length "
        "num_classes=3, got shape (4,)",
        _head_case(np.ones(4)),
    ),
    Row(
        "cwrstar-counts-length",
        "counts not matching the head",
        "CWRStar(head, class_counts=...)",
        "11 counts for a 3-class head",
        ValueError,
        "`class_counts` has the wrong length",
        _callback_case(class_counts=np.ones(11)),
    ),
    Row(
        "head-counts-negative",
        "counts not matching the head",
        "CWRStarHead.begin_experience",
        "class_counts {0: -2, 1: 3}",
        ValueError,
        "`class_counts` has a count out of range; expected counts >= 0, got -2",
        _head_case({0: -2, 1: 3}),
    ),
    # weights files
    Row(
        "weights-truncated",
        "weights file: truncated",
        WEIGHTS,
        "an .h5 file cut in half",
        ValueError,
        "`weights` file",
        _weights_file("truncated"),
    ),
    Row(
        "weights-empty",
        "weights file: truncated",
        WEIGHTS,
        "an empty .h5 file",
        ValueError,
        "`weights` file",
        _weights_file("empty"),
    ),
    Row(
        "weights-foreign",
        "weights file: foreign",
        WEIGHTS,
        "an HTML error page saved as .h5",
        ValueError,
        "`weights` file",
        _weights_file("foreign"),
    ),
    Row(
        "weights-other-version",
        "weights file: other version",
        WEIGHTS,
        "weights of a bnn32 version with one more layer (features_bn)",
        ValueError,
        "does not fit backbone 'bnn32'",
        _weights_file("other version"),
    ),
    Row(
        "weights-other-channels",
        "weights file: other input shape",
        WEIGHTS,
        "weights of a 3-channel bnn32 for a 1-channel one",
        ValueError,
        "does not fit backbone 'bnn32' with input shape (16, 16, 1)",
        _weights_file("other channels"),
    ),
    Row(
        "weights-truncated-checkpoint",
        "weights file: truncated",
        WEIGHTS,
        "a TensorFlow checkpoint whose .index is cut in half",
        ValueError,
        "does not fit backbone 'bnn32'",
        _weights_file("checkpoint"),
    ),
    # data files
    Row(
        "mnist-truncated",
        "data file: truncated",
        "datasets.load_mnist",
        "IDX images missing 7 bytes",
        ValueError,
        "truncated IDX data",
        _loader_case(datasets.load_mnist, _mnist_truncated),
    ),
    Row(
        "cifar-truncated-pickle",
        "data file: truncated",
        "datasets.load_cifar10",
        "a pickled batch cut at 100 bytes",
        ValueError,
        "not a readable pickle",
        _loader_case(datasets.load_cifar10, _cifar_truncated_pickle),
    ),
    Row(
        "cifar-truncated-tarball",
        "data file: truncated",
        "datasets.load_cifar10",
        "cifar10-jpg.tar.gz missing its last 300 bytes",
        ValueError,
        "not a readable tarball",
        _loader_case(datasets.load_cifar10, _cifar_truncated_tarball),
    ),
    Row(
        "core50-foreign-npz",
        "data file: foreign",
        "datasets.load_core50",
        "core50_imgs.npz that is not a zip archive",
        ValueError,
        "core50_imgs.npz: not a readable .npz file",
        _loader_case(datasets.load_core50, _core50_foreign_npz),
    ),
    Row(
        "idx-foreign",
        "data file: foreign",
        "datasets.read_idx",
        "a text file",
        ValueError,
        "bad IDX magic number",
        _foreign_idx_case,
    ),
    # bits out of range
    Row(
        "hybrid-forward-bits-1",
        "bits out of range",
        "HybridQuantizedTrainStep(...)",
        "forward_bits=1",
        ValueError,
        "`forward_bits` is out of range; expected 2 <= forward_bits <= 16, got 1",
        _hybrid_case(forward_bits=1),
    ),
    Row(
        "hybrid-update-bits-32",
        "bits out of range",
        "HybridQuantizedTrainStep(...)",
        "update_bits=32",
        ValueError,
        "`update_bits` is out of range",
        _hybrid_case(update_bits=32),
    ),
    Row(
        "hybrid-backward-bits-float",
        "bits out of range",
        "HybridQuantizedTrainStep(...)",
        "backward_bits=8.0",
        ValueError,
        "`backward_bits` is not an int; expected an int in [2, 16], got 8.0",
        _hybrid_case(backward_bits=8.0),
    ),
    # unknown choices
    Row(
        "hybrid-rounding",
        "unknown choice",
        "HybridQuantizedTrainStep(...)",
        'rounding="up"',
        ValueError,
        "`rounding` must be one of",
        _hybrid_case(rounding="up"),
    ),
    Row(
        "hybrid-grid",
        "unknown choice",
        "HybridQuantizedTrainStep(...)",
        'grid="tflite"',
        ValueError,
        "`grid` must be one of",
        _hybrid_case(grid="tflite"),
    ),
    Row(
        "make-scenario-name",
        "unknown choice",
        "scenarios.make_scenario",
        'name "nic"',
        ValueError,
        "`name` must be one of ('nc', 'ni'); expected one of those values, " "got 'nic'",
        _call(make_scenario, **_data(), name="nic", n_experiences=1),
    ),
    Row(
        "load-dataset-name",
        "unknown choice",
        "datasets.load_dataset",
        '"imagenet"',
        ValueError,
        "`name` must be one of",
        _call(datasets.load_dataset, "imagenet"),
    ),
    Row(
        "core50-num-classes",
        "unknown choice",
        "datasets.load_core50",
        "num_classes=20",
        ValueError,
        "`num_classes` must be one of (10, 50)",
        _loader_case(datasets.load_core50, _core50, num_classes=20),
    ),
    Row(
        "config-backbone",
        "unknown choice",
        "experiment.TrainingConfig",
        'backbone="resnet50"',
        ValueError,
        "`backbone` must be one of",
        _call(TrainingConfig, backbone="resnet50"),
    ),
    # non-positive ints and other ints
    Row(
        "config-epochs-0",
        "non-positive int",
        "experiment.TrainingConfig",
        "epochs=0",
        ValueError,
        "`epochs` is out of range; expected epochs >= 1, got 0",
        _call(TrainingConfig, epochs=0),
    ),
    Row(
        "config-trainable-blocks",
        "non-positive int",
        "experiment.TrainingConfig",
        "trainable_blocks=-1",
        ValueError,
        "`trainable_blocks` is out of range; expected trainable_blocks >= 0, got -1",
        _call(TrainingConfig, trainable_blocks=-1),
    ),
    Row(
        "config-seed",
        "non-positive int",
        "experiment.TrainingConfig",
        "seed=-1",
        ValueError,
        "`seed`",
        _call(TrainingConfig, seed=-1),
    ),
    Row(
        "hybrid-replay-batch-size",
        "non-positive int",
        "HybridQuantizedTrainStep(...)",
        "replay_batch_size=0",
        ValueError,
        "`replay_batch_size` is out of range",
        _hybrid_case(replay_batch_size=0),
    ),
    Row(
        "hybrid-seed",
        "non-positive int",
        "HybridQuantizedTrainStep(...)",
        'seed="0"',
        ValueError,
        "`seed`",
        _hybrid_case(seed="0"),
    ),
    Row(
        "head-num-classes-0",
        "non-positive int",
        "CWRStarHead",
        "num_classes=0",
        ValueError,
        "`num_classes` is out of range; expected num_classes >= 1, got 0",
        _call(CWRStarHead, 0),
    ),
    Row(
        "accuracy-n-experiences-0",
        "non-positive int",
        "metrics.AccuracyMatrix",
        "n_experiences=0",
        ValueError,
        "`n_experiences` is out of range",
        _call(AccuracyMatrix, 0, 3, experience_classes=[]),
    ),
    Row(
        "accuracy-index",
        "non-positive int",
        "metrics.AccuracyMatrix.update",
        "experience_index=2 of 2",
        ValueError,
        "`experience_index` is out of range; expected 0 <= experience_index <= 1, got 2",
        _accuracy_case(2, [0], [0]),
    ),
    Row(
        "nc-n-experiences-0",
        "non-positive int",
        "scenarios.nc_scenario",
        "n_experiences=0",
        ValueError,
        "`n_experiences` is out of range",
        _scenario_case(n_experiences=0),
    ),
    Row(
        "nc-n-experiences-float",
        "non-positive int",
        "scenarios.nc_scenario",
        "n_experiences=3.0",
        ValueError,
        "`n_experiences` is not an int",
        _scenario_case(n_experiences=3.0),
    ),
    Row(
        "train-dataset-batch-size",
        "non-positive int",
        "scenarios.Experience.train_dataset",
        "batch_size=0",
        ValueError,
        "`batch_size` is out of range",
        lambda tmp_path: Case(lambda: _experience().train_dataset(0), dict),
    ),
    Row(
        "pretrain-epochs-0",
        "non-positive int",
        "pretraining.pretrain",
        "epochs=0 with out_path",
        ValueError,
        "`epochs` is out of range",
        _pretrain_name_case,
    ),
    Row(
        "digits-image-size-0",
        "non-positive int",
        "datasets.load_digits",
        "image_size=0",
        ValueError,
        "`image_size` is out of range",
        _call(datasets.load_digits, image_size=0),
    ),
    Row(
        "pretrain-seed",
        "non-positive int",
        "pretraining.pretrain_backbone",
        "seed=-1",
        ValueError,
        "`seed` is out of range; expected 0 <= seed <= 4294967295, got -1",
        _pretrain_case(seed=-1),
    ),
    # mismatched lengths
    Row(
        "nc-lengths",
        "mismatched lengths",
        "scenarios.nc_scenario",
        "12 training images, 11 labels",
        ValueError,
        "`x_train` and `y_train` differ in length; expected the same number of samples, "
        "got 12 and 11",
        _scenario_case(y_train=_data()["y_train"][:-1]),
    ),
    Row(
        "accuracy-lengths",
        "mismatched lengths",
        "metrics.AccuracyMatrix.update",
        "2 labels, 1 prediction",
        ValueError,
        "`y_true` and `y_pred` differ in length",
        _accuracy_case(1, [0, 1], [0]),
    ),
    Row(
        "replay-lengths",
        "mismatched lengths",
        "replay.LatentReplayMemory.update",
        "5 latents, 4 labels",
        ValueError,
        "`labels` must hold one class index per " "pattern",
        _replay_case(_latents(5), [0, 1, 2, 0]),
    ),
    Row(
        "pretrain-lengths",
        "mismatched lengths",
        "pretraining.pretrain_backbone",
        "24 images, 23 labels",
        ValueError,
        "`x` and `y` differ in length",
        _pretrain_case(y=np.arange(23) % 2),
    ),
    Row(
        "mnist-lengths",
        "mismatched lengths",
        "datasets.load_mnist",
        "5 test images, 4 test labels",
        ValueError,
        "`t10k-images-idx3-ubyte` and `t10k-labels-idx1-ubyte` differ in length",
        _loader_case(datasets.load_mnist, _mnist_label_short),
    ),
    # fractions, permutations, types, order
    Row(
        "split-fraction",
        "fraction out of range",
        "scenarios.Experience.split_validation",
        "fraction=1.5",
        ValueError,
        "`fraction` is out of range; expected a number in (0, 1), got 1.5",
        lambda tmp_path: Case(lambda: _experience().split_validation(1.5), dict),
    ),
    Row(
        "pretrain-validation-fraction",
        "fraction out of range",
        "pretraining.pretrain_backbone",
        "validation_fraction=1.0",
        ValueError,
        "`validation_fraction` is out of range; expected a number in [0, 1), got 1.0",
        _pretrain_case(validation_fraction=1.0),
    ),
    Row(
        "digits-test-fraction",
        "fraction out of range",
        "datasets.load_digits",
        "test_fraction=0",
        ValueError,
        "`test_fraction` is out of range",
        _call(datasets.load_digits, test_fraction=0),
    ),
    Row(
        "nc-class-order",
        "not a permutation",
        "scenarios.nc_scenario",
        "class_order [0, 1, 1]",
        ValueError,
        "`class_order` is not a permutation of "
        "range(3); expected every class exactly once, got [0, 1, 1]",
        _scenario_case(class_order=[0, 1, 1]),
    ),
    Row(
        "accuracy-repeated-class",
        "not a permutation",
        "metrics.AccuracyMatrix",
        "experience_classes [[0, 0], [1, 2]]",
        ValueError,
        "`experience_classes[0]` repeats a class",
        _call(AccuracyMatrix, 2, 3, experience_classes=[[0, 0], [1, 2]]),
    ),
    Row(
        "cwrstar-head-type",
        "wrong object",
        "CWRStar(head, ...)",
        "a Dense layer as head",
        ValueError,
        "`head` must be a CWRStarHead",
        lambda tmp_path: Case(lambda: CWRStar(tf.keras.layers.Dense(3), labels=[0]), dict),
    ),
    Row(
        "cwrstar-trainable-layers-str",
        "wrong object",
        "CWRStar(head, ...)",
        'trainable_layers="conv" (a string, not a list)',
        ValueError,
        "`trainable_layers`",
        _callback_case(labels=[0, 1], trainable_layers="conv"),
    ),
    Row(
        "hybrid-replay-without-latent-layer",
        "wrong object",
        "HybridQuantizedTrainStep(...)",
        "replay memory without latent_layer",
        ValueError,
        "`replay` needs `latent_layer`",
        _hybrid_case(replay="memory"),
    ),
    Row(
        "config-binarize-first-latents",
        "wrong object",
        "experiment.TrainingConfig",
        "binarize_first_latents=1",
        TypeError,
        "`binarize_first_latents` must be True or False, got 1",
        _call(TrainingConfig, binarize_first_latents=1),
    ),
    Row(
        "head-unbuilt",
        "call order",
        "CWRStarHead.begin_experience",
        "a head not built yet",
        RuntimeError,
        "Build the layer",
        lambda tmp_path: Case(lambda: CWRStarHead(3).begin_experience({0: 1}), dict),
    ),
)


# --- tests --------------------------------------------------------------------------------


def _params():
    for row in ROWS:
        marks = [pytest.mark.xfail(strict=True, reason=row.xfail)] if row.xfail else []
        yield pytest.param(row, id=row.id, marks=marks)


@pytest.mark.parametrize("row", _params())
def test_bad_input_raises_and_changes_nothing(row: Row, tmp_path: pathlib.Path):
    case = row.setup(tmp_path)
    before = {**case.saved(), **_files(tmp_path)}
    with pytest.raises(row.error, match=re.escape(row.message)):
        case.call()
    _assert_unchanged(before, {**case.saved(), **_files(tmp_path)})


def test_rows_are_many_kinds_with_unique_ids():
    assert len({row.id for row in ROWS}) == len(ROWS)
    assert len({row.kind.split(":")[0] for row in ROWS}) >= 15


def errors_table(rows: tuple[Row, ...] = ROWS) -> str:
    """The Markdown table of ``docs/errors.md``, one line per row."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| # | kind | entry point | bad input | error raised (type: message) "
        "| saved state unchanged |",
        "|---|---|---|---|---|---|",
    ]
    for number, row in enumerate(rows, 1):
        unchanged = f"not reached (xfail: {row.xfail})" if row.xfail else "yes"
        lines.append(
            f"| {number} | {cell(row.kind)} | `larq_cwr.{cell(row.entry)}` "
            f"| {cell(row.bad_input)} | `{row.error.__name__}`: `` {cell(row.message)} `` "
            f"| {cell(unchanged)} |"
        )
    return "\n".join(lines)


def _doc_with_table(doc: str) -> str:
    start, end = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    return f"{doc[:start]}\n{errors_table()}\n{doc[end:]}"


def test_errors_doc_lists_every_row():
    doc = DOC.read_text()
    assert doc == _doc_with_table(doc), (
        "docs/errors.md is stale: run `python tests/bad_inputs_test.py` to regenerate "
        "its table from ROWS."
    )


if __name__ == "__main__":
    DOC.write_text(_doc_with_table(DOC.read_text()))
    print(f"Wrote {len(ROWS)} rows to {DOC}", file=sys.stderr)
