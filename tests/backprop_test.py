"""Quantized back-propagation through trainable blocks and latent replay in the step."""

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import CWRStar, CWRStarHead, HybridQuantizedTrainStep
from larq_cwr.backprop import (
    BlockStack,
    block_optimizer_directions,
    block_optimizer_slot_count,
    latent_weight_grid,
    quantize_activation,
    stochastic_latent_update,
    update_block_weights,
)
from larq_cwr.experiment import TrainingConfig, architecture_weights
from larq_cwr.quantizers import counter_uniform, snap_to_grid
from larq_cwr.replay import LatentBinarization, LatentReplayMemory
from larq_cwr.training import hybrid_sgd_step

CLASSES = 4


def _block(x, name):
    """QuickNet's residual block: binary 3x3 conv, BN, add (as larq_cwr.backbones)."""
    y = lq.layers.QuantConv2D(
        int(x.shape[-1]),
        3,
        padding="same",
        pad_values=1.0,
        input_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_quantizer=lq.quantizers.SteSign(clip_value=1.25),
        kernel_constraint=lq.constraints.WeightClip(clip_value=1.25),
        kernel_initializer=tf.keras.initializers.GlorotNormal(7),
        use_bias=False,
        name=f"{name}_conv",
    )(x)
    y = tf.keras.layers.BatchNormalization(name=f"{name}_bn")(y)
    return tf.keras.layers.Add(name=f"{name}_add")([x, y])


def _model(*, replay=None, binarize=False, **kwargs):
    inputs = tf.keras.Input((6, 6, 1))
    x = tf.keras.layers.Conv2D(
        8,
        3,
        padding="same",
        kernel_initializer=tf.keras.initializers.HeNormal(3),
        name="stem",
    )(inputs)
    x = tf.keras.layers.BatchNormalization(name="stem_bn")(x)
    x = (LatentBinarization if binarize else tf.keras.layers.Activation)(
        *(() if binarize else ("linear",)), name="latent"
    )(x)
    x = _block(x, "block_a")
    x = _block(x, "block_b")
    x = tf.keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = CWRStarHead(CLASSES, name="head")(x)
    model = HybridQuantizedTrainStep(
        inputs, logits, latent_layer="latent", replay=replay, **kwargs
    )
    model.compile(
        tf.keras.optimizers.SGD(0.1),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6, 6, 1)).astype(np.float32)
    return x, rng.integers(0, CLASSES, n).astype(np.int32)


def _first_experience(model, x, y):
    model.fit(x, y, batch_size=10, verbose=0, callbacks=[CWRStar(model.head, labels=y)])
    model.calibrate(x, y, batch_size=10)


def _weights(model, *names):
    return {
        f"{name}/{i}": w.numpy().copy()
        for name in names
        for i, w in enumerate(model.get_layer(name).weights)
    }


def test_quantize_activation_quantizes_forward_and_backward():
    x = tf.random.stateless_normal((64,), seed=(1, 1))
    upstream = tf.random.stateless_normal((64,), seed=(2, 2))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantize_activation(x, forward_bits=4, backward_bits=3)
    gradient = tape.gradient(y, x, output_gradients=upstream)
    expected_y = snap_to_grid(x, 4, low=tf.reduce_min(x), high=tf.reduce_max(x))
    expected_g = snap_to_grid(
        upstream, 3, low=tf.reduce_min(upstream), high=tf.reduce_max(upstream)
    )
    np.testing.assert_array_equal(y.numpy(), expected_y.numpy())
    np.testing.assert_array_equal(gradient.numpy(), expected_g.numpy())
    # 3 bits: at most 8 distinct gradient values; the upstream has 64.
    assert len(np.unique(gradient.numpy())) <= 8 < len(np.unique(upstream.numpy()))


def _block_gradients(model, latents, upstream, **bits):
    stack = model._blocks
    variables = [v for layer in stack.layers for v in layer.trainable_weights]
    with tf.GradientTape() as tape:
        features = stack.upper(latents, **bits)
    return features, tape.gradient(features, variables, output_gradients=upstream)


