"""Frozen binary feature extractors for CWR* (METHOD §6): larq-zoo QuickNets, a 32-px BNN.

Every backbone is a functional `tf.keras.Model` mapping images with values in ``[0, 1]``
(normalization happens inside the model) to a 2-D feature matrix ``(batch, features)``,
ready for a bias-free linear head. All variants come from one spec table,
`BACKBONE_SPECS`, and one builder, `build_backbone`.

Split points for latent replay are layers named ``latent_0``, ``latent_1``, ... from input
to output; the last one is always the pooled feature vector. `split_backbone` cuts a
backbone at any of them into a lower (input -> latent) and an upper (latent -> features)
model that share the original layers.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any, Callable, Sequence

import larq as lq
import numpy as np
import tensorflow as tf

from larq_cwr._checks import check_int

__all__ = [
    "BACKBONE_NAMES",
    "BACKBONE_SPECS",
    "BackboneSpec",
    "block_input_layer",
    "build_backbone",
    "layer_output",
    "rerun_graph",
    "save_backbone",
    "split_backbone",
    "split_points",
]

# ImageNet statistics on the [0, 1] scale, as larq-zoo's preprocessing uses them (on the
# 0-255 scale there): the QuickNets' published weights expect inputs normalized this way.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Clip of QuickNet's sign quantizers and weight constraint (METHOD §6).
BINARY_CLIP = 1.25

# Variance floor (BN epsilon) after a binary conv. Its ReLU output is a count that moves
# in steps of 2, with a channel variance of 10^2-10^4; a channel that is 0 on every
# training image (dead ReLU) has variance 0, and with epsilon 1e-5 one step on new data
# became a feature of 600 standard deviations, which broke the 8-bit feature range of
# the hybrid update. Epsilon 1 bounds that step to 2 (times gamma) and leaves live
# channels' scale within 0.5%.
BINARY_BN_EPSILON = 1.0

LATENT_PREFIX = "latent_"
_LATENT_PATTERN = re.compile(rf"^{LATENT_PREFIX}(\d+)$")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BackboneSpec:
    """Architecture of one named backbone (METHOD §6).

    Args:
        family: ``"quicknet"`` builds larq-zoo's `QuickNetFactory` with these sections;
            ``"bnn"`` builds our small BNN: a full-precision 3x3 stem conv + BN, then per
            section a full-precision transition (ReLU, 2x2 max-pool, 1x1 conv, BN) and
            QuickNet residual blocks (binary 3x3 `QuantConv2D`, BN, residual add).
        section_filters: Channels of each section; the last is the feature width.
        section_blocks: Residual blocks per section.
        stem_filters: Channels of the stem conv (``"bnn"`` only; larq-zoo's QuickNet stem
            uses ``section_filters[0]``).
        normalize_features: Batch-normalize the pooled features (layer ``features_bn``,
            trained on the first experience, frozen after): centred, unit-scale
            features condition the later SGD head updates (measured on digits with
            latent replay: std over seeds 0-4 from 5.9 to 2.7 points, ``docs/replay.md``).
        min_size: Smallest input height and width the architecture accepts.
        input_mean: Per-channel mean subtracted from ``[0, 1]`` inputs.
        input_std: Per-channel standard deviation dividing the centred inputs. When the
            input does not have ``len(input_mean)`` channels, every channel uses the average
            of ``input_mean`` and of ``input_std``.
    """

    family: str
    section_filters: tuple[int, ...]
    section_blocks: tuple[int, ...]
    min_size: int
    stem_filters: int = 0
    normalize_features: bool = False
    input_mean: tuple[float, ...] = IMAGENET_MEAN
    input_std: tuple[float, ...] = IMAGENET_STD

    @property
    def feature_dim(self) -> int:
        """Width of the pooled feature vector."""
        return self.section_filters[-1]


# The QuickNet sections equal larq-zoo's factories (larq_zoo/sota/quicknet.py), so their
# published weight files load. Their input must survive the stride-4 stem and three
# transitions (max-pool 2 with stride 1, then stride 2) with at least 2 pixels before each
# max-pool: ceil(s / 4) >= 8, that is s >= 29. The BNN's three stride-2 max-pools (padding
# "same") leave 1 pixel at 8 px.
BACKBONE_SPECS: dict[str, BackboneSpec] = {
    "bnn32": BackboneSpec(
        family="bnn",
        stem_filters=32,
        section_filters=(64, 128, 256),
        section_blocks=(2, 2, 2),
        min_size=8,
        input_mean=(0.5,),  # maps [0, 1] to [-1, 1]
        input_std=(0.5,),
    ),
    "bnn32_norm": BackboneSpec(  # bnn32 with batch-normalized pooled features
        family="bnn",
        stem_filters=32,
        section_filters=(64, 128, 256),
        section_blocks=(2, 2, 2),
        min_size=8,
        input_mean=(0.5,),
        input_std=(0.5,),
        normalize_features=True,
    ),
    "quicknet_small": BackboneSpec(
        family="quicknet",
        section_filters=(32, 64, 256, 512),
        section_blocks=(4, 4, 4, 4),
        min_size=29,
    ),
    "quicknet": BackboneSpec(
        family="quicknet",
        section_filters=(64, 128, 256, 512),
        section_blocks=(4, 4, 4, 4),
        min_size=29,
    ),
    "quicknet_large": BackboneSpec(
        family="quicknet",
        section_filters=(64, 128, 256, 512),
        section_blocks=(6, 8, 12, 6),
        min_size=29,
    ),
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONE_SPECS)


def build_backbone(
    name: str,
    *,
    input_shape: Sequence[int],
    weights: str | os.PathLike | None = None,
) -> tf.keras.Model:
    """Builds the named backbone as a feature extractor: images in ``[0, 1]`` -> features.

    The model normalizes its input (layer ``preprocess``), runs the architecture of
    ``BACKBONE_SPECS[name]``, then applies ReLU and global average pooling (larq-zoo's
    ``include_top=False`` returns the raw last feature map, METHOD §6).

    Split points (see `split_points`): for ``"bnn32"``, ``latent_0`` is the stem output,
    ``latent_1`` ... ``latent_n`` the outputs of its n sections and ``latent_{n+1}`` the
    pooled features. For the QuickNets, built by larq-zoo, ``latent_0`` is the last feature
    map (before ReLU) and ``latent_1`` the pooled features; their inner layers keep
    larq-zoo's automatic names (`split_backbone` accepts a residual add's name too).

    Args:
        name: One of `BACKBONE_NAMES`.
        input_shape: ``(height, width, channels)``; height and width at least the spec's
            ``min_size`` (8 for ``"bnn32"``, 29 for the QuickNets).
        weights: ``None`` (random initialization) or the path of a local weights file
            written by `save_backbone` or ``save_weights``: HDF5 (``.h5``, ``.weights.h5``)
            or a TensorFlow checkpoint prefix. For the QuickNets, larq-zoo's ``*_notop.h5``
            files load too (their sections are the same).

    Returns:
        A functional `tf.keras.Model`; input ``(batch, *input_shape)``, output
        ``(batch, BACKBONE_SPECS[name].feature_dim)``.

    Raises:
        ValueError: ``name`` unknown; ``input_shape`` not 3 positive ints or smaller than
            the minimum; the weights file does not fit the architecture.
        FileNotFoundError: ``weights`` names no existing file.

    Example:
        >>> import larq_cwr.backbones as backbones
        >>> model = backbones.build_backbone("bnn32", input_shape=(16, 16, 1))
        >>> model.output_shape
        (None, 256)
    """
    spec = _get_spec(name)
    shape = _check_input_shape(input_shape, spec)
    weights_path = _check_weights_path(weights)

    inputs = tf.keras.Input(shape=shape, name="image")
    x = _preprocess(spec, shape[-1])(inputs)
    mark = _SplitPointMarker()
    if spec.family == "bnn":
        x = _binary_resnet(spec, x, mark)
    else:
        x = mark(_zoo_quicknet(spec, x, shape))
    x = tf.keras.layers.Activation("relu")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    if spec.normalize_features:
        x = tf.keras.layers.BatchNormalization(
            momentum=0.9, epsilon=1e-5, name="features_bn"
        )(x)
    outputs = mark(x)
    model = tf.keras.Model(inputs, outputs, name=name)
    if weights_path is not None:
        _load_weights(model, weights_path)
    return model


def save_backbone(backbone: tf.keras.Model, path: str | os.PathLike) -> pathlib.Path:
    """Saves a backbone's weights; ``build_backbone(name, weights=path)`` restores them.

    Args:
        backbone: A model from `build_backbone`.
        path: File to write: HDF5 when it ends in ``.h5`` (also ``.weights.h5``), else a
            TensorFlow checkpoint with this prefix. Missing parent folders are created.

    Returns:
        ``path`` as a `pathlib.Path`.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    backbone.save_weights(str(path), save_format="h5" if path.suffix == ".h5" else "tf")
    return path


