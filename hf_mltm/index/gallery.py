"""`GalleryIndex`: a `datasets.Dataset` of gallery items with a faiss index over their embeddings, searchable by text
or audio, with optional OT re-ranking, saved and loaded with a JSON manifest.

Letters: ``N`` gallery items, ``d`` the model's joint dimension, ``r`` the index dimension, ``q`` queries, ``k``
results per query, ``K`` candidates per query.

Index types (``index_type``; ``"auto"`` picks ``"flat"`` up to `EXACT_MAX_ITEMS` items, ``"ivf"`` above):

- ``"flat"``: ``IndexFlatL2`` / ``IndexFlatIP``, exact. A query scans all ``N x r`` floats: about 1-3 ms per query at
  50k x 256 on 2 cores, 30-60 ms at 1M.
- ``"ivf"``: ``IndexIVFFlat``, approximate. k-means splits the index space into ``nlist`` cells (default: the power of
  two nearest ``2 sqrt(N)``, at most ``N / 40``), trained on ``train_size`` sampled items (default ``40 * nlist``,
  10 Lloyd iterations: faiss wants >= 39 points per centroid); a query scans the ``nprobe`` nearest cells (default
  ``max(16, nlist / 16)``, i.e. about 6 % of the gallery). It stores the full vectors, so the distances it returns
  are exact and only neighbours in unscanned cells are missed. Chosen over HNSW as the default because on 2 cores it
  builds 1M x 256 in about a minute (HNSW's graph construction takes many minutes there) and needs no memory beyond
  the vectors; recall is set by ``nprobe`` (measured in docs/index.md).
- ``"hnsw"``: ``IndexHNSWFlat`` (``hnsw_m`` links per node, ``ef_construction``, ``ef_search``), approximate; faster
  queries at high recall, slower build, about ``8 * hnsw_m`` extra bytes per item.

Every index searches in the model's own cost (`IndexSpace`): a learned Mahalanobis metric ``M = L^T L`` becomes L2
after the ``LinearTransform`` ``x L^T`` inside an ``IndexPreTransform``; the baselines' ``1 - cos`` becomes inner
product after a ``NormalizationTransform``. Returned costs are the model's (``sqrt`` of faiss's squared L2, or
``1 - IP``).

Saved layout (`GalleryIndex.save`)::

    <folder>/index.json          manifest: format, model (path, config hash, fingerprint), preprocessing, adapter,
                                 space, index settings, potentials settings, build report
    <folder>/gallery/            the items with their "embeddings" column (datasets save_to_disk)
    <folder>/index.faiss         the faiss index (datasets save_faiss_index)
    <folder>/index.safetensors   the metric factor "transform" (r, d) and the potentials "potential_g" (N,)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from .reranking import ColumnPotentials, estimate_column_potentials, rerank_candidates
from .space import IndexSpace

__all__ = [
    "EMBEDDING_COLUMN",
    "EXACT_MAX_ITEMS",
    "INDEX_TYPES",
    "GalleryIndex",
    "IndexSettings",
    "SearchHit",
    "SearchOutput",
    "default_candidates",
    "model_record",
    "preprocessing_record",
]

FORMAT = "hf_mltm.gallery_index"
FORMAT_VERSION = 1
MANIFEST_NAME = "index.json"
GALLERY_DIR = "gallery"
FAISS_FILE = "index.faiss"
TENSORS_FILE = "index.safetensors"
EMBEDDING_COLUMN = "embeddings"
INDEX_NAME = "embeddings"
INDEX_TYPES = ("auto", "flat", "ivf", "hnsw")
EXACT_MAX_ITEMS = 50_000
DEFAULT_MAX_CANDIDATES = 8192
_ADD_BATCH_SIZE = 10_000
_TRANSFORM_BATCH = 65_536
# Searches of fewer queries run on one OpenMP thread: a team of threads buys nothing for one query (faiss splits
# work by query) and, on a busy machine, its spin-waits made single-query latency 5x worse in our measurements.
_SINGLE_THREAD_BELOW = 8


# ---------------------------------------------------------------------------------------------------------------
# Settings and results
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexSettings:
    """Which faiss index to build, and its parameters (module docstring).

    Args:
        index_type (`str`): ``"auto"``, ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        nlist (`int`, *optional*): IVF cells (default: power of two nearest ``2 sqrt(N)``, at most ``N / 40``).
        nprobe (`int`, *optional*): IVF cells scanned per query (default ``max(16, nlist / 16)``, at most ``nlist``).
        hnsw_m (`int`): HNSW links per node.
        ef_construction (`int`), ef_search (`int`): HNSW beam widths when building and searching.
        train_size (`int`, *optional*): items sampled to train IVF (default ``40 * nlist``, at most ``N``).
        seed (`int`): seed of the training sample and of k-means.
    """

    index_type: str = "auto"
    nlist: int | None = None
    nprobe: int | None = None
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    train_size: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type={self.index_type!r} is not one of {INDEX_TYPES}.")
        for name in ("nlist", "nprobe", "train_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}.")
        for name in ("hnsw_m", "ef_construction", "ef_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}.")

    def resolve(self, num_items: int) -> IndexSettings:
        """These settings with ``"auto"`` and every default filled in for a gallery of ``num_items`` items."""
        index_type = self.index_type
        if index_type == "auto":
            index_type = "flat" if num_items <= EXACT_MAX_ITEMS else "ivf"
        if index_type != "ivf":
            return replace(self, index_type=index_type, nlist=None, nprobe=None, train_size=None)
        most = max(1, num_items // 40)
        nlist = self.nlist
        if nlist is None:
            nlist = min(most, 2 ** max(0, round(math.log2(max(1.0, 2 * math.sqrt(num_items))))))
        if nlist > num_items:
            raise ValueError(f"nlist={nlist} exceeds the gallery's {num_items} items; use fewer IVF cells or 'flat'.")
        nprobe = min(nlist, self.nprobe if self.nprobe is not None else max(16, nlist // 16))
        train_size = min(num_items, self.train_size if self.train_size is not None else 40 * nlist)
        if train_size < nlist:
            raise ValueError(f"train_size={train_size} is below nlist={nlist}: k-means needs a point per cell.")
        return replace(self, index_type=index_type, nlist=nlist, nprobe=nprobe, train_size=train_size)


def default_candidates(num_items: int) -> int:
    """The first number of candidates OT re-ranking takes per query: ``2 sqrt(N)``, at least 100, at most ``N``.

    The certificate of `rerank_candidates` needs the candidates' cost range to exceed the spread of ``g``; in the
    benchmark (docs/index.md) the candidates it needed grew like ``sqrt(N)`` (about 200, 400 and 1600 at 10k, 100k
    and 1M items), and a second, wider search costs as much as the first.
    """
    return int(min(num_items, max(100, round(2 * math.sqrt(num_items)))))


class SearchOutput(NamedTuple):
    """Raw results of `GalleryIndex.search_embeddings`, best first.

    Attributes:
        rows (`np.ndarray` of shape `(q, k)`, int64): gallery rows (-1 where fewer than ``k`` were found).
        costs (`np.ndarray` of shape `(q, k)`, float32): the model's cost ``C_ij`` (``inf`` for -1 rows).
        ranking_costs (`np.ndarray` of shape `(q, k)`, float32): what the rows are sorted by: ``C_ij - g_j`` with OT
            re-ranking, else ``C_ij``.
        certified (`np.ndarray` of shape `(q,)`, bool): with OT re-ranking, whether the candidate certificate held
            (`rerank_candidates`); all `True` without.
        num_candidates (`np.ndarray` of shape `(q,)`, int64): candidates re-ranked per query (``k`` without).
    """

    rows: np.ndarray
    costs: np.ndarray
    ranking_costs: np.ndarray
    certified: np.ndarray
    num_candidates: np.ndarray


@dataclass
class SearchHit:
    """One result of `GalleryIndex.search`.

    Attributes:
        row (`int`): the item's row in the gallery.
        item_id (`str`): its ``item_id`` column (the row number as text when the gallery has none).
        cost (`float`): the model's cost between the query and the item (lower is better).
        ranking_cost (`float`): what the results are sorted by: ``cost - g_j`` with OT re-ranking, else ``cost``.
        item (`dict`): the item's other columns (e.g. ``audio``, ``captions``, ``label``), without the embedding.
    """

    row: int
    item_id: str
    cost: float
    ranking_cost: float
    item: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Model and preprocessing records
# ---------------------------------------------------------------------------------------------------------------


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def _jsonable(value: Any) -> Any:
    return json.loads(_canonical_json(value))


def model_record(model: torch.nn.Module, model_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """What identifies the model that embedded a gallery: its folder, type, config hash and fingerprint.

    Args:
        model: the model (an `MLTMAudioTextModel`).
        model_path (`str`, *optional*): its folder (default: ``model.name_or_path`` when it is a folder).

    Returns:
        `dict`: ``path`` (absolute, or `None`), ``model_type``, ``config_sha256`` (sha256 of the canonical JSON of the
        config without load paths and library versions) and ``fingerprint`` (`hf_mltm.feature_cache.tower_fingerprint`:
        class, config and every weight).
    """
    from hf_mltm.feature_cache import VOLATILE_CONFIG_KEYS, tower_fingerprint

    def without_volatile(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {key: without_volatile(item) for key, item in value.items() if key not in VOLATILE_CONFIG_KEYS}
        if isinstance(value, (list, tuple)):
            return [without_volatile(item) for item in value]
        return value

    if model_path is None:
        candidate = getattr(model, "name_or_path", "") or ""
        model_path = candidate if candidate and Path(candidate).is_dir() else None
    config = without_volatile(model.config.to_dict())
    return {
        "path": str(Path(model_path).resolve()) if model_path is not None else None,
        "model_type": model.config.model_type,
        "config_sha256": hashlib.sha256(_canonical_json(config).encode("utf-8")).hexdigest(),
        "fingerprint": tower_fingerprint(model),
    }


def preprocessing_record(model: torch.nn.Module, processor: Any) -> dict[str, Any]:
    """The settings that turn a clip or a caption into the model's input: the feature extractor's (or image
    processor's) dict, the tokenizer's definition and the text settings of the family adapter. A query embedded with
    other settings than the gallery would be compared with vectors of another function."""
    from hf_mltm.adapters import get_adapter

    record: dict[str, Any] = {}
    for name in ("feature_extractor", "image_processor"):
        part = getattr(processor, name, None)
        if part is not None:
            # auto_map only says where the class lives for trust_remote_code; a processor saved to a folder and
            # loaded again gains entries there without computing anything differently.
            record[name] = {key: value for key, value in part.to_dict().items() if key != "auto_map"}
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        record["tokenizer"] = _tokenizer_record(tokenizer)
    record["text_settings"] = get_adapter(model).text_settings(model)
    return _jsonable(record)


def _tokenizer_record(tokenizer: Any) -> dict[str, Any]:
    """The tokenizer's class, length limit and a digest of its definition (vocabulary, normaliser, pre-tokenizer,
    post-processor). The truncation and padding state of a fast tokenizer is left out: calls set it (the text tower
    passes ``padding``/``truncation`` explicitly), so it differs between a fresh tokenizer and a used one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = json.loads(backend.to_str())
        for key in ("truncation", "padding"):
            definition.pop(key, None)
        text = _canonical_json(definition)
    else:
        text = _canonical_json(sorted(tokenizer.get_vocab().items()))
    return {"class": type(tokenizer).__name__, "definition_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
            "model_max_length": getattr(tokenizer, "model_max_length", None)}


