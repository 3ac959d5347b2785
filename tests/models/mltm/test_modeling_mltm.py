import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, AutoTokenizer, BertConfig, pipeline

from hf_mltm.audio import resample
from hf_mltm.models.mltm import (
    MLTMAudioTextConfig,
    MLTMAudioTextModel,
    MLTMFeatureExtractor,
    MLTMLoss,
    MLTMProcessor,
)
from hf_mltm.models.panns import PannsConfig
from hf_mltm.ot import euclidean_cost, mltm_loss

pytestmark = pytest.mark.usefixtures("one_thread")

MEL, FRAMES, BATCH = 16, 64, 4


def tiny_config(**kwargs) -> MLTMAudioTextConfig:
    audio = PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=MEL)
    text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    return MLTMAudioTextConfig(audio_config=audio, text_config=text, projection_hidden_size=32, projection_dim=16,
                               **kwargs)


def tiny_inputs(batch=BATCH, generator_seed=0):
    generator = torch.Generator().manual_seed(generator_seed)
    return {
        "input_features": torch.randn(batch, FRAMES, MEL, generator=generator),
        "input_ids": torch.randint(1, 99, (batch, 7), generator=generator),
        "attention_mask": torch.ones(batch, 7, dtype=torch.long),
    }


@pytest.mark.parametrize("loss_type", ["mltm", "mltm_partial", "infonce", "triplet", "infonce_entropy"])
def test_forward_shapes_and_finite_loss(loss_type):
    model = MLTMAudioTextModel(tiny_config(loss_type=loss_type)).eval()
    out = model(**tiny_inputs(), return_loss=True, output_transport_plan=True)
    assert out.logits_per_audio.shape == (BATCH, BATCH) and out.logits_per_text.shape == (BATCH, BATCH)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_audio.T)
    assert out.audio_embeds.shape == out.text_embeds.shape == (BATCH, 16)
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(BATCH))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.transport_plan.sum(), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert out.audio_model_output.last_hidden_state.shape[0] == BATCH


def test_logits_and_loss_follow_the_documented_formulas():
    config = tiny_config(metric_type="euclidean", ot_epsilon=0.1)
    model = MLTMAudioTextModel(config).eval()
    out = model(**tiny_inputs(), return_loss=True)
    cost = euclidean_cost(out.audio_embeds, out.text_embeds)
    torch.testing.assert_close(out.cost_matrix, cost)
    torch.testing.assert_close(out.logits_per_audio, -cost / 0.1)
    torch.testing.assert_close(out.loss, mltm_loss(cost, 0.1, normalization="batch_max"))


def test_cached_tower_outputs_reproduce_the_full_forward_and_its_loss():
    model = MLTMAudioTextModel(tiny_config(loss_type="mltm")).eval()
    inputs = tiny_inputs()
    full = model(**inputs, return_loss=True)
    with torch.no_grad():
        towers = model.get_tower_outputs(**inputs)
    assert set(towers) == {"audio_tower_embeds", "text_tower_embeds"}
    assert towers["audio_tower_embeds"].shape == (BATCH, model.config.audio_config.hidden_size)
    cached = model(**towers, return_loss=True)
    torch.testing.assert_close(cached.logits_per_audio, full.logits_per_audio)
    torch.testing.assert_close(cached.loss, full.loss)
    assert cached.audio_model_output is None
    # The loss module on a plain forward's outputs (what the trainer does) is the forward's loss.
    torch.testing.assert_close(MLTMLoss.from_model(model)(full), full.loss)
    with pytest.raises(ValueError, match="exactly one of input_features"):
        model(**inputs, audio_tower_embeds=towers["audio_tower_embeds"])


def test_mahalanobis_metric_is_used_and_trained():
    model = MLTMAudioTextModel(tiny_config(metric_type="lowrank", metric_rank=4))
    out = model(**tiny_inputs(), return_loss=True)
    out.loss.backward()
    assert model.metric.weight.grad is not None and model.metric.weight.grad.abs().sum() > 0
    assert model.audio_projection.linear1.weight.grad.abs().sum() > 0
    assert model.text_projection.linear2.weight.grad.abs().sum() > 0


def test_duplicate_items_change_the_loss():
    model = MLTMAudioTextModel(tiny_config()).eval()
    inputs = tiny_inputs()
    inputs["input_features"][1] = inputs["input_features"][0]
    plain = model(**inputs, return_loss=True).loss
    aware = model(**inputs, return_loss=True, item_ids=torch.tensor([0, 0, 1, 2])).loss
    assert not torch.allclose(plain, aware)


