"""Tests of the content-keyed, resumable frozen-tower cache (`hf_mltm.feature_cache`)."""

import copy
import hashlib
import json
import multiprocessing
import os
import shutil
import time
import warnings

import numpy as np
import pytest
import torch

import hf_mltm.feature_cache as feature_cache
from hf_mltm.feature_cache import (
    FeatureCache,
    content_key,
    file_fingerprint,
    tower_fingerprint,
    tower_manifest,
)


class Recorder:
    """A ``compute`` that returns known rows and records the positions it was asked for."""

    def __init__(self, make_row, fail_on_call=None):
        self.make_row, self.fail_on_call, self.calls = make_row, fail_on_call, []

    def __call__(self, positions):
        if self.fail_on_call is not None and len(self.calls) == self.fail_on_call:
            raise RuntimeError("tower crashed")
        self.calls.append(list(positions))
        return [self.make_row(position) for position in positions]

    @property
    def positions(self):
        return [position for call in self.calls for position in call]


def never(positions):
    raise AssertionError(f"compute must not be called, got positions {positions}")


def embedding_row(position):
    return {"embeds": torch.arange(4, dtype=torch.float32) + 10 * position}


def shard_files(cache):
    return sorted(cache.path.glob("shard-*.safetensors"))


def rows_equal(left, right):
    return left.keys() == right.keys() and all(
        left[field].dtype == right[field].dtype and torch.equal(left[field], right[field]) for field in left
    )


class TinyTower(torch.nn.Module):
    """A 2-layer tower with a non-persistent buffer, like a mel filterbank."""

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(3, 2)
        self.norm = torch.nn.BatchNorm1d(2)
        self.register_buffer("window", torch.hann_window(4), persistent=False)


# ---------------------------------------------------------------------------------------------------------------
# Rows: round trip, duplicates, order
# ---------------------------------------------------------------------------------------------------------------


def test_round_trip_rows_of_different_shapes_and_dtypes_is_exact(tmp_path):
    rows = [
        {"text_hidden_states": torch.randn(5, 3), "attention_mask": torch.tensor([True] * 4 + [False])},
        {"text_hidden_states": torch.randn(2, 3), "attention_mask": torch.tensor([True, True])},
        {"ids": torch.tensor([2**40, -7, 0], dtype=torch.int64), "scale": torch.tensor(0.1, dtype=torch.float64)},
        {"half": torch.randn(3).to(torch.bfloat16), "empty": torch.zeros(0, 4), "grid": torch.randn(2, 2, 2)[:, 0]},
    ]
    cache = FeatureCache(tmp_path, "ns", shard_size=3)
    first = cache.get_or_compute(["a", "b", "c", "d"], lambda positions: [rows[i] for i in positions],
                                 progress=False)
    second = FeatureCache(tmp_path, "ns").get_or_compute(["d", "c", "b", "a"], never, progress=False)

    for expected, got in zip(rows, first, strict=True):
        assert rows_equal(expected, got)
    for expected, got in zip(rows[::-1], second, strict=True):
        assert rows_equal(expected, got)
    assert second[0]["grid"].is_contiguous() and second[0]["grid"].shape == (2, 2)
    assert len(shard_files(cache)) == 2  # 3 + 1 rows
    second[1]["ids"] += 1  # returned tensors are private, writable copies
    assert torch.equal(cache.get_or_compute(["c"], never, progress=False)[0]["ids"], rows[2]["ids"])


def test_duplicate_keys_are_computed_once_and_returned_in_order(tmp_path):
    compute = Recorder(embedding_row)
    cache = FeatureCache(tmp_path, "ns", shard_size=10)
    rows = cache.get_or_compute(["x", "y", "x", "z", "y"], compute, batch_size=2, progress=False)

    assert compute.calls == [[0, 1], [3]]
    assert [row["embeds"][0].item() for row in rows] == [0.0, 10.0, 0.0, 30.0, 10.0]
    assert len(cache) == 3 and "z" in cache and "w" not in cache
    assert rows[0] is not rows[2] and rows[0]["embeds"] is rows[2]["embeds"]


def test_private_copies_of_views_into_one_batch_tensor(tmp_path):
    batch = torch.arange(12.0).reshape(3, 4)

    def compute(positions):
        return [{"embeds": batch[i]} for i in positions]  # views sharing one storage

    cache = FeatureCache(tmp_path, "ns")
    cache.get_or_compute(["a", "b", "c"], compute, progress=False)
    batch.zero_()  # the caller reuses its buffer
    rows = FeatureCache(tmp_path, "ns").get_or_compute(["a", "b", "c"], never, progress=False)
    assert torch.equal(torch.stack([row["embeds"] for row in rows]), torch.arange(12.0).reshape(3, 4))


