"""Pretraining of a backbone on base classes before it is frozen for CWR* (METHOD §6).

The backbone is trained end to end through a temporary softmax head on the chosen classes,
with a validation split carved from the given training data (never the test data). The
head is thrown away; only the backbone's weights are kept (`save_backbone`).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import warnings
from typing import Any, Sequence

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from larq_cwr._checks import (
    check_classes,
    check_fraction,
    check_images,
    check_labels,
    check_nonempty,
    check_positive_int,
    check_positive_number,
    check_same_length,
    check_seed,
)
from larq_cwr.backbones import build_backbone, save_backbone

__all__ = ["pretrain", "pretrain_backbone", "save_backbone"]

logger = logging.getLogger(__name__)


def pretrain_backbone(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    backbone: tf.keras.Model,
    classes: Sequence[int] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    validation_fraction: float = 0.1,
    seed: int = 0,
    strategy: tf.distribute.Strategy | None = None,
    verbose: int = 0,
) -> dict[str, Any]:
    """Trains ``backbone`` in place through a temporary softmax head on ``classes``.

    Keeps the samples of ``classes`` and relabels class ``classes[i]`` as ``i``; holds out
    ``validation_fraction`` of each class (seeded, stratified) for validation; trains the
    backbone and a `Dense` softmax head with Adam on the sparse categorical cross-entropy;
    finally evaluates train and validation accuracy in inference mode (BatchNorm moving
    statistics). Seeds Python, NumPy and TensorFlow with `tf.keras.utils.set_random_seed`.

    With a ``strategy`` (e.g. `tf.distribute.MirroredStrategy`), the head and optimizer are
    built inside ``strategy.scope()`` and Keras splits each global batch over the replicas;
    the backbone must have been built in the same scope (`pretrain` does that).

    Args:
        x: Training images, float array ``(samples, *backbone.input_shape[1:])`` in [0, 1].
        y: Integer labels, shape ``(samples,)``, non-negative.
        backbone: Functional feature extractor, e.g. from `build_backbone`; trainable.
        classes: Labels to train on, in head order; default: the sorted labels in ``y``.
        epochs: Positive number of passes over the training split.
        batch_size: Positive global batch size (split over replicas under a strategy).
        learning_rate: Positive Adam learning rate.
        validation_fraction: Fraction in [0, 1) of each class held out; 0 disables
            validation.
        seed: Int in ``[0, 2**32)``, seed of the split, shuffling and initialization.
        strategy: Optional `tf.distribute.Strategy`; None trains on the default device.
        verbose: Keras ``fit`` verbosity.

    Returns:
        A dict: ``"classes"`` (list of labels in head order), ``"num_train"``,
        ``"num_validation"``, ``"train_accuracy"`` and ``"val_accuracy"`` (inference-mode
        accuracy after training; ``val_accuracy`` None without validation),
        ``"num_replicas"`` and ``"history"`` (Keras' per-epoch ``loss``, ``accuracy``,
        ``val_loss``, ``val_accuracy``).

    Raises:
        ValueError: ``x`` not a non-empty 4-D float array of finite values matching the
            backbone's input, ``y`` not non-negative integer labels (integral floats
            accepted) of the same length, a class absent from ``y``, fewer than two
            classes, a non-positive ``epochs``/``batch_size``/``learning_rate``, a
            ``validation_fraction`` outside [0, 1), a negative ``seed``, a backbone
            without trainable weights or built outside ``strategy.scope()``. The
            backbone is unchanged then.

    Example:
        >>> import numpy as np
        >>> import larq_cwr.backbones as backbones
        >>> x = np.random.default_rng(0).random((64, 16, 16, 1), dtype=np.float32)
        >>> y = np.arange(64) % 2
        >>> model = backbones.build_backbone("bnn32", input_shape=(16, 16, 1))
        >>> metrics = pretrain_backbone(x, y, backbone=model, epochs=1)
        >>> sorted(metrics["history"])
        ['accuracy', 'loss', 'val_accuracy', 'val_loss']
    """
    x, y, classes = _check_data(x, y, classes, tuple(backbone.input_shape[1:]))
    _check_training_args(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        validation_fraction=validation_fraction,
        seed=seed,
    )
    _check_backbone(backbone, strategy)

    tf.keras.utils.set_random_seed(seed)
    keep = np.isin(y, classes)
    x, y = x[keep], _relabel(y[keep], classes)
    train_index, val_index = _stratified_split(y, validation_fraction, seed)
    logger.info(
        "Pretraining %s on classes %s: %d train, %d validation samples.",
        backbone.name,
        list(classes),
        len(train_index),
        len(val_index),
    )

    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        model = _with_softmax_head(backbone, len(classes))
        model.compile(
            optimizer=tf.keras.optimizers.Adam(learning_rate),
            loss=tf.keras.losses.SparseCategoricalCrossentropy(),
            metrics=["accuracy"],
        )
    train = _dataset(x[train_index], y[train_index], batch_size, shuffle_seed=seed)
    val = _dataset(x[val_index], y[val_index], batch_size) if len(val_index) else None
    history = model.fit(train, validation_data=val, epochs=epochs, verbose=verbose)

    train_eval = _dataset(x[train_index], y[train_index], batch_size)
    _, train_accuracy = model.evaluate(train_eval, verbose=0)
    val_accuracy = float(model.evaluate(val, verbose=0)[1]) if val is not None else None
    return {
        "classes": [int(c) for c in classes],
        "num_train": int(len(train_index)),
        "num_validation": int(len(val_index)),
        "train_accuracy": float(train_accuracy),
        "val_accuracy": val_accuracy,
        "num_replicas": strategy.num_replicas_in_sync if strategy is not None else 1,
        "history": {k: [float(v) for v in vs] for k, vs in history.history.items()},
    }


def pretrain(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    name: str,
    input_shape: Sequence[int] | None = None,
    strategy: tf.distribute.Strategy | None = None,
    out_path: str | os.PathLike | None = None,
    **kwargs: Any,
) -> tuple[tf.keras.Model, dict[str, Any]]:
    """Builds backbone ``name`` (inside ``strategy.scope()``), pretrains it, saves it.

    Args:
        x: Training images, see `pretrain_backbone`.
        y: Integer labels, see `pretrain_backbone`.
        name: One of `BACKBONE_NAMES`.
        input_shape: ``(height, width, channels)``; default ``x.shape[1:]``.
        strategy: Optional `tf.distribute.Strategy` to build and train under.
        out_path: Where `save_backbone` writes the trained weights, if given; reload them
            with ``build_backbone(name, input_shape=..., weights=out_path)``.
        **kwargs: Other keyword arguments of `pretrain_backbone` (``classes``, ``epochs``,
            ``batch_size``, ``learning_rate``, ``validation_fraction``, ``seed``,
            ``verbose``).

    Returns:
        ``(backbone, metrics)``: the trained backbone and `pretrain_backbone`'s dict, with
        ``"weights_path"`` (str or None) added.

    Raises:
        ValueError: As `build_backbone` and `pretrain_backbone`; the data and arguments
            are checked before anything is built, seeded or written.
        TypeError: A keyword argument `pretrain_backbone` does not take.
    """
    if input_shape is None:
        input_shape = np.shape(x)[1:]
    arguments = inspect.signature(pretrain_backbone).bind(x, y, backbone=None, **kwargs)
    arguments.apply_defaults()
    options = arguments.arguments
    _check_data(x, y, options["classes"], tuple(input_shape))
    _check_training_args(
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        learning_rate=options["learning_rate"],
        validation_fraction=options["validation_fraction"],
        seed=options["seed"],
    )
    tf.keras.utils.set_random_seed(options["seed"])  # seeds the initialization too
    scope = strategy.scope() if strategy is not None else contextlib.nullcontext()
    with scope:
        backbone = build_backbone(name, input_shape=tuple(input_shape))
    metrics = pretrain_backbone(x, y, backbone=backbone, strategy=strategy, **kwargs)
    metrics["weights_path"] = None
    if out_path is not None:
        metrics["weights_path"] = str(save_backbone(backbone, out_path))
    return backbone, metrics


def _check_data(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    classes: Sequence[int] | None,
    input_shape: tuple[int | None, ...],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, classes)`` checked: float32 images, int64 labels, int64 classes."""
    x = check_images(x, "x", shape=input_shape)
    check_nonempty(x, "x")
    if x.max() > 1.0:
        warnings.warn(
            f"`x` has values up to {x.max()}; backbones expect images scaled to [0, 1].",
            stacklevel=3,
        )
    y = check_labels(y, "y")
    check_same_length({"x": x, "y": y})
    present = np.unique(y)
    classes = np.asarray(
        check_classes(present if classes is None else classes, "classes", distinct=True),
        dtype=np.int64,
    )
    if len(classes) < 2:
        raise ValueError(
            "`classes` has too few classes; expected at least two distinct labels, got "
            f"{classes.tolist()}."
        )
    missing = np.setdiff1d(classes, present)
    if len(missing):
        raise ValueError(
            f"`classes` names labels absent from `y`; expected labels present in `y` "
            f"({present.tolist()}), got {missing.tolist()}."
        )
    return x, y, classes