def test_float_block_stack_equals_the_keras_graph():
    model = _model()
    x, _ = _data()
    latents = model._blocks.lower(x, training=False)
    upstream = tf.random.stateless_normal((len(x), 8), seed=(3, 3))
    features, gradients = _block_gradients(model, latents, upstream)
    # Reference: the model's own graph from the latent layer, Keras' autodiff.
    reference_model = tf.keras.Model(model.get_layer("latent").output, model.head.input)
    variables = [v for layer in model._blocks.layers for v in layer.trainable_weights]
    with tf.GradientTape() as tape:
        reference = reference_model(latents, training=False)
    expected = tape.gradient(reference, variables, output_gradients=upstream)
    np.testing.assert_allclose(features.numpy(), reference.numpy(), atol=1e-6)
    assert len(gradients) == len(expected) == 6  # 2 blocks x (kernel, gamma, beta)
    for ours, theirs in zip(gradients, expected):
        np.testing.assert_allclose(ours.numpy(), theirs.numpy(), atol=1e-5)


def _relative_error(approximate, exact):
    return np.linalg.norm(approximate - exact) / np.linalg.norm(exact)


def _gradient_errors(model, **bits):
    x, _ = _data()
    latents = model._blocks.lower(x, training=False)
    upstream = tf.random.stateless_normal((len(x), 8), seed=(4, 4))
    exact_features, exact = _block_gradients(model, latents, upstream)
    features, quantized = _block_gradients(model, latents, upstream, **bits)
    errors = [_relative_error(q.numpy(), e.numpy()) for q, e in zip(quantized, exact)]
    cosines = [
        float(np.sum(q * e) / np.linalg.norm(q) / np.linalg.norm(e))
        for q, e in ((q.numpy(), e.numpy()) for q, e in zip(quantized, exact))
    ]
    return _relative_error(features.numpy(), exact_features.numpy()), errors, cosines


@pytest.mark.parametrize("backward_bits, bound", [(16, 1e-3), (8, 0.06)])
def test_quantized_gradients_within_stated_error_of_float(backward_bits, bound):
    """Backward quantization alone: each gradient tensor moves by at most half a step,
    1/(2 (2^b - 1)) of its range; relative to the gradients' norm, after the ~8
    quantized tensors of two blocks, that is at most ~1e-4 at 16 bits (bound 1e-3) and a
    few percent at 8 bits (measured 0.5-4%, bound 6%). 4-bit gradients exceed it."""
    model = _model()
    _, errors, _ = _gradient_errors(model, backward_bits=backward_bits)
    _, coarse, _ = _gradient_errors(model, backward_bits=4)
    assert max(errors) <= bound, errors
    assert max(coarse) > 0.06, coarse


def test_8_bit_forward_pass_keeps_features_and_gradient_directions():
    """8-bit activations in front of the binary convolutions flip the sign of values
    within half a step of 0 (a different binary input), so the features move by a few
    percent (measured 4.8%; bound 8%) and the gradients keep their direction (cosine
    measured >= 0.965; bound 0.95). A 4-bit forward pass fails both (50%, 0.69)."""
    model = _model()
    feature_error, _, cosines = _gradient_errors(model, forward_bits=8, backward_bits=8)
    assert feature_error <= 0.08 and min(cosines) >= 0.95, (feature_error, cosines)
    coarse_error, _, coarse_cosines = _gradient_errors(model, forward_bits=4)
    assert coarse_error > 0.08 and min(coarse_cosines) < 0.95


