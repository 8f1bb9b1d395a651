"""Shared benchmark plumbing: code-keyed caches and Split-CIFAR-10 streams.

Every cached result (a per-seed JSON record, a first-experience network) is keyed by
`code_hash()`, a hash of this module, of the running benchmark script and of every
`larq_cwr` module they import (at any depth), beside the run's settings: a table in
`docs/` is always computed by the code at HEAD, never read from a cache written by
older code.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import hashlib
import json
import logging
import os
import pathlib
import sys
import time
from collections.abc import Callable
from typing import Any

if "larq_cwr" not in sys.modules:  # a benchmark script: run the package beside it
    # (the code `code_hash` keys results by), even if another checkout is installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import larq_cwr  # noqa: F401  isort: skip  (Keras 2 before TensorFlow)

import numpy as np

from larq_cwr.datasets import default_cache_dir, load_cifar10
from larq_cwr.experiment import (
    FrozenFeatures,
    TrainingConfig,
    build_model,
    extract_features,
    load_architecture_weights,
    train_first_experience,
    versions,
)
from larq_cwr.reporting import write_json
from larq_cwr.scenarios import make_scenario

ROOT = pathlib.Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DOCS = ROOT / "docs"
DEFAULT_CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10-jpg.tar.gz"
VALIDATION_FRACTION = 0.1
SCENARIO_EXPERIENCES = {"nc": 5, "ni": 10}

logger = logging.getLogger("benchmarks")


@functools.lru_cache(maxsize=None)
def code_hash(script: str | pathlib.Path | None = None) -> str:
    """SHA-256 (16 hex digits) of the code a benchmark runs: this module, the benchmark
    script, and every `larq_cwr` module either reaches through import statements (at
    any depth, function-level imports included; sibling benchmark modules a script
    imports are followed and hashed too). Modules no benchmark reaches (the CLI) can
    change without invalidating the results.

    Arguments:
        script: The benchmark script (default: the running program, when it is a file
            in `benchmarks/`).

    Returns:
        The hash, the same on every machine for the same sources.
    """
    # Resolved: the same file must give the same hash however it is named.
    if script is None and _running_script() is not None:
        _check_package_is_this_checkouts()
    script = _running_script() if script is None else pathlib.Path(script).resolve()
    starts = [pathlib.Path(__file__).resolve()] + ([script] if script else [])
    digest = hashlib.sha256()
    for path in sorted({*_reachable_sources(*starts), *starts}):
        digest.update(str(path.resolve().relative_to(ROOT)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _running_script() -> pathlib.Path | None:
    """The running program's file if it is a benchmark script beside this module."""
    path = getattr(sys.modules.get("__main__"), "__file__", None)
    here = pathlib.Path(__file__).resolve().parent
    if path is None or pathlib.Path(path).resolve().parent != here:
        return None
    return pathlib.Path(path).resolve()


def _check_package_is_this_checkouts() -> None:
    """Refuse to key results by sources the running benchmark does not run."""
    running = pathlib.Path(larq_cwr.__file__).resolve().parent
    if running != ROOT / "larq_cwr":
        raise RuntimeError(
            f"the benchmarks in {ROOT} key their results by {ROOT / 'larq_cwr'}, but "
            f"the larq_cwr running is {running}: import `common` before larq_cwr."
        )