# ---------------------------------------------------------------------------------------------------------------
# Resuming
# ---------------------------------------------------------------------------------------------------------------


def test_rerun_after_compute_error_computes_only_rows_not_in_finished_shards(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    crashing = Recorder(embedding_row, fail_on_call=2)  # batches [0, 1], [2, 3] succeed, then it raises
    cache = FeatureCache(tmp_path, "ns", shard_size=3)
    with pytest.raises(RuntimeError, match="tower crashed"):
        cache.get_or_compute(keys, crashing, batch_size=2, progress=False)
    # One full shard (3 rows) plus the finished row 3, saved before the exception propagated.
    assert len(FeatureCache(tmp_path, "ns")) == 4

    rerun = Recorder(embedding_row)
    rows = FeatureCache(tmp_path, "ns", shard_size=3).get_or_compute(keys, rerun, batch_size=2, progress=False)
    assert rerun.calls == [[4, 5], [6, 7], [8, 9]]
    assert all(rows_equal(row, embedding_row(i)) for i, row in enumerate(rows))


def _fill_then_die(root, keys):
    """Child process: compute rows, and exit hard (like SIGKILL: no cleanup) when asked for position 6."""

    def compute(positions):
        if 6 in positions:
            os._exit(3)
        return [embedding_row(position) for position in positions]

    FeatureCache(root, "ns", shard_size=4).get_or_compute(keys, compute, batch_size=2, progress=False)


def test_killed_process_loses_at_most_its_unfinished_shard(tmp_path):
    keys = [f"k{i}" for i in range(10)]
    child = multiprocessing.get_context("fork").Process(target=_fill_then_die, args=(tmp_path, keys))
    child.start()
    child.join(60)
    if child.is_alive():
        child.kill()
    assert child.exitcode == 3
    # Rows 0-5 were computed: one full shard of 4 was renamed into place, rows 4-5 died with the process.
    assert len(FeatureCache(tmp_path, "ns")) == 4

    rerun = Recorder(embedding_row)
    rows = FeatureCache(tmp_path, "ns", shard_size=4).get_or_compute(keys, rerun, batch_size=3, progress=False)
    assert rerun.positions == [4, 5, 6, 7, 8, 9]
    assert all(rows_equal(row, embedding_row(i)) for i, row in enumerate(rows))


# ---------------------------------------------------------------------------------------------------------------
# Content keys and tower fingerprints
# ---------------------------------------------------------------------------------------------------------------


def test_file_fingerprint_matches_hashlib_and_content_key_tags_parts(tmp_path):
    path = tmp_path / "clip.bin"
    data = os.urandom(3 * (1 << 20) + 5)  # spans several 1 MiB chunks
    path.write_bytes(data)
    assert file_fingerprint(path) == hashlib.sha256(data).hexdigest() == file_fingerprint(data)
    assert file_fingerprint(str(path)) == file_fingerprint(path)
    assert file_fingerprint(b"") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    keys = {content_key("ab", "c"), content_key("a", "bc"), content_key(b"ab", "c"), content_key("abc")}
    assert len(keys) == 4
    assert content_key("caption", '{"max_length": 32}') == content_key("caption", '{"max_length": 32}')


def test_file_fingerprint_memoises_old_files_within_the_process(tmp_path, monkeypatch):
    path = tmp_path / "old.wav"
    path.write_bytes(b"RIFF old clip")
    an_hour_ago = time.time_ns() - 3600 * 10**9
    os.utime(path, ns=(an_hour_ago, an_hour_ago))
    digest = file_fingerprint(path)

    def no_reads(*args, **kwargs):
        raise AssertionError("the file was read again")

    monkeypatch.setattr(feature_cache, "open", no_reads, raising=False)
    assert file_fingerprint(path) == digest == hashlib.sha256(b"RIFF old clip").hexdigest()


def test_file_fingerprint_rehashes_recently_modified_file_with_unchanged_mtime(tmp_path):
    path = tmp_path / "fresh.wav"
    path.write_bytes(b"version 1")
    before = file_fingerprint(path)
    mtime_ns = path.stat().st_mtime_ns
    path.write_bytes(b"version 2")  # same size; on a coarse clock the mtime may not move
    os.utime(path, ns=(mtime_ns, mtime_ns))
    assert file_fingerprint(path) == hashlib.sha256(b"version 2").hexdigest() != before


def test_editing_one_audio_file_recomputes_exactly_its_row(tmp_path, shared_data):
    sources = sorted((shared_data / "esc50" / "audio").glob("*.flac"))[:4]
    assert len(sources) == 4
    folder = tmp_path / "clips"
    folder.mkdir()
    paths = []
    for source in sources:
        paths.append(folder / source.name)
        shutil.copy2(source, paths[-1])
        os.chmod(paths[-1], 0o644)

    def encode(positions):  # a stand-in tower: any fixed function of the bytes
        rows = []
        for position in positions:
            data = paths[position].read_bytes()
            digest = torch.tensor(list(hashlib.sha256(data).digest()), dtype=torch.float32)
            rows.append({"audio_tower_embeds": digest, "num_bytes": torch.tensor(len(data))})
        return rows

    def keys_of():
        return [content_key(file_fingerprint(path), '{"offset_s": 0.0}') for path in paths]

    cache = FeatureCache(tmp_path / "cache", "audio")
    before = keys_of()
    first = Recorder(lambda position: encode([position])[0])
    cache.get_or_compute(before, first, progress=False)
    assert first.positions == [0, 1, 2, 3]

    data = bytearray(paths[2].read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    paths[2].write_bytes(bytes(data))
    after = keys_of()
    assert [old != new for old, new in zip(before, after, strict=True)] == [False, False, True, False]

    second = Recorder(lambda position: encode([position])[0])
    rows = cache.get_or_compute(after, second, progress=False)
    assert second.positions == [2]
    assert torch.equal(rows[2]["audio_tower_embeds"], encode([2])[0]["audio_tower_embeds"])
    assert not torch.equal(rows[2]["audio_tower_embeds"], rows[1]["audio_tower_embeds"])


def test_tower_fingerprint_follows_weights_buffers_config_and_settings():
    torch.manual_seed(0)
    tower = TinyTower()
    settings = {"feature_extractor": {"sampling_rate": 32000, "n_mels": 64}, "max_length_s": 10.0}
    base = tower_fingerprint(tower, settings)

    assert tower_fingerprint(copy.deepcopy(tower), dict(settings)) == base  # same content -> same key
    assert len(base) == 64 and int(base, 16) >= 0
    assert tower_fingerprint(tower, {**settings, "max_length_s": 5.0}) != base
    assert tower_fingerprint(tower) != base
    as_array = {**settings, "filterbank": np.array([[0.5, 1.0]])}
    assert tower_fingerprint(tower, as_array) == tower_fingerprint(tower, {**settings, "filterbank": [[0.5, 1.0]]})
    assert tower_fingerprint(tower, as_array) != tower_fingerprint(tower, {**settings, "filterbank": [[0.5, 2.0]]})
    changed = copy.deepcopy(tower)
    with torch.no_grad():
        changed.proj.weight[1, 2] += 1e-6
    assert tower_fingerprint(changed, settings) != base
    changed = copy.deepcopy(tower)
    changed.norm.running_mean += 1  # a persistent buffer
    assert tower_fingerprint(changed, settings) != base
    changed = copy.deepcopy(tower)
    changed.window[0] = 1.0  # a non-persistent buffer (not in state_dict)
    assert tower_fingerprint(changed, settings) != base
    assert tower_fingerprint(copy.deepcopy(tower).half(), settings) != base  # dtypes are part of the weights


def test_tower_fingerprint_ignores_load_path_but_not_config_values():
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=99, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16, max_position_embeddings=16)
    torch.manual_seed(0)
    model = BertModel(config)
    base = tower_fingerprint(model)
    moved = copy.deepcopy(model)
    moved.config._name_or_path = "/somewhere/else"
    moved.config.transformers_version = "0.0.1"
    assert tower_fingerprint(moved) == base
    other = copy.deepcopy(model)
    other.config.hidden_act = "relu"  # same weights, another function
    assert tower_fingerprint(other) != base
    manifest = tower_manifest(model, {"tokenizer": "minilm", "max_length": 32})
    assert manifest["config"]["hidden_act"] == "gelu" and "_name_or_path" not in manifest["config"]
    assert manifest["class"] == "transformers.models.bert.modeling_bert.BertModel"
    # Plus the non-persistent buffers position_ids and token_type_ids, (1, 16) each.
    assert manifest["weights"]["elements"] == sum(t.numel() for t in model.state_dict().values()) + 2 * 16


def test_tower_fingerprint_follows_the_declared_inference_numerics(monkeypatch):
    # Towers without inference_numerics keep the manifest (and so the caches) they always had.
    torch.manual_seed(0)
    tower = TinyTower()
    assert set(tower_manifest(tower)) == {"format", "version", "class", "config", "settings", "weights"}
    base = tower_fingerprint(tower)
    declared = copy.deepcopy(tower)
    declared.inference_numerics = "direct"
    assert tower_manifest(declared)["numerics"] == "direct" and tower_fingerprint(declared) != base
    other = copy.deepcopy(declared)
    other.inference_numerics = "winograd"
    assert tower_fingerprint(other) != tower_fingerprint(declared)
    declared.inference_numerics = 2
    with pytest.raises(ValueError, match="inference_numerics must be a str"):
        tower_manifest(declared)
    # PANNs: the Winograd threshold is part of it, so a cache of direct-convolution features is not reused.
    from hf_mltm.models.panns import PannsConfig, PannsModel, modeling_panns

    panns = PannsModel(PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16))
    with_winograd = tower_fingerprint(panns)
    monkeypatch.setattr(modeling_panns, "WINOGRAD_MIN_IN_CHANNELS", 10**9)
    assert "winograd-f4x4-3x3 for in_channels >= 1000000000" in tower_manifest(panns)["numerics"]
    assert tower_fingerprint(panns) != with_winograd


