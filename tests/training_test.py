import warnings

import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import CWRStar, CWRStarHead, HybridQuantizedTrainStep

FEATURES, CLASSES, BATCH = 6, 4, 16
LEARNING_RATE = 0.05


def _hybrid_model(
    forward_bits=8, update_bits=16, softmax=False, learning_rate=LEARNING_RATE, **kwargs
):
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
        tf.keras.optimizers.SGD(learning_rate),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=not softmax),
        metrics=["accuracy"],
    )
    return model


def _data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 5)).astype(np.float32)
    return x, rng.integers(0, CLASSES, n).astype(np.int32)


def _end_first_experience(model, y):
    """Consolidate a first experience without training: the hybrid phase begins (and
    the backbone is frozen, as CWRStar freezes it for the next experience)."""
    model.head.begin_experience(np.bincount(y, minlength=CLASSES))
    model.head.consolidate()
    model.get_layer("backbone").trainable = False


def _q(x, bits, low, high):
    """METHOD §3's zero-exact grid in numpy: widen to 0, integer zero point."""
    x = np.asarray(x, np.float32)
    low, high = np.float32(min(low, 0.0)), np.float32(max(high, 0.0))
    levels = np.float32(2**bits - 1)
    step = (high - low) / levels
    zero_point = np.clip(np.floor(-low / step + np.float32(0.5)), 0, levels)
    return np.clip(np.round(x / step), -zero_point, levels - zero_point) * step


def _features(model, x):
    return model.get_layer("backbone")(x).numpy()


def _expected_step(model, kernel, x, y, *, quantize_operands=True, weights=None):
    learning_rate = np.float32(model.optimizer.learning_rate.numpy())
    """METHOD §4 in numpy, from the calibrated ranges (or float operands)."""
    bits = model.forward_bits
    q = _q if quantize_operands else (lambda t, *_: np.asarray(t, np.float32))
    f_low, f_high = model.feature_range
    g_low, g_high = model.gradient_range
    x_q = q(_features(model, x), bits, f_low, f_high)
    margin = np.float32(0.02) * (kernel.max() - kernel.min())
    w_q = q(kernel, bits, kernel.min() - margin, kernel.max() + margin)
    logits = x_q @ w_q
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    difference = q(p, bits, 0.0, 1.0) - np.eye(CLASSES, dtype=np.float32)[y]
    if weights is not None:
        difference = difference * weights[:, None]
    g_q = q(difference / np.float32(len(y)), bits, g_low, g_high)
    return kernel - learning_rate * x_q.T @ g_q


def _stored(updated, update_bits):
    if update_bits is None:
        return updated
    return _q(updated, update_bits, updated.min(), updated.max())


def _levels_apart(a, b, update_bits, updated):
    step = (max(updated.max(), 0) - min(updated.min(), 0)) / (2**update_bits - 1)
    return np.round(np.abs(a - b) / step)