def _reachable_sources(*starts: pathlib.Path) -> list[pathlib.Path]:
    """`larq_cwr` sources, and benchmark modules beside this one, reachable from
    `starts` through import statements."""
    package, benchmarks = ROOT / "larq_cwr", ROOT / "benchmarks"
    found: set[pathlib.Path] = set()
    pending = [pathlib.Path(s).resolve() for s in starts]
    while pending:
        tree = ast.parse(pending.pop().read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for name in names:
                if name == "larq_cwr" or name.startswith("larq_cwr."):
                    relative = pathlib.Path(*name.split(".")[1:])
                    candidates = (
                        package / relative / "__init__.py",
                        (package / relative).with_suffix(".py"),
                        package / "__init__.py",
                    )
                elif "." not in name:  # a sibling benchmark module (`docblock`, ...)
                    candidates = (benchmarks / f"{name}.py",)
                else:
                    continue
                for candidate in candidates:
                    if candidate.is_file() and candidate not in found:
                        found.add(candidate)
                        pending.append(candidate)
                        break
    return sorted(found)


def cached(path: pathlib.Path, settings: dict[str, Any], compute: Callable[[], Any]) -> Any:
    """`compute()`, or the result stored at `path` by the same code and settings."""
    # Through JSON, as stored: a tuple in `settings` must match the list read back.
    key = json.loads(json.dumps({**settings, "code": code_hash()}))
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == key:
            logger.info("reusing %s", path.name)
            return stored["result"]
    result = compute()
    write_json({"settings": key, "result": result}, path)
    return result


def seed_records(
    run: Callable[[int], Any],
    seeds: list[int],
    *,
    results: pathlib.Path,
    name: str,
    settings: dict[str, Any],
) -> list[Any]:
    """`run(seed)` for each seed, cached in `results/<name>_seed<seed>.json`."""
    results.mkdir(parents=True, exist_ok=True)
    return [
        cached(results / f"{name}_seed{seed}.json", settings, lambda seed=seed: run(seed))
        for seed in seeds
    ]


def run_meta(start: float) -> dict[str, Any]:
    """What a results file says about the run: code hash, versions, machine, seconds
    since `start` (a `time.perf_counter()` value)."""
    return {
        "code": code_hash(),
        "versions": versions(),
        "machine": f"{os.cpu_count()} CPU cores",
        "seconds": time.perf_counter() - start,
    }


@dataclasses.dataclass(frozen=True)
class Stream:
    """A seed's Split-CIFAR-10 stream: training parts, validation, frozen features."""

    scenario: Any  # Scenario of the training parts (validation held out)
    x_val: np.ndarray
    y_val: np.ndarray
    config: TrainingConfig
    first_weights: list
    first_seconds: float
    test: FrozenFeatures  # features of the training parts and of the test set
    validation: FrozenFeatures  # the same training features, evaluated on validation


@functools.lru_cache(maxsize=1)
def load_cifar(path: pathlib.Path = DEFAULT_CIFAR10):
    """CIFAR-10 (decoded once, cached by `larq_cwr.datasets`)."""
    return load_cifar10(path)


def split_validation(scenario, seed: int):
    """Scenario of the training parts, and the pooled validation set."""
    parts = [
        e.split_validation(VALIDATION_FRACTION, seed=seed) for e in scenario.experiences
    ]
    train = dataclasses.replace(scenario, experiences=tuple(p[0] for p in parts))
    x_val = np.concatenate([p[1][0] for p in parts])
    y_val = np.concatenate([p[1][1] for p in parts])
    return train, x_val, y_val


def make_stream(
    data,
    scenario_name: str,
    seed: int,
    *,
    first_epochs: int,
    epochs: int,
    backbone: str = "bnn32",
    **training: Any,
) -> Stream:
    """Scenario, validation split, first-experience network (cached) and latents
    (``training``: more `TrainingConfig` fields, e.g. ``trainable_blocks``)."""
    config = TrainingConfig(
        seed=seed,
        first_epochs=first_epochs,
        epochs=epochs,
        backbone=backbone,
        **training,
    )
    full = make_scenario(
        data.x_train,
        data.y_train,
        name=scenario_name,
        x_test=data.x_test,
        y_test=data.y_test,
        n_experiences=SCENARIO_EXPERIENCES[scenario_name],
        seed=seed,
    )
    scenario, x_val, y_val = split_validation(full, seed)
    weights, seconds = first_experience(scenario, config, scenario_name)
    test = extract_features(scenario, weights, config=config)
    extractor = build_model(
        scenario[0].x_train.shape[1:], scenario.num_classes, config=config
    )
    load_architecture_weights(extractor, weights)
    val_features = extractor.latent_extractor.predict(x_val, batch_size=256, verbose=0)
    validation = FrozenFeatures(
        scenario=dataclasses.replace(scenario, x_test=x_val, y_test=y_val),
        train=test.train,
        test=val_features,
        seconds=0.0,
    )
    return Stream(scenario, x_val, y_val, config, weights, seconds, test, validation)


def first_experience(scenario, config: TrainingConfig, scenario_name: str):
    """Train (or reload from the user cache, same code only) a seed's first network."""
    name = (
        f"split_cifar10_{scenario_name}_{config.backbone}_k{config.trainable_blocks}_"
        f"seed{config.seed}_"
        f"epochs{config.first_epochs}_"
        f"{'signs_' if config.binarize_first_latents else ''}"
        f"{'-'.join(map(str, scenario.class_order))}_{code_hash()}.npz"
    )
    path = default_cache_dir() / "benchmarks" / name
    if path.exists():
        with np.load(path, allow_pickle=False) as stored:
            logger.info("reusing first-experience weights %s", path)
            count = len(stored.files) - 1
            return [stored[f"arr_{i}"] for i in range(count)], float(stored["seconds"])
    weights, seconds = train_first_experience(scenario, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, *weights, seconds=seconds)
    return weights, seconds


def stats(values) -> dict[str, Any]:
    """Mean, sample standard deviation and the values."""
    values = np.asarray(values, dtype=float)
    return {
        "mean": float(values.mean()),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "values": values.tolist(),
    }


def percent(entry: dict[str, Any]) -> str:
    """``mean ± std`` of a `stats` entry, in percent."""
    return f"{100 * entry['mean']:.2f} ± {100 * entry['std']:.2f}"