def test_cache_of_one_fingerprint_is_never_read_under_another(tmp_path):
    tower = TinyTower()
    keys = [f"k{i}" for i in range(5)]
    old = FeatureCache.for_tower(tmp_path, tower, {"crop_s": 10.0}, name="audio")
    old.get_or_compute(keys, Recorder(embedding_row), progress=False)

    other_settings = Recorder(embedding_row)
    new = FeatureCache.for_tower(tmp_path, tower, {"crop_s": 5.0}, name="audio")
    new.get_or_compute(keys, other_settings, progress=False)
    assert other_settings.positions == [0, 1, 2, 3, 4]

    changed = copy.deepcopy(tower)
    with torch.no_grad():
        changed.proj.bias[0] += 1
    other_weights = Recorder(embedding_row)
    FeatureCache.for_tower(tmp_path, changed, {"crop_s": 10.0}, name="audio").get_or_compute(
        keys, other_weights, progress=False)
    assert other_weights.positions == [0, 1, 2, 3, 4]

    again = FeatureCache.for_tower(tmp_path, copy.deepcopy(tower), {"crop_s": 10.0}, name="audio")
    assert again.path == old.path != new.path
    again.get_or_compute(keys, never, progress=False)
    assert len(list(tmp_path.iterdir())) == 3


