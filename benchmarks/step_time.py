"""Hybrid 8/16 vs float train-step time on Split-CIFAR-10 NC, with long timing windows.

Windows of 20 whole steps (backbone + head), about 1 s, clustered at 63.5 and 127.6
ms per step on this shared machine whatever the variant (it looks like CPU-quota
throttling), so a ratio of two of them moved by up to 0.3 from seed to seed. This
script times the same two steps as `split_cifar10.py` with
`split_cifar10.time_head_steps` (the head update on features, and the frozen backbone +
head as the device runs it) on the same cached first-experience networks, with
`--batches` head steps and a tenth of that many whole steps per window (100 whole
steps, about 5 s, by default), interleaved, median over `--repeats` repeats, without
the rest of `split_cifar10.py`'s two hours. The
learning rate does not change the work of a step; it is METHOD's reference 0.0025.

Results: `benchmarks/results/step_time*.json` (code-keyed, `common.cached`) and the
table in `docs/quantization.md`.

    python benchmarks/step_time.py [--data PATH] [--seeds 0 1 2]

Skips (exit 0) when the CIFAR-10 data is absent.
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
from docblock import replace_block
from split_cifar10 import REFERENCE_LEARNING_RATE, STEP_TIME_TARGETS, time_head_steps

from larq_cwr.experiment import versions
from larq_cwr.reporting import format_table, write_json

MARKER = "<!-- step_time table -->"
END = "<!-- end step_time table -->"
LABELS = {"head": "head update on features", "full": "frozen backbone + head"}

logger = logging.getLogger("step_time")


def run_seed(data, seed: int, args) -> dict:
    stream = common.make_stream(
        data, "nc", seed, first_epochs=args.first_epochs, epochs=args.epochs
    )
    timing = time_head_steps(
        stream, REFERENCE_LEARNING_RATE, batches=args.batches, repeats=args.repeats
    )
    logger.info(
        "seed %d: %s", seed, {kind: round(t["ratio"], 3) for kind, t in timing.items()}
    )
    return {"seed": seed, **timing}


def table(records: list[dict], args) -> str:
    rows = []
    for record in records:
        for kind, label in LABELS.items():
            t = record[kind]
            rows.append(
                [
                    record["seed"],
                    label,
                    f"{t['float_ms']:.3f}",
                    f"{t['hybrid_8_16_ms']:.3f}",
                    f"{t['ratio']:.3f}",
                ]
            )
    lines = [
        f"Written by `benchmarks/step_time.py` from the code with source hash "
        f"`{common.code_hash()}`. Split-CIFAR-10 NC, `bnn32` from each seed's first "
        f"experience, batch 50; per repeat {args.batches} head steps and "
        f"{args.batches // 10} whole steps per variant, interleaved; median over "
        f"{args.repeats} repeats (after a warm-up round). Wall-clock time on "
        f"{os.cpu_count()} x86 CPU cores, not a device.",
        "",
        format_table(
            ["seed", "step", "float (ms)", "hybrid 8/16 (ms)", "hybrid / float"], rows
        ),
        "",
    ]
    for kind, limit in STEP_TIME_TARGETS.items():
        ratios = [r[kind]["ratio"] for r in records]
        mean = float(np.mean(ratios))
        lines.append(
            f"- {LABELS[kind]}: mean ratio {mean:.3f} (per seed "
            f"{', '.join(f'{x:.3f}' for x in ratios)}; target at most {limit:.2f}: "
            f"{'met' if mean <= limit else 'not met'})."
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "quantization.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    if args.batches < 10:
        parser.error("--batches must be at least 10")
    if not args.data.exists():
        print(f"step_time: skipped, no CIFAR-10 data at {args.data}")
        return 0
    data = common.load_cifar(args.data)
    settings = {
        "first_epochs": args.first_epochs,
        "epochs": args.epochs,
        "batches": args.batches,
        "repeats": args.repeats,
        "data": args.data.name,
    }
    records = [
        common.cached(
            common.RESULTS / f"step_time_seed{seed}.json",
            {**settings, "seed": seed},
            lambda seed=seed: run_seed(data, seed, args),
        )
        for seed in args.seeds
    ]
    text = table(records, args)
    write_json(
        {"records": records, "versions": versions(), "code": common.code_hash()},
        common.RESULTS / "step_time.json",
    )
    replace_block(
        args.doc, text, marker=MARKER, end=END, before="<!-- hybrid_ablation table -->"
    )
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