def test_update_block_weights_stores_each_kind_as_specified():
    binary = tf.Variable([[1.2, -0.3], [0.05, -1.24]])
    norm = tf.Variable([0.5, 2.0])
    other = tf.Variable([[0.1, -0.7], [0.3, 0.0]])
    gradients = [
        tf.constant([[-1.0, 0.11], [0.2, 1.0]]),
        tf.constant([1.0, -3.0]),
        tf.ones((2, 2)),
    ]
    update_block_weights(
        [binary, norm, other],
        gradients,
        learning_rate=0.1,
        binary=[binary],
        float_only=[norm],
        latent_weight_bits=8,
        update_bits=4,
    )
    # Binary: W - lr g = [[1.3, -0.311], [0.03, -1.34]], clipped to +-1.25, then on the
    # 8-bit grid (k + 1/2) * step, step = 2.5/255, -128 <= k <= 127, k = floor(w / step):
    # 127.5 -> 127, -31.72 -> -32, 3.06 -> 3, -127.5 -> -128.
    step = 2.5 / 255
    expected = (np.array([[127, -32], [3, -128]]) + 0.5) * step
    np.testing.assert_allclose(binary.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(norm.numpy(), [0.4, 2.3], rtol=1e-6)  # float SGD
    # Other: [[0.0, -0.8], [0.2, -0.1]] on the 4-bit grid of its own range [-0.8, 0.2].
    other_step = 1.0 / 15
    values = np.array([[0.0, -0.8], [0.2, -0.1]])
    zero_point = np.floor(0.8 / other_step + 0.5)
    expected_other = np.clip(np.round(values / other_step), -zero_point, 15 - zero_point)
    np.testing.assert_allclose(other.numpy(), expected_other * other_step, atol=1e-6)


def test_hybrid_phase_trains_exactly_the_named_blocks():
    x, y = _data()
    model = _model(forward_bits=8, update_bits=16, backward_bits=8)
    _first_experience(model, x, y)
    before = _weights(
        model, "stem", "stem_bn", "block_a_conv", "block_a_bn", "block_b_conv"
    )
    before_bn = _weights(model, "block_b_bn")
    head_before = model.head.kernel.numpy().copy()
    callback = CWRStar(
        model.head, labels=y, trainable_layers=["block_b_conv", "block_b_bn"]
    )
    model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
    after = _weights(model, "stem", "stem_bn", "block_a_conv", "block_a_bn", "block_b_conv")
    for key in before:
        if key.startswith("block_b_conv"):
            continue
        np.testing.assert_array_equal(before[key], after[key], err_msg=key)
    assert not np.array_equal(before["block_b_conv/0"], after["block_b_conv/0"])
    changed_bn = _weights(model, "block_b_bn")
    assert not np.array_equal(
        before_bn["block_b_bn/0"], changed_bn["block_b_bn/0"]
    )  # gamma
    np.testing.assert_array_equal(before_bn["block_b_bn/2"], changed_bn["block_b_bn/2"])
    assert not np.allclose(model.head.kernel.numpy(), head_before)
    # The binary latent weights stay on the 8-bit grid (k + 1/2) * 2.5/255 of [-1.25, 1.25].
    kernel = after["block_b_conv/0"]
    levels = kernel / (2.5 / 255) - 0.5
    assert np.abs(kernel).max() <= 1.25 + 1e-6
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)


def test_feature_gradient_is_straight_through_inside_the_range_and_0_where_clipped():
    rng = np.random.default_rng(4)
    kernel = tf.constant(rng.normal(size=(3, 4)), tf.float32)
    features = np.array([[0.5, 1.2, 3.0], [-0.7, 0.1, 2.0]], np.float32)
    labels = np.array([1, 3])
    # Clips 3.0 and -0.7; on this range the 8-bit grid's end levels are its ends.
    low, high = 0.0, 2.55
    feature_range = np.array([low, high], np.float32)

    def gradient(x, **kwargs):
        return hybrid_sgd_step(
            kernel,
            tf.constant(x),
            labels=labels,
            learning_rate=0.1,
            feature_gradient=True,
            **kwargs,
        ).feature_gradient.numpy()

    static = gradient(features, feature_range=feature_range, gradient_range=None)
    # Inputs replaced by the range's ends (what the clipped ones quantize to) give the
    # same x_q, and none of them is clipped: their gradient is the unmasked one.
    ends = snap_to_grid(tf.constant([-9.0, 9.0]), 8, low=low, high=high).numpy()
    np.testing.assert_allclose(ends, [low, high], atol=1e-6)
    unmasked = gradient(
        np.clip(features, low, high), feature_range=feature_range, gradient_range=None
    )
    clipped = (features < low) | (features > high)
    assert np.all(static[clipped] == 0.0) and np.all(np.abs(unmasked[clipped]) > 1e-3)
    np.testing.assert_array_equal(static[~clipped], unmasked[~clipped])
    # Float forward pass: nothing clips, the gradient is (softmax(xW) - onehot) W^T / B.
    logits = features @ kernel.numpy()
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    expected = (probabilities - np.eye(4)[labels]) @ kernel.numpy().T / 2
    np.testing.assert_allclose(gradient(features, forward_bits=None), expected, atol=1e-6)


