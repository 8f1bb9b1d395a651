"""Device speed and size: LCE backbone vs float TFLite, one learning step vs inference.

For each network (bnn32 on 16-px digits and on 32-px CIFAR-size images, quicknet_small
at 32 px; random weights: speed does not depend on them), the script exports the model
with `larq_cwr.export.export_for_device`, converts the same feature extractor to a plain
float TFLite model, and times on this machine, interleaved (every repeat runs every
measurement once, in turn), the median of `--repeats` repeats:

- backbone inference per image: the LCE file vs the float TFLite file, 1 and 2 threads;
- one on-device learning step on a batch of `--batch-size` images (LCE backbone features
  of the batch + the head's `train` signature) vs the backbone inference of the same
  batch alone: the learning overhead of the head (target at most 1.10x).

    python benchmarks/device.py [--repeats 7] [--batch-size 50] [--quicknet-size 32]

Writes `benchmarks/results/device.json` (reused while the code and settings are the
same, as every benchmark here) and the table of `docs/device.md` (below its marker).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
import warnings

import common  # isort: skip  (sets up larq_cwr before TensorFlow)
import numpy as np
import tensorflow as tf
from docblock import replace_block

from larq_cwr.experiment import TrainingConfig, Variant, build_model, versions
from larq_cwr.export import BACKBONE_FILE, HEAD_FILE, export_for_device
from larq_cwr.reporting import format_table

MARKER = "<!-- device benchmark table -->"
END = "<!-- end device benchmark table -->"
NUM_CLASSES = 10
LEARNING_RATE = np.float32(0.0025)  # METHOD §4 reference head learning rate
THREADS = (1, 2)
TIMED_IMAGES = 20  # images per per-image inference measurement
# Before each measurement: lets the previous run's worker threads (XNNPack's pool
# spins for a while after its work) go idle, so they do not slow the next one.
PAUSE_SECONDS = 0.05

logger = logging.getLogger("device")


def networks(quicknet_size: int) -> dict[str, tuple[str, tuple[int, int, int]]]:
    return {
        "bnn32 16 px (digits)": ("bnn32", (16, 16, 1)),
        "bnn32 32 px (CIFAR)": ("bnn32", (32, 32, 3)),
        f"quicknet_small {quicknet_size} px": (
            "quicknet_small",
            (quicknet_size, quicknet_size, 3),
        ),
    }


def _export(backbone: str, shape: tuple[int, int, int], directory: pathlib.Path):
    """Export a calibrated hybrid 8/16 model; return it with the seconds taken."""
    tf.keras.utils.set_random_seed(0)
    model = build_model(
        shape,
        NUM_CLASSES,
        config=TrainingConfig(backbone=backbone),
        variant=Variant.cwr(8, 16),
    )
    model.compile(
        tf.keras.optimizers.SGD(float(LEARNING_RATE)),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.random((64, *shape)).astype(np.float32)
    model.calibrate(x, np.arange(64) % NUM_CLASSES, batch_size=32)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no first experience consolidated: head only
        export_for_device(model, directory)
    return model, time.perf_counter() - start


def _float_tflite(model: tf.keras.Model) -> tuple[bytes, float]:
    start = time.perf_counter()
    converter = tf.lite.TFLiteConverter.from_keras_model(model.feature_extractor)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    return converter.convert(), time.perf_counter() - start


class FloatBackbone:
    """A float TFLite feature extractor run one image at a time, as LCE's is."""

    def __init__(self, flatbuffer: bytes, shape, threads: int) -> None:
        self.interpreter = tf.lite.Interpreter(
            model_content=flatbuffer, num_threads=threads
        )
        self.input = self.interpreter.get_input_details()[0]["index"]
        self.output = self.interpreter.get_output_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input, [1, *shape])
        self.interpreter.allocate_tensors()

    def predict(self, images: np.ndarray) -> np.ndarray:
        outputs = []
        for image in images:
            self.interpreter.set_tensor(self.input, image[np.newaxis])
            self.interpreter.invoke()
            outputs.append(self.interpreter.get_tensor(self.output))
        return np.concatenate(outputs)


def _milliseconds(function) -> float:
    start = time.perf_counter()
    function()
    return 1000 * (time.perf_counter() - start)


