"""A trained digits model and its export, shared by export_test.py and device_test.py."""

import json
import pathlib

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import numpy as np
import tensorflow as tf

from larq_cwr import CWRStar
from larq_cwr.datasets import load_digits
from larq_cwr.experiment import TrainingConfig, Variant, build_model
from larq_cwr.export import MANIFEST_FILE, export_for_device

IMAGE_SIZE = 16
FIRST_CLASSES = (0, 1, 2, 3)
# Later experiences; the last revisits classes, so consolidation's sqrt(past / cur)
# weighting matters.
EXPERIENCES = ((4, 5, 6), (7, 8, 9), (0, 5, 9))
RUN_SETTINGS = {"epochs": 2, "batch_size": 32, "learning_rate": 0.0025}


def digits_data():
    """16-px sklearn digits, seed 0."""
    return load_digits(image_size=IMAGE_SIZE, seed=0)


def experience_data(data, classes):
    mask = np.isin(data.y_train, classes)
    return data.x_train[mask], data.y_train[mask]


def digits_run(base: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    """A `larq-cwr run`-like folder (bnn32 trained on classes 0-3, hybrid 8/16,
    calibrated) and its export, built once in the session's temporary folder."""
    run, export = base / "digits_run", base / "digits_export"
    if (export / MANIFEST_FILE).is_file():
        return run, export
    data = digits_data()
    tf.keras.utils.set_random_seed(0)
    model = build_model(
        (IMAGE_SIZE, IMAGE_SIZE, 1), 10, config=TrainingConfig(), variant=Variant.cwr(8, 16)
    )
    model.compile(
        tf.keras.optimizers.Adam(1e-3),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x0, y0 = experience_data(data, FIRST_CLASSES)
    model.fit(
        x0,
        y0,
        batch_size=50,
        epochs=2,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y0)],
    )
    model.calibrate(x0, y0, batch_size=50)
    run.mkdir(parents=True)
    model.save(run / "model.keras")
    report = {
        "dataset": {"name": "digits", "class_names": list(data.class_names)},
        "config": {"training": RUN_SETTINGS},
    }
    (run / "report.json").write_text(json.dumps(report))
    export_for_device(run, export)
    return run, export
