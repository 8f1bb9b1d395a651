"""Per-tensor affine fake quantization (METHOD §3).

``q(x) = round((clip(x, m, M) - m) * s) / s + m`` with ``s = (2^bits - 1) / (M - m)``,
rounding half to even, identity (straight-through) gradient. The range ``[m, M]`` is the
tensor's own min/max unless a static range is given; when ``m == M`` the input is
returned unchanged.

Two implementations are offered:

- ``zero_exact=False`` (default): the formula above, written with TensorFlow ops. Its
  grid starts at ``m`` and in general does not contain 0.
- ``zero_exact=True``: ``tf.quantization.fake_quant_with_min_max_vars``, which first
  nudges ``[m, M]`` so that 0 is a grid point (TFLite's convention; converts to a
  builtin TFLite op). Its gradient is replaced by the identity, like the default's.

``benchmarks/quantizer_choice.py`` measures both in the hybrid CWR* update;
``docs/quantization.md`` reports the result.
"""

from __future__ import annotations

from typing import Any, Callable

import larq as lq
import tensorflow as tf

from larq_cwr._checks import check_bits

__all__ = [
    "FakeQuantizer",
    "deserialize",
    "fake_quantize",
    "get",
    "serialize",
    "snap_to_grid",
    "stochastic_quantize",
]


def _check_range(min_value: Any, max_value: Any) -> None:
    if (min_value is None) != (max_value is None):
        raise ValueError(
            "Give both `min_value` and `max_value` for a static range, or neither for the "
            f"tensor's own min/max; got min_value={min_value!r}, max_value={max_value!r}."
        )
    if min_value is not None and _is_python_number(min_value) and min_value > max_value:
        raise ValueError(
            f"`min_value` must not exceed `max_value`; got {min_value} > {max_value}."
        )


def _is_python_number(value: Any) -> bool:
    return isinstance(value, (int, float))


def _resolve_range(
    x: tf.Tensor, min_value: Any, max_value: Any
) -> tuple[tf.Tensor, tf.Tensor]:
    if min_value is None:
        return tf.reduce_min(x), tf.reduce_max(x)
    return tf.cast(min_value, x.dtype), tf.cast(max_value, x.dtype)


_MIN_SPAN = 1e-30  # stands in for a zero span; (2^16 - 1) / _MIN_SPAN stays finite


def snap_to_grid(
    x: tf.Tensor,
    bits: int,
    low: tf.Tensor | float,
    high: tf.Tensor | float,
    *,
    rounding: str = "nearest",
    generator: tf.random.Generator | None = None,
    zero_exact: bool = False,
) -> tf.Tensor:
    """Forward-only quantization onto the ``2^bits`` levels of ``[low, high]``.

    The lean core of ``fake_quantize`` for hand-written update steps that need no
    gradient (``HybridQuantizedTrainStep``): no gradient wrapper and no argument
    checks. Where ``low == high`` every value maps to ``low`` (``fake_quantize``
    instead returns its input unchanged, METHOD §3).

    Args:
        x: Float tensor.
        bits: Int in [2, 16] (not checked here).
        low: Lower end of the range.
        high: Upper end of the range.
        rounding: ``"nearest"`` (half to even) or ``"stochastic"`` (needs ``generator``).
        generator: Seeded ``tf.random.Generator`` for stochastic rounding.
        zero_exact: Use ``tf.quantization.fake_quant_with_min_max_vars`` (nearest only).

    Returns:
        A tensor like ``x`` on the grid.
    """
    if zero_exact:
        quantized = tf.quantization.fake_quant_with_min_max_vars(
            tf.cast(x, tf.float32),
            tf.cast(low, tf.float32),
            tf.cast(high, tf.float32),
            num_bits=bits,
        )
        return tf.cast(quantized, x.dtype)
    scale = (2.0**bits - 1.0) / tf.maximum(high - low, _MIN_SPAN)
    scaled = (tf.clip_by_value(x, low, high) - low) * scale
    if rounding == "stochastic":
        # Round up with probability equal to the fractional part: E[q(x)] = clip(x).
        levels = tf.floor(scaled + generator.uniform(tf.shape(scaled), dtype=scaled.dtype))
    else:
        levels = tf.round(scaled)  # tf.round rounds half to even, as METHOD §3 asks
    return levels / scale + low


