"""`benchmarks/latent_ceiling.py`: its splits cut the network where they say, and a
ceiling trains only the part above its latent layer, then leaves the network as it was."""

import pathlib
import sys
import types

import larq as lq
import numpy as np
import pytest
import tensorflow as tf

from larq_cwr.experiment import TrainingConfig, architecture_weights, build_model
from larq_cwr.scenarios import make_scenario

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import latent_ceiling  # noqa: E402


def _binary_convs(model):
    found = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.Model):
            found += _binary_convs(layer)
        elif isinstance(layer, lq.layers.QuantConv2D):
            found.append(layer)
    return found


@pytest.fixture
def stream(digits):
    x, y = digits
    scenario = make_scenario(
        x[:1200],
        y[:1200],
        name="nc",
        x_test=x[1200:],
        y_test=y[1200:],
        n_experiences=5,
        seed=0,
    )
    config = TrainingConfig(seed=0, backbone="bnn32_norm", trainable_blocks=2)
    tf.keras.utils.set_random_seed(1)
    model = build_model(x.shape[1:], 10, config=config)
    weights = [w.numpy() for w in architecture_weights(model)]
    return types.SimpleNamespace(scenario=scenario, config=config, first_weights=weights)


def test_splits_compose_to_the_network_with_two_blocks_in_each_upper_part(stream, digits):
    splits = latent_ceiling.Splits(stream)
    x = digits[0][:64]
    whole = splits.model.upper_features(
        splits.model.latent_extractor(x, training=False), training=False
    )
    parts = splits.top(
        splits.middle(splits.bottom(x, training=False), training=False), training=False
    )
    np.testing.assert_allclose(parts.numpy(), whole.numpy(), rtol=1e-5, atol=1e-5)
    # bnn32_norm has 6 binary blocks: 2 below in `bottom`, then 2 and 2.
    assert [len(_binary_convs(m)) for m in (splits.bottom, splits.middle, splits.top)] == [
        2,
        2,
        2,
    ]


# Which of (bottom, middle, top) a ceiling trains: the parts above its latent layer.
TRAINED = {0: (False, False, False), 2: (False, False, True), 4: (False, True, True)}


@pytest.mark.parametrize("blocks,binary", [(0, False), (2, True), (4, False)])
def test_ceiling_trains_only_the_part_above_its_latent_layer(stream, blocks, binary):
    splits = latent_ceiling.Splits(stream)
    scenario = stream.scenario
    x_train = np.concatenate([e.x_train for e in scenario.experiences])
    y_train = np.concatenate([e.y_train for e in scenario.experiences])
    data = {
        "train": (splits.latents(x_train), y_train),
        "validation": (splits.latents(scenario.x_test), scenario.y_test),
        "test": (splits.latents(scenario.x_test), scenario.y_test),
    }
    args = types.SimpleNamespace(epochs=3, learning_rate=3e-3, batch=64)
    result = latent_ceiling.ceiling(splits, data, blocks=blocks, binary=binary, args=args)
    assert len(result["curve"]) == 3
    best = result["curve"][result["best_epoch"] - 1]
    assert best["validation"] == max(c["validation"] for c in result["curve"])
    assert best["test"] == result["test_accuracy"]
    first = dict(zip(map(id, architecture_weights(splits.model)), stream.first_weights))
    changed = tuple(
        any(not np.array_equal(v.numpy(), first[id(v)]) for v in part.weights)
        for part in (splits.bottom, splits.middle, splits.top)
    )
    assert changed == TRAINED[blocks]
    splits.reset()  # the next ceiling starts from the first network again
    for variable, value in zip(architecture_weights(splits.model), stream.first_weights):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_signs_map_zero_to_plus_one():
    np.testing.assert_array_equal(
        latent_ceiling.signs(np.array([-0.5, 0.0, 2.0])), [-1.0, 1.0, 1.0]
    )
