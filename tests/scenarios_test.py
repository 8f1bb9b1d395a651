"""Tests for larq_cwr.scenarios: NC / NI streams, validation splits, tf.data pipelines."""

import functools

import numpy as np
import pytest
from sklearn.model_selection import train_test_split

from larq_cwr.scenarios import (
    SCENARIO_NAMES,
    Experience,
    Scenario,
    make_scenario,
    nc_scenario,
    ni_scenario,
)


@pytest.fixture(scope="module")
def digits_split(digits):
    """conftest's digits, stratified 75/25: (x_train, x_test, y_train, y_test)."""
    x, y = digits
    return train_test_split(x, y, test_size=0.25, stratify=y, random_state=0)


def indexed_data(per_class, num_classes=10, n_test=20):
    """Synthetic data whose x[i, 0] is the sample id i (exact in float32 below 2**24),
    so overlaps and unions of experiences can be checked sample by sample."""
    y = np.repeat(np.arange(num_classes), per_class)
    y = np.random.default_rng(123).permutation(y)  # interleave classes
    x = np.stack([np.arange(len(y)), y, np.zeros(len(y))], axis=1).astype(np.float32)
    y_test = np.arange(n_test) % num_classes
    x_test = np.zeros((n_test, 3), np.float32)
    return x, y, x_test, y_test


def ids(experience_or_x):
    x = getattr(experience_or_x, "x_train", experience_or_x)
    return x[:, 0].astype(np.int64)


def assert_partition(scenario, n_samples):
    """Experiences are disjoint and together hold every training sample once."""
    all_ids = np.concatenate([ids(e) for e in scenario])
    assert len(all_ids) == n_samples
    np.testing.assert_array_equal(np.sort(all_ids), np.arange(n_samples))


# --- NC -------------------------------------------------------------------------------


def test_nc_class_order_is_the_seeded_permutation(digits_split):
    x, x_test, y, y_test = digits_split
    first = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=3)
    again = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=3)
    expected = tuple(int(c) for c in np.random.default_rng(3).permutation(10))
    assert first.class_order == again.class_order == expected
    for a, b in zip(first, again):
        assert a.classes == b.classes
        np.testing.assert_array_equal(a.x_train, b.x_train)
        np.testing.assert_array_equal(a.y_train, b.y_train)
    orders = {
        nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=s).class_order
        for s in range(5)
    }
    assert len(orders) == 5  # different seeds, different orders


def test_nc_experiences_split_classes_and_samples(digits_split):
    x, x_test, y, y_test = digits_split
    scenario = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=1)
    assert scenario.name == "nc" and len(scenario) == 5 and scenario.num_classes == 10
    order = scenario.class_order
    seen = []
    for i, experience in enumerate(scenario):
        assert experience.index == i
        assert experience.classes == tuple(sorted(order[2 * i : 2 * i + 2]))
        expected_counts = np.where(
            np.isin(np.arange(10), experience.classes), np.bincount(y, minlength=10), 0
        )
        np.testing.assert_array_equal(experience.class_counts, expected_counts)
        assert experience.class_counts.dtype == np.int64
        assert (
            experience.x_train.dtype == np.float32 and experience.y_train.dtype == np.int32
        )
        seen.extend(experience.classes)
    assert sorted(seen) == list(range(10))  # each class in exactly one experience
    total = sum(e.class_counts for e in scenario)
    np.testing.assert_array_equal(total, np.bincount(y))
    # The test set is shared, unchanged.
    np.testing.assert_array_equal(scenario.x_test, x_test)
    np.testing.assert_array_equal(scenario.y_test, y_test)


def test_nc_experiences_are_disjoint_and_cover_the_data():
    x, y, x_test, y_test = indexed_data(per_class=7)
    scenario = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=0)
    assert_partition(scenario, len(y))
    for experience in scenario:
        # Each sample keeps its own label: x[:, 1] holds the original label.
        np.testing.assert_array_equal(experience.x_train[:, 1], experience.y_train)
        # All samples of the experience's classes, in the original order.
        np.testing.assert_array_equal(
            ids(experience), np.flatnonzero(np.isin(y, experience.classes))
        )


