"""Retrieval evaluation: ranking from embeddings or cost matrices, metrics from ranks, model-level evaluation
(retrieval in both ranking modes, zero-shot classification, modality gap) and reports."""

from .model_evaluation import evaluate_retrieval, modality_gap, score_retrieval, zero_shot_classification
from .ranking import RANKING_MODES, positive_indices, ranks_from_cost, retrieval_ranks
from .report import (
    markdown_table,
    plot_results,
    result_rows,
    save_report,
    spread_table,
    write_json,
    write_markdown,
)
from .retrieval import retrieval_metrics

__all__ = [
    "RANKING_MODES",
    "evaluate_retrieval",
    "markdown_table",
    "modality_gap",
    "plot_results",
    "positive_indices",
    "ranks_from_cost",
    "result_rows",
    "retrieval_metrics",
    "retrieval_ranks",
    "save_report",
    "spread_table",
    "score_retrieval",
    "write_json",
    "write_markdown",
    "zero_shot_classification",
]