def test_manifest_records_fingerprint_inputs_and_guards_the_namespace(tmp_path):
    tower = TinyTower()
    cache = FeatureCache.for_tower(tmp_path, tower, {"pooling": "mean"}, name="text", writer=1)
    manifest = json.loads((cache.path / "manifest.json").read_text())
    assert manifest["settings"] == {"pooling": "mean"}
    assert cache.namespace == f"text-{manifest['fingerprint']}"
    assert manifest["fingerprint"] == tower_fingerprint(tower, {"pooling": "mean"})
    cache.get_or_compute(["a", "b"], Recorder(embedding_row), progress=False)
    summary = cache.describe()
    assert (summary["rows"], summary["shards"], summary["corrupt_files"]) == (2, 1, [])
    assert summary["manifest"] == manifest and summary["bytes"] > 0
    with pytest.raises(ValueError, match="describes another tower or settings.*settings"):
        FeatureCache(tmp_path, cache.namespace, manifest={**manifest, "settings": {"pooling": "cls"}})


# ---------------------------------------------------------------------------------------------------------------
# Atomicity and corruption
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip_data_byte", "empty"])
def test_corrupt_shard_warns_with_its_name_and_rows_are_recomputed(tmp_path, damage):
    keys = ["a", "b", "c", "d"]
    cache = FeatureCache(tmp_path, "ns", shard_size=2)
    cache.get_or_compute(keys, Recorder(embedding_row), progress=False)
    shards = shard_files(cache)
    assert len(shards) == 2
    victim = next(path for path in shards if json.loads(_metadata(path)["keys"]) == ["c", "d"])
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        victim.write_bytes(b"\x07" * len(data))
    elif damage == "flip_data_byte":
        victim.write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # valid file, wrong values
    else:
        victim.write_bytes(b"")

    rerun = Recorder(embedding_row)
    with pytest.warns(UserWarning, match=f"corrupt shard .*{victim.name}"):
        rows = FeatureCache(tmp_path, "ns", shard_size=2).get_or_compute(keys, rerun, progress=False)
    assert rerun.positions == [2, 3]
    assert all(rows_equal(row, embedding_row(i)) for i, row in enumerate(rows))
    assert not victim.exists() and victim.with_name(victim.name + ".corrupt").exists()
    assert FeatureCache(tmp_path, "ns").describe()["corrupt_files"] == [victim.name + ".corrupt"]


