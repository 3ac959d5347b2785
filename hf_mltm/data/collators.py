"""Collators that decode audio/images lazily and build model batches, and a batch sampler avoiding repeated items.

Letters: ``B`` rows in a batch, ``T`` feature frames, ``M`` mel bins, ``L`` tokens, ``R`` image fragments
(grid cells), ``D`` fragment dimension, ``H``/``W`` image height/width.

Each row is a dict from a captions-view dataset (``item_id``, ``item_index``, ``audio`` or ``image``,
``caption``, ...). Rows without the caption column (items view) give media-only batches, rows without the
media column give text-only batches. ``item_ids`` (``(B,)`` int64) is the rows' ``item_index``: rows sharing it
are captions of the same item, which the duplicate-aware losses treat as positives.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from numbers import Real
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from hf_mltm.audio import check_sampling_rate, crop_waveform, load_audio
from hf_mltm.image import load_image
from hf_mltm.tensors import pad_and_stack

__all__ = ["AudioTextCollator", "ImageTextCollator", "UniqueItemBatchSampler"]


def _item_ids(rows: Sequence[Mapping[str, Any]]) -> torch.Tensor:
    """``item_index`` of each row as ``(B,)`` int64; without it, ``item_id`` strings numbered in first-seen order."""
    if all("item_index" in row for row in rows):
        return torch.tensor([int(row["item_index"]) for row in rows], dtype=torch.long)
    if all("item_id" in row for row in rows):
        numbers: dict[Any, int] = {}
        return torch.tensor(
            [numbers.setdefault(row["item_id"], len(numbers)) for row in rows], dtype=torch.long
        )
    raise ValueError("Each row needs 'item_index' (or 'item_id') so that the batch can carry item_ids.")


def _row_label(rows: Sequence[Mapping[str, Any]], position: int) -> str:
    """``"batch row 2 (item_id 'x')"``: how error messages name a row."""
    item_id = rows[position].get("item_id") if isinstance(rows[position], Mapping) else None
    return f"batch row {position}" + (f" (item_id {item_id!r})" if item_id is not None else "")


def _captions(rows: Sequence[Mapping[str, Any]], column: str) -> list[str]:
    """The ``column`` value of every row, each checked to be a string (a tokenizer fails obscurely otherwise)."""
    captions = [row[column] for row in rows]
    for position, caption in enumerate(captions):
        if not isinstance(caption, str):
            raise ValueError(
                f"The caption of {_row_label(rows, position)} is {str(caption)[:60]!r} of type "
                f"{type(caption).__name__}: every {column!r} value must be a string; drop or fix that row."
            )
    return captions


def _column_mode(rows: Sequence[Mapping[str, Any]], column: str, what: str) -> bool:
    """Whether all rows have ``column``; raise when only some have it."""
    present = [column in row for row in rows]
    if any(present) and not all(present):
        raise ValueError(
            f"Only some rows of the batch have the {what} column {column!r}; batches must be uniform."
        )
    return all(present)


class AudioTextCollator:
    r"""Load the audio of each row and turn rows into an `MLTMProcessor` batch.

    Audio is a path, encoded bytes, a ``{"bytes", "path"}`` dict (undecoded `datasets.Audio`) or a decoded
    ``{"array", "sampling_rate"}`` dict. Every value goes through `hf_mltm.audio.load_audio` (decoded and
    resampled to ``sampling_rate``) and, with ``max_length_s``, `hf_mltm.audio.crop_waveform`.

    Args:
        processor (`MLTMProcessor`): Feature extractor + tokenizer.
        sampling_rate (`int`, *optional*): Rate in Hz to decode at; defaults to the feature extractor's
            ``sampling_rate`` (so the extractor does not resample again).
        max_length_s (`float`, *optional*): Crop each waveform to at most this many seconds before feature
            extraction (from its start, or at a random offset with ``random_crop``). The feature extractor then
            pads to its own ``max_length_s`` (or to the longest clip when that is `None`). `None` leaves
            cropping to the feature extractor.
        text_max_length (`int`, *optional*): Caption length limit in tokens.
        random_crop (`bool`, defaults to `False`): Random crop offsets (training) instead of clip starts.
        seed (`int`, *optional*): Seed of the crop generator (reproducible crops); `None` uses torch's global RNG.
        audio_column (`str`, defaults to ``"audio"``), caption_column (`str`, defaults to ``"caption"``): Row keys.

    Returns (from ``__call__``):
        `dict[str, torch.Tensor]`: ``input_features`` ``(B, T, M)`` float32, ``audio_attention_mask`` ``(B, T)``,
        ``input_ids`` / ``attention_mask`` (+ ``token_type_ids``) ``(B, L)`` and ``item_ids`` ``(B,)`` int64.

    Example:

    ```python
    >>> from torch.utils.data import DataLoader
    >>> from hf_mltm.data import AudioTextCollator, build_clotho
    >>> train = build_clotho("../shared/data/clotho")["test"]  # doctest: +SKIP
    >>> loader = DataLoader(train, batch_size=4, collate_fn=AudioTextCollator(processor))  # doctest: +SKIP

    ```
    """

    def __init__(
        self,
        processor: Any,
        *,
        sampling_rate: int | None = None,
        max_length_s: float | None = None,
        text_max_length: int | None = None,
        random_crop: bool = False,
        seed: int | None = None,
        audio_column: str = "audio",
        caption_column: str = "caption",
    ):
        self.processor = processor
        self.sampling_rate = check_sampling_rate(
            processor.feature_extractor.sampling_rate if sampling_rate is None else sampling_rate
        )
        self._max_samples = None
        if max_length_s is not None:
            if isinstance(max_length_s, bool) or not isinstance(max_length_s, Real) or not 0 < max_length_s < math.inf:
                raise ValueError(
                    f"max_length_s must be a positive, finite number of seconds, got {max_length_s!r}."
                )
            self._max_samples = round(max_length_s * self.sampling_rate)
            if self._max_samples < 1:
                raise ValueError(
                    f"max_length_s={max_length_s} s is shorter than one sample at {self.sampling_rate} Hz."
                )
        self.max_length_s = max_length_s
        self.text_max_length = text_max_length
        self.random_crop = random_crop
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.audio_column = audio_column
        self.caption_column = caption_column

    def load(self, audio: Any, label: str | None = None) -> np.ndarray:
        """Decode one row's audio to a mono float32 waveform ``(num_samples,)`` at ``self.sampling_rate``.

        Args:
            audio: The row's audio value (see the class docstring).
            label (`str`, *optional*): How error messages name the row.

        Raises:
            ValueError: See `hf_mltm.audio.load_audio`.
        """
        return load_audio(audio, self.sampling_rate, label=label)[0]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate rows into a batch (see the class docstring for the keys and shapes)."""
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        has_audio = _column_mode(rows, self.audio_column, "audio")
        has_text = _column_mode(rows, self.caption_column, "caption")
        if not (has_audio or has_text):
            raise ValueError(
                f"Rows have neither {self.audio_column!r} nor {self.caption_column!r}; got keys {sorted(rows[0])}."
            )
        kwargs: dict[str, Any] = {}
        if has_audio:
            waveforms = [
                self.load(row[self.audio_column], _row_label(rows, position)) for position, row in enumerate(rows)
            ]
            if self._max_samples is not None:
                waveforms = [
                    crop_waveform(waveform, self._max_samples, random=self.random_crop, generator=self.generator)
                    for waveform in waveforms
                ]
            else:
                kwargs.update(random_crop=self.random_crop, generator=self.generator)
            kwargs.update(audio=waveforms, sampling_rate=self.sampling_rate)
        if has_text:
            kwargs.update(text=_captions(rows, self.caption_column), max_length=self.text_max_length)
        batch = dict(self.processor(return_tensors="pt", **kwargs))
        batch["item_ids"] = _item_ids(rows)
        return batch