def test_none_bits_equal_plain_float_sgd():
    x, y = _data()
    hybrid = _hybrid_model(None, None)
    _end_first_experience(hybrid, y)
    hybrid.head.kernel.assign(np.random.default_rng(2).normal(size=(FEATURES, CLASSES)))

    # Reference: the same network as a plain Keras model, backbone frozen, plain SGD.
    inputs = tf.keras.Input((5,))
    backbone = tf.keras.layers.Dense(FEATURES, activation="relu", trainable=False)
    head = CWRStarHead(CLASSES)
    reference = tf.keras.Model(inputs, head(backbone(inputs)))
    reference.set_weights(hybrid.get_weights()[: len(reference.get_weights())])
    reference.compile(
        tf.keras.optimizers.SGD(LEARNING_RATE),
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
    # A large step on small weights, so that the operands' quantization moves the
    # update by more than one 8-bit stored level (the test then tells them apart).
    model = _hybrid_model(forward_bits, update_bits, learning_rate=0.5)
    _end_first_experience(model, y)
    model.calibrate(x, y, batch_size=BATCH)
    kernel = 0.1 * np.random.default_rng(3).normal(size=(FEATURES, CLASSES))
    kernel = kernel.astype(np.float32)
    model.head.kernel.assign(kernel)
    xb, yb = x[:BATCH], y[:BATCH]
    model.train_on_batch(xb, yb)
    stored = model.head.kernel.numpy()

    updated = _expected_step(model, kernel, xb, yb)
    expected = _stored(updated, update_bits)
    unquantized = _stored(
        _expected_step(model, kernel, xb, yb, quantize_operands=False), update_bits
    )
    if update_bits is None:
        # Float storage: float32 reassociation only (1e-6 on O(1) weights)...
        np.testing.assert_allclose(stored, expected, atol=1e-6)
        # ...while float operands change the update by far more.
        assert np.abs(unquantized - expected).max() > 1e-4
        return
    apart = _levels_apart(stored, expected, update_bits, updated)
    # Float32 in another order may flip a value sitting on a rounding tie by one stored
    # level: allow one level on at most 1 entry in 24; never two levels.
    assert apart.max() <= 1 and (apart == 1).sum() <= 1, apart
    # The same check rejects an update computed from unquantized operands.
    wrong = _levels_apart(unquantized, expected, update_bits, updated)
    assert (wrong >= 1).sum() > 1 or wrong.max() > 1


def test_sample_weight_weights_the_logit_gradient():
    x, y = _data()
    model = _hybrid_model(8, None)
    _end_first_experience(model, y)
    model.calibrate(x, y, batch_size=BATCH)
    kernel = np.random.default_rng(5).normal(size=(FEATURES, CLASSES)).astype(np.float32)
    model.head.kernel.assign(kernel)
    weights = np.linspace(0.0, 1.5, BATCH).astype(np.float32)
    model.train_on_batch(x[:BATCH], y[:BATCH], sample_weight=weights)
    expected = _expected_step(model, kernel, x[:BATCH], y[:BATCH], weights=weights)
    unweighted = _expected_step(model, kernel, x[:BATCH], y[:BATCH])
    np.testing.assert_allclose(model.head.kernel.numpy(), expected, atol=1e-6)
    assert np.abs(unweighted - expected).max() > 1e-3  # the weights matter


def test_calibrate_takes_pass_ranges_from_any_fit_input():
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
    expected_gradient = [diff.min() / BATCH, diff.max() / BATCH]
    np.testing.assert_allclose(model.gradient_range, expected_gradient, rtol=1e-5)

    def generator():
        for start in range(0, 80, BATCH):
            yield x[start : start + BATCH], y[start : start + BATCH]

    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(BATCH)
    for data, kwargs in (
        (dataset, {}),
        (generator(), {"steps": 5}),
        (dataset.repeat(), {"steps": 5}),
    ):
        other = _hybrid_model()
        other.set_weights(model.get_weights())
        other._calibrated.assign(0)
        other.calibrate(data, **kwargs)
        np.testing.assert_array_equal(other.feature_range, model.feature_range)
        np.testing.assert_allclose(other.gradient_range, expected_gradient, rtol=1e-5)
    # A pass over the first 2 batches only sees part of the data.
    partial = _hybrid_model()
    partial.set_weights(model.get_weights())
    partial.calibrate(dataset, steps=2)
    assert partial.feature_range[1] < features.max() or partial.feature_range[0] > 0


def test_calibrate_errors_keep_the_ranges():
    x, y = _data()
    model = _hybrid_model()
    model.calibrate(x, y)
    before = model.get_weights()
    with pytest.raises(ValueError, match="needs labels"):
        model.calibrate(x)
    x_bad = x.copy()
    x_bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        model.calibrate(x_bad, y)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)
    uncompiled = HybridQuantizedTrainStep(model.inputs, model.outputs)
    with pytest.raises(RuntimeError, match="Compile the model"):
        uncompiled.calibrate(x, y)


class _ZeroNaN(tf.keras.layers.Layer):
    """Hides NaN inputs: maps them to 0."""

    def call(self, inputs):
        return tf.where(tf.math.is_nan(inputs), tf.zeros_like(inputs), inputs)