def _metadata(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return handle.metadata()


def test_shard_removed_by_another_process_after_indexing_is_recomputed_silently(tmp_path):
    FeatureCache(tmp_path, "ns", shard_size=2).get_or_compute(["a", "b", "c"], Recorder(embedding_row),
                                                              progress=False)
    reader = FeatureCache(tmp_path, "ns")
    assert len(reader) == 3  # indexed
    victim = next(path for path in shard_files(reader) if json.loads(_metadata(path)["keys"]) == ["a", "b"])
    victim.unlink()
    rerun = Recorder(embedding_row)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = reader.get_or_compute(["a", "b", "c"], rerun, progress=False)
    assert rerun.positions == [0, 1]
    assert all(rows_equal(row, embedding_row(i)) for i, row in enumerate(rows))


def test_stored_nan_row_is_not_served(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path, "ns")
    with monkeypatch.context() as patch:  # simulate a shard written by a writer without the finiteness check
        patch.setattr(feature_cache, "_is_finite", lambda tensor: True)
        cache.get_or_compute(["bad", "good"], lambda positions: [
            {"embeds": torch.tensor([1.0, float("nan")])}, {"embeds": torch.tensor([2.0, 3.0])}], progress=False)
    rerun = Recorder(lambda position: {"embeds": torch.tensor([4.0, 5.0])})
    with pytest.warns(UserWarning, match="holds NaN/inf"):
        rows = FeatureCache(tmp_path, "ns").get_or_compute(["bad"], rerun, progress=False)
    assert rerun.positions == [0] and torch.equal(rows[0]["embeds"], torch.tensor([4.0, 5.0]))


def test_compute_returning_nan_raises_naming_key_and_stores_nothing(tmp_path):
    cache = FeatureCache(tmp_path, "ns")

    def compute(positions):
        return [{"embeds": torch.tensor([0.0, float("inf") if i == 1 else 1.0])} for i in positions]

    with pytest.raises(ValueError, match="field 'embeds' of key 'k1' .*NaN or inf"):
        cache.get_or_compute(["k0", "k1"], compute, progress=False)
    assert len(cache) == 0


def test_leftover_temporary_files_are_ignored_and_cleaned(tmp_path):
    cache = FeatureCache(tmp_path, "ns", writer=0)
    cache.get_or_compute(["a"], Recorder(embedding_row), progress=False)
    own = cache.path / ".tmp-0-deadbeef.safetensors"  # a killed run of writer 0
    stale = cache.path / ".tmp-7-cafecafe.safetensors"  # writer 7 died two hours ago
    live = cache.path / ".tmp-3-01234567.safetensors"  # writer 3 is writing right now
    for path in (own, stale, live):
        path.write_bytes(b"half a shard")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    reopened = FeatureCache(tmp_path, "ns", writer=0)
    assert not own.exists() and not stale.exists() and live.exists()
    assert len(reopened) == 1
    rows = reopened.get_or_compute(["a"], never, progress=False)
    assert rows_equal(rows[0], embedding_row(0))
    reopened.clear()
    assert not live.exists() and len(reopened) == 0 and not shard_files(reopened)


# ---------------------------------------------------------------------------------------------------------------
# Several writers
# ---------------------------------------------------------------------------------------------------------------


def test_two_writers_fill_disjoint_halves_and_a_third_reader_sees_all(tmp_path):
    keys = [content_key(f"caption {i}") for i in range(9)]
    rank0 = FeatureCache(tmp_path, "text", shard_size=2, writer=0)
    rank1 = FeatureCache(tmp_path, "text", shard_size=2, writer=1)
    rank0.get_or_compute(keys[0::2], Recorder(lambda p: embedding_row(2 * p)), progress=False)
    rank1.get_or_compute(keys[1::2], Recorder(lambda p: embedding_row(2 * p + 1)), progress=False)

    names = [path.name for path in shard_files(rank0)]
    assert sum(name.startswith("shard-0-") for name in names) == 3
    assert sum(name.startswith("shard-1-") for name in names) == 2
    rows = FeatureCache(tmp_path, "text", writer="reader").get_or_compute(keys, never, progress=False)
    assert all(rows_equal(row, embedding_row(i)) for i, row in enumerate(rows))
    assert len(rank0) == 9  # a long-lived instance sees the other writer's shards too


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"namespace": "../escape"}, "namespace="),
        ({"namespace": ""}, "namespace="),
        ({"shard_size": 0}, "shard_size must be a positive integer"),
        ({"shard_size": True}, "shard_size must be a positive integer"),
        ({"writer": "rank-0"}, "writer="),
        ({"writer": -1}, "writer="),
        ({"manifest": {"tokenizer": object()}}, r"manifest\['tokenizer'\]"),
    ],
)
def test_feature_cache_rejects_bad_arguments(tmp_path, kwargs, match):
    arguments = {"namespace": "ns", **kwargs}
    with pytest.raises(ValueError, match=match):
        FeatureCache(tmp_path, **arguments)


