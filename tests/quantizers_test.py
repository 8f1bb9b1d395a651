import larq as lq
import numpy as np
import pytest
import tensorflow as tf

import larq_cwr
from larq_cwr import quantizers
from larq_cwr.quantizers import FakeQuantizer, fake_quantize, stochastic_quantize


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
def test_level_count_and_endpoints(bits):
    x = tf.linspace(-3.0, 5.0, 200_001)
    q = fake_quantize(x, bits).numpy()
    levels = np.unique(q)
    assert len(levels) == 2**bits if bits < 16 else len(levels) > 2**15
    assert q.min() == pytest.approx(-3.0) and q.max() == pytest.approx(5.0)
    step = 8.0 / (2**bits - 1)
    # Every output is m + k * step for an integer k (float32 tolerance).
    k = (q - -3.0) / step
    np.testing.assert_allclose(k, np.round(k), atol=2e-3 * 2 ** max(bits - 8, 0))


def test_hand_computed_levels_two_bits():
    # Range [0, 3], 2 bits: levels 0, 1, 2, 3; 0.5 and 2.5 round half to even.
    x = tf.constant([0.0, 0.4, 0.5, 1.6, 2.5, 3.0])
    np.testing.assert_allclose(fake_quantize(x, 2).numpy(), [0, 0, 0, 2, 2, 3])


def test_static_range_clips():
    x = tf.constant([-5.0, 0.25, 0.3, 9.0])
    # [0, 1] with 2 bits: levels 0, 1/3, 2/3, 1.
    q = fake_quantize(x, 2, min_value=0.0, max_value=1.0).numpy()
    np.testing.assert_allclose(q, [0.0, 1 / 3, 1 / 3, 1.0], rtol=1e-6)


@pytest.mark.parametrize("zero_exact", [False, True])
def test_idempotent(zero_exact):
    x = tf.random.stateless_normal((1000,), seed=(1, 2))
    once = fake_quantize(x, 4, zero_exact=zero_exact)
    twice = fake_quantize(once, 4, zero_exact=zero_exact)
    np.testing.assert_allclose(once.numpy(), twice.numpy(), atol=1e-6)


def test_constant_tensor_unchanged():
    x = tf.fill((5,), 0.7)
    np.testing.assert_array_equal(fake_quantize(x, 8).numpy(), x.numpy())
    np.testing.assert_array_equal(
        fake_quantize(tf.constant([0.1, 2.0]), 8, min_value=1.0, max_value=1.0).numpy(),
        np.float32([0.1, 2.0]),
    )


@pytest.mark.parametrize("zero_exact", [False, True])
def test_identity_gradient(zero_exact):
    x = tf.constant([-2.0, 0.1, 0.7, 3.0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fake_quantize(x, 3, min_value=0.0, max_value=1.0, zero_exact=zero_exact)
        loss = tf.reduce_sum(y * tf.constant([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_array_equal(tape.gradient(loss, x).numpy(), [1, 2, 3, 4])


def test_zero_exact_grid_contains_zero():
    # [-0.3, 1.0] with 2 bits: TensorFlow nudges the range so that 0 is a level.
    x = tf.constant([-0.3, 0.0, 0.01, 1.0])
    q = fake_quantize(x, 2, min_value=-0.3, max_value=1.0, zero_exact=True).numpy()
    assert q[1] == 0.0 and q[2] == 0.0
    plain = fake_quantize(x, 2, min_value=-0.3, max_value=1.0).numpy()
    assert plain[1] != 0.0  # the METHOD §3 grid starts at -0.3: 0 is not a level


def test_stochastic_rounding_is_unbiased_and_on_grid():
    generator = tf.random.Generator.from_seed(7)
    # Range [0, 1], 2 bits, levels k/3; 0.1 lies 0.3 steps above 0.
    x = tf.constant([0.0, 0.1, 1.0] * 20_000)
    q = stochastic_quantize(x, 2, generator=generator, min_value=0.0, max_value=1.0).numpy()
    middle = q[1::3]
    assert set(np.round(middle * 3).tolist()) == {0.0, 1.0}
    # Bernoulli(0.3) mean over 20,000 draws: std 0.0032, so 0.02 is > 6 sigma.
    assert middle.mean() == pytest.approx(0.1, abs=0.02 / 3)
    np.testing.assert_array_equal(q[0::3], 0.0)
    np.testing.assert_array_equal(q[2::3], 1.0)


def test_stochastic_rounding_seeded():
    x = tf.random.stateless_uniform((100,), seed=(3, 4))
    a = stochastic_quantize(x, 4, generator=tf.random.Generator.from_seed(1))
    b = stochastic_quantize(x, 4, generator=tf.random.Generator.from_seed(1))
    np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("bits", [1, 17, 8.0, True, None])
def test_bad_bits(bits):
    with pytest.raises(ValueError, match="bits"):
        fake_quantize(tf.constant([1.0]), bits)
    with pytest.raises(ValueError, match="bits"):
        FakeQuantizer(bits)


def test_bad_ranges():
    with pytest.raises(ValueError, match="both"):
        fake_quantize(tf.constant([1.0]), 8, min_value=0.0)
    with pytest.raises(ValueError, match="exceed"):
        FakeQuantizer(8, min_value=1.0, max_value=0.0)


def test_quantizer_layer_serialization_and_larq():
    quantizer = FakeQuantizer(4, min_value=-1.0, max_value=1.0)
    assert quantizer.precision == 4
    config = quantizers.serialize(quantizer)
    again = quantizers.get(config)
    assert isinstance(again, FakeQuantizer) and again.get_config() == quantizer.get_config()
    assert isinstance(quantizers.get("FakeQuantizer"), FakeQuantizer)
    assert tf.keras.utils.get_registered_name(FakeQuantizer) == "larq_cwr>FakeQuantizer"
    x = tf.constant([[-2.0, 0.2, 0.5]])
    np.testing.assert_allclose(
        quantizer(x).numpy(), fake_quantize(x, 4, min_value=-1.0, max_value=1.0).numpy()
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
