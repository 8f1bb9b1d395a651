import math

import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import replay
from larq_cwr.replay import LatentReplayMemory, pack_bits, unpack_bits

STORAGES = ["float32", "int8", "1bit"]


def _experience(ids, label, features=4, seed=0):
    """Latents whose first entry is a unique id: a stored float32 row names its pattern."""
    ids = np.asarray(ids, np.float32)
    rest = np.random.default_rng(seed).normal(size=(ids.size, features - 1))
    return np.column_stack([ids, rest]).astype(np.float32), np.full(ids.size, label)


def _stream(classes, per_class=20, features=4, seed=0):
    """One experience holding `per_class` patterns of each class in `classes`, shuffled."""
    parts = [_experience(c * 1000 + np.arange(per_class), c, features) for c in classes]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    order = np.random.default_rng(seed).permutation(y.size)
    return x[order], y[order]


def _state(memory):
    return [w.copy() for w in memory.get_weights()]


def _assert_same_state(before, after):
    assert len(before) == len(after)
    for b, a in zip(before, after):
        np.testing.assert_array_equal(b, a)


# -- 1-bit packing -----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5, 1), (5, 7), (5, 8), (3, 13), (2, 3, 16), (2, 2, 70)])
def test_pack_bits_matches_numpy(shape):
    x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
    x.flat[::5] = 0.0  # 0 -> bit 1 (+1), as larq's ste_sign
    packed = pack_bits(x)
    assert packed.dtype == tf.uint8
    np.testing.assert_array_equal(packed.numpy(), np.packbits(x >= 0, axis=-1))
    unpacked = unpack_bits(packed, shape[-1]).numpy()
    np.testing.assert_array_equal(unpacked, np.where(x >= 0, 1.0, -1.0))
    expected = 2.0 * np.unpackbits(packed.numpy(), axis=-1, count=shape[-1]) - 1.0
    np.testing.assert_array_equal(unpacked, expected)


def test_unpack_bits_matches_numpy_on_any_bytes():
    packed = np.random.default_rng(2).integers(0, 256, size=(6, 3), dtype=np.uint8)
    expected = 2.0 * np.unpackbits(packed, axis=-1, count=21) - 1.0
    np.testing.assert_array_equal(unpack_bits(packed, 21).numpy(), expected)


def test_packing_runs_in_a_graph_with_unknown_shape():
    spec = tf.TensorSpec([None, None], tf.float32)
    pack = tf.function(pack_bits, input_signature=[spec])
    x = np.random.default_rng(3).normal(size=(4, 11)).astype(np.float32)
    np.testing.assert_array_equal(pack(x).numpy(), np.packbits(x >= 0, axis=-1))


@pytest.mark.parametrize(
    "packed, size, match",
    [
        (np.zeros((2, 2), np.uint8), 0, "`size`"),
        (np.zeros((2, 2), np.float32), 9, "`packed` must be uint8"),
        (np.zeros((2, 3), np.uint8), 9, "expected 2 bytes"),
        (np.uint8(3), 2, "rank >= 1"),
    ],
)
def test_unpack_bits_rejects_bad_input(packed, size, match):
    with pytest.raises(ValueError, match=match):
        unpack_bits(packed, size)


def test_pack_bits_rejects_scalar():
    with pytest.raises(ValueError, match="`x` must have a last axis"):
        pack_bits(1.0)


# -- class-balanced policy ---------------------------------------------------------


