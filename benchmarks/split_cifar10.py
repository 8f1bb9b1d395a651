"""Split-CIFAR-10 benchmark: CWR* float vs hybrid vs baselines, NC 5x2 and NI x10.

For each seed: 10% of every experience's training data is held out as validation
(head learning rates are tuned there, never on test); the first experience trains the
`bnn32` binary network (float, Adam); every variant of the seed then starts from that
same network and learns the later experiences on its frozen features:

- float CWR*, hybrid 8/16, hybrid 8/8 (nearest and stochastic rounding): CWR*
  learning rate tuned for float CWR* on validation, shared by the hybrid variants;
- naive head fine-tuning (lower bound), its own tuned learning rate;
- joint training of the whole network on all training data (upper bound);
- the linear ceiling: a softmax classifier trained on all classes' frozen features.

It also times a hybrid head train step against a float one in the same process.
Results: `benchmarks/results/split_cifar10.json` (and one JSON per seed and scenario,
reused when rerun with the same settings) and `docs/benchmarks.md`.

    python benchmarks/split_cifar10.py [--data PATH] [--seeds 0 1 2]

Skips (exit 0) when the CIFAR-10 data is absent. Report results as "CIFAR-10 (JPEG
copy)" when run on the JPEG tarball.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow)

import numpy as np
import tensorflow as tf

from larq_cwr.datasets import load_cifar10
from larq_cwr.experiment import (
    NAIVE,
    FrozenFeatures,
    TrainingConfig,
    Variant,
    build_model,
    extract_features,
    run_stream,
    train_first_experience,
    train_joint,
    versions,
)
from larq_cwr.reporting import format_table, write_json
from larq_cwr.scenarios import make_scenario

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
RESULTS = ROOT / "benchmarks" / "results"
DOC = ROOT / "docs" / "benchmarks.md"
VALIDATION_FRACTION = 0.1
LEARNING_RATES = (0.0025, 0.01, 0.04, 0.16)
REFERENCE_LEARNING_RATE = 0.0025  # METHOD §4's reference default
SCENARIOS = {"nc": 5, "ni": 10}
VARIANTS = (
    Variant.cwr(),
    Variant.cwr(8, 16),
    Variant.cwr(8, 8),
    Variant.cwr(8, 8, "stochastic"),
)

logger = logging.getLogger("split_cifar10")


def split_validation(scenario, seed):
    """Scenario of the training parts, and the pooled validation set."""
    parts = [
        e.split_validation(VALIDATION_FRACTION, seed=seed) for e in scenario.experiences
    ]
    train = dataclasses.replace(scenario, experiences=tuple(p[0] for p in parts))
    x_val = np.concatenate([p[1][0] for p in parts])
    y_val = np.concatenate([p[1][1] for p in parts])
    return train, x_val, y_val


def tune_learning_rate(validation, first_weights, variant, config):
    """Head learning rate with the best final validation accuracy (test never used)."""
    scores = {}
    for rate in LEARNING_RATES:
        trial = dataclasses.replace(config, learning_rate=rate)
        scores[rate] = run_stream(
            validation, first_weights, variant, trial
        ).accuracy.final_accuracy()
    best = max(scores, key=scores.get)
    logger.info(
        "%s: validation accuracy per learning rate %s -> %s", variant.name, scores, best
    )
    return best, scores


def linear_ceiling(features, seed):
    """Softmax classifier on all classes' frozen features (all experiences at once)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = np.concatenate(features.train)
    y = np.concatenate([e.y_train for e in features.scenario.experiences])
    scaler = StandardScaler().fit(x)
    classifier = LogisticRegression(max_iter=2000, random_state=seed).fit(
        scaler.transform(x), y
    )
    return float(
        classifier.score(scaler.transform(features.test), features.scenario.y_test)
    )