def test_calibrate_refuses_nan_inputs_that_the_network_hides():
    x, y = _data()
    inputs = tf.keras.Input((5,))
    features = tf.keras.layers.Dense(FEATURES, name="backbone")(_ZeroNaN()(inputs))
    model = HybridQuantizedTrainStep(
        inputs, CWRStarHead(CLASSES, name="head")(features), forward_bits=8, update_bits=16
    )
    model.compile(
        tf.keras.optimizers.SGD(LEARNING_RATE),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.calibrate(x, y)
    before = model.get_weights()
    x_bad = x.copy()
    x_bad[40, 2] = np.nan  # in the second batch of 32: NaN must stay once seen
    with pytest.raises(ValueError, match="non-finite inputs"):
        model.calibrate(x_bad, y)
    for old, new in zip(before, model.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_the_head_decides_the_phase():
    x, y = _data(80)
    model = _hybrid_model()
    model.head.kernel.assign(np.random.default_rng(4).normal(size=(FEATURES, CLASSES)))
    p = tf.nn.softmax(model.predict(x[:BATCH], verbose=0)).numpy()
    diff = p - np.eye(CLASSES)[y[:BATCH]]
    # Without CWRStar no experience is consolidated: float phase, with a warning that
    # the bit widths are not used.
    with pytest.warns(UserWarning, match="not used yet"):
        model.train_on_batch(x[:BATCH], y[:BATCH])
    np.testing.assert_allclose(
        model._difference_range.numpy(), [diff.min(), diff.max()], rtol=1e-5
    )
    # A second fit on experience 0 stays in the float phase: the backbone trains.
    for _ in range(2):
        before = model.get_layer("backbone").kernel.numpy().copy()
        model.fit(x, y, batch_size=BATCH, epochs=1, verbose=0)
        assert model.phase == "float" and not model.is_calibrated
        assert not np.array_equal(model.get_layer("backbone").kernel.numpy(), before)
    # One experience with CWRStar: the next fit is the hybrid phase.
    model.fit(x, y, batch_size=BATCH, verbose=0, callbacks=[CWRStar(model.head, labels=y)])
    assert model.phase == "hybrid" and not model.is_calibrated
    before = model.get_layer("backbone").kernel.numpy().copy()
    with pytest.warns(UserWarning, match="not calibrated"):
        model.fit(
            x, y, batch_size=BATCH, verbose=0, callbacks=[CWRStar(model.head, labels=y)]
        )
    np.testing.assert_array_equal(model.get_layer("backbone").kernel.numpy(), before)
    model.calibrate(x, y, batch_size=BATCH)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calibrated, backbone frozen: no warning
        model.fit(
            x, y, batch_size=BATCH, verbose=0, callbacks=[CWRStar(model.head, labels=y)]
        )


@pytest.mark.parametrize("softmax", [False, True])
def test_inference_clips_features_to_the_calibrated_range(softmax):
    """predict/evaluate/upper_model see the features clipped as the hybrid step does
    (METHOD §4's static range); training=True and forward_bits=None do not clip."""
    x, y = _data(80)
    model = _hybrid_model(softmax=softmax)
    _end_first_experience(model, y)
    rng = np.random.default_rng(5)  # the live kernel, as after a hybrid experience
    model.head.kernel.assign(rng.normal(size=(FEATURES, CLASSES)).astype(np.float32))
    features = _features(model, x)
    kernel = model.head.kernel.numpy()

    def outputs(f):
        logits = f @ kernel
        if not softmax:
            return logits
        p = np.exp(logits - logits.max(1, keepdims=True))
        return p / p.sum(1, keepdims=True)

    # Uncalibrated: no static range, nothing clips.
    np.testing.assert_allclose(
        model.predict(x, verbose=0), outputs(features), rtol=1e-5, atol=1e-6
    )
    # Calibrated on shrunk inputs: many features of x fall outside its range.
    model.calibrate(x[:16] / 2, y[:16], batch_size=BATCH)
    low, high = model.feature_range
    small = _features(model, x[:16] / 2)
    np.testing.assert_allclose([low, high], [small.min(), small.max()], rtol=1e-6)
    clipped = np.clip(features, low, high)
    assert (features > high).mean() > 0.02
    assert np.abs(outputs(clipped) - outputs(features)).max() > 0.1
    np.testing.assert_allclose(
        model.predict(x, verbose=0), outputs(clipped), rtol=1e-5, atol=1e-6
    )
    logits = clipped @ kernel
    log_p = logits - logits.max(1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(1, keepdims=True))
    loss, accuracy = model.evaluate(x, y, batch_size=BATCH, verbose=0)
    np.testing.assert_allclose(loss, -log_p[np.arange(len(y)), y].mean(), rtol=1e-5)
    np.testing.assert_allclose(accuracy, np.mean(logits.argmax(1) == y))
    np.testing.assert_allclose(
        model(x, training=True).numpy(), outputs(features), rtol=1e-5, atol=1e-6
    )
    upper = model.upper_model()
    np.testing.assert_allclose(
        upper.predict(features, verbose=0), outputs(clipped), rtol=1e-5, atol=1e-6
    )
    # Without forward bits the hybrid step does not clip, nor does inference.
    float_model = _hybrid_model(None, None, softmax=softmax)
    float_model.set_weights(model.get_weights())
    assert float_model.is_calibrated
    np.testing.assert_allclose(
        float_model.predict(x, verbose=0), outputs(features), rtol=1e-5, atol=1e-6
    )


def test_stochastic_rounding_is_seeded_and_resumes():
    x, y = _data()
    kernels = []
    for seed in (5, 5, 6):
        tf.keras.backend.clear_session()
        model = _hybrid_model(8, 8, rounding="stochastic", seed=seed)
        _end_first_experience(model, y)
        model.calibrate(x, y, batch_size=BATCH)
        model.fit(x, y, batch_size=BATCH, epochs=2, verbose=0, shuffle=False)
        kernels.append(model.head.kernel.numpy())
    np.testing.assert_array_equal(kernels[0], kernels[1])
    assert not np.array_equal(kernels[0], kernels[2])
    # The noise counter is model state: a copy continues the same stream.
    copy = _hybrid_model(8, 8, rounding="stochastic", seed=6)
    copy.set_weights(model.get_weights())
    for m in (model, copy):
        m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    np.testing.assert_array_equal(copy.head.kernel.numpy(), model.head.kernel.numpy())


def test_zero_exact_keeps_zero_columns_zero():
    """A class whose gradient is exactly 0 keeps its zero column (METHOD §3)."""
    x, y = _data()
    for grid, stays_zero in (("zero_exact", True), ("paper", False)):
        model = _hybrid_model(8, 16, grid=grid)
        _end_first_experience(model, y)
        model.calibrate(x, y, batch_size=BATCH)
        kernel = np.zeros((FEATURES, CLASSES), np.float32)
        kernel[:, :3] = np.random.default_rng(1).normal(size=(FEATURES, 3))
        kernel[:, 3] = 0.0
        kernel[:, :3] -= 8.0  # class 3's logit dominates nothing: p_3 rounds to 0
        kernel[:, :3] *= -1.0
        model.head.kernel.assign(kernel)
        keep = y[:BATCH] != 3
        model.train_on_batch(x[:BATCH][keep], y[:BATCH][keep])
        column = model.head.kernel.numpy()[:, 3]
        assert np.all(column == 0.0) == stays_zero, (grid, column)


def test_save_load_round_trip_keeps_predictions_and_state(tmp_path):
    x, y = _data()
    model = _hybrid_model(8, 16, softmax=True, rounding="stochastic", seed=3, grid="paper")
    model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=1,
        verbose=0,
        callbacks=[CWRStar(model.head, labels=y)],
    )
    model.calibrate(x, y, batch_size=BATCH)
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
    own = ("forward_bits", "update_bits", "rounding", "seed", "grid")
    assert [getattr(loaded, k) for k in own] == [8, 16, "stochastic", 3, "paper"]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    np.testing.assert_array_equal(
        loaded.head.consolidated_kernel, model.head.consolidated_kernel
    )
    np.testing.assert_array_equal(loaded.head.past_counts, model.head.past_counts)
    np.testing.assert_array_equal(loaded.feature_range, model.feature_range)
    assert loaded.is_calibrated and loaded.phase == "hybrid"
    assert loaded.head.consolidated_experiences == 2
    np.testing.assert_array_equal(
        loaded._noise_counter.numpy(), model._noise_counter.numpy()
    )
    again = HybridQuantizedTrainStep.from_config(model.get_config())
    assert again.grid == "paper"
    assert [layer.name for layer in again.layers] == [layer.name for layer in model.layers]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"forward_bits": 1}, "forward_bits"),
        ({"update_bits": 32}, "update_bits"),
        ({"rounding": "up"}, "rounding"),
        ({"grid": "tflite"}, "grid"),
        ({"gradient_range_mode": "percentile"}, "gradient_range_mode"),
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


