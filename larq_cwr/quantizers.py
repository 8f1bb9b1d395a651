"""Per-tensor affine fake quantization (METHOD §3).

A ``bits``-bit quantizer snaps a tensor onto ``2^bits`` evenly spaced levels covering a
range ``[m, M]`` (the tensor's own min/max unless a static range is given), rounding half
to even, with an identity (straight-through) gradient. Two grids are offered:

- ``grid="zero_exact"`` (default): the TFLite/gemmlowp int8 convention. The range is
  first widened to contain 0, then nudged so that 0 is a grid point, exactly as
  ``tf.quantization.fake_quant_with_min_max_vars`` nudges it: with
  ``step = (M - m) / (2^bits - 1)`` and the integer zero point
  ``z = floor(-m / step + 0.5)``, the levels are ``k * step`` for integers
  ``-z <= k <= 2^bits - 1 - z``. A zero gradient or a zero weight stays exactly zero.
- ``grid="paper"``: the reference code's grid, ``q(x) = round((clip(x, m, M) - m) * s) / s
  + m`` with ``s = (2^bits - 1) / (M - m)``. It has no exact zero: every near-zero entry
  moves by up to half a step. Kept for reproducing the seed paper.

Both are written with plain arithmetic ops (no ``FakeQuant*`` op), so they trace into
TFLite builtins and a converter never mistakes them for quantization-aware-training
annotations. ``docs/quantization.md`` reports what the grids measure.
"""

from __future__ import annotations

from typing import Any, Callable

import larq as lq
import tensorflow as tf

from larq_cwr._checks import check_bits, check_choice

__all__ = [
    "DEFAULT_GRID",
    "counter_uniform",
    "FakeQuantizer",
    "GRIDS",
    "deserialize",
    "fake_quantize",
    "get",
    "serialize",
    "snap_to_grid",
    "stochastic_quantize",
]

GRIDS = ("zero_exact", "paper")
DEFAULT_GRID = "zero_exact"  # METHOD §3 default
ROUNDING_MODES = ("nearest", "stochastic")


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


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def snap_to_grid(
    x: tf.Tensor,
    bits: int,
    *,
    low: tf.Tensor | float,
    high: tf.Tensor | float,
    grid: str = DEFAULT_GRID,
    noise: tf.Tensor | None = None,
) -> tf.Tensor:
    """Forward-only quantization of ``x`` onto the ``grid`` of ``[low, high]``.

    The lean core of ``fake_quantize`` for hand-written update steps that need no
    gradient (the hybrid CWR* update, the exported device head): no gradient wrapper
    and no argument checks. An empty range is not special-cased here (``fake_quantize``
    returns its input unchanged there, METHOD §3): on the paper grid every value maps
    to ``low``; on the zero-exact grid with ``low = high = 0``, 0 and negative values
    map to 0 and positive ones to the grid's only other level, 1e-30.

    Args:
        x: Float tensor.
        bits: Int in [2, 16] (not checked here).
        low: Lower end of the range.
        high: Upper end of the range.
        grid: ``"zero_exact"`` or ``"paper"`` (see the module docstring).
        noise: None for rounding half to even; else a tensor like ``x`` of uniform
            ``[0, 1)`` draws for unbiased stochastic rounding (``floor(v + noise)``:
            a value rounds up with probability equal to its fraction of a step).

    Returns:
        A tensor like ``x`` on the grid.
    """
    levels = 2.0**bits - 1.0
    low = tf.cast(low, x.dtype)
    high = tf.cast(high, x.dtype)
    if grid == "paper":
        scale = levels / tf.maximum(high - low, _MIN_SPAN)
        return _round(((tf.clip_by_value(x, low, high) - low) * scale), noise) / scale + low
    # Zero-exact: widen to contain 0, then an integer zero point as TensorFlow's
    # fake_quant_with_min_max_vars computes it (round half away from zero; z >= 0 here).
    low, high = tf.minimum(low, 0.0), tf.maximum(high, 0.0)
    step = tf.maximum(high - low, _MIN_SPAN) / levels
    zero_point = tf.clip_by_value(tf.floor(-low / step + 0.5), 0.0, levels)
    # Levels counted from zero, so 0 maps to level 0 and back to exactly 0.0.
    return (
        tf.clip_by_value(_round(x / step, noise), -zero_point, levels - zero_point) * step
    )


