"""`ImageDataset`, the type every loader returns, and the checks its arrays go through."""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, Union

import numpy as np
import numpy.typing as npt

PathLike = Union[str, os.PathLike]

#: Decoded arrays by key: ``x_train``, ``y_train``, ``x_test``, ``y_test``.
Arrays = Dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
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
        ValueError: An array has the wrong rank, dtype or length, train and test images
            differ in shape, or a label is outside ``[0, len(class_names))``.

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
        if not self.class_names:
            raise ValueError("`class_names` is empty; expected one name per class.")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.ndim != 4:
                raise ValueError(
                    f"`x_{split}` must be a float32 array of shape (n, height, width, "
                    f"channels); received {describe(x)}."
                )
            if x.shape[-1] not in (1, 3):
                raise ValueError(
                    f"`x_{split}` has {x.shape[-1]} channels; expected 1 or 3."
                )
            if not isinstance(y, np.ndarray) or y.dtype != np.int32 or y.ndim != 1:
                raise ValueError(
                    f"`y_{split}` must be an int32 array of shape (n,); "
                    f"received {describe(y)}."
                )
            if len(x) != len(y):
                raise ValueError(
                    f"`x_{split}` has {len(x)} images but `y_{split}` has {len(y)} labels."
                )
            check_labels(y, self.num_classes, f"`y_{split}`")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"Train images have shape {self.x_train.shape[1:]} but test images have "
                f"shape {self.x_test.shape[1:]}; expected the same."
            )

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


def check_labels(labels: npt.ArrayLike, num_classes: int, source: str) -> None:
    """Raises a ValueError naming ``source`` unless labels are in ``[0, num_classes)``."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"{source}: labels span {labels.min()}..{labels.max()}; expected "
            f"0 <= label < num_classes={num_classes}."
        )


def describe(value: Any) -> str:
    """``"uint8 array of shape (2, 3)"`` for arrays, else the type name (for errors)."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array of shape {value.shape}"
    return type(value).__name__
