"""Tables and plots of a suite's results (`hf_mltm.experiments.suites.run_suite`).

`markdown_report` renders the JSON of a suite as Markdown: per condition one table of the selected
hyper-parameters and the mean ± 95 % CI of every reported metric over the seeds, then the paired differences.
`plot_suite` draws the figures the suite's ``plots`` entry asks for into an image folder:

- ``bars``: the main metric per method with its 95 % CI;
- ``projection``: a 2-D PCA projection of the joint space per method (test items and their prompts or captions),
  as the m-LTM paper's Figure 1 shows the modality gap;
- ``plan``: the entropic OT plan between the test items and the class prompts of the first m-LTM method;
- ``epsilon_curve``: the main metric and the validation score against ``ot_epsilon`` for each cost normalisation
  (or against the temperature, learned or fixed, for a suite of InfoNCE runs);
- ``noise_curve``: the main metric against the noise rate for each method.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["MAIN_METRIC", "PLOTS", "markdown_report", "plot_suite", "reported_metrics"]

PLOTS = ("bars", "projection", "plan", "epsilon_curve", "noise_curve")
MAIN_METRIC = {"audio_zero_shot": "accuracy", "image_text": "distance.rsum", "noisy_correspondence": "distance.rsum",
               "omit_fragments": "distance.rsum"}
_AUDIO_COLUMNS = (("accuracy", "ESC-10 acc. (%)", 1.0, 1), ("MRR@10", "MRR@10", 1.0, 3),
                  ("modality_gap", "modality gap", 1.0, 3))
_RETRIEVAL_COLUMNS = tuple(
    (f"{mode}.{direction}.R@{k}", f"{'OT' if mode == 'ot' else 'dist'} {arrow} R@{k}", 1.0, 1)
    for mode in ("distance", "ot") for direction, arrow in (("text_to_item", "t→i"), ("item_to_text", "i→t"))
    for k in (1, 5, 10)
) + (("distance.rsum", "dist rsum", 1.0, 1), ("ot.rsum", "OT rsum", 1.0, 1), ("modality_gap", "gap", 1.0, 3))


_COMPACT_RETRIEVAL = ("distance.text_to_item.R@1", "distance.item_to_text.R@1", "distance.rsum", "ot.rsum",
                      "modality_gap")
# The paired differences a table lists (the JSON holds them for every metric).
KEY_METRICS = {"audio_zero_shot": ("accuracy", "MRR@10", "modality_gap")}


def reported_metrics(task: str) -> tuple[tuple[str, str, float, int], ...]:
    """``(metric key, column title, scale, digits)`` of the metrics a task's tables show: every recall for
    ``image_text`` and ``omit_fragments``, R@1 and rsum for ``noisy_correspondence`` (one table per noise rate)."""
    if task == "audio_zero_shot":
        return _AUDIO_COLUMNS
    if task == "noisy_correspondence":
        return tuple(column for column in _RETRIEVAL_COLUMNS if column[0] in _COMPACT_RETRIEVAL)
    return _RETRIEVAL_COLUMNS


def _interval(summary: Mapping[str, Any], scale: float, digits: int) -> str:
    if not summary or summary.get("non_finite"):
        return "n/a"
    mean = summary["mean"] * scale
    if summary.get("half_width") is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {summary['half_width'] * scale:.{digits}f}"


def _hparams(selected: Mapping[str, Any]) -> str:
    return ", ".join(f"{'lr' if key == 'learning_rate' else key} {value:g}" if isinstance(value, float)
                     else f"{key} {value}" for key, value in selected.items())


def markdown_report(result: Mapping[str, Any], *, columns: Sequence[str] | None = None) -> str:
    """The suite's results as Markdown tables (one per condition, then the paired differences).

    Args:
        result (`Mapping`): the JSON of `run_suite`.
        columns (`Sequence[str]`, *optional*): metric keys to show (default: the task's `reported_metrics` that
            the results hold).

    Returns:
        `str`: Markdown, starting with a ``###`` heading per condition.
    """
    task = result["task"]
    lines = []
    for condition_name, condition in result["conditions"].items():
        methods = condition["methods"]
        if not methods:
            continue
        present = set().union(*(method["summary"] for method in methods.values()))
        spec = [column for column in reported_metrics(task)
                if column[0] in present and (columns is None or column[0] in columns)]
        title = condition_name if condition_name != "default" else result["suite"]
        lines.append(f"### {title}\n")
        header = ["method", "selected (validation)", *[column[1] for column in spec], "epochs kept", "training CPU s"]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for method in methods.values():
            cells = [method["label"], _hparams(method["selected"])]
            cells += [_interval(method["summary"].get(key, {}), scale, digits) for key, _, scale, digits in spec]
            cpu = method.get("training_cpu_s", method.get("cpu_s"))
            stored = method.get("stored_runs", 0)
            cells += [",".join(str(epoch) for epoch in method["best_epoch"]),
                      ("-" if cpu is None else f"{cpu:.0f}") + (f" ({stored} stored)" if stored else "")]
            lines.append("| " + " | ".join(cells) + " |")
        seeds = len(next(iter(methods.values()))["seeds"])
        lines.append(f"\n{seeds} seed{'s' if seeds > 1 else ''} per method; mean ± 95 % t-interval half-width. "
                     "Training CPU s: all of the method's runs (search and seeds), including runs read from the run "
                     "store (their count in brackets).\n")
        shown = {key for key, *_ in spec} & set(KEY_METRICS.get(task, _COMPACT_RETRIEVAL))
        differences = [c for c in condition.get("comparisons", []) if c["metric"] in shown]
        if differences:
            titles = {key: title for key, title, *_ in spec}
            digits = {key: d for key, _, _, d in spec}
            lines.append("| paired difference (same seeds; the JSON lists every metric) | metric | mean ± 95 % CI "
                         "| CI excludes 0 |")
            lines.append("|---|---|---|---|")
            for comparison in differences:
                difference = comparison["difference"]
                significant = difference["low"] is not None and (difference["low"] > 0 or difference["high"] < 0)
                lines.append(f"| {methods[comparison['a']]['label']} − {methods[comparison['b']]['label']} | "
                             f"{titles[comparison['metric']]} | "
                             f"{_interval(difference, 1.0, digits[comparison['metric']])} | "
                             f"{'yes' if significant else 'no'} |")
            lines.append("")
    if result.get("cpu_s") is not None:
        lines.append(f"Suite: wall {result['wall_s']:.0f} s, CPU {result['cpu_s']:.0f} s of this process (feature "
                     f"loading {result.get('data_wall_s', 0):.0f} s wall).\n")
    lines.append(f"`{result['summary_line']}`\n")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------
# Plots


def _save(figure, path: Path) -> bool:
    """Lay out, write (110 dpi) and close a figure; `True` (the plot was drawn)."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _pca_2d(points: torch.Tensor) -> torch.Tensor:
    """The first two principal coordinates ``(n, 2)`` of ``points`` ``(n, d)`` (centred, by SVD)."""
    centred = points.double() - points.double().mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return (centred @ vh[:2].T).float()