def test_unpaired_batch_cannot_compute_a_loss_but_can_score():
    model = MLTMAudioTextModel(tiny_config()).eval()
    inputs = tiny_inputs()
    inputs["input_features"] = inputs["input_features"][:3]
    assert model(**inputs).logits_per_audio.shape == (3, BATCH)
    with pytest.raises(ValueError, match="paired batches"):
        model(**inputs, return_loss=True)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ot_epsilon": 0.0}, "ot_epsilon"),
        ({"partial_ot_mass": 1.5}, "partial_ot_mass"),
        ({"partial_ot_mass": 0.0}, "partial_ot_mass"),
        ({"loss_type": "infonse"}, "loss_type='infonse' is not supported; did you mean 'infonce'"),
        ({"metric_type": "cholesky"}, "metric_type"),
        ({"metric_type": "lowrank"}, "metric_rank"),
        ({"text_pooling": "max"}, "text_pooling"),
        ({"ranking": "plan"}, "ranking"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_default_config_follows_the_paper():
    config = MLTMAudioTextConfig()
    assert config.audio_config.variant == "resnet38" and config.audio_config.use_fc1 is False
    assert config.audio_config.hidden_size == 2048 and config.text_config.model_type == "bert"
    assert (config.projection_hidden_size, config.projection_dim, config.ot_epsilon) == (2048, 1024, 0.05)
    assert config.cost_normalization == "batch_max"


def test_save_and_auto_load_round_trip(tmp_path):
    model = MLTMAudioTextModel(tiny_config(metric_type="full", metric_init="paper")).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, MLTMAudioTextModel)
    assert isinstance(AutoConfig.from_pretrained(tmp_path), MLTMAudioTextConfig)
    inputs = tiny_inputs()
    torch.testing.assert_close(loaded(**inputs).logits_per_audio, model(**inputs).logits_per_audio, atol=0, rtol=0)


def test_fixed_temperature_is_a_buffer_and_both_kinds_share_one_state_dict_entry(tmp_path):
    # A fixed logit_scale is a buffer (FSDP2 cannot shard a 0-dim parameter); checkpoints of either kind load into
    # the other, with the value kept.
    fixed = MLTMAudioTextModel(tiny_config(temperature=0.05))
    learnable = MLTMAudioTextModel(tiny_config(temperature=0.2, learnable_temperature=True))
    assert "logit_scale" in dict(fixed.named_buffers()) and "logit_scale" not in dict(fixed.named_parameters())
    assert dict(learnable.named_parameters())["logit_scale"].requires_grad
    for model in (fixed, learnable):
        assert model.state_dict()["logit_scale"].shape == ()
    learnable.save_pretrained(tmp_path / "learnable")
    loaded = MLTMAudioTextModel.from_pretrained(tmp_path / "learnable", learnable_temperature=False)
    assert "logit_scale" in dict(loaded.named_buffers())
    torch.testing.assert_close(loaded.logit_scale, torch.tensor(math.log(5.0)), atol=1e-6, rtol=0)
    fixed.save_pretrained(tmp_path / "fixed")
    loaded = MLTMAudioTextModel.from_pretrained(tmp_path / "fixed", learnable_temperature=True)
    assert isinstance(loaded.logit_scale, torch.nn.Parameter)
    torch.testing.assert_close(loaded.logit_scale.detach(), torch.tensor(math.log(20.0)), atol=1e-6, rtol=0)


def test_input_embeddings_are_the_text_towers():
    model = MLTMAudioTextModel(tiny_config())
    assert model.get_input_embeddings() is model.text_model.embeddings.word_embeddings
    replacement = torch.nn.Embedding(99, 32)
    model.set_input_embeddings(replacement)
    assert model.text_model.get_input_embeddings() is replacement


def test_saved_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    model = MLTMAudioTextModel(tiny_config(metric_type="diagonal")).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_mltm.MLTMAudioTextModel"
    assert (tmp_path / "modeling_mltm.py").exists() and (tmp_path / "configuration_mltm.py").exists()
    inputs = tiny_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import sys, torch\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(model(**inputs).logits_per_audio, {str(tmp_path / 'logits.pt')!r})\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=tmp_path, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(**inputs).logits_per_audio, atol=0, rtol=0)


