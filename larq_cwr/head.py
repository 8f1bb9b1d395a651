"""The CWR* classification head (METHOD §2).

The CWR* life cycle is written once, as TensorFlow ops over the state tensors:
``reset_kernel`` (step 1) and ``consolidate_kernel`` (step 3). ``CWRStarHead`` runs them
on its variables, and the exported device head (``larq_cwr.export``) traces the same
functions into TFLite signatures.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from larq_cwr._checks import check_choice, check_class_counts, check_positive_int

__all__ = [
    "CONSOLIDATIONS",
    "CWRStarHead",
    "class_counts_array",
    "consolidate_kernel",
    "reset_kernel",
]

# How a seen class's trained column merges with its consolidated one (METHOD §2 step 3):
# "weighted" is CWR*'s sqrt(past / cur) average; "latest" keeps the trained column, for
# runs whose layers below the head train too, where the consolidated column belongs to
# features that have since changed (replay keeps every seen class in training).
CONSOLIDATIONS = ("weighted", "latest")


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def reset_kernel(
    consolidated: tf.Tensor, *, past_counts: tf.Tensor, class_counts: tf.Tensor
) -> tf.Tensor:
    """The live kernel at the start of an experience (METHOD §2 step 1).

    Every column is 0, except those of classes present in the experience and seen
    before, which get their consolidated weights back.

    Args:
        consolidated: Consolidated kernel, shape ``(features, num_classes)``.
        past_counts: Patterns per class of all consolidated experiences ``(num_classes,)``.
        class_counts: Patterns per class of the new experience ``(num_classes,)``.

    Returns:
        The reset kernel, shaped and typed like ``consolidated``.
    """
    restore = tf.logical_and(class_counts > 0, past_counts > 0)
    return tf.where(restore[tf.newaxis, :], consolidated, tf.zeros_like(consolidated))


@tf.autograph.experimental.do_not_convert  # plain ops: nothing to convert
def consolidate_kernel(
    kernel: tf.Tensor,
    consolidated: tf.Tensor,
    *,
    past_counts: tf.Tensor,
    class_counts: tf.Tensor,
    consolidation: str = "weighted",
) -> tuple[tf.Tensor, tf.Tensor]:
    """Merge a trained kernel into the consolidated one (METHOD §2 step 3).

    With ``avg`` the mean of all entries of the present classes' columns of ``kernel``
    and ``w = sqrt(past / cur)`` per present class, the new consolidated column is
    ``(cw * w + (tw - avg)) / (w + 1)``: for a new class ``w = 0``, which gives
    ``tw - avg``. Absent classes keep their column. ``consolidation="latest"`` sets
    ``w = 0`` for every present class: it takes ``tw - avg``, seen before or not.

    Args:
        kernel: Trained live kernel ``tw``, shape ``(features, num_classes)``.
        consolidated: Consolidated kernel ``cw``, same shape.
        past_counts: Patterns per class of the earlier experiences ``(num_classes,)``.
        class_counts: Patterns per class of this experience ``(num_classes,)``, at least
            one positive.
        consolidation: ``"weighted"`` (CWR*, METHOD §2) or ``"latest"`` (see above).

    Returns:
        ``(new consolidated kernel, past_counts + class_counts)``.

    Raises:
        ValueError: ``consolidation`` not one of ``CONSOLIDATIONS``.
    """
    check_choice(consolidation, CONSOLIDATIONS, "consolidation")
    dtype = kernel.dtype
    current = tf.cast(class_counts, dtype)
    past = tf.cast(past_counts, dtype)
    present = current > 0
    mask = tf.cast(present, dtype)[tf.newaxis, :]
    entries = tf.cast(tf.shape(kernel)[0], dtype) * tf.reduce_sum(mask)
    average = tf.reduce_sum(kernel * mask) / entries
    if consolidation == "latest":
        past = tf.zeros_like(past)  # w = 0: the trained column alone
    weight = tf.sqrt(past / tf.maximum(current, 1.0))[tf.newaxis, :]
    merged = (consolidated * weight + (kernel - average)) / (weight + 1.0)
    return (
        tf.where(present[tf.newaxis, :], merged, consolidated),
        past_counts + tf.cast(class_counts, past_counts.dtype),
    )


def class_counts_array(class_counts: Any, num_classes: int) -> np.ndarray:
    """Validate ``class_counts`` and return it as an int64 array of length ``num_classes``.

    Args:
        class_counts: A dict ``{class index: count}`` or a length-``num_classes``
            sequence of counts (integers, or integral floats).
        num_classes: Number of classes of the head.

    Returns:
        Int64 array of shape ``(num_classes,)``.

    Raises:
        ValueError: A class index outside ``[0, num_classes)``, a negative or
            non-integer count, a wrong length, or no pattern at all.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    return check_class_counts(class_counts, "class_counts", num_classes=num_classes)


