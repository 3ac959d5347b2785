"""Text search of the Space over a saved gallery index (`hf_mltm.index.GalleryIndex`, built by ``scripts/index.py``).

Given ``HF_MLTM_SPACE_INDEX=<folder>``, tab 1 searches that index instead of the small in-memory gallery: a query runs
``index.search(query, k, rerank=...)``, i.e. the index's nearest items by the model's own cost (exact for a ``flat``
index), optionally re-ranked by ``C_ij - g_j`` with the gallery potentials ``g`` stored in the index (see
docs/index.md, "OT re-ranking at scale"). The hits are the index's items; an item gets an audio player when its
``audio`` column names a file that exists on this machine, and is shown by id, path and score otherwise.

The index must have been embedded by the Space's model with the Space's preprocessing: `IndexedGallery.load`
compares the model and preprocessing records of the index's ``index.json`` with the loaded model and processor and
refuses a mismatch before any query is answered (a query embedded by another model would be compared with vectors of
another function, and every ranking would be silently wrong).

Letters: ``N`` indexed items, ``k`` results per query.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hf_mltm.evaluation.ranking import check_ranking_mode

from .limits import DEFAULT_LIMITS, InputLimits, SpaceInputError, check_query
from .loading import SpaceSetupError, resolve_index_folder

if TYPE_CHECKING:
    from hf_mltm.index import GalleryIndex

__all__ = ["INDEX_RANKING_LABELS", "IndexHit", "IndexedGallery", "audio_location", "check_index_model",
           "load_index_setting"]

INDEX_RANKING_LABELS = {"distance": "distance (cost)", "ot": "OT re-ranking with the index's gallery potentials"}
_MODEL_FIELDS = ("model_type", "config_sha256", "fingerprint")


@dataclass(frozen=True)
class IndexHit:
    """One ranked item of the index for a text query.

    Attributes:
        rank (`int`): 1-based position.
        row (`int`): the item's row in the index's gallery.
        item_id (`str`): the item's ``item_id`` (its row number as text when the gallery has none).
        label (`str`): its ``label`` column, else its first caption, else ``""``.
        location (`str`): where its audio is (the ``audio`` path as stored), or ``""`` when the item names no file.
        audio (`str` or `None`): the audio file when it exists on this machine (gets a player), else `None`.
        cost (`float`): the model's cost between query and item, as the index returns it (lower is better).
        score (`float`): what the ranking sorts by, ascending: ``cost`` (distance) or ``cost - g`` (OT re-ranking).
    """

    rank: int
    row: int
    item_id: str
    label: str
    location: str
    audio: str | None
    cost: float
    score: float

    @property
    def display_name(self) -> str:
        """``"<label> (<item_id>)"``, or the id alone for an unlabelled item."""
        return f"{self.label} ({self.item_id})" if self.label else self.item_id


def audio_location(value: Any) -> str:
    """The file an item's ``audio`` value names: a path (`str` / `os.PathLike`) or a ``{"path": ...}`` mapping as a
    dataset's undecoded audio column holds it; ``""`` when it names none (e.g. bytes only)."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)
    if isinstance(value, Mapping) and isinstance(value.get("path"), (str, os.PathLike)):
        return os.fspath(value["path"])
    return ""


def _label_of(item: Mapping[str, Any]) -> str:
    label = item.get("label")
    if isinstance(label, str):
        return label
    captions = item.get("captions")
    if isinstance(captions, (list, tuple)) and captions and isinstance(captions[0], str):
        return captions[0]
    return ""


