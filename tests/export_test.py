"""Device export: LCE backbone, builtins-only TFLite head, manifest, memory report."""

import hashlib
import json
import os
import warnings

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow loads)
import numpy as np
import pytest
import tensorflow as tf
from device_fixtures import (
    IMAGE_SIZE,
    RUN_SETTINGS,
    digits_data,
    digits_run,
)

from larq_cwr import CWRStarHead, HybridQuantizedTrainStep
from larq_cwr.device import DeviceLearner
from larq_cwr.experiment import TrainingConfig, Variant, build_model
from larq_cwr.export import (
    BACKBONE_FILE,
    FORMAT_VERSION,
    HEAD_FILE,
    MANIFEST_FILE,
    SIGNATURES,
    STATE_NAMES,
    convert_head,
    export_for_device,
)
from larq_cwr.flatbuffer import operator_counts
from larq_cwr.memory import format_memory_report, memory_report
from larq_cwr.quantizers import counter_uniform, snap_to_grid
from larq_cwr.training import hybrid_sgd_step


@pytest.fixture(scope="module")
def digits_export(tmp_path_factory):
    return digits_run(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def trained_model(digits_export):
    run, _ = digits_export
    return tf.keras.models.load_model(run / "model.keras")


# -- the export ----------------------------------------------------------------------------


def test_manifest_describes_the_files_and_the_run(digits_export):
    run, export = digits_export
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    assert manifest["format_version"] == FORMAT_VERSION
    for name in (BACKBONE_FILE, HEAD_FILE):
        data = (export / name).read_bytes()
        entry = manifest["files"][name]
        assert entry["bytes"] == len(data) == os.path.getsize(export / name)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
    assert manifest["input"]["shape"] == [IMAGE_SIZE, IMAGE_SIZE, 1]
    assert manifest["input"]["value_range"] == [0.0, 1.0]
    assert manifest["class_names"] == list(digits_data().class_names)  # from report.json
    training = manifest["training"]
    assert (training["forward_bits"], training["update_bits"]) == (8, 16)
    assert (training["grid"], training["rounding"], training["seed"]) == (
        "zero_exact",
        "nearest",
        0,
    )
    assert {k: training[k] for k in RUN_SETTINGS} == RUN_SETTINGS
    assert (manifest["feature_size"], manifest["num_classes"]) == (256, 10)
    assert set(manifest["versions"]) == {
        "tensorflow",
        "larq",
        "larq_compute_engine",
        "larq_cwr",
    }
    assert list(manifest["head"]["state"]) == list(STATE_NAMES)
    assert manifest["head"]["state"]["kernel"] == {"shape": [256, 10], "dtype": "float32"}


def test_backbone_has_binary_convolutions_and_head_only_builtins(digits_export):
    _, export = digits_export
    backbone = operator_counts((export / BACKBONE_FILE).read_bytes())
    # bnn32: 3 sections x 2 binary residual blocks, each one LceBconv2d.
    assert backbone["LceBconv2d"] == 6
    manifest = json.loads((export / MANIFEST_FILE).read_text())
    assert manifest["backbone"]["binary_convolutions"] == 6
    head_bytes = (export / HEAD_FILE).read_bytes()
    from larq_compute_engine.mlir.python import tflite_schema

    builtin = {n for n in vars(tflite_schema.BuiltinOperator) if not n.startswith("_")}
    head_ops = set(operator_counts(head_bytes))
    assert head_ops <= builtin, head_ops - builtin  # no custom or Flex op
    assert {"ASSIGN_VARIABLE", "READ_VARIABLE", "ROUND", "SQRT"} <= head_ops
    signatures = tf.lite.Interpreter(model_content=head_bytes).get_signature_list()
    assert sorted(signatures) == sorted(SIGNATURES)
    assert signatures["train"]["inputs"] == ["features", "labels", "learning_rate"]


def test_lce_features_match_keras_per_sample(digits_export, trained_model):
    """LCE folds batch normalization into a per-channel multiplier and bias after an
    integer popcount and reassociates float sums: relative differences around 1e-6 to
    1e-5 per sample. A sign flip of a near-zero value before a binary conv can cascade
    in one sample, so the check is per sample (97% within 1e-4), not one global max:
    a conversion error (a wrong fold, a wrong sign convention) moves every sample,
    while cascades hit isolated ones, and how many depends on the CPU's float paths
    (under 1% on the first CI machine, 5 of 450 samples, relative 0.03-0.04, on an AMD
    EPYC)."""
    _, export = digits_export
    x = digits_data().x_test
    keras = trained_model.feature_extractor.predict(x, verbose=0)
    lce = DeviceLearner(export).features(x)
    relative = np.linalg.norm(keras - lce, axis=1) / np.linalg.norm(keras, axis=1)
    close = relative <= 1e-4
    assert close.mean() >= 0.97, np.sort(relative)[-5:]
    # What the hybrid head sees: on the calibrated range, the 8-bit features of the
    # close samples differ by at most one level, in a few elements.
    low, high = trained_model.feature_range
    levels = [
        snap_to_grid(tf.constant(f), 8, low=low, high=high).numpy() for f in (keras, lce)
    ]
    step = (high - min(low, 0.0)) / 255
    difference = np.abs(levels[0] - levels[1])[close]
    assert difference.max() <= step * (1 + 1e-5)
    assert np.mean(difference > 0) < 1e-3


# -- the head's signatures against the library's functions ---------------------------------


def _feature_head(features, num_classes, **options):
    inputs = tf.keras.Input((features,))
    return HybridQuantizedTrainStep(inputs, CWRStarHead(num_classes)(inputs), **options)


_HEADS = {}


def _head(name, features, num_classes, **options):
    """A converted head per configuration (converted once per session)."""
    if name not in _HEADS:
        model = _feature_head(features, num_classes, **options)
        _HEADS[name] = (model, convert_head(model))
    return _HEADS[name]


def _runners(flatbuffer):
    interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    return {name: interpreter.get_signature_runner(name) for name in SIGNATURES}


STEP_CONFIGS = {
    "8/16 zero-exact nearest": {"forward_bits": 8, "update_bits": 16},
    "8/8 paper stochastic": {
        "forward_bits": 8,
        "update_bits": 8,
        "grid": "paper",
        "rounding": "stochastic",
        "seed": 7,
    },
    "float": {"forward_bits": None, "update_bits": None},
}
# Features and classes of each configuration's head; the float one is also the head of
# METHOD §2's worked check.
STEP_SHAPES = {
    "8/16 zero-exact nearest": (64, 6),
    "8/8 paper stochastic": (64, 6),
    "float": (2, 3),
}


@pytest.mark.parametrize("config", list(STEP_CONFIGS))
def test_train_signature_equals_hybrid_sgd_step(config):
    options = STEP_CONFIGS[config]
    features, num_classes = STEP_SHAPES[config]
    model, flatbuffer = _head(config, features, num_classes, **options)
    runners = _runners(flatbuffer)
    rng = np.random.default_rng(1)
    stochastic = options.get("rounding") == "stochastic"
    seed = options.get("seed", 0)

    # The library's step in a graph with a dynamic batch, as the Keras train step runs
    # it. Eager results differ by ulps (in a graph TensorFlow rewrites divisions by
    # constants, such as the grid's 2^bits - 1, into multiplications by reciprocals),
    # and an ulp can move a per-tensor grid.
    spec = tf.TensorSpec

    @tf.function(
        input_signature=[
            spec([features, num_classes]),
            spec([None, features]),
            spec([None], tf.int32),
            spec([]),
            spec([2]),
            spec([2]),
            spec([], tf.int32),
        ]
    )
    def reference(kernel, x, y, rate, feature_range, gradient_range, counter):
        noise = None
        if stochastic:
            noise = counter_uniform(tf.shape(kernel), seed=seed, counter=counter)
        return hybrid_sgd_step(
            kernel,
            x,
            labels=y,
            learning_rate=rate,
            forward_bits=model.forward_bits,
            update_bits=model.update_bits,
            grid=model.grid,
            feature_range=feature_range,
            gradient_range=gradient_range,
            update_noise=noise,
        )

    for trial in range(20):
        batch = int(rng.integers(1, 40))
        state = {
            "kernel": (rng.normal(size=(features, num_classes)) * 0.1).astype(np.float32),
            "consolidated_kernel": np.zeros((features, num_classes), np.float32),
            "past_counts": np.zeros(num_classes, np.int64),
            "current_counts": np.ones(num_classes, np.int64),
            "consolidated_experiences": np.int64(1),
            "feature_range": np.array([0.0, 4.0], np.float32),
            "gradient_range": (np.array([-1.0, 1.0]) / batch).astype(np.float32),
            "noise_seed": np.int32(seed),
            "noise_counter": np.int32(2**31 - 1000 * trial),  # crosses 2^31 too
        }
        x = np.maximum(rng.normal(1.0, 1.5, (batch, features)), 0).astype(np.float32)
        y = rng.integers(0, num_classes, batch).astype(np.int32)
        rate = np.float32(rng.uniform(0.001, 0.2))
        runners["set_state"](**state)
        out = runners["train"](features=x, labels=y, learning_rate=rate)
        got = runners["get_state"]()
        expected = reference(
            *map(tf.constant, (state["kernel"], x, y, rate)),
            *map(tf.constant, (state["feature_range"], state["gradient_range"])),
            tf.constant(state["noise_counter"]),
        )
        # The same grid levels: stored on the zero-exact grid the kernels match bit for
        # bit; the paper grid's level / scale + low and a float update (TFLite's and
        # TensorFlow's matmul sum in other orders) may differ by an ulp or two of the
        # kernel's magnitude (2^-22 of its range; one 8-bit level is 2^-8 of it).
        kernel = expected.kernel.numpy()
        atol = 2 * np.spacing(np.abs(kernel).max())
        np.testing.assert_allclose(got["kernel"], kernel, rtol=0, atol=atol)
        if model.update_bits is not None and model.grid == "zero_exact":
            np.testing.assert_array_equal(got["kernel"], kernel)
        np.testing.assert_allclose(out["logits"], expected.logits, rtol=1e-5, atol=1e-6)
        log_p = tf.nn.log_softmax(expected.logits).numpy()
        np.testing.assert_allclose(
            out["loss"], -log_p[np.arange(batch), y].mean(), rtol=1e-5
        )
        counter = np.int64(state["noise_counter"]) + (
            features * num_classes if stochastic else 0
        )
        assert got["noise_counter"] == np.int32(((counter + 2**31) % 2**32) - 2**31)
        for name in ("consolidated_kernel", "past_counts", "feature_range"):
            np.testing.assert_array_equal(got[name], state[name])


def test_life_cycle_signatures_reproduce_method_worked_check():
    """METHOD §2's worked check, run by the exported float head."""
    _, flatbuffer = _head("float", *STEP_SHAPES["float"], **STEP_CONFIGS["float"])
    run = _runners(flatbuffer)
    run["begin_experience"](class_counts=np.array([10, 30, 0], np.int64))
    state = run["get_state"]()
    state["kernel"] = np.array([[1.0, -1.0, 0.0], [3.0, 5.0, 0.0]], np.float32)  # "trained"
    run["set_state"](**state)
    assert run["consolidate"]()["consolidated_experiences"] == 1
    state = run["get_state"]()
    np.testing.assert_allclose(state["consolidated_kernel"], [[-1, -3, 0], [1, 3, 0]])
    np.testing.assert_array_equal(state["past_counts"], [10, 30, 0])
    np.testing.assert_array_equal(state["kernel"], state["consolidated_kernel"])
    run["begin_experience"](class_counts=np.array([0, 10, 20], np.int64))
    state = run["get_state"]()
    np.testing.assert_array_equal(state["kernel"], [[0, -3, 0], [0, 3, 0]])  # reset
    state["kernel"] = np.array([[0.0, -2.0, 6.0], [0.0, 4.0, 0.0]], np.float32)
    run["set_state"](**state)
    run["consolidate"]()
    state = run["get_state"]()
    # float32 sqrt and division: a few ulps from the hand-computed values.
    np.testing.assert_allclose(
        state["consolidated_kernel"], [[-1, -3.366, 4], [1, 2.634, -2]], atol=1e-3
    )
    np.testing.assert_array_equal(state["past_counts"], [10, 40, 20])
    np.testing.assert_array_equal(state["current_counts"], [0, 0, 0])
    # Without an experience in progress consolidate changes nothing.
    assert run["consolidate"]()["consolidated_experiences"] == 2
    np.testing.assert_array_equal(run["get_state"]()["kernel"], state["kernel"])


def test_set_state_get_state_round_trip_and_infer_uses_live_kernel():
    config = "8/16 zero-exact nearest"
    _, flatbuffer = _head(config, *STEP_SHAPES[config], **STEP_CONFIGS[config])
    run = _runners(flatbuffer)
    rng = np.random.default_rng(3)
    state = {
        "kernel": rng.normal(size=(64, 6)).astype(np.float32),
        "consolidated_kernel": rng.normal(size=(64, 6)).astype(np.float32),
        "past_counts": rng.integers(0, 100, 6),
        "current_counts": rng.integers(0, 100, 6),
        "consolidated_experiences": np.int64(3),
        "feature_range": np.array([-1.5, 7.0], np.float32),
        "gradient_range": np.array([-0.02, 0.01], np.float32),
        "noise_seed": np.int32(-7),
        "noise_counter": np.int32(2**31 - 5),
    }
    run["set_state"](**state)
    got = run["get_state"]()
    for name, value in state.items():
        np.testing.assert_array_equal(got[name], value)
        assert got[name].dtype == np.asarray(value).dtype
    # Features on both sides of the range: infer clips them, as the train signature
    # and the Keras model's predict do (the unclipped logits differ by units, not ulps).
    x = rng.normal(3.0, 6.0, (5, 64)).astype(np.float32)
    assert (x < -1.5).any() and (x > 7.0).any()
    out = run["infer"](features=x)
    expected = np.clip(x, -1.5, 7.0) @ state["kernel"]
    np.testing.assert_allclose(out["logits"], expected, rtol=1e-5, atol=1e-4)
    assert np.abs(x @ state["kernel"] - expected).max() > 1.0
    np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, rtol=1e-6)


