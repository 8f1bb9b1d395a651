"""Where does the hybrid CWR* update lose to float? An ablation on Split-CIFAR-10 NC.

Each seed's first-experience `bnn32` network (the one `split_cifar10.py` uses, from the
same cache) gives frozen features; the later experiences are learned by a plain loop over
the library's own ops (`reset_kernel`, `hybrid_sgd_step`, `consolidate_kernel`), the
arithmetic `HybridQuantizedTrainStep` and the device head run, with one option changed
per variant: the grid (zero-exact vs paper), stochastic rounding of the logit gradient
and/or of the stored update, the 2% widening of the forward weight range, the static
feature range. Every variant of a seed sees the same batches in the same order. The
float learning rate is tuned on validation (as a user would) and every variant is also
reported at each learning rate of the grid.

    python benchmarks/hybrid_ablation.py [--seeds 0 1 2]

Writes `benchmarks/results/hybrid_ablation.json` and the table of
`docs/quantization.md` (below its marker). Skips (exit 0) without the CIFAR-10 data.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import time

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
import tensorflow as tf
from docblock import replace_block

from larq_cwr.experiment import build_model, load_architecture_weights, versions
from larq_cwr.head import consolidate_kernel, reset_kernel
from larq_cwr.reporting import format_table, write_json
from larq_cwr.training import hybrid_sgd_step

LEARNING_RATES = (0.0025, 0.01, 0.04, 0.16)
EPOCHS, FIRST_EPOCHS, BATCH = 5, 10, 50
MARKER = "<!-- hybrid_ablation table -->"
END = "<!-- end hybrid_ablation table -->"
# name: (hybrid_sgd_step options, stochastic gradient, stochastic stored update)
VARIANTS = {
    "float": ({"forward_bits": None, "update_bits": None}, False, False),
    "8/16 zero-exact (default)": ({}, False, False),
    "8/16 paper grid": ({"grid": "paper"}, False, False),
    "8/16 + stochastic gradient": ({}, True, False),
    "8/16 + stochastic update": ({}, False, True),
    "8/16, no weight-range margin": ({"weight_range_margin": 0.0}, False, False),
    "8/16, per-batch feature range": ({"feature_range": None}, False, False),
    "8/8 nearest": ({"update_bits": 8}, False, False),
    "8/8 stochastic update": ({"update_bits": 8}, False, True),
    "8/8 stochastic gradient + update": ({"update_bits": 8}, True, True),
    "8/8 stochastic update, paper grid": ({"update_bits": 8, "grid": "paper"}, False, True),
}

logger = logging.getLogger("hybrid_ablation")


class HeadStream:
    """The head's starting state and calibrated ranges, shared by every variant."""

    def __init__(self, features, first_weights, config):
        model = build_model(
            features.scenario[0].x_train.shape[1:],
            features.scenario.num_classes,
            config=config,
        )
        load_architecture_weights(model, first_weights)
        head = model.upper_model()
        head.compile(tf.keras.optimizers.SGD(0.01), "sparse_categorical_crossentropy")
        first = features.experience(0)
        head.calibrate(first.x_train, first.y_train, batch_size=BATCH)
        self.consolidated = tf.constant(head.head.consolidated_kernel)
        self.past = tf.constant(head.head.past_counts)
        self.feature_range = tf.constant(head.feature_range)
        self.gradient_range = tf.constant(head.gradient_range)
        self.features = features


def run_variant(stream: HeadStream, name: str, learning_rate: float, seed: int) -> float:
    """Final accuracy on the stream's evaluation set after the later experiences."""
    options, stochastic_gradient, stochastic_update = VARIANTS[name]
    kwargs = {
        "feature_range": stream.feature_range,
        "gradient_range": stream.gradient_range,
        **options,
    }
    noise = tf.random.Generator.from_seed(seed)

    @tf.function
    def step(kernel, x, y):
        return hybrid_sgd_step(
            kernel,
            x,
            labels=y,
            learning_rate=learning_rate,
            gradient_noise=(
                noise.uniform([tf.shape(x)[0], kernel.shape[-1]])
                if stochastic_gradient
                else None
            ),
            update_noise=noise.uniform(tf.shape(kernel)) if stochastic_update else None,
            **kwargs,
        ).kernel

    features = stream.features
    consolidated, past = stream.consolidated, stream.past
    order_rng = np.random.default_rng(seed)
    for index in range(1, len(features.scenario)):
        experience = features.experience(index)
        counts = tf.constant(experience.class_counts)
        kernel = reset_kernel(consolidated, past_counts=past, class_counts=counts)
        x, y = experience.x_train, experience.y_train
        for _ in range(EPOCHS):
            order = order_rng.permutation(len(y))
            for start in range(0, len(y), BATCH):
                batch = order[start : start + BATCH]
                kernel = step(kernel, tf.constant(x[batch]), tf.constant(y[batch]))
        consolidated, past = consolidate_kernel(
            kernel, consolidated, past_counts=past, class_counts=counts
        )
    predictions = np.argmax(features.test @ consolidated.numpy(), axis=1)
    return float(np.mean(predictions == features.scenario.y_test))