def time_head_steps(features, first_weights, config, *, batches=200, repeats=5):
    """Seconds per head train step, float vs hybrid 8/16, interleaved in one process.

    Two measures: the head update alone on features (batch 50), and the whole step as
    the device runs it (frozen backbone forward on images + head update).
    """
    scenario = features.scenario
    experience = features.experience(1)
    images = scenario[1]
    size = config.batch_size
    timings = {
        "head": {"float": [], "hybrid_8_16": []},
        "full": {"float": [], "hybrid_8_16": []},
    }
    models = {}
    for name, variant in (("float", Variant.cwr()), ("hybrid_8_16", Variant.cwr(8, 16))):
        model = build_model(images.x_train.shape[1:], scenario.num_classes, config, variant)
        model.set_weights(first_weights)
        model.calibrate(
            scenario[0].x_train[:2000], scenario[0].y_train[:2000], batch_size=size
        )
        head = model.head_model()
        for m in (model, head):
            m.compile(
                tf.keras.optimizers.SGD(config.learning_rate),
                tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            )
        models[name] = {
            "head": (head, _batches(experience.x_train, experience.y_train, size, batches)),
            "full": (model, _batches(images.x_train, images.y_train, size, batches // 10)),
        }
    for kind in ("head", "full"):
        for name in models:
            model, data = models[name][kind]
            model.fit(data, epochs=1, verbose=0)  # trace and warm up
    for _ in range(repeats):
        for kind in ("head", "full"):
            for name in models:
                model, data = models[name][kind]
                start = time.perf_counter()
                model.fit(data, epochs=1, verbose=0)
                steps = batches if kind == "head" else batches // 10
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
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(size, drop_remainder=True)
    )
    return dataset.take(count).cache()


def run_seed(data, scenario_name, seed, args):
    config = TrainingConfig(
        seed=seed, first_epochs=args.first_epochs, epochs=args.epochs, backbone="bnn32"
    )
    full = make_scenario(
        scenario_name,
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        n_experiences=SCENARIOS[scenario_name],
        seed=seed,
    )
    scenario, x_val, y_val = split_validation(full, seed)
    record = {
        "scenario": scenario_name,
        "seed": seed,
        "class_order": list(full.class_order),
    }
    first_weights, record["first_experience_seconds"] = first_experience(
        scenario, config, scenario_name
    )
    test_features = extract_features(scenario, first_weights, config)
    extractor = build_model(scenario[0].x_train.shape[1:], scenario.num_classes, config)
    extractor.set_weights(first_weights)
    val_features = extractor.feature_extractor.predict(x_val, batch_size=256, verbose=0)
    validation = FrozenFeatures(
        dataclasses.replace(scenario, x_test=x_val, y_test=y_val),
        test_features.train,
        val_features,
        0.0,
    )
    cwr_rate, record["cwr_validation"] = tune_learning_rate(
        validation, first_weights, Variant.cwr(), config
    )
    naive_rate, record["naive_validation"] = tune_learning_rate(
        validation, first_weights, NAIVE, config
    )
    record["learning_rates"] = {"cwr": cwr_rate, "naive": naive_rate}
    for key, rates in (
        ("variants", (cwr_rate, naive_rate)),
        ("variants_reference_lr", (REFERENCE_LEARNING_RATE,) * 2),
    ):
        record[key] = {}
        for variant in (*VARIANTS, NAIVE):
            rate = rates[1] if variant.strategy == "naive" else rates[0]
            result = run_stream(
                test_features,
                first_weights,
                variant,
                dataclasses.replace(config, learning_rate=rate),
            )
            summary = result.summary()
            record[key][variant.name] = {
                name: summary[name]
                for name in (
                    "accuracy_all",
                    "accuracy_seen",
                    "average_accuracy",
                    "final_accuracy",
                    "forgetting",
                )
            }
            logger.info(
                "seed %d %s %s %s (lr %g): final %.4f",
                seed,
                scenario_name,
                key,
                variant.name,
                rate,
                summary["final_accuracy"],
            )
    record["linear_ceiling"] = linear_ceiling(test_features, seed)
    if scenario_name == "nc":
        record["step_time"] = time_head_steps(
            test_features,
            first_weights,
            dataclasses.replace(config, learning_rate=cwr_rate),
        )
    return record


def first_experience(scenario, config, scenario_name):
    """Train (or reload from the user cache) the first-experience network of a seed."""
    from larq_cwr.datasets import default_cache_dir

    path = (
        default_cache_dir()
        / "benchmarks"
        / (
            f"split_cifar10_{scenario_name}_seed{config.seed}_epochs{config.first_epochs}_"
            f"{'-'.join(map(str, scenario.class_order))}.npz"
        )
    )
    if path.exists():
        with np.load(path) as stored:
            logger.info("reusing first-experience weights %s", path)
            return [stored[f"arr_{i}"] for i in range(len(stored.files) - 1)], float(
                stored["seconds"]
            )
    weights, seconds = train_first_experience(scenario, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, *weights, seconds=seconds)
    return weights, seconds


def joint_seed(data, seed, args):
    """Joint upper bound: the same for NC and NI (all training data at once)."""
    config = TrainingConfig(seed=seed, first_epochs=args.joint_epochs, backbone="bnn32")
    full = make_scenario(
        "ni",
        data.x_train,
        data.y_train,
        data.x_test,
        data.y_test,
        n_experiences=1,
        seed=seed,
    )
    scenario, _, _ = split_validation(full, seed)
    accuracy, seconds = train_joint(scenario, config)
    return {
        "seed": seed,
        "final_accuracy": accuracy,
        "fit_seconds": seconds,
        "epochs": args.joint_epochs,
    }


def cached(path, settings, compute):
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == settings:
            logger.info("reusing %s", path.name)
            return stored["result"]
    result = compute()
    write_json({"settings": settings, "result": result}, path)
    return result


def aggregate(records, joints, key="variants"):
    table = {}
    for scenario_name in SCENARIOS:
        rows = [r for r in records if r["scenario"] == scenario_name]
        if not rows:
            continue
        entry = {}
        for name in rows[0][key]:
            finals = [r[key][name]["final_accuracy"] for r in rows]
            averages = [r[key][name]["average_accuracy"] for r in rows]
            forgetting = [r[key][name]["forgetting"] for r in rows]
            entry[name] = _stats(finals) | {
                "average_accuracy": _stats(averages),
                "forgetting": _stats(forgetting),
            }
        entry["linear_ceiling"] = _stats([r["linear_ceiling"] for r in rows])
        entry["joint"] = _stats([j["final_accuracy"] for j in joints])
        gaps = {
            name: _stats(
                [
                    r[key][name]["final_accuracy"] - r[key]["cwr_float"]["final_accuracy"]
                    for r in rows
                ]
            )
            for name in rows[0][key]
            if name != "cwr_float"
        }
        entry["gap_to_float"] = gaps
        table[scenario_name] = entry
    timing = [r["step_time"] for r in records if "step_time" in r]
    return table, timing


def _stats(values):
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "values": values.tolist(),
    }