def block_input_layer(backbone: tf.keras.Model, blocks: int) -> str:
    """The layer whose output feeds the ``blocks``-th binary block from the top.

    Cutting there (``split_backbone``) leaves the last ``blocks`` binary residual blocks,
    with the full-precision transitions between them, in the upper part; ``blocks=0``
    gives the pooled features (the last split point).

    Args:
        backbone: A model from ``build_backbone``.
        blocks: Int in ``[0, number of binary blocks]``.

    Returns:
        A layer name ``split_backbone`` accepts.

    Raises:
        ValueError: ``blocks`` out of range.

    Example:
        >>> import larq_cwr.backbones as backbones
        >>> model = backbones.build_backbone("bnn32", input_shape=(16, 16, 1))
        >>> lower, upper = backbones.split_backbone(model, block_input_layer(model, 2))
        >>> lower.output_shape, upper.output_shape
        ((None, 2, 2, 256), (None, 256))
    """
    binary = [
        layer for layer in backbone.layers if isinstance(layer, lq.layers.QuantConv2D)
    ]
    check_int(blocks, "blocks", minimum=0)
    if not 0 <= blocks <= len(binary):
        raise ValueError(
            f"`blocks`={blocks} is out of range; {backbone.name!r} has {len(binary)} "
            "binary blocks."
        )
    if blocks == 0:
        return split_points(backbone)[-1]
    conv = binary[-blocks]
    return conv.input._keras_history.layer.name


