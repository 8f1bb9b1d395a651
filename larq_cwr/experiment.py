"""Run a continual-learning stream: CWR* variants beside naive and joint baselines.

The first experience trains the whole network (backbone and head) once; every variant
of a run starts from that same trained network (METHOD §4 "compare variants on the
same backbone"), then learns the remaining experiences with its own head update.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from larq_cwr._checks import check_choice, check_optional_bits
from larq_cwr.backbones import build_backbone
from larq_cwr.callbacks import CWRStar
from larq_cwr.head import CWRStarHead
from larq_cwr.metrics import AccuracyMatrix
from larq_cwr.quantizers import DEFAULT_GRID, GRIDS, ROUNDING_MODES
from larq_cwr.scenarios import Experience, Scenario
from larq_cwr.training import HybridQuantizedTrainStep

__all__ = [
    "ExperimentConfig",
    "TrainingConfig",
    "NAIVE",
    "Variant",
    "VariantResult",
    "FrozenFeatures",
    "build_model",
    "extract_features",
    "run_experiment",
    "run_stream",
    "train_first_experience",
    "train_joint",
]

logger = logging.getLogger(__name__)

STRATEGY_NAMES = ("cwr", "naive")
# METHOD §4 reference defaults: head SGD lr 0.0025, 5 epochs, minibatch 50; experience
# 0 trains the whole net in float for 10 epochs.
DEFAULT_HEAD_LEARNING_RATE = 0.0025
DEFAULT_EPOCHS = 5
DEFAULT_FIRST_EPOCHS = 10
DEFAULT_BATCH_SIZE = 50
DEFAULT_FIRST_LEARNING_RATE = 1e-3  # Adam, for training the binary net from scratch

CallbackFactory = Callable[[str, int, int], Sequence[tf.keras.callbacks.Callback]]


@dataclasses.dataclass(frozen=True)
class Variant:
    """One way of learning experiences 1, 2, ... after the shared first experience.

    Args:
        name: Label used in reports.
        strategy: ``"cwr"`` (CWR* consolidation) or ``"naive"`` (the head keeps
            fine-tuning, no reset or consolidation: the lower bound).
        forward_bits: Forward bits of the hybrid head update, None for float.
        update_bits: Stored-weight bits of the hybrid head update, None for float.
        rounding: ``"nearest"`` or ``"stochastic"`` rounding of the stored update.
        grid: Quantization grid, ``"zero_exact"`` (METHOD §3 default) or ``"paper"``.
    """

    name: str
    strategy: str = "cwr"
    forward_bits: int | None = None
    update_bits: int | None = None
    rounding: str = "nearest"
    grid: str = DEFAULT_GRID

    def __post_init__(self) -> None:
        check_choice(self.strategy, STRATEGY_NAMES, "strategy")
        check_optional_bits(self.forward_bits, "forward_bits")
        check_optional_bits(self.update_bits, "update_bits")
        check_choice(self.rounding, ROUNDING_MODES, "rounding")
        check_choice(self.grid, GRIDS, "grid")

    @classmethod
    def cwr(
        cls,
        forward_bits: int | None = None,
        update_bits: int | None = None,
        *,
        rounding: str = "nearest",
        grid: str = DEFAULT_GRID,
    ) -> "Variant":
        """A CWR* variant named after its precision, e.g. ``cwr_8_16`` or ``cwr_float``;
        a non-default rounding or grid is appended (``cwr_8_8_stochastic_paper``)."""
        if forward_bits is None and update_bits is None:
            name = "cwr_float"
        else:
            name = f"cwr_{forward_bits or 'f'}_{update_bits or 'f'}"
            if rounding != "nearest":
                name += f"_{rounding}"
            if grid != DEFAULT_GRID:
                name += f"_{grid}"
        return cls(name, "cwr", forward_bits, update_bits, rounding, grid)


NAIVE = Variant("naive", "naive")


@dataclasses.dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters of a stream run (defaults from METHOD §4).

    Args:
        backbone: Backbone name (see ``larq_cwr.backbones.BACKBONE_NAMES``).
        backbone_weights: Optional local weights file for the backbone.
        first_epochs: Epochs of the first experience (whole network).
        first_learning_rate: Adam learning rate of the first experience.
        epochs: Epochs of each later experience (head only).
        learning_rate: SGD learning rate of the head in later experiences.
        batch_size: Minibatch size.
        seed: Seed of initialization, shuffling and stochastic rounding.
    """

    backbone: str = "bnn32"
    backbone_weights: str | None = None
    first_epochs: int = DEFAULT_FIRST_EPOCHS
    first_learning_rate: float = DEFAULT_FIRST_LEARNING_RATE
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_HEAD_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("first_epochs", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
        for name in ("first_learning_rate", "learning_rate"):
            value = getattr(self, name)
            if not np.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a positive number; got {value!r}.")


@dataclasses.dataclass
class VariantResult:
    """Accuracy matrix, timings and the trained model of one variant."""

    variant: Variant
    accuracy: AccuracyMatrix
    fit_seconds: list[float]
    model: HybridQuantizedTrainStep

    def summary(self) -> dict[str, Any]:
        """JSON-ready metrics: accuracy per experience, average, final, forgetting."""
        n = self.accuracy.n_experiences
        return {
            "variant": dataclasses.asdict(self.variant),
            "accuracy_seen": [self.accuracy.accuracy_seen(i) for i in range(n)],
            "accuracy_all": [self.accuracy.accuracy_all(i) for i in range(n)],
            "average_accuracy": self.accuracy.average_accuracy(),
            "final_accuracy": self.accuracy.final_accuracy(),
            "forgetting": self.accuracy.forgetting(),
            "fit_seconds": self.fit_seconds,
            "accuracy_matrix": self.accuracy.to_dict(),
        }


def build_model(
    input_shape: Sequence[int],
    num_classes: int,
    config: TrainingConfig,
    variant: Variant | None = None,
) -> HybridQuantizedTrainStep:
    """Backbone + ``CWRStarHead`` as a ``HybridQuantizedTrainStep`` for ``variant``.

    Every call builds the same architecture (same weight order), so weights of one
    model load into another with ``set_weights``.
    """
    variant = variant or Variant.cwr()
    backbone = build_backbone(
        config.backbone, input_shape=tuple(input_shape), weights=config.backbone_weights
    )
    inputs = tf.keras.Input(tuple(input_shape), name="image")
    logits = CWRStarHead(num_classes, name="cwr_head")(backbone(inputs))
    return HybridQuantizedTrainStep(
        inputs,
        logits,
        forward_bits=variant.forward_bits,
        update_bits=variant.update_bits,
        rounding=variant.rounding,
        grid=variant.grid,
        seed=config.seed,
        name=f"{config.backbone}_{variant.name}",
    )


def _compile(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer) -> None:
    model.compile(
        optimizer,
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _new_accuracy(scenario: Scenario) -> AccuracyMatrix:
    return AccuracyMatrix(
        len(scenario), scenario.num_classes, [e.classes for e in scenario.experiences]
    )


def _fit(
    model: tf.keras.Model,
    experience: Experience,
    *,
    epochs: int,
    config: TrainingConfig,
    callbacks: Sequence[tf.keras.callbacks.Callback],
) -> float:
    dataset = experience.train_dataset(
        config.batch_size, shuffle=True, seed=config.seed + experience.index
    )
    start = time.perf_counter()
    model.fit(dataset, epochs=epochs, verbose=0, callbacks=list(callbacks))
    return time.perf_counter() - start


def train_first_experience(
    scenario: Scenario,
    config: TrainingConfig,
    *,
    callbacks: CallbackFactory | None = None,
) -> tuple[list[np.ndarray], float]:
    """Train backbone and head on experience 0 (float, Adam) with CWR* bookkeeping.

    Returns:
        ``(weights, seconds)``: the model's weights after consolidation, to start
        every variant from, and the training time.
    """
    model, seconds = _train_whole_network(
        scenario[0], scenario.num_classes, config, "first", callbacks
    )
    return model.get_weights(), seconds


def _train_whole_network(
    experience: Experience,
    num_classes: int,
    config: TrainingConfig,
    label: str,
    callbacks: CallbackFactory | None,
) -> tuple[HybridQuantizedTrainStep, float]:
    """Float training of backbone and head (Adam) as one CWR* experience."""
    tf.keras.utils.set_random_seed(config.seed)
    model = build_model(experience.x_train.shape[1:], num_classes, config)
    _compile(model, tf.keras.optimizers.Adam(config.first_learning_rate))
    extra = callbacks(label, 0, config.first_epochs) if callbacks else []
    seconds = _fit(
        model,
        experience,
        epochs=config.first_epochs,
        config=config,
        callbacks=[CWRStar(model.head, class_counts=experience.class_counts), *extra],
    )
    return model, seconds


@dataclasses.dataclass(frozen=True)
class FrozenFeatures:
    """Head-input features of every experience and of the test set, computed once with
    the backbone frozen after the first experience (inference mode)."""

    scenario: Scenario
    train: tuple[np.ndarray, ...]
    test: np.ndarray
    seconds: float

    def experience(self, index: int) -> Experience:
        """Experience ``index`` with its images replaced by their features."""
        return dataclasses.replace(self.scenario[index], x_train=self.train[index])


def extract_features(
    scenario: Scenario, first_weights: list[np.ndarray], config: TrainingConfig
) -> FrozenFeatures:
    """Run the frozen backbone of the first-experience model over all the stream's data.

    After the first experience the backbone no longer changes and runs in inference
    mode, so its features can be computed once and shared by every variant.
    """
    model = build_model(scenario[0].x_train.shape[1:], scenario.num_classes, config)
    model.set_weights(first_weights)
    extractor = model.feature_extractor
    start = time.perf_counter()
    batch = max(config.batch_size, 256)
    train = tuple(
        extractor.predict(e.x_train, batch_size=batch, verbose=0)
        for e in scenario.experiences
    )
    test = extractor.predict(scenario.x_test, batch_size=batch, verbose=0)
    return FrozenFeatures(scenario, train, test, time.perf_counter() - start)


def run_stream(
    features: FrozenFeatures,
    first_weights: list[np.ndarray],
    variant: Variant,
    config: TrainingConfig,
    *,
    callbacks: CallbackFactory | None = None,
) -> VariantResult:
    """Learn experiences 1.. with ``variant`` from the shared first experience.

    The head trains on the frozen features with ``model.fit`` (plus ``CWRStar`` for
    CWR* variants) in a ``head_model()`` copy, evaluated on the test set after each
    experience; the final head state is loaded back into the full model.

    Args:
        features: ``extract_features`` output (shared by variants).
        first_weights: Weights from ``train_first_experience`` (shared by variants).
        variant: How the head learns.
        config: Hyper-parameters.
        callbacks: Optional factory ``(variant name, experience, epochs) -> callbacks``
            (progress bars).

    Returns:
        The variant's accuracy matrix, fit times and the full model.
    """
    tf.keras.utils.set_random_seed(config.seed)
    scenario = features.scenario
    model = build_model(
        scenario[0].x_train.shape[1:], scenario.num_classes, config, variant
    )
    model.set_weights(first_weights)
    head = model.head_model()
    first = features.experience(0)
    # Static ranges from experience 0: the gradient range tracked while training it
    # (in `first_weights`) widened by a pass over its features.
    _compile(head, tf.keras.optimizers.SGD(config.learning_rate))
    head.calibrate(first.x_train, first.y_train, batch_size=config.batch_size)
    accuracy = _new_accuracy(scenario)
    accuracy.update(
        0, scenario.y_test, head.predict(features.test, batch_size=1024, verbose=0)
    )
    fit_seconds = []
    for index in range(1, len(scenario)):
        experience = features.experience(index)
        extra = list(callbacks(variant.name, index, config.epochs)) if callbacks else []
        if variant.strategy == "cwr":
            extra.insert(0, CWRStar(head.head, class_counts=experience.class_counts))
        # Naive fine-tuning: the same head-only update without reset or consolidation.
        fit_seconds.append(
            _fit(head, experience, epochs=config.epochs, config=config, callbacks=extra)
        )
        accuracy.update(
            index, scenario.y_test, head.predict(features.test, batch_size=1024, verbose=0)
        )
    model.load_head_state(head)
    return VariantResult(variant, accuracy, fit_seconds, model)


def train_joint(
    scenario: Scenario,
    config: TrainingConfig,
    *,
    callbacks: CallbackFactory | None = None,
) -> tuple[float, float]:
    """Upper bound: train the whole network on all training data at once.

    Returns:
        ``(test accuracy over all classes, training seconds)``.
    """
    model, seconds = _train_whole_network(
        scenario.joint_experience(), scenario.num_classes, config, "joint", callbacks
    )
    logits = model.predict(scenario.x_test, batch_size=256, verbose=0)
    return float(np.mean(logits.argmax(axis=1) == scenario.y_test)), seconds


def versions() -> dict[str, str]:
    """Versions of Python and the libraries a result depends on."""
    import larq
    import larq_zoo

    import larq_cwr

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "larq": larq.__version__,
        "larq_zoo": getattr(larq_zoo, "__version__", "unknown"),
        "larq_cwr": larq_cwr.__version__,
        "numpy": np.__version__,
    }


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """What ``run_experiment`` runs: data, stream, variants and hyper-parameters.

    Args:
        dataset: Dataset name (``larq_cwr.datasets.DATASET_NAMES``).
        data_dir: Where the dataset's files are (None: its default source).
        image_size: Resize images to this square size (None: native).
        scenario: ``"nc"`` or ``"ni"``.
        experiences: Number of experiences.
        variants: CWR* (and naive) variants to run from the shared first experience.
        joint: Also train the joint upper bound.
        training: Hyper-parameters.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    image_size: int | None = 16
    scenario: str = "nc"
    experiences: int = 5
    variants: tuple[Variant, ...] = (Variant.cwr(8, 16), Variant.cwr(), NAIVE)
    joint: bool = True
    training: TrainingConfig = TrainingConfig()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_experiment(
    config: ExperimentConfig,
    *,
    callbacks: CallbackFactory | None = None,
    cache_dir: str | None = None,
) -> tuple[dict[str, Any], dict[str, VariantResult]]:
    """Load data, build the stream, run every variant and the baselines.

    Returns:
        ``(report, results)``: a JSON-ready report (config, per-variant metrics,
        joint accuracy, timings, versions) and the results with their models.
    """
    from larq_cwr.datasets import load_dataset
    from larq_cwr.scenarios import make_scenario

    start = time.perf_counter()
    data = load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        cache_dir=cache_dir,
        image_size=config.image_size,
        seed=config.training.seed,
    )
    scenario = make_scenario(
        config.scenario,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        n_experiences=config.experiences,
        seed=config.training.seed,
    )
    logger.info("Stream %s: class order %s", config.scenario, scenario.class_order)
    first_weights, first_seconds = train_first_experience(
        scenario, config.training, callbacks=callbacks
    )
    features = extract_features(scenario, first_weights, config.training)
    results = {}
    for variant in config.variants:
        results[variant.name] = run_stream(
            features, first_weights, variant, config.training, callbacks=callbacks
        )
    report: dict[str, Any] = {
        "config": config.to_dict(),
        "dataset": {
            "name": data.name,
            "input_shape": list(data.input_shape),
            "train": int(len(data.y_train)),
            "test": int(len(data.y_test)),
            "class_names": list(data.class_names),
        },
        "class_order": list(scenario.class_order),
        "experience_classes": [list(e.classes) for e in scenario.experiences],
        "first_experience_seconds": first_seconds,
        "feature_extraction_seconds": features.seconds,
        "variants": {name: result.summary() for name, result in results.items()},
        "versions": versions(),
    }
    if config.joint:
        accuracy, seconds = train_joint(scenario, config.training, callbacks=callbacks)
        report["joint"] = {"final_accuracy": accuracy, "fit_seconds": seconds}
    report["total_seconds"] = time.perf_counter() - start
    return report, results