def plot_suite(result: Mapping[str, Any], artifacts: Mapping[str, Mapping[str, Any]], images_dir: str | Path,
               plots: Sequence[str]) -> list[Path]:
    """Draw the requested ``plots`` (see the module docstring) as PNG files named ``claims_<suite>_<plot>.png``.

    Returns:
        `list[Path]`: the files written.

    Raises:
        ValueError: an unknown plot name.
    """
    unknown = [name for name in plots if name not in PLOTS]
    if unknown:
        raise ValueError(f"unknown plot(s) {unknown}; choose from {list(PLOTS)}.")
    images_dir = Path(images_dir)
    images_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in plots:
        path = images_dir / f"claims_{result['suite']}_{name}.png"
        drawn = {"bars": _bars, "projection": _projection, "plan": _plan, "epsilon_curve": _epsilon_curve,
                 "noise_curve": _noise_curve}[name](result, artifacts, path)
        if drawn:
            written.append(path)
    return written


def _bars(result, artifacts, path: Path) -> bool:
    plt = _pyplot()
    metric = MAIN_METRIC[result["task"]]
    condition = next(iter(result["conditions"].values()))
    methods = condition["methods"]
    labels = [method["label"] for method in methods.values()]
    means = [method["summary"].get(metric, {}).get("mean", math.nan) for method in methods.values()]
    errors = [method["summary"].get(metric, {}).get("half_width") or 0.0 for method in methods.values()]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(labels) + 1.2))
    axis.barh(range(len(labels)), means, xerr=errors, color="#4c72b0", capsize=3)
    axis.set_yticks(range(len(labels)), labels)
    axis.invert_yaxis()
    axis.set_xlabel(f"{metric} (mean ± 95 % CI, {len(result['seeds'])} seeds)")
    axis.set_title(result["title"], fontsize=9)
    return _save(figure, path)