def split_points(backbone: tf.keras.Model) -> list[str]:
    """Names of the split points ``latent_0``, ``latent_1``, ..., from input to output.

    The last one is the pooled feature vector (its upper model is the identity).

    Args:
        backbone: A model from `build_backbone`.

    Returns:
        Layer names ordered from input to output.
    """
    indexed = []
    for layer in backbone.layers:
        match = _LATENT_PATTERN.match(layer.name)
        if match:
            indexed.append((int(match.group(1)), layer.name))
    return [name for _, name in sorted(indexed)]


def split_backbone(
    backbone: tf.keras.Model, layer_name: str
) -> tuple[tf.keras.Model, tf.keras.Model]:
    """Cuts a functional backbone at a layer into lower and upper models.

    ``upper(lower(x))`` equals ``backbone(x)``. Both models reuse the backbone's layers
    (no copies): training or freezing one changes the backbone too. Any layer whose output
    every input-to-output path crosses can be the cut (all of `split_points` can); a layer
    bypassed by a residual connection cannot.

    Note that in the binary blocks a residual add carries full-precision values, so the
    latents at these points are real-valued, not signs.

    Args:
        backbone: A functional model with one input and one output, such as those of
            `build_backbone`.
        layer_name: The layer to cut after, e.g. one of `split_points(backbone)`.

    Returns:
        ``(lower, upper)``: ``lower`` maps the backbone's input to the layer's output;
        ``upper`` maps a latent of that shape to the backbone's output.

    Raises:
        ValueError: No layer ``layer_name``, or paths from input to output bypass it.

    Example:
        >>> import larq_cwr.backbones as backbones
        >>> model = backbones.build_backbone("bnn32", input_shape=(16, 16, 1))
        >>> lower, upper = backbones.split_backbone(model, "latent_2")
        >>> lower.output_shape, upper.output_shape
        ((None, 4, 4, 128), (None, 256))
    """
    names = [layer.name for layer in backbone.layers]
    if layer_name not in names:
        raise ValueError(
            f"`layer_name`={layer_name!r} is not a layer of {backbone.name!r}; its split "
            f"points are {split_points(backbone)}."
        )
    latent = layer_output(backbone, layer_name)
    lower = tf.keras.Model(backbone.inputs, latent, name=f"{backbone.name}_lower")
    upper_input = tf.keras.Input(shape=latent.shape[1:], name=f"{layer_name}_input")
    upper_output = rerun_graph(backbone, upper_input, start=latent)
    if upper_output is None:
        raise ValueError(
            f"Cannot split {backbone.name!r} at {layer_name!r}: some paths from input to "
            f"output bypass it (e.g. a residual connection). Use one of "
            f"{split_points(backbone)}."
        )
    upper = tf.keras.Model(upper_input, upper_output, name=f"{backbone.name}_upper")
    return lower, upper