def test_momentum_and_other_losses_warn():
    x, y = _data()
    model = _hybrid_model()
    _end_first_experience(model, y)
    model.calibrate(x, y)
    model.compile(
        tf.keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy"
    )
    with pytest.warns(UserWarning, match="plain SGD"):
        model.train_on_batch(x[:4], y[:4])
    model.compile(tf.keras.optimizers.SGD(0.01), "mse")
    with pytest.warns(UserWarning, match="cross-entropy"):
        model.train_on_batch(x[:4], y[:4])


def test_trainable_layers_in_hybrid_phase_raise_before_state_changes():
    x, y = _data()
    model = _hybrid_model()
    model.fit(x, y, verbose=0, callbacks=[CWRStar(model.head, labels=y)])
    before = [w.copy() for w in model.head.get_weights()]
    for kwargs, message in (
        ({"trainable_layers": ["backbone"]}, "above the model's `latent_layer`=None"),
        ({"freeze_after_first": False}, "would train nothing else"),
    ):
        with pytest.raises(ValueError, match=message):
            model.fit(x, y, verbose=0, callbacks=[CWRStar(model.head, labels=y, **kwargs)])
        for old, new in zip(before, model.head.get_weights()):
            np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_upper_model_on_features_equals_full_model(rounding):
    x, y = _data(96)
    first = _hybrid_model(8, 8, rounding=rounding, seed=11)
    first.fit(
        x,
        y,
        batch_size=BATCH,
        verbose=0,
        shuffle=False,
        callbacks=[CWRStar(first.head, labels=y)],
    )
    first.calibrate(x, y, batch_size=BATCH)
    full, split = (_hybrid_model(8, 8, rounding=rounding, seed=11) for _ in range(2))
    for model in (full, split):
        model.set_weights(first.get_weights())
    upper = split.upper_model()
    upper.compile(
        tf.keras.optimizers.SGD(LEARNING_RATE),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    np.testing.assert_array_equal(upper.feature_range, full.feature_range)
    assert upper.is_calibrated and upper.phase == "hybrid" and upper.head is split.head

    features = full.feature_extractor.predict(x, verbose=0)
    for model, inputs in ((full, x), (upper, features)):
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
    split.load_head_state(upper)
    # Same arithmetic on the same features and the same noise stream.
    np.testing.assert_allclose(
        split.head.kernel.numpy(), full.head.kernel.numpy(), atol=1e-6
    )
    np.testing.assert_array_equal(split._noise_counter.numpy(), full._noise_counter.numpy())
    np.testing.assert_array_equal(
        split.get_layer("backbone").kernel.numpy(),
        first.get_layer("backbone").kernel.numpy(),
    )


def test_bound_gradient_range_is_plus_minus_one_over_batch_and_clips_nothing():
    from larq_cwr.training import hybrid_sgd_step

    rng = np.random.default_rng(0)
    batch, features, classes = 8, 5, 4
    x = tf.constant(np.abs(rng.normal(size=(batch, features))) + 0.5, tf.float32)
    # Old class 0's column large: the new class 3's samples are predicted confidently
    # as class 0, so p - onehot reaches ~+1 there.
    kernel = tf.constant(np.c_[np.full((features, 1), 2.0), np.zeros((features, 3))])
    kernel = tf.cast(kernel, tf.float32)
    labels = tf.fill([batch], 3)
    common = dict(labels=labels, learning_rate=0.1, forward_bits=8, update_bits=None)
    bound = hybrid_sgd_step(kernel, x, gradient_range="bound", **common)
    explicit = hybrid_sgd_step(
        kernel, x, gradient_range=tf.constant([-1 / batch, 1 / batch]), **common
    )
    np.testing.assert_array_equal(bound.kernel.numpy(), explicit.kernel.numpy())
    # Experience 0's statistics of a confident model: positive side ~0.1 / batch. It
    # clips the large positive entries, so the update differs from the float one by far
    # more than with the bound (independently computed float update below).
    calibrated = hybrid_sgd_step(
        kernel, x, gradient_range=tf.constant([-0.9 / batch, 0.1 / batch]), **common
    )
    p = tf.nn.softmax(x @ kernel).numpy()
    difference = p - np.eye(classes)[labels.numpy()]
    assert difference.max() > 0.5  # a confidently wrong prediction
    exact = kernel.numpy() - 0.1 * x.numpy().T @ difference / batch
    error_bound = np.abs(bound.kernel.numpy() - exact).max()
    error_calibrated = np.abs(calibrated.kernel.numpy() - exact).max()
    assert error_calibrated > 10 * error_bound, (error_calibrated, error_bound)


def test_gradient_range_mode_is_saved_in_the_config():
    inputs = tf.keras.Input((4,))
    model = HybridQuantizedTrainStep(
        inputs, CWRStarHead(3)(inputs), gradient_range_mode="bound"
    )
    again = HybridQuantizedTrainStep.from_config(model.get_config())
    assert again.gradient_range_mode == "bound"
    assert again.upper_model().gradient_range_mode == "bound"
