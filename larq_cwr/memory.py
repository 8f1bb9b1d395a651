"""What an exported model holds in memory on a device (``larq-cwr report``)."""

from __future__ import annotations

import math
import os
import pathlib
from typing import Any

import numpy as np
import tensorflow as tf

from larq_cwr._checks import check_positive_int
from larq_cwr.export import (
    BACKBONE_FILE,
    BINARY_CONV_OP,
    HEAD_FILE,
    MANIFEST_FILE,
    _binary_convolutions,
    _check_model,
    _resolve,
    convert_backbone,
    convert_head,
    model_state,
)
from larq_cwr.flatbuffer import (
    constant_bytes,
    live_activation_bytes,
    operator_counts,
    read_flatbuffer,
    signature_subgraph,
)
from larq_cwr.training import HybridQuantizedTrainStep

__all__ = ["DEFAULT_REPORT_BATCH_SIZE", "format_memory_report", "memory_report"]

DEFAULT_REPORT_BATCH_SIZE = 50  # METHOD §4 reference minibatch
_FLOAT_BYTES = 4


def _backbone_weight_bytes(model: tf.keras.Model) -> dict[str, int]:
    """Float32 bytes of every backbone weight, and with binary kernels bit-packed as LCE
    stores them (int32 words of 32 input channels: ``Cout * kh * kw * ceil(Cin / 32)``)."""
    packed = 0
    binary_parameters = 0
    parameters = 0
    binary_ids = set()
    for layer in _binary_convolutions(model):
        kh, kw, cin, cout = (int(d) for d in layer.kernel.shape)
        packed += cout * kh * kw * math.ceil(cin / 32) * 4
        binary_parameters += kh * kw * cin * cout
        binary_ids.add(id(layer.kernel))
    seen = set()
    for weight in model.weights:
        if id(weight) in seen:
            continue
        seen.add(id(weight))
        size = int(np.prod(weight.shape))
        parameters += size
        if id(weight) not in binary_ids:
            packed += size * weight.dtype.size
    return {
        "parameters": parameters,
        "binary_parameters": binary_parameters,
        "float32_bytes": parameters * _FLOAT_BYTES,
        "packed_bytes": packed,
    }


def _training_tensors(
    num_features: int, num_classes: int, batch_size: int, stochastic: bool
) -> dict[str, int]:
    """Bytes of the float32 tensors one ``train`` step holds (``hybrid_sgd_step``)."""
    F, C, B = num_features, num_classes, batch_size
    tensors = {
        "features (B, F)": B * F,
        "quantized features x_q (B, F)": B * F,
        "kernel read (F, C)": F * C,
        "quantized kernel W_q (F, C)": F * C,
        "logits (B, C)": B * C,
        "probabilities p, p_q (B, C) x2": 2 * B * C,
        "one-hot labels (B, C)": B * C,
        "logit gradient g, g_q (B, C) x2": 2 * B * C,
        "weight gradient x_q^T g_q (F, C)": F * C,
        "updated kernel, quantized (F, C) x2": 2 * F * C,
    }
    if stochastic:
        tensors["rounding noise (F, C)"] = F * C
    return {name: count * _FLOAT_BYTES for name, count in tensors.items()}


