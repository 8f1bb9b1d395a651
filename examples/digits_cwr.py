"""CWR* on a small binary network, with plain Keras calls: model.fit + CWRStar.

sklearn digits (upscaled to 16 px) arrive as 5 experiences of 2 new classes each. The
first experience trains the whole binary network; later ones train only the CWR* head,
once in float and once with the hybrid 8/16-bit update. Accuracy on all classes is
printed after each experience.

    python examples/digits_cwr.py
"""

import larq_cwr  # noqa: F401  isort: skip  (first: Keras 2 before TensorFlow loads)

import numpy as np
import tensorflow as tf

from larq_cwr import CWRStar, CWRStarHead, HybridQuantizedTrainStep
from larq_cwr.backbones import build_backbone
from larq_cwr.datasets import load_digits

SEED = 0
CLASS_PAIRS = [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]


def build(forward_bits, update_bits):
    inputs = tf.keras.Input((16, 16, 1))
    features = build_backbone("bnn32", input_shape=(16, 16, 1))(inputs)
    logits = CWRStarHead(10, name="cwr_head")(features)
    return HybridQuantizedTrainStep(
        inputs, logits, forward_bits=forward_bits, update_bits=update_bits
    )


def run(forward_bits, update_bits, data):
    tf.keras.utils.set_random_seed(SEED)
    model = build(forward_bits, update_bits)
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    accuracies = []
    for index, classes in enumerate(CLASS_PAIRS):
        mask = np.isin(data.y_train, classes)
        x, y = data.x_train[mask], data.y_train[mask]
        if index == 0:  # whole network, float, Adam (METHOD §2 step 2)
            model.compile(tf.keras.optimizers.Adam(1e-3), loss, metrics=["accuracy"])
            epochs = 10
        elif index == 1:  # head only, hybrid SGD step (METHOD §4)
            model.compile(tf.keras.optimizers.SGD(0.0025), loss, metrics=["accuracy"])
            epochs = 5
        model.fit(
            x,
            y,
            batch_size=50,
            epochs=epochs,
            verbose=0,
            callbacks=[CWRStar(model.get_layer("cwr_head"), labels=y)],
        )
        if index == 0:  # static ranges of the hybrid update from experience-0 data
            model.calibrate(x, y, batch_size=50)
        _, accuracy = model.evaluate(data.x_test, data.y_test, verbose=0)
        accuracies.append(accuracy)
        print(
            f"  after experience {index} (classes {classes}): "
            f"accuracy on all classes {accuracy:.3f}"
        )
    return accuracies


def main():
    data = load_digits(image_size=16, seed=SEED)
    for name, bits in [("float", (None, None)), ("hybrid 8/16", (8, 16))]:
        print(f"CWR* {name}:")
        run(*bits, data)


if __name__ == "__main__":
    main()
