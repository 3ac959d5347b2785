"""The README.md model card written next to the final model: data, loss, training settings and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["metrics_table", "write_model_card"]


def metrics_table(metrics: dict[str, Any]) -> str:
    """Markdown table of ``evaluate_retrieval`` output: ``{mode: {direction: {metric: value}, "rsum": x}}``.

    Returns:
        `str`: ``| ranking | direction | R@1 | ... |`` rows, one per ranking mode and direction, plus rsum.
    """
    lines = []
    for mode, result in metrics.items():
        if not isinstance(result, dict):
            continue
        directions = {key: value for key, value in result.items() if isinstance(value, dict)}
        names = sorted({name for values in directions.values() for name in values}, key=_metric_order)
        if not lines:
            lines += ["| ranking | direction | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
        for direction, values in directions.items():
            cells = [_format(values.get(name)) for name in names]
            lines.append(f"| {mode} | {direction} | " + " | ".join(cells) + " |")
        if "rsum" in result:
            lines.append(f"| {mode} | rsum | {_format(result['rsum'])} |" + " |" * max(len(names) - 1, 0))
    return "\n".join(lines) if lines else "(no evaluation was run)"


def _metric_order(name: str) -> tuple[int, str]:
    order = ["R@1", "R@5", "R@10", "medR", "meanR", "mAP@10"]
    return (order.index(name) if name in order else len(order), name)


def _format(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


def write_model_card(
    output_dir: str | Path,
    *,
    model_type: str,
    loss: str,
    datasets: list[str],
    metrics: dict[str, Any] | None,
    training: dict[str, Any],
    eval_data: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """Write ``output_dir/README.md`` with YAML metadata (library, tags, datasets) and the results.

    Args:
        output_dir: the folder holding the saved model.
        model_type (`str`): e.g. ``"mltm_audio_text"``.
        loss (`str`): the training loss (``config.loss_type``).
        datasets (`list[str]`): human descriptions of the training data (what exactly was trained on).
        metrics (`dict`, *optional*): the selected checkpoint's ``evaluate_retrieval`` output.
        training (`dict`): the training settings (printed as a list).
        eval_data (`str`, *optional*): description of the evaluation data.
        best_epoch (`int`, *optional*): the epoch (1-based) whose checkpoint was kept.

    Returns:
        `Path` of the README.
    """
    tags = ["hf_mltm", "optimal-transport", "retrieval", model_type]
    header = ["---", "library_name: transformers", "tags:"] + [f"- {tag}" for tag in tags] + ["---", ""]
    body = [
        f"# {model_type} trained with hf_mltm",
        "",
        f"Loss: `{loss}`. Trained with `scripts/train.py` (accelerate).",
        "",
        "## Training data",
        "",
        *[f"- {entry}" for entry in datasets],
        "",
        "## Training settings",
        "",
        *[f"- `{key}`: {value}" for key, value in training.items()],
        "",
        "## Evaluation",
        "",
        f"Data: {eval_data or 'none'}." + (f" Selected checkpoint: epoch {best_epoch} (best rsum)." if best_epoch
                                           else ""),
        "",
        metrics_table(metrics or {}),
        "",
    ]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(header + body))
    return path
