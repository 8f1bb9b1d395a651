"""Image conversions shared by the loaders: uint8 to float32, resizing, decoding."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from larq_cwr._checks import check_positive_int

_RESIZE_CHUNK = 4096  # images resized per call, bounds the float32 working memory
# What Pillow raises on a corrupt or foreign image (SyntaxError: some broken PNG chunks).
_CORRUPT_IMAGE_ERRORS = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    OSError,
    ValueError,
    SyntaxError,
)


def check_image_size(image_size: int | None) -> None:
    """Raises a ValueError unless ``image_size`` is None or a positive int."""
    if image_size is not None:
        check_positive_int(image_size, "image_size")


def to_float(images: np.ndarray) -> np.ndarray:
    """uint8 0..255 -> float32 0..1; float32 passes through."""
    if images.dtype == np.uint8:
        result = images.astype(np.float32)
        result /= np.float32(255)
        return result
    return images.astype(np.float32, copy=False)


def resize_split(array: np.ndarray, image_size: int, key: str) -> np.ndarray:
    """Resizes an ``x_*`` array unless it has the size already (then kept as is)."""
    if not key.startswith("x_") or array.shape[1:3] == (image_size, image_size):
        return array
    return resize_images(array, image_size)


def resize_images(images: np.ndarray, image_size: int | None) -> np.ndarray:
    """Resizes ``(n, h, w, c)`` images to ``image_size`` squared, bilinear, as float32.

    uint8 images are scaled to ``[0, 1]`` first. Shrinking is antialiased (the bilinear
    kernel is widened by the scale factor); enlarging is plain bilinear interpolation
    with half-pixel centers. None, or the native square size, only converts to float32.
    """
    check_image_size(image_size)
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return to_float(images)
    import tensorflow as tf

    out = np.empty((len(images), image_size, image_size, images.shape[-1]), np.float32)
    for start in range(0, len(images), _RESIZE_CHUNK):
        chunk = to_float(images[start : start + _RESIZE_CHUNK])
        size = (image_size, image_size)
        resized = tf.image.resize(chunk, size, method="bilinear", antialias=True)
        out[start : start + len(chunk)] = resized.numpy()
    np.clip(out, 0.0, 1.0, out=out)  # float rounding only: the weights are convex
    return out


def decode_image(data: bytes, source: str, shape: tuple[int, ...]) -> np.ndarray:
    """Decodes one image file to an RGB uint8 array of the given shape."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("RGB"))
    except _CORRUPT_IMAGE_ERRORS as error:
        raise ValueError(f"{source}: cannot decode image ({error}).") from error
    if pixels.shape != shape:
        raise ValueError(f"{source}: image of shape {pixels.shape}; expected {shape}.")
    return pixels
