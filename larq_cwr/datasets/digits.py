"""scikit-learn's 8x8 handwritten digits, embedded in scikit-learn: no file, no cache."""

from __future__ import annotations

import numpy as np

from larq_cwr._checks import check_fraction, check_seed
from larq_cwr.datasets._dataset import ImageDataset
from larq_cwr.datasets._images import check_image_size, resize_images
from larq_cwr.datasets.mnist import MNIST_CLASS_NAMES

DEFAULT_TEST_FRACTION = 0.25  # share of sklearn digits held out for testing


def load_digits(
    *,
    image_size: int | None = None,
    test_fraction: float = DEFAULT_TEST_FRACTION,
    seed: int = 0,
) -> ImageDataset:
    """Loads scikit-learn's 8x8 handwritten digits with a seeded, stratified split.

    The 1,797 images have integer values 0..16, scaled here to ``[0, 1]`` by dividing
    by 16. Nothing is downloaded or cached.

    Args:
        image_size: Resize to ``image_size x image_size`` (bilinear), e.g. 16 or 32;
            None keeps 8 x 8.
        test_fraction: Share of the images held out for testing, in ``(0, 1)``; the
            split keeps the class proportions.
        seed: Int in ``[0, 2**32)``, seed of the split; the same seed gives the same
            split.

    Returns:
        The data set, named ``"digits"``, with 1 channel and 10 classes.

    Raises:
        ValueError: ``test_fraction`` is not in ``(0, 1)``, ``image_size`` is not a
            positive int or ``seed`` is out of range.
    """
    from sklearn.datasets import load_digits as sklearn_load_digits
    from sklearn.model_selection import train_test_split

    check_image_size(image_size)
    test_fraction = check_fraction(test_fraction, "test_fraction")
    seed = check_seed(seed)
    bunch = sklearn_load_digits()
    max_value = 16.0  # sklearn digits count set pixels in 4x4 blocks: 0..16
    x = (bunch.images / max_value).astype(np.float32)[..., np.newaxis]
    y = bunch.target.astype(np.int32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return ImageDataset(
        name="digits",
        x_train=resize_images(x_train, image_size),
        y_train=y_train,
        x_test=resize_images(x_test, image_size),
        y_test=y_test,
        class_names=MNIST_CLASS_NAMES,
    )
