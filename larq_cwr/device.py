"""Run an exported model and keep learning with the exported files only (METHOD §7).

``DeviceLearner`` is the reference of what a device runs: the Larq Compute Engine
interpreter executes ``backbone.tflite`` (image -> features) and a plain TFLite
interpreter the signatures of ``head.tflite`` (``begin_experience``, ``train``,
``consolidate``, ``infer``, ``get_state``, ``set_state``). It uses no Keras model and no
larq_cwr training code: this module imports numpy, TensorFlow's TFLite interpreter and
LCE's interpreter only, and it runs as a lone file (copy ``device.py`` beside the export).
``docs/deploy.md`` gives the same loop against the TFLite C++ API.

The CWR* state persists in a state file after every experience, written atomically (a
temporary file in the same folder, ``fsync``, ``os.replace``), so a power loss leaves
the previous complete file. The file is a numpy ``.npz`` archive read with
``allow_pickle=False``: a format version, the identifier of the export (the SHA-256 of
``head.tflite``) and one array per state tensor. A truncated, corrupt or foreign file is
refused with a ValueError and left as it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import pathlib
import tempfile
import warnings
import zipfile
import zlib
from typing import Any

import numpy as np

__all__ = ["STATE_FORMAT_VERSION", "DeviceLearner", "ExperienceResult", "batch_order"]

STATE_FORMAT_VERSION = 1  # of the state files DeviceLearner writes
EXPORT_FORMAT_VERSION = 1  # of the export folders it reads (larq_cwr.export.FORMAT_VERSION)
MANIFEST_FILE = "manifest.json"
_COUNT_STATES = ("past_counts", "current_counts", "consolidated_experiences")
_READ_ERRORS = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error)


def batch_order(
    num_samples: int, *, epochs: int, batch_size: int, seed: int
) -> list[list[np.ndarray]]:
    """Sample indices of each batch of each epoch, shuffled anew every epoch.

    Epoch ``e`` is ``np.random.default_rng(seed)``'s ``e``-th permutation of the
    samples cut into batches of ``batch_size`` (the last one may be smaller), so the
    order is fixed by ``seed`` alone.

    Args:
        num_samples: Number of samples (positive).
        epochs: Number of epochs (positive).
        batch_size: Samples per batch (positive).
        seed: Seed of the shuffling.

    Returns:
        One list of index arrays per epoch.

    Raises:
        ValueError: A non-positive count.

    Example:
        >>> [[b.tolist() for b in epoch]
        ...  for epoch in batch_order(5, epochs=2, batch_size=2, seed=0)]
        [[[2, 4], [3, 0], [1]], [[4, 1], [2, 0], [3]]]
    """
    for name, value in (
        ("num_samples", num_samples),
        ("epochs", epochs),
        ("batch_size", batch_size),
    ):
        _check_positive_int(value, name)
    rng = np.random.default_rng(_check_seed(seed))
    order = []
    for _ in range(epochs):
        permutation = rng.permutation(num_samples)
        order.append(
            [permutation[i : i + batch_size] for i in range(0, num_samples, batch_size)]
        )
    return order


def _check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be an int >= 0; got {seed!r}.")
    return int(seed)


@dataclasses.dataclass(frozen=True, kw_only=True)
class ExperienceResult:
    """What ``DeviceLearner.learn_experience`` did.

    Attributes:
        class_counts: Patterns per class of the experience.
        epoch_losses: Mean ``train`` loss of each epoch (the forward pass's softmax
            cross-entropy, averaged over batches).
        consolidated_experiences: Experiences consolidated so far, this one included.
    """

    class_counts: np.ndarray
    epoch_losses: list[float]
    consolidated_experiences: int


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fsync_directory(directory: pathlib.Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; a no-op where unsupported)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


class DeviceLearner:
    """Predict and learn CWR* experiences with an ``export_for_device`` folder.

    Each ``learn_experience`` call is one CWR* experience (METHOD §2): the backbone
    computes the images' features once (it is frozen, so every epoch would compute the
    same ones), ``begin_experience`` gets the class counts, ``train`` runs one hybrid
    step per batch in the order of ``batch_order``, ``consolidate`` ends it, and the
    state is saved to ``state_path``. Inputs are checked before any state changes.

    Args:
        export_dir: Folder written by ``larq_cwr.export.export_for_device``.
        state_path: File keeping the CWR* state across restarts (``.npz``); restored
            when it exists, written after every experience. None: no persistence.
        num_threads: Threads of each interpreter.

    Raises:
        ValueError: An export of another format version, a file whose SHA-256 differs
            from the manifest's, or a state file that is truncated, corrupt or saved for
            another export (the file is left unchanged).
        FileNotFoundError: A missing export file.

    Example:
        ``learner = DeviceLearner("exported/", state_path="state.npz")``, then per
        experience ``learner.learn_experience(x, y, learning_rate=0.0025)`` and
        ``learner.predict(x_test).argmax(axis=1)`` (``examples/on_device_loop.py``).
    """

    def __init__(
        self,
        export_dir: str | os.PathLike,
        *,
        state_path: str | os.PathLike | None = None,
        num_threads: int = 1,
    ) -> None:
        self.export_dir = pathlib.Path(export_dir)
        self.num_threads = _check_positive_int(num_threads, "num_threads")
        self._manifest = self._read_manifest()
        backbone_path = self._checked_file("backbone")
        head_path = self._checked_file("head")
        self.model_id = self._manifest["files"][head_path.name]["sha256"]
        self._state_spec = {
            name: (tuple(spec["shape"]), np.dtype(spec["dtype"]))
            for name, spec in self._manifest["head"]["state"].items()
        }
        self._backbone = _lce_interpreter(backbone_path.read_bytes(), self.num_threads)
        self._head = _tflite_interpreter(head_path.read_bytes(), self.num_threads)
        self._runners = {
            name: self._head.get_signature_runner(name)
            for name in ("infer", "begin_experience", "train", "consolidate")
            + ("get_state", "set_state")
        }
        self.state_path = None if state_path is None else pathlib.Path(state_path)
        if self.state_path is not None and self.state_path.exists():
            self.set_state(self._read_state_file(self.state_path))

    # -- export files ----------------------------------------------------------------------

    def _read_manifest(self) -> dict[str, Any]:
        path = self.export_dir / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} not found: `export_dir` must be a folder written by "
                "`larq_cwr.export.export_for_device`."
            )
        try:
            manifest = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from error
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        if version != EXPORT_FORMAT_VERSION:
            raise ValueError(
                f"{str(path)!r} has format_version {version!r}; this DeviceLearner reads "
                f"version {EXPORT_FORMAT_VERSION}."
            )
        return manifest

    def _checked_file(self, part: str) -> pathlib.Path:
        name = self._manifest[part]["file"]
        path = self.export_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{str(path)!r} (in the manifest) not found.")
        expected = self._manifest["files"][name]["sha256"]
        if _sha256(path) != expected:
            raise ValueError(
                f"{str(path)!r} does not match the manifest (SHA-256 differs): the export "
                "is corrupt or mixed with another one; export again."
            )
        return path

    @property
    def manifest(self) -> dict[str, Any]:
        """A copy of the export's ``manifest.json``."""
        return json.loads(json.dumps(self._manifest))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one image."""
        return tuple(self._manifest["input"]["shape"])

    @property
    def num_classes(self) -> int:
        """Number of classes of the head."""
        return int(self._manifest["num_classes"])

    @property
    def class_names(self) -> list[str]:
        """One name per class, from the manifest."""
        return list(self._manifest["class_names"])

    @property
    def consolidated_experiences(self) -> int:
        """Experiences consolidated so far (the state's count)."""
        return int(self.state()["consolidated_experiences"])

    # -- inference -------------------------------------------------------------------------

    def _check_images(self, images: Any) -> np.ndarray:
        array = np.asarray(images)
        if array.dtype != np.float32:
            raise ValueError(
                f"`images` must be float32 with values in [0, 1]; got dtype {array.dtype} "
                "(convert with `images.astype(np.float32)`, dividing uint8 pixels by 255)."
            )
        if array.ndim != 4 or array.shape[1:] != self.input_shape or not len(array):
            raise ValueError(
                f"`images` must have shape (n, {', '.join(map(str, self.input_shape))}) "
                f"with n >= 1; got {array.shape}."
            )
        if not np.isfinite(array).all():
            raise ValueError("`images` contain NaN or infinite values.")
        if array.min() < 0.0 or array.max() > 1.0:
            raise ValueError(
                f"`images` must have values in [0, 1] (the backbone normalizes inside); "
                f"got values in [{array.min()}, {array.max()}]."
            )
        return array

    def features(self, images: Any) -> np.ndarray:
        """Backbone features of ``images`` (LCE interpreter, one image at a time).

        Args:
            images: float32 array ``(n, height, width, channels)``, values in ``[0, 1]``.

        Returns:
            float32 array ``(n, features)``.

        Raises:
            ValueError: Images of another dtype or shape, non-finite or out of range.
        """
        array = self._check_images(images)
        features = np.asarray(self._backbone.predict(array), dtype=np.float32)
        if not np.isfinite(features).all():
            raise ValueError("The backbone computed non-finite features for `images`.")
        return features

    def predict(self, images: Any) -> np.ndarray:
        """Class probabilities of ``images`` with the current head (``infer``).

        Args:
            images: float32 array ``(n, height, width, channels)``, values in ``[0, 1]``.

        Returns:
            float32 array ``(n, num_classes)``.

        Raises:
            ValueError: As ``features``.
        """
        features = self.features(images)
        return self._runners["infer"](features=features)["probabilities"]

    # -- learning --------------------------------------------------------------------------

    def _check_labels(self, labels: Any, count: int) -> np.ndarray:
        array = np.asarray(labels)
        if array.dtype.kind not in "iu":
            raise ValueError(
                f"`labels` must be integer class indices; got dtype {array.dtype}."
            )
        if array.shape != (count,):
            raise ValueError(
                f"`labels` must have shape ({count},), one per image; got {array.shape}."
            )
        bad = array[(array < 0) | (array >= self.num_classes)]
        if bad.size:
            raise ValueError(
                f"`labels` has class {int(bad[0])}; expected 0 <= class < "
                f"num_classes={self.num_classes}."
            )
        return array.astype(np.int32)

    def learn_experience(
        self,
        images: Any,
        labels: Any,
        *,
        epochs: int | None = None,
        batch_size: int | None = None,
        learning_rate: float | None = None,
        seed: int | None = None,
    ) -> ExperienceResult:
        """Learn one CWR* experience and save the state (METHOD §2).

        Args:
            images: float32 array ``(n, height, width, channels)``, values in ``[0, 1]``.
            labels: Int class indices ``(n,)``.
            epochs: Passes over the experience (None: the manifest's).
            batch_size: Patterns per ``train`` step (None: the manifest's).
            learning_rate: SGD learning rate of the head (None: the manifest's).
            seed: Seed of the batch order (None: the number of experiences consolidated
                so far, which a restored state keeps).

        Returns:
            An ``ExperienceResult``.

        Raises:
            ValueError: Bad images (dtype, shape, NaN, range), labels (dtype, length,
                range) or settings; nothing changed then.
            OSError: The state file could not be written; the previous file is intact
                and the learned state stays in memory (``save_state()`` retries).
        """
        defaults = self._manifest["training"]
        epochs = _check_positive_int(
            defaults["epochs"] if epochs is None else epochs, "epochs"
        )
        batch_size = _check_positive_int(
            defaults["batch_size"] if batch_size is None else batch_size, "batch_size"
        )
        rate = defaults["learning_rate"] if learning_rate is None else learning_rate
        if (
            isinstance(rate, bool)
            or not isinstance(rate, (int, float, np.integer, np.floating))
            or not np.isfinite(rate)
            or rate <= 0
        ):
            raise ValueError(f"`learning_rate` must be a positive number; got {rate!r}.")
        seed = self.consolidated_experiences if seed is None else _check_seed(seed)
        array = self._check_images(images)
        labels = self._check_labels(labels, len(array))
        features = self.features(array)
        counts = np.bincount(labels, minlength=self.num_classes).astype(np.int64)

        self._runners["begin_experience"](class_counts=counts)
        losses = []
        train = self._runners["train"]
        for epoch in batch_order(
            len(array), epochs=epochs, batch_size=batch_size, seed=seed
        ):
            batch_losses = [
                float(
                    train(
                        features=features[batch],
                        labels=labels[batch],
                        learning_rate=np.float32(rate),
                    )["loss"]
                )
                for batch in epoch
            ]
            losses.append(float(np.mean(batch_losses)))
        consolidated = int(self._runners["consolidate"]()["consolidated_experiences"])
        if self.state_path is not None:
            self.save_state()
        return ExperienceResult(
            class_counts=counts, epoch_losses=losses, consolidated_experiences=consolidated
        )

    # -- state -----------------------------------------------------------------------------

    def state(self) -> dict[str, np.ndarray]:
        """A copy of the whole CWR* state (``get_state``), one array per name."""
        outputs = self._runners["get_state"]()
        return {name: np.array(outputs[name]) for name in self._state_spec}

    def set_state(self, state: dict[str, Any]) -> None:
        """Replace the CWR* state (``set_state``) after checking names, shapes, dtypes.

        Args:
            state: One array per state name, as ``state()`` returns.

        Raises:
            ValueError: Missing or extra names, a wrong shape or dtype, non-finite
                floats or negative counts; the state is then unchanged.
        """
        arrays = self._check_state(state, "`state`")
        self._runners["set_state"](**arrays)

    def _check_state(self, state: dict[str, Any], source: str) -> dict[str, np.ndarray]:
        names = set(state)
        if names != set(self._state_spec):
            missing = sorted(set(self._state_spec) - names)
            extra = sorted(names - set(self._state_spec))
            raise ValueError(
                f"{source} does not hold this head's state: missing {missing}, "
                f"unexpected {extra}."
            )
        arrays = {}
        for name, (shape, dtype) in self._state_spec.items():
            value = np.asarray(state[name])
            if value.shape != shape or value.dtype != dtype:
                raise ValueError(
                    f"{source} has {name} of shape {value.shape} and dtype {value.dtype}; "
                    f"expected shape {shape} and dtype {dtype} (another export?)."
                )
            if value.dtype.kind == "f" and not np.isfinite(value).all():
                raise ValueError(f"{source} has non-finite values in {name}.")
            if name in _COUNT_STATES and (value < 0).any():
                raise ValueError(f"{source} has negative values in {name}.")
            arrays[name] = value
        return arrays

    def save_state(self, path: str | os.PathLike | None = None) -> pathlib.Path:
        """Write the state to ``path`` (default ``state_path``) atomically.

        The archive goes to a temporary file in the same folder, is flushed to disk
        (``fsync``), then renamed over ``path`` (``os.replace``): a reader, or a restart
        after a power loss, sees the previous file or the new one, never a mix.

        Args:
            path: Target file (None: ``state_path``).

        Returns:
            The path written.

        Raises:
            ValueError: No ``path`` and no ``state_path``.
            OSError: Writing failed; the previous file is intact.
        """
        if path is not None:
            target = pathlib.Path(path)
        elif self.state_path is not None:
            target = self.state_path
        else:
            raise ValueError("Give `path`, or create the DeviceLearner with `state_path`.")
        payload = {
            "format_version": np.array(STATE_FORMAT_VERSION, np.int64),
            "model_id": np.array(self.model_id),
            **{f"state.{name}": value for name, value in self.state().items()},
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(
            prefix=f".{target.name}.", suffix=".tmp", dir=target.parent
        )
        try:
            with os.fdopen(descriptor, "wb") as file:
                np.savez(file, **payload)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        _fsync_directory(target.parent)
        return target

    def load_state(self, path: str | os.PathLike) -> None:
        """Restore the state saved by ``save_state`` in ``path``.

        Raises:
            ValueError: The file is truncated or corrupt, of another format version,
                saved for another export, or holds arrays of other shapes; the file
                and the current state are left unchanged.
        """
        self.set_state(self._read_state_file(pathlib.Path(path)))

    def _read_state_file(self, path: pathlib.Path) -> dict[str, np.ndarray]:
        source = f"State file {str(path)!r}"
        try:
            archive = np.load(path, allow_pickle=False)
        except _READ_ERRORS as error:
            raise ValueError(
                f"{source} is unreadable (truncated or corrupt): {error}"
            ) from error
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError(f"{source} is not a state archive (.npz).")
        try:
            with archive:
                stored = {name: archive[name] for name in archive.files}
        except _READ_ERRORS as error:
            raise ValueError(
                f"{source} is unreadable (truncated or corrupt): {error}"
            ) from error
        version = stored.get("format_version")
        if version is None or version.shape != () or int(version) != STATE_FORMAT_VERSION:
            raise ValueError(
                f"{source} has format_version {None if version is None else version!r}; "
                f"expected {STATE_FORMAT_VERSION}."
            )
        model_id = stored.get("model_id")
        if model_id is None or model_id.shape != () or str(model_id) != self.model_id:
            raise ValueError(
                f"{source} was saved for another export (model id "
                f"{None if model_id is None else str(model_id)!r}; this export's is "
                f"{self.model_id!r})."
            )
        state = {
            name[len("state.") :]: value
            for name, value in stored.items()
            if name.startswith("state.")
        }
        return self._check_state(state, source)


def _lce_interpreter(flatbuffer: bytes, num_threads: int) -> Any:
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    return Interpreter(flatbuffer, num_threads=num_threads)


def _tflite_interpreter(flatbuffer: bytes, num_threads: int) -> Any:
    import tensorflow as tf

    with warnings.catch_warnings():
        # TF 2.19 announces tf.lite.Interpreter's move to the ai_edge_litert package.
        warnings.filterwarnings(
            "ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated"
        )
        return tf.lite.Interpreter(model_content=flatbuffer, num_threads=num_threads)
