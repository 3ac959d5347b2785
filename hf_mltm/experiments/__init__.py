"""The evidence suite: the papers' claims tested side by side on real data, with seeds and confidence intervals.

A *suite* (``configs/claims/<name>.yaml``) compares losses of one task under an equal budget. Frozen towers run once
per clip, image and caption (`features`, through `hf_mltm.feature_cache`); every run then trains only heads,
metric and temperature in-process on the cached rows with the family's loss module (`training.train_heads`),
selects its epoch and hyper-parameters on a validation split only, and is repeated over seeds
(`suites.run_suite`); the reported split is evaluated last. `stats` gives the mean, the 95 % t interval and paired
differences; `report` the tables and plots; `runner.reproduce` (``scripts/reproduce.py``) writes everything.

Modules: ``stats``, ``models`` (the families on cached-feature towers), ``features`` (data and cached tower rows),
``training`` (the run and its evaluation), ``run_store`` (finished runs on disk, for resuming), ``suites``,
``report``, ``runner``.
"""

from .features import (
    AudioZeroShotData,
    ImageTextData,
    PairSet,
    RetrievalSplit,
    ZeroShotSplit,
    audio_zero_shot_data,
    image_text_data,
    overlapping_classes,
)
from .models import (
    CachedFeatureConfig,
    CachedFeatureTower,
    build_mltm_model,
    build_omit_model,
    head_parameters,
)
from .report import markdown_report, plot_suite
from .run_store import RunStore, run_key
from .runner import SUITE_ORDER, reproduce
from .stats import Interval, mean_ci, paired_difference, student_t_cdf, student_t_quantile
from .suites import MethodSpec, SuiteConfig, SuiteResult, load_suite, parse_suite, run_suite, select_and_test
from .training import TrainResult, TrainSettings, retrieval_metrics_of, train_heads, zero_shot_metrics

__all__ = [
    "SUITE_ORDER",
    "AudioZeroShotData",
    "CachedFeatureConfig",
    "CachedFeatureTower",
    "ImageTextData",
    "Interval",
    "MethodSpec",
    "PairSet",
    "RetrievalSplit",
    "RunStore",
    "SuiteConfig",
    "SuiteResult",
    "TrainResult",
    "TrainSettings",
    "ZeroShotSplit",
    "audio_zero_shot_data",
    "build_mltm_model",
    "build_omit_model",
    "head_parameters",
    "image_text_data",
    "load_suite",
    "markdown_report",
    "mean_ci",
    "overlapping_classes",
    "paired_difference",
    "parse_suite",
    "plot_suite",
    "reproduce",
    "retrieval_metrics_of",
    "run_key",
    "run_suite",
    "select_and_test",
    "student_t_cdf",
    "student_t_quantile",
    "train_heads",
    "zero_shot_metrics",
]
