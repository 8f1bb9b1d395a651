"""``larq-cwr``: run a continual-learning stream or pretrain a backbone.

``larq-cwr run`` with no argument learns sklearn digits (embedded, no download) in 5
class-incremental experiences and writes ``report.json``, plots and the model to
``--out`` (default ``runs/<dataset>-<scenario>``).
"""

from __future__ import annotations

import argparse
import logging
import os
import pathlib
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from larq_cwr.backbones import BACKBONE_NAMES
    from larq_cwr.datasets import DATASET_NAMES
    from larq_cwr.experiment import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_EPOCHS,
        DEFAULT_FIRST_EPOCHS,
        DEFAULT_FIRST_LEARNING_RATE,
        DEFAULT_HEAD_LEARNING_RATE,
    )
    from larq_cwr.scenarios import SCENARIO_NAMES

    parser = argparse.ArgumentParser(prog="larq-cwr", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="learn a stream of experiences with CWR*")
    run.add_argument("--dataset", choices=DATASET_NAMES, default="digits")
    run.add_argument("--data-dir", help="folder (or file) holding the dataset")
    run.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="resize images to this square size (default: 16 for digits, native otherwise)",
    )
    run.add_argument("--scenario", choices=SCENARIO_NAMES, default="nc")
    run.add_argument("--experiences", type=int, default=5)
    run.add_argument("--backbone", choices=BACKBONE_NAMES, default="bnn32")
    run.add_argument("--backbone-weights", help="local weights file for the backbone")
    precision = run.add_mutually_exclusive_group()
    precision.add_argument("--float", action="store_true", help="float CWR* head update")
    precision.add_argument("--forward-bits", type=int, default=8)
    run.add_argument("--update-bits", type=int, default=16)
    run.add_argument("--rounding", choices=("nearest", "stochastic"), default="nearest")
    run.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help="epochs per later experience"
    )
    run.add_argument("--first-epochs", type=int, default=DEFAULT_FIRST_EPOCHS)
    run.add_argument(
        "--learning-rate",
        type=float,
        default=DEFAULT_HEAD_LEARNING_RATE,
        help="SGD learning rate of the head after the first experience",
    )
    run.add_argument(
        "--first-learning-rate", type=float, default=DEFAULT_FIRST_LEARNING_RATE
    )
    run.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    run.add_argument(
        "--no-baselines", action="store_true", help="skip naive and joint runs"
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=pathlib.Path, help="output folder")
    run.add_argument("--no-progress", action="store_true", help="no progress bars")

    pretrain = commands.add_parser("pretrain", help="pretrain a backbone on chosen classes")
    pretrain.add_argument("--dataset", choices=DATASET_NAMES, default="digits")
    pretrain.add_argument("--data-dir")
    pretrain.add_argument("--image-size", type=int, default=None)
    pretrain.add_argument("--backbone", choices=BACKBONE_NAMES, default="bnn32")
    pretrain.add_argument(
        "--classes", type=int, nargs="*", help="classes to train on (default: all)"
    )
    pretrain.add_argument("--epochs", type=int, default=DEFAULT_FIRST_EPOCHS)
    pretrain.add_argument("--batch-size", type=int, default=64)
    pretrain.add_argument(
        "--learning-rate", type=float, default=DEFAULT_FIRST_LEARNING_RATE
    )
    pretrain.add_argument(
        "--distribute",
        choices=("none", "mirrored"),
        default="none",
        help="train under tf.distribute.MirroredStrategy over all local devices",
    )
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument(
        "--out", type=pathlib.Path, required=True, help="weights file to write (.h5)"
    )
    return parser


def _image_size(args: argparse.Namespace) -> int | None:
    if args.image_size is not None:
        return args.image_size
    return 16 if args.dataset == "digits" else None


def _progress_factory(enabled: bool):
    if not enabled:
        return None
    import tensorflow as tf
    from tqdm.auto import tqdm

    class EpochProgress(tf.keras.callbacks.Callback):
        """One tqdm bar per experience, advancing per epoch, showing loss/accuracy."""

        def __init__(self, label: str, epochs: int) -> None:
            super().__init__()
            self.label, self.epochs = label, epochs

        def on_train_begin(self, logs=None):
            self.bar = tqdm(
                total=self.epochs,
                desc=self.label,
                unit="epoch",
                leave=False,
                file=sys.stdout,
            )

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            self.bar.set_postfix({k: f"{v:.3f}" for k, v in logs.items()})
            self.bar.update(1)

        def on_train_end(self, logs=None):
            self.bar.close()

    def factory(variant: str, experience: int, epochs: int):
        return [EpochProgress(f"{variant} experience {experience}", epochs)]

    return factory


