"""Write evaluation results as JSON, a markdown table and a PNG plot.

Results are the dicts of :func:`hf_mltm.evaluation.evaluate_retrieval` and
:func:`hf_mltm.evaluation.zero_shot_classification`: for each ranking mode (``"distance"``, ``"ot"``) a dict of
directions (``"text_to_audio"``, ``"audio_to_text"``, ...) to metrics (``R@k``, ``medR``, ...). Tables and plots keep
one row / one curve per (ranking mode, direction): ranking modes are never mixed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .ranking import RANKING_MODES

__all__ = ["markdown_table", "plot_results", "result_rows", "save_report", "spread_table", "to_jsonable", "write_json",
           "write_markdown"]

METRIC_COLUMNS = ("R@1", "R@5", "R@10", "medR", "meanR", "mAP@10", "MRR@10")


def _is_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and any(str(key).startswith("R@") for key in value)


def result_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per (ranking mode, direction): ``{"ranking", "direction", <metric>: value, ...}``.

    Args:
        results (`Mapping`): ``{mode: {direction: metrics, ...}, ...}`` plus any other keys (ignored), as returned
            by :func:`~hf_mltm.evaluation.evaluate_retrieval`.

    Returns:
        `list[dict]`: rows in the order of ``results`` and of its directions.
    """
    rows = []
    for mode, block in results.items():
        if mode not in RANKING_MODES or not isinstance(block, Mapping):
            continue
        for direction, metrics in block.items():
            if _is_metrics(metrics):
                rows.append({"ranking": mode, "direction": direction, **metrics})
    return rows


def spread_table(results: Sequence[Mapping[str, Any]], *, metrics: Sequence[str] = ("R@1", "R@5", "R@10"),
                 digits: int = 2) -> str:
    """A markdown table of the mean, standard deviation and range over runs (e.g. seeds) of the same report.

    Args:
        results (`Sequence[Mapping]`): one ``evaluate_retrieval``-style result per run (``metrics.json`` contents),
            all with the same ranking modes and directions.
        metrics (`Sequence[str]`): the metric columns.
        digits (`int`): decimals.

    Returns:
        `str`: one row per (ranking, direction): ``mean ± std (min-max)`` of each metric over the runs (sample
        standard deviation, ``n - 1``), and ``n``.

    Raises:
        ValueError: fewer than two runs, or runs whose rows or metrics differ.
    """
    if len(results) < 2:
        raise ValueError(f"spread_table needs the reports of at least two runs, got {len(results)}.")
    tables = [result_rows(result) for result in results]
    keys = [(row["ranking"], row["direction"]) for row in tables[0]]
    for index, rows in enumerate(tables[1:], start=1):
        if [(row["ranking"], row["direction"]) for row in rows] != keys:
            raise ValueError(f"report {index} has rows {[(r['ranking'], r['direction']) for r in rows]}, report 0 "
                             f"has {keys}; give reports of the same evaluation.")
    lines = ["| ranking | direction | " + " | ".join(metrics) + " | n |",
             "|" + "---|" * (len(metrics) + 3)]
    for position, (mode, direction) in enumerate(keys):
        cells = [mode, direction]
        for name in metrics:
            values = [rows[position].get(name) for rows in tables]
            if any(not isinstance(v, (int, float, np.number)) or isinstance(v, bool) for v in values):
                raise ValueError(f"metric {name!r} of {mode}/{direction} is missing or not a number in some report "
                                 f"({values}).")
            array = np.asarray(values, dtype=np.float64)
            cells.append(f"{array.mean():.{digits}f} ± {array.std(ddof=1):.{digits}f} "
                         f"({array.min():.{digits}f}-{array.max():.{digits}f})")
        lines.append("| " + " | ".join([*cells, str(len(tables))]) + " |")
    return "\n".join(lines) + "\n"


def _format(value: Any, digits: int) -> str:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(results: Mapping[str, Any], *, digits: int = 2) -> str:
    """A GitHub markdown table of the results, one row per ranking mode and direction.

    Columns: ``ranking``, ``direction``, then ``R@1``, ``R@5``, ``R@10``, ``medR``, ``meanR``, ``mAP@10``,
    ``MRR@10`` (those present) and ``rsum`` when the ranking mode has one (retrieval). Floats get ``digits``
    decimals; integers (``medR``) are written as they are.

    Raises:
        ValueError: ``results`` hold no metrics of a known ranking mode.
    """
    rows = result_rows(results)
    if not rows:
        raise ValueError(
            f"No metrics to tabulate: expected {{'distance' or 'ot': {{direction: {{'R@1': ...}}}}}}, got keys "
            f"{list(results)}."
        )
    metric_names = [name for name in METRIC_COLUMNS if any(name in row for row in rows)]
    metric_names += [name for row in rows for name in row if name.startswith("R@") and name not in metric_names]
    with_rsum = any(isinstance(results[mode], Mapping) and "rsum" in results[mode] for mode in {r["ranking"] for r in rows})
    header = ["ranking", "direction", *metric_names] + (["rsum"] if with_rsum else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        cells = [row["ranking"], row["direction"], *(_format(row.get(name), digits) for name in metric_names)]
        if with_rsum:
            cells.append(_format(results[row["ranking"]].get("rsum"), digits))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_jsonable(value: Any) -> Any:
    """``value`` with tensors and numpy arrays/scalars turned into lists and Python numbers (recursively)."""
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_json(results: Mapping[str, Any], path: str | os.PathLike, *, include_embeddings: bool = False) -> Path:
    """Write ``results`` as indented JSON (embeddings left out unless ``include_embeddings``); returns the path."""
    data = {key: value for key, value in results.items() if include_embeddings or key != "embeddings"}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(data), indent=2) + "\n", encoding="utf-8")
    return path