@pytest.mark.parametrize(
    ("keys", "compute", "match"),
    [
        ("abc", never, "keys must be a sequence"),
        (["a", ""], never, r"keys\[1\]"),
        (["a", 3], never, r"keys\[1\]"),
        (["a", "b"], lambda positions: [embedding_row(0)], "returned 1 rows.*list of 2 rows"),
        (["a"], lambda positions: embedding_row(0), "returned a dict"),
        (["a"], lambda positions: [{"embeds": [1.0]}], "field 'embeds' of key 'a' is a list"),
        (["a"], lambda positions: [{}], "non-empty dict"),
        (["a"], lambda positions: [{"c": torch.ones(2, dtype=torch.complex64)}], "dtype torch.complex64"),
        (["a"], "not callable", "compute must be callable"),
    ],
)
def test_get_or_compute_rejects_bad_input(tmp_path, keys, compute, match):
    cache = FeatureCache(tmp_path, "ns")
    with pytest.raises(ValueError, match=match):
        cache.get_or_compute(keys, compute, progress=False)
    assert len(cache) == 0


def test_fingerprints_reject_bad_input(tmp_path):
    with pytest.raises(ValueError, match="part 1 is a int"):
        content_key("a", 3)
    with pytest.raises(ValueError, match="at least one part"):
        content_key()
    with pytest.raises(ValueError, match=f"cannot stat {tmp_path / 'missing.wav'}"):
        file_fingerprint(tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="not a regular file"):
        file_fingerprint(tmp_path)
    with pytest.raises(ValueError, match=r"settings\['max_length_s'\] = nan is not finite"):
        tower_fingerprint(TinyTower(), {"max_length_s": float("nan")})
    with pytest.raises(ValueError, match=r"settings\['extractor'\] = .* not JSON-able"):
        tower_fingerprint(TinyTower(), {"extractor": object()})
    with pytest.raises(ValueError, match="meta device"):
        tower_fingerprint(torch.nn.Linear(2, 2, device="meta"))
    with pytest.raises(ValueError, match="must be a torch.nn.Module"):
        tower_fingerprint({"weight": torch.ones(1)})


# ---------------------------------------------------------------------------------------------------------------
# Performance sanity (timings are printed, not asserted)
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_rows_round_trip_and_25m_parameter_fingerprint(tmp_path):
    embeds = torch.randn(10_000, 512)
    keys = [content_key(str(i)) for i in range(len(embeds))]
    start = time.perf_counter()
    FeatureCache(tmp_path, "perf").get_or_compute(
        keys, lambda positions: [{"embeds": embeds[i]} for i in positions], batch_size=256, progress=False)
    written = time.perf_counter() - start
    start = time.perf_counter()
    rows = FeatureCache(tmp_path, "perf").get_or_compute(keys, never, progress=False)
    read = time.perf_counter() - start
    assert torch.equal(torch.stack([row["embeds"] for row in rows]), embeds)

    tower = torch.nn.Module()
    tower.weight = torch.nn.Parameter(torch.randn(25_000_000))
    start = time.perf_counter()
    tower_fingerprint(tower)
    fingerprint = time.perf_counter() - start
    print(f"\n10k x 512 float32 rows: write {written:.2f} s, read {read:.2f} s; "
          f"fingerprint of 25 M parameters: {fingerprint:.2f} s")