def test_float_head_infers_without_clipping():
    """Without forward bits the train signature does not clip, nor does infer."""
    _, flatbuffer = _head("float", *STEP_SHAPES["float"], **STEP_CONFIGS["float"])
    run = _runners(flatbuffer)
    state = run["get_state"]()
    state["kernel"] = np.array([[1.0, -1.0, 0.5], [2.0, 0.0, -3.0]], np.float32)
    state["feature_range"] = np.array([0.0, 1.0], np.float32)
    run["set_state"](**state)
    x = np.array([[4.0, -2.0], [0.5, 9.0]], np.float32)
    np.testing.assert_allclose(
        run["infer"](features=x)["logits"], [[0, -4, 8], [18.5, -0.5, -26.75]], rtol=1e-6
    )


# -- refusals ------------------------------------------------------------------------------


def test_export_refuses_bad_models(tmp_path):
    with pytest.raises(ValueError, match="HybridQuantizedTrainStep"):
        export_for_device(tf.keras.Sequential([tf.keras.layers.Dense(2)]), tmp_path)
    model = build_model((8, 8, 1), 3, config=TrainingConfig(), variant=Variant.cwr(8, 16))
    with pytest.raises(ValueError, match="not calibrated"):
        export_for_device(model, tmp_path)
    float_model = build_model((8, 8, 1), 3, config=TrainingConfig(), variant=Variant.cwr())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="num_classes=3 names"):
            export_for_device(float_model, tmp_path, class_names=["a", "b"])
    with pytest.raises(FileNotFoundError, match="model.keras"):
        export_for_device(tmp_path / "no_run", tmp_path)
    assert not list(tmp_path.iterdir())  # refused before writing anything


