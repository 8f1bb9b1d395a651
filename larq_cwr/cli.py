"""``larq-cwr``: run a continual-learning stream, pretrain a backbone, export for a device.

``larq-cwr run`` with no argument learns sklearn digits (embedded, no download) in 5
class-incremental experiences and writes ``report.json``, plots and the model to
``--out`` (default ``runs/<dataset>-<scenario>``).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import re
import sys
import threading
import warnings
from collections.abc import Iterator, Sequence

from larq_cwr._compat import _STARTUP_NOISE as STARTUP_NOISE

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    from larq_cwr.backbones import BACKBONE_NAMES
    from larq_cwr.backprop import BLOCK_OPTIMIZERS
    from larq_cwr.datasets import DATASET_NAMES
    from larq_cwr.experiment import (
        DEFAULT_BATCH_SIZE,
        DEFAULT_FIRST_EPOCHS,
        DEFAULT_FIRST_LEARNING_RATE,
        MAIN_JOB_BACKBONE,
        MAIN_JOB_EPOCHS,
        MAIN_JOB_FIRST_EPOCHS,
        MAIN_JOB_JOINT_EPOCHS,
        MAIN_JOB_LEARNING_RATE,
        MAIN_JOB_VARIANT,
        REPLAY_STORAGES,
        STRATEGY_NAMES,
    )
    from larq_cwr.head import CONSOLIDATIONS
    from larq_cwr.scenarios import SCENARIO_NAMES
    from larq_cwr.training import DEFAULT_REPLAY_BATCH_SIZE

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
    run.add_argument("--backbone", choices=BACKBONE_NAMES, default=MAIN_JOB_BACKBONE)
    run.add_argument("--backbone-weights", help="local weights file for the backbone")
    run.add_argument(
        "--strategy",
        choices=STRATEGY_NAMES,
        default=MAIN_JOB_VARIANT.strategy,
        help="cwr: CWR* reset and consolidation; finetune: plain fine-tuning (with "
        "--replay: plain latent replay) (default: %(default)s, the best measured)",
    )
    run.add_argument(
        "--consolidation",
        choices=CONSOLIDATIONS,
        default=MAIN_JOB_VARIANT.consolidation,
        help="with --strategy cwr: weighted (CWR*'s sqrt(past/cur) average) or latest "
        "(keep the trained column; for --trainable-blocks with --replay) "
        "(default: %(default)s)",
    )
    precision = run.add_mutually_exclusive_group()
    precision.add_argument("--float", action="store_true", help="float update (no bits)")
    precision.add_argument(
        "--forward-bits", type=int, default=MAIN_JOB_VARIANT.forward_bits
    )
    run.add_argument("--update-bits", type=int, default=MAIN_JOB_VARIANT.update_bits)
    run.add_argument("--rounding", choices=("nearest", "stochastic"), default="nearest")
    run.add_argument(
        "--replay",
        choices=REPLAY_STORAGES,
        default=MAIN_JOB_VARIANT.replay,
        help="latent replay memory storage (default: %(default)s)",
    )
    run.add_argument(
        "--replay-size",
        type=int,
        default=MAIN_JOB_VARIANT.replay_size,
        help="replay memory slots (default: %(default)s)",
    )
    run.add_argument(
        "--replay-batch-size",
        type=int,
        default=DEFAULT_REPLAY_BATCH_SIZE,
        help="replayed latents appended to each batch (default: %(default)s)",
    )
    run.add_argument(
        "--trainable-blocks",
        type=int,
        default=0,
        help="train the last K binary blocks too (quantized back-prop); the latents "
        "of replay are their input (default: 0, the head's input)",
    )
    run.add_argument(
        "--backward-bits",
        type=int,
        default=None,
        help="bits of the gradients through trainable blocks (default: float)",
    )
    run.add_argument(
        "--block-learning-rate",
        type=float,
        default=None,
        help="learning rate of the trainable blocks (default: --learning-rate)",
    )
    run.add_argument(
        "--block-optimizer",
        choices=BLOCK_OPTIMIZERS,
        default="sgd",
        help="how the trainable blocks step (default: %(default)s, METHOD §5)",
    )
    run.add_argument(
        "--binarize-first-latents",
        action="store_true",
        help="train the first experience on the latents' signs, as a 1-bit replay "
        "memory stores them (every variant then runs on binary latents)",
    )
    run.add_argument(
        "--epochs",
        type=int,
        default=MAIN_JOB_EPOCHS,
        help="epochs per later experience (default: %(default)s)",
    )
    run.add_argument(
        "--first-epochs",
        type=int,
        default=MAIN_JOB_FIRST_EPOCHS,
        help="epochs of the first experience (default: %(default)s)",
    )
    run.add_argument(
        "--joint-epochs",
        type=int,
        default=MAIN_JOB_JOINT_EPOCHS,
        help="epochs of the joint upper bound (default: %(default)s)",
    )
    run.add_argument(
        "--learning-rate",
        type=float,
        default=MAIN_JOB_LEARNING_RATE,
        help="SGD learning rate after the first experience (default: %(default)s)",
    )
    run.add_argument(
        "--first-learning-rate", type=float, default=DEFAULT_FIRST_LEARNING_RATE
    )
    run.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    run.add_argument(
        "--no-baselines",
        action="store_true",
        help="run only the main variant (no float twin, head-only CWR*, naive, joint)",
    )
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--out", type=pathlib.Path, help="output folder")
    run.add_argument(
        "--resume",
        type=pathlib.Path,
        metavar="DIR",
        help="continue the unfinished run in DIR from its last completed experience "
        "(its options come from DIR's checkpoint; others given here are ignored)",
    )
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
    export = commands.add_parser("export", help="export a trained model for a device")
    export.add_argument(
        "model", type=pathlib.Path, help="run folder (with model.keras) or .keras file"
    )
    export.add_argument("--out", type=pathlib.Path, required=True, help="export folder")
    export.add_argument(
        "--class-names", nargs="+", help="one name per class (default: the run's)"
    )
    report = commands.add_parser("report", help="memory a model needs on a device")
    report.add_argument(
        "model", type=pathlib.Path, help="run folder (with model.keras) or .keras file"
    )
    report.add_argument(
        "--export-dir", type=pathlib.Path, help="read the files of an earlier export"
    )
    report.add_argument("--batch-size", type=int, default=50, help="of the train step")
    report.add_argument("--json", type=pathlib.Path, help="also write the report here")
    return parser


def _image_size(args: argparse.Namespace) -> int | None:
    if args.image_size is not None:
        return args.image_size
    return 16 if args.dataset == "digits" else None


class _RunProgress:
    """Progress bars: one for the whole run (steps left and its ETA), one per fit
    advancing per batch (a long epoch still moves), with the latest loss/accuracy."""

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self._tqdm, self.run_bar = tqdm, None

    def plan(self, steps: int) -> None:
        """``run_experiment``'s ``on_plan``: the run's remaining training steps."""
        self.run_bar = self._tqdm(
            total=steps, desc="run", unit="step", file=sys.stdout, position=0
        )

    def close(self) -> None:
        if self.run_bar is not None:
            self.run_bar.close()

    def __call__(self, variant: str, experience: int, epochs: int):
        """``run_experiment``'s callback factory: one bar for this fit."""
        import tensorflow as tf

        progress = self

        class FitProgress(tf.keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                steps = self.params.get("steps") or 0
                self.bar = progress._tqdm(
                    total=epochs * steps or None,
                    desc=f"{variant} experience {experience}",
                    unit="step",
                    leave=False,
                    file=sys.stdout,
                    position=1,
                )

            def on_train_batch_end(self, batch, logs=None):
                self.bar.update(1)
                if progress.run_bar is not None:
                    progress.run_bar.update(1)

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                self.bar.set_postfix(
                    {"epoch": epoch + 1, **{k: f"{v:.3f}" for k, v in logs.items()}}
                )

            def on_train_end(self, logs=None):
                self.bar.close()

        return [FitProgress()]


def _main_variant(args: argparse.Namespace):
    from larq_cwr.experiment import Variant

    bits = (None, None) if args.float else (args.forward_bits, args.update_bits)
    make = Variant.cwr if args.strategy == "cwr" else Variant.finetune
    return make(
        *bits,
        rounding=args.rounding,
        replay=args.replay,
        replay_size=args.replay_size,
        train_blocks=args.trainable_blocks > 0,
        backward_bits=args.backward_bits,
        consolidation=args.consolidation,
    )


def _config(args: argparse.Namespace):
    """The run's ExperimentConfig from the command line."""
    from larq_cwr.experiment import ExperimentConfig, TrainingConfig, with_baselines

    main = _main_variant(args)
    return ExperimentConfig(
        dataset=args.dataset,
        data_dir=args.data_dir,
        image_size=_image_size(args),
        scenario=args.scenario,
        experiences=args.experiences,
        variants=(main,) if args.no_baselines else with_baselines(main),
        joint=not args.no_baselines,
        training=TrainingConfig(
            backbone=args.backbone,
            backbone_weights=args.backbone_weights,
            first_epochs=args.first_epochs,
            joint_epochs=args.joint_epochs,
            first_learning_rate=args.first_learning_rate,
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            batch_size=args.batch_size,
            seed=args.seed,
            trainable_blocks=args.trainable_blocks,
            replay_batch_size=args.replay_batch_size,
            block_learning_rate=args.block_learning_rate,
            block_optimizer=args.block_optimizer,
            binarize_first_latents=args.binarize_first_latents,
        ),
    )


def _checkpoint_and_config(args: argparse.Namespace):
    """``(out folder, RunCheckpoint, ExperimentConfig, resuming)``; checks the folder
    before anything is written to it."""
    from larq_cwr.checkpoint import CHECKPOINT_FILE, RunCheckpoint
    from larq_cwr.experiment import ExperimentConfig

    if args.resume is not None:
        out = args.resume
        path = out / CHECKPOINT_FILE
        if not path.is_file():
            raise ValueError(
                f"`--resume` {str(out)!r} holds no unfinished run; expected a folder "
                f"with {CHECKPOINT_FILE} (a run's --out, killed before it finished)"
            )
        key = RunCheckpoint.read_key(path)
        try:
            config = ExperimentConfig.from_dict(key["config"])
        except (KeyError, TypeError) as error:
            raise ValueError(
                f"Checkpoint {str(path)!r} holds no run configuration this version "
                f"can read ({error})"
            ) from error
        return out, RunCheckpoint(path, key=key), config, True
    config = _config(args)
    out = args.out or pathlib.Path("runs") / f"{args.dataset}-{args.scenario}"
    path = out / CHECKPOINT_FILE
    if path.exists():
        raise ValueError(
            f"`--out` {str(out)!r} holds an unfinished run ({CHECKPOINT_FILE}); "
            f"expected a new folder, or `larq-cwr run --resume {out}` to continue it"
        )
    return out, RunCheckpoint(path, key={"config": config.to_dict()}), config, False


def _run(args: argparse.Namespace) -> int:
    from larq_cwr.experiment import run_experiment
    from larq_cwr.reporting import (
        format_table,
        plot_accuracy_curves,
        plot_accuracy_matrix,
        write_json,
    )

    out, checkpoint, config, resuming = _checkpoint_and_config(args)
    main = config.variants[0]
    training = config.training
    print(
        f"larq-cwr: {config.dataset} {config.scenario.upper()} x{config.experiences}, "
        f"backbone {training.backbone}, variants {[v.name for v in config.variants]} "
        f"-> {out}" + (" (resuming)" if resuming else "")
    )
    progress = None if args.no_progress else _RunProgress()
    try:
        report, results = run_experiment(
            config,
            callbacks=progress,
            checkpoint=checkpoint,
            on_plan=progress.plan if progress is not None else None,
        )
    finally:
        if progress is not None:
            progress.close()
    experiences = config.experiences

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
        *[f"exp {i}" for i in range(experiences)],
        "avg (seen)",
        "forgetting",
    ]
    if "joint" in report:
        rows.append(
            [
                "joint (upper bound)",
                *[float("nan")] * (experiences - 1),
                100 * report["joint"]["final_accuracy"],
                float("nan"),
                float("nan"),
            ]
        )
    table = format_table(headers, rows)
    print("\nAccuracy (%) on all classes after each experience:\n" + table)

    out.mkdir(parents=True, exist_ok=True)  # after the run: a failed one writes nothing
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
    checkpoint.remove()  # finished: nothing left to resume
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
        data.x_train,
        data.y_train,
        name=args.backbone,
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