_ON_GRID = 2.0**-22  # relative float32 error of a level recomputed as x / step


def _round(values: tf.Tensor, noise: tf.Tensor | None) -> tf.Tensor:
    if noise is None:
        return tf.round(values)  # half to even, as METHOD §3 asks
    # E[floor(v + u)] = v for u ~ U[0, 1): unbiased. A level recomputed as x / step is
    # an integer up to float error, which floor would move down one step: snap it.
    nearest = tf.round(values)
    close = tf.abs(values - nearest) <= _ON_GRID * tf.maximum(tf.abs(values), 1.0)
    values = tf.where(close, nearest, values)
    return tf.floor(values + tf.cast(noise, values.dtype))


_HASH_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)  # lowbias32 (C. Wellons, "hash-prospector")


def _hash_u32(x: tf.Tensor) -> tf.Tensor:
    """The lowbias32 integer hash on uint32, with xor, logical shift and multiply only
    (TFLite has builtins for these; not for bitwise-and or left shift)."""
    for shift, multiplier in zip((16, 15), _HASH_MULTIPLIERS):
        x = tf.bitwise.bitwise_xor(
            x, tf.bitwise.right_shift(x, tf.constant(shift, tf.uint32))
        )
        x = x * tf.constant(multiplier, tf.uint32)
    return tf.bitwise.bitwise_xor(x, tf.bitwise.right_shift(x, tf.constant(16, tf.uint32)))


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def counter_uniform(shape: Any, *, seed: Any, counter: Any) -> tf.Tensor:
    """Uniform ``[0, 1)`` float32 noise of ``shape`` from a counter-based hash.

    Element ``i`` is ``hash(hash((counter + i) ^ hash(seed))) >> 8`` scaled by ``2^-24``
    (24 bits: exact in float32), so draw ``k`` of a stream is fixed by ``(seed,
    counter)`` alone: the caller advances ``counter`` by the number of values drawn and
    saves it, and a restored model continues the same stream. Written with TFLite
    builtin ops only, it gives bit-identical values in TensorFlow and in an exported
    TFLite model (stochastic rounding on the device, ``larq_cwr.export``).

    Args:
        shape: 1-D int shape.
        seed: int32 scalar.
        counter: int32 scalar (wraps modulo 2^32).

    Returns:
        A float32 tensor of ``shape``.

    Example:
        >>> import larq_cwr
        >>> a = counter_uniform([4], seed=1, counter=0).numpy()
        >>> b = counter_uniform([2], seed=1, counter=2).numpy()
        >>> bool((a[2:] == b).all()), bool(((0 <= a) & (a < 1)).all())
        (True, True)
    """
    shape = tf.convert_to_tensor(shape, tf.int32)
    size = tf.reduce_prod(shape)
    start = tf.bitcast(tf.cast(counter, tf.int32), tf.uint32)
    index = tf.bitcast(tf.range(size, dtype=tf.int32), tf.uint32) + start
    key = tf.bitwise.bitwise_xor(
        index, _hash_u32(tf.bitcast(tf.cast(seed, tf.int32), tf.uint32))
    )
    bits = tf.bitwise.right_shift(_hash_u32(_hash_u32(key)), tf.constant(8, tf.uint32))
    return tf.reshape(tf.cast(bits, tf.float32) * (1.0 / 16777216.0), shape)


def _straight_through(forward: Callable[[tf.Tensor], tf.Tensor], x: tf.Tensor) -> tf.Tensor:
    @tf.custom_gradient
    def _quantize(inputs):
        def grad(upstream):
            return upstream

        return forward(inputs), grad

    return _quantize(x)


