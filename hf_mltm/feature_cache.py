"""One content-keyed, resumable on-disk cache of frozen-tower outputs.

With frozen towers (audio, text or image encoders), a tower's output for one item is a fixed function of three
things: the tower (its class, config and weights), the preprocessing settings (feature extractor, crop length,
tokenizer and ``max_length``, pooling, ...) and the item's content (the bytes of its file, or its caption text).
This module keys cached rows by exactly these, so a stale hit is impossible:

* `tower_fingerprint` / `tower_manifest` digest the tower and its settings. `FeatureCache.for_tower` puts every
  row of one fingerprint in its own folder ``root/<name>-<fingerprint>/``: rows of another tower, other weights
  or other settings live in another folder and are never read.
* `file_fingerprint` (sha256 of a file's bytes) and `content_key` (a digest of several parts, e.g. the file hash
  and a clip offset, or a caption) address the rows inside a folder. Editing one file changes its key only.

Storage: each folder holds ``manifest.json`` (the fingerprint inputs, for humans) and safetensors shards
``shard-<writer>-<time>-<token>.safetensors`` of up to ``shard_size`` rows. Row ``i`` of a shard stores field
``f`` as the tensor ``"<i>/<f>"``; the shard metadata holds the JSON lists ``keys`` (row ``i``'s content key)
and ``digests`` (sha256 of row ``i``'s field names, dtypes, shapes and bytes). safetensors rather than parquet
because rows are dicts of tensors whose fields, shapes and dtypes (float, int64, bool, bfloat16) may differ from
row to row, which parquet would need a fixed schema or ragged list columns for; because its header (a JSON
block at the start of the file) gives the keys without reading any tensor data; and because loading it never
unpickles anything.

Integrity: a shard is written to a hidden temporary file in the same folder, flushed, fsynced and renamed into
place, so it exists complete or not at all. On reading, a shard that safetensors cannot parse (truncated,
garbage), whose metadata is not ours, or whose row does not match its digest or holds NaN/inf, is renamed to
``<name>.corrupt`` with a `UserWarning` naming it, and its rows are computed again. Rows are never served from a
shard that failed a check.

Resuming: finished rows are written in shards as they are computed. A killed process loses at most the rows of
its unfinished shard (an exception raised inside ``compute``, including ``KeyboardInterrupt``, still writes the
rows finished so far); the next call computes only the keys no finished shard holds.

Several processes: give each a distinct ``writer`` (e.g. the process rank); they may fill one folder at once,
each computing a disjoint subset of the keys (e.g. ``keys[rank::world_size]``), and every reader sees all
finished shards (the folder is re-scanned on each call). Shard names also carry a random token, so two writers
never overwrite each other's shard; ``writer`` decides which leftover temporary files a new instance deletes.

Memory: the index maps every cached key to its shard and row (about 150 bytes per key), built from the shard
headers only. Answering a lookup reads each shard that holds a requested key once, whole (at most ``shard_size``
rows, one shard at a time), and keeps only the requested rows; writing buffers one unfinished shard. The rows
returned by `FeatureCache.get_or_compute` are, of course, all in memory.

Example:

    >>> cache = FeatureCache.for_tower("runs/feature_cache", model.audio_model,  # doctest: +SKIP
    ...                                {"feature_extractor": feature_extractor.to_dict()}, name="audio")
    >>> keys = [content_key(file_fingerprint(path)) for path in audio_paths]  # doctest: +SKIP
    >>> rows = cache.get_or_compute(keys, lambda positions: encode([audio_paths[i] for i in positions]))  # doctest: +SKIP
"""

from __future__ import annotations

import enum
import hashlib
import json
import os
import re
import secrets
import stat
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save
from tqdm.auto import tqdm

__all__ = ["FeatureCache", "content_key", "file_fingerprint", "tower_fingerprint", "tower_manifest"]

FORMAT = "hf_mltm.feature_cache"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SHARD_GLOB = "shard-*.safetensors"
TEMP_PREFIX = ".tmp-"
CORRUPT_SUFFIX = ".corrupt"
# A temporary file this old belongs to a writer that died (any live writer renames its file within seconds).
STALE_TEMP_SECONDS = 3600
# Config entries that name where or with which library version a tower was loaded, not what it computes.
# ``architectures`` and ``dtype``/``torch_dtype`` are replaced by facts: the class of the module that runs and
# the dtypes of its tensors (part of the weight digest). ``auto_map`` (where the class lives, for trust_remote_code)
# is added by ``save_pretrained``: a model and its saved copy compute the same thing.
VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "transformers_version", "_commit_hash", "architectures", "dtype", "torch_dtype", "auto_map"}
)
# Files changed this recently are hashed again on each call: on coarse-clock file systems an edit within the
# same timestamp tick keeps (size, mtime_ns), so a memoised digest could be stale ("racy" entries, as in git).
RACY_SECONDS = 2.0
STORABLE_DTYPES = frozenset(
    {
        torch.float64, torch.float32, torch.float16, torch.bfloat16,
        torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
    }
)
_NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}")
_WRITER_PATTERN = re.compile(r"[A-Za-z0-9_.]{1,64}")
_CHUNK_BYTES = 1 << 20

