"""Retrieval evaluation: ranking from embeddings and metrics from ranks."""

from .ranking import positive_indices, retrieval_ranks
from .retrieval import retrieval_metrics

__all__ = ["positive_indices", "retrieval_metrics", "retrieval_ranks"]
