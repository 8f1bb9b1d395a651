"""Cross-experience calibration on digits: what latent replay fixes and what it leaves.

Issue 9's question: the first experience's classes are trained with Adam together with
the backbone, the later ones by SGD from zero on a frozen backbone; do the first
classes end with larger head weights, do predictions collapse onto a few classes, and
which of that does replay remove? For each seed of `larq-cwr run`'s default stream
(sklearn digits at 16 px, NC 5x2, `bnn32_norm`, 100 epochs per later experience at SGD
lr 0.16; head-only CWR* also at METHOD §4's reference budget, 5 epochs at lr 0.0025,
v0.1's main job) and each variant, from the same first-experience network, the final
model gives:

- **norm ratio**: mean L2 norm of the head's weight columns of the first experience's
  classes over that of the later classes (1.0: the same scale);
- **first-class share**: the fraction of test predictions that name a first-experience
  class (their true share is 0.2, two classes out of ten);
- **top class share**: the largest fraction of test predictions any one class gets
  (0.1 is uniform);
- **prediction entropy**: of the predicted-class histogram, over log(10) (1.0: every
  class predicted equally often, as the balanced test set's labels are);
- **first / later accuracy**: mean per-class final accuracy of the first experience's
  classes and of the later ones.

Results: `benchmarks/results/calibration*.json` (code-keyed, `common.cached`) and the
table in `docs/replay.md`.

    python benchmarks/calibration.py [--seeds 0 1 2 3 4]
"""

from __future__ import annotations

import dataclasses
import logging
import sys

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
from digits_replay import run_digits_seeds
from docblock import replace_block

from larq_cwr.datasets import load_dataset
from larq_cwr.experiment import (
    DEFAULT_EPOCHS,
    DEFAULT_HEAD_LEARNING_RATE,
    MAIN_JOB_VARIANT,
    NAIVE,
    ExperimentConfig,
    Variant,
    extract_features,
    run_stream,
    train_first_experience,
)
from larq_cwr.reporting import format_table, write_json
from larq_cwr.scenarios import make_scenario

MARKER = "<!-- calibration table -->"
END = "<!-- end calibration table -->"
SIZE = MAIN_JOB_VARIANT.replay_size
# The reference budget of METHOD §4 (v0.1's main job): 5 epochs at lr 0.0025.
REFERENCE = {"epochs": DEFAULT_EPOCHS, "learning_rate": DEFAULT_HEAD_LEARNING_RATE}
# (row name, variant, `TrainingConfig` fields changed from the main job's)
VARIANTS = (
    (
        f"cwr_8_16, {DEFAULT_EPOCHS} epochs lr {DEFAULT_HEAD_LEARNING_RATE}",
        Variant.cwr(8, 16),
        REFERENCE,
    ),
    ("cwr_8_16", Variant.cwr(8, 16), {}),
    ("cwr_8_16_replay-int8-300", Variant.cwr(8, 16, replay="int8", replay_size=SIZE), {}),
    ("naive", NAIVE, {}),
    (f"{MAIN_JOB_VARIANT.name} (main job)", MAIN_JOB_VARIANT, {}),
)
METRICS = (
    ("norm_ratio", "norm ratio first/later", "{:.2f}"),
    ("first_share", "first-class share (true 0.20)", "{:.2f}"),
    ("top_share", "top class share (uniform 0.10)", "{:.2f}"),
    ("entropy", "prediction entropy (uniform 1.00)", "{:.2f}"),
    ("first_accuracy", "first classes acc. %", "{:.1%}"),
    ("later_accuracy", "later classes acc. %", "{:.1%}"),
)

logger = logging.getLogger("calibration")


