"""Keep learning on a device: export a trained model, then stream new experiences.

sklearn digits (16 px) arrive as 5 experiences of 2 new classes each. The library trains
the first experience (the whole binary network, as `larq-cwr run` does), calibrates the
hybrid 8/16 update and exports the model with `export_for_device`: an LCE backbone, a
builtins-only TFLite CWR* head and a manifest. From then on only the exported files
learn: `DeviceLearner` runs the later experiences through the head's TFLite signatures
(`begin_experience`, `train`, `consolidate`), saves the CWR* state after each one, and
the script prints the accuracy after every experience.

    python examples/on_device_loop.py [--out exported/] [--learning-rate 0.04]

Run it again with the same `--out` and it restarts from the saved state (as a device
does after a reboot) instead of relearning the experiences it already consolidated.
Head-only CWR* ends near 30% on all classes here (METHOD §5: each experience's head
learns to separate its own classes; latent replay, not exported yet, is the lever).
"""

import larq_cwr  # noqa: F401  isort: skip  (first: Keras 2 before TensorFlow loads)

import argparse
import pathlib
import tempfile

import numpy as np
import tensorflow as tf

from larq_cwr import CWRStar
from larq_cwr.datasets import load_digits
from larq_cwr.device import DeviceLearner
from larq_cwr.experiment import TrainingConfig, Variant, build_model
from larq_cwr.export import MANIFEST_FILE, export_for_device

SEED = 0
CLASS_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def experience(data, classes):
    mask = np.isin(data.y_train, classes)
    return data.x_train[mask], data.y_train[mask]


def accuracies(probabilities, labels, seen):
    predicted = probabilities.argmax(axis=1)
    on_seen = np.isin(labels, seen)
    return (
        float(np.mean(predicted[on_seen] == labels[on_seen])),
        float(np.mean(predicted == labels)),
    )


def train_and_export(data, out: pathlib.Path, first_epochs: int) -> None:
    """The library's part: train experience 0, calibrate, export."""
    tf.keras.utils.set_random_seed(SEED)
    shape = data.x_train.shape[1:]
    model = build_model(
        shape, 10, config=TrainingConfig(seed=SEED), variant=Variant.cwr(8, 16)
    )
    model.compile(
        tf.keras.optimizers.Adam(1e-3),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = experience(data, CLASS_PAIRS[0])
    model.fit(
        x,
        y,
        batch_size=50,
        epochs=first_epochs,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y)],
    )
    model.calibrate(x, y, batch_size=50)  # static ranges of the hybrid update
    export = export_for_device(model, out, class_names=data.class_names)
    print(
        f"exported to {out}: {export.backbone.stat().st_size:,} B backbone "
        f"({export.binary_convolutions} binary convolutions), "
        f"{export.head.stat().st_size:,} B head"
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, help="export folder (default: temp)")
    parser.add_argument("--first-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--learning-rate", type=float, default=0.04)
    args = parser.parse_args(argv)
    out = args.out or pathlib.Path(tempfile.mkdtemp(prefix="larq_cwr_device_"))
    data = load_digits(image_size=16, seed=SEED)
    if not (out / MANIFEST_FILE).is_file():
        train_and_export(data, out, args.first_epochs)

    # From here on: the exported files only (no Keras model, no training code).
    learner = DeviceLearner(out, state_path=out / "state.npz")
    done = learner.consolidated_experiences  # 1 after the library's first experience
    for index, classes in enumerate(CLASS_PAIRS):
        seen = [c for pair in CLASS_PAIRS[: index + 1] for c in pair]
        if index >= done:
            x, y = experience(data, classes)
            result = learner.learn_experience(
                x,
                y,
                epochs=args.epochs,
                batch_size=args.batch_size,
                learning_rate=args.learning_rate,
                seed=index,
            )
            losses = f"loss {result.epoch_losses[0]:.3f} -> {result.epoch_losses[-1]:.3f}"
        else:
            losses = "learned before" if index else "trained by the library"
        if index + 1 < done:
            continue  # accuracy of the current state only
        seen_accuracy, all_accuracy = accuracies(
            learner.predict(data.x_test), data.y_test, seen
        )
        print(
            f"experience {index} (classes {classes}, {losses}): accuracy on seen classes "
            f"{seen_accuracy:.3f}, on all classes {all_accuracy:.3f}"
        )
    print(f"state saved in {learner.state_path}")


if __name__ == "__main__":
    main()
