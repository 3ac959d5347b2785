"""Run suites by name and write their outputs: the JSON, a Markdown table and the plots (``scripts/reproduce.py``).

Outputs of suite ``<name>``:

- ``<results_dir>/claims_<name>.json``: per condition and method the selected hyper-parameters, the search table,
  per-seed values, mean and 95 % CI of each reported metric, paired differences, the command, the wall time;
- ``<results_dir>/claims_<name>.md``: the tables of `hf_mltm.experiments.report.markdown_report`;
- ``<images_dir>/claims_<name>_<plot>.png``: the suite's plots.

With ``quick=True`` (one seed, fewer epochs, one search run per method, smaller data) the JSON is
``claims_<name>_quick.json``, no Markdown file is written and the plots go to ``<images_dir>`` as given (the CLI
points it away from ``docs/images``). Each suite ends with the line ``suite=<name> methods=<n> seeds=<k>
wall_s=<s>`` on stdout.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["SUITE_ORDER", "available_suites", "default_data_root", "recorded_cost", "reproduce", "split_suites"]

SUITE_ORDER = ("audio_zero_shot", "epsilon_sweep", "image_text", "noisy_correspondence", "explain_audio",
               "explain_prompt", "explain_validation", "explain_temperature", "explain_triplet", "explain_noise",
               "omit_fragments")
"""The order of ``--suite all``: the priority of the evidence (the audio claims first; the ablations and OMIT, the
most expensive suite, last)."""


def default_data_root(repo: Path) -> Path:
    """``$HF_MLTM_DATA``, else ``../shared/data`` beside the repository."""
    return Path(os.environ["HF_MLTM_DATA"]) if os.environ.get("HF_MLTM_DATA") else repo.parent / "shared" / "data"


def available_suites(config_dir: str | Path) -> list[str]:
    """Suite names with a YAML file in ``config_dir``, in `SUITE_ORDER` first, then alphabetically."""
    names = {path.stem for path in Path(config_dir).glob("*.yaml")}
    return [name for name in SUITE_ORDER if name in names] + sorted(names - set(SUITE_ORDER))


def recorded_cost(results_dir: str | Path, name: str) -> float:
    """The CPU seconds suite ``name`` took to train in its saved results (every method's runs, including runs read
    from the run store); 1.0 when there are no results yet."""
    path = Path(results_dir) / f"claims_{name}.json"
    if not path.is_file():
        return 1.0
    result = json.loads(path.read_text(encoding="utf-8"))
    methods = [method for condition in result.get("conditions", {}).values()
               for method in condition.get("methods", {}).values()]
    total = sum(float(method.get("training_cpu_s", method.get("cpu_s", 0.0)) or 0.0) for method in methods)
    return total if total > 0 else float(result.get("cpu_s") or 1.0)


def split_suites(names: Sequence[str], jobs: int, costs: Sequence[float]) -> list[list[str]]:
    """Share suites among ``jobs`` processes so that the most loaded one has as little as possible (greedy: the
    costliest suite goes to the least loaded process). Each group keeps the order of ``names``; empty groups are
    dropped.

    Raises:
        ValueError: ``jobs`` < 1 or a cost per name missing.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}.")
    if len(costs) != len(names):
        raise ValueError(f"split_suites needs one cost per suite, got {len(costs)} for {len(names)} suites.")
    loads = [0.0] * jobs
    groups: list[list[int]] = [[] for _ in range(jobs)]
    for index in sorted(range(len(names)), key=lambda i: -costs[i]):
        target = min(range(jobs), key=lambda j: loads[j])
        loads[target] += costs[index]
        groups[target].append(index)
    return [[names[i] for i in sorted(group)] for group in groups if group]