def test_class_balanced_quotas_are_exact():
    memory = LatentReplayMemory(11, 5, seed=0)
    # 2 classes: 11 // 2 = 5, the remainder slot to the smaller class index.
    memory.update(*_stream([0, 1]))
    np.testing.assert_array_equal(memory.class_counts(), [6, 5, 0, 0, 0])
    memory.update(*_stream([2, 3], seed=1))  # 11 // 4 = 2, remainder 3 -> classes 0, 1, 2
    np.testing.assert_array_equal(memory.class_counts(), [3, 3, 3, 2, 0])
    memory.update(*_stream([4], seed=2))  # 11 // 5 = 2, remainder 1 -> class 0
    np.testing.assert_array_equal(memory.class_counts(), [3, 2, 2, 2, 2])
    assert len(memory) == memory.filled == 11
    np.testing.assert_array_equal(memory.seen_counts, [20] * 5)
    assert memory.num_experiences == 3
    latents, labels = memory.contents()
    ids = latents[:, 0].astype(int)
    np.testing.assert_array_equal(ids // 1000, labels)  # each pattern kept its label
    assert np.unique(ids).size == ids.size


def test_class_balanced_remainder_follows_class_index_and_spare_slots_stay_empty():
    memory = LatentReplayMemory(11, 5, seed=0)
    memory.update(*_stream([3, 4]))
    np.testing.assert_array_equal(memory.class_counts(), [0, 0, 0, 6, 5])
    # Class 0 arrives with 2 patterns: quotas 4, 4, 3 by index; class 0 holds only 2.
    memory.update(*_experience([0, 1], 0))
    np.testing.assert_array_equal(memory.class_counts(), [2, 0, 0, 4, 3])
    assert len(memory) == 9


def _reservoir_run(seed):
    """Class 0: 10 + 20 patterns over two experiences, then a new class shrinks it to 2."""
    memory = LatentReplayMemory(6, 3, seed=seed, latent_shape=(2,))
    x0, y0 = _experience(np.arange(10), 0, features=2)
    x1, y1 = _experience(100 + np.arange(5), 1, features=2)
    memory.update(np.concatenate([x0, x1]), np.concatenate([y0, y1]))
    memory.update(*_experience(10 + np.arange(20), 0, features=2))
    memory.update(*_experience(200 + np.arange(4), 2, features=2))
    latents, labels = memory.contents()
    return latents[:, 0].astype(int), labels


def test_reservoir_keeps_every_pattern_of_a_class_with_equal_probability():
    runs = 400
    kept = np.zeros(300, np.int64)
    for seed in range(runs):
        ids, labels = _reservoir_run(seed)
        np.testing.assert_array_equal(np.bincount(labels, minlength=3), [2, 2, 2])
        kept[ids] += 1
    # Class 0: 30 patterns, 2 slots at the end -> each kept with p = 2/30; class 1:
    # 5 patterns, 2 slots -> p = 2/5. Runs are independent, so a pattern's count is
    # Binomial(runs, p); 5 sigma bounds (a false alarm has probability < 1e-5 over the
    # 35 patterns). Keeping only the last experience, or sampling per experience
    # without the seen counts, puts the first 10 patterns far outside.
    for ids, p in [(np.arange(30), 2 / 30), (100 + np.arange(5), 2 / 5)]:
        mean, sigma = runs * p, math.sqrt(runs * p * (1 - p))
        assert np.all(np.abs(kept[ids] - mean) <= 5 * sigma), (kept[ids], mean, sigma)
    # Sharper: patterns of the first experience among class 0's two survivors. Per
    # run hypergeometric (2 of 30, 10 old): mean 2/3, var 2 * 1/3 * 2/3 * 28/29.
    old = kept[:10].sum()
    mean = runs * 2 * 10 / 30
    sigma = math.sqrt(runs * 2 * (1 / 3) * (2 / 3) * 28 / 29)
    assert abs(old - mean) <= 5 * sigma, (old, mean, sigma)


# -- random-replacement policy -----------------------------------------------------


def test_random_replacement_changes_size_over_i_plus_one_slots():
    size = 12
    memory = LatentReplayMemory(size, 4, policy="random", seed=0)
    before = None
    for i in range(4):
        x, y = _experience(100 * i + np.arange(30), i)
        memory.update(x, y)
        latents, labels = memory.contents()
        assert len(memory) == size
        if before is None:
            changed = np.ones(size, bool)
        else:
            changed = np.any(latents != before, axis=1)
            np.testing.assert_array_equal(latents[~changed], before[~changed])
        assert changed.sum() == size // (i + 1)
        np.testing.assert_array_equal(labels[changed], i)  # replaced by the new experience
        np.testing.assert_array_equal(latents[changed, 0] // 100, i)
        assert np.unique(latents[:, 0]).size == size  # distinct patterns
        before = latents


def test_random_replacement_fills_empty_slots_first():
    memory = LatentReplayMemory(12, 3, policy="random", seed=0)
    memory.update(*_experience(np.arange(5), 0))
    assert len(memory) == 5
    memory.update(*_experience(100 + np.arange(30), 1))  # 12 // 2 = 6 slots, all empty
    latents, labels = memory.contents()
    assert len(memory) == 11
    np.testing.assert_array_equal(np.sort(latents[labels == 0, 0]), np.arange(5))
    np.testing.assert_array_equal(memory.class_counts(), [5, 6, 0])
    memory.update(*_experience(200 + np.arange(30), 2))  # 12 // 3 = 4: 1 empty + 3 replaced
    np.testing.assert_array_equal(memory.class_counts().sum(), 12)
    assert memory.class_counts()[2] == 4


# -- determinism, chunks, tensors --------------------------------------------------


@pytest.mark.parametrize("policy", ["class_balanced", "random"])
@pytest.mark.parametrize("storage", STORAGES)
def test_same_seed_same_memory_other_seed_differs(policy, storage):
    def run(seed):
        memory = LatentReplayMemory(10, 4, policy=policy, storage=storage, seed=seed)
        memory.update(*_stream([0, 1], features=16))
        memory.update(*_stream([2, 3], features=16, seed=1))
        return memory.contents(), memory.sample(6)

    a, b, c = run(7), run(7), run(8)
    for left, right in zip(a[0] + a[1], b[0] + b[1]):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[0][0], c[0][0])


@pytest.mark.parametrize("storage", STORAGES)
def test_chunked_update_and_tensor_input_give_the_same_memory(monkeypatch, storage):
    x, y = _stream([0, 1, 2], per_class=30, features=12)
    reference = LatentReplayMemory(20, 3, storage=storage, seed=3)
    reference.update(x, y)
    monkeypatch.setattr(replay, "CHUNK_SIZE", 7)  # range, checks and writes in chunks
    chunked = LatentReplayMemory(20, 3, storage=storage, seed=3)
    chunked.update(tf.constant(x), tf.constant(y))
    _assert_same_state(_state(reference), _state(chunked))


# -- save and restore --------------------------------------------------------------


def _filled_memory(storage, seed=5):
    memory = LatentReplayMemory(9, 4, storage=storage, seed=seed, latent_shape=(16,))
    memory.update(*_stream([0, 1], features=16))
    memory.update(*_stream([2], features=16, seed=1))
    memory.sample(4)  # the restored memory must continue after this draw, not repeat it
    return memory


def _assert_same_memory(a, b):
    for left, right in zip(a.contents(), b.contents()):
        np.testing.assert_array_equal(left, right)
    for left, right in zip(a.sample(5), b.sample(5)):
        np.testing.assert_array_equal(left.numpy(), right.numpy())
    x, y = _stream([3], features=16, seed=2)
    a.update(x, y)
    b.update(x, y)
    _assert_same_state(_state(a), _state(b))


@pytest.mark.parametrize("storage", STORAGES)
def test_checkpoint_restores_contents_and_random_state(tmp_path, storage):
    memory = _filled_memory(storage)
    path = tf.train.Checkpoint(memory=memory).write(str(tmp_path / "ckpt"))
    restored = LatentReplayMemory(9, 4, storage=storage, seed=5, latent_shape=(16,))
    tf.train.Checkpoint(memory=restored).read(path).assert_consumed()
    assert restored.int8_range == memory.int8_range
    _assert_same_memory(memory, restored)


@tf.keras.utils.register_keras_serializable(package="replay_test")
class _ReplayModel(tf.keras.Model):
    """A head with a replay memory as a tracked layer attribute."""

    def __init__(self, memory, **kwargs):
        super().__init__(**kwargs)
        if isinstance(memory, dict):
            memory = tf.keras.layers.deserialize(memory)
        self.memory = memory
        self.head = tf.keras.layers.Dense(memory.num_classes)

    def call(self, inputs):
        return self.head(inputs)

    def get_config(self):
        return {"memory": tf.keras.layers.serialize(self.memory), "name": self.name}


@pytest.mark.parametrize("storage", STORAGES)
def test_keras_model_save_and_load_keep_the_memory(tmp_path, storage):
    model = _ReplayModel(_filled_memory(storage))
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    predictions = model(x).numpy()
    model.save(tmp_path / "model.keras")
    loaded = tf.keras.models.load_model(tmp_path / "model.keras")
    assert isinstance(loaded.memory, LatentReplayMemory)
    np.testing.assert_array_equal(loaded(x).numpy(), predictions)
    model.save_weights(str(tmp_path / "w.weights.h5"))
    twin = _ReplayModel(
        LatentReplayMemory(9, 4, storage=storage, seed=5, latent_shape=(16,))
    )
    twin(x)
    twin.load_weights(str(tmp_path / "w.weights.h5"))
    _assert_same_state(_state(model.memory), _state(twin.memory))
    _assert_same_memory(model.memory, loaded.memory)


def test_config_round_trip_and_registered_name():
    memory = LatentReplayMemory(
        30, 10, policy="random", storage="int8", seed=4, latent_shape=(4, 8)
    )
    config = memory.get_config()
    assert {k: config[k] for k in ("size", "num_classes", "policy", "storage", "seed")} == {
        "size": 30,
        "num_classes": 10,
        "policy": "random",
        "storage": "int8",
        "seed": 4,
    }
    assert config["latent_shape"] == [4, 8]
    clone = tf.keras.layers.deserialize(tf.keras.layers.serialize(memory))
    assert isinstance(clone, LatentReplayMemory) and clone.built
    assert clone.get_config() == config
    assert tf.keras.utils.get_registered_name(LatentReplayMemory) == (
        "larq_cwr>LatentReplayMemory"
    )


# -- storage size and int8 grid ----------------------------------------------------


@pytest.mark.parametrize("shape", [(16,), (4, 4, 16), (2, 24)])
def test_pattern_bytes_1bit_is_float32_over_32_and_int8_over_4(shape):
    size, classes = 30, 10
    nbytes = {
        s: LatentReplayMemory(size, classes, storage=s, latent_shape=shape).nbytes
        for s in STORAGES
    }
    assert nbytes["float32"] == size * math.prod(shape) * 4
    assert nbytes["1bit"] * 32 == nbytes["float32"]
    assert nbytes["int8"] * 4 == nbytes["float32"]
    # labels int32 + seen_counts int64 + num_experiences + rng_counter (int64 scalars),
    # and for int8 the float32 scale and int32 zero point.
    overhead = 4 * size + 8 * classes + 8 + 8
    assert LatentReplayMemory(size, classes, latent_shape=shape).overhead_bytes == overhead
    memory = LatentReplayMemory(size, classes, storage="int8", latent_shape=shape)
    assert memory.overhead_bytes == overhead + 4 + 4


def test_1bit_bytes_round_up_when_channels_are_not_a_multiple_of_8():
    memory = LatentReplayMemory(7, 2, storage="1bit", latent_shape=(3, 12))
    assert memory.nbytes == 7 * 3 * 2  # ceil(12 / 8) = 2 bytes per row of 12


def test_1bit_storage_stores_signs():
    x, y = _stream([0, 1], per_class=3, features=16)
    x[0, 1] = 0.0
    memory = LatentReplayMemory(6, 2, storage="1bit", seed=0)
    memory.update(x, y)
    latents, labels = memory.contents()
    expected = {
        (int(label), tuple(np.where(row >= 0, 1.0, -1.0))) for row, label in zip(x, y)
    }
    assert {(int(label), tuple(row)) for row, label in zip(latents, labels)} == expected


def test_int8_round_trip_within_half_a_step_zero_exact_and_clipped_later():
    x = np.random.default_rng(4).uniform(-1.3, 2.9, size=(40, 6)).astype(np.float32)
    x[0, 0] = 0.0
    memory = LatentReplayMemory(40, 1, storage="int8", seed=0)
    memory.update(x, np.zeros(40, int))
    low, high = memory.int8_range
    step = (high - low) / 255
    # The nudged grid (integer zero point) may move each end inwards by < step / 2.
    assert low - step / 2 <= x.min() and x.max() <= high + step / 2
    latents, _ = memory.contents()  # one class, 40 slots: stored in input order
    # Nearest level: error <= step / 2; the decoded level (k - z) * step is one float32
    # product, off its exact value by at most 1 ulp of the largest magnitude (2.9).
    tolerance = step / 2 + np.spacing(np.float32(2.9))
    assert np.abs(latents - x).max() <= tolerance
    assert np.abs(latents - x).max() > step / 4  # really quantized, not float32
    assert latents[0, 0] == 0.0  # integer zero point: 0 is a level
    memory2 = LatentReplayMemory(80, 1, storage="int8", seed=0)
    memory2.update(x, np.zeros(40, int))
    later = np.full((1, 6), 10.0, np.float32)
    later[0, 1] = -10.0
    memory2.update(later, [0])  # range fixed at the first update: clipped
    stored, _ = memory2.contents()
    np.testing.assert_allclose(stored[-1, :2], [high, low], rtol=1e-6)  # float32 products


# -- input validation --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 0}, "`size` is out of range"),
        ({"size": 2.5}, "`size` is not an int"),
        ({"size": True}, "`size` is not an int"),
        ({"num_classes": 0}, "`num_classes` is out of range"),
        ({"policy": "fifo"}, "`policy` must be one of"),
        ({"storage": "int4"}, "`storage` must be one of"),
        ({"seed": -1}, "`seed` is out of range"),
        ({"seed": 1.5}, "`seed` is not an int"),
        ({"latent_shape": (None, 4)}, "`latent_shape`"),
        ({"latent_shape": ()}, "`latent_shape`"),
    ],
)
def test_constructor_rejects_bad_arguments(kwargs, match):
    arguments = {"size": 10, "num_classes": 3, **kwargs}
    with pytest.raises(ValueError, match=match):
        LatentReplayMemory(arguments.pop("size"), arguments.pop("num_classes"), **arguments)