def test_blocks_get_no_gradient_from_features_the_static_range_clips():
    # Trained blocks that moved the head's features out of experience 0's range got
    # the straight-through gradient, which kept pushing them out (training saw them
    # clipped, inference did not). With every feature clipped, the blocks must not move.
    x, y = _data()
    model = _model(forward_bits=8, update_bits=16)
    _first_experience(model, x, y)
    beta = model.get_layer("block_b_bn").beta
    beta.assign(beta + 1000.0)  # every pooled feature far above the range
    latents = model._blocks.lower(x[:10], training=False)
    assert model._blocks.upper(latents).numpy().min() > model.feature_range[1]
    for layer in model.layers:
        layer.trainable = layer.name in ("head", "block_b_conv", "block_b_bn")
    model.compile(tf.keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.train_on_batch(x[:10], y[:10])  # puts the latent weights on their 8-bit grid
    blocks = _weights(model, "block_b_conv", "block_b_bn")
    head = model.head.kernel.numpy().copy()
    model.train_on_batch(x[10:20], y[10:20])
    after = _weights(model, "block_b_conv", "block_b_bn")
    for key, before in blocks.items():
        np.testing.assert_array_equal(before, after[key], err_msg=key)
    assert not np.allclose(model.head.kernel.numpy(), head)  # the head still learns


def test_latent_weight_grid_keeps_every_sign():
    # Small weights of either sign, 0 (binarized as +1) and the clip values, 8 bits:
    # the nearest levels are +-step/2 = +-1.25/255 and +-1.25, signs unchanged.
    weights = tf.constant([-1e-4, -0.0049, 0.0, 1e-4, 0.0049, -1.25, 1.25, -3.0])
    stored = latent_weight_grid(weights, 8).numpy()
    half_step = 1.25 / 255
    np.testing.assert_allclose(
        stored,
        [-half_step, -half_step, half_step, half_step, half_step, -1.25, 1.25, -1.25],
        rtol=1e-6,
    )
    binary = lq.quantizers.SteSign(clip_value=1.25)
    np.testing.assert_array_equal(binary(stored).numpy(), binary(weights).numpy())


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
def test_first_block_update_does_not_flip_binary_weights(rounding):
    # The blocks' latent weights come from the float first experience, off the grid.
    # Storing them on it (the first hybrid step, at a negligible learning rate) must
    # leave every binary weight as it was; a grid with a level at 0 turned the small
    # negative ones into +1 and the trained blocks collapsed.
    x, y = _data()
    model = _model(
        forward_bits=8,
        update_bits=16,
        backward_bits=16,
        block_learning_rate=1e-12,
        latent_weight_rounding=rounding,
    )
    _first_experience(model, x, y)
    kernel = model.get_layer("block_b_conv").kernel
    small_negative = np.sum((kernel.numpy() < 0) & (kernel.numpy() > -1.25 / 255))
    assert small_negative > 0  # the case that flipped
    signs = np.sign(kernel.numpy() + (kernel.numpy() == 0))
    callback = CWRStar(model.head, labels=y, trainable_layers=["block_b_conv"])
    model.fit(x, y, batch_size=10, epochs=1, verbose=0, callbacks=[callback])
    after = kernel.numpy()
    np.testing.assert_array_equal(np.sign(after + (after == 0)), signs)


def test_stochastic_latent_update_hand_computed():
    # 8 bits: step = 2.5/255, levels (k + 1/2) * step. Float weights first go to their
    # own level k = floor(w / step), then move floor(update / step + noise) levels.
    step = 2.5 / 255
    weights = tf.constant([-0.001, -0.001, 0.3, 0.3, 1.24, -1.24])
    update = tf.constant([0.0, 0.4 * step, 0.4 * step, -2.7 * step, 3 * step, -step])
    noise = tf.constant([0.99, 0.65, 0.55, 0.25, 0.0, 0.5])
    stored = stochastic_latent_update(weights, update, bits=8, noise=noise).numpy()
    # k: -1 + 0 | -1 + floor(1.05) = 0 | 30 + floor(0.95) = 30 | 30 + floor(-2.45) = 27
    #    | 126 + 3 -> clipped to 127 | -127 - 1 = -128
    expected = (np.array([-1, 0, 30, 27, 127, -128]) + 0.5) * step
    np.testing.assert_allclose(stored, expected, rtol=1e-6)


def test_stochastic_latent_update_is_unbiased_where_nearest_drops_it():
    # An update of 0.1 level (far below the half level round-to-nearest needs) moves
    # 10% of the weights by one level: the mean move is 0.1 level (N = 40000, std of
    # the mean 0.0015), where nearest rounding moves none.
    step = 2.5 / 255
    weights = latent_weight_grid(tf.random.stateless_uniform([40000], (1, 2), -1, 1), 8)
    noise = counter_uniform([40000], seed=3, counter=0)
    stored = stochastic_latent_update(
        weights, tf.fill([40000], 0.1 * step), bits=8, noise=noise
    )
    moves = np.round((stored - weights).numpy() / step)
    assert set(np.unique(moves)) == {0.0, 1.0}
    assert abs(moves.mean() - 0.1) < 0.01
    nearest = latent_weight_grid(weights + 0.1 * step, 8)
    np.testing.assert_array_equal(nearest.numpy(), weights.numpy())


def test_block_latent_weights_learn_at_the_reference_rate_only_with_stochastic_rounding():
    # METHOD §5's block lr 0.009 gives latent-weight updates far below half a level
    # (2.5/255/2): round-to-nearest keeps every binary weight; stochastic rounding moves
    # some, draws from the model's saved noise stream and stays on the grid.
    x, y = _data()
    moved, counters = {}, {}
    for rounding in ("nearest", "stochastic"):
        model = _model(
            forward_bits=8,
            update_bits=16,
            backward_bits=16,
            block_learning_rate=0.009,
            latent_weight_rounding=rounding,
            seed=4,
        )
        _first_experience(model, x, y)
        kernel = model.get_layer("block_b_conv").kernel
        start = latent_weight_grid(kernel, 8).numpy()
        callback = CWRStar(model.head, labels=y, trainable_layers=["block_b_conv"])
        model.fit(x, y, batch_size=10, epochs=2, verbose=0, callbacks=[callback])
        levels = kernel.numpy() / (2.5 / 255) - 0.5
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-3)
        moved[rounding] = int(np.sum(kernel.numpy() != start))
        counters[rounding] = model.noise_counter
    assert moved["nearest"] == 0 and counters["nearest"] == 0
    assert moved["stochastic"] > 0
    # 8 steps (2 epochs of 4 batches), one draw per latent weight (3*3*8*8) each.
    assert counters["stochastic"] == 8 * 3 * 3 * 8 * 8


