"""Quantized back-propagation through the trainable blocks above a latent layer (METHOD §5).

Above the latent replay layer the network keeps training after the first experience:
the last binary blocks, pooling and the CWR* head. On a device their training must be
cheap too, so (Vorabbi et al., VISAPP 2024):

- every activation between layers is fake-quantized to ``forward_bits`` (q_f), and
  every gradient flowing back between layers to ``backward_bits`` (q_b), each on its
  own min/max (``quantize_activation``); BatchNormalization computes in float;
- the latent (real-valued) weights of binary layers are stored with
  ``latent_weight_bits`` (b_bin) on a symmetric grid of ``[-1.25, 1.25]``, where
  QuickNet clips them, that has no level at 0 (``latent_weight_grid``): storing a
  float weight never changes its sign, so it never flips the binary weight the layer
  uses; each update is stochastically rounded to whole levels
  (``stochastic_latent_update``), since SGD's updates are far below half a level;
  other kernels keep ``update_bits`` like the head, BatchNormalization parameters float
  (``update_block_weights``).

``BlockStack`` reruns a functional model's graph from the latent layer to the head's
input with these quantizers in place; ``HybridQuantizedTrainStep`` uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import tensorflow as tf

from larq_cwr.backbones import BINARY_CLIP, rerun_graph
from larq_cwr.quantizers import DEFAULT_GRID, snap_to_grid

__all__ = [
    "BLOCK_OPTIMIZERS",
    "DEFAULT_LATENT_WEIGHT_BITS",
    "LATENT_WEIGHT_ROUNDING",
    "BlockStack",
    "binary_kernels",
    "block_optimizer_directions",
    "block_optimizer_slot_count",
    "latent_weight_grid",
    "quantize_activation",
    "stochastic_latent_update",
    "update_block_weights",
]

DEFAULT_LATENT_WEIGHT_BITS = 8  # METHOD §5: binary latent weights stored with 8 bits
LATENT_WEIGHT_ROUNDING = ("nearest", "stochastic")
# How the trainable blocks turn gradients into steps: METHOD §5's plain SGD, SGD with
# (heavy-ball) momentum, or Adam; the hyper-parameters are Keras' defaults.
BLOCK_OPTIMIZERS = ("sgd", "momentum", "adam")
BLOCK_MOMENTUM = 0.9
ADAM_BETA_1 = 0.9
ADAM_BETA_2 = 0.999
ADAM_EPSILON = 1e-7


def _own_range(tensor: tf.Tensor, bits: int, grid: str) -> tf.Tensor:
    return snap_to_grid(
        tensor,
        bits,
        low=tf.reduce_min(tensor),
        high=tf.reduce_max(tensor),
        grid=grid,
    )


def quantize_activation(
    x: tf.Tensor,
    *,
    forward_bits: int | None,
    backward_bits: int | None,
    grid: str = DEFAULT_GRID,
) -> tf.Tensor:
    """``x`` on a ``forward_bits`` grid; its gradient on a ``backward_bits`` grid.

    Each on the tensor's own min/max (METHOD §3); ``None`` leaves that direction float.

    Args:
        x: Float tensor (an activation between two layers).
        forward_bits: q_f, or None.
        backward_bits: q_b, or None.
        grid: ``"zero_exact"`` or ``"paper"``.

    Returns:
        The (fake-)quantized activation.
    """
    if forward_bits is None and backward_bits is None:
        return x

    @tf.custom_gradient
    def quantize(inputs):
        outputs = inputs if forward_bits is None else _own_range(inputs, forward_bits, grid)

        def grad(upstream):
            if backward_bits is None:
                return upstream
            return _own_range(upstream, backward_bits, grid)

        return outputs, grad

    return quantize(x)


def binary_kernels(layers: Sequence[tf.keras.layers.Layer]) -> list[tf.Variable]:
    """The kernels of Larq layers that binarize their kernel (a ``kernel_quantizer``)."""
    return [
        layer.kernel
        for layer in layers
        if getattr(layer, "kernel_quantizer", None) is not None
        and isinstance(getattr(layer, "kernel", None), tf.Variable)
    ]


def latent_weight_grid(weights: tf.Tensor, bits: int) -> tf.Tensor:
    """Binary latent weights on the ``bits``-bit grid of ``[-1.25, 1.25]`` with no zero.

    The ``2^bits`` levels are ``(k + 1/2) * step`` for integers ``-2^(bits-1) <= k <
    2^(bits-1)``, ``step = 2.5 / (2^bits - 1)``, so the outermost levels are the clip
    values. Each weight goes to the level of the step it lies in, ``k = floor(w /
    step)``: a weight ``w >= 0`` stays positive and ``w < 0`` negative, which is the
    sign ``SteSign`` binarizes (0 counts as positive there too). The stored integer is
    ``k``, an int8 for 8 bits whose sign bit is the binary weight. A grid with a level
    at 0 (TFLite's int8 weights) would turn every small negative weight into 0, a
    binary +1: with float latent weights from the first experience, 8.4% of the binary
    weights flipped on the first update (digits, seed 0) and the trained blocks
    collapsed.

    Args:
        weights: Latent weights.
        bits: Storage bits, at least 2.

    Returns:
        The weights on the grid (values beyond ``±1.25`` go to the outermost levels).

    Example:
        >>> import tensorflow as tf
        >>> from larq_cwr.backprop import latent_weight_grid
        >>> latent_weight_grid(tf.constant([-0.001, 0.0, 0.6, -2.0]), 2).numpy()
        array([-0.41666666,  0.41666666,  0.41666666, -1.25      ], dtype=float32)
    """
    step, half = _latent_step(bits)
    return _latent_level(tf.floor(weights / step), step, half)


def stochastic_latent_update(
    weights: tf.Tensor, update: tf.Tensor, *, bits: int, noise: tf.Tensor
) -> tf.Tensor:
    """``weights + update`` on `latent_weight_grid`'s levels, the update stochastically
    rounded to whole steps.

    The weights first go to their own level (``k = floor(w / step)``, sign kept, as
    ``latent_weight_grid``), then move by ``floor(update / step + noise)`` levels: a
    fraction ``f`` of a step moves one level with probability ``f``, so the stored
    update is unbiased. Round-to-nearest drops every update below half a step; at the
    reference block learning rate (METHOD §5, SGD lr 0.009) the latent weights'
    updates are about 1e-6 against half a step of 4.9e-3 (8 bits), so no binary weight
    would ever change.

    Args:
        weights: Latent weights (on the grid, or float ones, e.g. from the first
            experience).
        update: The float update (``-lr * gradient``), like ``weights``.
        bits: Storage bits, at least 2.
        noise: Uniform ``[0, 1)`` draws like ``weights``.

    Returns:
        The updated weights on the grid (beyond ``±1.25``: the outermost levels).

    Example:
        >>> import tensorflow as tf
        >>> from larq_cwr.backprop import stochastic_latent_update
        >>> step = 2.5 / 3  # 2 bits: levels -1.25, -0.417, 0.417, 1.25
        >>> stochastic_latent_update(tf.constant([-0.4, -0.4, 1.25]),
        ...     tf.constant([0.25 * step, 0.25 * step, step]), bits=2,
        ...     noise=tf.constant([0.7, 0.8, 0.0])).numpy()
        array([-0.41666666,  0.41666666,  1.25      ], dtype=float32)
    """
    step, half = _latent_step(bits)
    return _latent_level(
        tf.floor(weights / step) + tf.floor(update / step + noise), step, half
    )


def _latent_step(bits: int) -> tuple[float, float]:
    half = 2.0 ** (bits - 1)
    return 2.0 * BINARY_CLIP / (2.0 * half - 1.0), half


def _latent_level(k: tf.Tensor, step: float, half: float) -> tf.Tensor:
    return (tf.clip_by_value(k, -half, half - 1.0) + 0.5) * step


def block_optimizer_slot_count(optimizer: str) -> int:
    """Float state tensors ``optimizer`` keeps per trained variable (0, 1 or 2)."""
    return BLOCK_OPTIMIZERS.index(optimizer)


def block_optimizer_directions(
    gradients: Sequence[tf.Tensor | None],
    slots: Sequence[Sequence[tf.Variable]],
    *,
    optimizer: str,
    step: tf.Tensor | int,
) -> list[tf.Tensor | None]:
    """Step directions of the blocks' optimizer: each variable moves by ``-lr * d``.

    - ``"sgd"``: ``d = g``;
    - ``"momentum"``: ``m = 0.9 m + g``, ``d = m`` (Keras' SGD with momentum 0.9);
    - ``"adam"``: ``m = 0.9 m + 0.1 g``, ``v = 0.999 v + 0.001 g^2``,
      ``d = m / (sqrt(v) + 1e-7) * sqrt(1 - 0.999^t) / (1 - 0.9^t)`` with ``t = step``
      (Keras' Adam).

    Args:
        gradients: Gradients of the trained variables (None: not updated, its slots
            unchanged).
        slots: Per variable, its ``block_optimizer_slot_count(optimizer)`` state
            variables (``m``, then ``v``), updated in place.
        optimizer: One of ``BLOCK_OPTIMIZERS``.
        step: This update's number, counting from 1 (Adam's bias correction).

    Returns:
        The directions, None where the gradient is None.
    """
    directions: list[tf.Tensor | None] = []
    for gradient, state in zip(gradients, slots):
        if gradient is None or optimizer == "sgd":
            directions.append(gradient)
        elif optimizer == "momentum":
            (velocity,) = state
            velocity.assign(BLOCK_MOMENTUM * velocity + gradient)
            directions.append(tf.identity(velocity))
        else:
            first, second = state
            first.assign(ADAM_BETA_1 * first + (1.0 - ADAM_BETA_1) * gradient)
            second.assign(ADAM_BETA_2 * second + (1.0 - ADAM_BETA_2) * tf.square(gradient))
            t = tf.cast(step, gradient.dtype)
            correction = tf.sqrt(1.0 - ADAM_BETA_2**t) / (1.0 - ADAM_BETA_1**t)
            directions.append(correction * first / (tf.sqrt(second) + ADAM_EPSILON))
    return directions


def update_block_weights(
    variables: Sequence[tf.Variable],
    gradients: Sequence[tf.Tensor | None],
    *,
    learning_rate: tf.Tensor | float,
    binary: Sequence[tf.Variable],
    float_only: Sequence[tf.Variable],
    latent_weight_bits: int | None = DEFAULT_LATENT_WEIGHT_BITS,
    latent_weight_noise: Callable[[tf.Variable], tf.Tensor] | None = None,
    update_bits: int | None = None,
    grid: str = DEFAULT_GRID,
) -> None:
    """One SGD step on the trainable blocks, storing each kind of weight as METHOD §5 says.

    - binary latent weights: ``clip(W - lr * g, -1.25, 1.25)`` on the
      ``latent_weight_bits`` grid of `latent_weight_grid` (no level at 0: rounding
      keeps every weight's sign); with ``latent_weight_noise``, the update is
      stochastically rounded to whole levels instead (`stochastic_latent_update`);
    - ``float_only`` (BatchNormalization parameters): float;
    - other weights: on the ``update_bits`` grid of their own min/max, like the head.

    Args:
        variables: Trainable variables of the blocks.
        gradients: Their gradients (None: not updated).
        learning_rate: SGD learning rate.
        binary: The variables that are binary latent weights.
        float_only: The variables kept in float.
        latent_weight_bits: b_bin, or None for float latent weights.
        latent_weight_noise: Called with a binary variable, returns uniform ``[0, 1)``
            noise of its shape for stochastic rounding; None: nearest level.
        update_bits: Storage bits of the other weights, or None for float.
        grid: ``"zero_exact"`` or ``"paper"``.
    """
    binary_ids = {id(v) for v in binary}
    float_ids = {id(v) for v in float_only}
    for variable, gradient in zip(variables, gradients):
        if gradient is None:
            continue
        delta = -tf.cast(learning_rate, variable.dtype) * gradient
        if id(variable) in binary_ids and latent_weight_bits is not None:
            if latent_weight_noise is None:  # the grid clips to its outermost levels
                updated = latent_weight_grid(variable + delta, latent_weight_bits)
            else:
                updated = stochastic_latent_update(
                    variable,
                    delta,
                    bits=latent_weight_bits,
                    noise=latent_weight_noise(variable),
                )
        elif id(variable) in binary_ids:
            updated = tf.clip_by_value(variable + delta, -BINARY_CLIP, BINARY_CLIP)
        elif id(variable) not in float_ids and update_bits is not None:
            updated = _own_range(variable + delta, update_bits, grid)
        else:
            updated = variable + delta
        variable.assign(updated)


class BlockStack:
    """A functional model's layers between a latent layer and the head's input.

    Built once per model: ``lower(x)`` maps the model's inputs to the latent (frozen,
    inference mode); ``upper(latent, ...)`` runs the layers above it, optionally with
    quantized activations and gradients. Both share the model's layers (no copies),
    nested functional models (a backbone inside the model) included.

    Args:
        model: Functional model; its single input feeds the layer graph.
        features: The tensor of ``model``'s graph that the head takes as input.
        latent_layer: Name of the layer (or input) whose output is the latent.

    Raises:
        ValueError: No such layer, or paths from the input to the head bypass it.
    """

    def __init__(
        self, model: tf.keras.Model, features: tf.Tensor, *, latent_layer: str
    ) -> None:
        inputs = tf.keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype)
        feature_model = tf.keras.Model(model.inputs, features)
        found: dict[str, tf.Tensor] = {}
        self.latent_layer: tf.keras.layers.Layer | None = None
        if latent_layer in {layer.name for layer in model.layers} and isinstance(
            model.get_layer(latent_layer), tf.keras.layers.InputLayer
        ):
            found[latent_layer] = inputs

        def record(layer, output):
            if layer.name == latent_layer:
                found[layer.name] = output
                self.latent_layer = layer
            return output

        flat_features = rerun_graph(
            feature_model,
            inputs,
            start=feature_model.inputs[0],
            on_output=record,
            expand_nested=True,
        )
        if latent_layer not in found:
            raise ValueError(
                f"`latent_layer`={latent_layer!r} is not a layer between the model's "
                "input and its CWRStarHead."
            )
        self.flat = tf.keras.Model(inputs, flat_features)
        self.latent = found[latent_layer]
        self.lower = tf.keras.Model(inputs, self.latent)
        latent_input = tf.keras.Input(self.latent.shape[1:])
        upper_layers: list[tf.keras.layers.Layer] = []

        def collect(layer, output):
            upper_layers.append(layer)
            return output

        upper_features = rerun_graph(
            self.flat, latent_input, start=self.latent, on_output=collect
        )
        if upper_features is None:
            raise ValueError(
                f"Cannot split at `latent_layer`={latent_layer!r}: some paths from the "
                "input to the head bypass it (a residual connection?)."
            )
        self.layers = upper_layers
        self.upper_model = tf.keras.Model(latent_input, upper_features)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one latent (no batch axis)."""
        return tuple(int(d) for d in self.latent.shape[1:])

    def contains(self, layer: tf.keras.layers.Layer) -> bool:
        """True if ``layer`` (or a layer inside it) lies above the latent layer."""
        return any(layer is mine for mine in self.layers)

    def upper(
        self,
        latent: tf.Tensor,
        *,
        forward_bits: int | None = None,
        backward_bits: int | None = None,
        grid: str = DEFAULT_GRID,
    ) -> tf.Tensor:
        """Head-input features of ``latent`` through the layers above it (inference mode:
        BatchNormalization uses its moving statistics), activations and their gradients
        quantized between layers."""

        def quantize(layer: Any, output: tf.Tensor) -> tf.Tensor:
            return quantize_activation(
                output, forward_bits=forward_bits, backward_bits=backward_bits, grid=grid
            )

        return rerun_graph(
            self.upper_model,
            latent,
            start=self.upper_model.inputs[0],
            on_output=quantize,
            training=False,
        )