def _straight_through(forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def _quantize(inputs):
        def grad(upstream):
            return upstream

        return forward(inputs), grad

    return _quantize(x)


def fake_quantize(
    x: tf.Tensor,
    bits: int,
    *,
    min_value: float | tf.Tensor | None = None,
    max_value: float | tf.Tensor | None = None,
    zero_exact: bool = False,
) -> tf.Tensor:
    """Fake-quantize ``x`` to ``bits`` bits on ``[min_value, max_value]`` (METHOD §3).

    Args:
        x: Float tensor.
        bits: Int in [2, 16]; the grid has ``2^bits - 1`` steps.
        min_value: Lower end of a static range, or None for ``min(x)``.
        max_value: Upper end of a static range, or None for ``max(x)``.
        zero_exact: Use ``tf.quantization.fake_quant_with_min_max_vars``, which nudges
            the range so that 0 is a grid point.

    Returns:
        A tensor like ``x`` whose values lie on the grid; its gradient is the identity.

    Raises:
        ValueError: ``bits`` outside [2, 16], only one range end given, or
            ``min_value > max_value``.

    Example:
        >>> import larq_cwr, tensorflow as tf
        >>> fake_quantize(tf.constant([0.0, 0.4, 1.0]), 2).numpy().round(4).tolist()
        [0.0, 0.3333, 1.0]
    """
    bits = check_bits(bits)
    _check_range(min_value, max_value)
    x = tf.convert_to_tensor(x)
    low, high = _resolve_range(x, min_value, max_value)

    def forward(inputs):
        quantized = snap_to_grid(inputs, bits, low, high, zero_exact=zero_exact)
        return tf.where(high > low, quantized, inputs)  # m == M: unchanged (METHOD §3)

    return _straight_through(forward, x)


def stochastic_quantize(
    x: tf.Tensor,
    bits: int,
    *,
    generator: tf.random.Generator,
    min_value: float | tf.Tensor | None = None,
    max_value: float | tf.Tensor | None = None,
) -> tf.Tensor:
    """Quantize ``x`` with unbiased stochastic rounding on the METHOD §3 grid.

    Each value rounds up with probability equal to its distance from the grid point
    below, in steps, so ``E[q(x)] = clip(x)``: small updates survive low-bit storage
    on average instead of rounding away (METHOD §4).

    Args:
        x: Float tensor.
        bits: Int in [2, 16].
        generator: Seeded ``tf.random.Generator`` drawing the rounding noise.
        min_value: Lower end of a static range, or None for ``min(x)``.
        max_value: Upper end of a static range, or None for ``max(x)``.

    Returns:
        A tensor like ``x`` on the grid; its gradient is the identity.

    Raises:
        ValueError: ``bits`` outside [2, 16] or an inconsistent range.
    """
    bits = check_bits(bits)
    _check_range(min_value, max_value)
    x = tf.convert_to_tensor(x)
    low, high = _resolve_range(x, min_value, max_value)

    def forward(inputs):
        quantized = snap_to_grid(
            inputs, bits, low, high, rounding="stochastic", generator=generator
        )
        return tf.where(high > low, quantized, inputs)

    return _straight_through(forward, x)


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class FakeQuantizer(lq.quantizers.Quantizer):
    """Affine fake quantizer of METHOD §3 as a Larq quantizer.

    Usable wherever Larq takes a quantizer (``input_quantizer``/``kernel_quantizer`` of
    ``lq.layers.QuantDense``, ...) and reported by ``lq.models.summary`` with its
    ``precision``.

    Args:
        bits: Int in [2, 16].
        min_value: Static lower range end, or None for the tensor's own min.
        max_value: Static upper range end, or None for the tensor's own max.
        zero_exact: Use TensorFlow's zero-exact ``fake_quant_with_min_max_vars``.

    Raises:
        ValueError: ``bits`` outside [2, 16] or an inconsistent range.

    Example:
        >>> import larq_cwr, larq as lq
        >>> layer = lq.layers.QuantDense(4, input_quantizer=FakeQuantizer(8))
    """

    def __init__(
        self,
        bits: int = 8,
        *,
        min_value: float | None = None,
        max_value: float | None = None,
        zero_exact: bool = False,
        **kwargs: Any,
    ) -> None:
        self.bits = check_bits(bits)
        _check_range(min_value, max_value)
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)
        self.zero_exact = bool(zero_exact)
        self.precision = self.bits
        super().__init__(**kwargs)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return fake_quantize(
            inputs,
            self.bits,
            min_value=self.min_value,
            max_value=self.max_value,
            zero_exact=self.zero_exact,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "bits": self.bits,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "zero_exact": self.zero_exact,
        }


def serialize(quantizer: FakeQuantizer) -> dict[str, Any]:
    """Serialize a quantizer to a Keras config dict."""
    return tf.keras.utils.serialize_keras_object(quantizer)


def deserialize(config: dict[str, Any] | str, custom_objects: dict | None = None) -> Any:
    """Rebuild a quantizer from ``serialize``'s output or a class name."""
    return tf.keras.utils.deserialize_keras_object(
        config,
        module_objects={"FakeQuantizer": FakeQuantizer},
        custom_objects=custom_objects,
        printable_module_name="quantizer",
    )


def get(identifier: Any) -> Any:
    """Return a quantizer from None, a class name, a config dict or a callable.

    Raises:
        ValueError: ``identifier`` is none of these.
    """
    if identifier is None:
        return None
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    if callable(identifier):
        return identifier
    raise ValueError(f"Could not interpret quantizer identifier: {identifier!r}.")
