"""Retrieval evaluation: ranking from embeddings and metrics from ranks."""

from .ranking import positive_indices, retrieval_ranks
from .retrieval import retrieval_metrics

__all__ = ["positive_indices", "retrieval_metrics", "retrieval_ranks"]
from .model_evaluation import evaluate_retrieval, modality_gap, zero_shot_classification
from .report import markdown_table, plot_results, result_rows, save_report, write_json, write_markdown

__all__ += [
    "evaluate_retrieval",
    "markdown_table",
    "modality_gap",
    "plot_results",
    "result_rows",
    "save_report",
    "write_json",
    "write_markdown",
    "zero_shot_classification",
]