def measure(name: str, backbone: str, shape, *, repeats: int, batch_size: int) -> dict:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    logger.info("%s: exporting", name)
    with tempfile.TemporaryDirectory() as directory:
        directory = pathlib.Path(directory)
        model, export_seconds = _export(backbone, shape, directory)
        lce_bytes = (directory / BACKBONE_FILE).read_bytes()
        head_bytes = (directory / HEAD_FILE).read_bytes()
    float_bytes, float_seconds = _float_tflite(model)
    rng = np.random.default_rng(1)
    images = rng.random((batch_size, *shape)).astype(np.float32)
    labels = (np.arange(batch_size) % NUM_CLASSES).astype(np.int32)
    few = images[:TIMED_IMAGES]
    lce = {t: Interpreter(lce_bytes, num_threads=t) for t in THREADS}
    floats = {t: FloatBackbone(float_bytes, shape, t) for t in THREADS}
    head = tf.lite.Interpreter(model_content=head_bytes, num_threads=1)
    train = head.get_signature_runner("train")
    counts = np.bincount(labels, minlength=NUM_CLASSES).astype(np.int64)
    head.get_signature_runner("begin_experience")(class_counts=counts)

    def inference():
        return lce[1].predict(images)

    def learning_step():
        features = lce[1].predict(images)
        train(features=features, labels=labels, learning_rate=LEARNING_RATE)

    features = inference()
    timed = {
        **{f"lce_{t}": (lambda t=t: lce[t].predict(few)) for t in THREADS},
        **{f"float_{t}": (lambda t=t: floats[t].predict(few)) for t in THREADS},
        "inference": inference,
        "learning_step": learning_step,
        "train": lambda: train(
            features=features, labels=labels, learning_rate=LEARNING_RATE
        ),
    }
    for function in timed.values():  # warm up: allocation, XNNPack packing
        function()
    samples: dict[str, list[float]] = {key: [] for key in timed}
    for repeat in range(repeats):
        # Inference and learning step back to back, in alternating order, so that each
        # repeat's ratio compares two runs under the same machine load.
        pair = ("inference", "learning_step")
        order = [k for k in timed if k not in pair] + list(pair[:: 1 - 2 * (repeat % 2)])
        for key in order:
            time.sleep(PAUSE_SECONDS)
            samples[key].append(_milliseconds(timed[key]))
    median = {key: statistics.median(values) for key, values in samples.items()}
    per_image = {key: median[key] / TIMED_IMAGES for key in median if key[-1].isdigit()}
    ratios = [b / a for a, b in zip(samples["inference"], samples["learning_step"])]
    return {
        "backbone": backbone,
        "input_shape": list(shape),
        "batch_size": batch_size,
        "repeats": repeats,
        "bytes": {
            "lce_backbone": len(lce_bytes),
            "float_backbone": len(float_bytes),
            "head": len(head_bytes),
        },
        "convert_seconds": {"export": export_seconds, "float": float_seconds},
        "ms_per_image": per_image,
        "float_over_lce": {
            str(t): per_image[f"float_{t}"] / per_image[f"lce_{t}"] for t in THREADS
        },
        "batch_ms": {key: median[key] for key in ("inference", "learning_step", "train")},
        # Median of the per-repeat ratios (noisy: the step adds well under 1% to the
        # inference), and the same ratio from the medians of its two parts.
        "learning_step_over_inference": statistics.median(ratios),
        "inference_plus_train_over_inference": 1 + median["train"] / median["inference"],
        "samples_ms": samples,
    }


def write_table(record: dict, doc: pathlib.Path) -> str:
    results, machine = record["results"], record["machine"]
    load = record["load_average"]
    headers = [
        "network",
        "LCE file (KiB)",
        "float file (KiB)",
        "head file (KiB)",
        "LCE ms/img 1t",
        "float ms/img 1t",
        "float/LCE 1t",
        "LCE ms/img 2t",
        "float ms/img 2t",
        "float/LCE 2t",
        "train (ms)",
        "step/inference",
        "1 + train/inference",
    ]
    rows = []
    for name, r in results.items():
        rows.append(
            [
                name,
                r["bytes"]["lce_backbone"] / 1024,
                r["bytes"]["float_backbone"] / 1024,
                r["bytes"]["head"] / 1024,
                r["ms_per_image"]["lce_1"],
                r["ms_per_image"]["float_1"],
                r["float_over_lce"]["1"],
                r["ms_per_image"]["lce_2"],
                r["ms_per_image"]["float_2"],
                r["float_over_lce"]["2"],
                r["batch_ms"]["train"],
                f"{r['learning_step_over_inference']:.3f}",
                f"{r['inference_plus_train_over_inference']:.4f}",
            ]
        )
    batch = next(iter(results.values()))["batch_size"]
    repeats = next(iter(results.values()))["repeats"]
    table = format_table(headers, rows)
    processor = machine["processor"] or "unknown CPU"
    text = (
        f"Measured on {machine['machine']} ({processor}"
        f", {machine['cpus']} logical CPUs; 5-minute load average {load['before'][1]:.1f}"
        f" before, {load['after'][1]:.1f} after), median of {repeats} interleaved repeats; "
        f'batch of {batch} images for the learning step. "train": the head\'s `train` '
        'signature alone on the batch\'s features; "step/inference": LCE features of '
        "the batch then `train`, over the LCE features alone, measured back to back "
        '(median of the per-repeat ratios); "1 + train/inference": the same ratio '
        "from the medians of its parts, less noisy. Written by "
        f"`benchmarks/device.py` from the code with source hash `{common.code_hash()}`."
        "\n\n" + table
    )
    replace_block(doc, text, marker=MARKER, end=END, new_file="# Device\n")
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--quicknet-size", type=int, default=32, choices=(32, 64))
    parser.add_argument("--doc", type=pathlib.Path, default=common.DOCS / "device.md")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error("--repeats must be at least 5")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    machine = {
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": os.cpu_count(),
    }
    settings = {
        "repeats": args.repeats,
        "batch_size": args.batch_size,
        "quicknet_size": args.quicknet_size,
        "machine": machine,
    }

    def compute():
        start = time.perf_counter()
        load_before = os.getloadavg()
        results = {
            name: measure(
                name, backbone, shape, repeats=args.repeats, batch_size=args.batch_size
            )
            for name, (backbone, shape) in networks(args.quicknet_size).items()
        }
        return {
            "results": results,
            "machine": machine,
            # 1-, 5- and 15-minute load averages before and after: other work on the
            # machine slows some repeats (the medians and interleaving limit that).
            "load_average": {"before": load_before, "after": os.getloadavg()},
            "versions": versions(),
            "seconds": time.perf_counter() - start,
        }

    record = common.cached(common.RESULTS / "device.json", settings, compute)
    table = write_table(record, args.doc)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
