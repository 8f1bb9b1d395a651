import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from larq_cwr.checkpoint import CHECKPOINT_FILE, RunCheckpoint
from larq_cwr.cli import main

CI = bool(os.environ.get("CI"))
TINY = ["--experiences", "2", "--first-epochs", "1", "--epochs", "1", "--no-progress"]
MAIN = "finetune_8_16_replay-int8-300"  # the main job's variant (MAIN_JOB_VARIANT)
BASELINES = {MAIN, "finetune_float_replay-int8-300", "cwr_8_16", "naive"}


def _cli(*args, timeout=900):
    """`python -m larq_cwr.cli ...` as a user runs it (its own process, no pytest)."""
    return subprocess.Popen(
        [sys.executable, "-m", "larq_cwr.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(process, timeout=900):
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def _metrics(report):
    """What a report says about learning: everything but timings and file paths."""
    variants = {
        name: {key: value for key, value in summary.items() if "seconds" not in key}
        for name, summary in report["variants"].items()
    }
    return variants, report.get("joint", {}).get("final_accuracy"), report["config"]


def test_run_tiny_config_writes_report_plots_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert MAIN in printed and "naive" in printed and "joint" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["training"]["seed"] == 3
    assert report["config"]["training"]["backbone"] == "bnn32_norm"
    assert set(report["variants"]) == BASELINES
    for summary in report["variants"].values():
        assert len(summary["accuracy_all"]) == 2
        assert summary["final_accuracy"] == summary["accuracy_all"][-1]
    # Experience 0 is shared: every variant starts from the same network.
    assert len({s["accuracy_all"][0] for s in report["variants"].values()}) == 1
    assert report["versions"]["tensorflow"] == tf.__version__
    assert sorted(map(len, report["experience_classes"])) == [5, 5]
    for name in ("accuracy.png", "accuracy_matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / CHECKPOINT_FILE).exists()  # finished: nothing to resume
    model = tf.keras.models.load_model(out / "model.keras")
    head = model.get_layer("cwr_head")
    # Fine-tuning keeps experience 0's CWR* bookkeeping (shared) and consolidates no more.
    first = report["experience_classes"][0]
    assert set(np.flatnonzero(head.past_counts)) == set(first)
    assert model.forward_bits == 8 and model.update_bits == 16
    assert model.replay.filled == 300
    memory = report["variants"][MAIN]["replay_memory"]
    # int8 storage: one byte per latent value, a quarter of float32's, 256 features.
    assert memory["pattern_bytes"] == 300 * 256 == memory["float32_pattern_bytes"] // 4
    assert report["variants"]["cwr_8_16"]["replay_memory"] is None


@pytest.mark.parametrize(
    "extra, name",
    [([], "cwr_float"), (["--consolidation", "latest"], "cwr_float_consolidate-latest")],
)
def test_float_cwr_run_without_baselines(tmp_path, extra, name):
    out = tmp_path / "float"
    argv = ["run", *TINY, "--float", "--strategy", "cwr", "--replay", "none", *extra]
    assert main([*argv, "--no-baselines", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["variants"]) == [name] and "joint" not in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiences", "3"], "n_experiences"),
        (["--update-bits", "40"], "update_bits"),
        (["--epochs", "0"], "epochs"),
        (["--replay-size", "0"], "replay_size"),
        (["--consolidation", "latest"], "needs the CWR* strategy"),  # main: finetune
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_write_nothing(
    tmp_path, capsys, args, message
):
    out = tmp_path / "never"
    argv = ["run", "--first-epochs", "1", "--no-progress", "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("larq-cwr: error: ")
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_fresh_run_refuses_a_folder_with_an_unfinished_run(tmp_path, capsys):
    out = tmp_path / "busy"
    out.mkdir()
    checkpoint = out / CHECKPOINT_FILE
    checkpoint.write_bytes(b"earlier state")
    assert main(["run", *TINY, "--out", str(out)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert checkpoint.read_bytes() == b"earlier state"  # untouched
    assert sorted(p.name for p in out.iterdir()) == [CHECKPOINT_FILE]


def test_resume_refuses_a_corrupt_checkpoint_and_keeps_it(tmp_path, capsys):
    out = tmp_path / "corrupt"
    out.mkdir()
    (out / CHECKPOINT_FILE).write_bytes(b"PK\x03\x04 truncated")
    assert main(["run", "--resume", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("larq-cwr: error: ") and "corrupt" in err
    assert (out / CHECKPOINT_FILE).read_bytes() == b"PK\x03\x04 truncated"


def test_resume_without_a_checkpoint_is_a_clear_error(tmp_path, capsys):
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "holds no unfinished run" in capsys.readouterr().err


# Enough epochs that an experience of the main variant lasts a few seconds: the kill
# lands inside one.
KILL_RUN = ["--experiences", "5", "--first-epochs", "2", "--epochs", "12", "--seed", "1"]


def _wait_for_writes(path, writes, process, timeout=600):
    """Wait until ``path`` has been replaced ``writes`` times (atomic renames)."""
    seen, last, deadline = 0, None, time.monotonic() + timeout
    while seen < writes:
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run wrote no checkpoint"
        try:
            stamp = path.stat().st_mtime_ns, path.stat().st_ino
        except FileNotFoundError:
            stamp = None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.02)


def test_sigkill_in_an_experience_then_resume_gives_the_uninterrupted_report(tmp_path):
    """A run killed inside an experience and resumed reports what a run never killed
    reports (same seed), timings aside."""
    full, killed = tmp_path / "full", tmp_path / "killed"
    uninterrupted = _cli("run", *KILL_RUN, "--no-progress", "--out", full)
    code, _, stderr = _finish(uninterrupted)
    assert code == 0, stderr[-3000:]

    process = _cli("run", *KILL_RUN, "--no-progress", "--out", killed)
    checkpoint = killed / CHECKPOINT_FILE
    # Write 1: after experience 0; write 2: after experience 1 of the main variant.
    _wait_for_writes(checkpoint, 2, process)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "report.json").exists()
    key = RunCheckpoint.read_key(checkpoint)
    state, _ = RunCheckpoint(checkpoint, key=key).load()
    assert state["in_progress"]["variant"] == MAIN and state["variants"] == {}

    resumed = _cli("run", "--resume", killed, "--no-progress")
    code, stdout, stderr = _finish(resumed)
    assert code == 0, stderr[-3000:]
    assert "(resuming)" in stdout
    assert not checkpoint.exists()
    expected = json.loads((full / "report.json").read_text())
    actual = json.loads((killed / "report.json").read_text())
    assert _metrics(actual) == _metrics(expected)


def test_cli_prints_no_tensorflow_startup_noise(tmp_path):
    code, stdout, stderr = _finish(_cli("run", "--resume", tmp_path / "nothing"))
    assert code == 2
    assert stderr.strip().splitlines() == [
        f"larq-cwr: error: `--resume` {str(tmp_path / 'nothing')!r} holds no unfinished "
        f"run; expected a folder with {CHECKPOINT_FILE} (a run's --out, killed before "
        "it finished)"
    ]


@pytest.mark.slow
def test_default_main_job_as_a_new_user(tmp_path):
    """`larq-cwr run` as the README gives it; CI=true runs fewer epochs and asserts
    a lower bar that a broken learner still cannot pass."""
    args = ["run", "--no-progress", "--out", tmp_path / "main"]
    if CI:
        args += ["--first-epochs", "10", "--epochs", "20"]
    code, stdout, stderr = _finish(_cli(*args), timeout=1200)
    assert code == 0, stderr[-3000:]
    assert "Accuracy (%) on all classes" in stdout
    report = json.loads((tmp_path / "main" / "report.json").read_text())
    main_job = report["variants"][MAIN]
    matrix = main_job["accuracy_matrix"]
    per_class = np.asarray(matrix["correct"][-1]) / np.asarray(matrix["total"][-1])
    naive = report["variants"]["naive"]["final_accuracy"]
    if CI:
        # Shortened: replay still keeps every class alive, far above naive's ~0.2.
        assert main_job["final_accuracy"] >= 0.6, main_job["final_accuracy"]
        assert main_job["final_accuracy"] - naive >= 0.25
        assert per_class.min() > 0.0, per_class
    else:
        # The bar: >= 80% final, no class at 0%, under 5 minutes on 2 cores.
        assert main_job["final_accuracy"] >= 0.80, main_job["final_accuracy"]
        assert per_class.min() > 0.0, per_class
        assert report["total_seconds"] < 300


def test_run_defaults_are_the_main_job():
    # `larq-cwr run` with no option and the benchmarks' ExperimentConfig() must run
    # the same configuration (digits_replay.py measures the CLI's main job).
    from larq_cwr.cli import _config, _parser
    from larq_cwr.experiment import ExperimentConfig

    assert _config(_parser().parse_args(["run"])) == ExperimentConfig()


def test_run_passes_the_block_optimizer_options():
    from larq_cwr.cli import _config, _parser

    args = ["run", "--trainable-blocks", "2", "--block-optimizer", "adam"]
    training = _config(_parser().parse_args([*args, "--block-learning-rate", "0.001"]))
    assert training.training.block_optimizer == "adam"
    assert training.training.block_learning_rate == 0.001
    assert _config(_parser().parse_args(["run"])).training.block_optimizer == "sgd"
    with pytest.raises(SystemExit):
        _parser().parse_args(["run", "--block-optimizer", "rmsprop"])


def test_run_passes_binarize_first_latents():
    from larq_cwr.cli import _config, _parser

    args = ["run", "--replay", "1bit", "--trainable-blocks", "1"]
    on = _config(_parser().parse_args([*args, "--binarize-first-latents"]))
    assert on.training.binarize_first_latents is True
    assert _config(_parser().parse_args(args)).training.binarize_first_latents is False


def test_pretrain_writes_weights_that_load(tmp_path, capsys):
    from larq_cwr.backbones import build_backbone

    out = tmp_path / "bnn.h5"
    argv = ["pretrain", "--classes", "0", "1", "--epochs", "2", "--out", str(out)]
    assert main(argv) == 0
    assert "val_accuracy" in capsys.readouterr().out
    backbone = build_backbone("bnn32", input_shape=(16, 16, 1), weights=out)
    fresh = build_backbone("bnn32", input_shape=(16, 16, 1))
    x = np.random.default_rng(0).random((4, 16, 16, 1)).astype(np.float32)
    assert not np.allclose(backbone(x).numpy(), fresh(x).numpy())