def write_markdown(tables, timing, args, seeds, meta):
    lines = [
        "# Benchmarks",
        "",
        "Written by `benchmarks/split_cifar10.py`; do not edit by hand. Data: CIFAR-10 (JPEG",
        f"copy). Backbone `bnn32` trained on each seed's first experience ({args.first_epochs} epochs, Adam);",
        f"later experiences {args.epochs} epochs, head-only SGD, batch 50; head learning rate tuned per seed on a",
        f"{int(VALIDATION_FRACTION * 100)}% validation split of the training data from {list(LEARNING_RATES)}",
        f"(float CWR*, shared by the hybrid variants; naive tuned separately). Seeds {seeds}; mean ± std (pp).",
        f"Joint: whole network on all training data, {args.joint_epochs} epochs. Linear ceiling: logistic",
        "regression on all classes' frozen first-experience features.",
        "",
    ]
    titles = {
        "variants": "head learning rate tuned on validation",
        "variants_reference_lr": f"METHOD §4 reference head learning rate {REFERENCE_LEARNING_RATE}",
    }
    for key, table in tables.items():
        for scenario_name, entry in table.items():
            label = {
                "nc": "NC, 5 experiences x 2 classes",
                "ni": "NI, 10 experiences x all classes",
            }[scenario_name]
            lines += [f"## Split-CIFAR-10 {label}: {titles[key]}", ""]
            rows = []
            for name, stats in entry.items():
                if name in ("linear_ceiling", "joint", "gap_to_float"):
                    continue
                gap = entry["gap_to_float"].get(name)
                rows.append(
                    [
                        name,
                        _pm(stats),
                        _pm(stats["average_accuracy"]),
                        _pm(stats["forgetting"]),
                        _pm(gap) if gap else "-",
                    ]
                )
            rows.append(
                [
                    "linear ceiling (frozen features)",
                    _pm(entry["linear_ceiling"]),
                    "-",
                    "-",
                    "-",
                ]
            )
            rows.append(["joint (upper bound)", _pm(entry["joint"]), "-", "-", "-"])
            lines.append(
                format_table(
                    [
                        "strategy",
                        "final acc (%)",
                        "avg acc (%)",
                        "forgetting (pp)",
                        "vs float (pp)",
                    ],
                    rows,
                )
            )
            lines.append("")
    lines += ["## Targets", ""]
    for key, table in tables.items():
        entry = table.get("nc")
        if not entry:
            continue
        gap_16 = entry["gap_to_float"]["cwr_8_16"]["mean"] * 100
        gap_8s = entry["gap_to_float"]["cwr_8_8_stochastic"]["mean"] * 100
        gap_8 = entry["gap_to_float"]["cwr_8_8"]["mean"] * 100
        lines.append(
            f"- NC, {titles[key]}: hybrid 8/16 {gap_16:+.2f} pp vs float (target within 0.25: "
            f"{'met' if abs(gap_16) <= 0.25 else 'not met'}); 8/8 stochastic {gap_8s:+.2f} pp (target within 1: "
            f"{'met' if abs(gap_8s) <= 1 else 'not met'}); 8/8 nearest {gap_8:+.2f} pp."
        )
    if timing:
        ratios = [t["head"]["ratio"] for t in timing]
        full = [t["full"]["ratio"] for t in timing]
        lines.append(
            f"- Hybrid head step time / float: {np.mean(ratios):.2f} on features (per seed "
            f"{', '.join(f'{r:.2f}' for r in ratios)}), {np.mean(full):.2f} with the frozen backbone "
            f"(target at most 1.15: {'met' if np.mean(ratios) <= 1.15 else 'not met'})."
        )
    lines.append("")
    if timing:
        lines += [
            "## Head train step time, hybrid 8/16 vs float (same process, interleaved, median)",
            "",
        ]
        rows = []
        for index, t in enumerate(timing):
            for kind, label in (
                ("head", "head update on features"),
                ("full", "frozen backbone + head"),
            ):
                rows.append(
                    [
                        seeds[index],
                        label,
                        f"{t[kind]['float_ms']:.3f}",
                        f"{t[kind]['hybrid_8_16_ms']:.3f}",
                        f"{t[kind]['ratio']:.2f}",
                    ]
                )
        lines.append(
            format_table(["seed", "step", "float (ms)", "hybrid 8/16 (ms)", "ratio"], rows)
        )
        lines.append("")
    lines += [
        f"Versions: {meta['versions']}. Machine: {meta['machine']}. This invocation took "
        f"{meta['seconds'] / 60:.0f} min; per-seed records in `benchmarks/results/` are reused when "
        "their settings match (delete them to recompute).",
        "",
    ]
    args.doc.write_text("\n".join(lines))