PathLike = str | os.PathLike
Row = dict[str, torch.Tensor]

_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


# ---------------------------------------------------------------------------------------------------------------
# Content keys
# ---------------------------------------------------------------------------------------------------------------


def file_fingerprint(source: PathLike | bytes | bytearray | memoryview) -> str:
    """The sha256 of a file's content (or of the given bytes), as 64 hex digits.

    A file is read in 1 MiB chunks. Its digest is memoised within the process by ``(resolved path, size,
    mtime_ns)``, so hashing 10k files twice in one run reads them once; a file modified less than 2 s ago is
    not memoised (an edit within one timestamp tick may keep size and mtime).

    Args:
        source (`str`, `os.PathLike` or bytes-like): a regular file, or the content itself.

    Returns:
        `str`: the lowercase hex sha256 digest of the content.

    Raises:
        ValueError: ``source`` is of another type, or the file is missing, not a regular file or unreadable.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    if not isinstance(source, (str, os.PathLike)):
        raise ValueError(
            f"file_fingerprint: source must be a path or bytes, got {type(source).__name__}; pass the file path."
        )
    path = Path(source)
    try:
        before = path.stat()
    except OSError as error:
        raise ValueError(f"file_fingerprint: cannot stat {path}: {error}; check the path.") from error
    if not stat.S_ISREG(before.st_mode):
        raise ValueError(f"file_fingerprint: {path} is not a regular file; pass a file, not a folder.")
    memo_key = (str(path.resolve()), before.st_size, before.st_mtime_ns)
    digest = _FILE_DIGESTS.get(memo_key)
    if digest is not None:
        return digest
    hasher = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK_BYTES):
                hasher.update(chunk)
        after = path.stat()
    except OSError as error:
        raise ValueError(f"file_fingerprint: cannot read {path}: {error}; check the file.") from error
    digest = hasher.hexdigest()
    unchanged = (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    if unchanged and time.time_ns() - after.st_mtime_ns > RACY_SECONDS * 1e9:
        _FILE_DIGESTS[memo_key] = digest
    return digest


def content_key(*parts: str | bytes) -> str:
    """Combine the parts that determine one cached row into one key (64 hex digits).

    Typical parts: an item's `file_fingerprint` plus per-item settings (``json.dumps({"offset_s": 2.5})``), or a
    caption's text. Each part is hashed with its type and length, so ``("ab", "c")``, ``("a", "bc")`` and
    ``(b"ab", "c")`` give different keys.

    Args:
        *parts (`str` or `bytes`): at least one part; text is encoded as UTF-8.

    Returns:
        `str`: the lowercase hex sha256 digest of the tagged parts.

    Raises:
        ValueError: no part, or a part that is neither `str` nor bytes-like.
    """
    if not parts:
        raise ValueError("content_key needs at least one part (a file fingerprint or a caption).")
    hasher = hashlib.sha256(b"hf_mltm.content_key.v1")
    for index, part in enumerate(parts):
        if isinstance(part, str):
            tag, data = b"s", part.encode("utf-8", errors="surrogatepass")
        elif isinstance(part, (bytes, bytearray, memoryview)):
            tag, data = b"b", bytes(part)
        else:
            raise ValueError(
                f"content_key: part {index} is a {type(part).__name__}; pass str or bytes, e.g. "
                f"json.dumps(value, sort_keys=True) for numbers or settings."
            )
        hasher.update(tag + len(data).to_bytes(8, "little"))
        hasher.update(data)
    return hasher.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Tower fingerprints
# ---------------------------------------------------------------------------------------------------------------


def tower_manifest(model: torch.nn.Module, settings: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON-able description of a tower and its settings that `tower_fingerprint` digests.

    Contents:

    * ``class``: the module's import path (``transformers.models.bert.modeling_bert.BertModel``).
    * ``config``: ``model.config.to_dict()`` when the model has one, with the entries of
      `VOLATILE_CONFIG_KEYS` (load path, library version, commit hash, ``architectures``, ``dtype``) removed at
      every nesting level; `None` otherwise.
    * ``settings``: ``settings`` as canonical JSON (dict keys as strings, tuples as lists).
    * ``weights``: ``sha256`` over every entry of ``model.state_dict()`` and every non-persistent buffer (e.g. a
      mel filterbank), sorted by name, each as its name, dtype, shape and raw bytes; plus the counts
      ``tensors`` and ``elements``.
    * ``numerics`` (only when the model defines ``inference_numerics``): a string naming how the tower computes
      in inference beyond its weights and config, e.g. the convolution algorithm (`PannsModel`: Winograd for the
      wide layers). Outputs of another algorithm differ by float rounding only, but a model trained on them is not
      the same model: a cache written by a release that computed differently is not reused.

    Numerics: tensors are moved to CPU one at a time and hashed as raw bytes (about 0.25 s per 100 MB, i.e. per
    25 M float32 parameters); nothing is converted, so float16 and float32 copies of a tower differ.

    Args:
        model (`torch.nn.Module`): the tower, with its weights loaded (not on the ``meta`` device).
        settings (`Mapping[str, Any]`, *optional*): every preprocessing setting that changes the tower's output
            (feature-extractor dict, crop length in seconds, tokenizer name and ``max_length``, pooling, ...).
            Values must be JSON-able: `str`, `int`, finite `float`, `bool`, `None`, lists, tuples, dicts,
            `torch.dtype`, `pathlib.Path`, enums, or numpy arrays and tensors (stored as nested lists).

    Returns:
        `dict[str, Any]`: the description; equal towers and settings give equal dicts.

    Raises:
        ValueError: ``model`` is not a module, has weights on the meta device or a non-tensor state entry, or
            ``settings`` (or the config) holds a value that is not JSON-able (the entry is named).
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"tower_manifest: model must be a torch.nn.Module, got {type(model).__name__}.")
    if settings is not None and not isinstance(settings, Mapping):
        raise ValueError(
            f"tower_manifest: settings must be a mapping of setting names to values, got {type(settings).__name__}."
        )
    config = getattr(model, "config", None)
    config_dict = None
    if config is not None and callable(getattr(config, "to_dict", None)):
        config_dict = _canonical(_without_volatile(config.to_dict()), "model.config")
    manifest = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
        "config": config_dict,
        "settings": None if settings is None else _canonical(dict(settings), "settings"),
        "weights": _weights_digest(model),
    }
    numerics = getattr(model, "inference_numerics", None)
    if numerics is not None:
        if not isinstance(numerics, str):
            raise ValueError(f"tower_manifest: {type(model).__name__}.inference_numerics must be a str, got "
                             f"{type(numerics).__name__}.")
        manifest["numerics"] = numerics
    return manifest


def tower_fingerprint(model: torch.nn.Module, settings: Mapping[str, Any] | None = None) -> str:
    """A digest of a tower (class, config, weights) and the settings that change its output.

    It is the sha256 of the canonical JSON of `tower_manifest` (see there for what is included). Changing one
    weight, one config value or one setting changes it; reloading the same weights from another path or with
    another transformers version does not.

    Args:
        model (`torch.nn.Module`): the tower, with its weights loaded.
        settings (`Mapping[str, Any]`, *optional*): preprocessing settings (see `tower_manifest`).

    Returns:
        `str`: 64 lowercase hex digits.

    Raises:
        ValueError: as `tower_manifest`.
    """
    return _json_digest(tower_manifest(model, settings))


def _weights_digest(model: torch.nn.Module) -> dict[str, Any]:
    """``{"sha256", "tensors", "elements"}`` of a module's state dict and non-persistent buffers."""
    state = model.state_dict()
    entries: dict[str, Any] = dict(state)
    for name, buffer in model.named_buffers():
        if name not in state:  # non-persistent, e.g. a filterbank or position ids
            entries[f"non_persistent:{name}"] = buffer
    hasher = hashlib.sha256(b"hf_mltm.tower_weights.v1")
    elements = 0
    for name in sorted(entries):
        tensor = entries[name]
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"tower_manifest: state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor; "
                f"fingerprint a module whose state is tensors only (or pass the extra state in settings)."
            )
        if tensor.is_meta:
            raise ValueError(
                f"tower_manifest: weight {name!r} is on the meta device; load the weights before fingerprinting."
            )
        header = json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode()
        hasher.update(len(header).to_bytes(8, "little") + header)
        hasher.update(_raw_bytes(tensor))
        elements += tensor.numel()
    return {"sha256": hasher.hexdigest(), "tensors": len(entries), "elements": elements}