def test_latent_weight_rounding_is_checked_and_serialized():
    with pytest.raises(ValueError, match="latent_weight_rounding"):
        _model(latent_weight_rounding="up")
    model = _model(latent_weight_rounding="nearest")
    config = model.get_config()
    assert config["latent_weight_rounding"] == "nearest"
    assert HybridQuantizedTrainStep.from_config(config).latent_weight_rounding == "nearest"


def test_trainable_layer_below_the_latent_layer_raises():
    x, y = _data()
    model = _model()
    _first_experience(model, x, y)
    before = [w.copy() for w in model.head.get_weights()]
    callback = CWRStar(model.head, labels=y, trainable_layers=["stem"])
    with pytest.raises(ValueError, match=r"names \['stem'\], which the hybrid phase"):
        model.fit(x, y, verbose=0, callbacks=[callback])
    for old, new in zip(before, model.head.get_weights()):
        np.testing.assert_array_equal(old, new)


def test_replayed_latents_are_appended_to_each_step():
    x, y = _data()
    memory = LatentReplayMemory(12, CLASSES, seed=5)
    model = _model(forward_bits=8, update_bits=16, replay=memory, replay_batch_size=6)
    _first_experience(model, x, y)
    model.remember(x[:20], y[:20], batch_size=8)
    assert len(memory) == 12 and memory.class_counts().sum() == 12
    twin = LatentReplayMemory(12, CLASSES, seed=5, latent_shape=memory.latent_shape)
    twin.set_weights(memory.get_weights())
    kernel = model.head.kernel.numpy().copy()
    for layer in model.layers:  # head only: the features are then exact
        layer.trainable = layer is model.head
    model.compile(tf.keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
    model.train_on_batch(x[20:30], y[20:30])
    replayed, labels = twin.sample(6)
    latents = tf.concat([model._blocks.lower(x[20:30], training=False), replayed], 0)
    features = model._blocks.upper_model(latents, training=False)
    expected = hybrid_sgd_step(
        tf.constant(kernel),
        features,
        labels=tf.concat([y[20:30], labels], 0),
        learning_rate=0.1,
        feature_range=model.feature_range,
        gradient_range=model.gradient_range,
    ).kernel
    np.testing.assert_allclose(model.head.kernel.numpy(), expected.numpy(), atol=1e-6)
    without = hybrid_sgd_step(
        tf.constant(kernel),
        features[:10],
        labels=y[20:30],
        learning_rate=0.1,
        feature_range=model.feature_range,
        gradient_range=model.gradient_range,
    ).kernel
    assert np.abs(without.numpy() - expected.numpy()).max() > 1e-3  # replay mattered


def test_cwrstar_counts_include_the_replay_memory():
    x, y = _data()
    memory = LatentReplayMemory(8, CLASSES, seed=1)
    model = _model(replay=memory)
    _first_experience(model, x, y)
    model.remember(x, y)
    new = np.full(10, 3, np.int32)
    callback = CWRStar(model.head, labels=new)
    callback.set_model(model)
    callback.on_train_begin()
    expected = memory.class_counts() + np.bincount(new, minlength=CLASSES)
    np.testing.assert_array_equal(model.head.current_counts, expected)


def test_one_bit_memory_binarizes_the_latent_layer():
    x, y = _data()
    plain = _model(replay=LatentReplayMemory(8, CLASSES, storage="1bit"))
    _first_experience(plain, x, y)
    with pytest.raises(ValueError, match="1-bit replay memory needs binary latents"):
        plain.remember(x, y)
    assert len(plain.replay) == 0
    model = _model(replay=LatentReplayMemory(8, CLASSES, storage="1bit"), binarize=True)
    _first_experience(model, x, y)
    real = model.latent_extractor(x).numpy()
    assert not np.all(np.abs(real) == 1)
    model.remember(x, y)
    assert model.get_layer("latent").enabled
    live = model.latent_extractor(x).numpy()
    np.testing.assert_array_equal(live, np.where(real >= 0, 1.0, -1.0))
    stored, labels = model.replay.contents()
    assert np.all(np.abs(stored) == 1) and len(labels) == 8


def test_model_with_replay_saves_and_loads(tmp_path):
    x, y = _data()
    memory = LatentReplayMemory(8, CLASSES, storage="1bit", seed=2)
    model = _model(replay=memory, binarize=True, backward_bits=8, replay_batch_size=4)
    _first_experience(model, x, y)
    model.remember(x, y)
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    assert loaded.latent_layer == "latent" and loaded.backward_bits == 8
    assert loaded.replay_batch_size == 4 and loaded.get_layer("latent").enabled
    for ours, theirs in zip(model.replay.contents(), loaded.replay.contents()):
        np.testing.assert_array_equal(ours, theirs)
    np.testing.assert_array_equal(model.replay.sample(5)[0], loaded.replay.sample(5)[0])
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))


