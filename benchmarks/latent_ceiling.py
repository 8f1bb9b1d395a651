"""How far latent replay can go on Split-CIFAR-10's first-experience backbone.

Latent replay trains only what lies above the latent layer. Whatever the memory, its
policy or its bit width, it cannot beat the same trainable part trained **jointly** on
every class's latents (an unlimited memory, float weights, Adam): that accuracy is the
ceiling of every latent-replay row of `split_cifar10_replay.py`. This script measures it
per seed, on the network that script starts from (`bnn32_norm` trained on the first
experience's two classes, the same settings and code path), for:

- the pooled features frozen, a linear classifier on top (what the frozen-block replay
  rows train; their latents are the input of the last 2 blocks, which stay frozen);
- the last 2 binary blocks trained (the trained-block rows' split), and the last 4;
- float latents, and 1-bit latents (signs, as a 1-bit memory stores them and as
  `LatentBinarization` then feeds live data) at the same splits.

Each ceiling trains for `--epochs` epochs (Adam, `--learning-rate`, batch `--batch`) on
all the stream's training parts; the epoch with the best validation accuracy gives the
test accuracy reported. The table sets them beside 85% of joint training of the whole
network (issue 9's target), read from `results/split_cifar10_replay.json` (with the
source hash it was computed at).

Results: `benchmarks/results/latent_ceiling*.json` (code-keyed, `common.cached`) and
the table in `docs/replay.md`.

    python benchmarks/latent_ceiling.py [--seeds 0 1 2]

Skips (exit 0) when the CIFAR-10 data is absent.
"""

from __future__ import annotations

import argparse
import json
import logging
import pathlib
import time

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
import tensorflow as tf
from docblock import replace_block

from larq_cwr.backbones import block_input_layer, split_backbone
from larq_cwr.experiment import build_model, load_architecture_weights
from larq_cwr.reporting import format_table, write_json

MARKER = "<!-- latent_ceiling table -->"
END = "<!-- end latent_ceiling table -->"
BACKBONE = "bnn32_norm"
REPLAY_BLOCKS = 2  # split_cifar10_replay.py's latent layer: input of the last 2 blocks
JOINT_TARGET = 0.85  # issue 9: CWR* + 1-bit replay at >= 85% of joint
REPLAY_RESULTS = common.RESULTS / "split_cifar10_replay.json"
# (label, trainable binary blocks above the latent layer, latents as signs)
CEILINGS = (
    ("linear on frozen features, float latents", 0, False),
    ("linear on frozen features, 1-bit latents", 0, True),
    ("last 2 blocks trained, float latents", 2, False),
    ("last 2 blocks trained, 1-bit latents", 2, True),
    ("last 4 blocks trained, float latents", 4, False),
    ("last 4 blocks trained, 1-bit latents", 4, True),
)

logger = logging.getLogger("latent_ceiling")


def signs(latents: np.ndarray) -> np.ndarray:
    """As `LatentBinarization` and a 1-bit memory give them back (0 maps to +1)."""
    return np.where(latents >= 0, 1.0, -1.0).astype(np.float32)


class Splits:
    """The first-experience network cut at the input of its last 4 blocks, with the
    parts above shared, so every ceiling starts from the same weights."""

    def __init__(self, stream) -> None:
        self.stream = stream
        shape = stream.scenario[0].x_train.shape[1:]
        self.model = build_model(shape, stream.scenario.num_classes, config=stream.config)
        self.reset()
        lower = self.model.latent_extractor  # image -> input of the last 2 blocks
        cut = block_input_layer(lower, 4 - REPLAY_BLOCKS)
        self.bottom, self.middle = split_backbone(lower, cut)
        self.top = self.model.upper_features  # last 2 blocks -> pooled features

    def reset(self) -> None:
        load_architecture_weights(self.model, self.stream.first_weights)

    def latents(self, x: np.ndarray) -> np.ndarray:
        """Inputs of the last 4 blocks (inference mode)."""
        return self.bottom.predict(x, batch_size=256, verbose=0)

    def trainable_part(self, blocks: int, binary: bool) -> tuple[tf.keras.Model, list]:
        """(model from latents to the pooled features, the frozen part before it)."""
        if blocks == 4:
            inputs = tf.keras.Input(self.middle.input_shape[1:])
            return tf.keras.Model(inputs, self.top(self.middle(inputs))), []
        # Above the replay split: the middle blocks run frozen (and see signs when the
        # memory is 1-bit, as `LatentBinarization` feeds them at that split).
        frozen = [self.middle] + ([signs] if binary else [])
        inputs = tf.keras.Input(self.top.input_shape[1:])
        return tf.keras.Model(inputs, self.top(inputs)), frozen


