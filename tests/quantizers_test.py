import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import larq_cwr
from larq_cwr import quantizers
from larq_cwr.quantizers import (
    GRIDS,
    FakeQuantizer,
    fake_quantize,
    snap_to_grid,
    stochastic_quantize,
)


def _step(low, high, bits):
    return (max(high, 0.0) - min(low, 0.0)) / (2**bits - 1)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_zero_exact_levels_are_integer_multiples_of_the_step(bits):
    x = tf.linspace(-3.0, 5.0, 400_001)  # >= 6 points per step even at 16 bits
    q = fake_quantize(x, bits).numpy()
    step = _step(-3.0, 5.0, bits)
    k = q.astype(np.float64) / step
    # Every output is k * step for an integer k. float32 carries ~7 digits, so at
    # 16 bits (k up to 40,000) k is off an integer by at most ~0.01; a grid shifted by
    # any fraction of a step (the paper grid here is shifted by 0.4 step) is off by more.
    tolerance = 1e-4 * 2 ** max(bits - 8, 0)
    np.testing.assert_allclose(k, np.round(k), atol=tolerance)
    assert np.unique(np.round(k)).size == 2**bits  # every level is reached
    paper = fake_quantize(x, bits, grid="paper").numpy().astype(np.float64) / step
    assert np.abs(paper - np.round(paper)).max() > 10 * tolerance


@pytest.mark.parametrize("bits", [2, 3, 8, 12, 16])
@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (-0.3, 1.0), (-2.5, 0.07), (0.0, 1.0)])
def test_zero_exact_grid_equals_tensorflow_fake_quant(bits, low, high):
    """Independent oracle: tf.quantization.fake_quant_with_min_max_vars (METHOD §3)."""
    x = tf.random.stateless_uniform((20_000,), seed=(bits, 7), minval=-3.0, maxval=3.0)
    ours = fake_quantize(x, bits, min_value=low, max_value=high).numpy()
    theirs = tf.quantization.fake_quant_with_min_max_vars(
        x, low, high, num_bits=bits
    ).numpy()
    step = _step(low, high, bits)
    difference = np.abs(ours - theirs)
    # The same level computed in another float32 order: a few ulps of the range's end
    # (at 16 bits that is 0.6% of a step), far less than the half step a shifted grid
    # or another rounding would give.
    atol = max(1e-4 * step, 4 * float(np.spacing(np.float32(max(abs(low), abs(high))))))
    same = difference <= atol
    # Except where TensorFlow rounds a tie up and we round half to even (or float error
    # flips a value next to a tie): then exactly one step apart.
    assert same.mean() >= 0.999
    np.testing.assert_allclose(difference[~same], step, atol=atol)


def test_zero_exact_hand_computed_two_bits():
    # [-0.3, 1.0], 2 bits: step 1.3/3; zero point floor(0.3/step + 0.5) = 1, so the
    # levels are -1, 0, 1, 2 steps: -0.4333, 0, 0.4333, 0.8667.
    x = tf.constant([-0.3, -0.2, 0.0, 0.2, 0.3, 0.7, 1.0])
    q = fake_quantize(x, 2, min_value=-0.3, max_value=1.0).numpy()
    s = 1.3 / 3
    np.testing.assert_allclose(q, [-s, 0, 0, 0, s, 2 * s, 2 * s], rtol=1e-6)


def test_paper_grid_hand_computed_two_bits():
    # Range [0, 3], 2 bits: levels 0, 1, 2, 3; 0.5 and 2.5 round half to even.
    x = tf.constant([0.0, 0.4, 0.5, 1.6, 2.5, 3.0])
    np.testing.assert_allclose(
        fake_quantize(x, 2, grid="paper").numpy(), [0, 0, 0, 2, 2, 3]
    )
    # [-0.3, 1.0]: levels -0.3 + k * 1.3/3; 0 is not one of them.
    q = fake_quantize(tf.constant([0.0]), 2, min_value=-0.3, max_value=1.0, grid="paper")
    assert q.numpy()[0] == pytest.approx(-0.3 + 1.3 / 3, rel=1e-6)


@pytest.mark.parametrize("bits", [2, 8, 16])
@pytest.mark.parametrize("low, high", [(-0.37, 1.91), (0.2, 0.9), (-5.0, -1.0)])
def test_zero_stays_exactly_zero(bits, low, high):
    x = tf.constant([0.0, -0.0, 0.5 * low])
    for noise in (None, tf.constant([0.999, 0.5, 0.0])):
        q = snap_to_grid(x, bits, low=low, high=high, noise=noise).numpy()
        assert q[0] == 0.0 and q[1] == 0.0
    assert fake_quantize(x, bits, min_value=low, max_value=high).numpy()[0] == 0.0


def test_static_range_clips_on_both_grids():
    x = tf.constant([-5.0, 0.25, 0.3, 9.0])
    # [0, 1] with 2 bits: levels 0, 1/3, 2/3, 1 (0 is the range's end: both grids agree).
    for grid in GRIDS:
        q = fake_quantize(x, 2, min_value=0.0, max_value=1.0, grid=grid).numpy()
        np.testing.assert_allclose(q, [0.0, 1 / 3, 1 / 3, 1.0], rtol=1e-6)


