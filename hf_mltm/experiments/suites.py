"""Suite definitions (YAML under ``configs/claims/``) and the runner that turns one into a JSON of results.

A suite compares *methods* (a loss and its settings in one model family) under one or more *conditions* (e.g.
noise rates) with the same budget for every method:

1. **Search** (validation only): for every learning rate in ``selection.learning_rates`` and every value of the
   method's scale (``scale``: ``ot_epsilon`` for the OT losses, the temperature or the margin for the baselines;
   the same number of values for every method), one run at ``selection.search_seed``; each run keeps its best
   validation epoch. The candidate with the best validation score wins (the first in grid order on ties).
2. **Seeds**: the winner is trained on every seed of ``seeds`` (the search run is reused for the search seed),
   each run again keeping its best validation epoch.
3. **Test**: only then is the reported split evaluated, once per seed, on the kept parameters. No score of the
   reported split ever reaches steps 1-2 (`select_and_test` is the only place that calls the test evaluation).

Results per method: the per-seed values, mean and 95 % t interval of every reported metric, the validation scores
and kept epochs, the search table; paired differences (same seeds) for the ``comparisons`` of the suite.

YAML schema (see ``configs/claims/*.yaml``)::

    suite: audio_zero_shot            # output benchmarks/results/claims_<suite>.json
    title: ...
    plots: [bars, projection, plan]   # hf_mltm.experiments.report.PLOTS
    task: audio_zero_shot | image_text | noisy_correspondence | omit_fragments
    data: {...}                       # the task's data options (split fraction, noise rates, ...)
    model: {mltm: {...}, omit: {...}} # config fields every method of a family shares
    training: {...}                   # TrainSettings fields (the budget)
    selection: {learning_rates: [...], search_seed: 0, search_condition: each | first}
    seeds: [0, 1, 2, 3, 4]
    methods:
      <name>: {label: ..., family: mltm | omit, config: {...}, scale: {<config field>: [values]},
               training: {...}}
    comparisons: [[method_a, method_b], ...]
    quick: {seeds: [0], epochs: 2, learning_rates: [...], data: {...}}
"""

from __future__ import annotations

import copy
import math
import platform
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .run_store import RunStore
from .stats import mean_ci, paired_difference
from .training import TrainResult, TrainSettings, retrieval_metrics_of, train_heads, zero_shot_metrics

__all__ = [
    "MethodSpec",
    "SuiteConfig",
    "SuiteResult",
    "TASKS",
    "load_suite",
    "run_suite",
    "select_and_test",
]

TASKS = ("audio_zero_shot", "image_text", "noisy_correspondence", "omit_fragments")
FAMILIES = ("mltm", "omit")
SUITE_KEYS = {"suite", "title", "task", "data", "model", "training", "selection", "seeds", "methods", "comparisons",
              "quick", "notes", "plots"}
METHOD_KEYS = {"label", "family", "config", "scale", "training"}
SELECTION_KEYS = {"learning_rates", "search_seed", "search_condition"}
QUICK_KEYS = {"seeds", "epochs", "learning_rates", "data"}
AUDIO_DATA_KEYS = {"val_fraction", "split_seed", "val_split", "train_template", "prompt_template", "towers",
                   "max_clips_per_class"}
IMAGE_TEXT_DATA_KEYS = {"ranking_modes", "max_images"}
DATA_KEYS = {"audio_zero_shot": AUDIO_DATA_KEYS, "image_text": IMAGE_TEXT_DATA_KEYS,
             "noisy_correspondence": IMAGE_TEXT_DATA_KEYS | {"noise_rates"}, "omit_fragments": IMAGE_TEXT_DATA_KEYS}


# ---------------------------------------------------------------------------------------------------------------
# Suite configuration