def _pm(stats):
    return f"{100 * stats['mean']:.2f} ± {100 * stats['std']:.2f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=DEFAULT_DATA)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--scenarios", nargs="+", choices=tuple(SCENARIOS), default=list(SCENARIOS)
    )
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--joint-epochs", type=int, default=2)
    parser.add_argument("--results", type=pathlib.Path, default=RESULTS, help="JSON folder")
    parser.add_argument(
        "--doc", type=pathlib.Path, default=DOC, help="Markdown table to write"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if not args.data.exists():
        print(f"split_cifar10: skipped, no CIFAR-10 data at {args.data}")
        return 0
    start = time.perf_counter()
    data = load_cifar10(args.data)
    args.results.mkdir(parents=True, exist_ok=True)
    settings = {
        "first_epochs": args.first_epochs,
        "epochs": args.epochs,
        "learning_rates": list(LEARNING_RATES),
        "validation_fraction": VALIDATION_FRACTION,
        "data": args.data.name,
    }
    records, joints = [], []
    for (
        seed
    ) in args.seeds:  # a seed's NC, NI and joint runs together: partial runs stay usable
        for scenario_name in args.scenarios:
            records.append(
                cached(
                    args.results / f"split_cifar10_{scenario_name}_seed{seed}.json",
                    settings,
                    lambda: run_seed(data, scenario_name, seed, args),
                )
            )
        joints.append(
            cached(
                args.results / f"split_cifar10_joint_seed{seed}.json",
                {**settings, "joint_epochs": args.joint_epochs},
                lambda: joint_seed(data, seed, args),
            )
        )
    tables = {
        key: aggregate(records, joints, key)[0]
        for key in ("variants", "variants_reference_lr")
    }
    timing = aggregate(records, joints)[1]
    meta = {
        "versions": versions(),
        "seconds": time.perf_counter() - start,
        "machine": f"{__import__('os').cpu_count()} CPU cores",
    }
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
    write_markdown(tables, timing, args, args.seeds, meta)
    print(args.doc.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