class ImageTextCollator:
    r"""Turn image-caption rows into a batch of pixels or precomputed grid fragments plus tokens.

    Exactly one image source is used: ``image_processor`` (each row's image, a path, encoded bytes, a
    ``{"bytes", "path"}`` dict or a PIL image, is opened as RGB with `hf_mltm.image.load_image` and the list
    is passed to ``image_processor(images, return_tensors="pt")``, which must return ``pixel_values``) or
    ``fragments`` (looked up by ``item_id``).

    Args:
        tokenizer (`PreTrainedTokenizerBase`): Captions -> ``input_ids``, ``attention_mask``.
        image_processor (callable, *optional*): E.g. a transformers ``CLIPImageProcessorPil``.
        fragments (`datasets.Dataset` or `Mapping[str, array]`, *optional*): Precomputed fragments: a dataset
            with ``item_id`` and ``fragments`` (float16 ``(R, D)``) columns, or a dict ``item_id -> (R, D)``.
        text_max_length (`int`, *optional*): Caption length limit in tokens.
        image_column (`str`, defaults to ``"image"``), caption_column (`str`, defaults to ``"caption"``): Row keys.

    Returns (from ``__call__``):
        `dict[str, torch.Tensor]`: ``pixel_values`` ``(B, 3, H, W)`` or ``image_fragments`` ``(B, R, D)`` float32
        with ``image_fragment_mask`` ``(B, R)`` bool (items with fewer fragments are zero-padded, mask `False`),
        ``input_ids``/``attention_mask`` ``(B, L)`` and ``item_ids`` ``(B,)`` int64.

    Raises (from ``__call__``):
        ValueError: An item has no fragments, or its fragments are not 2-D; an image cannot be read (the
            message names the row and the file); a caption is not a string.
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_processor: Any = None,
        fragments: Any = None,
        text_max_length: int | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
    ):
        if (image_processor is None) == (fragments is None):
            raise ValueError("ImageTextCollator needs exactly one of image_processor and fragments.")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.text_max_length = text_max_length
        self.image_column = image_column
        self.caption_column = caption_column
        self.fragments = fragments
        self._fragment_rows: dict[str, int] | None = None
        if fragments is not None and not isinstance(fragments, Mapping):
            missing = [c for c in ("item_id", "fragments") if c not in fragments.column_names]
            if missing:
                raise ValueError(
                    f"The fragments dataset lacks column(s) {missing}: expected 'item_id' and 'fragments' "
                    f"(float16 (num_fragments, dim)), found {fragments.column_names}."
                )
            self._fragment_rows = {item_id: row for row, item_id in enumerate(fragments["item_id"])}
            self.fragments = fragments.with_format("numpy", columns=["fragments"])

    def _fragments_of(self, item_id: str, position: int) -> np.ndarray:
        if self._fragment_rows is None:
            found = self.fragments.get(item_id)
        else:
            row = self._fragment_rows.get(item_id)
            found = None if row is None else self.fragments[row]["fragments"]
        if found is None:
            raise ValueError(
                f"No grid fragments for item_id {item_id!r} (batch row {position}) among the {len(self.fragments)} "
                f"precomputed items; compute the fragments of this split (hf_mltm.data.grid_features) again."
            )
        array = np.asarray(found)
        if array.dtype == object:  # a list of per-fragment rows
            array = np.stack([np.asarray(fragment) for fragment in array])
        array = array.astype(np.float32)
        if array.ndim != 2:
            raise ValueError(
                f"Fragments of item_id {item_id!r} must be 2-D (num_fragments, dim), got {array.shape}."
            )
        return array

    def _fragment_batch(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        arrays = []
        for position, row in enumerate(rows):
            if "item_id" not in row:
                raise ValueError("Rows need 'item_id' to look up their fragments.")
            arrays.append(self._fragments_of(row["item_id"], position))
        dims = {array.shape[1] for array in arrays}
        if len(dims) != 1:
            raise ValueError(f"Fragments in a batch must share their dimension, got {sorted(dims)}.")
        values = pad_and_stack([torch.from_numpy(array) for array in arrays])  # (B, R, D), zero-padded
        mask = pad_and_stack([torch.ones(len(array), dtype=torch.bool) for array in arrays])  # (B, R)
        return {"image_fragments": values, "image_fragment_mask": mask}

    def _pixel_batch(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        images = [
            load_image(row[self.image_column], label=_row_label(rows, position)) for position, row in enumerate(rows)
        ]
        output = self.image_processor(images, return_tensors="pt")
        if "pixel_values" not in output:
            raise ValueError(f"The image processor returned {sorted(output)}, not 'pixel_values'.")
        return {"pixel_values": torch.as_tensor(output["pixel_values"])}

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        """Collate rows into a batch (see the class docstring for the keys and shapes)."""
        if not rows:
            raise ValueError("Cannot collate an empty batch.")
        has_text = _column_mode(rows, self.caption_column, "caption")
        batch: dict[str, torch.Tensor] = {}
        if self.fragments is not None:
            batch.update(self._fragment_batch(rows))
        elif _column_mode(rows, self.image_column, "image"):
            batch.update(self._pixel_batch(rows))
        if has_text:
            tokens = self.tokenizer(
                _captions(rows, self.caption_column),
                padding=True,
                truncation=True,
                max_length=self.text_max_length,
                return_tensors="pt",
            )
            batch.update(dict(tokens))
        if not batch:
            raise ValueError(f"Rows have neither an image nor a caption; got keys {sorted(rows[0])}.")
        batch["item_ids"] = _item_ids(rows)
        return batch


class UniqueItemBatchSampler(Sampler[list[int]]):
    r"""Shuffled batches of row indices in which no item repeats, where the counts allow it.

    Each epoch, items are shuffled, the rows of each item are shuffled and laid out item after item; this list
    is then dealt slot by slot across the batches (row ``k`` goes to slot ``k // num_batches`` of batch
    ``k % num_batches``, skipping the missing slots of a last partial batch). An item with at most
    ``num_batches - 1`` rows therefore never has two rows in one batch. Items with more rows than that (e.g.
    one clip with many captions in a tiny dataset) do repeat; every row is still used exactly once per
    epoch (``drop_last=False``). Full batches come in random order, a partial batch last.

    Args:
        item_ids (`Sequence`): Item of each dataset row (e.g. ``dataset["item_index"]``), any hashable values.
        batch_size (`int`): Rows per batch.
        seed (`int`, defaults to 0): Base seed; the epoch's generator is seeded with ``(seed, epoch)``.
        drop_last (`bool`, defaults to `False`): Drop the ``n % batch_size`` rows that do not fill a batch
            (rows of the items laid out last in that epoch).

    Example:

    ```python
    >>> from hf_mltm.data import UniqueItemBatchSampler
    >>> sampler = UniqueItemBatchSampler([0, 0, 1, 1, 2, 2], batch_size=3, seed=0)
    >>> [len(set(batch)) for batch in sampler], len(sampler)
    ([3, 3], 2)

    ```
    """

    def __init__(self, item_ids: Sequence[Any], batch_size: int, *, seed: int = 0, drop_last: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        if len(item_ids) == 0:
            raise ValueError("item_ids is empty: the sampler needs at least one row.")
        self.batch_size = batch_size
        self.seed = seed
        self.drop_last = drop_last
        self.epoch = 0
        groups: dict[Any, list[int]] = {}
        for row, item in enumerate(item_ids):
            groups.setdefault(item, []).append(row)
        self._groups = list(groups.values())
        self._num_rows = len(item_ids)

    def set_epoch(self, epoch: int) -> None:
        """Use the shuffle of ``epoch`` in the next iteration (call it at the start of each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.drop_last:
            return self._num_rows // self.batch_size
        return math.ceil(self._num_rows / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng((self.seed, self.epoch))
        layout = []
        for group in rng.permutation(len(self._groups)).tolist():
            layout.extend(rng.permutation(self._groups[group]).tolist())
        num_rows = len(self) * self.batch_size if self.drop_last else self._num_rows
        num_batches = len(self)
        sizes = [self.batch_size] * num_batches
        if num_rows % self.batch_size:
            sizes[-1] = num_rows % self.batch_size
        batches: list[list[int]] = [[] for _ in range(num_batches)]
        position = 0
        for slot in range(self.batch_size):
            for batch_index in range(num_batches):
                if slot < sizes[batch_index] and position < num_rows:
                    batches[batch_index].append(layout[position])
                    position += 1
        full = [batch for batch, size in zip(batches, sizes, strict=True) if size == self.batch_size]
        order = rng.permutation(len(full)).tolist()
        yield from ([full[k] for k in order] + batches[len(full) :])