@tf.keras.utils.register_keras_serializable(package="larq_cwr")
class CWRStarHead(tf.keras.layers.Layer):
    """Bias-free linear head keeping CWR* consolidated weights (METHOD §2).

    ``outputs = inputs @ kernel``: one kernel column per class, no bias. Besides the
    live (trainable) ``kernel`` the layer keeps the CWR* state as non-trainable
    weights, so ``model.save``, ``save_weights`` and ``tf.train.Checkpoint`` carry it:

    - ``consolidated_kernel``: consolidated weights per class (zero for unseen classes);
    - ``past_counts``: training patterns per class in all consolidated experiences;
    - ``current_counts``: class counts of the experience begun and not yet consolidated;
    - ``consolidated_experiences``: how many experiences were consolidated. Until the
      first one is, the model is in its first experience (``is_first_experience``): the
      one place where larq_cwr decides it (``CWRStar`` freezes the backbone after it,
      ``HybridQuantizedTrainStep`` switches to the hybrid update after it).

    A continual-learning experience is ``begin_experience(counts)``, training, then
    ``consolidate()`` and ``load_consolidated()`` (the ``CWRStar`` callback does all
    three around ``model.fit``).

    Args:
        num_classes: Positive int, output units; one kernel column per class.
        kernel_initializer: Initializer of the live kernel before the first
            experience (which resets it to zero anyway).
        **kwargs: Standard Keras layer arguments (``name``, ``dtype``, ...).

    Input shape:
        2-D tensor ``(batch_size, features)``.

    Output shape:
        2-D tensor ``(batch_size, num_classes)``: the logits.

    Raises:
        ValueError: ``num_classes`` not a positive int; input not 2-D (at build time).

    Example:
        >>> import larq_cwr, tensorflow as tf
        >>> head = CWRStarHead(3)
        >>> head.build((None, 2))
        >>> head.begin_experience({0: 10, 1: 30})
        >>> _ = head.kernel.assign([[1.0, -1.0, 0.0], [3.0, 5.0, 0.0]])
        >>> head.consolidate()
        >>> head.consolidated_kernel[:, :2].tolist()
        [[-1.0, -3.0], [1.0, 3.0]]

    References:
        Lomonaco, Maltoni, Pellegrini, "Rehearsal-Free Continual Learning over Small
        Non-I.I.D. Batches", CVPR-W 2020 (arXiv 1907.03799).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        kernel_initializer: Any = "zeros",
        **kwargs: Any,
    ) -> None:
        num_classes = check_positive_int(num_classes, "num_classes")
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.kernel_initializer = tf.keras.initializers.get(kernel_initializer)

    def build(self, input_shape: Any) -> None:
        input_shape = tf.TensorShape(input_shape)
        if input_shape.rank != 2:
            raise ValueError(
                "`inputs` of CWRStarHead are not 2-D; expected features (batch_size, "
                "features), pooled or flattened first (e.g. GlobalAveragePooling2D), got "
                f"shape {input_shape}."
            )
        features = input_shape[-1]
        if features is None:
            raise ValueError(
                "`inputs` of CWRStarHead have no known number of features; expected a "
                f"known last dimension, got shape {input_shape}."
            )
        shape = (int(features), self.num_classes)
        self.kernel = self.add_weight(
            name="kernel", shape=shape, initializer=self.kernel_initializer, trainable=True
        )
        self._consolidated = self.add_weight(
            name="consolidated_kernel", shape=shape, initializer="zeros", trainable=False
        )
        self._past_counts = self.add_weight(
            name="past_counts",
            shape=(self.num_classes,),
            initializer="zeros",
            dtype=tf.int64,
            trainable=False,
        )
        self._current_counts = self.add_weight(
            name="current_counts",
            shape=(self.num_classes,),
            initializer="zeros",
            dtype=tf.int64,
            trainable=False,
        )
        self._experience_count = self.add_weight(
            name="consolidated_experiences",
            shape=(),
            initializer="zeros",
            dtype=tf.int64,
            trainable=False,
        )
        self.input_spec = tf.keras.layers.InputSpec(ndim=2, axes={-1: int(features)})
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return tf.matmul(inputs, tf.cast(self.kernel, inputs.dtype))

    def compute_output_shape(self, input_shape: Any) -> tf.TensorShape:
        return tf.TensorShape(input_shape)[:-1].concatenate([self.num_classes])

    # -- CWR* state ---------------------------------------------------------------

    def _require_built(self, method: str) -> None:
        if not self.built:
            raise RuntimeError(
                f"Build the layer (call it on data or add it to a model) before "
                f"`{method}()`."
            )

    @property
    def consolidated_kernel(self) -> np.ndarray:
        """Copy of the consolidated weights, shape ``(features, num_classes)``."""
        self._require_built("consolidated_kernel")
        return self._consolidated.numpy().copy()

    @property
    def past_counts(self) -> np.ndarray:
        """Copy of the per-class pattern counts of all consolidated experiences."""
        self._require_built("past_counts")
        return self._past_counts.numpy().copy()

    @property
    def current_counts(self) -> np.ndarray:
        """Copy of the class counts of the experience in progress (zeros if none)."""
        self._require_built("current_counts")
        return self._current_counts.numpy().copy()

    @property
    def seen_classes(self) -> list[int]:
        """Sorted classes with at least one consolidated pattern."""
        return [int(c) for c in np.flatnonzero(self.past_counts > 0)]

    @property
    def consolidated_experiences(self) -> int:
        """Number of experiences consolidated so far."""
        self._require_built("consolidated_experiences")
        return int(self._experience_count.numpy())

    @property
    def is_first_experience(self) -> bool:
        """True until the first experience is consolidated (METHOD §2: experience 0
        trains the whole network; later ones train the head)."""
        return self.consolidated_experiences == 0

    @property
    def in_experience(self) -> bool:
        """True between ``begin_experience`` and ``consolidate``."""
        return bool(self.current_counts.sum() > 0)

    def begin_experience(self, class_counts: Mapping[int, int] | npt.ArrayLike) -> None:
        """Reset the live kernel for a new experience (METHOD §2 step 1).

        Every column becomes 0, then each class present in the experience and seen
        before gets its consolidated weights back. New classes start at 0.

        Args:
            class_counts: ``{class index: count}`` or a length-``num_classes`` array of
                the experience's training patterns per class (replayed ones included).

        Raises:
            ValueError: Invalid ``class_counts`` (see ``class_counts_array``); the
                state is left unchanged.
            RuntimeError: The layer is not built yet.
        """
        self._require_built("begin_experience")
        counts = class_counts_array(class_counts, self.num_classes)
        self.kernel.assign(
            reset_kernel(
                self._consolidated, past_counts=self._past_counts, class_counts=counts
            )
        )
        self._current_counts.assign(counts)

    def consolidate(self, *, consolidation: str = "weighted") -> None:
        """Merge the trained kernel into the consolidated weights (METHOD §2 step 3).

        With ``avg`` the mean of the live kernel over the present classes' columns:
        a new class gets ``tw[j] - avg``; a class seen before, with
        ``w = sqrt(past[j] / cur[j])``, gets ``(cw[j] * w + tw[j] - avg) / (w + 1)``.
        Then ``past += cur`` and the experience ends.

        Args:
            consolidation: ``"weighted"`` (the CWR* rule above) or ``"latest"``: a
                class seen before gets ``tw[j] - avg`` too, as a new class does. For
                runs that train layers below the head as well (with replay of every
                seen class): their consolidated columns fit features that changed.

        Raises:
            ValueError: ``consolidation`` not one of ``CONSOLIDATIONS``; the state is
                left unchanged.
            RuntimeError: No experience in progress: call ``begin_experience()`` first.
        """
        check_choice(consolidation, CONSOLIDATIONS, "consolidation")
        self._require_built("consolidate")
        if not self.in_experience:
            raise RuntimeError(
                "No experience in progress: call `begin_experience()` before "
                "`consolidate()`."
            )
        consolidated, past = consolidate_kernel(
            self.kernel,
            self._consolidated,
            past_counts=self._past_counts,
            class_counts=self._current_counts,
            consolidation=consolidation,
        )
        self._consolidated.assign(consolidated)
        self._past_counts.assign(past)
        self._current_counts.assign(tf.zeros_like(self._current_counts))
        self._experience_count.assign_add(1)

    def load_consolidated(self) -> None:
        """Write the consolidated weights into the live kernel (METHOD §2 step 4)."""
        self._require_built("load_consolidated")
        self.kernel.assign(self._consolidated)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "kernel_initializer": tf.keras.initializers.serialize(self.kernel_initializer),
        }