def run_frozen(frozen: list, latents: np.ndarray) -> np.ndarray:
    for part in frozen:
        if isinstance(part, tf.keras.Model):
            latents = part.predict(latents, batch_size=256, verbose=0)
        else:
            latents = part(latents)
    return latents


def ceiling(splits: Splits, data: dict, *, blocks: int, binary: bool, args) -> dict:
    """Train the part above the latent layer on every class; test at the best
    validation epoch."""
    tf.keras.utils.set_random_seed(splits.stream.config.seed)
    splits.reset()
    part, frozen = splits.trainable_part(blocks, binary)
    inputs = {}
    for key, (x, _) in data.items():
        # At 4 blocks the latents are the input of the last 4; a 1-bit memory there
        # stores their signs. Otherwise run the frozen middle blocks once.
        x = signs(x) if binary and blocks == 4 else x
        inputs[key] = run_frozen(frozen, x)
    if blocks == 0:  # the frozen blocks and pooling, then a linear classifier
        inputs = {k: part.predict(x, batch_size=256, verbose=0) for k, x in inputs.items()}
        features = tf.keras.Input(part.output_shape[1:])
        part = tf.keras.Model(features, features)
    for layer in part.layers:
        layer.trainable = True
    classes = splits.stream.scenario.num_classes
    logits = tf.keras.layers.Dense(classes, name="ceiling_head")(part.output)
    model = tf.keras.Model(part.input, logits)
    model.compile(
        tf.keras.optimizers.Adam(args.learning_rate),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    curve, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        model.fit(
            inputs["train"],
            data["train"][1],
            batch_size=args.batch,
            epochs=1,
            shuffle=True,
            verbose=0,
        )
        scores = {}
        for key in ("validation", "test"):
            predicted = model.predict(inputs[key], batch_size=256, verbose=0).argmax(1)
            scores[key] = float(np.mean(predicted == data[key][1]))
        curve.append(scores)
        logger.info("  epoch %d: %s", epoch + 1, scores)
    best = max(range(len(curve)), key=lambda i: curve[i]["validation"])
    return {
        "test_accuracy": curve[best]["test"],
        "validation_accuracy": curve[best]["validation"],
        "best_epoch": best + 1,
        "curve": curve,
        "seconds": time.perf_counter() - start,
    }


def run_seed(cifar, seed: int, args) -> dict:
    stream = common.make_stream(
        cifar,
        "nc",
        seed,
        first_epochs=args.first_epochs,
        epochs=args.replay_epochs,
        backbone=BACKBONE,
        trainable_blocks=REPLAY_BLOCKS,
        learning_rate=args.replay_learning_rate,
        block_learning_rate=args.block_learning_rate,
    )
    splits = Splits(stream)
    scenario = stream.scenario
    data = {
        "train": (
            splits.latents(np.concatenate([e.x_train for e in scenario.experiences])),
            np.concatenate([e.y_train for e in scenario.experiences]),
        ),
        "validation": (splits.latents(stream.x_val), stream.y_val),
        "test": (splits.latents(scenario.x_test), scenario.y_test),
    }
    record = {
        "seed": seed,
        "class_order": list(scenario.class_order),
        "first_experience_seconds": stream.first_seconds,
        "ceilings": {},
    }
    for label, blocks, binary in CEILINGS:
        logger.info("seed %d: %s", seed, label)
        record["ceilings"][label] = ceiling(
            splits, data, blocks=blocks, binary=binary, args=args
        )
        logger.info("  test %.4f", record["ceilings"][label]["test_accuracy"])
    return record


def replay_reference() -> tuple[dict[int, dict], str | None]:
    """Per seed: joint accuracy and the best 1-bit replay row, from the replay table's
    results (with the code hash they were computed at)."""
    if not REPLAY_RESULTS.exists():
        return {}, None
    stored = json.loads(REPLAY_RESULTS.read_text())
    reference = {}
    for record in stored["records"]:
        one_bit = [
            v["final_accuracy"] for name, v in record["variants"].items() if "1bit" in name
        ]
        joint = (record.get("joint") or {}).get("final_accuracy")
        reference[record["seed"]] = {
            "joint": joint,
            "best_1bit": max(one_bit, default=None),
        }
    return reference, stored.get("code")


def table(records: list[dict], args) -> str:
    reference, reference_code = replay_reference()
    seeds = [r["seed"] for r in records]
    rows = []
    for label, _, _ in CEILINGS:
        values = [r["ceilings"][label]["test_accuracy"] for r in records]
        rows.append(
            [label] + [f"{100 * v:.1f}" for v in values] + [f"{100 * np.mean(values):.1f}"]
        )

    def reference_row(name, key, scale=1.0):
        values = [(reference.get(s) or {}).get(key) for s in seeds]
        known = [v for v in values if v is not None]
        cells = ["-" if v is None else f"{100 * scale * v:.1f}" for v in values]
        mean = f"{100 * scale * np.mean(known):.1f}" if len(known) == len(values) else "-"
        return [name] + cells + [mean]

    rows.append(reference_row("best 1-bit replay row reached", "best_1bit"))
    rows.append(reference_row("85% of joint (issue 9's target)", "joint", JOINT_TARGET))
    rows.append(reference_row("joint training of the whole network", "joint"))
    lines = [
        f"Written by `benchmarks/latent_ceiling.py` from the code with source hash "
        f"`{common.code_hash()}`. Split-CIFAR-10 (JPEG copy) NC 5x2, `{BACKBONE}` "
        f"trained on the first experience ({args.first_epochs} epochs, as in "
        "`split_cifar10_replay.py`); test accuracy (%) over all 10 classes of the part "
        "above the latent layer trained jointly on every class's latents (Adam "
        f"{args.learning_rate}, batch {args.batch}, {args.epochs} epochs, the epoch "
        "with the best validation accuracy). This is what an unlimited replay memory "
        "could reach at that split. The last three rows come from "
        f"`split_cifar10_replay.py` (source hash `{reference_code}`).",
        "",
        format_table(["ceiling"] + [f"seed {s}" for s in seeds] + ["mean"], rows),
        "",
    ]
    for record in records:
        target = (reference.get(record["seed"]) or {}).get("joint")
        ceilings = record["ceilings"]
        above = [
            label
            for label, _, _ in CEILINGS
            if target is not None
            and ceilings[label]["test_accuracy"] >= JOINT_TARGET * target
        ]
        seconds = ", ".join(
            f"{label.split(',')[0]} {ceilings[label]['seconds']:.0f} s"
            for label, _, binary in CEILINGS
            if not binary
        )
        lines.append(
            f"- Seed {record['seed']}: at or above 85% of joint: "
            f"{'; '.join(above) if above else 'none'}. First experience "
            f"{record['first_experience_seconds']:.0f} s; ceilings (float latents) "
            f"{seconds}."
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    # The first network's settings: split_cifar10_replay.py's defaults.
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--replay-epochs", type=int, default=5)
    parser.add_argument("--replay-learning-rate", type=float, default=0.04)
    parser.add_argument("--block-learning-rate", type=float, default=0.009)
    # The ceilings' training.
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--results", type=pathlib.Path, default=common.RESULTS)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "replay.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        print(f"latent_ceiling: skipped, no CIFAR-10 data at {args.data}")
        return 0
    start = time.perf_counter()
    cifar = common.load_cifar(args.data)
    settings = {
        key: value
        for key, value in vars(args).items()
        if key not in ("data", "seeds", "results", "doc")
    } | {"data": args.data.name}
    records = common.seed_records(
        lambda seed: run_seed(cifar, seed, args),
        args.seeds,
        results=args.results,
        name="latent_ceiling",
        settings=settings,
    )
    text = table(records, args)
    write_json(
        {"settings": settings, "records": records, **common.run_meta(start)},
        args.results / "latent_ceiling.json",
    )
    replace_block(args.doc, text, marker=MARKER, end=END)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