def _quantize(
    x: Any,
    bits: int,
    min_value: Any,
    max_value: Any,
    grid: str,
    noise: Callable[[tf.Tensor], tf.Tensor] | None = None,
) -> tf.Tensor:
    """Checks, then the straight-through quantizer; the input is unchanged if m == M."""
    bits = check_bits(bits)
    _check_range(min_value, max_value)
    check_choice(grid, GRIDS, "grid")
    x = tf.convert_to_tensor(x)
    low, high = _resolve_range(x, min_value, max_value)

    def forward(inputs):
        draws = None if noise is None else noise(inputs)
        quantized = snap_to_grid(inputs, bits, low=low, high=high, grid=grid, noise=draws)
        return tf.where(high > low, quantized, inputs)  # m == M: unchanged (METHOD §3)

    return _straight_through(forward, x)


def fake_quantize(
    x: tf.Tensor,
    bits: int,
    *,
    min_value: float | tf.Tensor | None = None,
    max_value: float | tf.Tensor | None = None,
    grid: str = DEFAULT_GRID,
) -> tf.Tensor:
    """Fake-quantize ``x`` to ``bits`` bits on ``[min_value, max_value]`` (METHOD §3).

    Args:
        x: Float tensor.
        bits: Int in [2, 16]; the grid has ``2^bits`` levels.
        min_value: Lower end of a static range, or None for ``min(x)``.
        max_value: Upper end of a static range, or None for ``max(x)``.
        grid: ``"zero_exact"`` (default: 0 is a level) or ``"paper"``.

    Returns:
        A tensor like ``x`` whose values lie on the grid; its gradient is the identity.

    Raises:
        ValueError: ``bits`` outside [2, 16], only one range end given,
            ``min_value > max_value``, or an unknown ``grid``.

    Example:
        >>> import larq_cwr, tensorflow as tf
        >>> x = tf.constant([-0.3, 0.0, 0.2, 1.0])
        >>> [round(v, 4) for v in fake_quantize(x, 2).numpy().tolist()]  # step 1.3 / 3
        [-0.4333, 0.0, 0.0, 0.8667]
        >>> [round(v, 4) for v in fake_quantize(x, 2, grid="paper").numpy().tolist()]
        [-0.3, 0.1333, 0.1333, 1.0]
    """
    return _quantize(x, bits, min_value, max_value, grid)


def stochastic_quantize(
    x: tf.Tensor,
    bits: int,
    *,
    generator: tf.random.Generator,
    min_value: float | tf.Tensor | None = None,
    max_value: float | tf.Tensor | None = None,
    grid: str = DEFAULT_GRID,
) -> tf.Tensor:
    """Quantize ``x`` with unbiased stochastic rounding (METHOD §4).

    Each value rounds up with probability equal to its distance from the level below,
    in steps, so ``E[q(x)] = clip(x)``: small updates survive low-bit storage on average
    instead of rounding away.

    Args:
        x: Float tensor.
        bits: Int in [2, 16].
        generator: Seeded ``tf.random.Generator`` drawing the rounding noise.
        min_value: Lower end of a static range, or None for ``min(x)``.
        max_value: Upper end of a static range, or None for ``max(x)``.
        grid: ``"zero_exact"`` (default) or ``"paper"``.

    Returns:
        A tensor like ``x`` on the grid; its gradient is the identity.

    Raises:
        ValueError: ``bits`` outside [2, 16], an inconsistent range or unknown grid.
    """

    def noise(inputs: tf.Tensor) -> tf.Tensor:
        return generator.uniform(tf.shape(inputs), dtype=inputs.dtype)

    return _quantize(x, bits, min_value, max_value, grid, noise)


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
        grid: ``"zero_exact"`` (default: 0 is a level) or ``"paper"`` (METHOD §3).

    Raises:
        ValueError: ``bits`` outside [2, 16], an inconsistent range or unknown grid.

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
        grid: str = DEFAULT_GRID,
        **kwargs: Any,
    ) -> None:
        self.bits = check_bits(bits)
        _check_range(min_value, max_value)
        self.grid = check_choice(grid, GRIDS, "grid")
        self.min_value = None if min_value is None else float(min_value)
        self.max_value = None if max_value is None else float(max_value)
        self.precision = self.bits
        super().__init__(**kwargs)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return fake_quantize(
            inputs,
            self.bits,
            min_value=self.min_value,
            max_value=self.max_value,
            grid=self.grid,
        )

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "bits": self.bits,
            "min_value": self.min_value,
            "max_value": self.max_value,
            "grid": self.grid,
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
