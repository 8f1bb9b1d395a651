"""Replay memories of latent activations for latent replay (METHOD §5), and 1-bit packing.

``LatentReplayMemory`` keeps a fixed number of latent activations (the inputs of the
trainable part of the network) with their labels, filled once per experience by
``update`` and read every train step by ``sample``. Two policies (METHOD §5):

- ``"class_balanced"``: each seen class owns ``size // n_seen`` slots, the
  ``size % n_seen`` remainder slots going one each to the seen classes with the
  smallest indices. Within a class, reservoir sampling (Vitter's Algorithm R) over all
  the class's patterns seen so far: every one of them is in memory with probability
  ``quota / seen``. When new classes arrive, the older ones shrink to their new quota by
  dropping uniformly random members (a uniform subset of a uniform subset stays
  uniform). Quotas never grow (a class's rank only moves down as classes are added), so
  a class holds ``min(quota, seen)`` patterns; a class with fewer patterns than its
  quota leaves its spare slots empty.
- ``"random"``: after experience ``i`` (0-based) ``size // (i + 1)`` slots (at most
  the experience's pattern count) receive distinct random patterns of the experience;
  empty slots (lowest index first) are filled before random filled slots are replaced.

Storage (METHOD §5): ``"float32"``; ``"int8"`` (4x smaller); ``"1bit"``, the signs
packed 8 per byte along the last axis (32x smaller when the channels are a multiple of
8), decoded to ±1 (a value >= 0 gives +1, as larq's ``ste_sign``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from larq_cwr._checks import check_choice, check_int

__all__ = [
    "LatentBinarization",
    "LatentReplayMemory",
    "POLICIES",
    "STORAGES",
    "pack_bits",
    "unpack_bits",
]

POLICIES = ("class_balanced", "random")  # METHOD §5
STORAGES = ("float32", "int8", "1bit")  # METHOD §5: 1-bit packed latents, 32x smaller
CHUNK_SIZE = 4096  # patterns checked or encoded at a time in `update`
_BIT_WEIGHTS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits' order: first value = high bit
_INT8_LEVELS = 255  # int8 grid: 2^8 - 1 steps
_INT64_MAX = 2**63 - 1
_Plan = tuple[np.ndarray, np.ndarray, int]  # slots written, source patterns, rng counter


def _check_latent_shape(latent_shape: Any) -> tuple[int, ...]:
    dims = tuple(tf.TensorShape(latent_shape).as_list())
    if not dims or any(d is None or d < 1 for d in dims):
        raise ValueError(
            "`latent_shape` must be the known shape of one pattern (no batch axis); "
            f"expected positive ints such as (256,), got {latent_shape!r}."
        )
    return dims


def _check_has_last_axis(tensor: tf.Tensor, name: str) -> int:
    rank = tensor.shape.rank
    if rank is None or rank < 1:
        raise ValueError(f"`{name}` must have a last axis; expected rank >= 1, got {rank}.")
    return rank


def pack_bits(x: npt.ArrayLike | tf.Tensor) -> tf.Tensor:
    """Pack the signs of ``x`` 8 per byte along the last axis (TensorFlow ops).

    A value ``>= 0`` is bit 1 (+1), a negative one (or NaN) bit 0 (-1); the first value
    of each group of 8 is the high bit and the last axis is padded with 0 bits to a
    multiple of 8, so the result equals ``np.packbits(x >= 0, axis=-1)``.

    Args:
        x: Real array or tensor of rank >= 1, last axis ``C``.

    Returns:
        ``tf.uint8`` tensor of shape ``x.shape[:-1] + (ceil(C / 8),)``.

    Raises:
        ValueError: ``x`` is a scalar or of unknown rank.

    Example:
        >>> import larq_cwr
        >>> from larq_cwr.replay import pack_bits, unpack_bits
        >>> packed = pack_bits([[0.5, -1.0, 0.0, -0.1, 2.0, 3.0, -4.0, 1.0, -2.0]])
        >>> packed.numpy().tolist()
        [[173, 0]]
        >>> unpack_bits(packed, 9).numpy().tolist()
        [[1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0]]
    """
    x = tf.convert_to_tensor(x)
    rank = _check_has_last_axis(x, "x")
    bits = tf.cast(x >= 0, tf.int32)
    pad = tf.math.floormod(-tf.shape(bits)[-1], 8)
    bits = tf.pad(bits, tf.concat([tf.zeros([rank - 1, 2], tf.int32), [[0, pad]]], 0))
    groups = tf.reshape(bits, tf.concat([tf.shape(bits)[:-1], [-1, 8]], 0))
    packed = tf.cast(tf.reduce_sum(groups * tf.constant(_BIT_WEIGHTS), axis=-1), tf.uint8)
    channels = x.shape[-1]
    packed.set_shape(x.shape[:-1].concatenate([channels and math.ceil(channels / 8)]))
    return packed


def unpack_bits(packed: npt.ArrayLike | tf.Tensor, size: int) -> tf.Tensor:
    """Unpack ``pack_bits`` output into ``size`` values of ±1 along the last axis.

    Equals ``2 * np.unpackbits(packed, axis=-1, count=size) - 1`` as float32.

    Args:
        packed: ``uint8`` array or tensor of rank >= 1 with ``ceil(size / 8)`` bytes on
            the last axis.
        size: Positive int, the number of values ``C`` that were packed.

    Returns:
        ``tf.float32`` tensor of shape ``packed.shape[:-1] + (size,)``, entries ±1.

    Raises:
        ValueError: ``size`` not a positive int, ``packed`` not ``uint8``, a scalar, or
            a last axis other than ``ceil(size / 8)`` bytes.
    """
    size = check_int(size, "size", minimum=1)
    packed = tf.convert_to_tensor(packed)
    if packed.dtype != tf.uint8:
        raise ValueError(f"`packed` must be uint8; expected tf.uint8, got {packed.dtype}.")
    _check_has_last_axis(packed, "packed")
    num_bytes = math.ceil(size / 8)
    if packed.shape[-1] is not None and packed.shape[-1] != num_bytes:
        raise ValueError(
            f"`packed` does not hold {size} bits; expected {num_bytes} bytes on the last "
            f"axis, got {packed.shape[-1]}."
        )
    shifts = tf.constant([7, 6, 5, 4, 3, 2, 1, 0], tf.int32)
    bits = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(tf.cast(packed, tf.int32)[..., None], shifts), 1
    )
    flat = tf.reshape(bits, tf.concat([tf.shape(packed)[:-1], [-1]], 0))[..., :size]
    values = tf.cast(2 * flat - 1, tf.float32)
    values.set_shape(packed.shape[:-1].concatenate([size]))
    return values


def _quotas(size: int, seen: np.ndarray) -> np.ndarray:
    """Class-balanced slots per class: ``size // n_seen``, the remainder to low indices."""
    quota = np.zeros(seen.shape, np.int64)
    classes = np.flatnonzero(seen)
    if classes.size:
        base, remainder = divmod(size, classes.size)
        quota[classes] = base
        quota[classes[:remainder]] += 1
    return quota


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class LatentReplayMemory(tf.keras.layers.Layer):
    """Fixed-size memory of latent activations for latent replay (METHOD §5).

    See the module docstring for the two policies and the storage formats. All state
    is non-trainable layer weights, so ``tf.train.Checkpoint``, ``save_weights`` and
    ``.keras`` files carry it: the stored ``patterns``, their ``labels`` (-1 = empty
    slot), ``seen_counts`` (patterns per class offered so far, the reservoir's count),
    ``num_experiences`` (completed updates), ``rng_counter`` and, for int8, ``scale``
    and ``zero_point``. Random draws are ``tf.random.stateless_*`` ops seeded with
    ``(seed, rng_counter)``, the counter advancing once per draw, so a restored memory
    continues bit-identically and ``sample`` runs inside a ``tf.function``.

    int8 storage uses one affine grid for the whole memory, fixed at the first update
    from that experience's min/max (widened to contain 0), with an integer zero point
    as ``tf.quantization.fake_quant_with_min_max_vars`` nudges it, so 0 is stored
    exactly and in-range values come back within half a step (round half to even).
    Later values outside the grid's range are clipped. A per-pattern scale would adapt
    to drifting ranges but costs 4 more bytes per pattern (the ratio to float32 would
    no longer be 1/4) and a second quantization rule; the memory is meant for latents
    of a frozen backbone, whose range the first experience already shows.

    The layer is not called on inputs: use ``update`` and ``sample``. It is built by
    ``latent_shape``, by ``build(latent_shape)`` or by the first ``update``.

    Args:
        size: Positive int, the number of slots.
        num_classes: Positive int; labels are in ``[0, num_classes)``.
        policy: ``"class_balanced"`` or ``"random"``.
        storage: ``"float32"``, ``"int8"`` or ``"1bit"``.
        seed: Int in ``[0, 2^63)``; the same seed and calls give the same memory.
        latent_shape: Shape of one pattern (no batch axis), e.g. ``(256,)``; builds
            the memory at once. ``None`` builds it at the first ``update``.
        **kwargs: Standard Keras layer arguments (``name``, ...).

    Raises:
        ValueError: An invalid argument.

    Example:
        >>> import larq_cwr, numpy as np
        >>> from larq_cwr.replay import LatentReplayMemory
        >>> memory = LatentReplayMemory(4, 2, storage="1bit", seed=0)
        >>> memory.update(np.array([[0.5, -1.0], [-2.0, 0.0], [1.0, 1.0]]), [0, 1, 1])
        >>> memory.class_counts().tolist(), len(memory), memory.nbytes
        ([1, 2], 3, 4)
        >>> latents, labels = memory.contents()
        >>> latents.tolist(), labels.tolist()
        ([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0]], [0, 1, 1])
        >>> replayed, replayed_labels = memory.sample(2)
        >>> replayed.shape.as_list()
        [2, 2]

    References:
        Pellegrini, Graffieti, Lomonaco, Maltoni, "Latent Replay for Real-Time Continual
        Learning", IROS 2020 (arXiv 1912.01100). Vitter, "Random Sampling with a
        Reservoir", ACM TOMS 1985.
    """

    def __init__(
        self,
        size: int,
        num_classes: int,
        *,
        policy: str = "class_balanced",
        storage: str = "float32",
        seed: int = 0,
        latent_shape: Sequence[int] | None = None,
        **kwargs: Any,
    ) -> None:
        size = check_int(size, "size", minimum=1)
        num_classes = check_int(num_classes, "num_classes", minimum=1)
        check_choice(policy, POLICIES, "policy")
        check_choice(storage, STORAGES, "storage")
        seed = check_int(seed, "seed", minimum=0, maximum=_INT64_MAX)
        shape = None if latent_shape is None else _check_latent_shape(latent_shape)
        super().__init__(**kwargs)
        self.size, self.num_classes, self.seed = size, num_classes, seed
        self.policy, self.storage = policy, storage
        self.latent_shape: tuple[int, ...] = ()  # () until built
        if shape is not None:
            self.build(shape)

    def build(self, latent_shape: Sequence[int]) -> None:
        """Create the state for patterns of shape ``latent_shape`` (no batch axis)."""
        shape = _check_latent_shape(latent_shape)
        if self.built:
            if shape != self.latent_shape:
                raise ValueError(
                    f"`latent_shape` differs from the built memory's; expected "
                    f"{self.latent_shape}, got {shape}."
                )
            return
        if self.storage == "1bit":
            stored, dtype = shape[:-1] + (math.ceil(shape[-1] / 8),), tf.uint8
        else:
            stored, dtype = shape, tf.float32 if self.storage == "float32" else tf.int8

        def weight(name: str, shape: Sequence[int], dtype: Any, init: Any = "zeros") -> Any:
            return self.add_weight(
                name=name, shape=shape, dtype=dtype, initializer=init, trainable=False
            )

        self._patterns = weight("patterns", (self.size,) + stored, dtype)
        empty = tf.keras.initializers.Constant(-1)
        self._labels = weight("labels", (self.size,), tf.int32, empty)
        self._seen_counts = weight("seen_counts", (self.num_classes,), tf.int64)
        self._num_experiences = weight("num_experiences", (), tf.int64)
        self._rng_counter = weight("rng_counter", (), tf.int64)
        if self.storage == "int8":
            self._scale = weight("scale", (), tf.float32, "ones")
            self._zero_point = weight("zero_point", (), tf.int32)
        self.latent_shape = shape
        super().build(shape)

    def call(self, inputs: Any) -> Any:
        raise NotImplementedError(
            "LatentReplayMemory is not called on inputs: use `update()` and `sample()`."
        )

    def _require_built(self, method: str) -> None:
        if not self.built:
            raise RuntimeError(
                f"The memory is not built: call `update()` before `{method}`."
            )

    # -- writing -------------------------------------------------------------------

    def update(self, latents: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Offer one experience's latents to the memory (once per experience, eager).

        Args:
            latents: Real array or tensor ``(n, *latent_shape)``, finite, ``n >= 1``.
            labels: Integer class indices ``(n,)`` (or ``(n, 1)``) in
                ``[0, num_classes)``.

        Raises:
            ValueError: Empty, NaN/Inf or wrongly shaped latents, non-integer or
                out-of-range labels, or a length mismatch; the state is left unchanged.
        """
        x, y = self._check_update(latents, labels)
        if not self.built:
            self.build(x.shape[1:])
        if self.storage == "int8" and int(self._num_experiences) == 0:
            self._fix_int8_range(x)
        labels_now, seen = self._labels.numpy(), self._seen_counts.numpy()
        plan = self._plan_balanced if self.policy == "class_balanced" else self._plan_random
        slots, sources, counter = plan(labels_now, y, int(self._rng_counter.numpy()))
        labels_now[slots] = y[sources]
        for start in range(0, slots.size, CHUNK_SIZE):
            chunk = slice(start, start + CHUNK_SIZE)
            self._patterns.scatter_nd_update(
                slots[chunk, None], self._encode(x[sources[chunk]])
            )
        self._labels.assign(labels_now)
        self._seen_counts.assign(seen + np.bincount(y, minlength=self.num_classes))
        self._num_experiences.assign_add(1)
        self._rng_counter.assign(counter)

    def _check_update(self, latents: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(latents)
        if x.dtype.kind not in "fiu":
            raise ValueError(
                f"`latents` must be real numbers; expected float or int, got {x.dtype}."
            )
        expected = self.latent_shape if self.built else "(n, *latent_shape)"
        if x.ndim < 2 or (self.built and x.shape[1:] != self.latent_shape):
            raise ValueError(
                f"`latents` has the wrong shape; expected (n,) + {expected}, got {x.shape}."
            )
        if x.shape[0] == 0:
            raise ValueError("`latents` is empty; expected at least one pattern, got 0.")
        x = x.astype(np.float32, copy=False)
        for start in range(0, x.shape[0], CHUNK_SIZE):
            if not np.isfinite(x[start : start + CHUNK_SIZE]).all():
                raise ValueError("`latents` must be finite; expected no NaN/Inf, got some.")
        y = np.asarray(labels)
        if y.ndim == 2 and y.shape[1] == 1:
            y = y[:, 0]
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"`labels` must hold one class index per pattern; expected shape "
                f"({x.shape[0]},), got {y.shape}."
            )
        if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        if y.dtype.kind not in "iu":
            raise ValueError(
                f"`labels` must be integer class indices; got dtype {y.dtype}."
            )
        bad = y[(y < 0) | (y >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"`labels` has class {int(bad[0])}; expected 0 <= class < "
                f"num_classes={self.num_classes}."
            )
        return x, y.astype(np.int64)

    def _uniform(self, shape: Sequence[int], counter: int) -> np.ndarray:
        seed = tf.constant([self.seed, counter], tf.int64)
        return tf.random.stateless_uniform(shape, seed, dtype=tf.float64).numpy()

    def _plan_balanced(self, labels: np.ndarray, y: np.ndarray, counter: int) -> _Plan:
        seen = self._seen_counts.numpy()
        quota = _quotas(self.size, seen + np.bincount(y, minlength=self.num_classes) > 0)
        stored = np.bincount(labels[labels >= 0], minlength=self.num_classes)
        if np.any(stored > quota):  # new classes: older ones drop random members
            counter += 1
            keys = self._uniform((self.size,), counter)
            for c in np.flatnonzero(stored > quota):
                members = np.flatnonzero(labels == c)
                order = np.argsort(keys[members], kind="stable")
                labels[members[order[: stored[c] - quota[c]]]] = -1
        counter += 1
        draws = self._uniform((y.size,), counter)
        target = np.full(y.size, -1, np.int64)
        free = np.flatnonzero(labels < 0)
        for c in np.unique(y):
            items = np.flatnonzero(y == c)
            members = np.flatnonzero(labels == c)  # min(quota, seen[c]) of them
            kept = min(quota[c], seen[c] + items.size)
            slots = np.concatenate([members, free[: kept - members.size]])
            free = free[kept - members.size :]
            # Algorithm R: the t-th pattern of the class fills slot t - 1 while t <= quota,
            # else replaces slot floor(u * t) if that is < quota (kept w.p. quota / t).
            t = seen[c] + 1 + np.arange(items.size)
            local = np.where(t <= quota[c], t - 1, np.floor(draws[items] * t))
            keep = local < quota[c]
            target[items[keep]] = slots[local[keep].astype(np.int64)]
        return self._last_writes(target, counter)

    def _plan_random(self, labels: np.ndarray, y: np.ndarray, counter: int) -> _Plan:
        count = min(self.size // (int(self._num_experiences) + 1), y.size)
        empty, filled = np.flatnonzero(labels < 0), np.flatnonzero(labels >= 0)
        slots = empty[:count]
        if count > slots.size:
            counter += 1
            keys = self._uniform((self.size,), counter)[filled]
            chosen = filled[np.argsort(keys, kind="stable")[: count - slots.size]]
            slots = np.concatenate([slots, chosen])
        counter += 1
        sources = np.argsort(self._uniform((y.size,), counter), kind="stable")[:count]
        target = np.full(y.size, -1, np.int64)
        target[sources] = slots
        return self._last_writes(target, counter)

    def _last_writes(self, target: np.ndarray, counter: int) -> _Plan:
        """Slots written and the pattern each ends up with (the last one sent there)."""
        winner = np.full(self.size, -1, np.int64)
        sent = np.flatnonzero(target >= 0)
        np.maximum.at(winner, target[sent], sent)
        slots = np.flatnonzero(winner >= 0)
        return slots, winner[slots], counter

    # -- int8 / 1-bit coding -------------------------------------------------------

    def _fix_int8_range(self, x: np.ndarray) -> None:
        low, high = 0.0, 0.0  # the range always contains 0
        for start in range(0, x.shape[0], CHUNK_SIZE):
            chunk = x[start : start + CHUNK_SIZE]
            low, high = min(low, float(chunk.min())), max(high, float(chunk.max()))
        scale = np.float32((high - low) / _INT8_LEVELS)
        if not scale > 0:  # all zeros: any positive step stores them exactly
            scale = np.float32(1.0)
        # Zero point as fake_quant_with_min_max_vars nudges it: floor(-low / step + 0.5).
        zero = np.clip(np.floor(-low / float(scale) + 0.5), 0, _INT8_LEVELS)
        self._scale.assign(scale)
        self._zero_point.assign(int(zero) - 128)

    def _encode(self, x: np.ndarray) -> Any:
        if self.storage == "float32":
            return x
        if self.storage == "1bit":
            return pack_bits(x)
        scale, zero = float(self._scale.numpy()), int(self._zero_point.numpy())
        levels = np.rint(x.astype(np.float64) / scale) + zero  # round half to even
        return np.clip(levels, -128, 127).astype(np.int8)

    def _decode(self, stored: tf.Tensor) -> tf.Tensor:
        if self.storage == "float32":
            return tf.identity(stored)
        if self.storage == "1bit":
            return unpack_bits(stored, self.latent_shape[-1])
        levels = tf.cast(stored, tf.float32) - tf.cast(self._zero_point, tf.float32)
        return levels * self._scale

    @property
    def int8_range(self) -> tuple[float, float] | None:
        """``(min, max)`` of the int8 grid (values beyond are clipped); None otherwise."""
        if self.storage != "int8" or not self.built:
            return None
        scale, zero = float(self._scale.numpy()), int(self._zero_point.numpy())
        return (-128 - zero) * scale, (127 - zero) * scale

    # -- reading -------------------------------------------------------------------

    def sample(self, n: int) -> tuple[tf.Tensor, tf.Tensor]:
        """Draw ``n`` stored patterns uniformly at random (TensorFlow ops).

        Without replacement when ``n`` <= the filled slots, else with replacement.
        Advances ``rng_counter`` by one; works eagerly and inside a ``tf.function``,
        also with ``jit_compile=True`` (static shapes; XLA skips the empty check).

        Args:
            n: Positive int, e.g. 128 replayed next to 50 new patterns (METHOD §5).

        Returns:
            ``(latents, labels)``: float32 ``(n, *latent_shape)`` decoded from storage
            and int32 ``(n,)``.

        Raises:
            ValueError: ``n`` not a positive int.
            RuntimeError: The memory is not built or empty (eagerly; in a graph an
                ``InvalidArgumentError`` when run).
        """
        n = check_int(n, "n", minimum=1)
        self._require_built("sample()")
        labels = tf.convert_to_tensor(self._labels)
        is_filled = tf.cast(labels >= 0, tf.int64)
        filled = tf.reduce_sum(is_filled)
        if tf.executing_eagerly() and int(filled) == 0:
            raise RuntimeError("The memory is empty: call `update()` before `sample()`.")
        check = tf.debugging.assert_positive(
            filled, message="The memory is empty: call `update()` before `sample()`."
        )
        with tf.control_dependencies([check]):
            counter = self._rng_counter.assign_add(1)
        seed = tf.stack([tf.constant(self.seed, tf.int64), counter])

        # Static shapes only (no tf.where on the mask), so XLA can compile a train step.
        def without_replacement() -> tf.Tensor:
            keys = tf.random.stateless_uniform(  # full-range ints: ties ~ size^2 / 2^65
                [self.size], seed, minval=None, maxval=None, dtype=tf.int64
            )
            keys = tf.where(is_filled > 0, keys, tf.int64.min)  # empty slots last
            return tf.cast(tf.math.top_k(keys, k=n).indices, tf.int64)

        def with_replacement() -> tf.Tensor:
            positions = tf.random.stateless_uniform(
                [n], seed, minval=0, maxval=filled, dtype=tf.int64
            )  # the p-th filled slot is the first whose running count exceeds p
            return tf.searchsorted(
                tf.cumsum(is_filled), positions, side="right", out_type=tf.int64
            )

        if n > self.size:
            slots = with_replacement()
        else:
            slots = tf.cond(n <= filled, without_replacement, with_replacement)
        slots = tf.reshape(slots, [n])
        return self._decode(tf.gather(self._patterns, slots)), tf.gather(labels, slots)

    def contents(self) -> tuple[np.ndarray, np.ndarray]:
        """All filled slots in slot order: ``(latents float32, labels int32)`` copies."""
        self._require_built("contents()")
        labels = self._labels.numpy()
        slots = np.flatnonzero(labels >= 0)
        latents = self._decode(tf.gather(self._patterns, slots)).numpy()
        return latents, labels[slots]

    def class_counts(self) -> np.ndarray:
        """Int64 ``(num_classes,)``: stored patterns per class."""
        self._require_built("class_counts()")
        labels = self._labels.numpy()
        return np.bincount(labels[labels >= 0], minlength=self.num_classes).astype(np.int64)

    @property
    def seen_counts(self) -> np.ndarray:
        """Copy of the patterns per class offered to ``update`` so far."""
        self._require_built("seen_counts")
        return self._seen_counts.numpy().copy()

    @property
    def num_experiences(self) -> int:
        """Completed updates (experiences); 0 before the first."""
        return int(self._num_experiences.numpy()) if self.built else 0

    @property
    def filled(self) -> int:
        """Number of filled slots (0 before the first update)."""
        return int(tf.math.count_nonzero(self._labels >= 0)) if self.built else 0

    def __len__(self) -> int:
        return self.filled

    def __bool__(self) -> bool:
        return True  # a layer, truthy even when empty (Keras and users test `if layer`)

    @property
    def nbytes(self) -> int:
        """Exact bytes of the pattern storage: ``size`` x bytes per pattern."""
        self._require_built("nbytes")
        return self._patterns.shape.num_elements() * self._patterns.dtype.size

    @property
    def overhead_bytes(self) -> int:
        """Bytes of the rest of the state: labels, counts, counters, int8 scale."""
        self._require_built("overhead_bytes")
        rest = [v for v in self.weights if v is not self._patterns]
        return sum(v.shape.num_elements() * v.dtype.size for v in rest)

    def get_config(self) -> dict[str, Any]:
        names = ("size", "num_classes", "policy", "storage", "seed")
        own = {name: getattr(self, name) for name in names}
        return {
            **super().get_config(),
            **own,
            "latent_shape": list(self.latent_shape) or None,
        }


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class LatentBinarization(tf.keras.layers.Layer):
    """Identity until enabled, then the sign of its input (METHOD §5).

    Put it at the latent layer of a network whose latents a 1-bit replay memory keeps.
    The first experience trains the network with it disabled (real-valued latents);
    once enabled (``HybridQuantizedTrainStep.remember`` enables it before storing 1-bit
    latents) live latents are binarized exactly as stored ones are decoded, so new and
    replayed data match, also where the latent feeds a real-valued residual path. The
    switch is a layer weight, so saved models keep it. The sign maps 0 to +1, as
    ``larq``'s ``ste_sign`` and ``unpack_bits`` do; its gradient is the identity.

    Input shape:
        Any.

    Output shape:
        Same as the input.

    Example:
        >>> import larq_cwr, tensorflow as tf
        >>> from larq_cwr.replay import LatentBinarization
        >>> layer = LatentBinarization()
        >>> layer(tf.constant([[-0.5, 0.0, 2.0]])).numpy().tolist()
        [[-0.5, 0.0, 2.0]]
        >>> layer.enable()
        >>> layer(tf.constant([[-0.5, 0.0, 2.0]])).numpy().tolist()
        [[-1.0, 1.0, 1.0]]
    """

    def build(self, input_shape: Any) -> None:
        self._enabled = self.add_weight(
            name="enabled", shape=(), dtype=tf.int32, initializer="zeros", trainable=False
        )
        super().build(input_shape)

    @property
    def enabled(self) -> bool:
        """True once ``enable`` was called."""
        return self.built and bool(self._enabled.numpy())

    def enable(self) -> None:
        """Binarize from now on (the state is saved with the model)."""
        if not self.built:
            raise RuntimeError("Build the layer (call it on data) before `enable()`.")
        self._enabled.assign(1)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        @tf.custom_gradient
        def sign(x):
            return tf.where(x >= 0, tf.ones_like(x), -tf.ones_like(x)), lambda dy: dy

        return tf.where(self._enabled > 0, sign(inputs), inputs)