def _adapter_record(model: torch.nn.Module) -> dict[str, Any]:
    from hf_mltm.adapters import get_adapter

    adapter = get_adapter(model)
    return {"model_type": adapter.model_type, "class": f"{type(adapter).__module__}.{type(adapter).__qualname__}",
            "item_column": adapter.item_column, "item_name": adapter.item_name}


# ---------------------------------------------------------------------------------------------------------------
# The index
# ---------------------------------------------------------------------------------------------------------------


class GalleryIndex:
    """A searchable gallery: items, their model embeddings, a faiss index in the model's cost and, optionally, the
    column potentials for OT re-ranking (module docstring).

    Build one with `GalleryIndex.build` (embeddings already computed) or `GalleryIndex.from_model` (embeds the items
    with the model, through the feature cache), or `GalleryIndex.load` a saved one.

    Attributes:
        items (`datasets.Dataset`): the gallery rows with their ``"embeddings"`` column ``(N, d)`` (float32).
        space ([`IndexSpace`]): how the model's cost maps to the faiss metric.
        settings ([`IndexSettings`]): the resolved index settings.
        potentials ([`ColumnPotentials`] or `None`): ``g`` for OT re-ranking.
        model, processor: used to embed text or audio queries (`None` for a vectors-only index).
        manifest (`dict`): model, preprocessing and adapter records, ranking settings and the build report.

    Example:
        >>> index = GalleryIndex.from_model(model, processor, items, cache_dir="runs/cache")  # doctest: +SKIP
        >>> index.fit_potentials(captions)  # doctest: +SKIP
        >>> [(hit.item_id, round(hit.cost, 3)) for hit in index.search("a dog barks", k=3)]  # doctest: +SKIP
        >>> index.save("runs/esc50_index"); GalleryIndex.load("runs/esc50_index")  # doctest: +SKIP
    """

    def __init__(
        self,
        items: Any,
        searchable: Any,
        space: IndexSpace,
        settings: IndexSettings,
        *,
        potentials: ColumnPotentials | None = None,
        model: torch.nn.Module | None = None,
        processor: Any = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        self.items = items
        self._searchable = searchable
        self.space = space
        self.settings = settings
        self.model = model
        self.processor = processor
        self.manifest: dict[str, Any] = dict(manifest or {})
        self.potentials: ColumnPotentials | None = None
        if potentials is not None:
            self.set_potentials(potentials)

    def __len__(self) -> int:
        return len(self.items)

    def __repr__(self) -> str:
        return (f"GalleryIndex(num_items={len(self)}, space={self.space.kind!r}, index_type="
                f"{self.settings.index_type!r}, potentials={'yes' if self.potentials is not None else 'no'})")

    @property
    def faiss_index(self):
        """The underlying faiss index (an ``IndexPreTransform`` around the flat / IVF / HNSW index, except for a
        Euclidean space)."""
        return self._searchable.get_index(INDEX_NAME).faiss_index

    @property
    def ranking_settings(self) -> dict[str, Any]:
        """``{"epsilon", "normalization"}`` of the model's transductive OT ranking (defaults 0.05, ``"batch_max"``)."""
        return dict(self.manifest.get("ranking_settings") or {"epsilon": 0.05, "normalization": "batch_max"})

    # -- building -------------------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        items: Any,
        space: IndexSpace,
        *,
        embeddings: torch.Tensor | np.ndarray | None = None,
        settings: IndexSettings | None = None,
        model: torch.nn.Module | None = None,
        processor: Any = None,
        model_path: str | os.PathLike | None = None,
        progress: bool = False,
    ) -> GalleryIndex:
        """Index a gallery whose embeddings are already computed.

        Args:
            items (`datasets.Dataset`): one row per item (any columns; ``item_id`` names the hits), with an
                ``"embeddings"`` column ``(N, d)`` unless ``embeddings`` is given.
            space ([`IndexSpace`]): the model's space (`IndexSpace.from_model`).
            embeddings (`torch.Tensor` or `np.ndarray` of shape `(N, d)`, *optional*): the items' model embeddings
                (stored as the ``"embeddings"`` column, float32).
            settings ([`IndexSettings`], *optional*): index type and parameters (default: ``"auto"``).
            model, processor (*optional*): to embed queries later; recorded in the manifest with
                ``model_path``.
            progress (`bool`): show datasets' progress bar while adding the vectors.

        Returns:
            `GalleryIndex` (without potentials: see `fit_potentials`).

        Raises:
            ValueError: no or a malformed embedding column, NaN/inf embeddings, an empty gallery, bad settings.
        """
        import datasets

        if not isinstance(items, datasets.Dataset):
            raise ValueError(
                f"items must be a datasets.Dataset (one row per gallery item), got {type(items).__name__}."
            )
        if len(items) == 0:
            raise ValueError("items is empty: a gallery index needs at least one item.")
        if embeddings is not None:
            items = _with_embeddings(items, space.check_embeddings(embeddings, "embeddings"))
        elif EMBEDDING_COLUMN not in items.column_names:
            raise ValueError(
                f"items has no {EMBEDDING_COLUMN!r} column (columns {items.column_names}); pass embeddings=(N, d) or "
                f"use GalleryIndex.from_model."
            )
        else:
            _check_embedding_feature(items, space.dim)
            _check_finite_embeddings(items)
            items = _without_indices_mapping(items)
        settings = (settings or IndexSettings()).resolve(len(items))
        started = time.perf_counter()
        index = _new_faiss_index(space, settings)
        if not index.is_trained:
            rng = np.random.default_rng(settings.seed)
            sample = np.sort(rng.choice(len(items), size=settings.train_size, replace=False))
            index.train(_embedding_rows(items, sample))
        trained = time.perf_counter()
        searchable = datasets.Dataset(items.data, info=items.info.copy(), split=items.split)
        with _progress_bars(progress):
            searchable.add_faiss_index(column=EMBEDDING_COLUMN, index_name=INDEX_NAME, custom_index=index,
                                       batch_size=_ADD_BATCH_SIZE)
        manifest: dict[str, Any] = {
            "build": {"train_seconds": round(trained - started, 3),
                      "add_seconds": round(time.perf_counter() - trained, 3),
                      "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
        }
        if model is not None:
            from hf_mltm.adapters import get_adapter

            manifest["model"] = model_record(model, model_path)
            manifest["adapter"] = _adapter_record(model)
            manifest["ranking_settings"] = get_adapter(model).ranking_settings(model)
            if processor is not None:
                manifest["preprocessing"] = preprocessing_record(model, processor)
        return cls(items, searchable, space, settings, model=model, processor=processor, manifest=manifest)

    @classmethod
    def from_model(
        cls,
        model: torch.nn.Module,
        processor: Any,
        items: Any,
        *,
        settings: IndexSettings | None = None,
        cache_dir: str | os.PathLike | None = None,
        batch_size: int = 32,
        device: str | torch.device | None = None,
        model_path: str | os.PathLike | None = None,
        progress: bool = True,
    ) -> GalleryIndex:
        """Embed ``items`` with ``model`` (frozen tower outputs through the feature cache when ``cache_dir`` is
        given) and index them.

        Args:
            model (`MLTMAudioTextModel`): the model; its adapter encodes the items.
            processor: the model's processor.
            items (`datasets.Dataset`): items view (the ``audio`` column; other columns are kept).
            settings ([`IndexSettings`], *optional*): index type and parameters.
            cache_dir (`str`, *optional*): `hf_mltm.feature_cache.FeatureCache` folder (e.g. filled by several
                processes with `hf_mltm.index.fill_item_cache`).
            batch_size (`int`), device, progress: as `ModelAdapter.encode_items`.
            model_path (`str`, *optional*): the model's folder, for the manifest.

        Raises:
            ValueError: as `IndexSpace.from_model` and `build`.
        """
        from hf_mltm.adapters import get_adapter

        space = IndexSpace.from_model(model)
        adapter = get_adapter(model)
        encoded = adapter.encode_items(model, items, processor, batch_size=batch_size, device=device,
                                       progress=progress, cache_dir=cache_dir)
        return cls.build(items, space, embeddings=encoded.tensors["embeds"], settings=settings, model=model,
                         processor=processor, model_path=model_path, progress=progress)

    # -- potentials -----------------------------------------------------------------------------------------------

    def set_potentials(self, potentials: ColumnPotentials | None) -> None:
        """Attach (or with `None` drop) column potentials; they must have one entry per gallery item."""
        if potentials is not None:
            if not isinstance(potentials, ColumnPotentials):
                raise ValueError(f"potentials must be a ColumnPotentials, got {type(potentials).__name__}.")
            if len(potentials.g) != len(self):
                raise ValueError(
                    f"potentials have {len(potentials.g)} entries but the gallery has {len(self)} items; estimate "
                    f"them for this gallery (fit_potentials)."
                )
        self.potentials = potentials

    def index_vectors(self, rows: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """The gallery's vectors in index space ``(n, r)`` (all rows, or ``rows``), computed in blocks."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        blocks = [
            self.space.to_index(torch.from_numpy(_embedding_rows(self.items, rows[start : start + _TRANSFORM_BATCH])))
            for start in range(0, len(rows), _TRANSFORM_BATCH)
        ]
        return torch.cat(blocks) if blocks else torch.zeros(0, self.space.index_dim)

    def fit_potentials(
        self,
        queries: torch.Tensor | np.ndarray | Sequence[str],
        *,
        epsilon: float | None = None,
        normalization: str | None = None,
        max_queries: int | None = None,
        seed: int = 0,
        max_iter: int = 100,
        tol: float = 1e-6,
        source: str | None = None,
        batch_size: int = 32,
        cache_dir: str | os.PathLike | None = None,
        **solver_kwargs: Any,
    ) -> ColumnPotentials:
        """Estimate and attach the gallery's column potentials from a query sample (`estimate_column_potentials`).

        Args:
            queries: texts (embedded with the index's model) or query embeddings ``(n, d)`` in model space.
            epsilon (`float`, *optional*), normalization (`str`, *optional*): default to `ranking_settings` (the
                model's ``ot_epsilon`` and ``cost_normalization``), i.e. those of its exact transductive ranking.
            max_queries (`int`, *optional*): use a seeded random sample of at most this many queries.
            seed (`int`): seed of that sample.
            max_iter (`int`), tol (`float`): Sinkhorn stopping rule.
            source (`str`, *optional*): a note on the queries (default: their count).
            batch_size (`int`), cache_dir: for embedding texts.
            solver_kwargs: ``block_bytes``, ``cache_bytes`` of `estimate_column_potentials`.

        Returns:
            [`ColumnPotentials`], also stored as ``self.potentials``.
        """
        total = len(queries)
        if total == 0:
            raise ValueError("fit_potentials: queries is empty; give texts or (n, d) query embeddings.")
        chosen = np.arange(total)
        if max_queries is not None:
            if isinstance(max_queries, bool) or not isinstance(max_queries, int) or max_queries < 1:
                raise ValueError(f"fit_potentials: max_queries must be a positive int, got {max_queries!r}.")
            if max_queries < total:
                chosen = np.sort(np.random.default_rng(seed).choice(total, size=max_queries, replace=False))
        if _is_texts(queries):
            texts = [queries[i] for i in chosen]
            embeds = self._encode_texts(texts, batch_size=batch_size, cache_dir=cache_dir)
        else:
            embeds = self.space.check_embeddings(queries, "queries")[torch.from_numpy(chosen)]
        settings = self.ranking_settings
        potentials = estimate_column_potentials(
            self.space.to_index(embeds), self.index_vectors(), self.space.index_cost,
            epsilon=settings["epsilon"] if epsilon is None else float(epsilon),
            normalization=settings["normalization"] if normalization is None else normalization,
            max_iter=max_iter, tol=tol,
            source=source if source is not None else f"{len(chosen)} of {total} queries",
            **solver_kwargs,
        )
        self.set_potentials(potentials)
        return potentials

    # -- searching ------------------------------------------------------------------------------------------------

    def search_embeddings(
        self,
        query_embeds: torch.Tensor | np.ndarray,
        k: int = 10,
        *,
        rerank: bool = False,
        candidates: int | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> SearchOutput:
        """The ``k`` best gallery rows for each query embedding (model space).

        Without ``rerank``: the index's nearest neighbours by the model's cost. With ``rerank``: the ``candidates``
        nearest are re-ranked by ``C_ij - g_j`` (`rerank_candidates`); queries whose certificate fails are searched
        again with four times as many candidates, up to ``max_candidates`` (so on an exact index the result equals the
        ranking by ``C - g`` over the whole gallery for every certified query).

        Args:
            query_embeds (`torch.Tensor` or `np.ndarray` of shape `(q, d)`): query embeddings (e.g. text embeddings).
            k (`int`): results per query.
            rerank (`bool`): apply OT re-ranking (needs `potentials`).
            candidates (`int`, *optional*): first candidate count per query (default `default_candidates`: about
                ``2 sqrt(N)``, which was certified for every query of the benchmark at 10k, 100k and 1M items, so most
                queries need a single search).
            max_candidates (`int`): the largest candidate count per query.

        Returns:
            [`SearchOutput`].

        Raises:
            ValueError: bad ``k``/candidate counts, embeddings of the wrong shape or with NaN, ``rerank`` without
                potentials.
        """
        queries = self.space.check_embeddings(query_embeds, "query_embeds").numpy()
        if candidates is None:
            candidates = default_candidates(len(self))
        for name, value in (("k", k), ("candidates", candidates), ("max_candidates", max_candidates)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"search: {name} must be a positive int, got {value!r}.")
        count = len(self)
        if not rerank:
            rows, costs = self._nearest(queries, min(k, count))
            rows, costs = _pad(rows, k, -1), _pad(costs, k, np.inf)
            return SearchOutput(rows, costs, costs.copy(), np.ones(len(queries), bool),
                                np.full(len(queries), min(k, count), np.int64))
        if self.potentials is None:
            raise ValueError("search: rerank=True needs the gallery's column potentials; call fit_potentials(queries) "
                             "first (or build the index with potentials).")
        g = self.potentials.g.numpy()
        out_rows = np.full((len(queries), k), -1, np.int64)
        out_costs = np.full((len(queries), k), np.inf, np.float32)
        out_ranking = np.full((len(queries), k), np.inf, np.float32)
        certified = np.zeros(len(queries), bool)
        used = np.zeros(len(queries), np.int64)
        pending = np.arange(len(queries))
        width = min(count, max(k, candidates))
        cap = min(count, max(width, max_candidates))
        while len(pending):
            rows, costs = self._nearest(queries[pending], width)
            complete = (width >= count) & (rows >= 0).all(1)
            result = rerank_candidates(costs, rows, g, k, complete=complete)
            out_rows[pending], out_costs[pending], out_ranking[pending] = result.rows, result.costs, \
                result.ranking_costs
            certified[pending], used[pending] = result.certified, width
            pending = pending[~result.certified]
            if width >= cap:
                break
            width = min(cap, width * 4)
        return SearchOutput(out_rows, out_costs, out_ranking, certified, used)

    def search(
        self,
        query: Any,
        k: int = 10,
        *,
        rerank: bool | None = None,
        candidates: int | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> list[SearchHit]:
        """The ``k`` best items for one query: a text, or an audio clip (query by example).

        Args:
            query: a caption (`str`), or audio: a file path (`pathlib.Path`), encoded bytes, ``{"array",
                "sampling_rate"}`` or ``{"path"}`` / ``{"bytes"}`` (as a dataset's audio column holds them). A `str`
                is always a text; pass audio files as `pathlib.Path`.
            k (`int`): results.
            rerank (`bool`, *optional*): OT re-ranking; defaults to on for text queries when the index has potentials.
                The potentials are those of text queries, so audio queries are never re-ranked.
            candidates (`int`), max_candidates (`int`): see `search_embeddings`.

        Returns:
            `list[SearchHit]`, best first (at most ``k``).

        Raises:
            ValueError: no model to embed the query with (load the index with its model), an unusable query, or
                ``rerank=True`` for audio or without potentials.
        """
        return self.search_batch([query], k, rerank=rerank, candidates=candidates, max_candidates=max_candidates)[0]

    def search_batch(
        self,
        queries: Sequence[Any],
        k: int = 10,
        *,
        rerank: bool | None = None,
        candidates: int | None = None,
        max_candidates: int = DEFAULT_MAX_CANDIDATES,
    ) -> list[list[SearchHit]]:
        """`search` for several queries of one kind (all texts or all audio), embedded in one batch."""
        if isinstance(queries, (str, bytes, Mapping)) or not isinstance(queries, Sequence) or not queries:
            raise ValueError("search_batch: queries must be a non-empty list of texts or of audio values.")
        texts = _is_texts(queries)
        if not texts and any(isinstance(query, str) for query in queries):
            raise ValueError("search_batch: mix of texts and audio; search them separately (audio files as Path).")
        if rerank is None:
            rerank = texts and self.potentials is not None
        if rerank and not texts:
            raise ValueError("search: OT re-ranking applies to text queries (the potentials were estimated for text "
                             "queries against the gallery); search audio with rerank=False.")
        embeds = self._encode_texts(list(queries)) if texts else self._encode_audio(list(queries))
        output = self.search_embeddings(embeds, k, rerank=rerank, candidates=candidates, max_candidates=max_candidates)
        return self.hits(output)

    def hits(self, output: SearchOutput) -> list[list[SearchHit]]:
        """`SearchOutput` rows -> `SearchHit` lists with the items' columns (the embedding left out)."""
        columns = [name for name in self.items.column_names if name != EMBEDDING_COLUMN]
        found = sorted({int(row) for row in output.rows.reshape(-1) if row >= 0})
        table = self.items.select_columns(columns)[found] if found else {name: [] for name in columns}
        by_row = {row: {name: table[name][position] for name in columns} for position, row in enumerate(found)}
        results = []
        for rows, costs, ranking in zip(output.rows, output.costs, output.ranking_costs, strict=True):
            hits = []
            for row, cost, ranked in zip(rows.tolist(), costs.tolist(), ranking.tolist(), strict=True):
                if row < 0:
                    continue
                item = by_row[row]
                hits.append(SearchHit(row, str(item.get("item_id", row)), float(cost), float(ranked), dict(item)))
            results.append(hits)
        return results

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """faiss's ``k`` nearest rows ``(q, k)`` and their model costs (``inf`` for empty slots)."""
        with _faiss_threads(1 if len(queries) < _SINGLE_THREAD_BELOW else None):
            result = self._searchable.search_batch(INDEX_NAME, np.ascontiguousarray(queries, dtype=np.float32), k=k)
        rows = np.asarray(result.total_indices, dtype=np.int64)
        costs = self.space.cost_from_scores(result.total_scores)
        return rows, np.where(rows >= 0, costs, np.inf).astype(np.float32)

    # -- embedding queries ----------------------------------------------------------------------------------------

    def _require_model(self, what: str) -> None:
        if self.model is None or self.processor is None:
            raise ValueError(
                f"this GalleryIndex has no model/processor to embed {what}; load it with GalleryIndex.load(folder) "
                f"(which loads the model recorded in index.json) or pass model= and processor=, or search with "
                f"search_embeddings."
            )

    def _encode_texts(self, texts: list[str], *, batch_size: int = 32, cache_dir: Any = None) -> torch.Tensor:
        from hf_mltm.adapters import get_adapter

        from .embedding import prime_tokenizer

        self._require_model("text queries")
        prime_tokenizer(self.processor)  # the same feature-cache folder in every process (see prime_tokenizer)
        encoded = get_adapter(self.model).encode_texts(self.model, texts, self.processor, batch_size=batch_size,
                                                       progress=False, cache_dir=cache_dir)
        return encoded.tensors["embeds"]

    def _encode_audio(self, values: list[Any]) -> torch.Tensor:
        from hf_mltm.adapters import get_adapter

        self._require_model("audio queries")
        adapter = get_adapter(self.model)
        values = [str(value) if isinstance(value, Path) else value for value in values]
        encoded = adapter.encode_items(self.model, {adapter.item_column: values}, self.processor, progress=False)
        return encoded.tensors["embeds"]

    # -- saving and loading ---------------------------------------------------------------------------------------

    def to_manifest(self) -> dict[str, Any]:
        """The ``index.json`` content."""
        return {
            **self.manifest,
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "num_items": len(self),
            "embedding_column": EMBEDDING_COLUMN,
            "space": self.space.to_manifest(),
            "index": {**asdict(self.settings), "faiss_class": type(self.faiss_index).__name__},
            "ranking_settings": self.ranking_settings,
            "potentials": self.potentials.to_manifest() if self.potentials is not None else None,
        }

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the index to ``folder`` (layout in the module docstring). Other files in ``folder`` are left alone;
        ``index.json`` is removed first and written last, so an interrupted save leaves no loadable half-index.

        Returns:
            `Path`: the folder.
        """
        from safetensors.torch import save_file

        folder = Path(folder)
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"save: {folder} is a file; give a folder for the index.")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / MANIFEST_NAME).unlink(missing_ok=True)
        token = secrets.token_hex(4)
        staging = folder / f".{GALLERY_DIR}.tmp-{token}"
        with _progress_bars(False):
            self.items.save_to_disk(str(staging))
        if (folder / GALLERY_DIR).exists():
            shutil.rmtree(folder / GALLERY_DIR)
        os.replace(staging, folder / GALLERY_DIR)
        self._searchable.save_faiss_index(INDEX_NAME, str(folder / FAISS_FILE))
        tensors = {}
        if self.space.transform is not None:
            tensors["transform"] = self.space.transform
        if self.potentials is not None:
            tensors["potential_g"] = self.potentials.g
        save_file(tensors, str(folder / TENSORS_FILE), metadata={"format": FORMAT})
        text = json.dumps(_jsonable(self.to_manifest()), indent=2, sort_keys=True) + "\n"
        temporary = folder / f".{MANIFEST_NAME}.tmp-{token}"
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, folder / MANIFEST_NAME)
        return folder

    @classmethod
    def load(
        cls,
        folder: str | os.PathLike,
        *,
        model: torch.nn.Module | None = None,
        processor: Any = None,
        load_model: bool = True,
        device: str | torch.device | None = None,
    ) -> GalleryIndex:
        """Load a saved index, with the model recorded in its manifest to embed queries.

        Args:
            folder (`str`): the index folder (`save`).
            model, processor (*optional*): use these instead of loading the manifest's model folder; they must be
                the model the gallery was embedded with (same config hash and fingerprint) and the same preprocessing.
            load_model (`bool`): load the manifest's model (``AutoModel``/``AutoProcessor``) when none is given; with
                `False` the index searches embeddings only (`search_embeddings`).
            device: where to put a loaded model.

        Raises:
            ValueError: a missing or malformed file (named), or a model / processor that is not the one recorded.
        """
        import datasets
        from safetensors import safe_open

        folder = Path(folder)
        manifest_path = folder / MANIFEST_NAME
        if not manifest_path.is_file():
            raise ValueError(f"GalleryIndex.load: {manifest_path} not found; give a folder written by "
                             f"GalleryIndex.save or scripts/index.py.")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise ValueError(f"GalleryIndex.load: {manifest_path} is not readable JSON ({error}).") from error
        where = str(manifest_path)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            got = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
            raise ValueError(f"{where}: field 'format' is {got!r}, expected {FORMAT!r}.")
        if manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{where}: field 'version' is {manifest.get('version')!r}; this hf_mltm reads version "
                             f"{FORMAT_VERSION}. Rebuild the index with scripts/index.py.")
        for name in ("num_items", "space", "index"):
            if name not in manifest:
                raise ValueError(f"{where}: required field {name!r} is missing; rebuild the index.")
        tensors: dict[str, torch.Tensor] = {}
        tensors_path = folder / TENSORS_FILE
        try:
            with safe_open(str(tensors_path), framework="pt") as handle:
                tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        except Exception as error:  # safetensors raises several types for missing and damaged files
            raise ValueError(f"GalleryIndex.load: cannot read {tensors_path} ({error}).") from error
        space = IndexSpace.from_manifest(manifest["space"], tensors.get("transform"), where)
        index_entry = {key: value for key, value in manifest["index"].items() if key != "faiss_class"}
        try:
            settings = IndexSettings(**index_entry)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where}: field 'index' is invalid ({error}).") from error
        try:
            items = datasets.load_from_disk(str(folder / GALLERY_DIR))
        except (FileNotFoundError, ValueError) as error:
            raise ValueError(f"GalleryIndex.load: cannot load the gallery {folder / GALLERY_DIR} ({error}).") from error
        if len(items) != manifest["num_items"]:
            raise ValueError(f"{where}: num_items is {manifest['num_items']} but {folder / GALLERY_DIR} has "
                             f"{len(items)} rows; the folder mixes two indexes: rebuild it.")
        _check_embedding_feature(items, space.dim)
        searchable = datasets.Dataset(items.data, info=items.info.copy(), split=items.split)
        faiss_path = folder / FAISS_FILE
        if not faiss_path.is_file():
            raise ValueError(f"GalleryIndex.load: {faiss_path} not found; rebuild the index.")
        try:
            searchable.load_faiss_index(INDEX_NAME, str(faiss_path))
        except ValueError as error:
            raise ValueError(f"GalleryIndex.load: {faiss_path}: {error}") from error
        except RuntimeError as error:  # faiss's error for a damaged file
            raise ValueError(f"GalleryIndex.load: {faiss_path} is not a readable faiss index ({error}).") from error
        potentials = None
        if manifest.get("potentials") is not None:
            if "potential_g" not in tensors:
                raise ValueError(f"{where} records potentials but {tensors_path} has no 'potential_g' tensor.")
            potentials = ColumnPotentials.from_manifest(manifest["potentials"], tensors["potential_g"], where)
        if model is None and load_model:
            model, processor = _load_recorded_model(manifest, where, processor, device)
        if model is not None:
            _check_model(model, manifest, where)
            if processor is not None and "preprocessing" in manifest:
                _check_preprocessing(preprocessing_record(model, processor), manifest["preprocessing"], where)
        index = cls(items, searchable, space, settings, potentials=potentials, model=model, processor=processor,
                    manifest={key: manifest[key] for key in ("build", "model", "adapter", "preprocessing",
                                                               "ranking_settings", "collection")
                              if key in manifest})
        _apply_search_parameters(index.faiss_index, settings)
        return index


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _is_texts(values: Any) -> bool:
    return not isinstance(values, (torch.Tensor, np.ndarray)) and all(isinstance(value, str) for value in values)


def _pad(array: np.ndarray, width: int, value: float) -> np.ndarray:
    if array.shape[1] >= width:
        return array
    return np.pad(array, ((0, 0), (0, width - array.shape[1])), constant_values=value)


def _with_embeddings(items: Any, embeds: torch.Tensor) -> Any:
    """``items`` with the ``"embeddings"`` column ``(N, d)`` (float32 fixed-size lists), replacing any old one."""
    import datasets
    import pyarrow as pa

    if len(embeds) != len(items):
        raise ValueError(f"embeddings has {len(embeds)} rows but items has {len(items)}; give one per item.")
    if EMBEDDING_COLUMN in items.column_names:
        items = items.remove_columns(EMBEDDING_COLUMN)
    values = pa.array(embeds.numpy().reshape(-1), type=pa.float32())
    column = datasets.Dataset(pa.table({EMBEDDING_COLUMN: pa.FixedSizeListArray.from_arrays(values, embeds.shape[1])}))
    return datasets.concatenate_datasets([_without_indices_mapping(items), column], axis=1)


def _without_indices_mapping(items: Any) -> Any:
    """``items`` with its rows in table order: after ``select`` or ``shuffle`` a dataset reads its rows through an
    indices mapping, which neither a column added by ``concatenate_datasets(axis=1)`` nor a second dataset built on
    ``items.data`` (the searchable copy) would follow. A dataset without a mapping is returned as is (no copy)."""
    if getattr(items, "_indices", None) is None:  # datasets has no public accessor for the mapping
        return items
    with _progress_bars(False):
        return items.flatten_indices()


def _check_embedding_feature(items: Any, dim: int) -> None:
    feature = items.features.get(EMBEDDING_COLUMN)
    length = getattr(feature, "length", None)
    inner = getattr(getattr(feature, "feature", None), "dtype", None)
    if length != dim or inner != "float32":
        raise ValueError(
            f"the {EMBEDDING_COLUMN!r} column must hold float32 vectors of length {dim} (the model's dimension), got "
            f"{feature}; pass embeddings=(N, {dim}) to GalleryIndex.build."
        )


def _embedding_rows(items: Any, rows: np.ndarray) -> np.ndarray:
    """The model embeddings of ``rows`` ``(n, d)``, float32, C-contiguous."""
    array = items.with_format("numpy")[rows.tolist()][EMBEDDING_COLUMN] if len(rows) else np.zeros((0, 0))
    return np.ascontiguousarray(array, dtype=np.float32)


def _check_finite_embeddings(items: Any) -> None:
    """Reject NaN/inf in the embedding column (read in blocks)."""
    for start in range(0, len(items), _TRANSFORM_BATCH):
        block = _embedding_rows(items, np.arange(start, min(start + _TRANSFORM_BATCH, len(items))))
        bad = ~np.isfinite(block).all(1)
        if bad.any():
            rows = (np.flatnonzero(bad)[:5] + start).tolist()
            raise ValueError(f"the {EMBEDDING_COLUMN!r} column holds NaN or inf in rows {rows}; embed those items "
                             f"again.")


def _new_faiss_index(space: IndexSpace, settings: IndexSettings):
    """An empty faiss index for ``settings`` in ``space`` (the transform inside an ``IndexPreTransform``)."""
    import faiss

    dim = space.index_dim
    metric = faiss.METRIC_INNER_PRODUCT if space.metric == "ip" else faiss.METRIC_L2
    if settings.index_type == "flat":
        inner = faiss.IndexFlatIP(dim) if space.metric == "ip" else faiss.IndexFlatL2(dim)
    elif settings.index_type == "ivf":
        quantizer = faiss.IndexFlatIP(dim) if space.metric == "ip" else faiss.IndexFlatL2(dim)
        inner = faiss.IndexIVFFlat(quantizer, dim, settings.nlist, metric)
        inner.own_fields = True  # the IVF index frees its quantizer
        quantizer.this.disown()
        inner.cp.niter = 10
        inner.cp.seed = settings.seed
        inner.nprobe = settings.nprobe
    else:
        inner = faiss.IndexHNSWFlat(dim, settings.hnsw_m, metric)
        inner.hnsw.efConstruction = settings.ef_construction
        inner.hnsw.efSearch = settings.ef_search
    transform = space.faiss_transform()
    if transform is None:
        return inner
    index = faiss.IndexPreTransform(transform, inner)
    index.own_fields = True  # the wrapper frees the inner index and the transform
    inner.this.disown()
    transform.this.disown()
    return index


def _apply_search_parameters(index, settings: IndexSettings) -> None:
    """Set ``nprobe`` / ``efSearch`` from the settings on a loaded index."""
    import faiss

    if settings.index_type == "ivf":
        faiss.extract_index_ivf(index).nprobe = settings.nprobe
    elif settings.index_type == "hnsw":
        inner = faiss.downcast_index(index.index if isinstance(index, faiss.IndexPreTransform) else index)
        inner.hnsw.efSearch = settings.ef_search


class _faiss_threads:
    """Run faiss with ``count`` OpenMP threads inside the block (`None`: unchanged), restoring the count after."""

    def __init__(self, count: int | None) -> None:
        self.count = count

    def __enter__(self) -> None:
        import faiss

        if self.count is not None:
            self.before = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.count)

    def __exit__(self, *exc: object) -> None:
        import faiss

        if self.count is not None:
            faiss.omp_set_num_threads(self.before)


class _progress_bars:
    """Enable or disable datasets' progress bars inside the block, restoring the previous state after."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __enter__(self) -> None:
        import datasets

        self.was_disabled = datasets.are_progress_bars_disabled()
        (datasets.enable_progress_bars if self.enabled else datasets.disable_progress_bars)()

    def __exit__(self, *exc: object) -> None:
        import datasets

        (datasets.disable_progress_bars if self.was_disabled else datasets.enable_progress_bars)()


def _load_recorded_model(manifest: dict[str, Any], where: str, processor: Any, device: Any):
    from transformers import AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401  (registers the model types with the Auto classes)

    path = (manifest.get("model") or {}).get("path")
    if not path:
        return None, processor
    if not Path(path).is_dir():
        raise ValueError(f"{where}: the model folder {path} recorded in field 'model.path' does not exist; pass "
                         f"model= and processor= (the same model), or load_model=False to search embeddings only.")
    model = AutoModel.from_pretrained(path).eval()
    if device is not None:
        model = model.to(device)
    return model, processor if processor is not None else AutoProcessor.from_pretrained(path)


def _check_model(model: torch.nn.Module, manifest: dict[str, Any], where: str) -> None:
    recorded = manifest.get("model")
    if not recorded:
        return
    current = model_record(model)
    for key in ("model_type", "config_sha256", "fingerprint"):
        if recorded.get(key) != current[key]:
            raise ValueError(
                f"{where}: the gallery was embedded with another model (field 'model.{key}' is "
                f"{recorded.get(key)!r}, this model has {current[key]!r}); load the model of "
                f"{recorded.get('path')} or rebuild the index with this one."
            )


def _check_preprocessing(current: dict[str, Any], recorded: Any, where: str) -> None:
    if current == recorded:
        return
    keys = sorted({*current, *(recorded if isinstance(recorded, dict) else {})})
    changed = [key for key in keys if not isinstance(recorded, dict) or current.get(key) != recorded.get(key)]
    raise ValueError(f"{where}: field 'preprocessing' differs from the processor given (entries {changed}); queries "
                     f"must be embedded with the preprocessing of the gallery: use the model folder's processor.")