def test_parameters_missing_from_a_checkpoint_are_initialised_not_garbage(tmp_path):
    from safetensors.torch import load_file, save_file

    model = MLTMAudioTextModel(tiny_config(metric_type="full"))
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    del weights["metric.weight"], weights["audio_projection.linear1.bias"]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = MLTMAudioTextModel.from_pretrained(tmp_path)
    torch.testing.assert_close(loaded.metric.weight, torch.eye(16))  # identity init, not uninitialised memory
    torch.testing.assert_close(loaded.audio_projection.linear1.bias, torch.zeros(32))


def test_metric_stays_float32_in_bf16_and_bf16_autocast_is_finite(tmp_path):
    MLTMAudioTextModel(tiny_config()).save_pretrained(tmp_path)
    model = MLTMAudioTextModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert model.metric.weight.dtype == torch.float32
    assert model.audio_projection.linear1.weight.dtype == torch.bfloat16
    fp32 = MLTMAudioTextModel.from_pretrained(tmp_path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fp32(**tiny_inputs(), return_loss=True)
    assert torch.isfinite(out.loss) and torch.isfinite(out.logits_per_audio).all()
    assert out.cost_matrix.dtype == torch.float32


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    model = MLTMAudioTextModel(tiny_config()).eval()
    inputs = tiny_inputs()
    model(**inputs, return_loss=True).loss.backward()
    expected = model.text_projection.linear1.weight.grad.clone()
    model.zero_grad()
    model.activation_checkpointing_enable()
    model(**inputs, return_loss=True).loss.backward()
    torch.testing.assert_close(model.text_projection.linear1.weight.grad, expected)


def test_projected_metric_is_projected_after_a_step():
    model = MLTMAudioTextModel(tiny_config(metric_type="projected"))
    with torch.no_grad():
        model.metric.weight.copy_(-torch.eye(16))
    MLTMLoss.from_model(model).on_optimizer_step()
    assert torch.linalg.eigvalsh(model.metric.weight).min() >= -1e-6
    torch.testing.assert_close(model.metric.weight, torch.zeros(16, 16))  # the projection of -I is 0


def test_htsat_audio_tower_from_clap():
    from transformers import ClapAudioConfig

    audio = ClapAudioConfig(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1], num_attention_heads=[2, 2],
                            spec_size=64, window_size=4, num_mel_bins=MEL, patch_stride=[4, 4], patch_size=4)
    config = tiny_config()
    config = MLTMAudioTextConfig(audio_config=audio, text_config=config.text_config, projection_hidden_size=32,
                                 projection_dim=16)
    model = MLTMAudioTextModel(config).eval()
    out = model(**tiny_inputs(), return_loss=True)
    assert out.logits_per_audio.shape == (BATCH, BATCH) and torch.isfinite(out.loss)


def test_from_audio_text_pretrained_composes_saved_towers(tmp_path):
    config = tiny_config()
    MLTMAudioTextModel(config).audio_model.save_pretrained(tmp_path / "audio")
    text_tower = AutoModel.from_config(config.text_config)
    text_tower.save_pretrained(tmp_path / "text")
    model = MLTMAudioTextModel.from_audio_text_pretrained(
        str(tmp_path / "audio"), str(tmp_path / "text"), projection_hidden_size=32, projection_dim=8,
        metric_type="diagonal",
    )
    torch.testing.assert_close(
        model.text_model.embeddings.word_embeddings.weight, text_tower.embeddings.word_embeddings.weight
    )
    assert model.config.projection_dim == 8 and model.metric.parametrization == "diagonal"
    assert model(**tiny_inputs()).logits_per_audio.shape == (BATCH, BATCH)


# ----------------------------------------------------------------------------------------------------------------------
# Real pretrained towers (aisfx-converted audio CNN + all-MiniLM-L6-v2) on real clips from ../shared/data

ESC_CLASSES = ["dog", "rooster", "rain", "chainsaw"]
CLIP_SECONDS = 2.4  # one 100-frame block of the aisfx front-end (44.1 kHz, hop 1024) keeps the test fast


@pytest.fixture(scope="module")
def real_model_dir(aisfx_model_dir, minilm_dir, tmp_path_factory):
    torch.manual_seed(0)
    model = MLTMAudioTextModel.from_audio_text_pretrained(
        str(aisfx_model_dir), str(minilm_dir), text_pooling="mean", projection_hidden_size=256,
        projection_dim=128, metric_type="lowrank", metric_rank=64,
    )
    processor = MLTMProcessor(MLTMFeatureExtractor.from_pretrained(aisfx_model_dir),
                              AutoTokenizer.from_pretrained(minilm_dir))
    output_dir = tmp_path_factory.mktemp("mltm_real")
    model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    return output_dir


