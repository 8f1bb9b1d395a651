"""Split-CIFAR-10 benchmark: CWR* float vs hybrid vs baselines, NC 5x2 and NI x10.

For each seed: 10% of every experience's training data is held out as validation
(head learning rates are tuned there, never on test); the first experience trains the
`bnn32` binary network (float, Adam); every variant of the seed then starts from that
same network and learns the later experiences on its frozen features:

- float CWR*; hybrid 8/16, 8/8 nearest and 8/8 stochastic on the zero-exact grid
  (default) and on the paper grid: CWR* learning rate tuned for float CWR* on
  validation, shared by the hybrid variants; and the same at METHOD's reference lr;
- naive head fine-tuning (lower bound), its own tuned learning rate;
- joint training of the whole network on all training data (upper bound);
- the linear ceiling: a softmax classifier trained on all classes' frozen features.

It also times a hybrid 8/16 train step against a float one, interleaved in one process.
Results: `benchmarks/results/split_cifar10*.json` (per seed and scenario, reused only
when written by the same code with the same settings, see `common.cached`) and
`docs/benchmarks.md`.

    python benchmarks/split_cifar10.py [--data PATH] [--seeds 0 1 2]

Skips (exit 0) when the CIFAR-10 data is absent. Report results as "CIFAR-10 (JPEG
copy)" when run on the JPEG tarball.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import pathlib
import sys
import time

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
import tensorflow as tf

from larq_cwr.experiment import (
    NAIVE,
    TrainingConfig,
    Variant,
    build_model,
    load_architecture_weights,
    run_stream,
    train_joint,
)
from larq_cwr.reporting import format_table, write_json
from larq_cwr.scenarios import make_scenario

LEARNING_RATES = (0.0025, 0.01, 0.04, 0.16)
REFERENCE_LEARNING_RATE = 0.0025  # METHOD §4's reference default
VARIANTS = tuple(
    Variant.cwr(*bits, rounding=rounding, grid=grid)
    for grid in ("zero_exact", "paper")
    for bits, rounding in (
        ((8, 16), "nearest"),
        ((8, 8), "nearest"),
        ((8, 8), "stochastic"),
    )
)
TARGETS = {"cwr_8_16": 0.005, "cwr_8_8_stochastic": 0.01}  # |mean gap to float|, issue 7
STEP_TIME_TARGETS = {"head": 1.15, "full": 1.05}
SUMMARY_KEYS = (
    "accuracy_all",
    "accuracy_seen",
    "average_accuracy",
    "final_accuracy",
    "forgetting",
)

logger = logging.getLogger("split_cifar10")


def tune_learning_rate(validation, first_weights, variant, config):
    """Head learning rate with the best final validation accuracy (test never used)."""
    scores = {}
    for rate in LEARNING_RATES:
        trial = dataclasses.replace(config, learning_rate=rate)
        result = run_stream(validation, variant, first_weights=first_weights, config=trial)
        scores[rate] = result.accuracy.final_accuracy()
    best = max(scores, key=scores.get)
    logger.info("%s: validation accuracy per lr %s -> %s", variant.name, scores, best)
    return best, scores


def linear_ceiling(features, seed):
    """Softmax classifier on all classes' frozen features (all experiences at once)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate(features.train)
    y = np.concatenate([e.y_train for e in features.scenario.experiences])
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(max_iter=2000, random_state=seed)
    classifier.fit(scaler.transform(x), y)
    return float(
        classifier.score(scaler.transform(features.test), features.scenario.y_test)
    )


