import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import CWRStarHead


def _built_head(features=2, classes=3):
    head = CWRStarHead(classes)
    head.build((None, features))
    return head


def _set_columns(head, columns):
    """Assign kernel columns given as {class: vector} (a class is a kernel column)."""
    kernel = head.kernel.numpy()
    for label, vector in columns.items():
        kernel[:, label] = vector
    head.kernel.assign(kernel)


def test_method_worked_example():
    # METHOD §2 worked check, features 2, classes 3.
    head = _built_head()
    head.begin_experience({0: 10, 1: 30})
    np.testing.assert_array_equal(head.kernel.numpy(), np.zeros((2, 3)))
    _set_columns(head, {0: (1, 3), 1: (-1, 5)})
    head.consolidate()
    np.testing.assert_allclose(head.consolidated_kernel, [[-1, -3, 0], [1, 3, 0]])
    np.testing.assert_array_equal(head.past_counts, [10, 30, 0])
    assert head.seen_classes == [0, 1]

    head.begin_experience(np.array([0, 10, 20]))
    # Reset: class 0 absent -> 0, class 1 seen -> consolidated, class 2 new -> 0.
    np.testing.assert_allclose(head.kernel.numpy(), [[0, -3, 0], [0, 3, 0]])
    _set_columns(head, {1: (-2, 4), 2: (6, 0)})
    head.consolidate()
    w = np.sqrt(30 / 10)
    expected_class_1 = (np.array([-3, 3]) * w + np.array([-4, 2])) / (w + 1)
    np.testing.assert_allclose(
        expected_class_1, [-3.366, 2.634], atol=5e-4
    )  # METHOD's numbers
    np.testing.assert_allclose(head.consolidated_kernel[:, 1], expected_class_1, rtol=1e-6)
    np.testing.assert_allclose(head.consolidated_kernel[:, 2], [4, -2])
    np.testing.assert_allclose(head.consolidated_kernel[:, 0], [-1, 1])  # untouched
    np.testing.assert_array_equal(head.past_counts, [10, 40, 20])
    head.load_consolidated()
    np.testing.assert_allclose(head.kernel.numpy(), head.consolidated_kernel)


def test_latest_consolidation_worked_example():
    # METHOD §2 worked check with consolidation="latest": experience 0 is the same
    # (both classes new); in experience 1 the seen class 1 takes its trained column
    # minus avg, (-2,4) - 2 = (-4,2), where the weighted rule gives (-3.366, 2.634).
    head = _built_head()
    head.begin_experience({0: 10, 1: 30})
    _set_columns(head, {0: (1, 3), 1: (-1, 5)})
    head.consolidate(consolidation="latest")
    np.testing.assert_allclose(head.consolidated_kernel, [[-1, -3, 0], [1, 3, 0]])

    head.begin_experience({1: 10, 2: 20})
    np.testing.assert_allclose(head.kernel.numpy(), [[0, -3, 0], [0, 3, 0]])  # reset
    _set_columns(head, {1: (-2, 4), 2: (6, 0)})
    head.consolidate(consolidation="latest")
    np.testing.assert_allclose(head.consolidated_kernel, [[-1, -4, 4], [1, 2, -2]])
    np.testing.assert_array_equal(head.past_counts, [10, 40, 20])  # counts still add up
    assert head.consolidated_experiences == 2


def test_unknown_consolidation_leaves_state():
    head = _built_head()
    head.begin_experience({0: 10, 1: 30})
    _set_columns(head, {0: (1, 3), 1: (-1, 5)})
    with pytest.raises(ValueError, match=r"`consolidation` must be one of.*'mean'"):
        head.consolidate(consolidation="mean")
    assert head.in_experience and head.consolidated_experiences == 0
    np.testing.assert_array_equal(head.consolidated_kernel, np.zeros((2, 3)))
    np.testing.assert_array_equal(head.past_counts, [0, 0, 0])
    head.consolidate()  # the experience can still be consolidated
    np.testing.assert_allclose(head.consolidated_kernel, [[-1, -3, 0], [1, 3, 0]])


