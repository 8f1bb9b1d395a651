"""`ImageDataset`, the type every loader returns, checked by `larq_cwr._checks`."""

from __future__ import annotations

import dataclasses
import os
from typing import Dict, Union

import numpy as np

from larq_cwr._checks import (
    check_array,
    check_images,
    check_labels,
    check_nonempty,
    check_same_length,
    check_sample_shape,
)

PathLike = Union[str, os.PathLike]

#: Decoded arrays by key: ``x_train``, ``y_train``, ``x_test``, ``y_test``.
Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False, repr=False, kw_only=True)
class ImageDataset:
    """A train/test split of an image classification data set.

    Args:
        name: Data set name, one of `DATASET_NAMES` for the built-in loaders.
        x_train: float32 images in ``[0, 1]``, shape ``(n_train, height, width, channels)``
            with 1 or 3 channels.
        y_train: int32 labels, shape ``(n_train,)``, each in ``[0, num_classes)``.
        x_test: float32 images, shape ``(n_test, height, width, channels)``.
        y_test: int32 labels, shape ``(n_test,)``.
        class_names: One name per class; label ``i`` is ``class_names[i]``.

    Raises:
        ValueError: An array has the wrong rank, dtype or length, images have other than
            1 or 3 channels or NaN/Inf pixels, train and test images differ in shape, or
            a label is outside ``[0, len(class_names))``.

    Example:
        `ds = load_digits(); ds.input_shape, ds.num_classes` gives `((8, 8, 1), 10)`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(c) for c in self.class_names))
        check_nonempty(self.class_names, "class_names", what="class name")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            check_array(x, f"x_{split}", dtype=np.float32, ndim=4)
            check_images(x, f"x_{split}")  # 1 or 3 channels, finite
            check_array(y, f"y_{split}", dtype=np.int32, ndim=1)
            check_same_length({f"x_{split}": x, f"y_{split}": y})
            check_labels(y, f"y_{split}", num_classes=self.num_classes)
        check_sample_shape(self.x_test, "x_test", expected=self.x_train.shape[1:])

    @property
    def num_classes(self) -> int:
        """Number of classes, ``len(class_names)``."""
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """Shape of one image, ``(height, width, channels)``."""
        height, width, channels = self.x_train.shape[1:]
        return (int(height), int(width), int(channels))

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.x_train)}, "
            f"test={len(self.x_test)}, input_shape={self.input_shape}, "
            f"num_classes={self.num_classes})"
        )