def time_head_steps(stream, learning_rate, *, batches=1000, repeats=7):
    """Seconds per train step, float vs hybrid 8/16, interleaved in one process.

    Two measures: the head update alone on features (batch 50), and the whole step as
    the device runs it (frozen backbone forward on images + head update). Median over
    `repeats` interleaved repeats of windows of `batches` head steps and a tenth of
    that many whole steps (100 whole steps, about 5 s: windows of about 1 s clustered
    at 63.5 and 127.6 ms per step on this throttled machine, `step_time.py`).
    """
    features, scenario, config = stream.test, stream.scenario, stream.config
    experience = features.experience(1)
    size = config.batch_size
    names = {"float": Variant.cwr(), "hybrid_8_16": Variant.cwr(8, 16)}
    models = {}
    for name, variant in names.items():
        model = build_model(
            scenario[1].x_train.shape[1:],
            scenario.num_classes,
            config=config,
            variant=variant,
        )
        load_architecture_weights(model, stream.first_weights)
        head = model.upper_model()
        for m in (model, head):
            m.compile(
                tf.keras.optimizers.SGD(learning_rate),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        model.calibrate(scenario[0].x_train[:2000], scenario[0].y_train[:2000])
        head.load_head_state(model)
        models[name] = {
            "head": (head, _batches(experience.x_train, experience.y_train, size, batches)),
            "full": (
                model,
                _batches(scenario[1].x_train, scenario[1].y_train, size, batches // 10),
            ),
        }
    timings = {kind: {name: [] for name in names} for kind in STEP_TIME_TARGETS}
    for repeat in range(repeats + 1):  # the first round traces and warms up
        for kind in STEP_TIME_TARGETS:
            for name in names:
                model, data = models[name][kind]
                start = time.perf_counter()
                model.fit(data, epochs=1, verbose=0)
                steps = batches if kind == "head" else batches // 10
                if repeat:
                    timings[kind][name].append((time.perf_counter() - start) / steps)
    summary = {}
    for kind, values in timings.items():
        float_s, hybrid_s = np.median(values["float"]), np.median(values["hybrid_8_16"])
        summary[kind] = {
            "float_ms": 1000 * float_s,
            "hybrid_8_16_ms": 1000 * hybrid_s,
            "ratio": float(hybrid_s / float_s),
            "samples_ms": {k: [1000 * v for v in vs] for k, vs in values.items()},
        }
    return summary


def _batches(x, y, size, count):
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat()
    return dataset.batch(size, drop_remainder=True).take(count).cache()


def run_seed(data, scenario_name, seed, args):
    stream = common.make_stream(
        data, scenario_name, seed, first_epochs=args.first_epochs, epochs=args.epochs
    )
    config = stream.config
    record = {
        "scenario": scenario_name,
        "seed": seed,
        "class_order": list(stream.scenario.class_order),
        "first_experience_seconds": stream.first_seconds,
    }
    cwr_rate, record["cwr_validation"] = tune_learning_rate(
        stream.validation, stream.first_weights, Variant.cwr(), config
    )
    naive_rate, record["naive_validation"] = tune_learning_rate(
        stream.validation, stream.first_weights, NAIVE, config
    )
    record["learning_rates"] = {"cwr": cwr_rate, "naive": naive_rate}
    for key, rates in (
        ("variants", (cwr_rate, naive_rate)),
        ("variants_reference_lr", (REFERENCE_LEARNING_RATE,) * 2),
    ):
        record[key] = {}
        for variant in (Variant.cwr(), *VARIANTS, NAIVE):
            rate = rates[1] if variant.strategy == "finetune" else rates[0]
            trial = dataclasses.replace(config, learning_rate=rate)
            result = run_stream(
                stream.test, variant, first_weights=stream.first_weights, config=trial
            )
            summary = result.summary()
            record[key][variant.name] = {name: summary[name] for name in SUMMARY_KEYS}
            logger.info(
                "seed %d %s %s %s (lr %g): final %.4f",
                seed,
                scenario_name,
                key,
                variant.name,
                rate,
                summary["final_accuracy"],
            )
    record["linear_ceiling"] = linear_ceiling(stream.test, seed)
    if scenario_name == "nc":
        record["step_time"] = time_head_steps(stream, cwr_rate)
    return record


def joint_seed(data, seed, args):
    """Joint upper bound: the same for NC and NI (all training data at once)."""
    config = TrainingConfig(seed=seed, joint_epochs=args.joint_epochs, backbone="bnn32")
    full = make_scenario(
        data.x_train,
        data.y_train,
        name="ni",
        x_test=data.x_test,
        y_test=data.y_test,
        n_experiences=1,
        seed=seed,
    )
    scenario, _, _ = common.split_validation(full, seed)
    accuracy, seconds = train_joint(scenario, config)
    return {
        "seed": seed,
        "final_accuracy": accuracy,
        "fit_seconds": seconds,
        "epochs": args.joint_epochs,
    }


def aggregate(records, joints, key="variants"):
    table = {}
    for scenario_name in common.SCENARIO_EXPERIENCES:
        rows = [r for r in records if r["scenario"] == scenario_name]
        if not rows:
            continue
        entry = {}
        for name in rows[0][key]:
            entry[name] = common.stats([r[key][name]["final_accuracy"] for r in rows]) | {
                "average_accuracy": common.stats(
                    [r[key][name]["average_accuracy"] for r in rows]
                ),
                "forgetting": common.stats([r[key][name]["forgetting"] for r in rows]),
                "gap_to_float": common.stats(
                    [
                        r[key][name]["final_accuracy"]
                        - r[key]["cwr_float"]["final_accuracy"]
                        for r in rows
                    ]
                ),
            }
        entry["linear_ceiling"] = common.stats([r["linear_ceiling"] for r in rows])
        entry["joint"] = common.stats([j["final_accuracy"] for j in joints])
        table[scenario_name] = entry
    return table


TITLES = {
    "variants": "head learning rate tuned on validation",
    "variants_reference_lr": (
        f"METHOD §4 reference head learning rate {REFERENCE_LEARNING_RATE}"
    ),
}
LABELS = {"nc": "NC, 5 experiences x 2 classes", "ni": "NI, 10 experiences x all classes"}
BOUNDS = {
    "linear_ceiling": "linear ceiling (frozen features)",
    "joint": "joint (upper bound)",
}


def markdown_tables(tables):
    lines = []
    headers = ["strategy", "final acc (%)", "per seed", "avg acc (%)", "forgetting (pp)"]
    headers.append("vs float (pp)")
    for key, table in tables.items():
        for scenario_name, entry in table.items():
            lines += [f"## Split-CIFAR-10 {LABELS[scenario_name]}: {TITLES[key]}", ""]
            rows = []
            for name, stats in entry.items():
                if name in BOUNDS:
                    rows.append([BOUNDS[name], common.percent(stats), _seeds(stats)])
                    rows[-1] += ["-", "-", "-"]
                    continue
                gap = "-" if name == "cwr_float" else common.percent(stats["gap_to_float"])
                rows.append(
                    [
                        name,
                        common.percent(stats),
                        _seeds(stats),
                        common.percent(stats["average_accuracy"]),
                        common.percent(stats["forgetting"]),
                        gap,
                    ]
                )
            lines += [format_table(headers, rows), ""]
    return lines


def _seeds(stats):
    return " / ".join(f"{100 * v:.1f}" for v in stats["values"])


def target_lines(tables, timing):
    lines = ["## Targets", ""]
    for key, table in tables.items():
        entry = table.get("nc")
        if not entry:
            continue
        for name, limit in TARGETS.items():
            gap = entry[name]["gap_to_float"]["mean"]
            verdict = "met" if abs(gap) <= limit else "not met"
            lines.append(
                f"- NC, {TITLES[key]}: {name} {100 * gap:+.2f} pp vs float CWR* (mean "
                f"over seeds; target within {100 * limit:g} pp: {verdict})."
            )
    for kind, limit in STEP_TIME_TARGETS.items():
        ratios = [t[kind]["ratio"] for t in timing]
        if ratios:
            what = "head update on features" if kind == "head" else "frozen backbone + head"
            verdict = "met" if np.mean(ratios) <= limit else "not met"
            per_seed = ", ".join(f"{r:.2f}" for r in ratios)
            lines.append(
                f"- Step time hybrid 8/16 / float, {what}: {np.mean(ratios):.2f} (per "
                f"seed {per_seed}; target at most {limit}: {verdict})."
            )
    return lines + [""]


def timing_lines(timing, seeds):
    if not timing:
        return []
    rows = []
    for seed, t in zip(seeds, timing):
        for kind, label in (
            ("head", "head update on features"),
            ("full", "backbone + head"),
        ):
            rows.append(
                [
                    seed,
                    label,
                    f"{t[kind]['float_ms']:.3f}",
                    f"{t[kind]['hybrid_8_16_ms']:.3f}",
                    f"{t[kind]['ratio']:.2f}",
                ]
            )
    title = "## Train step time, hybrid 8/16 vs float (same process, interleaved, median)"
    headers = ["seed", "step", "float (ms)", "hybrid 8/16 (ms)", "ratio"]
    return [title, "", format_table(headers, rows), ""]


def write_markdown(tables, timing, args, meta):
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/split_cifar10.py` from the code with source hash "
        f"`{meta['code']}`; do not edit by hand. Data: CIFAR-10 (JPEG copy). Backbone "
        f"`bnn32` trained on each seed's first experience ({args.first_epochs} epochs, "
        f"Adam); later experiences {args.epochs} epochs, head-only SGD, batch 50; head "
        "learning rate tuned per seed on a "
        f"{int(common.VALIDATION_FRACTION * 100)}% validation split of the training data "
        f"from {list(LEARNING_RATES)} (float CWR*, shared by the hybrid variants; naive "
        f"tuned separately). Seeds {args.seeds}; mean ± std (pp). Variants without a "
        "suffix quantize on the zero-exact grid (the default, METHOD §3); `_paper` on the "
        f"paper grid. Joint: whole network on all training data, {args.joint_epochs} "
        "epochs. Linear ceiling: logistic regression on all classes' frozen "
        "first-experience features.",
        "",
        *markdown_tables(tables),
        *target_lines(tables, timing),
        *timing_lines(timing, args.seeds),
        f"Versions: {meta['versions']}. Machine: {meta['machine']}. This invocation took "
        f"{meta['seconds'] / 60:.0f} min; per-seed records in `benchmarks/results/` are "
        "reused only when the same code wrote them with the same settings.",
        "",
    ]
    args.doc.write_text("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--scenarios",
        nargs="+",
        choices=tuple(common.SCENARIO_EXPERIENCES),
        default=list(common.SCENARIO_EXPERIENCES),
    )
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--joint-epochs", type=int, default=2)
    parser.add_argument("--results", type=pathlib.Path, default=common.RESULTS)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "benchmarks.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        print(f"split_cifar10: skipped, no CIFAR-10 data at {args.data}")
        return 0
    start = time.perf_counter()
    data = common.load_cifar(args.data)
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {
        "first_epochs": args.first_epochs,
        "epochs": args.epochs,
        "learning_rates": list(LEARNING_RATES),
        "variants": [v.name for v in VARIANTS],
        "validation_fraction": common.VALIDATION_FRACTION,
        "data": args.data.name,
    }
    records, joints = [], []
    for seed in args.seeds:  # a seed's runs together: partial runs stay usable
        for name in args.scenarios:
            records.append(
                common.cached(
                    args.results / f"split_cifar10_{name}_seed{seed}.json",
                    settings,
                    lambda name=name, seed=seed: run_seed(data, name, seed, args),
                )
            )
        joints.append(
            common.cached(
                args.results / f"split_cifar10_joint_seed{seed}.json",
                {**settings, "joint_epochs": args.joint_epochs},
                lambda seed=seed: joint_seed(data, seed, args),
            )
        )
    tables = {key: aggregate(records, joints, key) for key in TITLES}
    timing = [r["step_time"] for r in records if "step_time" in r]
    meta = common.run_meta(start)
    write_json(
        {
            "settings": {
                **settings,
                "joint_epochs": args.joint_epochs,
                "seeds": args.seeds,
            },
            "summary": tables,
            "step_time": timing,
            "records": records,
            "joint": joints,
            **meta,
        },
        args.results / "split_cifar10.json",
    )
    write_markdown(tables, timing, args, meta)
    print(args.doc.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