def _run(args: argparse.Namespace) -> int:
    from larq_cwr.experiment import (
        NAIVE,
        ExperimentConfig,
        TrainingConfig,
        Variant,
        run_experiment,
    )
    from larq_cwr.reporting import (
        format_table,
        plot_accuracy_curves,
        plot_accuracy_matrix,
        write_json,
    )

    main = (
        Variant.cwr()
        if args.float
        else Variant.cwr(args.forward_bits, args.update_bits, rounding=args.rounding)
    )
    variants = [main]
    if not args.no_baselines:
        if main != Variant.cwr():
            variants.append(Variant.cwr())  # float CWR* beside the hybrid one
        variants.append(NAIVE)
    config = ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        image_size=_image_size(args),
        scenario=args.scenario,
        experiences=args.experiences,
        variants=tuple(variants),
        joint=not args.no_baselines,
        training=TrainingConfig(
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            first_epochs=args.first_epochs,
            first_learning_rate=args.first_learning_rate,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seed=args.seed,
        ),
    )
    out = args.out or pathlib.Path("runs") / f"{args.dataset}-{args.scenario}"
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"larq-cwr: {args.dataset} {args.scenario.upper()} x{args.experiences}, "
        f"backbone {args.backbone}, variants {[v.name for v in variants]} -> {out}"
    )
    report, results = run_experiment(
        config, callbacks=_progress_factory(not args.no_progress)
    )

    rows = []
    for name, summary in report["variants"].items():
        rows.append(
            [
                name,
                *[100 * a for a in summary["accuracy_all"]],
                100 * summary["average_accuracy"],
                100 * summary["forgetting"],
            ]
        )
    headers = [
        "strategy",
        *[f"exp {i}" for i in range(args.experiences)],
        "avg (seen)",
        "forgetting",
    ]
    if "joint" in report:
        rows.append(
            [
                "joint (upper bound)",
                *[float("nan")] * (args.experiences - 1),
                100 * report["joint"]["final_accuracy"],
                float("nan"),
                float("nan"),
            ]
        )
    table = format_table(headers, rows)
    print("\nAccuracy (%) on all classes after each experience:\n" + table)

    model = results[main.name].model
    model_path = out / "model.keras"
    model.save(model_path)
    curves = {name: s["accuracy_all"] for name, s in report["variants"].items()}
    reference = {"joint": report["joint"]["final_accuracy"]} if "joint" in report else None
    plot_accuracy_curves(curves, out / "accuracy.png", reference=reference)
    plot_accuracy_matrix(
        results[main.name].accuracy.experience_matrix(),
        out / "accuracy_matrix.png",
        title=f"Accuracy matrix ({main.name})",
    )
    report["files"] = {
        "model": str(model_path),
        "plots": ["accuracy.png", "accuracy_matrix.png"],
    }
    write_json(report, out / "report.json")
    (out / "results.md").write_text(table + "\n")
    print(
        f"\nWrote {out / 'report.json'}, plots and {model_path} "
        f"({report['total_seconds']:.0f} s)."
    )
    return 0


def _pretrain(args: argparse.Namespace) -> int:
    import tensorflow as tf

    from larq_cwr.datasets import load_dataset
    from larq_cwr.pretraining import pretrain

    data = load_dataset(
        args.dataset, data_dir=args.data_dir, image_size=_image_size(args), seed=args.seed
    )
    strategy = tf.distribute.MirroredStrategy() if args.distribute == "mirrored" else None
    _, metrics = pretrain(
        args.backbone,
        data.x_train,
        data.y_train,
        input_shape=data.input_shape,
        classes=args.classes,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        strategy=strategy,
        out_path=args.out,
        verbose=1,
    )
    print(f"Saved {args.backbone} weights to {args.out}: {metrics}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``larq-cwr`` command."""
    os.environ.setdefault(
        "TF_CPP_MIN_LOG_LEVEL", "2"
    )  # quiet TensorFlow's C++ start-up logs
    import larq_cwr  # noqa: F401  (Keras 2 guard before TensorFlow loads)

    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return _run(args) if args.command == "run" else _pretrain(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"larq-cwr: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