def _raw_bytes(tensor: torch.Tensor) -> np.ndarray:
    """The bytes of a tensor as a numpy array (a view when it is already contiguous on CPU)."""
    tensor = tensor.detach()
    if tensor.device.type == "cpu" and tensor.is_contiguous() and tensor.dtype != torch.bfloat16:
        return tensor.numpy()  # fast path; hashlib reads any C-contiguous buffer as bytes
    return tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _without_volatile(value: Any) -> Any:
    """``value`` with the `VOLATILE_CONFIG_KEYS` entries of every nested dict removed."""
    if isinstance(value, Mapping):
        return {key: _without_volatile(item) for key, item in value.items() if key not in VOLATILE_CONFIG_KEYS}
    if isinstance(value, (list, tuple)):
        return [_without_volatile(item) for item in value]
    return value


def _canonical(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (str keys, lists), or `ValueError` naming ``where`` for what is not JSON-able."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{where} = {value!r} is not finite; fingerprints need finite numbers.")
        return value
    if isinstance(value, np.generic):
        return _canonical(value.item(), where)
    if isinstance(value, (np.ndarray, torch.Tensor)):  # e.g. a filterbank in a feature extractor's dict
        return _canonical((value.detach().cpu() if isinstance(value, torch.Tensor) else value).tolist(), where)
    if isinstance(value, enum.Enum):
        return _canonical(value.value, where)
    if isinstance(value, (torch.dtype, Path)):
        return str(value)
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise ValueError(f"{where} has a key {key!r} of type {type(key).__name__}; use str keys.")
            result[str(key)] = _canonical(item, f"{where}[{key!r}]")
        return result
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(
        f"{where} = {value!r} is a {type(value).__name__}, which is not JSON-able; pass str, number, bool, None, "
        f"list or dict (e.g. the object's to_dict())."
    )