def test_block_stack_rejects_unknown_or_bypassed_layers():
    model = _model()
    with pytest.raises(ValueError, match="not a layer between"):
        BlockStack(model, model._head_io[0], latent_layer="nope")
    with pytest.raises(ValueError, match="bypass"):
        BlockStack(model, model._head_io[0], latent_layer="block_a_bn")


@pytest.mark.parametrize(
    "name, keras_optimizer",
    [
        ("sgd", lambda: tf.keras.optimizers.SGD(0.05)),
        ("momentum", lambda: tf.keras.optimizers.SGD(0.05, momentum=0.9)),
        ("adam", lambda: tf.keras.optimizers.Adam(0.05)),
    ],
)
def test_block_optimizer_directions_follow_the_keras_optimizers(name, keras_optimizer):
    start = np.array([0.3, -0.2, 1.0, 0.0], np.float32)
    gradients = [
        np.array(g, np.float32)
        for g in ([0.5, -1e-3, 2.0, 0.0], [0.4, 3e-3, -1.0, 0.1], [-0.2, 1e-3, 0.5, 0.0])
    ]
    ours, reference = tf.Variable(start), tf.Variable(start)
    slots = [tf.Variable(tf.zeros(4)) for _ in range(block_optimizer_slot_count(name))]
    optimizer = keras_optimizer()
    for step, gradient in enumerate(gradients, start=1):
        (direction,) = block_optimizer_directions(
            [tf.constant(gradient)], [slots], optimizer=name, step=step
        )
        ours.assign_sub(0.05 * direction)
        optimizer.apply_gradients([(tf.constant(gradient), reference)])
        np.testing.assert_allclose(ours.numpy(), reference.numpy(), rtol=1e-5, atol=1e-7)
    # Their trajectories part: the test can tell the optimizers apart.
    assert np.abs(ours.numpy() - start).max() > 0.05


