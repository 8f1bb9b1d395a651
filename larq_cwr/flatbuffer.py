"""Reading ``.tflite`` flatbuffers: operators, tensors, liveness (for export checks and
the memory report).

Uses the TFLite schema that Larq Compute Engine ships (``larq_compute_engine.mlir.python
.tflite_schema``), which reads LCE's custom operators too.
"""

from __future__ import annotations

import collections
import math
from typing import Any

__all__ = [
    "constant_bytes",
    "live_activation_bytes",
    "operator_counts",
    "read_flatbuffer",
    "signature_subgraph",
]


def _schema():
    from larq_compute_engine.mlir.python import tflite_schema

    return tflite_schema


def read_flatbuffer(flatbuffer: bytes) -> Any:
    """The flatbuffer as the schema's object tree (``ModelT``)."""
    schema = _schema()
    return schema.ModelT.InitFromObj(schema.Model.GetRootAsModel(bytearray(flatbuffer), 0))


def _operator_names(model: Any) -> list[str]:
    schema = _schema()
    builtin = {
        value: name
        for name, value in vars(schema.BuiltinOperator).items()
        if not name.startswith("_")
    }
    names = []
    for code in model.operatorCodes:
        op = max(code.builtinCode, code.deprecatedBuiltinCode)
        if op == schema.BuiltinOperator.CUSTOM:
            custom = code.customCode
            names.append(custom.decode() if isinstance(custom, bytes) else str(custom))
        else:
            names.append(builtin.get(op, str(op)))
    return names


def operator_counts(flatbuffer: bytes) -> dict[str, int]:
    """Operators of a ``.tflite`` flatbuffer by name, over all its subgraphs.

    Custom operators appear under their own names (``LceBconv2d``, ``LceQuantize``).

    Args:
        flatbuffer: The ``.tflite`` file's bytes.

    Returns:
        ``{operator name: count}``, sorted by name.
    """
    model = read_flatbuffer(flatbuffer)
    names = _operator_names(model)
    counts = collections.Counter(
        names[op.opcodeIndex] for graph in model.subgraphs for op in (graph.operators or [])
    )
    return dict(sorted(counts.items()))


_TYPE_BYTES = {
    "FLOAT32": 4,
    "FLOAT16": 2,
    "INT32": 4,
    "UINT32": 4,
    "UINT8": 1,
    "INT8": 1,
    "INT64": 8,
    "UINT64": 8,
    "BOOL": 1,
    "INT16": 2,
    "UINT16": 2,
    "FLOAT64": 8,
    "COMPLEX64": 8,
}


def _tensor_bytes(tensor: Any, batch_size: int) -> int:
    schema = _schema()
    names = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    itemsize = _TYPE_BYTES.get(names.get(tensor.type, ""), 0)  # resources, strings: 0
    shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    dims = [batch_size if d < 0 else int(d) for d in (shape if shape is not None else [])]
    return itemsize * math.prod(dims)


def live_activation_bytes(
    model: Any, subgraph: int, *, batch_size: int
) -> tuple[int, int, str]:
    """Peak of the summed bytes of live non-constant tensors over a subgraph's operators.

    A tensor is live from the operator that writes it (graph inputs: from the start) to
    the last one that reads it (graph outputs: to the end). Returns ``(peak, largest
    single tensor, its name)``.
    """
    graph = model.subgraphs[subgraph]
    operators = graph.operators or []
    constant = {
        index
        for index, tensor in enumerate(graph.tensors)
        if model.buffers[tensor.buffer].data is not None
    }
    start: dict[int, int] = {
        i: 0 for i in (graph.inputs if graph.inputs is not None else [])
    }
    end: dict[int, int] = {}
    for position, op in enumerate(operators):
        for index in op.inputs if op.inputs is not None else []:
            if index >= 0:
                end[index] = position
        for index in op.outputs if op.outputs is not None else []:
            start.setdefault(index, position)
            end.setdefault(index, position)
    for index in graph.outputs if graph.outputs is not None else []:
        end[index] = len(operators)
    sizes = {
        index: _tensor_bytes(graph.tensors[index], batch_size)
        for index in start
        if index not in constant
    }
    peak = 0
    for position in range(max(len(operators), 1)):
        live = sum(
            size for i, size in sizes.items() if start[i] <= position <= end.get(i, 0)
        )
        peak = max(peak, live)
    largest = max(sizes, key=lambda index: sizes[index], default=None)
    if largest is None:
        return peak, 0, ""
    name = graph.tensors[largest].name
    return peak, sizes[largest], name.decode() if isinstance(name, bytes) else str(name)


def constant_bytes(model: Any) -> int:
    """Bytes of a ``read_flatbuffer`` model's constant buffers (weights)."""
    return sum(len(b.data) for b in model.buffers if b.data is not None)


def signature_subgraph(model: Any, key: str) -> int:
    """Index of the subgraph that runs signature ``key``."""
    for signature in model.signatureDefs or []:
        name = signature.signatureKey
        if (name.decode() if isinstance(name, bytes) else name) == key:
            return int(signature.subgraphIndex)
    raise ValueError(f"The flatbuffer has no signature {key!r}.")
