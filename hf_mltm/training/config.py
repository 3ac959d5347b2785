"""Experiment configuration: a YAML file plus ``--section.key value`` command-line overrides.

The file has five sections; `ExperimentConfig.from_dict` rejects unknown keys with the file, the key and the
allowed names. ``model`` and ``data`` are free-form dicts read by `build_model_and_processor` and
`build_datasets`; ``training``, ``evaluation`` and ``hub`` are typed dataclasses.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "EvaluationConfig",
    "ExperimentConfig",
    "HubConfig",
    "TrainingConfig",
    "apply_overrides",
    "load_config",
    "parse_overrides",
]

LR_SCHEDULERS = ("constant", "linear", "cosine", "step")
MIXED_PRECISION = ("no", "bf16", "fp16")


@dataclass
class TrainingConfig:
    """Optimisation settings. Steps are optimizer steps; ``batch_size`` is the *global* batch (all processes).

    Args:
        num_epochs (`int`): passes over the training captions.
        batch_size (`int`): global batch size ``b`` of the OT problem (split evenly across processes).
        learning_rate (`float`), weight_decay (`float`), adam_betas (`list[float]`): AdamW.
        lr_scheduler (`str`): ``"constant"``, ``"linear"`` / ``"cosine"`` decay to 0 after ``warmup_steps``, or
            ``"step"``: multiply by ``lr_gamma`` at each epoch in ``lr_step_epochs`` (OMIT: x0.1 at epoch 15).
        max_grad_norm (`float`, *optional*): gradient clipping by global norm.
        gradient_accumulation_steps (`int`): micro-batches per optimizer step (each micro-batch is its own OT
            problem of ``batch_size`` samples).
        mixed_precision (`str`): ``"no"``, ``"bf16"`` (works on CPU) or ``"fp16"`` (GPU only).
        freeze_towers (`bool`): train only the heads / metric; the towers stay frozen in eval mode.
        embedding_cache (`bool`): with frozen towers, train (and evaluate) on the towers' outputs from the
            content-keyed `hf_mltm.feature_cache.FeatureCache`: computed once per clip/caption content, tower and
            preprocessing settings, so a changed file, tower or setting is never served stale.
        feature_cache_dir (`str`, *optional*): the cache folder (default ``$HF_MLTM_CACHE/features``, i.e.
            ``~/.cache/hf_mltm/features``), shared by runs.
        config_schedule (`list[dict]`): ``[{epoch: e, set: {config_key: value}}]`` applied to the model config at
            the start of epoch ``e`` (e.g. VSE++ hardest negatives after a warm-up epoch).
        checkpoint_every_steps (`int`, *optional*): ``save_state`` period; ``checkpoints_total_limit`` keeps the
            newest ones. ``resume_from_checkpoint``: ``"latest"`` or a checkpoint folder.
        max_steps (`int`, *optional*): stop after this many optimizer steps (debugging, tests).
        debug_dump_path (`str`, *optional*): write every step's global-batch loss and gradients (rank 0) here.
        trackers (`list[str]`): extra trackers (``"tensorboard"``, ``"wandb"``) used when installed; the JSONL
            metrics log is always written.
    """

    num_epochs: int = 30
    batch_size: int = 256
    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    lr_step_epochs: list[int] = field(default_factory=list)
    lr_gamma: float = 0.1
    max_grad_norm: float | None = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"
    freeze_towers: bool = False
    embedding_cache: bool = False
    feature_cache_dir: str | None = None
    shuffle: bool = True
    drop_last: bool = True
    config_schedule: list[dict] = field(default_factory=list)
    checkpoint_every_steps: int | None = None
    checkpoints_total_limit: int | None = 2
    resume_from_checkpoint: str | None = None
    log_every_steps: int = 1
    max_steps: int | None = None
    debug_dump_path: str | None = None
    ddp_find_unused_parameters: bool = False
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    progress: bool = True

    def validate(self, source: str) -> None:
        checks = [
            (self.num_epochs >= 1, "num_epochs", "an integer >= 1"),
            (self.batch_size >= 2, "batch_size", "an integer >= 2 (an OT batch needs negatives)"),
            (self.learning_rate > 0, "learning_rate", "a number > 0"),
            (self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"one of {list(LR_SCHEDULERS)}"),
            (self.mixed_precision in MIXED_PRECISION, "mixed_precision", f"one of {list(MIXED_PRECISION)}"),
            (self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps", "an integer >= 1"),
            (self.max_grad_norm is None or self.max_grad_norm > 0, "max_grad_norm", "null or a number > 0"),
            (self.checkpoint_every_steps is None or self.checkpoint_every_steps >= 1, "checkpoint_every_steps",
             "null or an integer >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "max_steps", "null or an integer >= 1"),
            (not self.embedding_cache or self.freeze_towers, "embedding_cache",
             "false unless freeze_towers is true (a cache of trainable towers would be stale)"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{source}: training.{key}={getattr(self, key)!r} is invalid; set it to {expected}.")
        for entry in self.config_schedule:
            if not isinstance(entry, dict) or set(entry) != {"epoch", "set"} or not isinstance(entry["set"], dict):
                raise ValueError(f"{source}: training.config_schedule entries must look like "
                                 f"{{epoch: 1, set: {{triplet_hardest_negative: true}}}}, got {entry!r}.")


@dataclass
class EvaluationConfig:
    """Evaluation every ``every_epochs`` epochs on ``data.eval_split``; the best ``select_metric`` (``rsum`` of
    ``ranking_mode``) is kept as the final model."""

    every_epochs: int = 1
    batch_size: int = 32
    ranking_modes: list[str] = field(default_factory=lambda: ["distance"])
    select_metric: str = "rsum"
    enabled: bool = True

    def validate(self, source: str) -> None:
        if self.every_epochs < 1:
            raise ValueError(f"{source}: evaluation.every_epochs={self.every_epochs!r} must be an integer >= 1.")
        if not self.ranking_modes:
            raise ValueError(f"{source}: evaluation.ranking_modes must list at least one mode, e.g. [distance].")


@dataclass
class HubConfig:
    """``push_to_hub``: upload the final folder to ``model_id`` (checked before training starts)."""

    push_to_hub: bool = False
    model_id: str | None = None
    private: bool = True
    token: str | None = None

    def validate(self, source: str) -> None:
        if self.push_to_hub and not self.model_id:
            raise ValueError(f"{source}: hub.push_to_hub is true but hub.model_id is empty; set --hub.model_id "
                             "<user>/<name>.")


@dataclass
class ExperimentConfig:
    """A whole experiment: ``output_dir``, ``seed`` and the sections (see the module docstring)."""

    output_dir: str
    model: dict[str, Any]
    data: dict[str, Any]
    seed: int = 0
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    hub: HubConfig = field(default_factory=HubConfig)
    source: str = "<dict>"

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "<dict>") -> ExperimentConfig:
        """Build and validate a config; ``source`` (the file name) is quoted in every error.

        Raises:
            ValueError: an unknown or missing key, or a value of the wrong type or range.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"{source}: the config must be a YAML mapping, got {type(raw).__name__}.")
        sections = {"training": TrainingConfig, "evaluation": EvaluationConfig, "hub": HubConfig}
        top = {"output_dir", "model", "data", "seed", *sections}
        _reject_unknown(raw, top, source, "")
        for key in ("output_dir", "model", "data"):
            if key not in raw:
                raise ValueError(f"{source}: missing required key {key!r} (top level).")
        for key in ("model", "data"):
            if not isinstance(raw[key], dict):
                raise ValueError(f"{source}: {key} must be a mapping, got {raw[key]!r}.")
        built = {name: _build_section(klass, raw.get(name) or {}, source, name) for name, klass in sections.items()}
        config = cls(output_dir=str(raw["output_dir"]), model=raw["model"], data=raw["data"],
                     seed=_coerce(raw.get("seed", 0), int, source, "seed"), source=source, **built)
        for section in built.values():
            section.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (YAML-serialisable), without ``source``."""
        out = dataclasses.asdict(self)
        out.pop("source")
        return out


def _reject_unknown(raw: dict, allowed: set[str], source: str, prefix: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {[prefix + key for key in unknown]}; allowed under "
                         f"{prefix.rstrip('.') or 'the top level'}: {sorted(allowed)}.")


def _coerce(value: Any, annotation: Any, source: str, key: str) -> Any:
    """Check ``value`` against a simple annotation (int, float, bool, str, list, dict, optional)."""
    text = str(annotation)
    optional = "None" in text
    if value is None:
        if optional:
            return None
        raise ValueError(f"{source}: {key} must not be null.")
    if text.startswith("list") or annotation is list:
        if not isinstance(value, list):
            raise ValueError(f"{source}: {key} must be a list, got {value!r}.")
        return value
    if text.startswith("dict") or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{source}: {key} must be a mapping, got {value!r}.")
        return value
    if annotation is bool or text.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{source}: {key} must be true or false, got {value!r}.")
        return value
    if annotation is int or text.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{source}: {key} must be an integer, got {value!r}.")
        return value
    if annotation is float or text.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{source}: {key} must be a number, got {value!r} (write 1e-4 as 1.0e-4 in YAML).")
        return float(value)
    if annotation is str or text.startswith("str"):
        if not isinstance(value, str):
            raise ValueError(f"{source}: {key} must be a string, got {value!r}.")
        return value
    return value


def _build_section(klass: type, raw: Any, source: str, name: str) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: {name} must be a mapping, got {raw!r}.")
    fields = {f.name: f for f in dataclasses.fields(klass)}
    _reject_unknown(raw, set(fields), source, f"{name}.")
    kwargs = {key: _coerce(value, fields[key].type, source, f"{name}.{key}") for key, value in raw.items()}
    return klass(**kwargs)


def parse_overrides(arguments: list[str]) -> dict[str, Any]:
    """``["--training.learning_rate", "1e-3", "--model.config.loss_type=triplet"]`` -> ``{dotted key: value}``.

    Values are parsed as YAML scalars/flow collections (``1e-3`` -> float, ``[1, 2]`` -> list, ``null``).

    Raises:
        ValueError: an argument that is not ``--key value`` / ``--key=value``, or a key without a value.
    """
    overrides: dict[str, Any] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        if not argument.startswith("--") or len(argument) == 2:
            raise ValueError(f"Override {argument!r} must look like --section.key value (e.g. --training.num_epochs 2).")
        key, has_value, text = argument[2:].partition("=")
        if not has_value:
            if index + 1 >= len(arguments) or arguments[index + 1].startswith("--"):
                raise ValueError(f"Override --{key} has no value; write --{key} <value>.")
            text = arguments[index + 1]
            index += 1
        try:
            value = yaml.safe_load(text) if text != "" else ""
        except yaml.YAMLError as error:
            raise ValueError(f"Override --{key}: cannot parse value {text!r} as YAML ({error}).") from error
        if not isinstance(value, float) and _looks_like_float(text):
            value = float(text)  # YAML 1.1 reads "1e-4" as a string
        overrides[key] = value
        index += 1
    return overrides


def _looks_like_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return any(char in text.lower() for char in ".e") and text.lower() not in ("nan", "inf", "-inf")


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any], source: str = "<overrides>") -> dict[str, Any]:
    """Set dotted keys in a nested dict (returns a new dict). Intermediate mappings are created only inside the
    free-form ``model`` and ``data`` sections; elsewhere `ExperimentConfig.from_dict` rejects unknown keys."""
    import copy

    result = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if any(not part for part in parts):
            raise ValueError(f"{source}: override key {dotted!r} has an empty part.")
        node = result
        for depth, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"{source}: cannot set --{dotted}: {'.'.join(parts[: depth + 1])} is "
                                 f"{child!r}, not a mapping.")
            node = child
        node[parts[-1]] = value
    return result


def load_config(path: str | Path, overrides: list[str] | dict[str, Any] | None = None) -> ExperimentConfig:
    """Read a YAML experiment file and apply command-line overrides.

    Args:
        path (`str` or `Path`): the YAML file.
        overrides (`list[str]` or `dict`, *optional*): ``["--training.num_epochs", "2"]`` or ``{dotted: value}``.

    Raises:
        ValueError: a missing or unparsable file, or any error of `parse_overrides` / `ExperimentConfig.from_dict`.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"Config file {path} does not exist; pass --config configs/<name>.yaml.")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from error
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    if overrides:
        raw = apply_overrides(raw, overrides, str(path))
    return ExperimentConfig.from_dict(raw, source=str(path))