def _projection(result, artifacts, path: Path) -> bool:
    plt = _pyplot()
    condition = next(iter(artifacts.values()), {})
    if not condition:
        return False
    methods = result["conditions"][next(iter(artifacts))]["methods"]
    count = len(condition)
    columns = min(4, count)
    rows = math.ceil(count / columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.0 * rows), squeeze=False)
    for axis in axes.flat[count:]:
        axis.axis("off")
    for axis, (name, artifact) in zip(axes.flat, condition.items(), strict=False):
        embeddings = artifact["embeddings"]
        items = embeddings["items"]
        texts = embeddings.get("prompts", embeddings.get("texts"))
        points = _pca_2d(torch.cat([items, texts])).numpy()
        from hf_mltm.evaluation import modality_gap

        if "prompts" in embeddings:
            gap = modality_gap(items, texts[embeddings["item_label"]])
        else:
            gap = modality_gap(items, texts)
        axis.scatter(points[: len(items), 0], points[: len(items), 1], s=8, alpha=0.7, label="items", c="#4c72b0")
        axis.scatter(points[len(items):, 0], points[len(items):, 1], s=22 if "prompts" in embeddings else 6,
                     marker="*" if "prompts" in embeddings else "o", alpha=0.8, label="text", c="#dd8452")
        axis.set_title(f"{methods[name]['label']}\ngap {gap:.3f}", fontsize=7)
        axis.set_xticks([])
        axis.set_yticks([])
    axes.flat[0].legend(fontsize=7, loc="best")
    figure.suptitle(f"{result['title']}: joint space, 2-D PCA (test set, search seed)", fontsize=8)
    return _save(figure, path)