@dataclass
class MethodSpec:
    """One method of a suite: a family, its config fields, its scale grid and (rarely) training overrides."""

    name: str
    label: str
    family: str
    config: dict[str, Any]
    scale: tuple[str, list[Any]] | None
    training: dict[str, Any] = field(default_factory=dict)

    def candidates(self, learning_rates: Sequence[float]) -> list[dict[str, Any]]:
        """The search grid: ``{"learning_rate": lr, <scale key>: value}`` for every pair, learning rate outer."""
        values = self.scale[1] if self.scale else [None]
        return [{"learning_rate": lr, **({self.scale[0]: value} if self.scale else {})}
                for lr in learning_rates for value in values]


@dataclass
class SuiteConfig:
    """A parsed, checked suite (see the module docstring for the YAML schema)."""

    name: str
    title: str
    task: str
    data: dict[str, Any]
    model: dict[str, dict[str, Any]]
    training: TrainSettings
    learning_rates: list[float]
    search_seed: int
    search_condition: str
    seeds: list[int]
    methods: list[MethodSpec]
    comparisons: list[tuple[str, str]]
    notes: str = ""
    plots: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    def quick(self) -> SuiteConfig:
        """The ``--quick`` version: the ``quick`` section's seeds, epochs, learning rates and data options, and only
        the first value of each method's scale (one search run per method)."""
        quick = self.raw.get("quick") or {}
        suite = copy.deepcopy(self)
        suite.seeds = [int(seed) for seed in quick.get("seeds", [self.seeds[0]])]
        suite.search_seed = suite.seeds[0]
        suite.learning_rates = [float(lr) for lr in quick.get("learning_rates", self.learning_rates[:1])]
        suite.training = self.training.replace(epochs=int(quick.get("epochs", min(2, self.training.epochs))))
        suite.data = {**self.data, **dict(quick.get("data") or {})}
        for method in suite.methods:
            if method.scale:
                method.scale = (method.scale[0], method.scale[1][:1])
        return suite


def _check_keys(given: Mapping[str, Any], allowed: set[str], where: str) -> None:
    from hf_mltm.validation import check_known_keys

    if not isinstance(given, Mapping):
        raise ValueError(f"{where} must be a mapping, got {given!r}.")
    check_known_keys(given, allowed, where)


def _number_list(value: Any, where: str, *, positive: bool = True) -> list[float]:
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where} must be a non-empty list of numbers, got {value!r}.")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or (positive and not item > 0):
            raise ValueError(f"{where} must hold numbers{' > 0' if positive else ''}, got {item!r}.")
    return [float(item) for item in value]


