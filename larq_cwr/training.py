"""Hybrid-precision training step for the CWR* head (METHOD §4)."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
import tensorflow as tf
from tf_keras.src.engine import data_adapter  # Keras' own input handling, as in fit()

from larq_cwr._checks import check_bits
from larq_cwr.head import CWRStarHead
from larq_cwr.quantizers import snap_to_grid

__all__ = ["HybridQuantizedTrainStep"]

logger = logging.getLogger(__name__)

DEFAULT_FORWARD_BITS = 8  # METHOD §4 reference default b_f
DEFAULT_UPDATE_BITS = 16  # METHOD §4 reference default b_w
WEIGHT_RANGE_MARGIN = 0.02  # METHOD §4: forward weight range widened by 2% of its span
ROUNDING_MODES = ("nearest", "stochastic")
_OWN_ARGUMENTS = (
    "forward_bits",
    "update_bits",
    "rounding",
    "seed",
    "zero_exact",
    "auto_calibrate",
)


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class HybridQuantizedTrainStep(tf.keras.Model):
    """Functional ``keras.Model`` whose ``train_step`` does the hybrid CWR* update.

    Build it like a functional model, with a ``CWRStarHead`` producing the output
    logits (optionally followed by a softmax). Training has two phases:

    1. **Calibration phase** (experience 0, until calibrated): an ordinary float
       ``train_step`` of the whole model with the compiled optimizer.
    2. **Hybrid phase** (after calibration): only the head's kernel ``W`` is updated,
       with the backbone run in inference mode, as METHOD §4 specifies::

           x_q = Q_bf(features; static range)      W_q = Q_bf(W; min/max +- 2% span)
           p_q = Q_bf(softmax(x_q @ W_q); [0, 1])  g_q = Q_bf((p_q - onehot(y)) / batch)
           W  <- Q_bw(W - lr * x_q^T g_q)          (the stored weights keep b_w bits)

       ``lr`` is the compiled optimizer's learning rate; the update is plain SGD
       whatever the optimizer (momentum is ignored, with a warning).

    Calibration fixes the static ranges of the features and of the logit gradient
    from experience-0 data: automatically at the end of the first ``fit`` or by
    ``calibrate(x, y)``. The feature range comes from a pass over the data with the
    trained backbone in inference mode; the gradient range covers that pass and every
    float training step of experience 0 (whose early, large gradients later
    experiences' new classes produce again).
    The ranges and the phase are model weights, so saving and loading keep them.

    Args:
        inputs: Functional model inputs.
        outputs: Functional model outputs: the head's logits or their softmax.
        forward_bits: Bits of the forward pass and logit gradient (b_f), or None for
            float.
        update_bits: Bits of the stored head weights (b_w), or None for float.
        rounding: ``"nearest"`` (half to even) or ``"stochastic"`` (unbiased) rounding
            of the stored update.
        seed: Seed of the stochastic-rounding noise.
        zero_exact: Quantize with TensorFlow's zero-exact
            ``fake_quant_with_min_max_vars`` instead of the METHOD §3 grid.
        auto_calibrate: Calibrate at the end of the first ``fit`` call.
        **kwargs: Other ``tf.keras.Model`` arguments (``name``).

    Raises:
        ValueError: No (or several) ``CWRStarHead`` in the model, an output that is
            not the head's logits or their softmax, bad bit widths or rounding mode.

    Example:
        >>> import larq_cwr, tensorflow as tf
        >>> inputs = tf.keras.Input((4,))
        >>> logits = larq_cwr.CWRStarHead(3)(inputs)
        >>> model = HybridQuantizedTrainStep(inputs, logits, forward_bits=8, update_bits=16)
        >>> model.compile(tf.keras.optimizers.SGD(0.0025),
        ...     tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(
        self,
        *args: Any,
        forward_bits: int | None = DEFAULT_FORWARD_BITS,
        update_bits: int | None = DEFAULT_UPDATE_BITS,
        rounding: str = "nearest",
        seed: int | None = None,
        zero_exact: bool = False,
        auto_calibrate: bool = True,
        **kwargs: Any,
    ) -> None:
        if forward_bits is not None:
            check_bits(forward_bits, "forward_bits")
        if update_bits is not None:
            check_bits(update_bits, "update_bits")
        if rounding not in ROUNDING_MODES:
            raise ValueError(
                f"`rounding` must be one of {ROUNDING_MODES}; got {rounding!r}."
            )
        super().__init__(*args, **kwargs)
        self.forward_bits = forward_bits
        self.update_bits = update_bits
        self.rounding = rounding
        self.seed = seed
        self.zero_exact = bool(zero_exact)
        self.auto_calibrate = bool(auto_calibrate)
        self.head = self._find_head()
        self._outputs_logits = self._check_outputs()
        # Bypass Keras' attribute tracking: this view shares the model's layers and must
        # not appear as an extra layer in `layers`, `summary()` or saved files.
        object.__setattr__(
            self,
            "_features_and_logits",
            tf.keras.Model(self.inputs, [self.head.input, self.head.output]),
        )
        self._feature_range = self.add_weight(
            name="feature_range", shape=(2,), initializer="zeros", trainable=False
        )
        self._gradient_range = self.add_weight(
            name="gradient_range", shape=(2,), initializer="zeros", trainable=False
        )
        # Running min/max of (p - onehot) and the largest batch over the float training
        # steps of experience 0; [0, 0] is a safe start since the min is <= 0 <= the max.
        self._difference_range = self.add_weight(
            name="difference_range", shape=(2,), initializer="zeros", trainable=False
        )
        self._largest_batch = self.add_weight(
            name="largest_batch",
            shape=(),
            initializer="zeros",
            dtype=tf.int32,
            trainable=False,
        )
        self._calibrated = self.add_weight(
            name="calibrated",
            shape=(),
            initializer="zeros",
            dtype=tf.int32,
            trainable=False,
        )
        object.__setattr__(
            self, "_noise", tf.random.Generator.from_seed(0 if seed is None else seed)
        )
        self._traced_hybrid: bool | None = None
        self._warned_optimizer = False

    # -- construction checks ---------------------------------------------------------

    def _find_head(self) -> CWRStarHead:
        heads = [layer for layer in self.layers if isinstance(layer, CWRStarHead)]
        if len(heads) != 1:
            raise ValueError(
                "HybridQuantizedTrainStep needs exactly one CWRStarHead among the model's "
                f"top-level layers; found {len(heads)}."
            )
        return heads[0]

    def _check_outputs(self) -> bool:
        if len(self.outputs) != 1:
            raise ValueError(
                f"HybridQuantizedTrainStep needs a single output; got {len(self.outputs)}."
            )
        output = self.outputs[0]
        if output is self.head.output:
            return True
        layer = output._keras_history.layer
        inbound = layer.input if hasattr(layer, "input") else None
        activation = getattr(layer, "activation", None)
        is_softmax = isinstance(layer, tf.keras.layers.Softmax) or (
            isinstance(layer, tf.keras.layers.Activation)
            and activation is tf.keras.activations.softmax
        )
        if not (is_softmax and inbound is self.head.output):
            raise ValueError(
                "HybridQuantizedTrainStep's output must be the CWRStarHead's logits or a "
                f"softmax applied to them; got the output of layer {layer.name!r}."
            )
        return False

    # -- state --------------------------------------------------------------------------

    @property
    def is_calibrated(self) -> bool:
        """True once the static ranges are fixed and the hybrid phase is on."""
        return bool(self._calibrated.numpy())

    @property
    def feature_range(self) -> np.ndarray:
        """Copy of the static (min, max) of the head's input features."""
        return self._feature_range.numpy().copy()

    @property
    def gradient_range(self) -> np.ndarray:
        """Copy of the static (min, max) of the logit gradient ``(p - onehot) / batch``."""
        return self._gradient_range.numpy().copy()

    def calibrate(
        self,
        x: Any = None,
        y: Any = None,
        *,
        batch_size: int | None = None,
        steps: int | None = None,
    ) -> None:
        """Fix the static ranges from data (experience 0) and switch to the hybrid phase.

        Runs the model in inference mode over the data, taking the min/max of the
        head's input features and of the logit gradient ``(softmax - onehot) / batch``.

        Args:
            x: Inputs, or a dataset of ``(x, y)`` batches (as for ``evaluate``).
            y: Int labels when ``x`` is an array.
            batch_size: Batch size for array inputs (default 32, as Keras).
            steps: Number of batches to use (default: all).

        With ``forward_bits=None`` there is no static range to fix: the data is not
        needed and the call only switches to the hybrid phase.

        Raises:
            ValueError: No labelled data, or non-finite features.
        """
        if self.forward_bits is None:
            self._calibrated.assign(1)
            return

        handler = data_adapter.get_data_handler(
            x=x,
            y=y,
            batch_size=batch_size,
            steps_per_epoch=steps,
            model=self,
            shuffle=False,
        )
        low = np.array([np.inf, np.inf], dtype=np.float64)
        high = -low
        # Experience-0 training steps saw the large early gradients: keep their range.
        low[1], high[1] = self._difference_range.numpy()
        largest_batch = int(self._largest_batch.numpy())
        for _, iterator in handler.enumerate_epochs():
            for _ in handler.steps():
                inputs, labels, _ = tf.keras.utils.unpack_x_y_sample_weight(next(iterator))
                if labels is None:
                    raise ValueError(
                        "`calibrate` needs labels: pass `y` or (x, y) batches."
                    )
                features, difference = self._calibration_batch(inputs, labels)
                largest_batch = max(largest_batch, features.shape[0])
                low = np.minimum(low, [features.min(), difference.min()])
                high = np.maximum(high, [features.max(), difference.max()])
        # The gradient is (p - onehot) / batch: scale by the full batch size, so a short
        # last batch does not widen the range.
        low[1] /= max(largest_batch, 1)
        high[1] /= max(largest_batch, 1)
        if not np.all(np.isfinite(low)) or not np.all(np.isfinite(high)):
            raise ValueError("Calibration saw no data or non-finite features/gradients.")
        self._feature_range.assign([low[0], high[0]])
        self._gradient_range.assign([low[1], high[1]])
        self._calibrated.assign(1)
        logger.info(
            "Calibrated: features in [%.4g, %.4g], logit gradient in [%.4g, %.4g].",
            low[0],
            high[0],
            low[1],
            high[1],
        )

    def _calibration_batch(self, inputs: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
        features, logits = self._features_and_logits(inputs, training=False)
        difference = self._logit_difference(tf.nn.softmax(logits), labels)
        return features.numpy(), difference.numpy()

    @property
    def feature_extractor(self) -> tf.keras.Model:
        """Model from the inputs to the head's input features (shares the layers)."""
        return tf.keras.Model(self.inputs, self.head.input)

    def head_model(self) -> "HybridQuantizedTrainStep":
        """A copy of the head alone, on feature inputs, with this model's state.

        The copy has the same bit widths, rounding and seed, the head's weights (CWR*
        state included) and the calibration state. Once the backbone is frozen, a stream
        can train this copy on precomputed features (the same arithmetic, without
        running the backbone every epoch) and ``load_head_state`` the result back.

        Returns:
            A new, uncompiled ``HybridQuantizedTrainStep``.
        """
        features = tf.keras.Input(tuple(self.head.input.shape[1:]), name="features")
        head = CWRStarHead.from_config(self.head.get_config())
        outputs = head(features)
        if not self._outputs_logits:
            outputs = tf.keras.layers.Softmax()(outputs)
        model = HybridQuantizedTrainStep(
            features,
            outputs,
            name=f"{self.name}_head",
            **{key: getattr(self, key) for key in _OWN_ARGUMENTS},
        )
        model.load_head_state(self)
        return model

    def load_head_state(self, other: "HybridQuantizedTrainStep") -> None:
        """Copy the head weights and the calibration state of ``other`` into this model."""
        self.head.set_weights(other.head.get_weights())
        for mine, theirs in zip(self._calibration_state(), other._calibration_state()):
            mine.assign(theirs)

    def _calibration_state(self) -> list[tf.Variable]:
        return [
            self._feature_range,
            self._gradient_range,
            self._difference_range,
            self._largest_batch,
            self._calibrated,
        ]

    # -- training -----------------------------------------------------------------------

    def fit(
        self, x: Any = None, y: Any = None, batch_size: int | None = None, **kwargs: Any
    ):
        """``tf.keras.Model.fit``; the first call also calibrates (``auto_calibrate``)."""
        history = super().fit(x, y, batch_size, **kwargs)
        if self.auto_calibrate and not self.is_calibrated:
            self.calibrate(x, y, batch_size=batch_size)
        return history

    def make_train_function(self, force: bool = False):
        hybrid = self.is_calibrated
        if hybrid != self._traced_hybrid:
            force = True  # the phase decides what train_step traces
        self._traced_hybrid = hybrid
        if hybrid:
            self._check_optimizer()
        return super().make_train_function(force=force)

    def train_step(self, data: Any) -> dict[str, Any]:
        x, y, sample_weight = tf.keras.utils.unpack_x_y_sample_weight(data)
        if not self._traced_hybrid:
            return self._float_step(x, y, sample_weight)
        features, _ = self._features_and_logits(x, training=False)
        logits, probabilities = self._hybrid_update(features, y)
        y_pred = logits if self._outputs_logits else probabilities
        self.compute_loss(x, y, y_pred, sample_weight)
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _float_step(self, x: Any, y: Any, sample_weight: Any) -> dict[str, Any]:
        """Keras' own float train step, also tracking the logit-gradient range."""
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self.compute_loss(x, y, y_pred, sample_weight)
        self._validate_target_and_loss(y, loss)
        self.optimizer.minimize(loss, self.trainable_variables, tape=tape)
        probabilities = tf.nn.softmax(y_pred) if self._outputs_logits else y_pred
        difference = self._logit_difference(probabilities, y)
        current = self._difference_range
        current.assign(
            [
                tf.minimum(current[0], tf.reduce_min(difference)),
                tf.maximum(current[1], tf.reduce_max(difference)),
            ]
        )
        self._largest_batch.assign(tf.maximum(self._largest_batch, tf.shape(difference)[0]))
        return self.compute_metrics(x, y, y_pred, sample_weight)

    def _hybrid_update(
        self, features: tf.Tensor, labels: tf.Tensor
    ) -> tuple[tf.Tensor, tf.Tensor]:
        """One METHOD §4 step on the head kernel; returns (logits, softmax)."""
        kernel = self.head.kernel
        features = tf.cast(features, kernel.dtype)
        x_q = self._forward_quantize(
            features, self._feature_range[0], self._feature_range[1]
        )
        low, high = tf.reduce_min(kernel), tf.reduce_max(kernel)
        margin = WEIGHT_RANGE_MARGIN * (high - low)
        w_q = self._forward_quantize(kernel, low - margin, high + margin)
        logits = tf.matmul(x_q, w_q)
        probabilities = tf.nn.softmax(logits)
        p_q = self._forward_quantize(probabilities, 0.0, 1.0)
        gradient = self._logit_gradient(p_q, labels)
        g_q = self._forward_quantize(
            gradient, self._gradient_range[0], self._gradient_range[1]
        )
        updated = kernel - self._learning_rate() * tf.matmul(x_q, g_q, transpose_a=True)
        kernel.assign(self._store(updated))
        self.optimizer.iterations.assign_add(1)
        return logits, probabilities

    def _logit_gradient(self, probabilities: tf.Tensor, labels: Any) -> tf.Tensor:
        """``(p - onehot(y)) / batch``: d(mean softmax cross-entropy)/d(logits)."""
        batch = tf.cast(tf.shape(probabilities)[0], probabilities.dtype)
        return self._logit_difference(probabilities, labels) / batch

    def _logit_difference(self, probabilities: tf.Tensor, labels: Any) -> tf.Tensor:
        """``p - onehot(y)`` for int (or one-hot) labels."""
        num_classes = self.head.num_classes
        labels = tf.convert_to_tensor(labels)
        if labels.shape.rank == 2 and labels.shape[-1] == num_classes and num_classes > 1:
            onehot = tf.cast(labels, probabilities.dtype)
        else:
            labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
            onehot = tf.one_hot(labels, num_classes, dtype=probabilities.dtype)
        return probabilities - onehot

    def _forward_quantize(self, tensor: tf.Tensor, low: Any, high: Any) -> tf.Tensor:
        if self.forward_bits is None:
            return tensor
        return snap_to_grid(
            tensor, self.forward_bits, low, high, zero_exact=self.zero_exact
        )

    def _store(self, weights: tf.Tensor) -> tf.Tensor:
        if self.update_bits is None:
            return weights
        return snap_to_grid(
            weights,
            self.update_bits,
            tf.reduce_min(weights),
            tf.reduce_max(weights),
            rounding=self.rounding,
            generator=self._noise,
            zero_exact=self.zero_exact and self.rounding == "nearest",
        )

    def _learning_rate(self) -> tf.Tensor:
        rate = self.optimizer.learning_rate
        if isinstance(rate, tf.keras.optimizers.schedules.LearningRateSchedule):
            rate = rate(self.optimizer.iterations)
        return tf.cast(rate, self.head.kernel.dtype)

    def _check_optimizer(self) -> None:
        if self._warned_optimizer or self.optimizer is None:
            return
        momentum = getattr(self.optimizer, "momentum", 0.0)
        if not isinstance(self.optimizer, tf.keras.optimizers.SGD) or float(momentum):
            warnings.warn(
                "HybridQuantizedTrainStep updates the head with plain SGD at the "
                f"optimizer's learning rate; {type(self.optimizer).__name__} "
                f"(momentum={momentum}) only supplies the learning rate.",
                stacklevel=3,
            )
        self._warned_optimizer = True

    # -- serialization ---------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        functional = tf.keras.Model(self.inputs, self.outputs, name=self.name)
        return {
            **functional.get_config(),
            **{key: getattr(self, key) for key in _OWN_ARGUMENTS},
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: dict | None = None):
        config = dict(config)
        own = {key: config.pop(key) for key in _OWN_ARGUMENTS if key in config}
        functional = tf.keras.Model.from_config(config, custom_objects=custom_objects)
        return cls(functional.inputs, functional.outputs, name=functional.name, **own)
