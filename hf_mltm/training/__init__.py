"""Training with accelerate: YAML configs, model/data factories, checkpoints, the loop, model card, Hub.

Entry point: ``accelerate launch scripts/train.py --config configs/<name>.yaml [--section.key value ...]``.
"""

from .checkpointing import latest_checkpoint
from .config import (
    EvaluationConfig,
    ExperimentConfig,
    HubConfig,
    TrainingConfig,
    load_config,
    parse_overrides,
)
from .data_factory import build_datasets
from .hub import HubAccessError, check_hub_access
from .metrics_log import MetricsLog, read_metrics_log
from .model_card import write_model_card
from .model_factory import build_model_and_processor
from .trainer import EpochShuffleSampler, TrainerState, TrainResult, train

__all__ = [
    "EpochShuffleSampler",
    "EvaluationConfig",
    "ExperimentConfig",
    "HubAccessError",
    "HubConfig",
    "MetricsLog",
    "TrainResult",
    "TrainerState",
    "TrainingConfig",
    "build_datasets",
    "build_model_and_processor",
    "check_hub_access",
    "latest_checkpoint",
    "load_config",
    "parse_overrides",
    "read_metrics_log",
    "train",
    "write_model_card",
]
