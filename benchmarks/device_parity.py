"""Device parity on CIFAR-10: the Keras model with `CWRStar` vs `DeviceLearner`.

A `bnn32` network (32 px) is trained on the first experience of a Split-CIFAR-10 NC
stream (seed 0, float, Adam, a short budget: parity does not need a good network),
calibrated for the hybrid 8/16 update and exported with `export_for_device`. The four
later experiences (a class-stratified subset of each) are then learned twice, in the
same batch order (`larq_cwr.device.batch_order`), at METHOD's reference learning rate:

- by the Keras model with `CWRStar`: its head path (`upper_model()`, what `larq-cwr run`
  trains on precomputed features) fed the exported LCE backbone's features, and the
  whole model fed the images (Keras' own backbone);
- by `DeviceLearner`, from the exported files alone (LCE backbone, TFLite head).

Reported: the largest difference of the consolidated weights in steps of their 16-bit
grid, their relative L2 difference, and the share of test images on which both predict
the same class (issue 8's targets: within one step on the head path, >= 99% agreement).
Results: `benchmarks/results/device_parity.json` (code-keyed, `common.cached`) and the
table in `docs/device.md`.

    python benchmarks/device_parity.py [--data PATH]

Skips (exit 0) when the CIFAR-10 data is absent.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys
import tempfile

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
import tensorflow as tf
from docblock import replace_block

from larq_cwr import CWRStar
from larq_cwr.device import DeviceLearner, batch_order
from larq_cwr.experiment import TrainingConfig, Variant, build_model, versions
from larq_cwr.export import export_for_device
from larq_cwr.reporting import format_table
from larq_cwr.scenarios import make_scenario

MARKER = "<!-- device_parity table -->"
END = "<!-- end device_parity table -->"
HEADING = "## Parity on CIFAR-10"
LEARNING_RATE, EPOCHS, BATCH_SIZE = 0.0025, 2, 50
AGREEMENT_TARGET = 0.99


def _subset(x, y, per_class: int, seed: int):
    rng = np.random.default_rng(seed)
    keep = np.concatenate(
        [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    )
    keep.sort()
    return x[keep], y[keep]


def _batches(x, y, order):
    """`batch_order`'s batches as one dataset: Keras sees the device's order."""
    index = np.concatenate([b for epoch in order for b in epoch])
    sizes = [len(b) for epoch in order for b in epoch]
    if len(set(sizes[:-1])) > 1:
        raise ValueError("batch_order gave batches of several sizes")
    dataset = tf.data.Dataset.from_tensor_slices((x[index], y[index]))
    return dataset.batch(sizes[0])


def _compile(model):
    model.compile(
        tf.keras.optimizers.SGD(LEARNING_RATE),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def measure(data, args) -> dict:
    scenario = make_scenario(
        data.x_train,
        data.y_train,
        name="nc",
        x_test=data.x_test,
        y_test=data.y_test,
        n_experiences=5,
        seed=0,
    )
    config = TrainingConfig(seed=0, backbone="bnn32")
    tf.keras.utils.set_random_seed(0)
    model = build_model(data.input_shape, 10, config=config, variant=Variant.cwr(8, 16))
    model.compile(
        tf.keras.optimizers.Adam(1e-3),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x0, y0 = _subset(scenario[0].x_train, scenario[0].y_train, args.first_per_class, 0)
    model.fit(
        x0,
        y0,
        batch_size=BATCH_SIZE,
        epochs=args.first_epochs,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y0)],
    )
    model.calibrate(x0, y0, batch_size=BATCH_SIZE)
    folder = pathlib.Path(tempfile.mkdtemp(prefix="device_parity_"))
    model.save(folder / "model.keras")
    export = export_for_device(folder / "model.keras", folder / "export")
    x_test, y_test = _subset(scenario.x_test, scenario.y_test, args.test_per_class, 1)
    results = {}
    for path in ("head", "images"):
        keras = tf.keras.models.load_model(folder / "model.keras")
        keras = _compile(keras.upper_model() if path == "head" else keras)
        learner = DeviceLearner(export.directory)
        for index in range(1, len(scenario)):
            experience = scenario[index]
            x, y = _subset(experience.x_train, experience.y_train, args.per_class, index)
            order = batch_order(len(x), epochs=EPOCHS, batch_size=BATCH_SIZE, seed=index)
            inputs = learner.features(x) if path == "head" else x
            keras.fit(
                _batches(inputs, y, order),
                epochs=1,
                shuffle=False,
                verbose=0,
                callbacks=[CWRStar(keras.head, labels=y)],
            )
            learner.learn_experience(
                x,
                y,
                epochs=EPOCHS,
                batch_size=BATCH_SIZE,
                learning_rate=LEARNING_RATE,
                seed=index,
            )
        kernel = keras.head.consolidated_kernel
        device = learner.state()["consolidated_kernel"]
        step = (max(kernel.max(), 0.0) - min(kernel.min(), 0.0)) / (2**16 - 1)
        test_inputs = learner.features(x_test) if path == "head" else x_test
        keras_classes = keras.predict(test_inputs, verbose=0).argmax(1)
        device_classes = learner.predict(x_test).argmax(1)
        results[path] = {
            "max_difference_in_16bit_steps": float(np.abs(kernel - device).max() / step),
            "relative_l2": float(np.linalg.norm(kernel - device) / np.linalg.norm(kernel)),
            "agreement": float(np.mean(keras_classes == device_classes)),
            "keras_accuracy": float(np.mean(keras_classes == y_test)),
            "device_accuracy": float(np.mean(device_classes == y_test)),
            "test_images": int(len(y_test)),
        }
        logging.info("%s: %s", path, results[path])
    return {"results": results, "versions": versions()}


def write_doc(record: dict, doc: pathlib.Path, args) -> str:
    rows = []
    for path, name in (
        ("head", "head path on LCE features"),
        ("images", "whole Keras model on images"),
    ):
        r = record["results"][path]
        rows.append(
            [
                name,
                f"{r['max_difference_in_16bit_steps']:.2f}",
                f"{r['relative_l2']:.2e}",
                f"{100 * r['agreement']:.2f}",
                f"{100 * r['keras_accuracy']:.1f} / {100 * r['device_accuracy']:.1f}",
            ]
        )
    table = format_table(
        [
            "Keras side",
            "largest Keras - device difference (16-bit steps)",
            "relative L2",
            "same class (%)",
            "accuracy Keras / device (%)",
        ],
        rows,
    )
    text = (
        f"CIFAR-10 (JPEG copy), NC seed 0: `bnn32` trained on the first "
        f"experience ({args.first_epochs} epochs on {args.first_per_class} images per "
        f"class), hybrid 8/16, then the 4 later experiences ({args.per_class} images per "
        f"class, {EPOCHS} epochs, batch {BATCH_SIZE}, lr {LEARNING_RATE}) learned by both "
        f"in the same batch order; {record['results']['head']['test_images']} test "
        f"images. Written by `benchmarks/device_parity.py` from the code with source hash "
        f"`{common.code_hash()}`.\n\n{table}"
    )
    current = doc.read_text() if doc.exists() else "# Device\n"
    if MARKER not in current:  # a new block goes under its own heading, at the end
        doc.write_text(current.rstrip("\n") + f"\n\n{HEADING}\n")
    replace_block(doc, text, marker=MARKER, end=END)
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=pathlib.Path, default=common.DEFAULT_CIFAR10)
    parser.add_argument("--first-epochs", type=int, default=2)
    parser.add_argument("--first-per-class", type=int, default=2000)
    parser.add_argument("--per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "device.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if not args.data.exists():
        print(f"device_parity: skipped, no CIFAR-10 data at {args.data}")
        return 0
    data = common.load_cifar(args.data)
    settings = {
        key: value for key, value in vars(args).items() if key not in ("data", "doc")
    } | {"data": args.data.name}
    record = common.cached(
        common.RESULTS / "device_parity.json", settings, lambda: measure(data, args)
    )
    print(write_doc(record, args.doc, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
