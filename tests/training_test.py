import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import CWRStar, CWRStarHead, HybridQuantizedTrainStep

FEATURES, CLASSES, BATCH = 6, 4, 16


def _hybrid_model(forward_bits=8, update_bits=16, softmax=False, **kwargs):
    inputs = tf.keras.Input((5,))
    features = tf.keras.layers.Dense(
        FEATURES,
        activation="relu",
        kernel_initializer=tf.keras.initializers.GlorotUniform(1),
        name="backbone",
    )(inputs)
    outputs = CWRStarHead(CLASSES, name="head")(features)
    if softmax:
        outputs = tf.keras.layers.Softmax()(outputs)
    model = HybridQuantizedTrainStep(
        inputs, outputs, forward_bits=forward_bits, update_bits=update_bits, **kwargs
    )
    model.compile(
        tf.keras.optimizers.SGD(0.05),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=["accuracy"],
    )
    return model


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)).astype(np.float32), rng.integers(0, CLASSES, n).astype(
        np.int32
    )


def _q(x, bits, low, high):
    """METHOD §3 in numpy (np.round rounds half to even, like tf.round)."""
    x, low, high = np.float32(x), np.float32(low), np.float32(high)
    scale = np.float32(2**bits - 1) / (high - low)
    return np.round((np.clip(x, low, high) - low) * scale) / scale + low


def _features(model, x):
    return model.get_layer("backbone")(x).numpy()


def test_none_bits_equal_plain_float_sgd():
    x, y = _data()
    hybrid = _hybrid_model(None, None)
    hybrid.calibrate(x, y, batch_size=BATCH)
    hybrid.head.kernel.assign(np.random.default_rng(2).normal(size=(FEATURES, CLASSES)))

    # Reference: the same network as a plain Keras model, backbone frozen, plain SGD.
    inputs = tf.keras.Input((5,))
    backbone = tf.keras.layers.Dense(FEATURES, activation="relu", trainable=False)
    head = CWRStarHead(CLASSES)
    reference = tf.keras.Model(inputs, head(backbone(inputs)))
    reference.set_weights(hybrid.get_weights()[: len(reference.get_weights())])
    reference.compile(
        tf.keras.optimizers.SGD(0.05),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    for start in range(0, 64, BATCH):
        batch = slice(start, start + BATCH)
        loss_h = hybrid.train_on_batch(x[batch], y[batch], return_dict=True)["loss"]
        loss_r = reference.train_on_batch(x[batch], y[batch])
        assert loss_h == pytest.approx(loss_r, rel=1e-5)
    # Float32 arithmetic in a different order: 1e-6 absolute on O(1) weights.
    np.testing.assert_allclose(hybrid.head.kernel.numpy(), head.kernel.numpy(), atol=1e-6)
    np.testing.assert_array_equal(
        hybrid.get_layer("backbone").kernel.numpy(), backbone.kernel.numpy()
    )
    assert int(hybrid.optimizer.iterations.numpy()) == 4


@pytest.mark.parametrize("forward_bits", [4, 8])
@pytest.mark.parametrize("update_bits", [8, 16, None])
def test_hybrid_step_matches_method_in_numpy(forward_bits, update_bits):
    x, y = _data()
    model = _hybrid_model(forward_bits, update_bits)
    model.calibrate(x, y, batch_size=BATCH)
    kernel = np.random.default_rng(3).normal(size=(FEATURES, CLASSES)).astype(np.float32)
    model.head.kernel.assign(kernel)
    xb, yb = x[:BATCH], y[:BATCH]
    model.train_on_batch(xb, yb)

    f_low, f_high = model.feature_range
    g_low, g_high = model.gradient_range
    x_q = _q(_features(model, xb), forward_bits, f_low, f_high)
    margin = np.float32(0.02) * (kernel.max() - kernel.min())
    w_q = _q(kernel, forward_bits, kernel.min() - margin, kernel.max() + margin)
    logits = x_q @ w_q
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    p_q = _q(p, forward_bits, 0.0, 1.0)
    g_q = _q((p_q - np.eye(CLASSES)[yb]) / BATCH, forward_bits, g_low, g_high)
    updated = kernel - np.float32(0.05) * x_q.T @ g_q
    expected = (
        updated
        if update_bits is None
        else _q(updated, update_bits, updated.min(), updated.max())
    )
    stored = model.head.kernel.numpy()
    # Float32 arithmetic in another order may flip a value sitting on a rounding
    # boundary by one stored level; without storage rounding, float32 noise only.
    step = (
        0.0
        if update_bits is None
        else (updated.max() - updated.min()) / (2**update_bits - 1)
    )
    np.testing.assert_allclose(stored, expected, atol=max(1.01 * step, 1e-6))
    assert not np.allclose(stored, kernel)  # it did learn
    if update_bits is not None:
        levels = (stored - stored.min()) / (
            (stored.max() - stored.min()) / (2**update_bits - 1)
        )
        np.testing.assert_allclose(levels, np.round(levels), atol=0.02)


def test_calibrate_takes_pass_ranges():
    x, y = _data(80)
    model = _hybrid_model()
    model.head.kernel.assign(np.random.default_rng(4).normal(size=(FEATURES, CLASSES)))
    model.calibrate(x, y, batch_size=BATCH)
    features = _features(model, x)
    np.testing.assert_allclose(
        model.feature_range, [features.min(), features.max()], rtol=1e-6
    )
    p = tf.nn.softmax(features @ model.head.kernel.numpy()).numpy()
    diff = p - np.eye(CLASSES)[y]
    # Normalized by the full batch size, not by the short last batch.
    np.testing.assert_allclose(
        model.gradient_range, [diff.min() / BATCH, diff.max() / BATCH], rtol=1e-5
    )


def test_float_steps_track_gradient_range_and_fit_calibrates():
    x, y = _data(80)
    model = _hybrid_model()
    model.head.kernel.assign(np.random.default_rng(4).normal(size=(FEATURES, CLASSES)))
    p = tf.nn.softmax(model.predict(x[:BATCH], verbose=0)).numpy()
    diff = p - np.eye(CLASSES)[y[:BATCH]]
    model.train_on_batch(x[:BATCH], y[:BATCH])  # float phase: whole model, tracked
    np.testing.assert_allclose(
        model._difference_range.numpy(), [diff.min(), diff.max()], rtol=1e-5
    )

    assert not model.is_calibrated
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    assert model.is_calibrated
    features = _features(model, x)
    np.testing.assert_allclose(
        model.feature_range, [features.min(), features.max()], rtol=1e-6
    )
    low, high = model.gradient_range
    assert low <= diff.min() / BATCH and high >= diff.max() / BATCH
    # The second fit is the hybrid phase: the backbone no longer changes.
    before = model.get_layer("backbone").kernel.numpy().copy()
    model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_layer("backbone").kernel.numpy(), before)


