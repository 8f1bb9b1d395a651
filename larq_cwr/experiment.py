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

from larq_cwr._checks import (
    check_choice,
    check_int,
    check_optional_bits,
    check_positive_int,
    check_positive_number,
    check_seed,
)
from larq_cwr.backbones import (
    BACKBONE_NAMES,
    block_input_layer,
    build_backbone,
    split_backbone,
)
from larq_cwr.backprop import BLOCK_OPTIMIZERS
from larq_cwr.callbacks import CWRStar, freeze_all_but
from larq_cwr.checkpoint import RunCheckpoint
from larq_cwr.head import CONSOLIDATIONS, CWRStarHead
from larq_cwr.metrics import AccuracyMatrix
from larq_cwr.quantizers import DEFAULT_GRID, GRIDS, ROUNDING_MODES
from larq_cwr.replay import STORAGES, LatentBinarization, LatentReplayMemory
from larq_cwr.scenarios import Experience, Scenario
from larq_cwr.training import DEFAULT_REPLAY_BATCH_SIZE, HybridQuantizedTrainStep

__all__ = [
    "LATENT_LAYER",
    "MAIN_JOB_BACKBONE",
    "MAIN_JOB_FIRST_EPOCHS",
    "MAIN_JOB_JOINT_EPOCHS",
    "MAIN_JOB_VARIANT",
    "NAIVE",
    "ExperimentConfig",
    "FrozenFeatures",
    "TrainingConfig",
    "Variant",
    "VariantResult",
    "architecture_weights",
    "build_model",
    "extract_features",
    "load_architecture_weights",
    "run_experiment",
    "run_stream",
    "train_first_experience",
    "train_joint",
    "with_baselines",
]

logger = logging.getLogger(__name__)

STRATEGY_NAMES = ("cwr", "finetune")
# METHOD §4 reference defaults: head SGD lr 0.0025, 5 epochs, minibatch 50; experience
# 0 trains the whole net in float for 10 epochs.
DEFAULT_HEAD_LEARNING_RATE = 0.0025
DEFAULT_EPOCHS = 5
DEFAULT_FIRST_EPOCHS = 10
DEFAULT_BATCH_SIZE = 50
DEFAULT_FIRST_LEARNING_RATE = 1e-3  # Adam, for training the binary net from scratch
DEFAULT_REPLAY_SIZE = 300  # METHOD §5: 300 slots on CIFAR-10
# The main job (`larq-cwr run` with no argument): the best configuration measured on
# digits over seeds 0-4 (docs/replay.md, benchmarks/digits_replay.py): plain latent
# replay (no CWR* consolidation) of 300 int8 pooled features, hybrid 8/16, 100 epochs
# per experience at lr 0.16; the reference budget (5 epochs at lr 0.0025) is far too
# small for experiences of ~270 images.
# Normalized pooled features let replay balance old and new classes (docs/replay.md).
# The first experience trains 30 epochs (~180 steps of 2 classes): the reference 10
# leave features whose linear ceiling on all classes swings with the seed (88.7-93.3%,
# seeds 4/0/2), and the main job's final accuracy with it (std 4.6 pp; 1.1 pp at 30).
# The joint bound keeps the reference 10 epochs: 98.6% already (seeds 0-4), and at 30
# it alone would take the main job past 5 minutes on 2 cores.
MAIN_JOB_BACKBONE = "bnn32_norm"
MAIN_JOB_FIRST_EPOCHS = 30
MAIN_JOB_JOINT_EPOCHS = DEFAULT_FIRST_EPOCHS
MAIN_JOB_EPOCHS = 100
MAIN_JOB_LEARNING_RATE = 0.16
REPLAY_STORAGES = ("none", *STORAGES)

