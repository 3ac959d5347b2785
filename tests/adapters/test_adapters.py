"""The family adapters: registry, cached training data through the content-keyed feature cache, and evaluation.

Cache acceptance (issue 9): editing one audio file (a temporary copy of real clips) re-embeds exactly that clip;
changing a tower setting re-embeds everything; a cache written for another tower is never read.
"""

import shutil

import pytest
import soundfile as sf
import torch
from transformers import AutoTokenizer, BertConfig

from hf_mltm.adapters import MLTMAdapter, OMITAdapter, get_adapter
from hf_mltm.data import build_esc50
from hf_mltm.evaluation import evaluate_retrieval
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.omit import OMITImageTextConfig
from hf_mltm.models.panns import PannsConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_mltm(tokenizer, seed: int = 0) -> MLTMAudioTextModel:
    torch.manual_seed(seed)
    config = MLTMAudioTextConfig(
        audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
        text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37),
        projection_hidden_size=32, projection_dim=16, metric_type="diagonal", text_pooling="mean",
    )
    return MLTMAudioTextModel(config).eval()


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return AutoTokenizer.from_pretrained(str(minilm_dir))


@pytest.fixture
def clips(tmp_path, shared_data):
    """Six real ESC-50 clips copied to a temporary folder (so that one can be edited), as a captions view."""
    source = shared_data / "esc50"
    (tmp_path / "esc50" / "audio").mkdir(parents=True)
    shutil.copytree(source / "meta", tmp_path / "esc50" / "meta")
    items = build_esc50(source, view="captions")["test"].select(range(6))
    for path in items["audio"]:
        shutil.copy(path, tmp_path / "esc50" / "audio")
    rows = build_esc50(tmp_path / "esc50", view="captions", on_missing="skip")["test"]
    assert len(rows) == 6
    return rows


def counting(model):
    """Count the clips and captions the towers encode (forward hooks on the towers)."""
    counts = {"audio": 0, "text": 0}
    model.audio_model.register_forward_hook(lambda m, a, k, o: counts.__setitem__("audio", counts["audio"] + len(o[0])),
                                            with_kwargs=True)
    model.text_model.register_forward_hook(lambda m, a, k, o: counts.__setitem__("text", counts["text"] + len(o[0])),
                                           with_kwargs=True)
    return counts


def test_registry_finds_each_family_by_model_config_or_type(tokenizer):
    model = tiny_mltm(tokenizer)
    assert isinstance(get_adapter(model), MLTMAdapter)
    assert isinstance(get_adapter(model.config), MLTMAdapter)
    assert isinstance(get_adapter("omit_image_text"), OMITAdapter)
    assert isinstance(get_adapter(OMITImageTextConfig(image_fragment_dim=8)), OMITAdapter)
    with pytest.raises(ValueError, match="did you mean 'mltm_audio_text'"):
        get_adapter("mltm_audio_txt")


def test_cached_training_batches_equal_the_raw_forward_and_its_loss(tokenizer, clips, tmp_path):
    model = tiny_mltm(tokenizer)
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)
    adapter = get_adapter(model)
    indices, collate = adapter.cached_training_data(model, processor, clips, cache_dir=tmp_path / "cache",
                                                    collator_kwargs={}, batch_size=4, progress=False)
    assert indices == list(range(6))
    cached = collate([4, 0, 2])
    raw = adapter.collator(processor)([clips[i] for i in (4, 0, 2)])
    assert cached["item_ids"].tolist() == raw["item_ids"].tolist()
    with torch.no_grad():
        from_cache = model(**{k: v for k, v in cached.items() if k != "item_ids"}, return_loss=True)
        from_raw = model(**{k: v for k, v in raw.items() if k != "item_ids"}, return_loss=True)
    torch.testing.assert_close(from_cache.logits_per_audio, from_raw.logits_per_audio, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(from_cache.loss, from_raw.loss, atol=1e-5, rtol=1e-5)


def test_editing_one_file_re_embeds_exactly_that_clip(tokenizer, clips, tmp_path):
    model = tiny_mltm(tokenizer)
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)
    adapter, cache = get_adapter(model), tmp_path / "cache"
    counts = counting(model)
    first = adapter.item_tower_rows(model, processor, clips, cache_dir=cache, progress=False)
    assert counts["audio"] == 6
    again = adapter.item_tower_rows(model, processor, clips, cache_dir=cache, progress=False)
    assert counts["audio"] == 6  # all six from the cache
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a["audio_tower_embeds"], b["audio_tower_embeds"])
    # Edit clip 3 in place (same path, same length, other samples): only it is embedded again.
    path = clips["audio"][3]
    waveform, rate = sf.read(path)
    sf.write(path, waveform[::-1].copy(), rate, format="FLAC")
    edited = adapter.item_tower_rows(model, processor, clips, cache_dir=cache, progress=False)
    assert counts["audio"] == 7
    changed = [not torch.equal(a["audio_tower_embeds"], b["audio_tower_embeds"]) for a, b in zip(first, edited,
                                                                                               strict=True)]
    assert changed == [False, False, False, True, False, False]


