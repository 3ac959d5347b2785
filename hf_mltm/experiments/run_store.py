"""Finished runs of the evidence suite on disk, so that an interrupted suite resumes without redoing them.

A run is stored under a key that hashes everything that decides its outcome: the task and its data (options and
the data description: classes, clips, pairs), the family, the full model config (suite-wide fields, the method's
fields and the searched hyper-parameters), the training budget, the condition (e.g. the noise rate), the seed and
the package version. Change any of them and the run is trained again; change the training *code* without changing
the version and stale runs would be reused, so delete the folder (or pass ``--fresh`` to ``scripts/reproduce.py``)
after editing `hf_mltm.experiments.training` or a loss.

Layout of ``<folder>``: ``<key>.safetensors`` (the kept parameters) and ``<key>.json`` (every other `TrainResult`
field, and the key's payload for inspection). The JSON is written last, by an atomic rename, and is the marker of a
complete run: a run killed while saving leaves no JSON and is trained again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .training import TrainResult

__all__ = ["RunStore", "run_key"]


def run_key(payload: Mapping[str, Any]) -> str:
    """The SHA-256 (hex, 64 characters) of ``payload`` as canonical JSON (sorted keys; floats by ``repr``)."""
    text = json.dumps(payload, sort_keys=True, default=repr, allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class RunStore:
    """A folder of finished `TrainResult` s keyed by `run_key` (``folder=None``: a store that keeps nothing).

    Args:
        folder (`str` or `Path`, *optional*): where runs are kept (created on the first save).
    """

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = None if folder is None else Path(folder)

    def load(self, payload: Mapping[str, Any]) -> TrainResult | None:
        """The stored run of ``payload``, or `None` when there is none (or no folder).

        Raises:
            ValueError: the run's JSON exists but it or its parameters file cannot be read (names the files; delete
                both to train the run again).
        """
        if self.folder is None:
            return None
        key = run_key(payload)
        meta_path, state_path = self.folder / f"{key}.json", self.folder / f"{key}.safetensors"
        if not meta_path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            state = load_file(state_path)
            return TrainResult(best_epoch=int(meta["best_epoch"]), best_validation=float(meta["best_validation"]),
                               history=list(meta["history"]), state=state, steps=int(meta["steps"]),
                               wall_s=float(meta["wall_s"]), diverged=bool(meta["diverged"]),
                               cpu_s=float(meta["cpu_s"]))
        except (OSError, ValueError, KeyError, TypeError, SafetensorError) as error:
            raise ValueError(f"stored run {meta_path} (with {state_path.name}) cannot be read ({error}); delete both "
                             "files to train that run again.") from None

    def save(self, payload: Mapping[str, Any], result: TrainResult) -> None:
        """Store ``result`` under ``payload`` (parameters first, then the JSON marker; both by atomic rename)."""
        if self.folder is None:
            return
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        key = run_key(payload)
        state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in result.state.items()}
        state_path, meta_path = self.folder / f"{key}.safetensors", self.folder / f"{key}.json"
        partial_state = state_path.with_name(f".{key}.{os.getpid()}.safetensors.tmp")
        save_file(state, str(partial_state))
        os.replace(partial_state, state_path)
        meta = {"best_epoch": result.best_epoch, "best_validation": result.best_validation,
                "history": result.history, "steps": result.steps, "wall_s": result.wall_s,
                "diverged": result.diverged, "cpu_s": result.cpu_s, "payload": payload}
        partial_meta = meta_path.with_name(f".{key}.{os.getpid()}.json.tmp")
        partial_meta.write_text(json.dumps(meta, sort_keys=True, default=repr, allow_nan=True), encoding="utf-8")
        os.replace(partial_meta, meta_path)