def run_seed(data, seed: int) -> dict:
    stream = common.make_stream(data, "nc", seed, first_epochs=FIRST_EPOCHS, epochs=EPOCHS)
    on_validation = HeadStream(stream.validation, stream.first_weights, stream.config)
    on_test = HeadStream(stream.test, stream.first_weights, stream.config)
    validation = {
        rate: run_variant(on_validation, "float", rate, seed) for rate in LEARNING_RATES
    }
    tuned = max(validation, key=validation.get)
    test = {
        name: {str(rate): run_variant(on_test, name, rate, seed) for rate in LEARNING_RATES}
        for name in VARIANTS
    }
    logger.info("seed %d: tuned lr %g, %s", seed, tuned, test)
    return {"seed": seed, "validation_float": validation, "tuned_lr": tuned, "test": test}


def write_table(records, doc: pathlib.Path) -> str:
    rows = []
    for name in VARIANTS:
        gaps_tuned = [
            r["test"][name][str(r["tuned_lr"])] - r["test"]["float"][str(r["tuned_lr"])]
            for r in records
        ]
        finals = [r["test"][name][str(r["tuned_lr"])] for r in records]
        per_rate = [
            np.mean(
                [
                    r["test"][name][str(rate)] - r["test"]["float"][str(rate)]
                    for r in records
                ]
            )
            for rate in LEARNING_RATES
        ]
        rows.append(
            [
                name,
                f"{100 * np.mean(finals):.2f}",
                " / ".join(f"{100 * g:+.2f}" for g in gaps_tuned),
                f"{100 * np.mean(gaps_tuned):+.2f}",
                *(f"{100 * g:+.2f}" for g in per_rate),
            ]
        )
    seeds = [r["seed"] for r in records]
    tuned = ", ".join(f"{r['tuned_lr']:g}" for r in records)
    table = format_table(
        [
            "variant",
            "final acc, tuned lr (%)",
            "vs float per seed (pp)",
            "mean (pp)",
            *(f"vs float at lr {rate:g}" for rate in LEARNING_RATES),
        ],
        rows,
    )
    text = (
        f"Split-CIFAR-10 (JPEG copy) NC 5x2, `bnn32` frozen after the first "
        f"experience, seeds {seeds}, head learning rate tuned on validation for float "
        f"CWR* (per seed: {tuned}), {EPOCHS} epochs per experience, batch {BATCH}. "
        "Written by `benchmarks/hybrid_ablation.py` from the code with source hash "
        f"`{common.code_hash()}`.\n\n" + table
    )
    replace_block(doc, text, marker=MARKER, end=END, new_file="# Quantization\n")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "quantization.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        print(f"hybrid_ablation: no CIFAR-10 data at {args.data}; skipped.")
        return 0
    start = time.perf_counter()
    data = common.load_cifar(args.data)
    settings = {
        "lrs": list(LEARNING_RATES),  # as JSON stores it, or the cache never matches
        "epochs": EPOCHS,
        "first_epochs": FIRST_EPOCHS,
    }
    records = [
        common.cached(
            common.RESULTS / f"hybrid_ablation_seed{seed}.json",
            {**settings, "seed": seed, "variants": list(VARIANTS)},
            lambda seed=seed: run_seed(data, seed),
        )
        for seed in args.seeds
    ]
    table = write_table(records, args.doc)
    write_json(
        {
            "records": records,
            "versions": versions(),
            "code": common.code_hash(),
            "seconds": time.perf_counter() - start,
        },
        common.RESULTS / "hybrid_ablation.json",
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