def parse_suite(raw: Mapping[str, Any], source: str = "<suite>") -> SuiteConfig:
    """Check a suite mapping (the parsed YAML) and return its `SuiteConfig`.

    Raises:
        ValueError: an unknown key (with the closest valid one), a missing section, a method of an unknown family,
            scale grids of unequal size (the search must be the same size for every method), a comparison naming an
            unknown method, or bad training settings. The message names ``source`` and the field.
    """
    _check_keys(raw, SUITE_KEYS, source)
    for key in ("suite", "task", "methods", "seeds"):
        if key not in raw:
            raise ValueError(f"{source}: the suite needs a {key!r} entry.")
    if raw["task"] not in TASKS:
        raise ValueError(f"{source}: task must be one of {TASKS}, got {raw['task']!r}.")
    name = str(raw["suite"])
    if not name.replace("_", "").isalnum():
        raise ValueError(f"{source}: suite name {name!r} must be letters, digits and underscores (it names files).")
    training_fields = dict(raw.get("training") or {})
    try:
        training = TrainSettings(**training_fields)
    except TypeError as error:
        raise ValueError(f"{source}: training has an unknown field ({error}); fields: "
                         f"{sorted(TrainSettings.__dataclass_fields__)}.") from None
    selection = dict(raw.get("selection") or {})
    _check_keys(selection, SELECTION_KEYS, f"{source} selection")
    learning_rates = _number_list(selection.get("learning_rates", [training.learning_rate]),
                                  f"{source} selection.learning_rates")
    search_condition = selection.get("search_condition", "each")
    if search_condition not in ("each", "first"):
        raise ValueError(f"{source}: selection.search_condition must be 'each' or 'first', got {search_condition!r}.")
    seeds = raw["seeds"]
    if not isinstance(seeds, list) or not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0
                                                        for s in seeds) or len(set(seeds)) != len(seeds):
        raise ValueError(f"{source}: seeds must be a list of distinct integers >= 0, got {seeds!r}.")
    search_seed = int(selection.get("search_seed", seeds[0]))
    data = dict(raw.get("data") or {})
    _check_keys(data, DATA_KEYS[raw["task"]], f"{source} data")
    quick = raw.get("quick") or {}
    _check_keys(quick, QUICK_KEYS, f"{source} quick")
    _check_keys(dict(quick.get("data") or {}), DATA_KEYS[raw["task"]], f"{source} quick.data")
    model = dict(raw.get("model") or {})
    _check_keys(model, set(FAMILIES), f"{source} model")
    methods = []
    if not isinstance(raw["methods"], Mapping) or not raw["methods"]:
        raise ValueError(f"{source}: methods must be a non-empty mapping of method name -> settings.")
    for method_name, spec in raw["methods"].items():
        where = f"{source} methods.{method_name}"
        _check_keys(spec, METHOD_KEYS, where)
        family = spec.get("family", "mltm")
        if family not in FAMILIES:
            raise ValueError(f"{where}.family must be one of {FAMILIES}, got {family!r}.")
        scale = spec.get("scale")
        if scale is not None:
            if not isinstance(scale, Mapping) or len(scale) != 1:
                raise ValueError(f"{where}.scale must map one config field to a list of values, e.g. "
                                 f"{{ot_epsilon: [0.05, 0.1, 0.2]}}, got {scale!r}.")
            (key, values), = scale.items()
            scale = (str(key), _number_list(values, f"{where}.scale.{key}"))
        overrides = dict(spec.get("training") or {})
        try:
            training.replace(**overrides)
        except TypeError as error:
            raise ValueError(f"{where}.training has an unknown field ({error}).") from None
        config = dict(spec.get("config") or {})
        _check_family_keys(family, {**dict(model.get(family) or {}), **config, **({scale[0]: 0} if scale else {})},
                           f"{where} (with model.{family})")
        methods.append(MethodSpec(str(method_name), str(spec.get("label", method_name)), family, config, scale,
                                  overrides))
    sizes = {len(method.scale[1]) if method.scale else 1 for method in methods}
    if len(sizes) > 1:
        raise ValueError(f"{source}: every method's scale grid must have the same number of values (an equal search "
                         f"budget), got sizes {sorted(sizes)}.")
    names = {method.name for method in methods}
    comparisons = []
    for pair in raw.get("comparisons") or []:
        if not isinstance(pair, list) or len(pair) != 2 or not set(pair) <= names:
            raise ValueError(f"{source}: each comparison must be [method_a, method_b] of the suite's methods "
                             f"{sorted(names)}, got {pair!r}.")
        comparisons.append((pair[0], pair[1]))
    from .report import PLOTS

    plots = list(raw.get("plots") or [])
    unknown = [plot for plot in plots if plot not in PLOTS]
    if unknown:
        raise ValueError(f"{source}: unknown plots {unknown}; choose from {list(PLOTS)}.")
    return SuiteConfig(name, str(raw.get("title", name)), raw["task"], data,
                       {family: dict(model.get(family) or {}) for family in FAMILIES}, training, learning_rates,
                       search_seed, search_condition, [int(s) for s in seeds], methods, comparisons,
                       str(raw.get("notes", "")), plots, dict(raw))


def _check_family_keys(family: str, config: Mapping[str, Any], where: str) -> None:
    """A config key the family's config class does not have fails here, before any run (named, with the closest)."""
    from hf_mltm.training.model_factory import check_config_keys

    if family == "omit":
        from hf_mltm.models.omit import OMITImageTextConfig as config_class
    else:
        from hf_mltm.models.mltm import MLTMAudioTextConfig as config_class
    try:
        check_config_keys(config_class, config)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and check a suite YAML file (`parse_suite`)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"suite file {path} does not exist; the suites are configs/claims/*.yaml.")
    with path.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    return parse_suite(raw or {}, str(path))