def test_stochastic_rounding_is_seeded():
    x, y = _data()
    kernels = []
    for _ in range(2):
        tf.keras.backend.clear_session()
        model = _hybrid_model(8, 8, rounding="stochastic", seed=5)
        model.calibrate(x, y, batch_size=BATCH)
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
        kernels.append(model.head.kernel.numpy())
    np.testing.assert_array_equal(kernels[0], kernels[1])


def test_save_load_round_trip_keeps_predictions_and_state(tmp_path):
    x, y = _data()
    model = _hybrid_model(8, 16, softmax=True, rounding="stochastic", seed=3)
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y)],
    )
    y2 = np.where(y == 0, 1, y)
    model.fit(
        x,
        y2,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y2)],
    )
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    assert isinstance(loaded, HybridQuantizedTrainStep)
    assert (loaded.forward_bits, loaded.update_bits, loaded.rounding, loaded.seed) == (
        8,
        16,
        "stochastic",
        3,
    )
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(
        loaded.head.consolidated_kernel, model.head.consolidated_kernel
    )
    np.testing.assert_array_equal(loaded.head.past_counts, model.head.past_counts)
    np.testing.assert_array_equal(loaded.feature_range, model.feature_range)
    assert loaded.is_calibrated
    again = HybridQuantizedTrainStep.from_config(model.get_config())
    assert again.forward_bits == 8 and [l.name for l in again.layers] == [
        l.name for l in model.layers
    ]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"forward_bits": 1}, "forward_bits"),
        ({"update_bits": 32}, "update_bits"),
        ({"rounding": "up"}, "rounding"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _hybrid_model(**{"forward_bits": 8, "update_bits": 16, **kwargs})


def test_model_without_head_or_with_other_output():
    inputs = tf.keras.Input((3,))
    with pytest.raises(ValueError, match="exactly one CWRStarHead"):
        HybridQuantizedTrainStep(inputs, tf.keras.layers.Dense(2)(inputs))
    logits = CWRStarHead(2)(inputs)
    with pytest.raises(ValueError, match="logits or a softmax"):
        HybridQuantizedTrainStep(inputs, tf.keras.layers.Dense(2)(logits))


def test_momentum_warns():
    x, y = _data()
    model = _hybrid_model()
    model.compile(
        tf.keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy"
    )
    model.calibrate(x, y)
    with pytest.warns(UserWarning, match="plain SGD"):
        model.train_on_batch(x[:4], y[:4])


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_head_model_on_features_equals_full_model(rounding):
    x, y = _data(96)
    full = _hybrid_model(8, 8, rounding=rounding, seed=11)
    full.fit(
        x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False
    )  # float phase + calibration
    head = full.head_model()
    head.compile(
        tf.keras.optimizers.SGD(0.05),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    np.testing.assert_array_equal(head.feature_range, full.feature_range)
    np.testing.assert_array_equal(head.gradient_range, full.gradient_range)
    assert head.is_calibrated and isinstance(head.head, CWRStarHead)

    features = full.feature_extractor.predict(x, verbose=0)
    for model, inputs in ((full, x), (head, features)):
        callback = CWRStar(model.head, labels=y)
        model.fit(
            inputs,
            y,
            batch_size=BATCH,
            epochs=2,
            verbose=0,
            shuffle=False,
            callbacks=[callback],
        )
    # Same arithmetic on the same features and the same noise seed.
    np.testing.assert_allclose(
        head.head.kernel.numpy(), full.head.kernel.numpy(), atol=1e-6
    )
    before = full.get_layer("backbone").kernel.numpy().copy()
    full.load_head_state(head)
    np.testing.assert_array_equal(
        full.head.consolidated_kernel, head.head.consolidated_kernel
    )
    np.testing.assert_array_equal(full.get_layer("backbone").kernel.numpy(), before)