CallbackFactory = Callable[[str, int, int], Sequence[tf.keras.callbacks.Callback]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Variant:
    """One way of learning experiences 1, 2, ... after the shared first experience.

    Args:
        name: Label used in reports.
        strategy: ``"cwr"`` (CWR* reset and consolidation) or ``"finetune"`` (the
            head, and trained blocks, keep fine-tuning: no reset, no consolidation;
            without replay this is naive fine-tuning, the lower bound; with replay it
            is plain latent replay).
        forward_bits: Forward bits of the hybrid update, None for float.
        update_bits: Stored-weight bits of the hybrid head update, None for float.
        rounding: ``"nearest"`` or ``"stochastic"`` rounding of the stored update.
        grid: Quantization grid, ``"zero_exact"`` (METHOD §3 default) or ``"paper"``.
        replay: Latent replay memory storage: ``"none"``, ``"float32"``, ``"int8"`` or
            ``"1bit"`` (METHOD §5); the latent layer is the run's split point
            (``TrainingConfig.trainable_blocks``).
        replay_size: Slots of the replay memory.
        train_blocks: Train the blocks above the split point too (quantized
            back-propagation), not only the head.
        backward_bits: Bits of the gradients back-propagated through the blocks (q_b),
            None for float.
        consolidation: CWR*'s merge of a seen class's trained column: ``"weighted"``
            (METHOD §2) or ``"latest"`` (the trained column; for trained blocks with
            replay, see ``CWRStar``). CWR* variants only.
    """

    name: str
    strategy: str = "cwr"
    forward_bits: int | None = None
    update_bits: int | None = None
    rounding: str = "nearest"
    grid: str = DEFAULT_GRID
    replay: str = "none"
    replay_size: int = DEFAULT_REPLAY_SIZE
    train_blocks: bool = False
    backward_bits: int | None = None
    consolidation: str = "weighted"

    def __post_init__(self) -> None:
        check_choice(self.strategy, STRATEGY_NAMES, "strategy")
        check_optional_bits(self.forward_bits, "forward_bits")
        check_optional_bits(self.update_bits, "update_bits")
        check_choice(self.rounding, ROUNDING_MODES, "rounding")
        check_choice(self.grid, GRIDS, "grid")
        check_choice(self.replay, REPLAY_STORAGES, "replay")
        check_positive_int(self.replay_size, "replay_size")
        check_optional_bits(self.backward_bits, "backward_bits")
        check_choice(self.consolidation, CONSOLIDATIONS, "consolidation")
        if self.strategy != "cwr" and self.consolidation != "weighted":
            raise ValueError(
                f"`consolidation`={self.consolidation!r} needs the CWR* strategy; "
                f"strategy {self.strategy!r} does not consolidate."
            )

    @classmethod
    def cwr(
        cls,
        forward_bits: int | None = None,
        update_bits: int | None = None,
        **options: Any,
    ) -> "Variant":
        """A CWR* variant named after its settings: ``cwr_8_16``, ``cwr_float``,
        ``cwr_8_8_stochastic_paper``, ``cwr_8_16_replay-1bit-300_blocks-qb16``.

        Args:
            forward_bits: Forward bits, None for float.
            update_bits: Stored-weight bits, None for float.
            **options: The other fields (``rounding``, ``grid``, ``replay``,
                ``replay_size``, ``train_blocks``, ``backward_bits``,
                ``consolidation``).
        """
        return cls._named("cwr", forward_bits, update_bits, options)

    @classmethod
    def finetune(
        cls,
        forward_bits: int | None = None,
        update_bits: int | None = None,
        **options: Any,
    ) -> "Variant":
        """A fine-tuning variant (no CWR* reset or consolidation), named like ``cwr``'s
        with a ``finetune`` prefix: ``finetune_8_16_replay-int8-300``."""
        return cls._named("finetune", forward_bits, update_bits, options)

    @classmethod
    def _named(
        cls,
        strategy: str,
        forward_bits: int | None,
        update_bits: int | None,
        options: dict[str, Any],
    ) -> "Variant":
        allowed = {f.name for f in dataclasses.fields(cls)} - {"name", "strategy"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(
                f"Unknown variant options {unknown}; expected some of {sorted(allowed)}."
            )
        variant = cls(
            name="",
            strategy=strategy,
            forward_bits=forward_bits,
            update_bits=update_bits,
            **options,
        )
        if forward_bits is None and update_bits is None:
            name = f"{strategy}_float"
        else:
            name = f"{strategy}_{forward_bits or 'f'}_{update_bits or 'f'}"
        if variant.rounding != "nearest":
            name += f"_{variant.rounding}"
        if variant.grid != DEFAULT_GRID:
            name += f"_{variant.grid}"
        if variant.replay != "none":
            name += f"_replay-{variant.replay}-{variant.replay_size}"
        if variant.train_blocks:
            name += f"_blocks-qb{variant.backward_bits or 'f'}"
        if variant.consolidation != "weighted":
            name += f"_consolidate-{variant.consolidation}"
        return dataclasses.replace(variant, name=name)


# Head fine-tuning without replay: the lower bound.
NAIVE = Variant(name="naive", strategy="finetune")
MAIN_JOB_VARIANT = Variant.finetune(8, 16, replay="int8", replay_size=DEFAULT_REPLAY_SIZE)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainingConfig:
    """Hyper-parameters of a stream run (defaults from METHOD §4).

    Args:
        backbone: Backbone name (see ``larq_cwr.backbones.BACKBONE_NAMES``).
        backbone_weights: Optional local weights file for the backbone.
        first_epochs: Epochs of the first experience (whole network).
        first_learning_rate: Adam learning rate of the first experience.
        epochs: Epochs of each later experience (head only).
        learning_rate: SGD learning rate of the head in later experiences.
        batch_size: Minibatch size (new patterns per step).
        seed: Seed of initialization, shuffling, replay and stochastic rounding.
        trainable_blocks: The split point: the latent layer is the input of the
            ``trainable_blocks``-th binary block from the top (0: the pooled features,
            the head's input). Replay keeps latents there; variants with
            ``train_blocks`` train the layers above it.
        replay_batch_size: Replayed latents appended to each step's batch.
        block_learning_rate: Learning rate of trained blocks (None: the head's).
        block_optimizer: How trained blocks step (``"sgd"``, ``"momentum"``,
            ``"adam"``; see ``HybridQuantizedTrainStep``).
        joint_epochs: Epochs of the joint upper bound (whole network, all data;
            None: ``first_epochs``).
        binarize_first_latents: Train the first experience with the latent layer
            binarizing (straight-through gradient), so the network learns on the
            signs a 1-bit replay memory keeps rather than meeting them only from
            experience 1 on. The latent layer stays enabled in the first
            experience's weights: every variant of the run then sees binary
            latents, whatever its memory stores.
    """

    backbone: str = "bnn32"
    backbone_weights: str | None = None
    first_epochs: int = DEFAULT_FIRST_EPOCHS
    first_learning_rate: float = DEFAULT_FIRST_LEARNING_RATE
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_HEAD_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    seed: int = 0
    trainable_blocks: int = 0
    replay_batch_size: int = DEFAULT_REPLAY_BATCH_SIZE
    block_learning_rate: float | None = None
    block_optimizer: str = "sgd"
    joint_epochs: int | None = None
    binarize_first_latents: bool = False

    def __post_init__(self) -> None:
        check_choice(self.backbone, BACKBONE_NAMES, "backbone")
        check_seed(self.seed)
        for name in ("first_epochs", "epochs", "batch_size", "replay_batch_size"):
            check_positive_int(getattr(self, name), name)
        for name in ("first_learning_rate", "learning_rate"):
            check_positive_number(getattr(self, name), name)
        if self.block_learning_rate is not None:
            check_positive_number(self.block_learning_rate, "block_learning_rate")
        check_choice(self.block_optimizer, BLOCK_OPTIMIZERS, "block_optimizer")
        if self.joint_epochs is not None:
            check_positive_int(self.joint_epochs, "joint_epochs")
        check_int(self.trainable_blocks, "trainable_blocks", minimum=0)
        if not isinstance(self.binarize_first_latents, bool):
            raise TypeError(
                "`binarize_first_latents` must be True or False, got "
                f"{self.binarize_first_latents!r}."
            )

    @property
    def joint_bound_epochs(self) -> int:
        """Epochs the joint bound trains: ``joint_epochs``, else ``first_epochs``."""
        return self.first_epochs if self.joint_epochs is None else self.joint_epochs


@dataclasses.dataclass(kw_only=True)
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
            "replay_memory": self.memory_summary(),
        }

    def memory_summary(self) -> dict[str, Any] | None:
        """Bytes of the replay memory (None without replay): its pattern storage, the
        rest of its state, and what float32 storage of the same patterns would take."""
        memory = self.model.replay
        if memory is None or not memory.built:
            return None
        return {
            "storage": memory.storage,
            "size": memory.size,
            "filled": memory.filled,
            "pattern_bytes": memory.nbytes,
            "overhead_bytes": memory.overhead_bytes,
            "float32_pattern_bytes": memory.size * int(np.prod(memory.latent_shape)) * 4,
        }


LATENT_LAYER = "latent"  # name of the LatentBinarization layer at the split point


def build_model(
    input_shape: Sequence[int],
    num_classes: int,
    *,
    config: TrainingConfig,
    variant: Variant | None = None,
) -> HybridQuantizedTrainStep:
    """Backbone + ``CWRStarHead`` as a ``HybridQuantizedTrainStep`` for ``variant``.

    The backbone is cut at the split point of ``config.trainable_blocks`` with a
    ``LatentBinarization`` layer (named ``"latent"``, identity until a 1-bit replay
    memory enables it) between the parts, the model's ``latent_layer``. Every call
    builds the same architecture, so ``architecture_weights`` of one model load into
    another, whatever the variant's replay memory.
    """
    variant = variant or Variant.cwr()
    backbone = build_backbone(
        config.backbone, input_shape=tuple(input_shape), weights=config.backbone_weights
    )
    lower, upper = split_backbone(
        backbone, block_input_layer(backbone, config.trainable_blocks)
    )
    inputs = tf.keras.Input(tuple(input_shape), name="image")
    latents = LatentBinarization(name=LATENT_LAYER)(lower(inputs))
    logits = CWRStarHead(num_classes, name="cwr_head")(upper(latents))
    memory = None
    if variant.replay != "none":
        memory = LatentReplayMemory(
            variant.replay_size,
            num_classes,
            storage=variant.replay,
            seed=config.seed,
            latent_shape=tuple(latents.shape[1:]),
            name="replay",
        )
    return HybridQuantizedTrainStep(
        inputs,
        logits,
        forward_bits=variant.forward_bits,
        update_bits=variant.update_bits,
        rounding=variant.rounding,
        grid=variant.grid,
        seed=config.seed,
        backward_bits=variant.backward_bits,
        latent_layer=LATENT_LAYER,
        replay=memory,
        replay_batch_size=config.replay_batch_size,
        block_learning_rate=config.block_learning_rate,
        block_optimizer=config.block_optimizer,
        # Replayed batches carry confidently wrong old-class predictions that
        # experience 0's gradient statistics never saw: quantize on the exact bound.
        gradient_range_mode="bound" if memory is not None else "calibrated",
        name=f"{config.backbone}_{variant.name}",
    )


def architecture_weights(model: HybridQuantizedTrainStep) -> list[tf.Variable]:
    """The model's weights without its replay memory's and block optimizer's (the same
    for every variant)."""
    memory = list(model.replay.weights) if model.replay is not None else []
    extra = {id(weight) for weight in [*memory, *model.block_optimizer_weights]}
    return [weight for weight in model.weights if id(weight) not in extra]


def load_architecture_weights(
    model: HybridQuantizedTrainStep, weights: Sequence[np.ndarray]
) -> None:
    """Assign ``weights`` (from ``architecture_weights`` of a model of the same
    architecture) to ``model``; its replay memory is left as it is."""
    variables = architecture_weights(model)
    if len(variables) != len(weights):
        raise ValueError(
            f"`weights` has {len(weights)} arrays; expected {len(variables)} for "
            f"{model.name!r}."
        )
    for variable, value in zip(variables, weights):
        variable.assign(value)


def _compile(model: tf.keras.Model, optimizer: tf.keras.optimizers.Optimizer) -> None:
    model.compile(
        optimizer,
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def _new_accuracy(scenario: Scenario) -> AccuracyMatrix:
    return AccuracyMatrix(
        len(scenario),
        scenario.num_classes,
        experience_classes=[e.classes for e in scenario.experiences],
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
    """Train backbone and head on experience 0 (float, Adam) with CWR* bookkeeping;
    on the latents' signs with ``config.binarize_first_latents``.

    Returns:
        ``(weights, seconds)``: the model's weights after consolidation, to start
        every variant from, and the training time.
    """
    model, seconds = _train_whole_network(
        scenario[0],
        scenario.num_classes,
        config,
        "first",
        callbacks,
        config.first_epochs,
        binarize_latents=config.binarize_first_latents,
    )
    return [weight.numpy() for weight in architecture_weights(model)], seconds


def _train_whole_network(
    experience: Experience,
    num_classes: int,
    config: TrainingConfig,
    label: str,
    callbacks: CallbackFactory | None,
    epochs: int,
    *,
    binarize_latents: bool = False,
) -> tuple[HybridQuantizedTrainStep, float]:
    """Float training of backbone and head (Adam) as one CWR* experience."""
    tf.keras.utils.set_random_seed(config.seed)
    model = build_model(experience.x_train.shape[1:], num_classes, config=config)
    if binarize_latents:
        model.get_layer(LATENT_LAYER).enable()
    _compile(model, tf.keras.optimizers.Adam(config.first_learning_rate))
    extra = callbacks(label, 0, epochs) if callbacks else []
    seconds = _fit(
        model,
        experience,
        epochs=epochs,
        config=config,
        callbacks=[CWRStar(model.head, class_counts=experience.class_counts), *extra],
    )
    return model, seconds


@dataclasses.dataclass(frozen=True, kw_only=True)
class FrozenFeatures:
    """Latents (at the split point) of every experience and of the test set, computed
    once with the part below frozen after the first experience (inference mode)."""

    scenario: Scenario
    train: tuple[np.ndarray, ...]
    test: np.ndarray
    seconds: float

    def experience(self, index: int) -> Experience:
        """Experience ``index`` with its images replaced by their latents."""
        return dataclasses.replace(self.scenario[index], x_train=self.train[index])


def extract_features(
    scenario: Scenario,
    first_weights: list[np.ndarray],
    *,
    config: TrainingConfig,
) -> FrozenFeatures:
    """Run the frozen part below the split point over all the stream's data.

    After the first experience the part below the split point no longer changes and
    runs in inference mode, so its latents (the head's features when
    ``config.trainable_blocks`` is 0) are computed once and shared by every variant.
    """
    model = build_model(scenario[0].x_train.shape[1:], scenario.num_classes, config=config)
    load_architecture_weights(model, first_weights)
    extractor = model.latent_extractor
    start = time.perf_counter()
    batch = max(config.batch_size, 256)
    train = tuple(
        extractor.predict(e.x_train, batch_size=batch, verbose=0)
        for e in scenario.experiences
    )
    test = extractor.predict(scenario.x_test, batch_size=batch, verbose=0)
    return FrozenFeatures(
        scenario=scenario, train=train, test=test, seconds=time.perf_counter() - start
    )


def _binarize(latents: np.ndarray) -> np.ndarray:
    """Signs as ``LatentBinarization`` computes them (0 maps to +1)."""
    return np.where(latents >= 0, 1.0, -1.0).astype(np.float32)


def run_stream(
    features: FrozenFeatures,
    variant: Variant,
    *,
    first_weights: list[np.ndarray],
    config: TrainingConfig,
    callbacks: CallbackFactory | None = None,
    resume: dict[str, Any] | None = None,
    on_experience: Callable[[dict[str, Any]], None] | None = None,
) -> VariantResult:
    """Learn experiences 1.. with ``variant`` from the shared first experience.

    The part above the split point (the head, and the trained blocks of
    ``variant.train_blocks``) trains on the frozen latents with ``model.fit`` (plus
    ``CWRStar`` for CWR* variants) in the model's ``upper_model()``, which shares its
    layers; after each experience it is evaluated on the test set and, with replay,
    the experience's latents go to the memory (experience 0's first). A 1-bit memory
    binarizes live latents from the start of experience 1 (``LatentBinarization``).

    Args:
        features: ``extract_features`` output (shared by variants).
        variant: How the later experiences are learned.
        first_weights: Weights from ``train_first_experience`` (shared by variants).
        config: Hyper-parameters.
        callbacks: Optional factory ``(variant name, experience, epochs) -> callbacks``
            (progress bars).
        resume: A state ``on_experience`` received: continue after its experience.
        on_experience: Called after each experience with the state to resume from:
            ``{"index", "weights" (all the model's weights), "accuracy",
            "fit_seconds"}``.

    Returns:
        The variant's accuracy matrix, fit times and the full model.
    """
    tf.keras.utils.set_random_seed(config.seed)
    scenario = features.scenario
    model = build_model(
        scenario[0].x_train.shape[1:], scenario.num_classes, config=config, variant=variant
    )
    load_architecture_weights(model, first_weights)
    binary = variant.replay == "1bit"
    if binary:
        model.get_layer(LATENT_LAYER).enable()
    latents = [_binarize(x) if binary else x for x in features.train]
    test = _binarize(features.test) if binary else features.test
    head_only = variant.replay == "none" and not variant.train_blocks
    if head_only:  # the layers above the split stay frozen: their features, once
        to_features = model.upper_features
        latents = [to_features.predict(x, batch_size=1024, verbose=0) for x in latents]
        test = to_features.predict(test, batch_size=1024, verbose=0)
    upper = model.upper_model(head_only=head_only)
    _compile(upper, tf.keras.optimizers.SGD(config.learning_rate))
    blocks = _block_layer_names(upper) if variant.train_blocks else []
    if resume is not None:  # the model's state after experience `resume["index"]`
        model.set_weights(resume["weights"])
        upper.load_head_state(model)
        accuracy = AccuracyMatrix.from_dict(resume["accuracy"])
        fit_seconds = list(resume["fit_seconds"])
        done = int(resume["index"])
    else:
        first = scenario[0]
        # Static ranges from experience 0: the gradient range tracked while training it
        # (in `first_weights`) widened by a pass over its latents.
        upper.calibrate(latents[0], first.y_train, batch_size=config.batch_size)
        if upper.replay is not None:
            upper.remember(latents[0], first.y_train, batch_size=1024)
        accuracy = _new_accuracy(scenario)
        predictions = upper.predict(test, batch_size=1024, verbose=0)
        accuracy.update(scenario.y_test, predictions, experience_index=0)
        fit_seconds, done = [], 0
    for index in range(done + 1, len(scenario)):
        experience = dataclasses.replace(scenario[index], x_train=latents[index])
        extra = list(callbacks(variant.name, index, config.epochs)) if callbacks else []
        if variant.strategy == "cwr":
            cwr = CWRStar(
                upper.head,
                class_counts=experience.class_counts,
                trainable_layers=blocks,
                consolidation=variant.consolidation,
            )
            extra.insert(0, cwr)
        else:  # naive fine-tuning: the same update without reset or consolidation
            extra.insert(0, _TrainOnly([upper.head, *blocks]))
        fit_seconds.append(
            _fit(upper, experience, epochs=config.epochs, config=config, callbacks=extra)
        )
        if upper.replay is not None:
            upper.remember(experience.x_train, experience.y_train, batch_size=1024)
        predictions = upper.predict(test, batch_size=1024, verbose=0)
        accuracy.update(scenario.y_test, predictions, experience_index=index)
        if on_experience is not None:
            model.load_head_state(upper)
            on_experience(
                {
                    "index": index,
                    "weights": model.get_weights(),
                    "accuracy": accuracy.to_dict(),
                    "fit_seconds": fit_seconds,
                }
            )
    model.load_head_state(upper)
    return VariantResult(
        variant=variant, accuracy=accuracy, fit_seconds=fit_seconds, model=model
    )


def _block_layer_names(upper: HybridQuantizedTrainStep) -> list[str]:
    """Layers with weights between the latent input and the head."""
    return [
        layer.name
        for layer in upper.layers
        if layer.weights and layer is not upper.head and layer is not upper.replay
    ]


class _TrainOnly(tf.keras.callbacks.Callback):
    """Train only these layers during this fit (naive fine-tuning's freezing)."""

    def __init__(self, keep: Sequence[Any]) -> None:
        super().__init__()
        self.keep = list(keep)

    def on_train_begin(self, logs: dict | None = None) -> None:
        freeze_all_but(self.model, self.keep)


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
        scenario.joint_experience(),
        scenario.num_classes,
        config,
        "joint",
        callbacks,
        config.joint_bound_epochs,
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


def with_baselines(main: Variant) -> tuple[Variant, ...]:
    """``main`` and what a report sets beside it: its float twin (for a hybrid main),
    head-only CWR* at the main's bits (for a main with replay, trained blocks or
    fine-tuning), and naive fine-tuning (the lower bound).

    Example:
        >>> [v.name for v in with_baselines(MAIN_JOB_VARIANT)]
        ['finetune_8_16_replay-int8-300', 'finetune_float_replay-int8-300',
         'cwr_8_16', 'naive']
    """
    variants = [main]
    if main.forward_bits is not None or main.update_bits is not None:
        variants.append(
            dataclasses.replace(
                main,
                forward_bits=None,
                update_bits=None,
                name=main.name.replace(
                    f"_{main.forward_bits or 'f'}_{main.update_bits or 'f'}", "_float", 1
                ),
            )
        )
    head_only = Variant.cwr(main.forward_bits, main.update_bits)
    if head_only not in variants:
        variants.append(head_only)
    if NAIVE not in variants:
        variants.append(NAIVE)
    return tuple(variants)


@dataclasses.dataclass(frozen=True, kw_only=True)
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
    variants: tuple[Variant, ...] = ()  # empty: the main job's, `with_baselines(...)`
    joint: bool = True
    training: TrainingConfig = TrainingConfig(
        backbone=MAIN_JOB_BACKBONE,
        first_epochs=MAIN_JOB_FIRST_EPOCHS,
        joint_epochs=MAIN_JOB_JOINT_EPOCHS,
        epochs=MAIN_JOB_EPOCHS,
        learning_rate=MAIN_JOB_LEARNING_RATE,
    )

    def __post_init__(self) -> None:
        if not self.variants:
            object.__setattr__(self, "variants", with_baselines(MAIN_JOB_VARIANT))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (``from_dict`` inverts it)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> "ExperimentConfig":
        """The configuration ``to_dict`` described.

        Example:
            >>> config = ExperimentConfig(experiences=2)
            >>> ExperimentConfig.from_dict(config.to_dict()) == config
            True
        """
        fields = dict(fields)
        fields["variants"] = tuple(Variant(**v) for v in fields.get("variants", ()))
        fields["training"] = TrainingConfig(**fields.get("training", {}))
        return cls(**fields)


def _finished(
    variant: Variant,
    state: dict[str, Any],
    arrays: dict[str, list[np.ndarray]],
    features: FrozenFeatures,
) -> VariantResult:
    """A variant finished before the run was resumed, rebuilt from the checkpoint."""
    scenario, summary = features.scenario, state["variants"][variant.name]
    config = TrainingConfig(**state["training"])
    model = build_model(
        scenario[0].x_train.shape[1:], scenario.num_classes, config=config, variant=variant
    )
    model.set_weights(arrays["main"])
    accuracy = AccuracyMatrix.from_dict(summary["accuracy_matrix"])
    return VariantResult(
        variant=variant,
        accuracy=accuracy,
        fit_seconds=list(summary["fit_seconds"]),
        model=model,
    )


def _steps_left(scenario: Scenario, config: ExperimentConfig, state: dict[str, Any]) -> int:
    """Training steps (batches) a run still has to take, given its checkpoint state."""
    training = config.training

    def steps(samples: int, epochs: int) -> int:
        return epochs * -(-samples // training.batch_size)

    sizes = [len(experience.y_train) for experience in scenario.experiences]
    total = 0 if "first_seconds" in state else steps(sizes[0], training.first_epochs)
    in_progress = state.get("in_progress", {})
    for variant in config.variants:
        if variant.name in state["variants"]:
            continue
        done = (
            in_progress.get("index", 0) if in_progress.get("variant") == variant.name else 0
        )
        total += sum(steps(n, training.epochs) for n in sizes[done + 1 :])
    if config.joint and "joint" not in state:
        total += steps(sum(sizes), training.joint_bound_epochs)
    return total


def run_experiment(
    config: ExperimentConfig,
    *,
    callbacks: CallbackFactory | None = None,
    cache_dir: str | None = None,
    checkpoint: RunCheckpoint | None = None,
    on_plan: Callable[[int], None] | None = None,
) -> tuple[dict[str, Any], dict[str, VariantResult]]:
    """Load data, build the stream, run every variant and the baselines.

    With ``checkpoint``, the run saves its state after the first experience, after
    every later experience of every variant and after the joint baseline, and resumes
    from the file if it exists: a killed run loses at most the experience in progress,
    and its resumed report equals an uninterrupted run's (timings aside).

    ``on_plan``, if given, is called once before training with the number of training
    steps (batches) the run has left, for a progress bar of the whole run.

    Returns:
        ``(report, results)``: a JSON-ready report (config, per-variant metrics,
        joint accuracy, timings, versions) and the results with their models (a
        resumed run has models for the variants it ran or finished after resuming).
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
        data.x_train,
        data.y_train,
        name=config.scenario,
        x_test=data.x_test,
        y_test=data.y_test,
        n_experiences=config.experiences,
        seed=config.training.seed,
    )
    logger.info("Stream %s: class order %s", config.scenario, scenario.class_order)
    state, arrays = {"variants": {}, "training": dataclasses.asdict(config.training)}, {}
    if checkpoint is not None and checkpoint.exists():
        state, arrays = checkpoint.load()
        logger.info("Resuming from %s", checkpoint.path)

    def save() -> None:
        if checkpoint is not None:
            checkpoint.save(state, arrays)

    if on_plan is not None:
        on_plan(_steps_left(scenario, config, state))

    if "first" in arrays:
        first_weights, first_seconds = arrays["first"], state["first_seconds"]
    else:
        first_weights, first_seconds = train_first_experience(
            scenario, config.training, callbacks=callbacks
        )
        state["first_seconds"], arrays["first"] = first_seconds, first_weights
        save()
    features = extract_features(scenario, first_weights, config=config.training)
    results = {}
    for position, variant in enumerate(config.variants):
        if variant.name in state["variants"]:  # finished before the run was resumed
            if position == 0:  # the main variant: its model, for the caller to save
                results[variant.name] = _finished(variant, state, arrays, features)
            continue
        resume = None
        if state.get("in_progress", {}).get("variant") == variant.name:
            resume = {**state["in_progress"], "weights": arrays["in_progress"]}

        def keep(progress: dict[str, Any], name: str = variant.name) -> None:
            state["in_progress"] = {
                "variant": name,
                **{key: value for key, value in progress.items() if key != "weights"},
            }
            arrays["in_progress"] = progress["weights"]
            save()

        result = run_stream(
            features,
            variant,
            first_weights=first_weights,
            config=config.training,
            callbacks=callbacks,
            resume=resume,
            on_experience=keep if checkpoint is not None else None,
        )
        results[variant.name] = result
        state["variants"][variant.name] = result.summary()
        state.pop("in_progress", None)
        arrays.pop("in_progress", None)
        if position == 0:
            arrays["main"] = result.model.get_weights()
        save()
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
        "variants": {v.name: state["variants"][v.name] for v in config.variants},
        "versions": versions(),
    }
    if config.joint:
        if "joint" not in state:
            accuracy, seconds = train_joint(scenario, config.training, callbacks=callbacks)
            state["joint"] = {"final_accuracy": accuracy, "fit_seconds": seconds}
            save()
        report["joint"] = state["joint"]
    report["total_seconds"] = time.perf_counter() - start
    return report, results