def write_markdown(results: Mapping[str, Any], path: str | os.PathLike, *, title: str | None = None,
                   digits: int = 2) -> Path:
    """Write :func:`markdown_table` (under a ``# title`` line when given) to ``path``; returns the path."""
    text = markdown_table(results, digits=digits)
    if title:
        text = f"# {title}\n\n{text}"
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _recall_points(metrics: Mapping[str, Any]) -> tuple[list[int], list[float]]:
    points = sorted((int(key[2:]), float(value)) for key, value in metrics.items()
                    if key.startswith("R@") and key[2:].isdigit())
    return [k for k, _ in points], [value for _, value in points]


def plot_results(
    results: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    similarity: torch.Tensor | np.ndarray | None = None,
    size_px: tuple[int, int] = (1200, 500),
    dpi: int = 100,
    title: str | None = None,
) -> Path:
    """Plot recall@k curves (one per ranking mode and direction) and, optionally, a similarity heatmap, as a PNG.

    Args:
        results (`Mapping`): as for :func:`result_rows`.
        path (`str` or `os.PathLike`): output PNG file.
        similarity (`torch.Tensor` or `np.ndarray` of shape `(rows, cols)`, *optional*): e.g. the negated cost of
            the first clips against their captions; drawn as a heatmap in a second panel.
        size_px (`tuple[int, int]`, defaults to ``(1200, 500)``): width and height of the image in pixels.
        dpi (`int`, defaults to 100): resolution (the figure is ``size_px / dpi`` inches).
        title (`str`, *optional*): figure title.

    Returns:
        `Path`: ``path``.

    Raises:
        ValueError: no metrics in ``results``, or a ``similarity`` that is not 2-D.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = result_rows(results)
    if not rows:
        raise ValueError(f"No metrics to plot in results with keys {list(results)}.")
    if similarity is not None:
        similarity = similarity.detach().cpu().float().numpy() if isinstance(similarity, torch.Tensor) else np.asarray(similarity)
        if similarity.ndim != 2:
            raise ValueError(f"similarity must be a 2-D (rows, cols) matrix, got shape {similarity.shape}.")
    panels = 2 if similarity is not None else 1
    figure, axes = plt.subplots(1, panels, figsize=(size_px[0] / dpi, size_px[1] / dpi), dpi=dpi, squeeze=False)
    curves = axes[0, 0]
    for row in rows:
        ks, recalls = _recall_points(row)
        style = "-" if row["ranking"] == "distance" else "--"
        curves.plot(ks, recalls, style, marker="o", label=f"{row['direction']} ({row['ranking']})")
    curves.set_xlabel("k")
    curves.set_ylabel("R@k (%)")
    curves.set_ylim(0, 100)
    curves.set_title("Recall@k")
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize="small")
    if similarity is not None:
        heatmap = axes[0, 1]
        image = heatmap.imshow(similarity, aspect="auto", cmap="viridis", interpolation="nearest")
        heatmap.set_xlabel("caption")
        heatmap.set_ylabel("item")
        heatmap.set_title("Similarity (higher is closer)")
        figure.colorbar(image, ax=heatmap)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=dpi, format="png")
    plt.close(figure)
    return path


def save_report(
    results: Mapping[str, Any],
    output_dir: str | os.PathLike,
    *,
    similarity: torch.Tensor | np.ndarray | None = None,
    title: str | None = None,
    names: Sequence[str] = ("metrics.json", "metrics.md", "plot.png"),
) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md`` and ``plot.png`` into ``output_dir``.

    Returns:
        `dict[str, Path]`: ``{"json": ..., "markdown": ..., "plot": ...}``.
    """
    output_dir = Path(output_dir)
    json_name, markdown_name, plot_name = names
    return {
        "json": write_json(results, output_dir / json_name),
        "markdown": write_markdown(results, output_dir / markdown_name, title=title),
        "plot": plot_results(results, output_dir / plot_name, similarity=similarity, title=title),
    }