def test_a_changed_setting_or_another_tower_re_embeds_everything(tokenizer, clips, tmp_path):
    cache = tmp_path / "cache"
    model = tiny_mltm(tokenizer)
    adapter = get_adapter(model)
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)
    counts = counting(model)
    base = adapter.item_tower_rows(model, processor, clips, cache_dir=cache, progress=False)
    longer = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=2.0), tokenizer)
    adapter.item_tower_rows(model, longer, clips, cache_dir=cache, progress=False)
    assert counts["audio"] == 12  # a setting of the front end changed: every clip again
    other = tiny_mltm(tokenizer, seed=1)  # same architecture, other weights
    other_counts = counting(other)
    rows = adapter.item_tower_rows(other, processor, clips, cache_dir=cache, progress=False)
    assert other_counts["audio"] == 6  # never served from the first tower's cache
    assert not torch.equal(rows[0]["audio_tower_embeds"], base[0]["audio_tower_embeds"])
    with torch.no_grad():
        direct = other.get_tower_outputs(**{k: v for k, v in processor(
            audio=[sf.read(clips["audio"][0])[0]], sampling_rate=sf.info(clips["audio"][0]).samplerate,
            return_tensors="pt").items()})
    torch.testing.assert_close(rows[0]["audio_tower_embeds"], direct["audio_tower_embeds"][0], atol=1e-5, rtol=1e-5)


def test_evaluation_through_the_cache_equals_evaluation_without_it(tokenizer, shared_data, tmp_path):
    model = tiny_mltm(tokenizer)
    processor = MLTMProcessor(MLTMFeatureExtractor(feature_size=16, max_length_s=1.0), tokenizer)
    items = build_esc50(shared_data / "esc50", view="items")["test"].select(range(8))
    plain = evaluate_retrieval(model, items, processor, ranking_modes=("distance", "ot"), progress=False)
    counts = counting(model)
    cached = [evaluate_retrieval(model, items, processor, ranking_modes=("distance", "ot"), progress=False,
                                 cache_dir=tmp_path / "cache") for _ in range(2)]
    assert counts["audio"] == 8  # the second evaluation embedded no clip
    for result in cached:
        torch.testing.assert_close(result["cost"], plain["cost"])
        for mode in ("distance", "ot"):
            assert result[mode] == plain[mode]


def test_tokenizer_settings_do_not_change_after_the_first_call(tokenizer):
    # Regression: the fast tokenizer's JSON records its truncation/padding state, which the first call changes, so
    # a process's first and later text-tower calls used different cache folders and embedded captions twice.
    from hf_mltm.adapters.base import tokenizer_settings

    fresh = AutoTokenizer.from_pretrained(tokenizer.name_or_path)
    before = tokenizer_settings(fresh, 32)
    fresh(["a dog barks", "rain"], padding=True, truncation=True, max_length=32)
    assert tokenizer_settings(fresh, 32) == before
    assert tokenizer_settings(fresh, 16) != before  # the length limit still counts