def _canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _json_digest(value: Any) -> str:
    return hashlib.sha256(_canonical_json(value).encode("utf-8")).hexdigest()


def _row_digest(row: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a row's field names, dtypes, shapes and bytes (fields in sorted order)."""
    hasher = hashlib.sha256()
    for field in sorted(row):
        tensor = row[field]
        header = f"{field}\0{tensor.dtype}\0{tuple(tensor.shape)}".encode("utf-8", errors="surrogatepass")
        hasher.update(len(header).to_bytes(8, "little") + header)
        hasher.update(_raw_bytes(tensor))
    return hasher.hexdigest()


def _is_finite(tensor: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN/inf (always true for integer and bool tensors)."""
    if not tensor.is_floating_point():
        return True
    if tensor.device.type == "cpu" and tensor.dtype != torch.bfloat16:  # numpy: less overhead per small tensor
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


# ---------------------------------------------------------------------------------------------------------------
# The cache
# ---------------------------------------------------------------------------------------------------------------


class _CorruptShard(Exception):
    """A shard failed a check; the message says which."""


class FeatureCache:
    """Rows of tower outputs keyed by content, in resumable safetensors shards under ``root/namespace/``.

    A row is a ``dict[str, torch.Tensor]``, e.g. ``{"audio_tower_embeds": (512,)}`` or ``{"text_hidden_states":
    (L, 384), "attention_mask": (L,)}``; fields, shapes and dtypes may differ between rows. Tensors are stored
    and returned on CPU, bit for bit as ``compute`` returned them (convert the dtype inside ``compute`` if you
    want to store less). See the module docstring for the file layout, integrity and multi-process rules.

    Prefer `FeatureCache.for_tower`, which derives ``namespace`` from the tower's fingerprint. An instance is
    not thread-safe; use one per process.

    Args:
        root (`str` or `os.PathLike`): the cache folder, shared by all towers; created if missing.
        namespace (`str`): the sub-folder of one tower fingerprint (letters, digits, ``.``, ``_``, ``-``; at most
            200 characters, not starting with ``.``, ``_`` or ``-``).
        shard_size (`int`, defaults to 256): rows per shard, i.e. the most rows a killed run loses.
        writer (`str` or `int`, *optional*): this process's id in shard names, e.g. the process rank (letters,
            digits, ``_`` and ``.``; defaults to ``"main"``). Processes filling one folder at once need distinct
            ids: a new instance deletes the temporary files of its own id.
        manifest (`Mapping[str, Any]`, *optional*): the JSON-able fingerprint inputs, written to
            ``manifest.json`` if the folder has none.

    Raises:
        ValueError: a bad argument (named), or a ``manifest`` that differs from the folder's ``manifest.json``
            (the namespace already holds rows of another tower or settings).

    Example:

        >>> cache = FeatureCache(tmp_dir, "demo", shard_size=2)  # doctest: +SKIP
        >>> compute = lambda positions: [{"x": torch.full((3,), float(i))} for i in positions]  # doctest: +SKIP
        >>> cache.get_or_compute(["k1", "k2"], compute, progress=False)[1]["x"]  # doctest: +SKIP
        tensor([1., 1., 1.])
    """

    def __init__(
        self,
        root: PathLike,
        namespace: str,
        *,
        shard_size: int = 256,
        writer: str | int | None = None,
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(root, (str, os.PathLike)) or not str(root):
            raise ValueError(f"FeatureCache: root must be a folder path, got {root!r}.")
        if not isinstance(namespace, str) or not _NAMESPACE_PATTERN.fullmatch(namespace):
            raise ValueError(
                f"FeatureCache: namespace={namespace!r} must be 1-200 letters, digits, '.', '_' or '-', starting "
                f"with a letter or digit (e.g. 'audio-' + tower_fingerprint(model))."
            )
        _check_positive_int(shard_size, "shard_size")
        if writer is None:
            writer = "main"
        elif isinstance(writer, int) and not isinstance(writer, bool) and writer >= 0:
            writer = str(writer)
        if not isinstance(writer, str) or not _WRITER_PATTERN.fullmatch(writer):
            raise ValueError(
                f"FeatureCache: writer={writer!r} must be a non-negative int (a rank) or 1-64 letters, digits, "
                f"'_' or '.'."
            )
        self.root = Path(root)
        self.namespace = namespace
        self.path = self.root / namespace
        self.shard_size = shard_size
        self.writer = writer
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ValueError(f"FeatureCache: cannot create the cache folder {self.path}: {error}.") from error
        self._remove_temporaries(everyone=False)
        if manifest is not None:
            self._write_manifest(manifest)
        self._reset_index()

    @classmethod
    def for_tower(
        cls,
        root: PathLike,
        model: torch.nn.Module,
        settings: Mapping[str, Any] | None = None,
        *,
        name: str = "tower",
        shard_size: int = 256,
        writer: str | int | None = None,
    ) -> FeatureCache:
        """The cache of one tower and its settings: folder ``root/<name>-<tower_fingerprint(model, settings)>``.

        Args:
            root (`str` or `os.PathLike`): the cache folder, shared by all towers.
            model (`torch.nn.Module`): the frozen tower (weights loaded); see `tower_manifest`.
            settings (`Mapping[str, Any]`, *optional*): every preprocessing setting that changes its output.
            name (`str`, defaults to ``"tower"``): a readable prefix (``"audio"``, ``"text"``, ``"image"``).
            shard_size (`int`, defaults to 256): rows per shard.
            writer (`str` or `int`, *optional*): this process's id (see `FeatureCache`).

        Returns:
            `FeatureCache`: whose ``manifest.json`` holds `tower_manifest` plus the ``fingerprint``.

        Raises:
            ValueError: as `tower_manifest` and `FeatureCache`.
        """
        manifest = tower_manifest(model, settings)
        fingerprint = _json_digest(manifest)
        return cls(
            root,
            f"{name}-{fingerprint}",
            shard_size=shard_size,
            writer=writer,
            manifest={**manifest, "fingerprint": fingerprint},
        )

    # -- public API ---------------------------------------------------------------------------------------------

    def get_or_compute(
        self,
        keys: Sequence[str],
        compute: Callable[[list[int]], Sequence[Mapping[str, torch.Tensor]]],
        *,
        batch_size: int = 32,
        progress: bool = True,
        desc: str = "feature cache",
    ) -> list[Row]:
        """One row per key, in order: read from finished shards, or computed and stored.

        Keys no finished shard holds are computed in order of first occurrence: ``compute(positions)`` receives
        the positions (indices into ``keys``) of up to ``batch_size`` missing keys and returns one row per
        position. A key that occurs several times is computed (and stored) once. Computed rows are written in
        shards of ``shard_size`` as they complete; when ``compute`` raises, the rows finished so far are written
        before the exception propagates.

        Args:
            keys (sequence of `str`): content keys (`content_key`), e.g. one per clip or caption.
            compute (callable): ``positions (list[int]) -> rows (list[dict[str, torch.Tensor]])``, one row per
                position, on any device; floating tensors must be finite.
            batch_size (`int`, defaults to 32): the most positions per ``compute`` call.
            progress (`bool`, defaults to `True`): a tqdm bar over the distinct keys.
            desc (`str`, defaults to ``"feature cache"``): the bar's label.

        Returns:
            `list[dict[str, torch.Tensor]]`: ``len(keys)`` rows (CPU tensors); duplicate keys get equal rows
            (separate dicts sharing tensors).

        Raises:
            ValueError: bad ``keys``/``batch_size``/``compute``, or ``compute`` returned the wrong number of
                rows, a row that is not a non-empty dict of tensors, an unstorable dtype, or NaN/inf (the key
                and field are named; nothing of that batch is stored).
        """
        keys = _check_keys(keys)
        _check_positive_int(batch_size, "batch_size")
        if not callable(compute):
            raise ValueError(f"get_or_compute: compute must be callable, got {type(compute).__name__}.")
        first: dict[str, int] = {}
        for position, key in enumerate(keys):
            first.setdefault(key, position)
        self._refresh()
        found = self._load(list(first))
        todo = [position for key, position in first.items() if key not in found]
        pending: list[tuple[str, Row]] = []
        with tqdm(total=len(first), initial=len(first) - len(todo), desc=desc, unit="row",
                  disable=not progress) as bar:
            try:
                for start in range(0, len(todo), batch_size):
                    positions = todo[start : start + batch_size]
                    rows = _check_rows(compute(list(positions)), positions, keys)
                    for position, row in zip(positions, rows, strict=True):
                        found[keys[position]] = row
                        pending.append((keys[position], row))
                    while len(pending) >= self.shard_size:
                        self._write_shard(pending[: self.shard_size])
                        del pending[: self.shard_size]
                    bar.update(len(positions))
            except BaseException:
                if pending:
                    try:
                        self._write_shard(pending)
                    except Exception as error:  # keep the original exception
                        warnings.warn(f"FeatureCache: could not save {len(pending)} finished rows to {self.path} "
                                      f"after an error: {error}", UserWarning, stacklevel=2)
                raise
            if pending:
                self._write_shard(pending)
        return [dict(found[key]) for key in keys]

    def __len__(self) -> int:
        """The number of distinct keys in the finished shards of the folder."""
        self._refresh()
        return len(self._index)

    def __contains__(self, key: object) -> bool:
        """Whether a finished shard holds ``key`` (the shard's data is not checked until the row is read)."""
        self._refresh()
        return key in self._index

    def clear(self) -> None:
        """Delete every shard, ``.corrupt`` file and temporary file of the folder (``manifest.json`` stays).

        Only call it while no other process writes to this folder.
        """
        for path in [*self.path.glob(SHARD_GLOB), *self.path.glob(f"*{CORRUPT_SUFFIX}")]:
            path.unlink(missing_ok=True)
        self._remove_temporaries(everyone=True)
        self._reset_index()

    def describe(self) -> dict[str, Any]:
        """A summary for humans.

        Returns:
            `dict[str, Any]`: ``path``, ``namespace``, ``manifest`` (the parsed ``manifest.json`` or `None`),
            ``shards`` and ``rows`` (finished), ``bytes`` (their size on disk) and ``corrupt_files`` (shards
            moved aside).
        """
        self._refresh()
        manifest_path = self.path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None
        size = 0
        for path in self._shards:
            try:
                size += path.stat().st_size
            except OSError:
                pass
        return {
            "path": str(self.path),
            "namespace": self.namespace,
            "manifest": manifest,
            "shards": len(self._shards),
            "rows": len(self._index),
            "bytes": size,
            "corrupt_files": sorted(path.name for path in self.path.glob(f"*{CORRUPT_SUFFIX}")),
        }

    def __repr__(self) -> str:
        return f"FeatureCache(path={str(self.path)!r}, shard_size={self.shard_size}, writer={self.writer!r})"

    # -- index ------------------------------------------------------------------------------------------------

    def _reset_index(self) -> None:
        self._shards: list[Path] = []
        self._indexed: set[str] = set()
        self._index: dict[str, tuple[int, int]] = {}  # key -> (shard number, row)

    def _refresh(self) -> None:
        """Index the keys of shards that appeared since the last scan (written by this or other processes)."""
        for path in sorted(self.path.glob(SHARD_GLOB)):
            if path.name in self._indexed:
                continue
            try:
                keys = self._read_keys(path)
            except FileNotFoundError:  # moved aside or cleared by another process meanwhile
                continue
            except _CorruptShard as error:
                self._quarantine(path, str(error))
                continue
            self._add_shard(path, keys)

    def _add_shard(self, path: Path, keys: list[str]) -> None:
        number = len(self._shards)
        self._shards.append(path)
        self._indexed.add(path.name)
        for row, key in enumerate(keys):
            self._index.setdefault(key, (number, row))

    @staticmethod
    def _read_keys(path: Path) -> list[str]:
        """The row keys of a shard, after checking its header, metadata and tensor names."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                names = list(handle.keys())
        except FileNotFoundError:
            raise
        except (SafetensorError, OSError, ValueError) as error:
            raise _CorruptShard(f"unreadable safetensors file ({error})") from error
        keys, digests = _parse_metadata(metadata)
        rows = _fields_by_row(names, len(keys))
        if len(digests) != len(keys) or any(not fields for fields in rows):
            raise _CorruptShard("metadata does not match its tensors")
        return keys

    # -- reading ------------------------------------------------------------------------------------------------

    def _load(self, keys: list[str]) -> dict[str, Row]:
        """The rows of ``keys`` that finished shards hold and that pass their checks."""
        found: dict[str, Row] = {}
        while True:
            by_shard: dict[int, list[tuple[str, int]]] = {}
            for key in keys:
                if key not in found and key in self._index:
                    number, row = self._index[key]
                    by_shard.setdefault(number, []).append((key, row))
            if not by_shard:
                return found
            failed = False
            for number, entries in sorted(by_shard.items()):
                path = self._shards[number]
                try:
                    rows = self._read_rows(path, entries)
                except FileNotFoundError:
                    failed = True
                except _CorruptShard as error:
                    self._quarantine(path, str(error))
                    failed = True
                if failed:
                    # Shard numbers change: rebuild the index (other shards may hold the same keys) and retry.
                    self._reset_index()
                    self._refresh()
                    break
                for key, row in entries:
                    found[key] = rows[row]
            if not failed:
                return found

    @staticmethod
    def _read_rows(path: Path, entries: list[tuple[str, int]]) -> dict[int, Row]:
        """Rows of a shard by ``(key, row)``, each checked against its key, its digest and for NaN/inf.

        The whole shard is read (one file read and one safetensors parse, faster than a lookup per tensor); only
        the requested rows are kept, as private writable copies.
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise
        except OSError as error:
            raise _CorruptShard(f"unreadable file ({error})") from error
        try:
            with warnings.catch_warnings():  # torch.frombuffer warns about the read-only bytes; rows are cloned
                warnings.simplefilter("ignore", UserWarning)
                tensors = safetensors_load(data)
            # safetensors_load validated the header; its metadata is the "__metadata__" entry of the JSON header.
            header_length = int.from_bytes(data[:8], "little")
            metadata = json.loads(data[8 : 8 + header_length]).get("__metadata__") or {}
        except (SafetensorError, ValueError, KeyError, AttributeError) as error:
            raise _CorruptShard(f"unreadable safetensors file ({error})") from error
        keys, digests = _parse_metadata(metadata)
        fields = _fields_by_row(tensors, len(keys))
        if len(digests) != len(keys):
            raise _CorruptShard("metadata does not match its tensors")
        result: dict[int, Row] = {}
        for key, row in entries:
            if row >= len(keys) or keys[row] != key or not fields[row]:
                raise _CorruptShard(f"row {row} is not key {key}")
            tensors_of_row = {field: tensors[f"{row}/{field}"] for field in fields[row]}
            if _row_digest(tensors_of_row) != digests[row]:
                raise _CorruptShard(f"row {row} (key {key}) does not match its digest")
            for field, tensor in tensors_of_row.items():
                if not _is_finite(tensor):
                    raise _CorruptShard(f"row {row} (key {key}) field {field!r} holds NaN/inf")
            result[row] = {field: tensor.clone() for field, tensor in tensors_of_row.items()}
        return result

    def _quarantine(self, path: Path, reason: str) -> None:
        """Warn naming ``path`` and rename it to ``<name>.corrupt`` so it is never read again."""
        if not path.exists():
            return  # cleared or moved aside by another process: nothing to report
        target = path.with_name(path.name + CORRUPT_SUFFIX)
        warnings.warn(
            f"FeatureCache: corrupt shard {path}: {reason}; moved it to {target.name} and will recompute its rows.",
            UserWarning,
            stacklevel=4,
        )
        try:
            os.replace(path, target)
        except FileNotFoundError:
            pass  # another process moved it first
        except OSError:
            self._indexed.add(path.name)  # cannot move it: at least never index it again in this process

    # -- writing ------------------------------------------------------------------------------------------------

    def _write_shard(self, entries: list[tuple[str, Row]]) -> None:
        """Write ``entries`` as one shard atomically (temporary file, flush, fsync, rename) and index it."""
        tensors: dict[str, torch.Tensor] = {}
        for row, (_, fields) in enumerate(entries):
            for field, tensor in fields.items():
                tensors[f"{row}/{field}"] = tensor
        keys = [key for key, _ in entries]
        metadata = {
            "format": FORMAT,
            "version": str(FORMAT_VERSION),
            "keys": json.dumps(keys),
            "digests": json.dumps([_row_digest(fields) for _, fields in entries]),
        }
        data = safetensors_save(tensors, metadata=metadata)
        token = secrets.token_hex(4)
        path = self.path / f"shard-{self.writer}-{time.time_ns():020d}-{token}.safetensors"
        temporary = self.path / f"{TEMP_PREFIX}{self.writer}-{token}.safetensors"
        _write_atomically(temporary, path, data)
        self._add_shard(path, keys)

    def _write_manifest(self, manifest: Mapping[str, Any]) -> None:
        if not isinstance(manifest, Mapping):
            raise ValueError(f"FeatureCache: manifest must be a mapping, got {type(manifest).__name__}.")
        manifest = _canonical(dict(manifest), "manifest")
        path = self.path / MANIFEST_NAME
        if path.is_file():
            try:
                existing = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as error:
                warnings.warn(f"FeatureCache: unreadable {path} ({error}); writing it again.", UserWarning,
                              stacklevel=3)
            else:
                if existing == manifest:
                    return
                changed = sorted(
                    key for key in {*existing, *manifest}
                    if not isinstance(existing, dict) or existing.get(key) != manifest.get(key)
                )
                raise ValueError(
                    f"FeatureCache: {path} describes another tower or settings (entries {changed} differ) than "
                    f"the given manifest; use another namespace (FeatureCache.for_tower derives it from the "
                    f"fingerprint) or clear that folder."
                )
        text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        temporary = self.path / f"{TEMP_PREFIX}{self.writer}-{secrets.token_hex(4)}.manifest"
        _write_atomically(temporary, path, text.encode("utf-8"))

    def _remove_temporaries(self, everyone: bool) -> None:
        """Delete temporary files of killed writers: this writer's own, stale ones, or (``everyone``) all."""
        now = time.time()
        for path in self.path.glob(f"{TEMP_PREFIX}*"):
            try:
                if everyone or path.name.startswith(f"{TEMP_PREFIX}{self.writer}-") or (
                    now - path.stat().st_mtime > STALE_TEMP_SECONDS
                ):
                    path.unlink()
            except FileNotFoundError:
                pass


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _write_atomically(temporary: Path, path: Path, data: bytes) -> None:
    """Write ``data`` to ``temporary``, flush and fsync it, then rename it to ``path`` (and fsync the folder)."""
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable; not supported on every platform
        folder = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(folder)
    except OSError:
        pass
    finally:
        os.close(folder)


def _parse_metadata(metadata: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """``(keys, digests)`` of a shard's metadata, or `_CorruptShard` when it is not a cache shard."""
    if metadata.get("format") != FORMAT or metadata.get("version") != str(FORMAT_VERSION):
        raise _CorruptShard(
            f"not a version-{FORMAT_VERSION} {FORMAT} shard (format={metadata.get('format')!r}, "
            f"version={metadata.get('version')!r})"
        )
    try:
        keys, digests = json.loads(metadata["keys"]), json.loads(metadata["digests"])
    except (KeyError, ValueError) as error:
        raise _CorruptShard(f"bad metadata ({error})") from error
    if not (isinstance(keys, list) and isinstance(digests, list)
            and all(isinstance(item, str) for item in [*keys, *digests])):
        raise _CorruptShard("metadata keys/digests are not lists of strings")
    return keys, digests


def _fields_by_row(names: Iterable[str], num_rows: int) -> list[list[str]]:
    """The field names of each row from tensor names ``"<row>/<field>"``."""
    fields: list[list[str]] = [[] for _ in range(num_rows)]
    for name in names:
        row, separator, field = name.partition("/")
        if not separator or not field or not row.isdigit() or int(row) >= num_rows:
            raise _CorruptShard(f"unexpected tensor name {name!r}")
        fields[int(row)].append(field)
    return fields


def _check_positive_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"FeatureCache: {name} must be a positive integer, got {value!r}.")


def _check_keys(keys: Sequence[str]) -> list[str]:
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Sequence):
        raise ValueError(
            f"get_or_compute: keys must be a sequence (list) of str, got {type(keys).__name__}; wrap a single key "
            f"in a list."
        )
    keys = list(keys)
    for position, key in enumerate(keys):
        if not isinstance(key, str) or not key:
            raise ValueError(
                f"get_or_compute: keys[{position}] = {key!r} must be a non-empty str (e.g. from content_key)."
            )
    return keys


def _check_rows(rows: Any, positions: list[int], keys: list[str]) -> list[Row]:
    """Validate what ``compute`` returned and copy every tensor to a private contiguous CPU tensor."""
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or len(rows) != len(positions):
        got = f"{len(rows)} rows" if isinstance(rows, Sequence) and not isinstance(rows, Mapping) else (
            f"a {type(rows).__name__}"
        )
        raise ValueError(
            f"get_or_compute: compute({positions[:4]}{'...' if len(positions) > 4 else ''}) returned {got}; it "
            f"must return a list of {len(positions)} rows (dicts of tensors), one per position."
        )
    checked = []
    for position, row in zip(positions, rows, strict=True):
        key = keys[position]
        if not isinstance(row, Mapping) or not row:
            raise ValueError(
                f"get_or_compute: compute returned {type(row).__name__} {row!r:.60} for position {position} "
                f"(key {key!r}); each row must be a non-empty dict of field name -> torch.Tensor."
            )
        copy: Row = {}
        for field, tensor in row.items():
            if not isinstance(field, str) or not field:
                raise ValueError(
                    f"get_or_compute: row of key {key!r} has a field name {field!r}; use non-empty str names."
                )
            if not isinstance(tensor, torch.Tensor) or tensor.layout != torch.strided or tensor.is_meta:
                raise ValueError(
                    f"get_or_compute: field {field!r} of key {key!r} is a {type(tensor).__name__}"
                    f"{'' if not isinstance(tensor, torch.Tensor) else f' ({tensor.layout}, {tensor.device})'}; "
                    f"return dense torch.Tensor values."
                )
            if tensor.dtype not in STORABLE_DTYPES:
                raise ValueError(
                    f"get_or_compute: field {field!r} of key {key!r} has dtype {tensor.dtype}; store one of "
                    f"{sorted(str(dtype) for dtype in STORABLE_DTYPES)} (convert it inside compute)."
                )
            if not _is_finite(tensor):
                raise ValueError(
                    f"get_or_compute: field {field!r} of key {key!r} (position {position}) holds NaN or inf; the "
                    f"cache stores finite values only: check that input and the tower."
                )
            # A private copy: the caller may reuse its buffers, and a view would drag its whole batch to disk.
            copy[field] = tensor.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
        checked.append(copy)
    return checked