def test_nc_first_experience_classes():
    x, y, x_test, y_test = indexed_data(per_class=3)
    scenario = nc_scenario(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        n_experiences=4,
        seed=2,
        first_experience_classes=4,
    )
    assert [len(e.classes) for e in scenario] == [4, 2, 2, 2]
    assert scenario[0].classes == tuple(sorted(scenario.class_order[:4]))
    assert_partition(scenario, len(y))
    single = nc_scenario(
        x, y, x_test=x_test, y_test=y_test, n_experiences=1, first_experience_classes=10
    )
    assert single[0].classes == tuple(range(10))


def test_nc_explicit_class_order_is_used():
    x, y, x_test, y_test = indexed_data(per_class=3)
    order = [9, 8, 7, 6, 5, 4, 3, 2, 1, 0]
    scenario = nc_scenario(
        x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=4, class_order=order
    )
    assert scenario.class_order == tuple(order)
    assert [e.classes for e in scenario] == [(8, 9), (6, 7), (4, 5), (2, 3), (0, 1)]


def test_seen_classes_accumulate():
    x, y, x_test, y_test = indexed_data(per_class=3)
    order = [3, 1, 4, 0, 5, 9, 2, 6, 8, 7]
    scenario = nc_scenario(
        x, y, x_test=x_test, y_test=y_test, n_experiences=5, class_order=order
    )
    assert scenario.seen_classes(0) == (1, 3)
    assert scenario.seen_classes(1) == (0, 1, 3, 4)
    assert scenario.seen_classes(4) == tuple(range(10))
    for bad in (-1, 5, 1.0):
        with pytest.raises(ValueError, match="`index`"):
            scenario.seen_classes(bad)


# --- NI -------------------------------------------------------------------------------


def test_ni_cifar10_sizes():
    # METHOD §1: CIFAR-10 NI has 10 experiences of 500 images per class.
    x, y, x_test, y_test = indexed_data(per_class=5000)
    scenario = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=10, seed=0)
    assert scenario.name == "ni" and scenario.class_order == tuple(range(10))
    for experience in scenario:
        assert experience.classes == tuple(range(10))
        np.testing.assert_array_equal(experience.class_counts, np.full(10, 500))
    assert_partition(scenario, len(y))


def test_ni_uneven_counts_differ_by_at_most_one(digits_split):
    x, x_test, y, y_test = digits_split
    scenario = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=4, seed=5)
    counts = np.stack([e.class_counts for e in scenario])  # (experiences, classes)
    assert all(e.classes == tuple(range(10)) for e in scenario)
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(y))
    assert (counts.max(axis=0) - counts.min(axis=0) <= 1).all()


def test_ni_is_seeded_and_disjoint():
    x, y, x_test, y_test = indexed_data(per_class=30)
    first = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=3, seed=7)
    again = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=3, seed=7)
    other = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=3, seed=8)
    assert_partition(first, len(y))
    for a, b in zip(first, again):
        np.testing.assert_array_equal(ids(a), ids(b))
    assert any(not np.array_equal(ids(a), ids(b)) for a, b in zip(first, other))
    for experience in first:
        np.testing.assert_array_equal(experience.x_train[:, 1], experience.y_train)


# --- Scenario as a sequence, joint, make_scenario --------------------------------------


def test_scenario_is_a_sequence():
    x, y, x_test, y_test = indexed_data(per_class=3)
    scenario = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5)
    assert len(scenario) == 5
    assert list(scenario) == list(scenario.experiences)
    assert scenario[-1] is scenario.experiences[4]
    assert scenario[1:3] == scenario.experiences[1:3]
    assert scenario[2] in scenario and scenario.index(scenario[3]) == 3
    assert [e.index for e in reversed(scenario)] == [4, 3, 2, 1, 0]


def test_joint_experience_holds_all_training_data():
    x, y, x_test, y_test = indexed_data(per_class=4)
    joint = nc_scenario(
        x, y, x_test=x_test, y_test=y_test, n_experiences=5
    ).joint_experience()
    assert joint.index == 0 and joint.classes == tuple(range(10)) and len(joint) == len(y)
    np.testing.assert_array_equal(np.sort(ids(joint)), np.arange(len(y)))
    np.testing.assert_array_equal(joint.class_counts, np.bincount(y))