# ---------------------------------------------------------------------------------------------------------------
# Selection on validation, then the reported split


@dataclass
class TrainedRun:
    """A finished run: its hyper-parameters, seed and `TrainResult` (holding the kept parameters)."""

    hparams: dict[str, Any]
    seed: int
    result: TrainResult


def select_and_test(
    candidates: Sequence[Mapping[str, Any]],
    seeds: Sequence[int],
    search_seed: int,
    train: Callable[[Mapping[str, Any], int], TrainedRun],
    test: Callable[[TrainedRun], dict[str, float]],
    *,
    selected: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Search on validation, train the winner on every seed, then evaluate the reported split.

    Args:
        candidates (`Sequence[Mapping]`): the hyper-parameter grid (at least one).
        seeds (`Sequence[int]`): the reported seeds.
        search_seed (`int`): the seed of the search runs (its search run is reused when it is a reported seed).
        train (`Callable`): ``(hparams, seed) -> TrainedRun``; it sees the training and validation splits only
            (``run.result.best_validation`` is the selection score, higher is better).
        test (`Callable`): ``TrainedRun -> metrics`` on the reported split. It is called once per seed, after
            every search and seed run has finished, and only for runs of the selected candidate.
        selected (`Mapping`, *optional*): skip the search and use these hyper-parameters (chosen earlier on
            validation, e.g. under another condition).

    Returns:
        `dict`: ``selected`` (hparams), ``search`` (per candidate: hparams, validation, best epoch), ``runs``
        (per seed: seed, validation, best_epoch, steps, wall_s, diverged, test metrics).

    Raises:
        ValueError: an empty grid or seed list, or no candidate with a finite validation score.
    """
    if not candidates and selected is None:
        raise ValueError("select_and_test needs at least one candidate.")
    if not seeds:
        raise ValueError("select_and_test needs at least one seed.")
    search: list[dict[str, Any]] = []
    reusable: TrainedRun | None = None
    if selected is None:
        best_score, best = -math.inf, None
        for hparams in candidates:
            run = train(hparams, search_seed)
            score = run.result.best_validation
            search.append({"hparams": dict(hparams), "validation": score, "best_epoch": run.result.best_epoch,
                           "diverged": run.result.diverged, "cpu_s": run.result.cpu_s})
            if math.isfinite(score) and score > best_score:
                best_score, best = score, run
        if best is None:
            raise ValueError(f"no candidate of {list(map(dict, candidates))} reached a finite validation score.")
        selected, reusable = best.hparams, best
    trained = [reusable if reusable is not None and seed == search_seed else train(selected, seed) for seed in seeds]
    # Only now, with every choice fixed, is the reported split evaluated.
    runs = []
    for run in trained:
        runs.append({"seed": run.seed, "validation": run.result.best_validation, "best_epoch": run.result.best_epoch,
                     "steps": run.result.steps, "wall_s": run.result.wall_s, "cpu_s": run.result.cpu_s,
                     "diverged": run.result.diverged, "test": test(run)})
    return {"selected": dict(selected), "search": search, "runs": runs}


# ---------------------------------------------------------------------------------------------------------------
# Tasks: data, validation score, reported metrics


def _flatten(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    flat = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class _Task:
    """Data, validation score and reported metrics of one task (data is loaded once per process)."""

    def __init__(self, suite: SuiteConfig, data_root: Path, cache_dir: Path, progress: bool) -> None:
        self.suite, self.data_root, self.cache_dir, self.progress = suite, data_root, cache_dir, progress
        self._data: dict[str, Any] = {}

    def data(self, family: str):
        from .features import audio_zero_shot_data, image_text_data

        key = "audio" if self.suite.task == "audio_zero_shot" else ("fragments" if family == "omit" else "pooled")
        if key not in self._data:
            options = dict(self.suite.data)
            if key == "audio":
                data = audio_zero_shot_data(
                    self.data_root, self.cache_dir, val_fraction=options.get("val_fraction", 0.25),
                    split_seed=options.get("split_seed", 0), progress=self.progress,
                    **{k: options[k] for k in ("train_template", "prompt_template", "towers", "max_clips_per_class",
                                               "val_split") if k in options})
            else:
                data = image_text_data(self.data_root, self.cache_dir, representation=key, progress=self.progress,
                                       max_images=options.get("max_images"))
            self._data[key] = data
        return self._data[key]

    def conditions(self) -> list[tuple[str, dict[str, Any]]]:
        if self.suite.task == "noisy_correspondence":
            rates = _number_list(self.suite.data.get("noise_rates", [0.0]), "data.noise_rates", positive=False)
            return [(f"noise_{rate:g}", {"noise_rate": rate}) for rate in rates]
        return [("default", {})]

    def pairs(self, family: str, condition: Mapping[str, Any], seed: int):
        data = self.data(family)
        rate = condition.get("noise_rate", 0.0)
        if not rate:
            return data.train
        from hf_mltm.data import inject_noisy_correspondence

        # The noise draw follows the run's seed: every method sees the same corrupted pairs at a given seed.
        noisy = inject_noisy_correspondence(data.train_captions, rate, seed=seed)
        return data.pairs_with_captions(list(noisy["caption"]), list(noisy["is_noisy"]))

    def validate(self, family: str) -> Callable[[torch.nn.Module], float]:
        data = self.data(family)
        if self.suite.task == "audio_zero_shot":
            return lambda model: zero_shot_metrics(model, data.validation)["MRR@10"]
        return lambda model: retrieval_metrics_of(model, data.validation)["distance"]["rsum"]

    def test(self, family: str, model: torch.nn.Module) -> dict[str, float]:
        data = self.data(family)
        if self.suite.task == "audio_zero_shot":
            return _flatten(zero_shot_metrics(model, data.test))
        modes = tuple(self.suite.data.get("ranking_modes", ("distance", "ot")))
        return _flatten(retrieval_metrics_of(model, data.test, modes=modes))

    def model_config(self, method: MethodSpec, hparams: Mapping[str, Any]) -> dict[str, Any]:
        """The family config fields of one run: the suite's, the method's, then the searched values."""
        return {**self.suite.model.get(method.family, {}), **method.config,
                **{k: v for k, v in hparams.items() if k != "learning_rate"}}

    def run_payload(self, method: MethodSpec, hparams: Mapping[str, Any], settings: TrainSettings,
                    condition: Mapping[str, Any], seed: int) -> dict[str, Any]:
        """Everything that decides a run's outcome (the `RunStore` key; see `hf_mltm.experiments.run_store`)."""
        from hf_mltm import __version__

        return {"task": self.suite.task, "data_options": self.suite.data,
                "data": self.data(method.family).description, "family": method.family,
                "config": self.model_config(method, hparams), "training": asdict(settings),
                "condition": dict(condition), "seed": int(seed), "version": __version__}

    def build(self, method: MethodSpec, hparams: Mapping[str, Any], seed: int) -> torch.nn.Module:
        from .models import build_mltm_model, build_omit_model

        data = self.data(method.family)
        config = self.model_config(method, hparams)
        torch.manual_seed(seed)
        if method.family == "omit":
            return build_omit_model(config, data.item_hidden, data.text_hidden, text_source="all-MiniLM-L6-v2 tokens")
        return build_mltm_model(config, data.item_hidden, data.text_hidden)


# ---------------------------------------------------------------------------------------------------------------
# Running a suite


@dataclass
class SuiteResult:
    """``json``: everything written to ``claims_<suite>.json``; ``artifacts``: in-memory extras for the plots
    (embeddings and costs of the search-seed models), per condition and method."""

    json: dict[str, Any]
    artifacts: dict[str, dict[str, Any]]


def _summaries(runs: Sequence[Mapping[str, Any]]) -> tuple[dict[str, list[float]], dict[str, dict[str, Any]]]:
    per_seed: dict[str, list[float]] = {}
    for run in runs:
        for key, value in run["test"].items():
            per_seed.setdefault(key, []).append(value)
    summary = {}
    for key, values in per_seed.items():
        finite = [value for value in values if math.isfinite(value)]
        summary[key] = mean_ci(finite).to_dict() if len(finite) == len(values) else {"non_finite": True}
    return per_seed, summary


def run_suite(
    suite: SuiteConfig,
    *,
    data_root: str | Path,
    cache_dir: str | Path,
    command: str = "",
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    keep_artifacts: bool = True,
    runs_dir: str | Path | None = None,
) -> SuiteResult:
    """Run every method of ``suite`` under every condition (search, seeds, then test; module docstring).

    Args:
        suite (`SuiteConfig`): the suite (use ``suite.quick()`` for ``--quick``).
        data_root (`str` or `Path`): the shared data folder.
        cache_dir (`str` or `Path`): the feature-cache folder shared by all suites.
        command (`str`): the command line that made the results (stored in the JSON).
        log (`Callable`, *optional*): receives one progress line per run (default: stderr).
        progress (`bool`): progress bars while filling the feature cache.
        keep_artifacts (`bool`): keep embeddings and costs of the search-seed models for the plots.
        runs_dir (`str` or `Path`, *optional*): a `RunStore` folder: every finished run is saved there and a run
            already there (same data, config, budget, condition and seed) is read instead of trained, so an
            interrupted suite resumes where it stopped. `None`: nothing is stored.

    Returns:
        `SuiteResult`.
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    start, cpu_start = time.perf_counter(), time.process_time()
    task = _Task(suite, Path(data_root), Path(cache_dir), progress)
    store = RunStore(runs_dir)
    training_usage: dict[str, dict[str, float]] = {}
    for family in sorted({method.family for method in suite.methods}):
        task.data(family)  # the feature cache is filled (or read) here, outside the runs' wall times
    data_wall = time.perf_counter() - start
    conditions: dict[str, Any] = {}
    artifacts: dict[str, dict[str, Any]] = {}
    selected_first: dict[str, dict[str, Any]] = {}
    for condition_index, (condition_name, condition) in enumerate(task.conditions()):
        methods_out: dict[str, Any] = {}
        for method in suite.methods:
            method_start, method_cpu = time.perf_counter(), time.process_time()
            settings_base = suite.training.replace(**method.training)

            def train(hparams: Mapping[str, Any], seed: int, method=method, settings_base=settings_base,
                      condition=condition, condition_name=condition_name) -> TrainedRun:
                settings = settings_base.replace(learning_rate=float(hparams["learning_rate"]))
                key = task.run_payload(method, hparams, settings, condition, seed)
                result = store.load(key)
                reused = result is not None
                if result is None:
                    model = task.build(method, hparams, seed)
                    result = train_heads(model, task.pairs(method.family, condition, seed), settings, seed=seed,
                                         validate=task.validate(method.family))
                    store.save(key, result)
                usage = training_usage.setdefault(method.name, {"cpu_s": 0.0, "stored": 0})
                usage["cpu_s"] += result.cpu_s
                usage["stored"] += int(reused)
                log(f"[{suite.name}] {condition_name} {method.name} {dict(hparams)} seed={seed}: "
                    f"validation={result.best_validation:.4g} epoch={result.best_epoch}/{len(result.history)} "
                    f"({'stored run, ' if reused else ''}{result.wall_s:.1f} s, cpu {result.cpu_s:.1f} s"
                    f"{', diverged' if result.diverged else ''})")
                return TrainedRun(dict(hparams), seed, result)

            def test(run: TrainedRun, method=method, condition_name=condition_name) -> dict[str, float]:
                model = task.build(method, run.hparams, run.seed)
                model.load_state_dict(run.result.state)
                if keep_artifacts and run.seed == suite.search_seed:
                    artifacts.setdefault(condition_name, {})[method.name] = _artifacts(task, method, model)
                return task.test(method.family, model)

            reuse = (selected_first.get(method.name)
                     if suite.search_condition == "first" and condition_index > 0 else None)
            outcome = select_and_test(method.candidates(suite.learning_rates), suite.seeds, suite.search_seed,
                                      train, test, selected=reuse)
            selected_first.setdefault(method.name, outcome["selected"])
            per_seed, summary = _summaries(outcome["runs"])
            methods_out[method.name] = {
                "label": method.label,
                "family": method.family,
                "config": {**suite.model.get(method.family, {}), **method.config},
                "training_overrides": method.training,
                "selected": outcome["selected"],
                "search": outcome["search"],
                "seeds": [run["seed"] for run in outcome["runs"]],
                "validation": [run["validation"] for run in outcome["runs"]],
                "best_epoch": [run["best_epoch"] for run in outcome["runs"]],
                "diverged": [run["diverged"] for run in outcome["runs"]],
                "per_seed": per_seed,
                "summary": summary,
                "wall_s": time.perf_counter() - method_start,
                "cpu_s": time.process_time() - method_cpu,
                "training_cpu_s": training_usage.get(method.name, {}).get("cpu_s", 0.0),
                "stored_runs": int(training_usage.get(method.name, {}).get("stored", 0)),
            }
            training_usage.pop(method.name, None)
        comparisons = []
        for a, b in suite.comparisons:
            if a not in methods_out or b not in methods_out:
                continue
            for metric in methods_out[a]["per_seed"]:
                values_a, values_b = methods_out[a]["per_seed"][metric], methods_out[b]["per_seed"].get(metric)
                if values_b is None or not all(map(math.isfinite, values_a + values_b)):
                    continue
                comparisons.append({"a": a, "b": b, "metric": metric,
                                    "difference": paired_difference(values_a, values_b).to_dict()})
        conditions[condition_name] = {**condition, "methods": methods_out, "comparisons": comparisons}
    wall = time.perf_counter() - start
    descriptions = {key: value.description for key, value in task._data.items()}
    result = {
        "suite": suite.name,
        "title": suite.title,
        "task": suite.task,
        "command": command,
        "seeds": suite.seeds,
        "search_seed": suite.search_seed,
        "learning_rates": suite.learning_rates,
        "training": {k: getattr(suite.training, k) for k in suite.training.__dataclass_fields__},
        "data": descriptions,
        "conditions": conditions,
        "notes": suite.notes,
        "wall_s": wall,
        "data_wall_s": data_wall,
        "cpu_s": time.process_time() - cpu_start,
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": torch.get_num_threads(), "machine": platform.machine()},
        "summary_line": (f"suite={suite.name} methods={len(suite.methods)} seeds={len(suite.seeds)} "
                         f"wall_s={wall:.0f}"),
        "environment_note": "wall_s counts waiting for a busy CPU; cpu_s is this process's CPU time",
    }
    return SuiteResult(result, artifacts)


def _artifacts(task: _Task, method: MethodSpec, model: torch.nn.Module) -> dict[str, Any]:
    """Embeddings (and, for m-LTM models, the test cost) of a search-seed model, for the plots."""
    data = task.data(method.family)
    if task.suite.task == "audio_zero_shot":
        out = zero_shot_metrics(model, data.test, return_embeddings=True)
        return {"embeddings": out["embeddings"], "cost": out["cost"], "labels": data.test.labels,
                "ot_epsilon": float(getattr(model.config, "ot_epsilon", 0.05)),
                "cost_normalization": getattr(model.config, "cost_normalization", "none")}
    from hf_mltm.adapters import get_adapter

    adapter = get_adapter(model)
    with torch.no_grad():
        items = adapter.project_items(model, data.test.item_rows, 256, None)
        texts = adapter.project_texts(model, data.test.text_rows, 256, None)
    return {"embeddings": {"items": items.pooled, "texts": texts.pooled, "text_item": data.test.text_item}}