def _get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONE_SPECS:
        raise ValueError(
            f"Unknown backbone `name`={name!r}; expected one of {BACKBONE_NAMES}."
        )
    return BACKBONE_SPECS[name]


def _check_input_shape(input_shape: Sequence[int], spec: BackboneSpec) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0
        for d in shape
    ):
        raise ValueError(
            f"`input_shape` must be 3 positive ints (height, width, channels); "
            f"received {input_shape!r}."
        )
    if min(shape[:2]) < spec.min_size:
        raise ValueError(
            f"`input_shape`={shape} is too small for this backbone: height and width must "
            f"be at least {spec.min_size} pixels."
        )
    return tuple(int(d) for d in shape)


def _check_weights_path(weights: str | os.PathLike | None) -> str | None:
    if weights is None:
        return None
    path = os.fspath(weights)
    # A TensorFlow checkpoint is named by its prefix: "<path>.index" is the file on disk.
    if not (os.path.isfile(path) or os.path.isfile(path + ".index")):
        raise FileNotFoundError(
            f"`weights` file {path!r} not found (nor a TensorFlow checkpoint "
            f"{path + '.index'!r})."
        )
    return path


def _load_weights(model: tf.keras.Model, path: str) -> None:
    try:
        status = model.load_weights(path)
        if status is not None:  # TensorFlow checkpoint: every model variable must be in it
            status.assert_existing_objects_matched()
    except (ValueError, AssertionError, KeyError, tf.errors.OpError) as error:
        raise ValueError(
            f"`weights` file {path!r} does not fit backbone {model.name!r} with input "
            f"shape {model.input_shape[1:]}: {error}"
        ) from error
    except OSError as error:  # h5py: truncated, empty or not HDF5 at all
        raise ValueError(
            f"`weights` file {path!r} is truncated, corrupt or not a weights file; "
            f"expected HDF5 written by `save_backbone` or `save_weights`, got "
            f"{type(error).__name__}: {error}"
        ) from error


def _preprocess(spec: BackboneSpec, channels: int) -> tf.keras.layers.Layer:
    mean, std = np.asarray(spec.input_mean), np.asarray(spec.input_std)
    if len(mean) != channels:
        mean, std = np.full(channels, mean.mean()), np.full(channels, std.mean())
    return tf.keras.layers.Normalization(
        axis=-1, mean=mean.tolist(), variance=(std**2).tolist(), name="preprocess"
    )


def _binary_resnet(spec: BackboneSpec, x: tf.Tensor, mark: _SplitPointMarker) -> tf.Tensor:
    """Our BNN's body; marks the stem and section outputs as split points."""
    x = tf.keras.layers.Conv2D(
        spec.stem_filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal"
    )(x)
    x = mark(tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))
    for filters, blocks in zip(spec.section_filters, spec.section_blocks):
        x = _transition(x, filters)
        for _ in range(blocks):
            x = _binary_residual_block(x)
        x = mark(x)
    return x


def _transition(x: tf.Tensor, filters: int) -> tf.Tensor:
    """Full-precision transition: halves the resolution, changes the width (as QuickNet)."""
    x = tf.keras.layers.Activation("relu")(x)
    x = tf.keras.layers.MaxPool2D(pool_size=2, strides=2, padding="same")(x)
    x = tf.keras.layers.Conv2D(
        filters, 1, use_bias=False, kernel_initializer="glorot_normal"
    )(x)
    return tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)


def _binary_residual_block(x: tf.Tensor) -> tf.Tensor:
    """QuickNet's residual block: binary 3x3 conv (signs of inputs and weights), BN, add."""
    y = lq.layers.QuantConv2D(
        int(x.shape[-1]),
        3,
        padding="same",
        pad_values=1.0,  # pad with +1, a binary value, so LCE keeps the conv binary
        activation="relu",
        input_quantizer=lq.quantizers.SteSign(clip_value=BINARY_CLIP),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=BINARY_CLIP),
        kernel_constraint=lq.constraints.WeightClip(clip_value=BINARY_CLIP),
        kernel_initializer="glorot_normal",
        use_bias=False,
    )(x)
    y = tf.keras.layers.BatchNormalization(momentum=0.9, epsilon=BINARY_BN_EPSILON)(y)
    return tf.keras.layers.Add()([x, y])