def test_make_scenario_dispatches_and_forwards_kwargs():
    x, y, x_test, y_test = indexed_data(per_class=3)
    assert SCENARIO_NAMES == ("nc", "ni")
    nc = make_scenario(
        x,
        y,
        name="nc",
        x_test=x_test,
        y_test=y_test,
        n_experiences=3,
        seed=6,
        first_experience_classes=4,
    )
    direct = nc_scenario(
        x,
        y,
        x_test=x_test,
        y_test=y_test,
        n_experiences=3,
        seed=6,
        first_experience_classes=4,
    )
    assert nc.class_order == direct.class_order
    assert [e.classes for e in nc] == [e.classes for e in direct]
    ni = make_scenario(
        x, y, name="ni", x_test=x_test, y_test=y_test, n_experiences=3, seed=6
    )
    assert ni.name == "ni" and len(ni) == 3
    with pytest.raises(ValueError, match="`name` must be one of .*got 'nic'"):
        make_scenario(x, y, name="nic", x_test=x_test, y_test=y_test, n_experiences=3)
    with pytest.raises(TypeError):
        make_scenario(
            x,
            y,
            name="ni",
            x_test=x_test,
            y_test=y_test,
            n_experiences=3,
            class_order=range(10),
        )


def test_dtypes_are_converted_without_float64():
    x, y, x_test, y_test = indexed_data(per_class=3)
    scenario = nc_scenario(
        x.astype(np.float64),
        y.astype(np.int64)[:, None],  # (n, 1) labels as Keras datasets give them
        x_test=x_test.astype(np.uint8),
        y_test=y_test.astype(np.float64),  # integral floats are labels too
        n_experiences=2,
    )
    for array in [scenario.x_test, *(e.x_train for e in scenario)]:
        assert array.dtype == np.float32
    for array in [scenario.y_test, *(e.y_train for e in scenario)]:
        assert array.dtype == np.int32 and array.ndim == 1
    assert scenario.joint_experience().x_train.dtype == np.float32


# --- validation split -----------------------------------------------------------------


def test_split_validation_is_stratified_disjoint_and_seeded():
    x, y, x_test, y_test = indexed_data(per_class=20)
    experience = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=2, seed=0)[1]
    train, (x_val, y_val) = experience.split_validation(0.25, seed=1)
    assert train.index == 1 and train.classes == experience.classes
    assert train.num_classes == 10 and x_val.dtype == np.float32 and y_val.dtype == np.int32
    counts = experience.class_counts
    np.testing.assert_array_equal(np.bincount(y_val, minlength=10), np.round(counts * 0.25))
    np.testing.assert_array_equal(
        train.class_counts + np.bincount(y_val, minlength=10), counts
    )
    # Disjoint, and together the original experience.
    assert not set(ids(train)) & set(ids(x_val))
    np.testing.assert_array_equal(
        np.sort(np.concatenate([ids(train), ids(x_val)])), np.sort(ids(experience))
    )
    np.testing.assert_array_equal(x_val[:, 1], y_val)
    # Seeded.
    again = experience.split_validation(0.25, seed=1)[1][0]
    other = experience.split_validation(0.25, seed=2)[1][0]
    np.testing.assert_array_equal(ids(again), ids(x_val))
    assert not np.array_equal(ids(other), ids(x_val))


def test_split_validation_keeps_one_training_sample_per_class():
    x = np.arange(6, dtype=np.float32)[:, None]
    experience = Experience(
        index=0,
        classes=(0, 1),
        x_train=x,
        y_train=np.array([0, 0, 0, 0, 1, 1], np.int32),
        num_classes=2,
    )
    train, (_, y_val) = experience.split_validation(0.9)
    np.testing.assert_array_equal(train.class_counts, [1, 1])
    np.testing.assert_array_equal(np.bincount(y_val), [3, 1])


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 1.5, "0.5", True])
def test_split_validation_rejects_bad_fraction(fraction):
    x, y, x_test, y_test = indexed_data(per_class=5)
    experience = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=1)[0]
    with pytest.raises(ValueError, match="`fraction`"):
        experience.split_validation(fraction)


def test_split_validation_rejects_empty_validation():
    x, y, x_test, y_test = indexed_data(per_class=5)
    experience = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=1)[0]
    with pytest.raises(ValueError, match="`fraction` holds out no sample.*got 0.01"):
        experience.split_validation(0.01)


# --- tf.data --------------------------------------------------------------------------


