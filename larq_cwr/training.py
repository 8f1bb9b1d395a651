"""Hybrid-precision training of the CWR* head (METHOD §4).

``hybrid_sgd_step`` is the update, written once as TensorFlow ops: the Keras model
``HybridQuantizedTrainStep`` runs it in its ``train_step`` and the exported device head
(``larq_cwr.export``) traces it into its ``train`` signature.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from larq_cwr._checks import (
    check_choice,
    check_optional_bits,
    check_positive_int,
    check_positive_number,
    check_seed,
)
from larq_cwr.backbones import rerun_graph
from larq_cwr.backprop import (
    BLOCK_OPTIMIZERS,
    DEFAULT_LATENT_WEIGHT_BITS,
    LATENT_WEIGHT_ROUNDING,
    BlockStack,
    binary_kernels,
    block_optimizer_directions,
    block_optimizer_slot_count,
    update_block_weights,
)
from larq_cwr.head import CWRStarHead
from larq_cwr.quantizers import (
    DEFAULT_GRID,
    GRIDS,
    ROUNDING_MODES,
    counter_uniform,
    snap_to_grid,
)
from larq_cwr.replay import LatentBinarization, LatentReplayMemory

__all__ = [
    "DEFAULT_FORWARD_BITS",
    "DEFAULT_UPDATE_BITS",
    "HybridQuantizedTrainStep",
    "HybridStepResult",
    "clip_to_feature_range",
    "hybrid_sgd_step",
    "logit_difference",
]

logger = logging.getLogger(__name__)

DEFAULT_FORWARD_BITS = 8  # METHOD §4 reference default b_f
DEFAULT_UPDATE_BITS = 16  # METHOD §4 reference default b_w
WEIGHT_RANGE_MARGIN = 0.02  # METHOD §4: forward weight range widened by 2% of its span
DEFAULT_REPLAY_BATCH_SIZE = 128  # METHOD §5: 50 new + 128 replayed patterns per step
_OWN_ARGUMENTS = (
    "forward_bits",
    "update_bits",
    "grid",
    "rounding",
    "seed",
    "backward_bits",
    "latent_weight_bits",
    "latent_weight_rounding",
    "latent_layer",
    "replay_batch_size",
    "block_learning_rate",
    "block_optimizer",
    "gradient_range_mode",
)
# How the hybrid step bounds the logit gradient: the static range calibrated on
# experience 0 (METHOD §4), or its exact bound +-1/batch (see `hybrid_sgd_step`).
GRADIENT_RANGE_MODES = ("calibrated", "bound")
_CROSSENTROPY_LOSSES = (
    tf.keras.losses.SparseCategoricalCrossentropy,
    tf.keras.losses.CategoricalCrossentropy,
)
_CROSSENTROPY_NAMES = ("sparse_categorical_crossentropy", "categorical_crossentropy")


class HybridStepResult(NamedTuple):
    """Output of ``hybrid_sgd_step``."""

    kernel: tf.Tensor  # the stored kernel after the update
    logits: tf.Tensor  # forward-pass logits x_q @ W_q of the batch
    probabilities: tf.Tensor  # their softmax (before quantization)
    feature_gradient: tf.Tensor | None = None  # g_q W_q^T, when asked for


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def logit_difference(probabilities: tf.Tensor, labels: Any) -> tf.Tensor:
    """``p - onehot(y)`` for int labels ``(batch,)``/``(batch, 1)`` or one-hot labels."""
    num_classes = probabilities.shape[-1]
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == 2 and labels.shape[-1] == num_classes and num_classes > 1:
        onehot = tf.cast(labels, probabilities.dtype)
    else:
        labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
        onehot = tf.one_hot(labels, num_classes, dtype=probabilities.dtype)
    return probabilities - onehot


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def clip_to_feature_range(features: tf.Tensor, feature_range: tf.Tensor) -> tf.Tensor:
    """The head's features clipped to the static range, as ``hybrid_sgd_step`` sees them.

    Inference with the hybrid head (``HybridQuantizedTrainStep``'s ``predict`` and
    ``evaluate``, the device head's ``infer``) clips too: a feature beyond the range
    experience 0 calibrated counts in training as the range's end, and counting it in
    full at inference let trained blocks push a few features to 10x the range and
    collapse predictions onto one class (``docs/replay_k4.md``).

    Args:
        features: Head inputs ``(batch, features)``.
        feature_range: Static ``(min, max)``.

    Returns:
        A tensor like ``features``.
    """
    low, high = tf.unstack(tf.cast(feature_range, features.dtype))
    return tf.clip_by_value(features, low, high)


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def hybrid_sgd_step(
    kernel: tf.Tensor,
    features: tf.Tensor,
    *,
    labels: tf.Tensor,
    learning_rate: tf.Tensor | float,
    forward_bits: int | None = DEFAULT_FORWARD_BITS,
    update_bits: int | None = DEFAULT_UPDATE_BITS,
    grid: str = DEFAULT_GRID,
    feature_range: tf.Tensor | None = None,
    gradient_range: tf.Tensor | str | None = None,
    sample_weight: tf.Tensor | None = None,
    update_noise: tf.Tensor | None = None,
    gradient_noise: tf.Tensor | None = None,
    weight_range_margin: float = WEIGHT_RANGE_MARGIN,
    feature_gradient: bool = False,
) -> HybridStepResult:
    """One hybrid-precision SGD step of a bias-free softmax head (METHOD §4).

    With ``Q_b(t; [m, M])`` the quantizer of METHOD §3 on ``grid``::

        x_q = Q_bf(features; feature_range)    W_q = Q_bf(W; min/max of W +- 2% of span)
        p_q = Q_bf(softmax(x_q @ W_q); [0, 1])
        g_q = Q_bf(w * (p_q - onehot(y)) / batch; gradient_range)
        W  <- Q_bw(W - lr * x_q^T g_q; min/max)       (stored weights keep b_w bits)

    The gradient is that of the mean softmax cross-entropy over the batch (Keras'
    ``sum_over_batch_size``), written by hand: ``x^T (softmax - onehot) / batch``.

    Args:
        kernel: Stored head kernel ``W``, ``(features, num_classes)``.
        features: Head inputs ``(batch, features)``.
        labels: Int labels ``(batch,)`` or one-hot ``(batch, num_classes)``.
        learning_rate: SGD learning rate.
        forward_bits: ``b_f``, or None for a float forward pass and gradient.
        update_bits: ``b_w``, or None for float stored weights.
        grid: ``"zero_exact"`` or ``"paper"`` (``larq_cwr.quantizers``).
        feature_range: Static ``(min, max)`` of the features, or None for the batch's.
        gradient_range: Static ``(min, max)`` of the logit gradient, None for its own,
            or ``"bound"`` for ``+-max|w| / batch``, the range ``w * (p - onehot) /
            batch`` can reach: nothing clips, whatever the batch's make-up (replayed
            batches hold confidently wrong old-class predictions that experience 0's
            statistics never saw).
        sample_weight: Optional per-sample weights ``(batch,)``.
        update_noise: None (round half to even) or uniform ``[0, 1)`` noise shaped like
            ``kernel`` for stochastic rounding of the stored update.
        gradient_noise: Likewise for the logit gradient, shaped ``(batch, num_classes)``.
        weight_range_margin: Widening of the forward weight range, a fraction of its span.
        feature_gradient: Also return ``g_q @ W_q^T``, the gradient of the loss with
            respect to the features, for back-propagation into layers below the head:
            straight through the quantizer inside the feature range and 0 where the
            range clips a feature (whose clipped value the loss cannot see change).

    Returns:
        ``HybridStepResult(kernel, logits, probabilities, feature_gradient)``.
    """

    def forward(tensor, low, high, noise=None):
        if forward_bits is None:
            return tensor
        return snap_to_grid(
            tensor, forward_bits, low=low, high=high, grid=grid, noise=noise
        )

    def static_or_own(tensor, value_range):
        if value_range is None:
            return tf.reduce_min(tensor), tf.reduce_max(tensor)
        return value_range[0], value_range[1]

    features = tf.cast(features, kernel.dtype)
    feature_low, feature_high = static_or_own(features, feature_range)
    x_q = forward(features, feature_low, feature_high)
    low, high = tf.reduce_min(kernel), tf.reduce_max(kernel)
    margin = weight_range_margin * (high - low)
    w_q = forward(kernel, low - margin, high + margin)
    logits = tf.matmul(x_q, w_q)
    probabilities = tf.nn.softmax(logits)
    p_q = forward(probabilities, 0.0, 1.0)
    difference = logit_difference(p_q, labels)
    if sample_weight is not None:
        weight = tf.reshape(tf.cast(sample_weight, difference.dtype), [-1, 1])
        difference = difference * weight
    batch = tf.cast(tf.shape(difference)[0], difference.dtype)
    gradient = difference / batch
    if isinstance(gradient_range, str):
        check_choice(gradient_range, ("bound",), "gradient_range")
        scale = 1.0 if sample_weight is None else tf.reduce_max(tf.abs(weight))
        gradient_range = tf.stack([-scale / batch, scale / batch])
    g_q = forward(gradient, *static_or_own(gradient, gradient_range), gradient_noise)
    updated = kernel - tf.cast(learning_rate, kernel.dtype) * tf.matmul(
        x_q, g_q, transpose_a=True
    )
    if update_bits is not None:
        updated = snap_to_grid(
            updated,
            update_bits,
            low=tf.reduce_min(updated),
            high=tf.reduce_max(updated),
            grid=grid,
            noise=update_noise,
        )
    backward = None
    if feature_gradient:
        backward = tf.matmul(g_q, w_q, transpose_b=True)
        if forward_bits is not None:
            # Without this mask, the blocks below pushed clipped features ever further
            # out (the loss sees no change): training saw them clipped, float inference
            # did not, and predictions collapsed onto a few classes (docs/replay.md).
            inside = (features >= feature_low) & (features <= feature_high)
            backward = backward * tf.cast(inside, backward.dtype)
    return HybridStepResult(updated, logits, probabilities, backward)


def _all_finite(values: Any) -> tf.Tensor:
    """Whether every floating-point tensor in ``values`` (a nest) is finite."""
    checks = [
        tf.reduce_all(tf.math.is_finite(t))
        for t in tf.nest.flatten(values)
        if tf.as_dtype(t.dtype).is_floating
    ]
    return tf.reduce_all(checks) if checks else tf.constant(True)


def _widened(value_range: tf.Tensor, tensor: tf.Tensor) -> tf.Tensor:
    """``(min, max)`` of ``value_range`` and of ``tensor``'s values together."""
    return tf.stack(
        [
            tf.minimum(value_range[0], tf.reduce_min(tensor)),
            tf.maximum(value_range[1], tf.reduce_max(tensor)),
        ]
    )


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class HybridQuantizedTrainStep(tf.keras.Model):
    """Functional ``keras.Model`` whose ``train_step`` does the hybrid CWR* update.

    Build it like a functional model, with a ``CWRStarHead`` producing the output
    logits (optionally followed by a softmax). The head decides the phase
    (``CWRStarHead.is_first_experience``, the one place larq_cwr decides it):

    1. **Float phase**, until the first CWR* experience is consolidated: Keras' own
       float ``train_step`` of the whole model with the compiled optimizer. It also
       tracks the range of the logit gradient, whose early large values later
       experiences' new classes produce again.
    2. **Hybrid phase**, afterwards: ``hybrid_sgd_step`` updates only the head's kernel,
       with the backbone in inference mode. ``lr`` is the compiled optimizer's learning
       rate; the update is plain SGD whatever the optimizer (momentum is ignored, with
       a warning). ``sample_weight`` and ``class_weight`` weight the logit gradient.

    **Trainable blocks and latent replay** (METHOD §5): with ``latent_layer`` naming a
    layer between the input and the head, the layers above it that are trainable in the
    hybrid phase (``CWRStar(trainable_layers=...)`` names them) train too, with
    activations quantized to ``forward_bits``, gradients to ``backward_bits`` and binary
    latent weights stored with ``latent_weight_bits`` (``larq_cwr.backprop``). With a
    ``replay`` memory, each step appends ``replay_batch_size`` stored latents to the new
    batch's latents; ``remember(x, y)`` stores an experience's latents after its
    ``fit``. For 1-bit storage the latent layer must output signs (e.g. a
    ``larq.quantizers.SteSign`` layer), so that stored and live latents match. The
    head's features keep their calibrated static range; a feature it clips passes no
    gradient to the blocks (as ``SteSign``'s ``clip_value``).

    **Inference** (``predict``, ``evaluate``, ``__call__`` without ``training``) with
    ``forward_bits`` set and once calibrated feeds the head its features clipped to
    the calibrated range (``clip_to_feature_range``), as the hybrid step sees them:
    otherwise a feature the blocks move past the range counts in full at inference
    but only as the range's end in training.

    **Calibration** fixes the static ranges of the features and of the logit gradient
    from experience-0 data: call ``calibrate(x0, y0)`` after the first experience (any
    input ``evaluate`` accepts). A model with bit widths entering the hybrid phase
    uncalibrated warns and quantizes on each batch's own range. The ranges, the
    stochastic-rounding state and the head's state are model weights: ``save``,
    ``save_weights`` and checkpoints carry them.

    Args:
        inputs: Functional model inputs.
        outputs: Functional model outputs: the head's logits or their softmax.
        forward_bits: Bits of the forward pass and logit gradient (b_f), or None for
            float.
        update_bits: Bits of the stored head weights (b_w), or None for float.
        grid: Quantization grid, ``"zero_exact"`` (default, METHOD §3) or ``"paper"``.
        rounding: ``"nearest"`` (half to even) or ``"stochastic"`` (unbiased) rounding
            of the stored update.
        seed: Seed of the stochastic-rounding noise (None: 0).
        backward_bits: Bits of the gradients back-propagated through trainable blocks
            (q_b), or None for float.
        latent_weight_bits: Bits of the stored latent weights of binary layers in
            trainable blocks (b_bin), or None for float.
        latent_weight_rounding: ``"stochastic"`` (default): each update of those
            latent weights is stochastically rounded to whole levels of their grid,
            with the noise stream of ``seed``; ``"nearest"``: to the nearest level,
            which drops every update below half a level (at SGD lr 0.009 all of them:
            the binary weights never change, ``docs/replay.md``).
        latent_layer: Name of the layer (or input) splitting the frozen part below from
            the trainable blocks above; the latents of replay are its outputs.
        replay: A ``LatentReplayMemory`` of latents at ``latent_layer``.
        replay_batch_size: Replayed latents appended to each batch.
        block_learning_rate: Learning rate of the trainable blocks (None: the
            optimizer's, as the head's).
        block_optimizer: How the trainable blocks step: ``"sgd"`` (default, METHOD
            §5), ``"momentum"`` (SGD with momentum 0.9) or ``"adam"`` (Keras'
            defaults), in float before the blocks' storage rules
            (``larq_cwr.backprop.block_optimizer_directions``). Their state (1 or 2
            floats per trained weight, and a step count) is model state, copied by
            ``load_head_state`` and saved with the model; it needs ``latent_layer``.
        gradient_range_mode: ``"calibrated"`` (default): the logit gradient is
            quantized on the static range ``calibrate`` fixes from experience-0 data
            (METHOD §4); ``"bound"``: on ``+-1/batch``, the range it can reach (METHOD
            §4 measured both alike for head-only CWR*; with latent replay the
            calibrated range clips the gradients of replayed batches, see
            ``docs/replay.md``).
        **kwargs: Other ``tf.keras.Model`` arguments (``name``).

    Raises:
        ValueError: No (or several) ``CWRStarHead`` in the model, an output that is
            not the head's logits or their softmax, bad bit widths, grid or rounding, a
            ``latent_layer`` not between input and head, or ``replay`` without it.

    Example:
        >>> import larq_cwr, numpy as np, tensorflow as tf
        >>> inputs = tf.keras.Input((4,))
        >>> head = larq_cwr.CWRStarHead(3)
        >>> model = HybridQuantizedTrainStep(inputs, head(inputs))
        >>> model.compile(tf.keras.optimizers.SGD(0.1),
        ...     tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        >>> x, y = np.random.default_rng(0).random((20, 4)), np.arange(20) % 3
        >>> _ = model.fit(x, y, verbose=0, callbacks=[larq_cwr.CWRStar(head, labels=y)])
        >>> model.calibrate(x, y)
        >>> model.phase, model.is_calibrated
        ('hybrid', True)
    """

    def __init__(
        self,
        *args: Any,
        forward_bits: int | None = DEFAULT_FORWARD_BITS,
        update_bits: int | None = DEFAULT_UPDATE_BITS,
        grid: str = DEFAULT_GRID,
        rounding: str = "nearest",
        seed: int | None = None,
        backward_bits: int | None = None,
        latent_weight_bits: int | None = DEFAULT_LATENT_WEIGHT_BITS,
        latent_weight_rounding: str = "stochastic",
        latent_layer: str | None = None,
        replay: LatentReplayMemory | dict | None = None,
        replay_batch_size: int = DEFAULT_REPLAY_BATCH_SIZE,
        block_learning_rate: float | None = None,
        block_optimizer: str = "sgd",
        gradient_range_mode: str = "calibrated",
        **kwargs: Any,
    ) -> None:
        check_optional_bits(forward_bits, "forward_bits")
        check_optional_bits(update_bits, "update_bits")
        check_optional_bits(backward_bits, "backward_bits")
        check_optional_bits(latent_weight_bits, "latent_weight_bits")
        check_choice(grid, GRIDS, "grid")
        check_choice(rounding, ROUNDING_MODES, "rounding")
        check_choice(
            latent_weight_rounding, LATENT_WEIGHT_ROUNDING, "latent_weight_rounding"
        )
        check_choice(gradient_range_mode, GRADIENT_RANGE_MODES, "gradient_range_mode")
        check_choice(block_optimizer, BLOCK_OPTIMIZERS, "block_optimizer")
        check_positive_int(replay_batch_size, "replay_batch_size")
        if block_learning_rate is not None:
            check_positive_number(block_learning_rate, "block_learning_rate")
        if isinstance(replay, dict):  # from get_config
            replay = tf.keras.layers.deserialize(replay)
        if replay is not None and not isinstance(replay, LatentReplayMemory):
            raise ValueError(
                f"`replay` must be a LatentReplayMemory; got {type(replay).__name__}."
            )
        if replay is not None and latent_layer is None:
            raise ValueError(
                "`replay` needs `latent_layer`, the layer whose latents it keeps."
            )
        if block_optimizer != "sgd" and latent_layer is None:
            raise ValueError(
                f"`block_optimizer`={block_optimizer!r} needs `latent_layer`: without "
                "it no blocks train (the head always steps with plain SGD)."
            )
        super().__init__(*args, **kwargs)
        self.forward_bits = forward_bits
        self.update_bits = update_bits
        self.grid = grid
        self.rounding = rounding
        self.seed = None if seed is None else check_seed(seed)
        self.backward_bits = backward_bits
        self.latent_weight_bits = latent_weight_bits
        self.latent_weight_rounding = latent_weight_rounding
        self.latent_layer = latent_layer
        self.replay_batch_size = int(replay_batch_size)
        self.block_learning_rate = block_learning_rate
        self.block_optimizer = block_optimizer
        self.gradient_range_mode = gradient_range_mode
        self.head = self._find_head()
        # The head's input and output in this model's graph (the layer may be shared
        # with other models, e.g. by `upper_model`).
        object.__setattr__(self, "_head_io", self._find_head_call())
        self._outputs_logits = self._check_outputs()
        object.__setattr__(
            self,
            "_blocks",
            (
                None
                if latent_layer is None
                else BlockStack(self, self._head_io[0], latent_layer=latent_layer)
            ),
        )
        self.replay = replay
        if replay is not None:
            self._check_replay_shape(replay)
        self._make_block_optimizer_state()
        # Views sharing the model's layers; bypass Keras' attribute tracking so they
        # appear neither as extra layers in `layers`/`summary()` nor in saved files.
        object.__setattr__(
            self, "_feature_model", tf.keras.Model(self.inputs, self._head_io[0])
        )
        self._feature_range = self._state("feature_range", (2,))
        self._gradient_range = self._state("gradient_range", (2,))
        # Running min/max of (p - onehot) and the largest batch over the float training
        # steps of experience 0; [0, 0] is a safe start since the min is <= 0 <= the max.
        self._difference_range = self._state("difference_range", (2,))
        self._largest_batch = self._state("largest_batch", (), tf.int32)
        self._calibrated = self._state("calibrated", (), tf.int32)
        # Counter of the stochastic-rounding noise (`counter_uniform`): values drawn so
        # far, so a saved and restored model continues the same stream.
        self._noise_counter = self._state("noise_counter", (), tf.int32)
        # Accumulators of a calibration pass (not model state: not saved).
        object.__setattr__(
            self, "_pass_ranges", tf.Variable(tf.zeros((2, 2)), trainable=False)
        )
        object.__setattr__(
            self, "_pass_batch", tf.Variable(0, dtype=tf.int32, trainable=False)
        )
        self._calibrating = False
        self._remembering = False
        self._traced_phase: str | None = None
        self._traced_calibrating: bool | None = None
        self._traced_remembering: bool | None = None
        self._checked_compile = False

    def _state(self, name: str, shape: tuple, dtype: Any = tf.float32) -> tf.Variable:
        return self.add_weight(
            name=name, shape=shape, initializer="zeros", dtype=dtype, trainable=False
        )

    def _make_block_optimizer_state(self) -> None:
        """Zero slots of ``block_optimizer`` for every weight the blocks could train
        (which layers train is only known when ``fit`` starts), and a step count."""
        slots: dict[int, list[tf.Variable]] = {}
        state: list[tf.Variable] = []
        count = block_optimizer_slot_count(self.block_optimizer)
        if count:
            state.append(self._state("block_optimizer/steps", (), tf.int64))
            candidates = [
                variable
                for layer in self._blocks.layers
                for variable in layer.weights
                if variable.trainable
            ]
            for index, variable in enumerate(candidates):
                slots[id(variable)] = [
                    self._state(f"block_optimizer/{kind}_{index}", variable.shape)
                    for kind in ("m", "v")[:count]
                ]
                state.extend(slots[id(variable)])
        # Plain attributes: `_state` already tracks the variables as weights.
        object.__setattr__(self, "_block_slots", slots)
        object.__setattr__(self, "_block_optimizer_state", state)

    @property
    def block_optimizer_weights(self) -> list[tf.Variable]:
        """The state of ``block_optimizer`` (empty for ``"sgd"``): its step count, then
        each trainable block weight's slots."""
        return list(self._block_optimizer_state)

    # -- construction checks ---------------------------------------------------------

    def _find_head(self) -> CWRStarHead:
        heads = [layer for layer in self.layers if isinstance(layer, CWRStarHead)]
        if len(heads) != 1:
            raise ValueError(
                "HybridQuantizedTrainStep needs exactly one CWRStarHead among the model's "
                f"top-level layers; found {len(heads)}."
            )
        return heads[0]

    def _find_head_call(self) -> tuple[tf.Tensor, tf.Tensor]:
        for nodes in self._nodes_by_depth.values():
            for node in nodes:
                if node.layer is self.head:
                    return node.input_tensors, node.output_tensors
        raise ValueError("The CWRStarHead is not called in the model's graph.")

    def _check_outputs(self) -> bool:
        if len(self.outputs) != 1:
            raise ValueError(
                f"HybridQuantizedTrainStep needs a single output; got {len(self.outputs)}."
            )
        output = self.outputs[0]
        if output is self._head_io[1]:
            return True
        layer = output._keras_history.layer
        inbound = layer.input if hasattr(layer, "input") else None
        activation = getattr(layer, "activation", None)
        is_softmax = isinstance(layer, tf.keras.layers.Softmax) or (
            isinstance(layer, tf.keras.layers.Activation)
            and activation is tf.keras.activations.softmax
        )
        if not (is_softmax and inbound is self._head_io[1]):
            raise ValueError(
                "HybridQuantizedTrainStep's output must be the CWRStarHead's logits or a "
                f"softmax applied to them; got the output of layer {layer.name!r}."
            )
        return False

    def _check_replay_shape(self, replay: LatentReplayMemory) -> None:
        shape = self._blocks.latent_shape
        if not replay.built:
            replay.build(shape)
        elif tuple(replay.latent_shape) != shape:
            raise ValueError(
                f"`replay` holds latents of shape {tuple(replay.latent_shape)}; expected "
                f"{shape}, the output of `latent_layer`={self.latent_layer!r}."
            )

    # -- state --------------------------------------------------------------------------

    @property
    def phase(self) -> str:
        """``"float"`` until the head consolidates an experience, then ``"hybrid"``."""
        return "float" if self.head.is_first_experience else "hybrid"

    @property
    def is_calibrated(self) -> bool:
        """True once the static ranges are fixed by ``calibrate``."""
        return bool(self._calibrated.numpy())

    @property
    def noise_counter(self) -> int:
        """Values drawn so far from the stochastic-rounding noise (``counter_uniform``)."""
        return int(self._noise_counter.numpy())

    @property
    def feature_range(self) -> np.ndarray:
        """Copy of the static (min, max) of the head's input features."""
        return self._feature_range.numpy().copy()

    @property
    def gradient_range(self) -> np.ndarray:
        """Copy of the static (min, max) of the logit gradient ``(p - onehot) / batch``."""
        return self._gradient_range.numpy().copy()

    @property
    def feature_extractor(self) -> tf.keras.Model:
        """Model from the inputs to the head's input features (shares the layers)."""
        return tf.keras.Model(self.inputs, self._head_io[0])

    # -- inference ---------------------------------------------------------------------

    def call(self, inputs: Any, *, training: Any = None, mask: Any = None) -> tf.Tensor:
        if training or self.forward_bits is None:
            return super().call(inputs, training=training, mask=mask)
        features = self._feature_model(inputs, training=training)
        # A tensor condition, not Python: saved models keep it (uncalibrated: no range).
        unbounded = tf.constant([-np.inf, np.inf], self._feature_range.dtype)
        feature_range = tf.where(self._calibrated > 0, self._feature_range, unbounded)
        features = clip_to_feature_range(features, feature_range)
        logits = self.head(features)
        return logits if self._outputs_logits else tf.nn.softmax(logits)

    # -- calibration -----------------------------------------------------------------

    def calibrate(
        self,
        x: Any = None,
        y: Any = None,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
    ) -> None:
        """Fix the static ranges of the hybrid update from experience-0 data.

        Runs the model in inference mode over the data, through ``evaluate``'s input
        handling (arrays, ``tf.data`` datasets, generators, ``Sequence``s, ``steps``),
        and takes the min/max of the head's input features and of
        ``softmax(logits) - onehot(y)``; the gradient range also covers the float
        training steps of experience 0, and is divided by the largest batch seen, since
        the gradient is ``(p - onehot) / batch``. Call it after the first experience
        (the head holds the consolidated weights then) and before the hybrid phase; it
        does not change the phase. A model with ``forward_bits=None`` does not use the
        ranges, but they are computed all the same (for copies with other bits).

        Args:
            x: Inputs, or a dataset/generator of ``(x, y)`` batches (as for ``evaluate``).
            y: Int or one-hot labels when ``x`` is an array.
            batch_size: Batch size for array inputs (default 32, as Keras).
            steps: Number of batches to use (default: until the data is exhausted).

        Raises:
            RuntimeError: The model is not compiled.
            ValueError: No labels, no data, or non-finite inputs, features or
                gradients; the previous ranges are then kept.
        """
        if getattr(self, "optimizer", None) is None:
            raise RuntimeError(
                "Compile the model before `calibrate()`: it runs through `evaluate`."
            )
        tracked = self._difference_range.numpy()
        self._pass_ranges.assign([[np.inf, -np.inf], [tracked[0], tracked[1]]])
        self._pass_batch.assign(int(self._largest_batch.numpy()))
        self._calibrating = True
        try:
            self.evaluate(x, y, batch_size=batch_size, steps=steps, verbose=0)
        finally:
            self._calibrating = False
        (f_low, f_high), (d_low, d_high) = self._pass_ranges.numpy()
        batch = max(int(self._pass_batch.numpy()), 1)
        ranges = np.array([[f_low, f_high], [d_low / batch, d_high / batch]])
        if not np.all(np.isfinite(ranges)):
            raise ValueError(
                "`calibrate` saw no data or non-finite inputs, features or gradients; "
                "the ranges are unchanged."
            )
        self._feature_range.assign(ranges[0])
        self._gradient_range.assign(ranges[1])
        self._calibrated.assign(1)
        self.train_function = None  # the static ranges are part of the traced step
        logger.info(
            "Calibrated: features in [%.4g, %.4g], logit gradient in [%.4g, %.4g].",
            *ranges.ravel(),
        )

    def make_test_function(self, force: bool = False):
        if self._calibrating != self._traced_calibrating:
            force = True  # a calibration pass traces another test step
        self._traced_calibrating = self._calibrating
        return super().make_test_function(force=force)

    def test_step(self, data: Any) -> dict[str, Any]:
        if not self._calibrating:
            return super().test_step(data)
        x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError("`calibrate` needs labels: pass `y` or (x, y) batches.")
        features = self._feature_model(x, training=False)
        difference = logit_difference(tf.nn.softmax(self.head(features)), y)
        ranges = self._pass_ranges
        widened = tf.stack([_widened(ranges[0], features), _widened(ranges[1], difference)])
        # Non-finite data leaves NaN ranges for `calibrate` to refuse, checked outright:
        # TensorFlow's CPU min/max reductions can skip a NaN (a NaN feature left a
        # batch's range finite here), and a layer can map a NaN input to a finite one.
        finite = tf.reduce_all(
            [_all_finite(t) for t in (x, features, difference)]
            + [tf.logical_not(tf.reduce_any(tf.math.is_nan(ranges)))]
        )
        ranges.assign(tf.where(finite, widened, tf.fill(tf.shape(widened), np.nan)))
        self._pass_batch.assign(tf.maximum(self._pass_batch, tf.shape(difference)[0]))
        return {}

    # -- the trainable part on precomputed latents ---------------------------------------

    @property
    def latent_extractor(self) -> tf.keras.Model:
        """Model from the inputs to the latents at ``latent_layer`` (shares the layers);
        the feature extractor when no ``latent_layer`` is set."""
        return self.feature_extractor if self._blocks is None else self._blocks.lower

    def remember(
        self,
        x: Any = None,
        y: Any = None,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
    ) -> None:
        """Store an experience's latents in the ``replay`` memory (METHOD §5).

        Call it after the experience's ``fit`` (after the first experience too): the
        part below ``latent_layer`` then no longer changes, so the stored latents stay
        valid. The latents are computed in inference mode through ``predict``'s input
        handling (arrays with ``y``, or datasets/generators of ``(x, y)`` batches), and
        the memory's policy decides what it keeps.

        Args:
            x: Inputs, or a dataset/generator of ``(x, y)`` batches.
            y: Int or one-hot labels when ``x`` is an array.
            batch_size: Batch size for array inputs (default 32).
            steps: Number of batches to use (default: all).

        Raises:
            ValueError: No ``replay`` memory, no labels, or non-binary latents for a
                1-bit memory; the memory is then unchanged.
        """
        if self.replay is None:
            raise ValueError("`remember` needs a model built with a `replay` memory.")
        if y is not None:
            x = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size or 32)
        binarization = self._blocks.latent_layer
        if self.replay.storage == "1bit" and isinstance(binarization, LatentBinarization):
            binarization.enable()  # live latents from now on match the stored signs
        self._remembering = True
        try:
            latents, labels = self.predict(x, steps=steps, verbose=0)
        finally:
            self._remembering = False
        if labels.ndim == 2 and labels.shape[1] == self.head.num_classes > 1:
            labels = labels.argmax(axis=1)
        if self.replay.storage == "1bit" and not np.all(np.abs(latents) == 1.0):
            raise ValueError(
                f"A 1-bit replay memory needs binary latents, but `latent_layer`="
                f"{self.latent_layer!r} outputs other values than -1 and +1; make it a "
                "`larq_cwr.replay.LatentBinarization` layer, or store float32/int8."
            )
        self.replay.update(latents, labels.reshape(-1))

    def make_predict_function(self, force: bool = False):
        if self._remembering != self._traced_remembering:
            force = True  # storing latents traces another predict step
        self._traced_remembering = self._remembering
        return super().make_predict_function(force=force)

    def predict_step(self, data: Any) -> Any:
        if not self._remembering:
            return super().predict_step(data)
        x, y, _ = tf.keras.utils.unpack_x_y_sample_weight(data)
        if y is None:
            raise ValueError("`remember` needs labels: pass `y` or (x, y) batches.")
        return self.latent_extractor(x, training=False), y

    @property
    def upper_features(self) -> tf.keras.Model:
        """Model from latents to the head's input features through the layers above
        ``latent_layer`` (shares the layers; the identity without ``latent_layer``)."""
        if self._blocks is None:
            features = tf.keras.Input(tuple(self._head_io[0].shape[1:]))
            return tf.keras.Model(features, features)
        return self._blocks.upper_model

    def upper_model(self, *, head_only: bool = False) -> "HybridQuantizedTrainStep":
        """The layers above ``latent_layer`` and the head, on latent inputs.

        Without ``latent_layer``, or with ``head_only``, this is the head alone on
        feature inputs (``upper_features`` computes them from latents). The new model
        **shares** this model's layers (training it trains them) and replay memory, and
        starts from a copy of this model's calibration and noise state. Once the part
        below is frozen, a stream can train it on latents computed once (the same
        arithmetic, without running the frozen part every epoch), then copy its state
        back with ``load_head_state``.

        Returns:
            A new, uncompiled ``HybridQuantizedTrainStep``.
        """
        if self._blocks is None or head_only:
            latents = tf.keras.Input(tuple(self._head_io[0].shape[1:]), name="features")
            features = latents
        else:
            latents = tf.keras.Input(self._blocks.latent_shape, name="latents")
            upper = self._blocks.upper_model
            features = rerun_graph(upper, latents, start=upper.inputs[0])
        outputs = self.head(features)
        if not self._outputs_logits:
            outputs = tf.keras.layers.Softmax()(outputs)
        arguments = {key: getattr(self, key) for key in _OWN_ARGUMENTS}
        arguments["latent_layer"] = None
        arguments["block_optimizer"] = "sgd"  # no blocks train
        replay = None
        if self._blocks is not None and not head_only:
            arguments["latent_layer"] = latents._keras_history.layer.name
            arguments["block_optimizer"] = self.block_optimizer
            replay = self.replay
        model = HybridQuantizedTrainStep(
            latents, outputs, name=f"{self.name}_upper", replay=replay, **arguments
        )
        model.load_head_state(self)
        return model

    def load_head_state(self, other: "HybridQuantizedTrainStep") -> None:
        """Copy the head weights, calibration and noise state of ``other`` into this one,
        and the state of a shared ``block_optimizer`` (the slots of shared layers)."""
        if other.head is not self.head:
            self.head.set_weights(other.head.get_weights())
        for mine, theirs in zip(self._own_state(), other._own_state()):
            mine.assign(theirs)
        if self.block_optimizer == other.block_optimizer and self._block_slots:
            if other._block_slots:
                self._block_optimizer_state[0].assign(other._block_optimizer_state[0])
            for key, slots in self._block_slots.items():  # shared layers' weights
                for mine, theirs in zip(slots, other._block_slots.get(key, [])):
                    mine.assign(theirs)
        self.train_function = None

    def _step_gradient_range(self, calibrated: bool) -> tf.Variable | str | None:
        """``hybrid_sgd_step``'s ``gradient_range`` for ``gradient_range_mode``."""
        if self.gradient_range_mode == "bound":
            return "bound"
        return self._gradient_range if calibrated else None

    def _own_state(self) -> list[tf.Variable]:
        return [
            self._feature_range,
            self._gradient_range,
            self._difference_range,
            self._largest_batch,
            self._calibrated,
            self._noise_counter,
        ]

    # -- training -----------------------------------------------------------------------

    def make_train_function(self, force: bool = False):
        phase = self.phase
        if phase != self._traced_phase:
            force = True  # the phase decides what train_step traces
        self._traced_phase = phase
        if phase == "hybrid":
            self._check_compile()
        return super().make_train_function(force=force)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        if self._traced_phase != "hybrid":
            self._warn_if_bits_unused()
            return self._float_step(x, y, sample_weight)
        calibrated = self._check_calibrated()
        blocks = self._trainable_blocks()
        if self._blocks is None:
            features = self._feature_model(x, training=False)
        else:
            latents = self._blocks.lower(x, training=False)
            latents, y, sample_weight = self._append_replay(latents, y, sample_weight)
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(blocks)
                features = self._blocks.upper(
                    latents,
                    forward_bits=self.forward_bits if blocks else None,
                    backward_bits=self.backward_bits,
                    grid=self.grid,
                )
        kernel = self.head.kernel
        result = hybrid_sgd_step(
            kernel,
            features,
            labels=y,
            learning_rate=self._learning_rate(),
            forward_bits=self.forward_bits,
            update_bits=self.update_bits,
            grid=self.grid,
            feature_range=self._feature_range if calibrated else None,
            gradient_range=self._step_gradient_range(calibrated),
            sample_weight=sample_weight,
            update_noise=self._rounding_noise(kernel),
            feature_gradient=bool(blocks),
        )
        if blocks:
            self._update_blocks(tape, features, blocks, result.feature_gradient)
        kernel.assign(result.kernel)
        self.optimizer.iterations.assign_add(1)
        y_pred = result.logits if self._outputs_logits else result.probabilities
        self.compute_loss(x, y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _trainable_blocks(self) -> list[tf.Variable]:
        """Trainable variables above ``latent_layer`` (the hybrid phase trains them)."""
        if self._blocks is None:
            blocks = []
        else:
            blocks = [
                variable
                for layer in self._blocks.layers
                for variable in layer.trainable_weights
            ]
        ignored = [
            v.name
            for v in self.trainable_variables
            if v is not self.head.kernel and all(v is not b for b in blocks)
        ]
        if ignored:
            warnings.warn(
                "The hybrid phase trains the CWR* head and the trainable layers above "
                f"`latent_layer`={self.latent_layer!r}; these trainable variables stay "
                f"unchanged: {ignored[:5]}{' ...' if len(ignored) > 5 else ''}. Name "
                "the layers to train with `CWRStar(trainable_layers=...)`.",
                stacklevel=2,
            )
        return blocks

    def _append_replay(
        self, latents: tf.Tensor, y: tf.Tensor, sample_weight: tf.Tensor | None
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]:
        """The batch with ``replay_batch_size`` stored latents appended (METHOD §5)."""
        if self.replay is None:
            return latents, y, sample_weight
        with tf.init_scope():
            empty = self.replay.filled == 0
        if empty:
            return latents, y, sample_weight
        replayed, labels = self.replay.sample(self.replay_batch_size)
        latents = tf.concat([latents, tf.cast(replayed, latents.dtype)], axis=0)
        y = tf.convert_to_tensor(y)
        num_classes = self.head.num_classes
        if y.shape.rank == 2 and y.shape[-1] == num_classes and num_classes > 1:
            labels = tf.one_hot(labels, num_classes, dtype=y.dtype)
        else:
            labels = tf.reshape(tf.cast(labels, y.dtype), [-1, *y.shape[1:]])
        if sample_weight is not None:
            ones = tf.ones([self.replay_batch_size], sample_weight.dtype)
            sample_weight = tf.concat([tf.reshape(sample_weight, [-1]), ones], axis=0)
        return latents, tf.concat([y, labels], axis=0), sample_weight

    def _update_blocks(
        self,
        tape: tf.GradientTape,
        features: tf.Tensor,
        blocks: list[tf.Variable],
        feature_gradient: tf.Tensor,
    ) -> None:
        """Back-propagate the head's feature gradient (q_b bits) and update the blocks."""
        if self.backward_bits is not None:
            feature_gradient = snap_to_grid(
                feature_gradient,
                self.backward_bits,
                low=tf.reduce_min(feature_gradient),
                high=tf.reduce_max(feature_gradient),
                grid=self.grid,
            )
        gradients = tape.gradient(features, blocks, output_gradients=feature_gradient)
        if self._block_slots:
            steps = self._block_optimizer_state[0]
            steps.assign_add(1)
            gradients = block_optimizer_directions(
                gradients,
                [self._block_slots[id(v)] for v in blocks],
                optimizer=self.block_optimizer,
                step=steps,
            )
        rate = self._learning_rate()
        if self.block_learning_rate is not None:
            rate = tf.cast(self.block_learning_rate, rate.dtype)
        norms = [
            v
            for layer in self._blocks.layers
            if isinstance(layer, tf.keras.layers.BatchNormalization)
            for v in layer.trainable_weights
        ]
        update_block_weights(
            blocks,
            gradients,
            learning_rate=rate,
            binary=binary_kernels(self._blocks.layers),
            float_only=norms,
            latent_weight_bits=self.latent_weight_bits,
            latent_weight_noise=(
                self._noise if self.latent_weight_rounding == "stochastic" else None
            ),
            update_bits=self.update_bits,
            grid=self.grid,
        )

    def _float_step(self, x: Any, y: Any, sample_weight: Any) -> dict[str, Any]:
        """Keras' own float train step, also tracking the logit-gradient range."""
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        probabilities = tf.nn.softmax(y_pred) if self._outputs_logits else y_pred
        difference = logit_difference(probabilities, y)
        self._difference_range.assign(_widened(self._difference_range, difference))
        self._largest_batch.assign(tf.maximum(self._largest_batch, tf.shape(difference)[0]))
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _rounding_noise(self, kernel: tf.Variable) -> tf.Tensor | None:
        """Noise of the stochastic rounding of the stored update (``counter_uniform``,
        the generator the device head runs too); advances the saved counter."""
        if self.rounding != "stochastic" or self.update_bits is None:
            return None
        return self._noise(kernel)

    def _noise(self, variable: tf.Variable) -> tf.Tensor:
        """Uniform noise like ``variable``: the next draws of the seed's stream."""
        noise = counter_uniform(
            tf.shape(variable), seed=self.seed or 0, counter=self._noise_counter
        )
        self._noise_counter.assign_add(tf.size(variable, out_type=tf.int32))
        return noise

    def _learning_rate(self) -> tf.Tensor:
        rate = self.optimizer.learning_rate
        if isinstance(rate, tf.keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(self.optimizer.iterations)
        return tf.cast(rate, self.head.kernel.dtype)

    # -- warnings (trace time: once per traced train function; `init_scope` reads the
    # state eagerly, as it stands when the first batch arrives) -------------------------

    def _warn_if_bits_unused(self) -> None:
        has_bits = self.forward_bits is not None or self.update_bits is not None
        with tf.init_scope():
            in_experience = self.head.in_experience
        if has_bits and not in_experience:
            warnings.warn(
                "HybridQuantizedTrainStep trains the whole network in float: no CWR* "
                "experience has been consolidated, so `forward_bits`/`update_bits` are "
                "not used yet. Train each experience with the `CWRStar` callback; the "
                "hybrid update starts after the first one.",
                stacklevel=2,
            )

    def _check_calibrated(self) -> bool:
        with tf.init_scope():
            calibrated = self.is_calibrated
        if self.forward_bits is not None and not calibrated:
            warnings.warn(
                "HybridQuantizedTrainStep is in the hybrid phase but not calibrated: the "
                "features and logit gradient are quantized on each batch's own range. "
                "Call `model.calibrate(x0, y0)` with experience-0 data after the first "
                "experience for the static ranges of METHOD §4.",
                stacklevel=2,
            )
        return calibrated

    def _check_compile(self) -> None:
        if self._checked_compile or self.optimizer is None:
            return
        self._checked_compile = True
        momentum = getattr(self.optimizer, "momentum", 0.0)
        if not isinstance(self.optimizer, tf.keras.optimizers.SGD) or float(momentum):
            warnings.warn(
                "HybridQuantizedTrainStep updates the head with plain SGD at the "
                f"optimizer's learning rate; {type(self.optimizer).__name__} "
                f"(momentum={momentum}) only supplies the learning rate.",
                stacklevel=3,
            )
        loss = getattr(self, "loss", None)
        if not (
            isinstance(loss, _CROSSENTROPY_LOSSES)
            or (isinstance(loss, str) and loss in _CROSSENTROPY_NAMES)
        ):
            warnings.warn(
                "HybridQuantizedTrainStep's hybrid update follows the gradient of the "
                f"softmax cross-entropy; the compiled loss {loss!r} is only reported.",
                stacklevel=3,
            )

    def compile(self, *args: Any, **kwargs: Any) -> None:
        super().compile(*args, **kwargs)
        self._checked_compile = False  # check the new optimizer and loss

    def get_compile_config(self) -> dict[str, Any] | None:
        return super().get_compile_config()

    def compile_from_config(self, config: dict[str, Any]) -> None:
        """Compile a loaded model as it was saved (Keras skips models whose ``compile``
        is overridden unless they define this), so it can go on training."""
        self.compile(**tf.keras.saving.deserialize_keras_object(config))
        if isinstance(self.optimizer, tf.keras.optimizers.Optimizer) and self.built:
            self.optimizer.build(self.trainable_variables)  # its saved state loads next

    # -- serialization ---------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        functional = tf.keras.Model(self.inputs, self.outputs, name=self.name)
        replay = None if self.replay is None else tf.keras.layers.serialize(self.replay)
        return {
            **functional.get_config(),
            **{key: getattr(self, key) for key in _OWN_ARGUMENTS},
            "replay": replay,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict | None = None):
        config = dict(config)
        own = {key: config.pop(key) for key in (*_OWN_ARGUMENTS, "replay") if key in config}
        functional = tf.keras.Model.from_config(config, custom_objects=custom_objects)
        return cls(functional.inputs, functional.outputs, name=functional.name, **own)