_X = np.ones((3, 4), np.float32)
_NAN, _INF = _X.copy(), _X.copy()
_NAN[1, 2], _INF[2, 0] = np.nan, -np.inf


@pytest.mark.parametrize(
    "latents, labels, match",
    [
        (np.ones((3, 5), np.float32), [0, 1, 2], r"`latents` has the wrong shape.*\(4,\)"),
        (np.ones(3, np.float32), [0, 1, 2], "`latents` has the wrong shape"),
        (np.ones((0, 4), np.float32), [], "`latents` is empty"),
        (_NAN, [0, 1, 2], "`latents` must be finite"),
        (_INF, [0, 1, 2], "`latents` must be finite"),
        (np.ones((3, 4), bool), [0, 1, 2], "`latents` must be real numbers"),
        (_X, [0, 1, 3], "`labels` has class 3; expected 0 <= class < num_classes=3"),
        (_X, [0, -1, 2], "`labels` has class -1"),
        (_X, [0, 1.5, 2], "`labels` must be integer"),
        (_X, ["a", "b", "c"], "`labels` must be integer"),
        (_X, [0, 1], r"`labels` must hold one class index per pattern.*\(3,\)"),
    ],
)
def test_update_rejects_bad_input_and_keeps_state(latents, labels, match):
    memory = LatentReplayMemory(5, 3, storage="int8", seed=0)
    memory.update(*_experience([0, 1], 0))
    before = _state(memory)
    with pytest.raises(ValueError, match=match):
        memory.update(latents, labels)
    _assert_same_state(before, _state(memory))
    unbuilt = LatentReplayMemory(5, 3, seed=0)
    if latents.ndim == 2 and latents.shape[1] == 5:
        return  # any latent shape suits an unbuilt memory
    with pytest.raises(ValueError, match=match):
        unbuilt.update(latents, labels)
    assert not unbuilt.built  # a rejected first update does not build the memory