def calibration(kernel, predicted, labels, first_classes, num_classes: int) -> dict:
    """The calibration measures of one final model (see the module docstring).

    Arguments:
        kernel: Head weights, shape ``(features, num_classes)``.
        predicted: Predicted class of every test image.
        labels: True class of every test image.
        first_classes: The first experience's classes.
        num_classes: Number of classes.

    Returns:
        ``{"norm_ratio", "first_share", "top_share", "entropy", "first_accuracy",
        "later_accuracy"}``.
    """
    first = np.isin(np.arange(num_classes), first_classes)
    norms = np.linalg.norm(kernel, axis=0)
    share = np.bincount(predicted, minlength=num_classes) / len(predicted)
    nonzero = share[share > 0]
    per_class = np.array([np.mean(predicted[labels == c] == c) for c in range(num_classes)])
    return {
        "norm_ratio": float(norms[first].mean() / norms[~first].mean()),
        "first_share": float(share[first].sum()),
        "top_share": float(share.max()),
        "entropy": float(-(nonzero * np.log(nonzero)).sum() / np.log(num_classes)),
        "first_accuracy": float(per_class[first].mean()),
        "later_accuracy": float(per_class[~first].mean()),
    }


def run_seed(seed: int) -> dict:
    base = ExperimentConfig()  # the main job's data, stream and training
    config = dataclasses.replace(base.training, seed=seed)
    data = load_dataset(base.dataset, image_size=base.image_size, seed=seed)
    scenario = make_scenario(
        data.x_train,
        data.y_train,
        name=base.scenario,
        x_test=data.x_test,
        y_test=data.y_test,
        n_experiences=base.experiences,
        seed=seed,
    )
    weights, _ = train_first_experience(scenario, config)
    features = extract_features(scenario, weights, config=config)
    first_classes = np.unique(scenario[0].y_train)
    record = {"seed": seed, "first_classes": first_classes.tolist(), "variants": {}}
    for name, variant, changes in VARIANTS:
        model = run_stream(
            features,
            variant,
            first_weights=weights,
            config=dataclasses.replace(config, **changes),
        ).model
        predicted = np.argmax(model.predict(scenario.x_test, verbose=0), axis=-1)
        record["variants"][name] = calibration(
            model.head.kernel.numpy(),
            predicted,
            scenario.y_test,
            first_classes,
            scenario.num_classes,
        )
        logger.info("seed %d %s: %s", seed, name, record["variants"][name])
    return record


def table(records: list[dict]) -> tuple[str, dict]:
    summary, rows = {}, []
    for name in records[0]["variants"]:
        summary[name] = {
            key: common.stats([r["variants"][name][key] for r in records])
            for key, _, _ in METRICS
        }
        rows.append(
            [
                name,
                *[
                    f"{fmt.format(summary[name][key]['mean'])} "
                    f"({fmt.format(min(summary[name][key]['values']))}-"
                    f"{fmt.format(max(summary[name][key]['values']))})"
                    for key, _, fmt in METRICS
                ],
            ]
        )
    headers = ["variant", *[title for _, title, _ in METRICS]]
    return format_table(headers, rows), summary


def main(argv=None) -> int:
    args, records, start = run_digits_seeds(
        run_seed,
        argv,
        description=__doc__.splitlines()[0],
        name="calibration",
        settings={"variants": [[n, repr(v), c] for n, v, c in VARIANTS]},
    )
    text, summary = table(records)
    meta = common.run_meta(start)
    body = "\n".join(
        [
            f"Written by `benchmarks/calibration.py` from the code with source hash "
            f"`{meta['code']}`: `larq-cwr run`'s default digits stream, seeds "
            f"{args.seeds}, mean (min-max) over seeds of each final model's measures "
            "(definitions in the script's docstring).",
            "",
            text,
        ]
    )
    write_json(
        {"seeds": args.seeds, "summary": summary, "records": records, **meta},
        args.results / "calibration.json",
    )
    replace_block(
        args.doc,
        body,
        marker=MARKER,
        end=END,
        before="## Split-CIFAR-10 NC with 1-bit memory and trained blocks",
    )
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
