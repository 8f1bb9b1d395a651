"""Export a trained model for a device: an LCE backbone and a TFLite CWR* head (METHOD §7).

``export_for_device`` writes three files that let an ARM-class CPU run the model and keep
learning with no Python and no TensorFlow training code:

- ``backbone.tflite``: the frozen feature extractor (image -> head features) converted by
  Larq Compute Engine (``larq_compute_engine.convert_keras_model``): binary convolutions
  become ``LceBconv2d`` ops with bit-packed kernels. The batch size is fixed to 1.
- ``head.tflite``: the CWR* head, builtin TFLite ops only, with one signature per step of
  its life cycle: ``infer``, ``begin_experience``, ``train``, ``consolidate``,
  ``get_state``, ``set_state``. The signatures trace the library's own functions
  (``reset_kernel``, ``hybrid_sgd_step``, ``consolidate_kernel``, ``counter_uniform``):
  the device runs the arithmetic of ``HybridQuantizedTrainStep``, not a second copy.
- ``manifest.json``: input shape and preprocessing, class names, bit widths, grid,
  rounding, seed, sizes, versions, and the SHA-256 and size of each file.

The device learns the head only: layers above the model's ``latent_layer`` that a Keras
run may train (``CWRStar(trainable_layers=...)``) are frozen into ``backbone.tflite``, and
a replay memory is not exported. ``larq_cwr.memory.memory_report`` says what the files and a
training step hold in memory; ``larq_cwr.device.DeviceLearner`` runs the files.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from larq_cwr.flatbuffer import operator_counts
from larq_cwr.head import consolidate_kernel, reset_kernel
from larq_cwr.quantizers import counter_uniform
from larq_cwr.training import (
    HybridQuantizedTrainStep,
    clip_to_feature_range,
    hybrid_sgd_step,
)

__all__ = [
    "BACKBONE_FILE",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "MANIFEST_FILE",
    "SIGNATURES",
    "STATE_NAMES",
    "DeviceExport",
    "convert_backbone",
    "convert_head",
    "export_for_device",
    "load_model",
    "model_state",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the exported folder (manifest.json, signatures, state names)
BACKBONE_FILE = "backbone.tflite"
HEAD_FILE = "head.tflite"
MANIFEST_FILE = "manifest.json"
SIGNATURES = ("infer", "begin_experience", "train", "consolidate", "get_state", "set_state")
# The whole CWR* state of the device head, in `get_state`/`set_state` order.
STATE_NAMES = (
    "kernel",
    "consolidated_kernel",
    "past_counts",
    "current_counts",
    "consolidated_experiences",
    "feature_range",
    "gradient_range",
    "noise_seed",
    "noise_counter",
)
BINARY_CONV_OP = "LceBconv2d"
_FLOAT_BYTES = 4


# -- the device head -----------------------------------------------------------------------


class _DeviceHead(tf.Module):
    """The CWR* head of a ``HybridQuantizedTrainStep`` as a module of signatures.

    Its variables start from the model's state; every signature returns a tensor (a
    signature without outputs cannot be saved).
    """

    def __init__(self, model: HybridQuantizedTrainStep) -> None:
        super().__init__(name="cwr_head")
        head = model.head
        self.num_features, self.num_classes = (int(d) for d in head.kernel.shape)
        self.forward_bits = model.forward_bits
        self.update_bits = model.update_bits
        self.grid = model.grid
        self.gradient_range_mode = model.gradient_range_mode
        self.stochastic = model.rounding == "stochastic" and model.update_bits is not None
        initial = model_state(model)
        self.variables_by_name = {
            name: tf.Variable(value, name=name) for name, value in initial.items()
        }
        F, C = self.num_features, self.num_classes
        spec = tf.TensorSpec
        self.infer = tf.function(
            self._infer, input_signature=[spec([None, F], tf.float32, name="features")]
        )
        self.begin_experience = tf.function(
            self._begin_experience,
            input_signature=[spec([C], tf.int64, name="class_counts")],
        )
        self.train = tf.function(
            self._train,
            input_signature=[
                spec([None, F], tf.float32, name="features"),
                spec([None], tf.int32, name="labels"),
                spec([], tf.float32, name="learning_rate"),
            ],
        )
        self.consolidate = tf.function(self._consolidate, input_signature=[])
        self.get_state = tf.function(self._get_state, input_signature=[])
        self.set_state = tf.function(
            self._set_state,
            input_signature=[
                spec(value.shape, tf.as_dtype(value.dtype), name=name)
                for name, value in initial.items()
            ],
        )

    def signatures(self) -> dict[str, Any]:
        return {name: getattr(self, name).get_concrete_function() for name in SIGNATURES}

    def _var(self, name: str) -> tf.Variable:
        return self.variables_by_name[name]

    def _infer(self, features: tf.Tensor) -> dict[str, tf.Tensor]:
        # As HybridQuantizedTrainStep.call: the live kernel (the consolidated one between
        # experiences) on features clipped as the train signature sees them.
        if self.forward_bits is not None:  # then the model was calibrated (_check_model)
            features = clip_to_feature_range(features, self._var("feature_range"))
        logits = tf.matmul(features, self._var("kernel"))
        return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

    def _begin_experience(self, class_counts: tf.Tensor) -> dict[str, tf.Tensor]:
        kernel = reset_kernel(
            self._var("consolidated_kernel"),
            past_counts=self._var("past_counts"),
            class_counts=class_counts,
        )
        self._var("kernel").assign(kernel)
        self._var("current_counts").assign(class_counts)
        return {"current_counts": tf.identity(self._var("current_counts"))}

    def _train(
        self, features: tf.Tensor, labels: tf.Tensor, learning_rate: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        kernel = tf.identity(self._var("kernel"))
        noise = None
        if self.stochastic:  # as HybridQuantizedTrainStep._rounding_noise
            counter = self._var("noise_counter")
            noise = counter_uniform(
                tf.shape(kernel), seed=self._var("noise_seed"), counter=counter
            )
            counter.assign_add(tf.size(kernel, out_type=tf.int32))
        result = hybrid_sgd_step(
            kernel,
            features,
            labels=labels,
            learning_rate=learning_rate,
            forward_bits=self.forward_bits,
            update_bits=self.update_bits,
            grid=self.grid,
            feature_range=self._var("feature_range"),
            gradient_range=(
                "bound"
                if self.gradient_range_mode == "bound"
                else self._var("gradient_range")
            ),
            update_noise=noise,
        )
        self._var("kernel").assign(result.kernel)
        onehot = tf.one_hot(labels, self.num_classes, dtype=result.logits.dtype)
        log_probabilities = tf.nn.log_softmax(result.logits)
        loss = -tf.reduce_mean(tf.reduce_sum(onehot * log_probabilities, axis=1))
        return {"loss": loss, "logits": result.logits}

    def _consolidate(self) -> dict[str, tf.Tensor]:
        # CWRStar.on_train_end: consolidate, then load the consolidated kernel. Without an
        # experience in progress nothing changes (the Keras head raises instead).
        kernel, consolidated = self._var("kernel"), self._var("consolidated_kernel")
        past, current = self._var("past_counts"), self._var("current_counts")
        merged, new_past = consolidate_kernel(
            kernel, consolidated, past_counts=past, class_counts=current
        )
        in_experience = tf.reduce_any(current > 0)
        consolidated.assign(tf.where(in_experience, merged, consolidated))
        past.assign(new_past)
        kernel.assign(tf.where(in_experience, merged, kernel))
        current.assign(tf.zeros_like(current))
        experiences = self._var("consolidated_experiences")
        experiences.assign_add(tf.cast(in_experience, experiences.dtype))
        return {"consolidated_experiences": tf.identity(experiences)}

    def _get_state(self) -> dict[str, tf.Tensor]:
        return {name: tf.identity(self._var(name)) for name in STATE_NAMES}

    def _set_state(self, *values: tf.Tensor) -> dict[str, tf.Tensor]:
        for name, value in zip(STATE_NAMES, values):
            self._var(name).assign(value)
        return {
            "consolidated_experiences": tf.identity(self._var("consolidated_experiences"))
        }


def model_state(model: HybridQuantizedTrainStep) -> dict[str, np.ndarray]:
    """The device head's state (``STATE_NAMES``) as the Keras model holds it now.

    Args:
        model: A ``HybridQuantizedTrainStep``.

    Returns:
        One array per state name, with the dtypes of the head's ``get_state``.
    """
    head = model.head
    return {
        "kernel": head.kernel.numpy().astype(np.float32),
        "consolidated_kernel": head.consolidated_kernel.astype(np.float32),
        "past_counts": head.past_counts.astype(np.int64),
        "current_counts": head.current_counts.astype(np.int64),
        "consolidated_experiences": np.int64(head.consolidated_experiences),
        "feature_range": model.feature_range.astype(np.float32),
        "gradient_range": model.gradient_range.astype(np.float32),
        # int32 as counter_uniform casts it (wrapping, as tf.cast does).
        "noise_seed": np.array(model.seed or 0, np.int64).astype(np.int32),
        "noise_counter": np.int32(model.noise_counter),
    }


# -- conversion ----------------------------------------------------------------------------


def _check_model(model: Any) -> HybridQuantizedTrainStep:
    if not isinstance(model, HybridQuantizedTrainStep):
        raise ValueError(
            "`model` must be a HybridQuantizedTrainStep (or the path of a saved one); got "
            f"{type(model).__name__}."
        )
    shape = model.input_shape
    if isinstance(shape, list) or len(shape) != 4 or None in shape[1:]:
        raise ValueError(
            f"`model` must take one image input of known (height, width, channels); got "
            f"input shape {shape}."
        )
    if model.forward_bits is not None and not model.is_calibrated:
        raise ValueError(
            f"`model` has forward_bits={model.forward_bits} but is not calibrated: the "
            "device head quantizes on static ranges. Call `model.calibrate(x0, y0)` with "
            "the first experience's data before exporting."
        )
    if model.head.is_first_experience:
        warnings.warn(
            "`model` has not consolidated an experience yet: the device trains the head "
            "only, where the Keras model would train the whole network on its first "
            "experience.",
            stacklevel=3,
        )
    if model.replay is not None:
        warnings.warn(
            "`model` has a latent replay memory; the device head learns without replay "
            "(the memory is not exported).",
            stacklevel=3,
        )
    return model


def convert_backbone(model: HybridQuantizedTrainStep) -> bytes:
    """The model's frozen feature extractor converted by Larq Compute Engine.

    ``model.feature_extractor`` (image -> head features, every layer in inference mode)
    goes through ``larq_compute_engine.convert_keras_model``: binary convolutions become
    ``LceBconv2d`` ops with bit-packed kernels, batch normalization is folded. The input
    is ``(1, height, width, channels)`` float32: LCE fixes the batch size to 1.

    Args:
        model: A ``HybridQuantizedTrainStep``.

    Returns:
        The ``.tflite`` flatbuffer.

    Raises:
        ValueError: ``model`` has binary convolutions but the file has no
            ``LceBconv2d`` op.
    """
    import larq_compute_engine as lce

    extractor = model.feature_extractor
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flatbuffer = lce.convert_keras_model(extractor)
    for warning in caught:  # e.g. LCE's fallback to graphdef-based conversion
        logger.info("convert_keras_model: %s", warning.message)
    expected = len(_binary_convolutions(extractor))
    found = operator_counts(flatbuffer).get(BINARY_CONV_OP, 0)
    if expected and not found:
        raise ValueError(
            f"The model has {expected} binary convolutions (binary inputs and kernels) but "
            f"Larq Compute Engine converted none to {BINARY_CONV_OP}: the backbone would "
            "run in float on the device. Check that the binary layers use larq's "
            "QuantConv2D with sign quantizers and pad_values=1."
        )
    if found < expected:
        warnings.warn(
            f"Larq Compute Engine converted {found} of {expected} binary convolutions to "
            f"{BINARY_CONV_OP}; the others run in float.",
            stacklevel=2,
        )
    return flatbuffer


def _binary_convolutions(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    """QuantConv2D layers whose inputs and kernels are both 1-bit (LCE makes each one
    an ``LceBconv2d``)."""
    import larq as lq

    def binary(quantizer: Any) -> bool:
        return getattr(quantizer, "precision", None) == 1

    return [
        layer
        for layer in _all_layers(model)
        if isinstance(layer, lq.layers.QuantConv2D)
        and binary(layer.input_quantizer)
        and binary(layer.kernel_quantizer)
    ]


def _all_layers(model: tf.keras.Model) -> list[tf.keras.layers.Layer]:
    layers = []
    for layer in model.layers:
        layers.append(layer)
        if isinstance(layer, tf.keras.Model):
            layers.extend(_all_layers(layer))
    return layers


def convert_head(model: HybridQuantizedTrainStep) -> bytes:
    """The CWR* head with its life cycle as a builtins-only TFLite model.

    Signatures (inputs -> outputs; ``F`` features, ``C`` classes, ``B`` any batch):

    - ``infer``: ``features (B, F) float32`` -> ``logits``, ``probabilities (B, C)``,
      with the live kernel (the consolidated one between experiences), as the Keras
      head computes them;
    - ``begin_experience``: ``class_counts (C,) int64`` -> ``current_counts``: METHOD §2
      step 1 (``reset_kernel``);
    - ``train``: ``features (B, F) float32``, ``labels (B,) int32``, ``learning_rate ()
      float32`` -> ``loss ()``, ``logits (B, C)``: one ``hybrid_sgd_step`` with the
      model's bits, grid and static ranges and, for ``rounding="stochastic"``, noise from
      ``counter_uniform`` with the saved seed and counter; the loss is the mean softmax
      cross-entropy of the forward pass (``tf.nn.log_softmax``);
    - ``consolidate``: no input -> ``consolidated_experiences``: METHOD §2 step 3
      (``consolidate_kernel``), then the consolidated kernel becomes the live one;
    - ``get_state``: no input -> the arrays of ``STATE_NAMES``;
    - ``set_state``: the arrays of ``STATE_NAMES`` -> ``consolidated_experiences``.

    The variables start from the model's current state.

    Args:
        model: A ``HybridQuantizedTrainStep``.

    Returns:
        The ``.tflite`` flatbuffer.
    """
    module = _DeviceHead(model)
    with tempfile.TemporaryDirectory(prefix="larq_cwr_head_") as directory:
        tf.saved_model.save(module, directory, signatures=module.signatures())
        converter = tf.lite.TFLiteConverter.from_saved_model(
            directory, signature_keys=list(SIGNATURES)
        )
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        converter.experimental_enable_resource_variables = True
        return converter.convert()


# -- export --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class DeviceExport:
    """What ``export_for_device`` wrote.

    Attributes:
        directory: The export folder.
        backbone: Path of ``backbone.tflite``.
        head: Path of ``head.tflite``.
        manifest: Path of ``manifest.json``.
        binary_convolutions: ``LceBconv2d`` ops in the backbone file.
    """

    directory: pathlib.Path
    backbone: pathlib.Path
    head: pathlib.Path
    manifest: pathlib.Path
    binary_convolutions: int

    def read_manifest(self) -> dict[str, Any]:
        """The parsed ``manifest.json``."""
        return json.loads(self.manifest.read_text())


def load_model(
    path: str | os.PathLike,
) -> tuple[HybridQuantizedTrainStep, dict[str, Any] | None]:
    """Load a trained model from a ``.keras`` file or a ``larq-cwr run`` folder.

    Args:
        path: A ``.keras`` file, or a folder holding ``model.keras`` (and, for a run
            folder, ``report.json``).

    Returns:
        ``(model, report)``: the model and the run's parsed ``report.json`` (None for a
        lone ``.keras`` file or a folder without one).

    Raises:
        FileNotFoundError: No such file, or a folder without ``model.keras``.
        ValueError: The file does not hold a ``HybridQuantizedTrainStep``.
    """
    path = pathlib.Path(path)
    report = None
    if path.is_dir():
        report_path = path / "report.json"
        if report_path.is_file():
            report = json.loads(report_path.read_text())
        path = path / "model.keras"
    if not path.is_file():
        raise FileNotFoundError(
            f"`model` {str(path)!r} not found; expected a .keras file or a run folder "
            "holding model.keras."
        )
    model = tf.keras.models.load_model(path, compile=False)
    if not isinstance(model, HybridQuantizedTrainStep):
        raise ValueError(
            f"`model` file {str(path)!r} holds a {type(model).__name__}; expected a "
            "HybridQuantizedTrainStep (as `larq-cwr run` saves it)."
        )
    return model, report


def _resolve(model: Any) -> tuple[HybridQuantizedTrainStep, dict[str, Any] | None]:
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    return model, None


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _write_atomically(path: pathlib.Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _versions() -> dict[str, str]:
    import larq
    import larq_compute_engine

    import larq_cwr

    return {
        "tensorflow": tf.__version__,
        "larq": larq.__version__,
        "larq_compute_engine": larq_compute_engine.__version__,
        "larq_cwr": larq_cwr.__version__,
    }


def _class_names(
    class_names: Sequence[str] | None, report: dict[str, Any] | None, num_classes: int
) -> list[str]:
    if class_names is None and report is not None:
        class_names = report.get("dataset", {}).get("class_names")
    if class_names is None:
        return [str(c) for c in range(num_classes)]
    if isinstance(class_names, str) or len(class_names) != num_classes:
        raise ValueError(
            f"`class_names` must be a sequence of num_classes={num_classes} names; got "
            f"{class_names!r}."
        )
    return [str(name) for name in class_names]


def _signature_specs(flatbuffer: bytes) -> dict[str, Any]:
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    specs = {}
    for key in SIGNATURES:
        runner = interpreter.get_signature_runner(key)

        def describe(details: dict[str, Any]) -> dict[str, Any]:
            return {
                name: {
                    "shape": [int(d) for d in detail["shape_signature"]],
                    "dtype": np.dtype(detail["dtype"]).name,
                }
                for name, detail in sorted(details.items())
            }

        specs[key] = {
            "inputs": describe(runner.get_input_details()),
            "outputs": describe(runner.get_output_details()),
        }
    return specs


def _learning_settings(report: dict[str, Any] | None) -> dict[str, Any]:
    from larq_cwr.experiment import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_EPOCHS,
        DEFAULT_HEAD_LEARNING_RATE,
    )

    training = (report or {}).get("config", {}).get("training", {})
    return {
        "epochs": int(training.get("epochs", DEFAULT_EPOCHS)),
        "batch_size": int(training.get("batch_size", DEFAULT_BATCH_SIZE)),
        "learning_rate": float(training.get("learning_rate", DEFAULT_HEAD_LEARNING_RATE)),
    }


def export_for_device(
    model: HybridQuantizedTrainStep | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str] | None = None,
) -> DeviceExport:
    """Write ``backbone.tflite``, ``head.tflite`` and ``manifest.json`` to ``out_dir``.

    The backbone is ``convert_backbone(model)`` (LCE, frozen, batch 1), the head
    ``convert_head(model)`` (builtin ops, the CWR* life cycle as signatures, starting
    from the model's state). The manifest records what a device needs to run them:

    - ``input``: shape ``(height, width, channels)``, float32 values in ``[0, 1]``, batch
      1; the backbone normalizes inside, so there is no other preprocessing;
    - ``class_names``, ``num_classes``, ``feature_size``;
    - ``training``: ``forward_bits``, ``update_bits``, ``grid``, ``rounding``, ``seed``,
      the static ranges, and default ``epochs``/``batch_size``/``learning_rate`` (the
      run's, for a run folder);
    - ``head``: signature inputs and outputs and the state arrays;
    - ``backbone``: its operator counts (``LceBconv2d`` among them);
    - ``files``: SHA-256 and byte size of each ``.tflite`` file; ``versions``;
      ``format_version``.

    The head's SHA-256 identifies the export: ``DeviceLearner`` refuses a state file
    saved for another one. Existing files of these names in ``out_dir`` are replaced
    (each write is atomic).

    Args:
        model: A ``HybridQuantizedTrainStep``, the path of one saved as ``.keras``, or a
            ``larq-cwr run`` folder holding ``model.keras`` (its ``report.json`` supplies
            class names and learning settings).
        out_dir: Folder to write; created if missing.
        class_names: One name per class (default: the run's, else ``"0"``, ``"1"``...).

    Returns:
        A ``DeviceExport`` with the paths.

    Raises:
        ValueError: ``model`` is not a ``HybridQuantizedTrainStep`` with a known image
            input, is not calibrated although it has ``forward_bits``, its binary
            convolutions do not convert, or ``class_names`` has the wrong length.
        FileNotFoundError: ``model`` names no file.

    Example:
        ``export_for_device("runs/digits-nc", "exported/")`` after ``larq-cwr run``;
        ``DeviceLearner("exported/")`` then runs the files (``tests/export_test.py``
        runs both; a conversion takes 10-30 s, too long for a docstring example).
    """
    model, report = _resolve(model)
    model = _check_model(model)
    names = _class_names(class_names, report, model.head.num_classes)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    backbone = convert_backbone(model)
    head = convert_head(model)
    backbone_ops = operator_counts(backbone)
    manifest = {
        "format": "larq_cwr device export",
        "format_version": FORMAT_VERSION,
        "model_name": model.name,
        "input": {
            "shape": [int(d) for d in model.input_shape[1:]],
            "dtype": "float32",
            "value_range": [0.0, 1.0],
            "batch_size": 1,
            "layout": "NHWC",
            "preprocessing": (
                "none: float32 images with values in [0, 1]; the backbone normalizes "
                "inside"
            ),
        },
        "num_classes": model.head.num_classes,
        "feature_size": int(model.head.kernel.shape[0]),
        "class_names": names,
        "training": {
            "head_only": True,
            "forward_bits": model.forward_bits,
            "update_bits": model.update_bits,
            "grid": model.grid,
            "rounding": model.rounding,
            "seed": int(model.seed or 0),
            "feature_range": [float(v) for v in model.feature_range],
            "gradient_range": [float(v) for v in model.gradient_range],
            "gradient_range_mode": model.gradient_range_mode,
            **_learning_settings(report),
        },
        "backbone": {
            "file": BACKBONE_FILE,
            "converter": "larq_compute_engine.convert_keras_model",
            "operators": backbone_ops,
            "binary_convolutions": backbone_ops.get(BINARY_CONV_OP, 0),
        },
        "head": {
            "file": HEAD_FILE,
            "signatures": _signature_specs(head),
            "state": {
                name: {
                    "shape": list(np.shape(value)),
                    "dtype": np.asarray(value).dtype.name,
                }
                for name, value in model_state(model).items()
            },
        },
        "files": {
            name: {"sha256": _sha256(data), "bytes": len(data)}
            for name, data in ((BACKBONE_FILE, backbone), (HEAD_FILE, head))
        },
        "versions": _versions(),
    }
    _write_atomically(out / BACKBONE_FILE, backbone)
    _write_atomically(out / HEAD_FILE, head)
    _write_atomically(out / MANIFEST_FILE, (json.dumps(manifest, indent=2) + "\n").encode())
    logger.info("Exported %s to %s", model.name, out)
    return DeviceExport(
        directory=out,
        backbone=out / BACKBONE_FILE,
        head=out / HEAD_FILE,
        manifest=out / MANIFEST_FILE,
        binary_convolutions=manifest["backbone"]["binary_convolutions"],
    )