def test_train_dataset_batches(digits_split):
    x, x_test, y, y_test = digits_split
    experience = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=0)[0]
    n = len(experience)
    dataset = experience.train_dataset(32, shuffle=False)
    batches = list(dataset)
    assert len(batches) == -(-n // 32)
    for xb, yb in batches[:-1]:
        assert xb.shape == (32, 8, 8, 1) and yb.shape == (32,)
        assert xb.numpy().dtype == np.float32 and yb.numpy().dtype == np.int32
    assert batches[-1][0].shape[0] == n - 32 * (len(batches) - 1)
    # Unshuffled: the stored order, values unchanged.
    np.testing.assert_array_equal(
        np.concatenate([xb.numpy() for xb, _ in batches]), experience.x_train
    )
    np.testing.assert_array_equal(
        np.concatenate([yb.numpy() for _, yb in batches]), experience.y_train
    )


def test_train_dataset_shuffle_is_seeded_and_reshuffles():
    x, y, x_test, y_test = indexed_data(per_class=20)
    experience = ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=1)[0]

    def epoch(dataset):
        xs, ys = zip(*[(xb.numpy(), yb.numpy()) for xb, yb in dataset])
        xs, ys = np.concatenate(xs), np.concatenate(ys)
        np.testing.assert_array_equal(xs[:, 1], ys)  # pairs stay together
        return ids(xs)

    dataset = experience.train_dataset(16, seed=5)
    first, second = epoch(dataset), epoch(dataset)
    np.testing.assert_array_equal(np.sort(first), np.arange(len(y)))  # a permutation
    assert not np.array_equal(first, np.arange(len(y)))
    assert not np.array_equal(first, second)  # reshuffled each epoch
    np.testing.assert_array_equal(epoch(experience.train_dataset(16, seed=5)), first)


def test_test_dataset_restricts_to_classes(digits_split):
    x, x_test, y, y_test = digits_split
    scenario = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=5, seed=0)
    seen = scenario.seen_classes(1)
    batches = list(scenario.test_dataset(50, classes=seen))
    xs = np.concatenate([xb.numpy() for xb, _ in batches])
    ys = np.concatenate([yb.numpy() for _, yb in batches])
    keep = np.isin(y_test, seen)
    np.testing.assert_array_equal(ys, y_test[keep])
    np.testing.assert_array_equal(xs, x_test[keep].astype(np.float32))
    assert batches[0][0].shape == (50, 8, 8, 1) and batches[0][1].numpy().dtype == np.int32
    everything = np.concatenate([yb.numpy() for _, yb in scenario.test_dataset(1000)])
    np.testing.assert_array_equal(everything, y_test)


def test_dataset_arguments_are_validated():
    x, y, x_test, y_test = indexed_data(per_class=3, n_test=5)  # test classes 0..4
    scenario = nc_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=2)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="`batch_size`"):
            scenario[0].train_dataset(bad)
        with pytest.raises(ValueError, match="`batch_size`"):
            scenario.test_dataset(bad)
    with pytest.raises(ValueError, match="`classes` has a class out of range.*got 10"):
        scenario.test_dataset(8, classes=[1, 10])
    with pytest.raises(ValueError, match=r"`classes` selects no test sample.*\[7, 8\]"):
        scenario.test_dataset(8, classes=[7, 8])


# --- input validation -----------------------------------------------------------------


def _bad(**changes):
    x, y, x_test, y_test = indexed_data(per_class=3)
    args = dict(x_train=x, y_train=y, x_test=x_test, y_test=y_test, n_experiences=2)
    args.update(changes)
    return args


def _nan_x():
    x = indexed_data(per_class=3)[0].copy()
    x[4, 2] = np.nan
    return x


def _negative_label():
    y = indexed_data(per_class=3)[1].copy()
    y[0] = -1
    return y