def _export(args: argparse.Namespace) -> int:
    from larq_cwr.export import export_for_device

    result = export_for_device(args.model, args.out, class_names=args.class_names)
    files = result.read_manifest()["files"]
    print(
        f"Wrote {result.backbone} ({files['backbone.tflite']['bytes']:,} B, "
        f"{result.binary_convolutions} LceBconv2d), {result.head} "
        f"({files['head.tflite']['bytes']:,} B) and {result.manifest}."
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from larq_cwr.memory import format_memory_report, memory_report
    from larq_cwr.reporting import write_json

    report = memory_report(
        args.model, export_dir=args.export_dir, batch_size=args.batch_size
    )
    print(format_memory_report(report))
    if args.json is not None:
        write_json(report, args.json)
        print(f"Wrote {args.json}.")
    return 0


# TensorFlow's C++ INFO and WARNING lines (converter, SavedModel loader, absl): glog's
# "2026-01-01 12:00:00.000000: I path] ..." and absl's "I0000 00:00:... path] ...".
TF_CPP_INFO = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IW] |[IW]\d{4} )|" + STARTUP_NOISE.pattern
)


@contextlib.contextmanager
def filtered_stderr(pattern: re.Pattern[str]) -> Iterator[None]:
    """Drop the lines matching ``pattern`` from everything written to file descriptor 2
    (C++ code included) inside the block; other lines pass through as they come.

    The ``larq-cwr`` command's own: TensorFlow's C++ info logs (the TFLite converter's,
    for one) are noise on its terminal; a library user's stderr is never filtered.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (AttributeError, OSError, ValueError):  # no usable descriptor 2
        yield
        return
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                text = line.decode("utf-8", "replace")
                if not pattern.search(text):
                    os.write(saved, line)

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        thread.join(timeout=5)
        os.close(saved)


def _quiet_tensorflow() -> None:
    """No TensorFlow chatter on the terminal: C++ logs below errors, absl and TF's
    Python loggers at errors (the start-up noise is filtered at import, see
    ``larq_cwr._compat.import_tensorflow_quietly``)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import absl.logging
    import tensorflow as tf

    import larq_cwr  # noqa: F401  (Keras 2 guard, quiet TensorFlow import)

    absl.logging.set_verbosity(absl.logging.ERROR)
    tf.get_logger().setLevel(logging.ERROR)
    # TensorFlow's notice that tf.lite.Interpreter moves to LiteRT (we use it on purpose).
    warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")

    def show(message, category, filename, lineno, file=None, line=None):
        print(f"larq-cwr: warning: {message}", file=file or sys.stderr)

    warnings.showwarning = show  # one line a user can act on, no source location


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``larq-cwr`` command."""
    _quiet_tensorflow()
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    command = {"run": _run, "pretrain": _pretrain, "export": _export, "report": _report}
    with filtered_stderr(TF_CPP_INFO):
        try:
            return command[args.command](args)
        except (ValueError, FileNotFoundError) as error:
            print(f"larq-cwr: error: {error}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
