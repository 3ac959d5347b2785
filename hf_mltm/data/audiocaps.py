"""AudioCaps from its official CSVs and downloaded clips, or from a parquet dataset repo (Hub or local).

Local layout (https://github.com/cdjkim/audiocaps; the clips must be fetched from YouTube separately)::

    <data_dir>/train.csv, val.csv, test.csv     audiocap_id,youtube_id,start_time,caption
    <data_dir>/audio/{youtube_id}_{start_time}.flac

Rows of the same clip (same ``youtube_id`` and ``start_time``) are grouped into one item, captions in CSV
order; the item id is ``"{youtube_id}_{start_time}"`` (the audio file stem).

Parquet repos (``hub_repo_id=``) must have the columns ``youtube_id``, ``start_time``, ``caption`` and
``audio`` (an `Audio` or ``{"bytes", "path"}`` column), one row per caption. They are loaded with
`datasets.load_dataset`, the audio is kept undecoded (``cast_column("audio", Audio(decode=False))``) and
mapped to the same schema, with ``audio`` a ``{"bytes", "path"}`` dict.

Further keyword arguments go to `datasets.load_dataset` and only with ``hub_repo_id``; with ``data_dir`` any
unknown keyword raises a `ValueError` naming the closest argument of `build_audiocaps`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

from datasets import Audio, Dataset, DatasetDict, List, Value, load_dataset

from hf_mltm.validation import check_known_keys, closest_match, keyword_names

from ._arguments import SPLIT_ALIASES, as_dir, check_common_args, select_splits
from ._assemble import assemble, finish
from ._file_checks import check_audio_header
from ._readers import check_relative_path, read_csv_rows
from .errors import CorruptDataFileError, MissingDataFileError, SkippedFile
from .views import quiet_progress_bars

__all__ = ["AUDIOCAPS_CSVS", "build_audiocaps"]

logger = logging.getLogger("hf_mltm.data")

AUDIOCAPS_CSVS = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
AUDIOCAPS_COLUMNS = ("youtube_id", "start_time", "caption")
DEFAULT_AUDIO_PATTERN = "audio/{youtube_id}_{start_time}.flac"


def _clip_id(youtube_id: Any, start_time: Any) -> str:
    if isinstance(start_time, float) and start_time.is_integer():
        start_time = int(start_time)
    return f"{youtube_id}_{start_time}"


def _group_rows(rows: Sequence[Mapping[str, Any]], source_of) -> tuple[list[str], list[int], list[list[str]]]:
    """Group caption rows by clip: (clip ids, first row of each clip, captions of each clip), in first-seen order."""
    first: dict[str, int] = {}
    captions: dict[str, list[str]] = {}
    for index, row in enumerate(rows):
        if not str(row["youtube_id"]).strip() or str(row["start_time"]).strip() == "":
            raise ValueError(f"{source_of(index)}: empty 'youtube_id' or 'start_time'.")
        caption = str(row["caption"] or "").strip()
        if not caption:
            raise ValueError(f"{source_of(index)}: empty 'caption'.")
        clip = _clip_id(row["youtube_id"], row["start_time"])
        first.setdefault(clip, index)
        captions.setdefault(clip, []).append(caption)
    return list(first), list(first.values()), list(captions.values())


def build_audiocaps(
    data_dir: str | os.PathLike | None = None,
    *,
    view: str = "captions",
    splits: str | Sequence[str] | None = None,
    on_missing: str = "error",
    verify_files: bool = False,
    audio_pattern: str = DEFAULT_AUDIO_PATTERN,
    hub_repo_id: str | None = None,
    hub_revision: str | None = None,
    **load_dataset_kwargs: Any,
) -> DatasetDict:
    """Build AudioCaps from local CSVs + clips (``data_dir``) or from a parquet repo (``hub_repo_id``).

    Args:
        data_dir (`str` or `os.PathLike`, *optional*): Root holding ``train.csv``/``val.csv``/``test.csv``
            and the clips. Exactly one of ``data_dir`` and ``hub_repo_id`` must be given.
        view (`str`, defaults to ``"captions"``): ``"captions"`` or ``"items"``.
        splits (`str` or `Sequence[str]`, *optional*): Splits to build (``"train"``, ``"validation"``/``"val"``,
            ``"test"``). `None`: every split present (local: whose CSV exists).
        on_missing (`str`, defaults to ``"error"``): ``"error"`` or ``"skip"`` for missing/corrupt clips.
        verify_files (`bool`, defaults to `False`): Read each clip's header with ``soundfile.info`` (slower).
        audio_pattern (`str`, defaults to ``"audio/{youtube_id}_{start_time}.flac"``): Clip path relative to
            ``data_dir``; may use ``{youtube_id}``, ``{start_time}``, ``{audiocap_id}`` and ``{split}`` (the CSV
            stem: ``train``, ``val``, ``test``).
        hub_repo_id (`str`, *optional*): Hub dataset repo id or local folder of parquet files, passed to
            `datasets.load_dataset`.
        hub_revision (`str`, *optional*): Revision of ``hub_repo_id``.
        **load_dataset_kwargs: Further `datasets.load_dataset` arguments (``data_files``, ``cache_dir``, ...).

    Returns:
        `DatasetDict`: Columns ``item_id`` (``"{youtube_id}_{start_time}"``), ``item_index``, ``audio``
        (absolute path, or ``{"bytes", "path"}`` for parquet data), ``caption``/``caption_index`` or
        ``captions``. Attribute ``skipped_files``.

    Raises:
        MissingDataFileError: A requested CSV or a clip (``on_missing="error"``) is missing.
        CorruptDataFileError: A clip's header is unreadable (``verify_files=True``, ``on_missing="error"``).
        ValueError: Bad or unknown arguments, a CSV that is not UTF-8, a missing column, an empty field, or a
            clip path (``audio_pattern`` filled with a row's fields) that is absolute or has a ``..`` component.
    """
    _check_extra_keywords(load_dataset_kwargs, hub_repo_id is not None)
    check_common_args(view, on_missing, verify_files)
    if (data_dir is None) == (hub_repo_id is None):
        raise ValueError(
            "build_audiocaps needs exactly one of data_dir (local CSVs) and hub_repo_id (parquet repo)."
        )
    if hub_repo_id is not None:
        return _build_from_parquet(
            hub_repo_id, hub_revision, view, splits, on_missing, verify_files, load_dataset_kwargs
        )
    root = as_dir(data_dir, "AudioCaps")
    if splits is None:
        wanted = [split for split, name in AUDIOCAPS_CSVS.items() if (root / name).is_file()]
        if not wanted:
            raise MissingDataFileError(
                f"No AudioCaps CSV in {str(root)!r}: expected train.csv, val.csv and/or test.csv."
            )
    else:
        wanted = select_splits(splits, list(AUDIOCAPS_CSVS), "AudioCaps")
    items_by_split = {}
    for split in wanted:
        csv_path = root / AUDIOCAPS_CSVS[split]
        rows = read_csv_rows(csv_path, AUDIOCAPS_COLUMNS, what="audiocap_id,youtube_id,start_time,caption")

        def source_of(index: int, csv_path=csv_path, rows=rows) -> str:
            return f"{csv_path} line {rows[index]['_line']}"

        clip_ids, first_rows, captions = _group_rows(rows, source_of)
        items = []
        for clip, row_index, clip_captions in zip(clip_ids, first_rows, captions, strict=True):
            row = rows[row_index]
            fields = {**row, "split": csv_path.stem}
            try:
                relative = audio_pattern.format(**fields)
            except KeyError as error:
                raise ValueError(
                    f"audio_pattern {audio_pattern!r} uses {error}, which is neither a column of {csv_path} nor "
                    f"'split'."
                ) from error
            check_relative_path(relative, source_of(row_index), "audio_pattern")
            items.append(
                {
                    "item_id": clip,
                    "audio": str(root / relative),
                    "captions": clip_captions,
                    "_source": source_of(row_index),
                }
            )
        items_by_split[split] = items
    return assemble(
        items_by_split,
        media_key="audio",
        view=view,
        on_missing=on_missing,
        verify_files=verify_files,
        dataset_name="AudioCaps",
    )


def _check_extra_keywords(kwargs: Mapping[str, Any], from_hub: bool) -> None:
    """Keywords beyond `build_audiocaps`'s own: none for local data, `datasets.load_dataset` ones for a repo."""
    where = "build_audiocaps() keyword arguments"
    if not from_hub:
        # reported against the builder's own names: a typo there is the likely cause
        check_known_keys(
            kwargs, _OWN_KEYWORDS, f"{where} (extra keywords only go to load_dataset with hub_repo_id)"
        )
        return
    # builder-config keywords of load_dataset (parquet "columns", ...) cannot be listed: catch typos of our own names
    typos = [key for key in kwargs if key not in _LOAD_DATASET_KEYWORDS and closest_match(key, _OWN_KEYWORDS)]
    check_known_keys(typos, _OWN_KEYWORDS, where)


def _build_from_parquet(
    repo_id: str,
    revision: str | None,
    view: str,
    splits: str | Sequence[str] | None,
    on_missing: str,
    verify_files: bool,
    load_dataset_kwargs: Mapping[str, Any],
) -> DatasetDict:
    raw = load_dataset(repo_id, revision=revision, **load_dataset_kwargs)
    if isinstance(raw, Dataset):
        raw = DatasetDict({"train": raw})
    by_canonical = {}
    for name in raw:
        canonical = SPLIT_ALIASES.get(name.lower())
        if canonical is None:
            logger.warning("AudioCaps repo %s: ignoring split %r (not train/validation/test).", repo_id, name)
        elif canonical in by_canonical:
            raise ValueError(
                f"AudioCaps repo {repo_id}: splits {by_canonical[canonical]!r} and {name!r} both map to {canonical!r}."
            )
        else:
            by_canonical[canonical] = name
    available = [split for split in ("train", "validation", "test") if split in by_canonical]
    wanted = select_splits(splits, available, f"AudioCaps repo {repo_id}")
    skipped: list[SkippedFile] = []
    result = {}
    for split in wanted:
        hub_split = by_canonical[split]
        dataset = raw[hub_split]
        missing = [column for column in (*AUDIOCAPS_COLUMNS, "audio") if column not in dataset.column_names]
        if missing:
            raise ValueError(
                f"AudioCaps repo {repo_id} split {hub_split!r} lacks column(s) {missing}: expected "
                f"{[*AUDIOCAPS_COLUMNS, 'audio']} (one row per caption), found {dataset.column_names}."
            )
        dataset = dataset.cast_column("audio", Audio(decode=False))
        meta = dataset.select_columns(list(AUDIOCAPS_COLUMNS)).to_list()

        def source_of(index: int, hub_split=hub_split) -> str:
            return f"AudioCaps repo {repo_id} split {hub_split!r} row {index}"

        clip_ids, first_rows, captions = _group_rows(meta, source_of)
        kept = _check_parquet_audio(dataset, first_rows, split, source_of, on_missing, verify_files, skipped)
        with quiet_progress_bars():
            items = dataset.select([first_rows[k] for k in kept]).select_columns(["audio"])
            items = items.add_column("item_id", [clip_ids[k] for k in kept], feature=Value("string"))
            items = items.add_column("item_index", list(range(len(kept))), feature=Value("int64"))
            items = items.add_column("captions", [captions[k] for k in kept], feature=List(Value("string")))
            result[split] = items.select_columns(["item_id", "item_index", "audio", "captions"])
    return finish(result, view=view, skipped=skipped, dataset_name=f"AudioCaps repo {repo_id}")


def _check_parquet_audio(
    dataset: Dataset,
    rows: list[int],
    split: str,
    source_of,
    on_missing: str,
    verify_files: bool,
    skipped: list[SkippedFile],
) -> list[int]:
    """Positions ``k`` of ``rows`` whose audio has bytes (or an existing path) and, if asked, a readable header."""
    has_bytes: list[bool] = []
    paths: list[str | None] = []
    # arrow batches: the audio bytes are never converted to Python objects (AudioCaps train is ~50k clips)
    for batch in dataset.select(rows).select_columns(["audio"]).with_format("arrow").iter(batch_size=1024):
        audio = batch.column("audio").combine_chunks()  # struct<bytes, path>
        valid = audio.is_valid().to_pylist()
        has_bytes += [
            v and b for v, b in zip(valid, audio.field("bytes").is_valid().to_pylist(), strict=True)
        ]
        paths += [p if v else None for v, p in zip(valid, audio.field("path").to_pylist(), strict=True)]
    kept = []
    for k, row in enumerate(rows):
        reason = None
        if not has_bytes[k] and not (paths[k] and os.path.isfile(paths[k])):
            reason = "missing"
        elif verify_files:
            audio = dataset[row]["audio"]
            problem = check_audio_header(audio["bytes"] if audio["bytes"] is not None else audio["path"])
            reason = None if problem is None else f"corrupt: {problem}"
        if reason is None:
            kept.append(k)
        elif on_missing == "skip":
            skipped.append(SkippedFile(split, str(paths[k]), source_of(row), reason))
        elif reason == "missing":
            raise MissingDataFileError(
                f"{source_of(row)} has no audio bytes and its path {paths[k]!r} does not exist; pass "
                f"on_missing='skip' to drop such clips."
            )
        else:
            raise CorruptDataFileError(
                f"{source_of(row)}: audio {paths[k]!r} cannot be read ({reason}); pass on_missing='skip' to drop it."
            )
    return kept


_OWN_KEYWORDS = frozenset(keyword_names(build_audiocaps))
_LOAD_DATASET_KEYWORDS = frozenset(keyword_names(load_dataset)) - {"path", "revision"}
# for builder_arguments: what a config may pass (builder-config keywords of load_dataset are not listed)
build_audiocaps.__keyword_names__ = _OWN_KEYWORDS | _LOAD_DATASET_KEYWORDS