def _plan(result, artifacts, path: Path) -> bool:
    from hf_mltm.ot import normalize_cost, sinkhorn

    plt = _pyplot()
    condition = next(iter(artifacts.values()), {})
    methods = result["conditions"][next(iter(artifacts))]["methods"] if artifacts else {}
    chosen = next((name for name in condition if methods[name]["config"].get("loss_type") in ("mltm", "mltm_partial")
                   and "cost" in condition[name]), None)
    if chosen is None:
        return False
    artifact = condition[chosen]
    labels = artifact["embeddings"]["item_label"]
    order = torch.argsort(labels, stable=True)
    cost = artifact["cost"][order].double()  # (N, C), items sorted by class
    normalized = normalize_cost(cost, artifact["cost_normalization"])
    plan = sinkhorn(None, None, normalized, artifact["ot_epsilon"], max_iter=2000, tol=1e-9, warn=False).plan
    figure, axis = plt.subplots(figsize=(4.5, 6))
    image = axis.imshow((plan * len(cost)).numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
    counts = torch.bincount(labels, minlength=len(artifact["labels"])).cumsum(0)[:-1]
    for boundary in counts.tolist():  # class boundaries of the sorted rows
        axis.axhline(boundary - 0.5, color="white", linewidth=0.5)
    axis.set_xticks(range(len(artifact["labels"])), artifact["labels"], rotation=60, ha="right", fontsize=7)
    axis.set_ylabel("test clips, sorted by class")
    axis.set_title(f"{methods[chosen]['label']}: OT plan x N\n(test clips vs class prompts, eps "
                   f"{artifact['ot_epsilon']:g}, {artifact['cost_normalization']})", fontsize=8)
    figure.colorbar(image, ax=axis, fraction=0.05)
    return _save(figure, path)


def _epsilon_curve(result, artifacts, path: Path) -> bool:
    from .stats import mean_ci

    plt = _pyplot()
    metric = MAIN_METRIC[result["task"]]
    methods = next(iter(result["conditions"].values()))["methods"]
    series: dict[str, list[tuple[float, float, float, float, float]]] = {}
    scale = "ot_epsilon" if any("ot_epsilon" in m["config"] for m in methods.values()) else "temperature"
    for method in methods.values():
        config = method["config"]
        if scale not in config:
            continue
        summary = method["summary"].get(metric, {})
        validation = mean_ci(method["validation"])
        name = (f"cost normalisation: {config.get('cost_normalization', 'batch_max')}" if scale == "ot_epsilon"
                else f"{'learned' if config.get('learnable_temperature') else 'fixed'} temperature")
        series.setdefault(name, []).append(
            (float(config[scale]), summary.get("mean", math.nan), summary.get("half_width") or 0.0,
             validation.mean, validation.half_width or 0.0))
    if not series:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for normalization, points in sorted(series.items()):
        points.sort()
        epsilons = [p[0] for p in points]
        axes[0].errorbar(epsilons, [p[1] for p in points], yerr=[p[2] for p in points], marker="o", capsize=3,
                         label=normalization)
        axes[1].errorbar(epsilons, [p[3] for p in points], yerr=[p[4] for p in points], marker="o", capsize=3,
                         label=normalization)
    ticks = sorted({p[0] for points in series.values() for p in points})
    for axis, title in zip(axes, (f"test: {metric}", "validation (selection score)"), strict=True):
        axis.set_xscale("log")
        axis.set_xticks(ticks, [f"{tick:g}" for tick in ticks])
        axis.minorticks_off()
        axis.set_xlabel(scale if scale == "ot_epsilon" else "temperature (initial value when learned)")
        axis.set_ylabel("mean ± 95 % CI")
        axis.set_title(title, fontsize=8)
    axes[0].legend(fontsize=7)
    figure.suptitle(result["title"], fontsize=8)
    return _save(figure, path)


def _noise_curve(result, artifacts, path: Path) -> bool:
    plt = _pyplot()
    panels = (("distance.text_to_item.R@1", "text → image R@1 (%)"), ("distance.rsum", "rsum (distance ranking)"))
    series: dict[str, list[tuple[float, ...]]] = {}
    labels = {}
    for condition in result["conditions"].values():
        for name, method in condition["methods"].items():
            labels[name] = method["label"]
            point = [100 * condition.get("noise_rate", 0.0)]
            for metric, _ in panels:
                summary = method["summary"].get(metric, {})
                point += [summary.get("mean", math.nan), summary.get("half_width") or 0.0]
            series.setdefault(name, []).append(tuple(point))
    if not series:
        return False
    figure, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for offset, (name, points) in enumerate(series.items()):
        shift = (offset - (len(series) - 1) / 2) * 0.8  # spread the error bars of one noise rate apart
        for panel, axis in enumerate(axes):
            axis.errorbar([p[0] + shift for p in points], [p[1 + 2 * panel] for p in points],
                          yerr=[p[2 + 2 * panel] for p in points], marker="o", capsize=3, label=labels[name])
    for axis, (_, title) in zip(axes, panels, strict=True):
        axis.set_xlabel("noisy training pairs (%)")
        axis.set_ylabel("clean test, mean ± 95 % CI")
        axis.set_title(title, fontsize=9)
    axes[0].legend(fontsize=7)
    figure.suptitle(result["title"], fontsize=9)
    return _save(figure, path)
