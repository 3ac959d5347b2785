"""JSONL metrics log: one JSON object per line (``{"type": "train", "step", "epoch", "loss", "lr"}`` per
optimizer step, ``{"type": "eval", "epoch", "step", ...metrics}`` per evaluation). Epochs count from 1, as the console
prints them: a train record's epoch is the epoch the step belongs to, an eval record's the epoch just finished."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["MetricsLog", "read_metrics_log"]


class MetricsLog:
    """Append-only JSONL writer (write from the main process only).

    Args:
        path (`str` or `Path`): the ``.jsonl`` file (parents are created).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (values must be JSON-serialisable: floats, ints, strings, nested dicts)."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def truncate_after(self, step: int, epoch: int) -> None:
        """Drop records written after a checkpoint taken at optimizer step ``step`` with ``epoch`` epochs finished
        (train steps ``> step``, evaluations of epochs ``> epoch``), so that a resumed run continues the log without
        duplicates."""
        if not self.path.is_file():
            return
        kept = [
            record for record in read_metrics_log(self.path)
            if (record.get("type") == "train" and record["step"] <= step)
            or (record.get("type") == "eval" and record["epoch"] <= epoch)
        ]
        self.path.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in kept))


def read_metrics_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL log, in order.

    Raises:
        ValueError: a line is not valid JSON (the message names the file and line).
    """
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}:{number}: not a JSON line ({error}).") from error
    return records
