"""Training with accelerate: YAML configs, model/data factories, embedding cache, the loop, model card, Hub.

Entry point: ``accelerate launch scripts/train.py --config configs/<name>.yaml [--section.key value ...]``.
"""

from .config import (
    EvaluationConfig,
    ExperimentConfig,
    HubConfig,
    TrainingConfig,
    load_config,
    parse_overrides,
)
from .data_factory import build_datasets
from .embedding_cache import EmbeddingCache
from .hub import HubAccessError, check_hub_access
from .metrics_log import MetricsLog, read_metrics_log
from .model_card import write_model_card
from .model_factory import build_model_and_processor
from .trainer import EpochShuffleSampler, TrainerState, TrainResult, latest_checkpoint, train

__all__ = [
    "EmbeddingCache",
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