def _zoo_quicknet(spec: BackboneSpec, x: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """larq-zoo's QuickNet body applied to tensor ``x``; returns its last feature map.

    larq-zoo builds its model on its own input; its layers are then called on ``x`` so that
    they sit in the backbone's graph (not as a nested model, which `lq.models.summary` would
    show as one row).
    """
    from larq_zoo.sota.quicknet import QuickNetFactory  # deferred: larq-zoo imports a lot

    zoo_model = QuickNetFactory(
        input_shape=shape,
        weights=None,
        include_top=False,
        num_classes=1000,  # unused without the top; larq-zoo's validation reads it
        section_filters=spec.section_filters,
        section_blocks=spec.section_blocks,
    ).build()
    return rerun_graph(zoo_model, x, start=zoo_model.inputs[0])


class _SplitPointMarker:
    """Names successive tensors ``latent_0``, ``latent_1``, ... with identity layers.

    A linear `Activation` returns its input unchanged, so the marks add no op (nor any in
    TFLite); they only give the split points stable names.
    """

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        name = f"{LATENT_PREFIX}{self.count}"
        self.count += 1
        return tf.keras.layers.Activation("linear", name=name)(x)


class _Reused(list):
    """One value for any number of uses (`Node.map_arguments` pops one per use)."""

    def pop(self, index: int = -1):
        return self[index]


def layer_output(model: tf.keras.Model, layer_name: str) -> tf.Tensor:
    """Output of ``model``'s own call of a layer (a shared layer may have other calls)."""
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.layer.name == layer_name:
                return node.outputs
    raise ValueError(f"Layer {layer_name!r} is not called in model {model.name!r}.")


def rerun_graph(
    model: tf.keras.Model,
    new_input: tf.Tensor,
    *,
    start: tf.Tensor,
    on_output: Callable[[tf.keras.layers.Layer, tf.Tensor], tf.Tensor] | None = None,
    expand_nested: bool = False,
    **call_kwargs: Any,
) -> tf.Tensor | None:
    """Calls ``model``'s layers downstream of tensor ``start`` on ``new_input`` instead.

    Walks the functional graph as tf-keras' `Functional._run_internal_graph` does, from the
    deepest nodes to the output, skipping nodes that need tensors upstream of ``start``.
    The layers are shared, not copied.

    Args:
        model: A functional model with one output.
        new_input: What replaces ``start``: a symbolic ``tf.keras.Input`` (to build a new
            functional model) or a concrete tensor (to run the layers).
        start: A tensor of ``model``'s graph (an input or a layer's output).
        on_output: Called as ``on_output(layer, output)`` on every layer's output; what it
            returns goes on instead (to quantize activations, or to record them).
        expand_nested: Walk into nested functional models (single input) instead of
            calling them, so that ``on_output`` sees their layers too.
        **call_kwargs: Passed to every layer call: ``training=False`` (Keras hands it
            on to the layers that take it).

    Returns:
        The new output tensor, or None when the output depends on tensors upstream of
        ``start`` (paths bypass it).
    """
    values = {str(id(start)): _Reused([new_input])}
    for depth in sorted(model._nodes_by_depth, reverse=True):
        for node in model._nodes_by_depth[depth]:
            if node.is_input or any(i not in values for i in node.flat_input_ids):
                continue
            args, kwargs = node.map_arguments(values)
            layer = node.layer
            if expand_nested and _is_functional(layer):
                outputs = rerun_graph(
                    layer,
                    args[0],
                    start=layer.inputs[0],
                    on_output=on_output,
                    expand_nested=True,
                    **call_kwargs,
                )
            else:
                outputs = layer(*args, **{**kwargs, **call_kwargs})
                if on_output is not None:
                    outputs = on_output(layer, outputs)
            for output_id, value in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
                values[output_id] = _Reused([value])
    output_id = str(id(model.outputs[0]))
    return values[output_id][0] if output_id in values else None


def _is_functional(layer: tf.keras.layers.Layer) -> bool:
    return isinstance(layer, tf.keras.Model) and hasattr(layer, "_nodes_by_depth")