def test_float_labels_with_integer_values_are_accepted():
    memory = LatentReplayMemory(5, 3, seed=0)
    memory.update(_X, np.array([[0.0], [2.0], [2.0]]))
    np.testing.assert_array_equal(memory.class_counts(), [1, 0, 2])


def test_sample_rejects_bad_n_and_empty_memory():
    memory = LatentReplayMemory(5, 3, seed=0)
    with pytest.raises(RuntimeError, match="call `update\\(\\)`"):
        memory.sample(2)
    memory.build((4,))
    with pytest.raises(RuntimeError, match="The memory is empty"):
        memory.sample(2)
    memory.update(_X, [0, 1, 2])
    for n in (0, -1, 2.0):
        with pytest.raises(ValueError, match="`n`"):
            memory.sample(n)


def test_build_rejects_another_shape():
    memory = LatentReplayMemory(5, 3, latent_shape=(4,))
    with pytest.raises(ValueError, match=r"expected \(4,\), got \(5,\)"):
        memory.build((5,))


# -- sampling ----------------------------------------------------------------------


def _memory_with_holes(seed=0):
    """16 slots, 10 filled with ids 0..9 and 100, 101, empty slots scattered among them."""
    memory = LatentReplayMemory(16, 2, seed=seed)
    memory.update(*_experience(np.arange(16), 0))
    memory.update(*_experience([100, 101], 1))  # class 0 drops 8 random members: 8 + 2 kept
    return memory