@pytest.fixture(scope="module")
def esc50_clips(shared_data):
    import csv

    with open(shared_data / "esc50" / "meta" / "esc50.csv") as handle:
        rows = [row for row in csv.DictReader(handle) if row["category"] in ESC_CLASSES]
    clips = []
    for category in ESC_CLASSES:
        for row in [r for r in rows if r["category"] == category][:2]:
            audio, rate = sf.read(shared_data / "esc50" / "audio" / row["filename"], dtype="float32")
            clips.append((audio[: int(CLIP_SECONDS * rate)], rate, category))
    return clips


def test_training_steps_on_real_clips_lower_the_mltm_loss(real_model_dir, esc50_clips):
    model = AutoModel.from_pretrained(real_model_dir)
    processor = AutoProcessor.from_pretrained(real_model_dir)
    assert isinstance(processor, MLTMProcessor)
    audio = [clip for clip, _, _ in esc50_clips]
    captions = [f"the sound of {label.replace('_', ' ')}" for _, _, label in esc50_clips]
    item_ids = torch.tensor([ESC_CLASSES.index(label) for _, _, label in esc50_clips])  # same class = positive
    batch = processor(text=captions, audio=audio, sampling_rate=esc50_clips[0][1], return_tensors="pt")

    def evaluation_loss():
        model.eval()
        with torch.no_grad():
            return model(**batch, item_ids=item_ids, return_loss=True).loss.item()

    before = evaluation_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    for _ in range(20):
        loss = model(**batch, item_ids=item_ids, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluation_loss()
    assert np.isfinite(before) and after < 0.7 * before, (before, after)


def test_zero_shot_pipeline_on_real_audio(real_model_dir, esc50_clips):
    model = AutoModel.from_pretrained(real_model_dir)
    processor = AutoProcessor.from_pretrained(real_model_dir)
    classifier = pipeline("zero-shot-audio-classification", model=model, feature_extractor=processor.feature_extractor,
                          tokenizer=processor.tokenizer)
    audio, rate, _ = esc50_clips[0]
    waveform = resample(audio, rate, processor.feature_extractor.sampling_rate)
    labels = [label.replace("_", " ") for label in ESC_CLASSES]
    result = classifier(waveform, candidate_labels=labels)
    assert sorted(r["label"] for r in result) == sorted(labels)
    assert sum(r["score"] for r in result) == pytest.approx(1.0, abs=1e-5)
    # the pipeline ranks exactly as the model's logits do
    inputs = processor(text=[f"This is a sound of {label}." for label in labels], audio=[waveform],
                       sampling_rate=processor.feature_extractor.sampling_rate, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_audio[0]
    assert [r["label"] for r in result] == [labels[i] for i in logits.argsort(descending=True).tolist()]


def test_bf16_autocast_on_real_towers_is_finite(real_model_dir, esc50_clips):
    model = AutoModel.from_pretrained(real_model_dir).eval()
    processor = AutoProcessor.from_pretrained(real_model_dir)
    batch = processor(text=["the sound of a dog", "rain"], audio=[esc50_clips[0][0], esc50_clips[-1][0]],
                      sampling_rate=esc50_clips[0][1], return_tensors="pt")
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch, return_loss=True)
    assert torch.isfinite(out.loss) and torch.isfinite(out.logits_per_audio).all()
    assert model.metric.weight.dtype == torch.float32


def test_a_ready_made_text_tower_keeps_its_padding_mask(minilm_dir):
    # Regression: composing the config reset the tower's attention implementation to None, and BERT then let padded
    # captions attend to their padding, so a caption's embedding depended on the batch it was padded in.
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    reference = AutoModel.from_pretrained(minilm_dir).eval()
    tower = AutoModel.from_pretrained(minilm_dir)
    config = MLTMAudioTextConfig(audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=MEL),
                                 text_config=tower.config, projection_hidden_size=32, projection_dim=16)
    model = MLTMAudioTextModel(config, text_model=tower).eval()
    batch = tokenizer(["a dog barks twice in the distance", "rain"], padding=True, return_tensors="pt")
    alone = tokenizer(["rain"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.text_model(**batch).last_hidden_state, reference(**batch).last_hidden_state)
        torch.testing.assert_close(model.embed_text(**batch)[1], model.embed_text(**alone)[0], atol=1e-5, rtol=0)