def _check_training_args(
    *,
    epochs: Any,
    batch_size: Any,
    learning_rate: Any,
    validation_fraction: Any,
    seed: Any,
) -> None:
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    check_positive_number(learning_rate, "learning_rate")
    check_fraction(validation_fraction, "validation_fraction", allow_zero=True)
    check_seed(seed)


def _check_backbone(
    backbone: tf.keras.Model, strategy: tf.distribute.Strategy | None
) -> None:
    if not backbone.trainable_weights:
        raise ValueError(
            f"`backbone` {backbone.name!r} has no trainable weights; expected a trainable "
            "backbone (set `backbone.trainable = True`), got none."
        )
    if strategy is None:
        return
    if not all(strategy.extended.variable_created_in_scope(v) for v in backbone.weights):
        raise ValueError(
            f"`backbone` {backbone.name!r} was built outside `strategy.scope()`; expected "
            "one built under the strategy's scope (`pretrain(x, y, name=...)` does "
            "that), got variables created outside it."
        )


def _relabel(y: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Int32 position of each label of ``y`` in ``classes`` (``classes[i]`` becomes i)."""
    order = np.argsort(classes)
    return order[np.searchsorted(classes, y, sorter=order)].astype(np.int32)


def _stratified_split(
    y: np.ndarray, validation_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split holding out ``round(validation_fraction * n_c)`` of each class c."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == label))
        n_val = int(round(validation_fraction * len(index)))
        if validation_fraction > 0 and len(index) > 1:
            n_val = max(n_val, 1)  # every class in validation when it can spare a sample
        val.append(index[:n_val])
        train.append(index[n_val:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def _with_softmax_head(backbone: tf.keras.Model, num_classes: int) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=backbone.input_shape[1:])
    outputs = tf.keras.layers.Dense(
        num_classes, activation="softmax", name="pretrain_head"
    )(backbone(inputs))
    return tf.keras.Model(inputs, outputs, name=f"{backbone.name}_pretraining")


def _dataset(
    x: np.ndarray, y: np.ndarray, batch_size: int, *, shuffle_seed: int | None = None
) -> tf.data.Dataset:
    """Global batches of ``(x, y)``; shuffled each epoch when ``shuffle_seed`` is given."""
    dataset = tf.data.Dataset.from_tensor_slices((x, y))
    if shuffle_seed is not None:
        dataset = dataset.shuffle(len(x), seed=shuffle_seed, reshuffle_each_iteration=True)
    options = tf.data.Options()
    # In-memory data has no files to shard: shard by element if several workers read it.
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE).with_options(options)