def _json_ready(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value


def reproduce(
    suites: Sequence[str],
    *,
    config_dir: str | Path,
    data_root: str | Path,
    cache_dir: str | Path,
    results_dir: str | Path,
    images_dir: str | Path,
    artifacts_dir: str | Path | None = None,
    quick: bool = False,
    report_only: bool = False,
    seeds: Sequence[int] | None = None,
    command: str = "",
    progress: bool = False,
    out: Callable[[str], None] | None = None,
    runs_dir: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Run the named suites one after the other and write their outputs (module docstring).

    Args:
        suites (`Sequence[str]`): suite names (files ``<config_dir>/<name>.yaml``) or ``["all"]``.
        config_dir (`str` or `Path`): the folder of suite YAML files (``configs/claims``).
        data_root (`str` or `Path`): the shared data folder.
        cache_dir (`str` or `Path`): the feature-cache folder (one for all suites).
        results_dir (`str` or `Path`), images_dir (`str` or `Path`): where the JSON / Markdown and the plots go.
        artifacts_dir (`str` or `Path`, *optional*): where the embeddings behind the plots are saved
            (``claims_<name>_artifacts.pt``), so that `report_only` can redraw them.
        quick (`bool`): the ``--quick`` version of every suite.
        report_only (`bool`): run nothing: rewrite the Markdown and the plots from a previous run's JSON and
            artifacts.
        seeds (`Sequence[int]`, *optional*): override the suites' seeds (the first is the search seed).
        command (`str`): the command line, stored in each JSON.
        progress (`bool`): progress bars while filling the feature cache.
        out (`Callable`, *optional*): receives the Markdown and the summary line of each suite (default: stdout).
        runs_dir (`str` or `Path`, *optional*): the `RunStore` folder that makes an interrupted suite resume
            (`run_suite`); `None` stores nothing.

    Returns:
        `list[dict]`: the JSON of each suite.

    Raises:
        ValueError: an unknown suite name (the message lists the available ones) or a missing data folder.
    """
    from .report import markdown_report, plot_suite
    from .suites import load_suite, run_suite

    out = out or (lambda text: print(text, flush=True))
    config_dir = Path(config_dir)
    known = available_suites(config_dir)
    names = known if list(suites) == ["all"] else list(suites)
    unknown = [name for name in names if name not in known]
    if unknown or not names:
        from hf_mltm.validation import closest_match

        hint = closest_match(unknown[0], known) if unknown else None
        raise ValueError(f"unknown suite(s) {unknown or names}" + (f" (did you mean {hint!r}?)" if hint else "")
                         + f"; available in {config_dir}: {known} (or 'all').")
    if not report_only and not Path(data_root).is_dir():
        raise ValueError(f"data_root {data_root} is not a folder; pass --data_root or set HF_MLTM_DATA to the shared "
                         "data folder (../shared/data).")
    results_dir, images_dir = Path(results_dir), Path(images_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    outputs = []
    for name in names:
        suite = load_suite(config_dir / f"{name}.yaml")
        if quick:
            suite = suite.quick()
        if seeds:
            suite.seeds = [int(seed) for seed in seeds]
            suite.search_seed = suite.seeds[0]
        stem = f"claims_{name}{'_quick' if quick else ''}"
        path = results_dir / f"{stem}.json"
        artifacts_path = None if artifacts_dir is None else Path(artifacts_dir) / f"{stem}_artifacts.pt"
        if report_only:
            if not path.is_file():
                raise ValueError(f"--report_only needs {path} from an earlier run of suite {name!r}.")
            result_json = json.loads(path.read_text(encoding="utf-8"))
            artifacts = (torch.load(artifacts_path, weights_only=True)
                         if artifacts_path is not None and artifacts_path.is_file() else {})
        else:
            result = run_suite(suite, data_root=data_root, cache_dir=cache_dir, command=command, progress=progress,
                               runs_dir=runs_dir)
            result_json, artifacts = result.json, result.artifacts
            result_json["quick"] = quick
            if artifacts_path is not None:
                artifacts_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save(artifacts, artifacts_path)
        result_json["images"] = [str(path) for path in plot_suite(result_json, artifacts, images_dir, suite.plots)]
        path.write_text(json.dumps(_json_ready(result_json), indent=1, allow_nan=False) + "\n", encoding="utf-8")
        table = markdown_report(result_json)
        if not quick:
            (results_dir / f"{stem}.md").write_text(table, encoding="utf-8")
        out(table)
        out(result_json["summary_line"])
        outputs.append(result_json)
    return outputs


def main_command() -> str:
    """The command line of this process, for the JSON."""
    return " ".join(["python", *[arg if " " not in arg else repr(arg) for arg in sys.argv]])
