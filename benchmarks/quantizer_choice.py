"""Does TensorFlow's zero-exact fake-quant op change CWR* accuracy? (METHOD §3)

`tf.quantization.fake_quant_with_min_max_vars` nudges the range so that 0 is a grid
point (and converts to a builtin TFLite op); METHOD §3's grid starts at the range's
minimum. This runs the hybrid CWR* head update with both on sklearn digits (5
experiences x 2 classes, bnn32 at 16 px, several seeds; every variant of a seed shares
the first-experience network) and reports final accuracy per variant.

    python benchmarks/quantizer_choice.py [--seeds 0 1 2 3 4]

Writes `benchmarks/results/quantizer_choice.json` and `docs/quantization.md`'s table.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow)

import numpy as np

from larq_cwr.datasets import load_digits
from larq_cwr.experiment import (
    TrainingConfig,
    Variant,
    extract_features,
    run_stream,
    train_first_experience,
    versions,
)
from larq_cwr.reporting import format_table, write_json
from larq_cwr.scenarios import nc_scenario

ROOT = pathlib.Path(__file__).resolve().parents[1]
BITS = ((8, 16), (8, 8), (4, 16))


def variants():
    for forward_bits, update_bits in BITS:
        plain = Variant.cwr(forward_bits, update_bits)
        yield plain
        yield dataclasses.replace(plain, name=plain.name + "_zero_exact", zero_exact=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--results", type=pathlib.Path, default=ROOT / "benchmarks" / "results"
    )
    parser.add_argument(
        "--doc", type=pathlib.Path, default=ROOT / "docs" / "quantization.md"
    )
    args = parser.parse_args(argv)
    data = load_digits(image_size=16)
    finals: dict[str, list[float]] = {}
    for seed in args.seeds:
        scenario = nc_scenario(
            data.x_train, data.y_train, data.x_test, data.y_test, n_experiences=5, seed=seed
        )
        config = TrainingConfig(seed=seed)
        first_weights, _ = train_first_experience(scenario, config)
        features = extract_features(scenario, first_weights, config)
        for variant in (Variant.cwr(), *variants()):
            result = run_stream(features, first_weights, variant, config)
            finals.setdefault(variant.name, []).append(result.accuracy.final_accuracy())
    rows = []
    for forward_bits, update_bits in BITS:
        name = Variant.cwr(forward_bits, update_bits).name
        plain, zero = np.array(finals[name]), np.array(finals[name + "_zero_exact"])
        rows.append(
            [
                f"{forward_bits}/{update_bits}",
                100 * plain.mean(),
                100 * zero.mean(),
                100 * np.abs(zero - plain).max(),
                100 * np.abs(zero - plain).mean(),
            ]
        )
    table = format_table(
        [
            "bits (forward/update)",
            "METHOD §3 grid (%)",
            "zero-exact TF op (%)",
            "max |diff| (pp)",
            "mean |diff| (pp)",
        ],
        rows,
    )
    write_json(
        {"seeds": args.seeds, "final_accuracy": finals, "versions": versions()},
        args.results / "quantizer_choice.json",
    )
    text = args.doc.read_text() if args.doc.exists() else ""
    marker = "<!-- quantizer_choice table -->"
    head = text.split(marker)[0] if marker in text else text
    float_mean = 100 * np.mean(finals["cwr_float"])
    args.doc.write_text(
        f"{head}{marker}\nFinal accuracy on all classes, sklearn digits NC 5x2, bnn32 16 px, seeds "
        f"{args.seeds} (mean; float CWR*: {float_mean:.2f}%). Written by "
        f"`benchmarks/quantizer_choice.py`.\n\n{table}\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
