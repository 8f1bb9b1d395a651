import numpy as np
import pytest
import tensorflow as tf

from larq_cwr import CWRStar, CWRStarHead, count_classes


def _model(num_classes=10):
    inputs = tf.keras.Input((8, 8, 1))
    x = tf.keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = tf.keras.layers.BatchNormalization(name="bn")(x)
    x = tf.keras.layers.ReLU()(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    outputs = CWRStarHead(num_classes, name="head")(x)
    model = tf.keras.Model(inputs, outputs)
    model.compile(
        tf.keras.optimizers.SGD(0.05),
        tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def test_count_classes():
    np.testing.assert_array_equal(count_classes([0, 2, 2, 3], 4), [1, 0, 2, 1])
    np.testing.assert_array_equal(count_classes(np.eye(3)[[0, 0, 2]], 3), [2, 0, 1])
    np.testing.assert_array_equal(count_classes(np.float32(2), 3), [0, 0, 1])
    np.testing.assert_array_equal(count_classes([[1.0], [1.0]], 3), [0, 2, 0])
    with pytest.raises(ValueError, match="expected 0 <= label < num_classes=4, got 4"):
        count_classes([0, 4], 4)
    with pytest.raises(ValueError, match="`labels` holds NaN or infinite labels"):
        count_classes([0.0, np.nan], 4)
    with pytest.raises(ValueError, match="`labels` holds NaN or infinite values"):
        count_classes(np.full((2, 4), np.nan), 4)  # one-hot rows
    with pytest.raises(ValueError, match=r"`labels` has the wrong shape.*got \(2, 3\)"):
        count_classes(np.zeros((2, 3)), 4)
    with pytest.raises(ValueError, match="`num_classes` is out of range"):
        count_classes([0], 0)


def test_experiences_freeze_backbone_and_consolidate(digits):
    tf.keras.utils.set_random_seed(0)
    x, y = digits
    model = _model()
    head = model.get_layer("head")
    first = np.isin(y, [0, 1])
    model.fit(
        x[first], y[first], epochs=2, verbose=0, callbacks=[CWRStar(head, labels=y[first])]
    )
    assert head.seen_classes == [0, 1]
    np.testing.assert_array_equal(head.kernel.numpy(), head.consolidated_kernel)
    conv_before = model.get_layer("conv").kernel.numpy().copy()
    bn_before = [w.numpy().copy() for w in model.get_layer("bn").weights]
    consolidated_before = head.consolidated_kernel

    second = np.isin(y, [2, 3])
    callback = CWRStar(head, labels=y[second])
    model.fit(x[second], y[second], epochs=2, verbose=0, callbacks=[callback])
    np.testing.assert_array_equal(model.get_layer("conv").kernel.numpy(), conv_before)
    for old, new in zip(bn_before, model.get_layer("bn").weights):
        np.testing.assert_array_equal(old, new.numpy())  # moving stats frozen too
    assert [w.name for w in model.trainable_weights] == ["head/kernel:0"]
    # Classes 0 and 1 were absent: their consolidated columns did not move.
    np.testing.assert_array_equal(
        head.consolidated_kernel[:, :2], consolidated_before[:, :2]
    )
    assert np.abs(head.consolidated_kernel[:, 2:4]).sum() > 0
    np.testing.assert_array_equal(head.past_counts[:4], np.bincount(y[first | second])[:4])
    # evaluate uses the consolidated weights
    np.testing.assert_array_equal(head.kernel.numpy(), head.consolidated_kernel)


def test_for_dataset_counts(digits):
    x, y = digits
    head = _model().get_layer("head")
    dataset = tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).batch(32)
    callback = CWRStar.for_dataset(head, dataset)
    np.testing.assert_array_equal(callback.class_counts, np.bincount(y[:100], minlength=10))


def test_trainable_layers_keep_training(digits):
    x, y = digits
    model = _model()
    head = model.get_layer("head")
    model.fit(
        x[:200], y[:200], epochs=1, verbose=0, callbacks=[CWRStar(head, labels=y[:200])]
    )
    before = model.get_layer("conv").kernel.numpy().copy()
    callback = CWRStar(head, labels=y[200:400], trainable_layers=["conv"])
    model.fit(x[200:400], y[200:400], epochs=1, verbose=0, callbacks=[callback])
    assert not np.array_equal(model.get_layer("conv").kernel.numpy(), before)
    with pytest.raises(ValueError, match="not layers of the model"):
        model.fit(
            x[:10],
            y[:10],
            verbose=0,
            callbacks=[CWRStar(head, labels=y[:10], trainable_layers=["nope"])],
        )


class _KernelAtTrainEnd(tf.keras.callbacks.Callback):
    """The head's live kernel when training ends, before ``CWRStar`` consolidates
    (callbacks run in list order)."""

    def __init__(self, head):
        super().__init__()
        self.head = head

    def on_train_end(self, logs=None):
        self.kernel = self.head.kernel.numpy().copy()


@pytest.mark.parametrize("consolidation", ["weighted", "latest"])
def test_consolidation_option_reaches_the_head(digits, consolidation):
    # Experience 1 revisits class 1 with the conv layer training too: "latest" gives
    # it its trained column minus avg, "weighted" the sqrt(past/cur) average with the
    # column consolidated in experience 0. Both computed here in numpy.
    tf.keras.utils.set_random_seed(0)
    x, y = digits
    model = _model()
    head = model.get_layer("head")
    first, second = np.isin(y, [0, 1]), np.isin(y, [1, 2])
    model.fit(
        x[first], y[first], epochs=1, verbose=0, callbacks=[CWRStar(head, labels=y[first])]
    )
    old = head.consolidated_kernel
    trained = _KernelAtTrainEnd(head)
    callback = CWRStar(
        head, labels=y[second], trainable_layers=["conv"], consolidation=consolidation
    )
    model.fit(x[second], y[second], epochs=1, verbose=0, callbacks=[trained, callback])
    shifted = trained.kernel - trained.kernel[:, [1, 2]].mean()
    w = np.sqrt(np.sum(y[first] == 1) / np.sum(y[second] == 1))
    weighted = (old[:, 1] * w + shifted[:, 1]) / (w + 1)
    expected = shifted[:, 1] if consolidation == "latest" else weighted
    # The two rules differ by far more than float32 rounding here.
    assert np.abs(weighted - shifted[:, 1]).max() > 1e-2
    np.testing.assert_allclose(head.consolidated_kernel[:, 1], expected, atol=1e-6)
    np.testing.assert_allclose(head.consolidated_kernel[:, 2], shifted[:, 2], atol=1e-6)
    np.testing.assert_array_equal(head.consolidated_kernel[:, 0], old[:, 0])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "exactly one"),
        ({"labels": [0], "class_counts": {0: 1}}, "exactly one"),
        ({"labels": []}, "no pattern"),
        ({"class_counts": {12: 1}}, "num_classes=10"),
        ({"labels": [0, 11]}, "num_classes=10"),
        ({"labels": [0], "consolidation": "last"}, "`consolidation` must be one of"),
    ],
)
def test_bad_arguments(kwargs, message):
    head = _model().get_layer("head")
    with pytest.raises(ValueError, match=message):
        CWRStar(head, **kwargs)