def test_binary_model_without_binary_ops_is_refused(monkeypatch, tmp_path):
    import larq_compute_engine

    model = build_model((8, 8, 1), 3, config=TrainingConfig(), variant=Variant.cwr())
    # A converter that silently produced a float model (no LceBconv2d op).
    _, float_bytes = _head("float", *STEP_SHAPES["float"], **STEP_CONFIGS["float"])
    monkeypatch.setattr(larq_compute_engine, "convert_keras_model", lambda m: float_bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="6 binary convolutions.*converted none"):
            export_for_device(model, tmp_path / "out")
    assert not (tmp_path / "out" / BACKBONE_FILE).exists()


# -- memory report -------------------------------------------------------------------------


def test_memory_report_numbers(digits_export, trained_model):
    _, export = digits_export
    report = memory_report(trained_model, export_dir=export, batch_size=50)
    for name in (BACKBONE_FILE, HEAD_FILE, MANIFEST_FILE):
        assert report["files"][name] == os.path.getsize(export / name)
    backbone = report["backbone"]
    # bnn32's binary 3x3 convs (C -> C, two per section of 64/128/256 channels), packed
    # as LCE stores them: C * 9 * ceil(C / 32) int32 words.
    packed = 2 * sum(c * 9 * -(-c // 32) * 4 for c in (64, 128, 256))
    assert backbone["binary_parameters"] == 2 * sum(9 * c * c for c in (64, 128, 256))
    float_rest = (backbone["parameters"] - backbone["binary_parameters"]) * 4
    assert backbone["packed_bytes"] == packed + float_rest
    assert backbone["float32_bytes"] == 4 * backbone["parameters"]
    assert backbone["float32_bytes"] > 16 * backbone["packed_bytes"]
    assert backbone["file_constant_bytes"] < report["files"][BACKBONE_FILE]
    assert backbone["binary_convolutions"] == 6
    features, classes = 256, 10
    assert report["head"]["state_bytes"] == (
        2 * features * classes * 4  # kernel, consolidated kernel
        + 2 * classes * 8  # past and current counts (int64)
        + 8  # consolidated experiences
        + 2 * 2 * 4  # feature and gradient ranges
        + 2 * 4  # noise seed and counter
    )
    # Largest activation: the 16x16 stem conv's 32 float32 channels.
    assert report["inference"]["largest_activation_bytes"] == 16 * 16 * 32 * 4
    peak = report["inference"]["peak_live_activation_bytes"]
    assert 16 * 16 * 32 * 4 < peak < 4 * 16 * 16 * 32 * 4
    batch = 50
    # x, x_q; kernel read, W_q, x_q^T g_q, updated and quantized; logits, p, p_q,
    # one-hot, g, g_q.
    expected = 4 * (2 * batch * features + 5 * features * classes + 6 * batch * classes)
    assert report["training"]["tensor_bytes"] == expected
    assert 0 < report["training"]["graph_peak_live_bytes"] <= 2 * expected
    table = format_memory_report(report)
    assert "backbone weights, bit-packed" in table and f"{peak:,} B" in table
    json.dumps(report)  # JSON-ready


# -- QuickNet ------------------------------------------------------------------------------


QUICKNET_SIZES = (32,) if os.environ.get("CI") else (32, 64)


@pytest.mark.slow
@pytest.mark.parametrize("size", QUICKNET_SIZES)
def test_quicknet_small_exports_and_runs(tmp_path, size):
    tf.keras.utils.set_random_seed(0)
    config = TrainingConfig(backbone="quicknet_small")
    model = build_model((size, size, 3), 5, config=config, variant=Variant.cwr(8, 16))
    model.compile(
        tf.keras.optimizers.SGD(0.01),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    x = rng.random((24, size, size, 3)).astype(np.float32)
    y = np.arange(24) % 5
    model.calibrate(x, y, batch_size=8)
    with pytest.warns(UserWarning, match="not consolidated an experience"):
        export = export_for_device(model, tmp_path, class_names=list("abcde"))
    # 16 binary blocks; larq-zoo's 5 full-precision stem/transition convs stay CONV_2D.
    assert export.binary_convolutions == 16
    learner = DeviceLearner(tmp_path)
    keras = model.feature_extractor.predict(x, verbose=0)
    lce = learner.features(x)
    relative = np.linalg.norm(keras - lce, axis=1) / np.linalg.norm(keras, axis=1)
    # Random weights, activations in the hundreds: a near-zero value's sign can flip
    # in one sample and cascade (FINDINGS Q1); most samples agree to 1e-4.
    assert np.mean(relative <= 1e-4) >= 0.9, np.sort(relative)[-5:]
    result = learner.learn_experience(x[:10], y[:10], epochs=1, batch_size=5, seed=0)
    assert result.consolidated_experiences == 1
    assert learner.predict(x[:3]).shape == (3, 5)
    manifest = export.read_manifest()
    assert manifest["feature_size"] == 512 and manifest["class_names"] == list("abcde")
