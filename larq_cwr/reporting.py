"""Write run reports: JSON, a Markdown/terminal table and PNG plots."""

from __future__ import annotations

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["format_table", "plot_accuracy_curves", "plot_accuracy_matrix", "write_json"]


def write_json(data: Any, path: str | os.PathLike) -> pathlib.Path:
    """Write ``data`` as indented JSON, atomically (never a half-written report).

    NaN becomes ``null`` so the file is strict JSON.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_json_ready(data), indent=2, allow_nan=False)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, delete=False, suffix=".tmp"
    ) as f:
        f.write(text + "\n")
    os.chmod(f.name, 0o644)  # NamedTemporaryFile creates 0600; a report is for reading
    os.replace(f.name, path)
    return path


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table (also readable in a terminal); floats with 2 decimals."""

    def cell(value: Any) -> str:
        if isinstance(value, (float, np.floating)):
            return "n/a" if math.isnan(value) else f"{value:.2f}"
        return str(value)

    table = [list(map(str, headers))] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in table
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def plot_accuracy_curves(
    curves: dict[str, Sequence[float]],
    path: str | os.PathLike,
    *,
    reference: dict[str, float] | None = None,
    title: str = "Accuracy on all classes after each experience",
) -> pathlib.Path:
    """Line plot of accuracy per experience for each strategy, with reference lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6.4, 4.2))
    for name, values in curves.items():
        axis.plot(range(len(values)), np.asarray(values) * 100, marker="o", label=name)
    for name, value in (reference or {}).items():
        axis.axhline(value * 100, linestyle="--", color="grey")
        axis.annotate(
            name, (0, value * 100), textcoords="offset points", xytext=(2, 3), color="grey"
        )
    axis.set_xticks(range(max((len(v) for v in curves.values()), default=0)))
    axis.set_xlabel("experience")
    axis.set_ylabel("accuracy (%)")
    axis.set_ylim(0, 100)
    axis.set_title(title)
    axis.legend()
    figure.tight_layout()
    return _save(figure, path)


def plot_accuracy_matrix(
    matrix: np.ndarray, path: str | os.PathLike, *, title: str = "Accuracy matrix"
) -> pathlib.Path:
    """Heatmap of accuracy on experience j's classes (columns) after experience i (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(matrix, dtype=float)
    figure, axis = plt.subplots(figsize=(4.8, 4.2))
    image = axis.imshow(matrix * 100, vmin=0, vmax=100, cmap="viridis")
    for (i, j), value in np.ndenumerate(matrix):
        if not math.isnan(value):
            axis.text(
                j,
                i,
                f"{value * 100:.0f}",
                ha="center",
                va="center",
                color="white",
                fontsize=8,
            )
    axis.set_xlabel("test classes of experience")
    axis.set_ylabel("after training experience")
    axis.set_title(title)
    figure.colorbar(image, ax=axis, label="accuracy (%)")
    figure.tight_layout()
    return _save(figure, path)


def _save(figure: Any, path: str | os.PathLike) -> pathlib.Path:
    import matplotlib.pyplot as plt

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