def test_second_worked_example_three_features():
    # Our own check: features 3, classes 4, three experiences, class 0 revisited twice.
    head = _built_head(features=3, classes=4)
    head.begin_experience({0: 4, 3: 12})
    _set_columns(head, {0: (2, 0, 4), 3: (0, 6, 0)})
    head.consolidate()
    # avg = (2+0+4+0+6+0)/6 = 2: cw0 = (0,-2,2), cw3 = (-2,4,-2)
    np.testing.assert_allclose(head.consolidated_kernel[:, 0], [0, -2, 2])
    np.testing.assert_allclose(head.consolidated_kernel[:, 3], [-2, 4, -2])

    head.begin_experience({0: 1, 2: 3})
    np.testing.assert_allclose(head.kernel.numpy()[:, 0], [0, -2, 2])
    np.testing.assert_allclose(head.kernel.numpy()[:, 3], [0, 0, 0])  # absent: zeroed
    _set_columns(head, {0: (1, 1, 1), 2: (3, 3, -3)})
    head.consolidate()
    # avg = (1+1+1+3+3-3)/6 = 1; class 0: w = sqrt(4/1) = 2, new = (0,0,0)
    # cw0 = ((0,-2,2)*2 + 0) / 3 = (0, -4/3, 4/3); class 2 new: (2, 2, -4)
    np.testing.assert_allclose(
        head.consolidated_kernel[:, 0], [0, -4 / 3, 4 / 3], rtol=1e-6
    )
    np.testing.assert_allclose(head.consolidated_kernel[:, 2], [2, 2, -4])

    head.begin_experience({0: 5})
    _set_columns(head, {0: (2, 2, 8)})
    head.consolidate()
    # Only class 0 present: avg = 4, new = (-2,-2,4); w = sqrt(5/5) = 1
    # cw0 = ((0,-4/3,4/3) + (-2,-2,4)) / 2 = (-1, -5/3, 8/3)
    np.testing.assert_allclose(
        head.consolidated_kernel[:, 0], [-1, -5 / 3, 8 / 3], rtol=1e-6
    )
    np.testing.assert_array_equal(head.past_counts, [10, 0, 3, 12])


def test_call_is_bias_free_matmul():
    head = _built_head()
    head.kernel.assign([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    out = head(tf.constant([[1.0, -1.0]]))
    np.testing.assert_allclose(out.numpy(), [[-3, -3, -3]])
    assert len(head.trainable_weights) == 1


def test_properties_are_copies():
    head = _built_head()
    head.begin_experience({0: 1})
    counts = head.past_counts
    counts[0] = 99
    kernel = head.consolidated_kernel
    kernel[:] = 5
    assert head.past_counts[0] == 0 and head.consolidated_kernel.max() == 0


@pytest.mark.parametrize(
    "counts, message",
    [
        ({3: 5}, "expected 0 <= class < num_classes=3"),
        ({-1: 5}, "expected 0 <= class < num_classes=3"),
        ({0: -2}, "`class_counts` has a count out of range; expected counts >= 0, got -2"),
        ({0: 0, 1: 0}, "no pattern"),
        (np.zeros(3), "no pattern"),
        (np.ones(4), "length num_classes=3"),
        ({0: 1.5}, "integer"),
        ({"a": 1}, r"`class_counts.keys\(\)` is not an array of integer classes"),
        ({0: None}, "`class_counts` is not an array of integer counts"),
        ({0: np.nan}, "`class_counts` holds NaN or infinite counts"),
    ],
)
def test_bad_counts_raise_and_keep_state(counts, message):
    head = _built_head()
    head.begin_experience({0: 10, 1: 30})
    _set_columns(head, {0: (1, 3), 1: (-1, 5)})
    head.consolidate()
    head.load_consolidated()
    before = [w.numpy().copy() for w in head.weights]
    with pytest.raises(ValueError, match=message):
        head.begin_experience(counts)
    for old, new in zip(before, head.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_non_2d_input_raises():
    with pytest.raises(ValueError, match="`inputs` of CWRStarHead are not 2-D"):
        CWRStarHead(3)(tf.keras.Input((4, 4, 8)))


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes"):
        CWRStarHead(num_classes)


def test_order_errors():
    with pytest.raises(RuntimeError, match="Build the layer"):
        CWRStarHead(3).begin_experience({0: 1})
    head = _built_head()
    with pytest.raises(RuntimeError, match="call `begin_experience\\(\\)` before"):
        head.consolidate()


def test_config_round_trip():
    head = CWRStarHead(7, name="cwr")
    again = CWRStarHead.from_config(head.get_config())
    assert again.num_classes == 7 and again.name == "cwr"
    assert tf.keras.utils.get_registered_name(CWRStarHead) == "larq_cwr>CWRStarHead"


def test_state_survives_save_weights_and_checkpoint(tmp_path):
    def model_with_head():
        inputs = tf.keras.Input((2,))
        return tf.keras.Model(inputs, CWRStarHead(3, name="head")(inputs))

    model = model_with_head()
    head = model.get_layer("head")
    head.begin_experience({0: 10, 1: 30})
    _set_columns(head, {0: (1, 3), 1: (-1, 5)})
    head.consolidate()
    head.begin_experience({2: 4})  # an experience in progress is state too
    model.save_weights(tmp_path / "weights.h5")
    tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))

    for restore in ("h5", "checkpoint"):
        fresh = model_with_head()
        if restore == "h5":
            fresh.load_weights(tmp_path / "weights.h5")
        else:
            tf.train.Checkpoint(model=fresh).read(str(tmp_path / "ckpt")).assert_consumed()
        again = fresh.get_layer("head")
        np.testing.assert_array_equal(again.consolidated_kernel, head.consolidated_kernel)
        np.testing.assert_array_equal(again.past_counts, [10, 30, 0])
        np.testing.assert_array_equal(again.current_counts, [0, 0, 4])
