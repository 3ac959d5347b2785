"""Gallery index: search large audio collections by text (or by example) with faiss, exactly in the model's cost,
with OT re-ranking from column potentials estimated once (see docs/index.md).

- `GalleryIndex`: items + embeddings + a faiss index (``datasets.Dataset.add_faiss_index``); ``search``, ``save``,
  ``load``, ``fit_potentials``.
- `IndexSpace`: the vector space in which faiss neighbours are the model's (``x L^T`` for a learned Mahalanobis
  metric, normalised vectors for ``1 - cos``).
- `estimate_column_potentials`, `rerank_candidates`, `ColumnPotentials`: OT re-ranking at scale.
- `fill_item_cache`, `fill_text_cache`: each process of an ``accelerate launch`` embeds its share of a collection
  into the feature cache (``scripts/index.py``).
"""

from .embedding import fill_item_cache, fill_text_cache, shard_positions
from .gallery import (
    EMBEDDING_COLUMN,
    EXACT_MAX_ITEMS,
    INDEX_TYPES,
    GalleryIndex,
    IndexSettings,
    SearchHit,
    SearchOutput,
    default_candidates,
    model_record,
    preprocessing_record,
)
from .reranking import (
    ColumnPotentials,
    RerankResult,
    estimate_column_potentials,
    recall_at_k,
    rerank_candidates,
    top1_agreement,
    topk_overlap,
)
from .space import SPACE_KINDS, IndexSpace

__all__ = [
    "EMBEDDING_COLUMN",
    "EXACT_MAX_ITEMS",
    "INDEX_TYPES",
    "SPACE_KINDS",
    "ColumnPotentials",
    "GalleryIndex",
    "IndexSettings",
    "IndexSpace",
    "RerankResult",
    "SearchHit",
    "SearchOutput",
    "default_candidates",
    "estimate_column_potentials",
    "fill_item_cache",
    "fill_text_cache",
    "model_record",
    "preprocessing_record",
    "recall_at_k",
    "rerank_candidates",
    "shard_positions",
    "top1_agreement",
    "topk_overlap",
]
