import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from larq_cwr.cli import main

TINY = ["--experiences", "2", "--first-epochs", "1", "--epochs", "1", "--no-progress"]


def test_run_tiny_config_writes_report_plots_and_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", *TINY, "--seed", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cwr_8_16" in printed and "naive" in printed and "joint" in printed
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["training"]["seed"] == 3
    assert set(report["variants"]) == {"cwr_8_16", "cwr_float", "naive"}
    for summary in report["variants"].values():
        assert len(summary["accuracy_all"]) == 2
        assert 0.0 <= summary["final_accuracy"] <= 1.0
        assert summary["final_accuracy"] == summary["accuracy_all"][-1]
    assert 0.0 <= report["joint"]["final_accuracy"] <= 1.0
    assert report["versions"]["tensorflow"] == tf.__version__
    assert sorted(map(len, report["experience_classes"])) == [5, 5]
    for name in ("accuracy.png", "accuracy_matrix.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = tf.keras.models.load_model(out / "model.keras")
    head = model.get_layer("cwr_head")
    assert head.past_counts.sum() == report["dataset"]["train"]
    assert model.forward_bits == 8 and model.update_bits == 16


def test_float_run_without_baselines(tmp_path):
    out = tmp_path / "float"
    assert main(["run", *TINY, "--float", "--no-baselines", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["variants"]) == ["cwr_float"] and "joint" not in report


@pytest.mark.parametrize(
    "args, message",
    [
        (["--experiences", "3"], "n_experiences"),
        (["--update-bits", "40"], "update_bits"),
        (["--epochs", "0"], "epochs"),
    ],
)
def test_bad_arguments_exit_2_with_message(tmp_path, capsys, args, message):
    argv = ["run", "--first-epochs", "1", "--no-progress", "--out", str(tmp_path), *args]
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_default_main_job_as_a_new_user(tmp_path):
    """`larq-cwr run` as the README gives it; CI=true runs a reduced version."""
    args = [sys.executable, "-m", "larq_cwr.cli", "run", "--out", str(tmp_path / "main")]
    if os.environ.get("CI"):
        args += ["--first-epochs", "2", "--epochs", "1"]
    completed = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Accuracy (%) on all classes" in completed.stdout
    report = json.loads((tmp_path / "main" / "report.json").read_text())
    finals = {name: v["final_accuracy"] for name, v in report["variants"].items()}
    assert np.isfinite(list(finals.values())).all()
    if not os.environ.get("CI"):
        # Full defaults, seed 0: the same numbers as tests/integration_test.py.
        assert finals["cwr_float"] - finals["naive"] >= 0.08
        assert report["total_seconds"] < 300


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
