"""Keras callback running one CWR* experience per ``model.fit`` call (METHOD §2)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from larq_cwr._checks import check_choice, check_inputs, check_labels, check_positive_int
from larq_cwr.head import CONSOLIDATIONS, CWRStarHead, class_counts_array

__all__ = ["CWRStar", "count_classes", "freeze_all_but"]

logger = logging.getLogger(__name__)


def count_classes(labels: npt.ArrayLike, num_classes: int) -> np.ndarray:
    """Count patterns per class in integer (or one-hot) labels.

    Args:
        labels: Int labels (integral floats too) of shape ``(n,)`` / ``(n, 1)``,
            one-hot ``(n, num_classes)``, or one label (a scalar: a dataset element).
        num_classes: Number of classes.

    Returns:
        Int64 array of shape ``(num_classes,)``.

    Raises:
        ValueError: Labels that are not integers, NaN/Inf, of another shape, or outside
            ``[0, num_classes)``.
    """
    num_classes = check_positive_int(num_classes, "num_classes")
    values = np.asarray(labels)
    if values.ndim == 0:
        values = values.reshape(1)
    if values.ndim == 2 and values.shape[1] == num_classes and num_classes > 1:
        values = check_inputs(values, "labels").argmax(axis=1)  # one-hot: finite rows
    values = check_labels(values, "labels", num_classes=num_classes)
    return np.bincount(values, minlength=num_classes).astype(np.int64)


class CWRStar(tf.keras.callbacks.Callback):
    """Turn one ``model.fit`` call into one CWR* experience (METHOD §2).

    ``on_train_begin`` resets the head for the experience (``begin_experience``) and,
    after the first experience (``CWRStarHead.is_first_experience``), freezes every
    layer but the head (and the layers named in ``trainable_layers``), rebuilding the
    train function so no recompiling is needed. ``on_train_end`` consolidates and loads
    the consolidated weights, so ``evaluate``/``predict`` use them. The first experience
    trains the whole model as compiled. One instance per experience: each ``fit`` call
    with it is one experience.

    Frozen layers keep ``trainable=False`` after ``fit``; BatchNormalization layers
    then run in inference mode, as a frozen backbone should.

    Args:
        head: The model's ``CWRStarHead``.
        class_counts: ``{class: count}`` or an array of counts for this experience.
        labels: Training labels of this experience, to count classes from (give
            either this or ``class_counts``).
        trainable_layers: Names of layers (besides the head) that keep training after
            the first experience, e.g. the last blocks for AR1*-style training (with
            ``HybridQuantizedTrainStep``: layers above its ``latent_layer``, trained
            with quantized back-propagation). With a replay memory in the model, the
            class counts include its patterns (METHOD §2).
        freeze_after_first: Freeze the non-head layers from the second experience on.
        consolidation: How ``on_train_end`` merges a seen class's trained column:
            ``"weighted"`` (CWR*'s ``sqrt(past / cur)`` average, METHOD §2) or
            ``"latest"`` (the trained column, mean-shifted, as for a new class). With
            ``trainable_layers`` and a replay memory, the consolidated columns fit
            features those layers have since changed, and every seen class trains in
            every experience: ``"latest"`` keeps what was trained on the current ones
            (see ``CWRStarHead.consolidate``).

    Raises:
        ValueError: Both or neither of ``class_counts`` and ``labels``, invalid counts or
            ``consolidation``;
            at ``fit``, before any state changes: ``trainable_layers`` naming no layer of
            the model or, in the hybrid phase of ``HybridQuantizedTrainStep``, a layer
            below its ``latent_layer``.

    Example:
        `model.fit(x, y, epochs=5, callbacks=[CWRStar(head, labels=y)])`
    """

    def __init__(
        self,
        head: CWRStarHead,
        *,
        class_counts: Mapping[int, int] | npt.ArrayLike | None = None,
        labels: npt.ArrayLike | None = None,
        trainable_layers: Sequence[str] = (),
        freeze_after_first: bool = True,
        consolidation: str = "weighted",
    ) -> None:
        super().__init__()
        if not isinstance(head, CWRStarHead):
            raise ValueError(f"`head` must be a CWRStarHead; got {type(head).__name__}.")
        if (class_counts is None) == (labels is None):
            raise ValueError("Give exactly one of `class_counts` and `labels`.")
        if class_counts is None:
            class_counts = count_classes(labels, head.num_classes)
        self.head = head
        self.class_counts = class_counts_array(class_counts, head.num_classes)
        if isinstance(trainable_layers, str) or not all(
            isinstance(name, str) for name in trainable_layers
        ):
            raise ValueError(
                "`trainable_layers` is not a sequence of layer names; expected e.g. "
                f"['block_3'], got {trainable_layers!r}."
            )
        self.trainable_layers = tuple(trainable_layers)
        self.freeze_after_first = bool(freeze_after_first)
        self.consolidation = check_choice(consolidation, CONSOLIDATIONS, "consolidation")

    @classmethod
    def for_dataset(
        cls, head: CWRStarHead, dataset: tf.data.Dataset | Iterable[Any], **kwargs: Any
    ) -> "CWRStar":
        """Build the callback with class counts read from a ``(x, y[, w])`` dataset.

        Args:
            head: The model's ``CWRStarHead``.
            dataset: A finite ``tf.data.Dataset`` (or iterable) of ``(x, y)`` batches
                or elements; it is iterated once.
            **kwargs: Other ``CWRStar`` arguments.

        Returns:
            A ``CWRStar`` callback.
        """
        counts = np.zeros(head.num_classes, dtype=np.int64)
        for element in dataset:
            if not isinstance(element, (tuple, list)) or len(element) < 2:
                raise ValueError(
                    "`dataset` must yield (x, y) or (x, y, sample_weight) tuples."
                )
            counts += count_classes(np.asarray(element[1]), head.num_classes)
        return cls(head, class_counts=counts, **kwargs)

    # -- hooks -----------------------------------------------------------------------

    def on_train_begin(self, logs: dict | None = None) -> None:
        first = self.head.is_first_experience
        self._check_trainable_layers()  # before the state changes
        if self.head.in_experience:
            warnings.warn(
                "CWRStar: the previous experience was not consolidated (did its `fit` "
                "stop with an error?); its training is discarded and a new experience "
                "begins.",
                stacklevel=2,
            )
        counts = self.class_counts
        replay = getattr(self.model, "replay", None)
        if replay is not None and len(replay):
            counts = counts + replay.class_counts()  # METHOD §2: replayed patterns count
        self.head.begin_experience(counts)
        if not first and self.freeze_after_first:
            self._freeze_all_but_head()
        logger.info(
            "CWR* experience begins: classes %s, %s trainable variables.",
            np.flatnonzero(counts).tolist(),
            len(self.model.trainable_variables),
        )

    def on_train_end(self, logs: dict | None = None) -> None:
        self.head.consolidate(consolidation=self.consolidation)
        self.head.load_consolidated()

    # -- helpers -----------------------------------------------------------------------

    def _check_trainable_layers(self) -> None:
        names = {layer.name for layer in _all_layers(self.model)}
        missing = sorted(set(self.trainable_layers) - names)
        if missing:
            raise ValueError(
                f"`trainable_layers` names {missing}, not layers of the model; its layers "
                f"are {sorted(names)}."
            )
        if getattr(self.model, "phase", None) != "hybrid":
            return
        if not self.freeze_after_first:
            raise ValueError(
                "The hybrid phase of HybridQuantizedTrainStep trains only the CWR* head "
                "and the layers above its `latent_layer`: `freeze_after_first=False` "
                "would train nothing else. Name the layers with `trainable_layers`."
            )
        blocks = getattr(self.model, "_blocks", None)
        outside = [
            name
            for name in self.trainable_layers
            if blocks is None or not blocks.contains(_find_layer(self.model, name))
        ]
        if outside:
            raise ValueError(
                f"`trainable_layers` names {outside}, which the hybrid phase of "
                "HybridQuantizedTrainStep cannot train: it trains the CWR* head and the "
                "layers above the model's `latent_layer`="
                f"{getattr(self.model, 'latent_layer', None)!r}. Build the model with a "
                "`latent_layer` below them, or train them with a plain `tf.keras.Model`."
            )

    def _freeze_all_but_head(self) -> None:
        freeze_all_but(self.model, [self.head, *self.trainable_layers])


def freeze_all_but(
    model: tf.keras.Model, keep: Sequence[tf.keras.layers.Layer | str]
) -> None:
    """Freeze every layer of ``model`` but those in ``keep`` (layers or names), inside
    ``fit``: call it from a callback's ``on_train_begin``.

    Keras applies the trainable state of ``compile`` time during ``fit``, and ``fit``
    built its train function before ``on_train_begin``; this sets the flags and rebuilds
    the train function, so the new set of trainable variables takes effect for this
    ``fit`` without recompiling. Frozen BatchNormalization layers run in inference mode.

    Args:
        model: The model being fitted.
        keep: Layers, or layer names, that stay trainable (nested layers included).
    """
    names = {item for item in keep if isinstance(item, str)}
    layers = [item for item in keep if not isinstance(item, str)]

    def kept(layer: tf.keras.layers.Layer) -> bool:
        return layer.name in names or any(layer is other for other in layers)

    for layer in model.layers:
        _set_trainable(layer, kept)
    model.train_function = model.make_train_function(force=True)


def _find_layer(model: tf.keras.Model, name: str) -> tf.keras.layers.Layer:
    return next(layer for layer in _all_layers(model) if layer.name == name)


def _all_layers(layer: tf.keras.layers.Layer) -> list[tf.keras.layers.Layer]:
    found = []
    for sub in getattr(layer, "layers", []):
        found.append(sub)
        found.extend(_all_layers(sub))
    return found


def _set_trainable(
    layer: tf.keras.layers.Layer, keep: Callable[[tf.keras.layers.Layer], bool]
) -> None:
    """Freeze ``layer``, except the sub-layers for which ``keep`` holds."""
    if keep(layer):
        layer.trainable = True
        return
    children = getattr(layer, "layers", None)
    if children and any(keep(sub) for sub in _all_layers(layer)):
        for sub in children:
            _set_trainable(sub, keep)
        return
    layer.trainable = False