def memory_report(
    model_or_path: HybridQuantizedTrainStep | str | os.PathLike,
    *,
    export_dir: str | os.PathLike | None = None,
    batch_size: int = DEFAULT_REPORT_BATCH_SIZE,
) -> dict[str, Any]:
    """What the exported model holds in memory on a device, in bytes.

    - ``backbone``: weights as float32 (every Keras weight at 4 bytes) and bit-packed
      (binary kernels at 1 bit, in LCE's int32 words along input channels; other
      weights float32), and ``file_constant_bytes``, the constant buffers of the LCE
      file (batch normalization folded there);
    - ``head``: the kernel and the whole CWR* state (``STATE_NAMES``: two kernels,
      counts, ranges, noise state);
    - ``files``: the size of each exported file (on disk when ``export_dir`` is given,
      else of the bytes converted here);
    - ``inference``: the activation peak of one backbone inference: over the LCE
      graph's operators in execution order, the largest sum of the bytes of the
      non-constant tensors live at one operator (a tensor lives from the operator that
      writes it to the last one that reads it; batch 1), and the largest single tensor.
      TFLite's arena needs at least the peak (its planner may add fragmentation);
    - ``training``: the float32 tensors one ``train`` step holds for ``batch_size``
      images' features (features, quantized copies, logits, probabilities, gradients,
      kernel copies, noise), their sum, and the same liveness peak over the head
      file's ``train`` graph with its batch dimension set to ``batch_size``.

    Args:
        model_or_path: A ``HybridQuantizedTrainStep``, a ``.keras`` file or a run folder.
        export_dir: An ``export_for_device`` folder of this model, to read the files
            from (else the backbone and head are converted here, which takes seconds).
        batch_size: Batch size of the training step.

    Returns:
        A JSON-ready dict (see ``format_memory_report``).

    Raises:
        ValueError: As ``export_for_device``; an invalid ``batch_size``.
        FileNotFoundError: ``export_dir`` lacks an exported file.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    model, _ = _resolve(model_or_path)
    model = _check_model(model)
    if export_dir is not None:
        directory = pathlib.Path(export_dir)
        files = {}
        for name in (BACKBONE_FILE, HEAD_FILE, MANIFEST_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"`export_dir` {str(directory)!r} has no {name}; run "
                    "`export_for_device` first."
                )
            files[name] = (directory / name).stat().st_size
        backbone = (directory / BACKBONE_FILE).read_bytes()
        head = (directory / HEAD_FILE).read_bytes()
    else:
        backbone, head = convert_backbone(model), convert_head(model)
        files = {BACKBONE_FILE: len(backbone), HEAD_FILE: len(head)}
    lce = read_flatbuffer(backbone)
    peak, largest, largest_name = live_activation_bytes(lce, 0, batch_size=1)
    head_model = read_flatbuffer(head)
    train_peak, _, _ = live_activation_bytes(
        head_model, signature_subgraph(head_model, "train"), batch_size=batch_size
    )
    state = {name: int(np.asarray(v).nbytes) for name, v in model_state(model).items()}
    num_features, num_classes = (int(d) for d in model.head.kernel.shape)
    tensors = _training_tensors(
        num_features,
        num_classes,
        batch_size,
        model.rounding == "stochastic" and model.update_bits is not None,
    )
    return {
        "model": model.name,
        "input_shape": [int(d) for d in model.input_shape[1:]],
        "feature_size": num_features,
        "num_classes": num_classes,
        "backbone": {
            **_backbone_weight_bytes(model.feature_extractor),
            "file_constant_bytes": constant_bytes(lce),
            "binary_convolutions": operator_counts(backbone).get(BINARY_CONV_OP, 0),
        },
        "head": {
            "kernel_bytes": state["kernel"],
            "state_bytes": sum(state.values()),
            "state": state,
        },
        "files": files,
        "inference": {
            "batch_size": 1,
            "peak_live_activation_bytes": peak,
            "largest_activation_bytes": largest,
            "largest_activation": largest_name,
        },
        "training": {
            "batch_size": batch_size,
            "tensors": tensors,
            "tensor_bytes": sum(tensors.values()),
            "graph_peak_live_bytes": train_peak,
        },
    }


def _kib(value: int) -> str:
    return f"{value / 1024:,.1f} KiB"


def format_memory_report(report: dict[str, Any]) -> str:
    """``memory_report``'s numbers as a two-column text table.

    Args:
        report: A dict from ``memory_report``.

    Returns:
        The table, one quantity per line.

    Example:
        >>> report = {"model": "m", "input_shape": [8, 8, 1], "feature_size": 4,
        ...     "num_classes": 2, "backbone": {"parameters": 10, "binary_parameters": 8,
        ...     "float32_bytes": 40, "packed_bytes": 12, "file_constant_bytes": 12,
        ...     "binary_convolutions": 1}, "head": {"kernel_bytes": 32,
        ...     "state_bytes": 120, "state": {}}, "files": {"head.tflite": 2048},
        ...     "inference": {"batch_size": 1, "peak_live_activation_bytes": 512,
        ...     "largest_activation_bytes": 256, "largest_activation": "x"},
        ...     "training": {"batch_size": 50, "tensors": {}, "tensor_bytes": 4096,
        ...     "graph_peak_live_bytes": 3072}}
        >>> print(format_memory_report(report).splitlines()[3])
        backbone weights, float32                        0.0 KiB (40 B)
    """
    backbone, head = report["backbone"], report["head"]
    inference, training = report["inference"], report["training"]
    rows = [
        ("model", f"{report['model']} {tuple(report['input_shape'])}"),
        ("features x classes", f"{report['feature_size']} x {report['num_classes']}"),
        (
            "backbone parameters (binary)",
            f"{backbone['parameters']:,} ({backbone['binary_parameters']:,})",
        ),
        ("backbone weights, float32", backbone["float32_bytes"]),
        ("backbone weights, bit-packed", backbone["packed_bytes"]),
        ("backbone file constants", backbone["file_constant_bytes"]),
        ("binary convolutions (LceBconv2d)", f"{backbone['binary_convolutions']}"),
        ("head kernel", head["kernel_bytes"]),
        ("CWR* state (all arrays)", head["state_bytes"]),
        *((f"file {name}", size) for name, size in report["files"].items()),
        ("inference activation peak (batch 1)", inference["peak_live_activation_bytes"]),
        ("largest activation", inference["largest_activation_bytes"]),
        (f"train step tensors (batch {training['batch_size']})", training["tensor_bytes"]),
        ("train graph peak", training["graph_peak_live_bytes"]),
    ]
    width = max(len(label) for label, _ in rows) + 2
    lines = []
    for label, value in rows:
        text = value if isinstance(value, str) else f"{_kib(value)} ({value:,} B)"
        lines.append(f"{label:<{width}}{text:>22}")
    return "\n".join(lines)