@pytest.mark.parametrize("grid", GRIDS)
def test_idempotent(grid):
    x = tf.random.stateless_normal((1000,), seed=(1, 2))
    once = fake_quantize(x, 4, grid=grid)
    twice = fake_quantize(once, 4, min_value=tf.reduce_min(x), max_value=tf.reduce_max(x))
    if grid == "paper":
        twice = fake_quantize(once, 4, grid=grid)
    np.testing.assert_allclose(once.numpy(), twice.numpy(), atol=1e-6)


def test_constant_tensor_unchanged():
    x = tf.fill((5,), 0.7)
    for grid in GRIDS:
        np.testing.assert_array_equal(fake_quantize(x, 8, grid=grid).numpy(), x.numpy())
    np.testing.assert_array_equal(
        fake_quantize(tf.constant([0.1, 2.0]), 8, min_value=1.0, max_value=1.0).numpy(),
        np.float32([0.1, 2.0]),
    )


@pytest.mark.parametrize("grid", GRIDS)
def test_identity_gradient(grid):
    x = tf.constant([-2.0, 0.1, 0.7, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quantize(x, 3, min_value=0.0, max_value=1.0, grid=grid)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [1, 2, 3, 4])


@pytest.mark.parametrize("grid", GRIDS)
def test_stochastic_rounding_is_unbiased_and_on_grid(grid):
    generator = tf.random.Generator.from_seed(7)
    # Range [0, 1], 2 bits, levels k/3 on both grids; 0.1 lies 0.3 steps above 0.
    x = tf.constant([0.0, 0.1, 1.0] * 20_000)
    q = stochastic_quantize(
        x, 2, generator=generator, min_value=0.0, max_value=1.0, grid=grid
    ).numpy()
    middle = q[1::3]
    assert set(np.round(middle * 3).tolist()) == {0.0, 1.0}
    # Bernoulli(0.3) mean over 20,000 draws: std 0.0032, so 0.02 is > 6 sigma; always
    # rounding to nearest would give 0, always up 1/3.
    assert middle.mean() == pytest.approx(0.1, abs=0.02 / 3)
    np.testing.assert_array_equal(q[0::3], 0.0)
    np.testing.assert_array_equal(q[2::3], 1.0)


def test_stochastic_rounding_seeded():
    x = tf.random.stateless_uniform((100,), seed=(3, 4))
    a = stochastic_quantize(x, 4, generator=tf.random.Generator.from_seed(1))
    b = stochastic_quantize(x, 4, generator=tf.random.Generator.from_seed(1))
    c = stochastic_quantize(x, 4, generator=tf.random.Generator.from_seed(2))
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


@pytest.mark.parametrize("bits", [1, 17, 8.0, True, None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(tf.constant([1.0]), bits)
    with pytest.raises(ValueError, match="bits"):
        FakeQuantizer(bits)


def test_bad_ranges_and_grid():
    with pytest.raises(ValueError, match="both"):
        fake_quantize(tf.constant([1.0]), 8, min_value=0.0)
    with pytest.raises(ValueError, match="exceed"):
        FakeQuantizer(8, min_value=1.0, max_value=0.0)
    with pytest.raises(ValueError, match="`grid` must be one of"):
        FakeQuantizer(8, grid="zero")


def test_quantizer_layer_serialization_and_larq():
    quantizer = FakeQuantizer(4, min_value=-1.0, max_value=1.0, grid="paper")
    assert quantizer.precision == 4
    config = quantizers.serialize(quantizer)
    again = quantizers.get(config)
    assert isinstance(again, FakeQuantizer) and again.get_config() == quantizer.get_config()
    assert again.grid == "paper" and FakeQuantizer(4).grid == "zero_exact"
    assert isinstance(quantizers.get("FakeQuantizer"), FakeQuantizer)
    assert tf.keras.utils.get_registered_name(FakeQuantizer) == "larq_cwr>FakeQuantizer"
    x = tf.constant([[-2.0, 0.2, 0.5]])
    np.testing.assert_allclose(
        quantizer(x).numpy(),
        fake_quantize(x, 4, min_value=-1.0, max_value=1.0, grid="paper").numpy(),
    )


def test_quantizer_inside_larq_layer_saves_and_loads(tmp_path):
    inputs = tf.keras.Input((3,))
    outputs = lq.layers.QuantDense(
        2, input_quantizer=FakeQuantizer(8), kernel_quantizer=FakeQuantizer(4)
    )(inputs)
    model = tf.keras.Model(inputs, outputs)
    x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    lq.models.summary(model, print_fn=lambda *_: None)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = tf.keras.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert isinstance(loaded.layers[1].input_quantizer, FakeQuantizer)
    assert larq_cwr.FakeQuantizer is FakeQuantizer