def _short(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 16 else text[:12] + "…"


def check_index_model(manifest: Mapping[str, Any], model: Any, processor: Any, *, index_folder: str | os.PathLike,
                      model_location: str) -> None:
    """Refuse an index whose gallery was not embedded by ``model`` with ``processor``'s preprocessing.

    Compares the ``model`` record of the index manifest (model type, config hash, fingerprint of every weight) and its
    ``preprocessing`` record with those of the given model and processor (`hf_mltm.index.model_record`,
    `hf_mltm.index.preprocessing_record`).

    Args:
        manifest (`Mapping`): the index's manifest (``GalleryIndex.manifest`` or ``index.json``).
        model, processor: the Space's audio-text model and processor.
        index_folder (`str`): the index folder (for the message).
        model_location (`str`): where the Space's model comes from (for the message).

    Raises:
        SpaceSetupError (a `ValueError`): the manifest records another model or other preprocessing, or records
            neither (the index cannot be checked); the message names both models and how to fix it.
    """
    from hf_mltm.index import model_record, preprocessing_record

    recorded = manifest.get("model")
    path = (recorded or {}).get("path") if isinstance(recorded, Mapping) else None
    built_with = path or "a model folder the index does not record"
    use_it = f"set HF_MLTM_SPACE_MODEL to {path}" if path else "set HF_MLTM_SPACE_MODEL to the model it was built with"
    rebuild = (f"rebuild the index with this model: python scripts/index.py --model {model_location} "
               f"--dataset <dataset> --output_dir {index_folder}")
    if not isinstance(recorded, Mapping) or not isinstance(manifest.get("preprocessing"), Mapping):
        missing = "model" if not isinstance(recorded, Mapping) else "preprocessing"
        raise SpaceSetupError(
            f"HF_MLTM_SPACE_INDEX={index_folder}: its index.json has no {missing!r} record, so it cannot be checked "
            f"against the Space's model {model_location}; {rebuild}."
        )
    current = model_record(model)
    for key in _MODEL_FIELDS:
        if recorded.get(key) != current[key]:
            raise SpaceSetupError(
                f"HF_MLTM_SPACE_INDEX={index_folder} was built with the model {built_with} but the Space loads "
                f"{model_location} (field 'model.{key}': index {_short(recorded.get(key))!r}, Space "
                f"{_short(current[key])!r}); {use_it}, or {rebuild}."
            )
    preprocessing = preprocessing_record(model, processor)
    if preprocessing != manifest["preprocessing"]:
        changed = sorted(key for key in {*preprocessing, *manifest["preprocessing"]}
                         if preprocessing.get(key) != manifest["preprocessing"].get(key))
        raise SpaceSetupError(
            f"HF_MLTM_SPACE_INDEX={index_folder} was built with the preprocessing of {built_with} but the Space's "
            f"model {model_location} has other settings (field 'preprocessing', entries {changed}); use the "
            f"processor saved with the index's model ({use_it}), or {rebuild}."
        )


class IndexedGallery:
    """The Space's text search over a saved `GalleryIndex`.

    Args:
        index (`GalleryIndex`): the index, with the Space's model and processor attached (to embed queries).
        folder (`str`, *optional*): where it was loaded from (shown in the UI).

    Use `IndexedGallery.load` to load a folder and check it against the Space's model.
    """

    def __init__(self, index: GalleryIndex, *, folder: str | os.PathLike | None = None) -> None:
        if index.model is None or index.processor is None:
            raise ValueError("IndexedGallery: the index has no model/processor to embed text queries; load it with "
                             "IndexedGallery.load(folder, model, processor).")
        self.index = index
        self.folder = str(folder) if folder is not None else None

    @classmethod
    def load(cls, folder: str | os.PathLike, model: Any, processor: Any, *, model_location: str) -> IndexedGallery:
        """Load the index saved in ``folder`` and attach the Space's model and processor to it.

        Args:
            folder (`str`): a folder written by ``scripts/index.py`` or `GalleryIndex.save`.
            model, processor: the Space's audio-text model and processor (`loading.load_audio_text_model`).
            model_location (`str`): where that model comes from (``HF_MLTM_SPACE_MODEL`` or ``runs/demo``), named in
                the error message.

        Raises:
            SpaceSetupError (a `ValueError`): the index was built with another model or other preprocessing (see
                `check_index_model`).
            ValueError: an unreadable index folder (from `GalleryIndex.load`, naming the file).
        """
        from hf_mltm.index import GalleryIndex

        # The index's own model is not loaded: the Space's model is the one checked against the manifest and used.
        index = GalleryIndex.load(folder, load_model=False)
        check_index_model(index.manifest, model, processor, index_folder=folder, model_location=model_location)
        index.model, index.processor = model, processor
        return cls(index, folder=folder)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def has_potentials(self) -> bool:
        """Whether the index holds gallery potentials (OT re-ranking is available)."""
        return self.index.potentials is not None

    @property
    def modes(self) -> tuple[str, ...]:
        """The ranking modes this index supports: ``("distance", "ot")`` with potentials, ``("distance",)`` without."""
        return ("distance", "ot") if self.has_potentials else ("distance",)

    def audio_roots(self) -> list[str]:
        """The existing folders of the items' audio files (the app may serve files from them), sorted."""
        column = self.index.items.select_columns(["audio"])["audio"] if "audio" in self.index.items.column_names \
            else []
        parents = {os.path.dirname(os.path.abspath(location)) for location in map(audio_location, column) if location}
        # Both spellings of each folder: the app may be asked for a file by either (a symlinked data folder).
        parents |= {str(Path(parent).resolve()) for parent in parents}
        return sorted(parent for parent in parents if Path(parent).is_dir())

    def search(self, query: Any, *, mode: str = "distance", top_k: int = 10,
               limits: InputLimits = DEFAULT_LIMITS) -> list[IndexHit]:
        """The ``top_k`` best items of the index for a text query: ``index.search(query, top_k, rerank=mode == "ot")``.

        Args:
            query (`str`): what to look for (checked and whitespace-normalised by `check_query`).
            mode (`str`, defaults to ``"distance"``): ``"distance"`` (nearest by the model's cost) or ``"ot"``
                (re-ranked by ``cost - g`` with the index's potentials).
            top_k (`int`, defaults to 10): how many hits (at most the index size).

        Returns:
            `list[IndexHit]`: best first, with the index's costs and ranking costs unchanged.

        Raises:
            SpaceInputError: an empty or too long query, an unknown mode, ``"ot"`` on an index without potentials,
                or ``top_k < 1``.
        """
        query = check_query(query, limits=limits)
        try:
            check_ranking_mode(mode)
        except ValueError as error:
            raise SpaceInputError(str(error)) from error
        if mode == "ot" and not self.has_potentials:
            raise SpaceInputError("This index has no gallery potentials, so it cannot be OT re-ranked; pick the "
                                  "distance ranking (or rebuild the index with scripts/index.py --potentials "
                                  "captions).")
        if (isinstance(top_k, bool) or not isinstance(top_k, (int, float)) or not math.isfinite(top_k) or top_k < 1
                or top_k != int(top_k)):
            raise SpaceInputError(f"The number of results must be a whole number of at least 1, got {top_k!r}.")
        hits = self.index.search(query, int(top_k), rerank=mode == "ot")
        results = []
        for rank, hit in enumerate(hits, start=1):
            location = audio_location(hit.item.get("audio"))
            audio = location if location and Path(location).is_file() else None
            results.append(IndexHit(rank, hit.row, hit.item_id, _label_of(hit.item), location, audio, hit.cost,
                                    hit.ranking_cost))
        return results


def load_index_setting(model: Any, processor: Any, *, model_location: str,
                       environ: Mapping[str, str] | None = None) -> IndexedGallery | None:
    """The gallery index of the ``HF_MLTM_SPACE_INDEX`` setting, loaded and checked against the Space's model, or
    `None` when the setting is unset (tab 1 then searches the in-memory gallery, as without this feature).

    Args:
        model, processor: the Space's audio-text model and processor.
        model_location (`str`): where that model comes from (named in error messages).
        environ (`Mapping`, *optional*): the settings (default: ``os.environ``).

    Raises:
        SpaceSetupError (a `ValueError`): the setting is not an index folder, or the index was built with another
            model or other preprocessing.
        ValueError: an unreadable index file (named).
    """
    folder = resolve_index_folder(environ)
    if folder is None:
        return None
    print(f"hf_mltm Space: loading the gallery index {folder} (HF_MLTM_SPACE_INDEX)...", flush=True)
    return IndexedGallery.load(folder, model, processor, model_location=model_location)