@pytest.mark.parametrize("jit_compile", [False, True])
def test_sample_inside_tf_function_matches_eager_and_draws_stored_patterns(jit_compile):
    graph_memory, eager_memory = _memory_with_holes(9), _memory_with_holes(9)
    assert len(graph_memory) == 10

    @tf.function(jit_compile=jit_compile)
    def train_batch(new_x, new_y, n):
        replay_x, replay_y = graph_memory.sample(n)
        return tf.concat([new_x, replay_x], 0), tf.concat([new_y, replay_y], 0)

    stored = {tuple(row): label for row, label in zip(*graph_memory.contents())}
    new_x, new_y = _experience([7, 8, 9], 0)
    draws = []
    # 4 <= 10 filled: without replacement; 13 > 10 filled: with replacement (tf.cond);
    # 20 > 16 slots: with replacement (static).
    for n in (4, 4, 13, 20):
        batch_x, batch_y = train_batch(new_x, new_y.astype(np.int32), n)
        assert batch_x.shape == (3 + n, 4)
        eager_x, eager_y = eager_memory.sample(n)
        if not jit_compile:  # XLA may implement the stateless RNG differently
            np.testing.assert_array_equal(batch_x[3:].numpy(), eager_x.numpy())
            np.testing.assert_array_equal(batch_y[3:].numpy(), eager_y.numpy())
        rows = [tuple(row) for row in batch_x[3:].numpy()]
        assert all(stored[row] == label for row, label in zip(rows, batch_y[3:].numpy()))
        if n <= 10:
            assert len(set(rows)) == n  # without replacement
        draws.append(rows)
    assert draws[0] != draws[1]  # the counter advanced inside the graph


@pytest.mark.parametrize("n, calls", [(3, 2000), (13, 800), (20, 500)])
def test_sample_is_uniform_over_stored_patterns(n, calls):
    memory = _memory_with_holes()
    ids = np.sort(memory.contents()[0][:, 0].astype(int))
    sample = tf.function(lambda: memory.sample(n)[0][:, 0])
    counts = np.zeros(102, np.int64)
    for _ in range(calls):
        np.add.at(counts, sample().numpy().astype(int), 1)
    assert counts.sum() == n * calls and counts[ids].sum() == n * calls  # only stored ones
    # Without replacement (3 of the 10 stored) a pattern is in a draw w.p. 0.3:
    # Binomial(calls, 0.3). With replacement each of n * calls picks hits it w.p. 0.1:
    # Binomial(n * calls, 0.1). 5 sigma bounds: a false alarm has probability < 1e-5.
    p, trials = (n / 10, calls) if n <= 10 else (0.1, n * calls)
    mean, sigma = trials * p, math.sqrt(trials * p * (1 - p))
    assert np.all(np.abs(counts[ids] - mean) <= 5 * sigma), (counts[ids], mean, sigma)