@pytest.mark.parametrize("factory", [nc_scenario, ni_scenario])
@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(n_experiences=0), "`n_experiences` is out of range; expected "),
        (dict(n_experiences=2.0), "`n_experiences` is not an int; expected an int"),
        (
            dict(y_train=np.zeros(29, int)),
            "`x_train` and `y_train` differ in length; expected the same number of "
            "samples, got 30 and 29",
        ),
        (dict(y_test=np.zeros(3, int)), "`x_test` and `y_test` differ.*got 20 and 3"),
        (dict(y_train=_negative_label()), "`y_train` has a label out of range.*got -1"),
        (
            dict(num_classes=9),
            "`y_train` has a label out of range; expected 0 <= label < num_classes=9, "
            "got 9",
        ),
        (dict(num_classes=11), r"no samples of classes \[10\]"),
        (dict(x_train=_nan_x()), r"`x_train` holds NaN .*got nan at index \(4, 2\)"),
        (dict(y_train=np.full(30, 0.5)), "`y_train` holds a non-integer label"),
        (dict(y_train=np.array(["a"] * 30)), "`y_train` is not an array of integer"),
        (
            dict(x_test=np.zeros((20, 4), np.float32)),
            r"`x_test` has the wrong sample shape; expected \(3,\), got \(4,\)",
        ),
        (dict(seed=-1), "`seed` is out of range; expected 0 <= seed <= 4294967295, got -1"),
    ],
)
def test_factories_reject_bad_inputs(factory, changes, match):
    with pytest.raises(ValueError, match=match):
        factory(**_bad(**changes))


@pytest.mark.parametrize(
    "changes, match",
    [
        (dict(n_experiences=11), "expected 1 <= n_experiences <= 10, got 11"),
        (
            dict(n_experiences=3),
            "`n_experiences` does not split num_classes=10 evenly; expected a divisor "
            "of 10 .*got 3",
        ),
        (
            dict(n_experiences=4, first_experience_classes=3),
            "`first_experience_classes` leaves 7 of num_classes=10 classes; expected a "
            "multiple of 3 .*got 3",
        ),
        (
            dict(n_experiences=2, first_experience_classes=10),
            "`first_experience_classes` leaves 0 .*got 10",
        ),
        (dict(n_experiences=1, first_experience_classes=4), "leaves 6.*all of them"),
        (dict(first_experience_classes=0), "`first_experience_classes` is out of range"),
        (dict(first_experience_classes=11), "first_experience_classes <= 10, got 11"),
        (dict(class_order=[0, 1, 2, 3, 4, 5, 6, 7, 8, 8]), "not a permutation of range"),
        (dict(class_order=[0, 1, 2]), "not a permutation of range"),
        (
            dict(class_order=list(range(1, 11))),
            "`class_order` has a class out of range; expected 0 <= class < "
            "num_classes=10, got 10",
        ),
    ],
)
def test_nc_rejects_bad_splits(changes, match):
    with pytest.raises(ValueError, match=match):
        nc_scenario(**_bad(**changes))


def test_ni_rejects_more_experiences_than_samples_per_class():
    x, y, x_test, y_test = indexed_data(per_class=3)
    with pytest.raises(
        ValueError, match="`n_experiences` exceeds the 3 training samples.*got 4"
    ):
        ni_scenario(x, y, x_test=x_test, y_test=y_test, n_experiences=4)


def test_experience_and_scenario_check_their_fields():
    x = np.zeros((3, 2), np.float32)
    y = np.array([0, 2, 2], np.int32)
    assert Experience(
        index=0, classes=(0, 2), x_train=x, y_train=y, num_classes=3
    ).class_counts.tolist() == [1, 0, 2]
    with pytest.raises(ValueError, match=r"`classes` .*got \(0, 1\)"):
        Experience(index=0, classes=(0, 1), x_train=x, y_train=y, num_classes=3)
    with pytest.raises(ValueError, match="`x_train` is not a numpy float32 array"):
        Experience(
            index=0, classes=(0, 2), x_train=x.astype(np.float64), y_train=y, num_classes=3
        )
    with pytest.raises(ValueError, match="`y_train` is empty"):
        Experience(index=0, classes=(), x_train=x[:0], y_train=y[:0], num_classes=3)
    with pytest.raises(ValueError, match="num_classes=2"):
        Experience(index=0, classes=(0, 2), x_train=x, y_train=y, num_classes=2)
    experience = Experience(index=0, classes=(0, 2), x_train=x, y_train=y, num_classes=3)
    scenario = functools.partial(Scenario, experiences=(experience,), x_test=x, y_test=y)
    with pytest.raises(ValueError, match=r"`experiences\[0\]` does not fit.*got index=0"):
        scenario(name="nc", num_classes=4, class_order=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="`name` must be one of .*got 'nic'"):
        scenario(name="nic", num_classes=3, class_order=(0, 1, 2))
    with pytest.raises(ValueError, match="not a permutation"):
        scenario(name="nc", num_classes=3, class_order=(0, 1, 1))