def test_block_optimizer_adam_first_step_is_the_learning_rate_and_saves(tmp_path):
    x, y = _data()
    model = _model(
        forward_bits=None,
        update_bits=None,
        block_optimizer="adam",
        block_learning_rate=0.01,
    )
    _first_experience(model, x, y)
    assert [float(w.numpy().max()) for w in model.block_optimizer_weights] == [0.0] * 13
    before = _weights(model, "block_a_conv", "block_a_bn", "block_b_bn")
    callback = CWRStar(model.head, labels=y, trainable_layers=["block_b_bn"])
    model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, callbacks=[callback])
    after = _weights(model, "block_a_conv", "block_a_bn", "block_b_bn")
    steps, *slots = model.block_optimizer_weights
    assert int(steps.numpy()) == 1
    # Slots in the order of the blocks' trainable weights, (m, v) each: block_b_bn's
    # gamma and beta are the 5th and 6th; the others were not trained.
    assert [bool(np.any(s.numpy() != 0)) for s in slots] == [False] * 8 + [True] * 4
    for index, key in ((4, "block_b_bn/0"), (5, "block_b_bn/1")):  # gamma, beta
        m, v = slots[2 * index].numpy(), slots[2 * index + 1].numpy()
        gradient = m / 0.1
        np.testing.assert_allclose(v, 0.001 * gradient**2, rtol=1e-4)
        # Adam's first step: lr * g / (|g| + eps / sqrt(1 - 0.999)), about lr * sign(g)
        # (plain SGD at lr 0.01 would move by 0.01 * |g|, here below 1e-6).
        expected = -0.01 * gradient / (np.abs(gradient) + 1e-7 / np.sqrt(0.001))
        np.testing.assert_allclose(after[key] - before[key], expected, rtol=1e-3)
        assert np.all(np.abs(after[key] - before[key]) > 0.005)
    for key in ("block_a_conv/0", "block_a_bn/0", "block_b_bn/2"):  # not trained
        np.testing.assert_array_equal(after[key], before[key])
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    assert loaded.block_optimizer == "adam"
    for ours, theirs in zip(model.block_optimizer_weights, loaded.block_optimizer_weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    # The restored state continues the same trajectory (Adam's second step).
    for trained_model in (model, loaded):
        callback = CWRStar(trained_model.head, labels=y, trainable_layers=["block_b_bn"])
        trained_model.fit(x, y, batch_size=len(x), verbose=0, callbacks=[callback])
    np.testing.assert_allclose(
        loaded.get_layer("block_b_bn").gamma.numpy(),
        model.get_layer("block_b_bn").gamma.numpy(),
        rtol=1e-6,
    )
    assert int(loaded.block_optimizer_weights[0].numpy()) == 2


def test_block_optimizer_state_moves_with_upper_model_and_is_checked():
    x, y = _data()
    model = _model(block_optimizer="momentum", backward_bits=16)
    assert len(model.block_optimizer_weights) == 1 + 6  # steps; 2 x (conv, gamma, beta)
    _first_experience(model, x, y)
    upper = model.upper_model()
    upper.compile(
        tf.keras.optimizers.SGD(0.1),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    latents = model.latent_extractor.predict(x, verbose=0)
    callback = CWRStar(upper.head, labels=y, trainable_layers=["block_a_conv"])
    upper.fit(latents, y, batch_size=10, verbose=0, callbacks=[callback])
    assert int(upper.block_optimizer_weights[0].numpy()) == 4
    model.load_head_state(upper)
    for ours, theirs in zip(model.block_optimizer_weights, upper.block_optimizer_weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    assert np.any(model.block_optimizer_weights[1].numpy() != 0)  # block_a_conv's m
    assert HybridQuantizedTrainStep.from_config(model.get_config()).block_optimizer == (
        "momentum"
    )
    assert _model().block_optimizer_weights == []
    # The optimizer state is not part of the architecture a first network hands on.
    assert len(architecture_weights(model)) == len(architecture_weights(_model()))
    with pytest.raises(ValueError, match="block_optimizer"):
        TrainingConfig(block_optimizer="rmsprop")
    with pytest.raises(ValueError, match="block_optimizer"):
        _model(block_optimizer="rmsprop")
    inputs = tf.keras.Input((3,))
    with pytest.raises(ValueError, match="needs `latent_layer`"):
        HybridQuantizedTrainStep(inputs, CWRStarHead(2)(inputs), block_optimizer="adam")
