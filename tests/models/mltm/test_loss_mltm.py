"""`MLTMLoss` (the loss module) and the shared loss vocabulary: exact values, the trainer's path, old names."""

import math
import warnings

import pytest
import torch
from transformers import BertConfig

from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMLoss
from hf_mltm.models.panns import PannsConfig
from hf_mltm.ot import contrastive_loss, euclidean_cost, mltm_loss, triplet_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(**kwargs) -> MLTMAudioTextModel:
    audio = PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16)
    text = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = MLTMAudioTextConfig(audio_config=audio, text_config=text, projection_hidden_size=32, projection_dim=16,
                                 **kwargs)
    return MLTMAudioTextModel(config).eval()


def embeddings(seed: int = 0, b: int = 5, d: int = 16) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    audio = torch.nn.functional.normalize(torch.randn(b, d, generator=generator), dim=-1)
    text = torch.nn.functional.normalize(audio + 0.3 * torch.randn(b, d, generator=generator), dim=-1)
    return {"audio_embeds": audio, "text_embeds": text}


def test_mltm_loss_module_equals_the_ot_loss_of_the_model_cost():
    model = tiny_model(metric_type="euclidean", ot_epsilon=0.1)
    outputs = embeddings()
    expected = mltm_loss(euclidean_cost(outputs["audio_embeds"], outputs["text_embeds"]), 0.1,
                         normalization="batch_max", max_iter=1000, tol=1e-6)
    torch.testing.assert_close(MLTMLoss.from_model(model)(outputs), expected)


@pytest.mark.parametrize("loss_type", ["mltm", "mltm_partial"])
def test_detach_cost_scale_reaches_the_ot_loss_and_changes_only_the_gradient(loss_type):
    outputs = {k: v.requires_grad_(True) for k, v in embeddings(seed=2).items()}
    losses, grads = [], []
    for detach in (False, True):
        model = tiny_model(metric_type="euclidean", ot_epsilon=0.1, loss_type=loss_type, detach_cost_scale=detach)
        loss = MLTMLoss.from_model(model)(outputs)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, outputs["audio_embeds"])[0])
    cost = euclidean_cost(outputs["audio_embeds"], outputs["text_embeds"])
    expected = mltm_loss(cost, 0.1, normalization="batch_max", detach_scale=True, tol=1e-6) if loss_type == "mltm" \
        else None
    if expected is not None:
        torch.testing.assert_close(losses[1], expected)
    torch.testing.assert_close(losses[0], losses[1])
    assert not torch.allclose(grads[0], grads[1])


def test_detach_cost_scale_must_be_a_boolean():
    with pytest.raises(ValueError, match="detach_cost_scale must be true or false, got 'yes'"):
        tiny_model(detach_cost_scale="yes")


def test_infonce_uses_the_model_temperature_and_its_gradient():
    model = tiny_model(loss_type="infonce", temperature=0.1, learnable_temperature=True)
    outputs = embeddings()
    loss = MLTMLoss.from_model(model)(outputs)
    similarity = outputs["audio_embeds"] @ outputs["text_embeds"].T
    torch.testing.assert_close(loss, contrastive_loss(similarity, torch.tensor(0.1)))
    loss.backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


def test_loss_from_model_reads_the_current_temperature():
    # from_model looks logit_scale up at each call: a fixed temperature is a buffer, which a device or dtype move
    # (or FSDP) replaces by a new tensor; a loss holding the old one would keep using it.
    model = tiny_model(loss_type="infonce", temperature=0.1)
    loss_fn = MLTMLoss.from_model(model)
    outputs = embeddings()
    similarity = outputs["audio_embeds"] @ outputs["text_embeds"].T
    torch.testing.assert_close(loss_fn(outputs), contrastive_loss(similarity, torch.tensor(0.1)))
    model.logit_scale = torch.tensor(math.log(1 / 0.5))  # a new buffer tensor, as a move would make
    torch.testing.assert_close(loss_fn(outputs), contrastive_loss(similarity, torch.tensor(0.5)))


def test_triplet_warm_up_counts_optimizer_steps():
    model = tiny_model(loss_type="triplet", triplet_warmup_steps=3)
    outputs = embeddings(seed=1)
    loss_fn = MLTMLoss.from_model(model)
    similarity = outputs["audio_embeds"] @ outputs["text_embeds"].T
    summed = triplet_loss(similarity, 0.2, hardest_negative=False)
    hardest = triplet_loss(similarity, 0.2, hardest_negative=True)
    assert not torch.allclose(summed, hardest)
    for step in (0, 1, 2):
        torch.testing.assert_close(loss_fn(outputs, step=step), summed)
    for step in (3, 10, None):
        torch.testing.assert_close(loss_fn(outputs, step=step), hardest)
    # the model's own forward passes its loss_step through
    model(input_features=torch.randn(2, 64, 16), input_ids=torch.randint(1, 99, (2, 5)), return_loss=True,
          loss_step=0)


def test_the_loss_module_registers_no_parameter_of_its_own():
    model = tiny_model(metric_type="full", loss_type="infonce", learnable_temperature=True)
    assert list(MLTMLoss.from_model(model).parameters()) == []


def test_unpaired_outputs_raise_a_clear_error():
    outputs = embeddings()
    outputs["text_embeds"] = outputs["text_embeds"][:3]
    with pytest.raises(ValueError, match="paired batches"):
        MLTMLoss.from_model(tiny_model())(outputs)


@pytest.mark.parametrize("old,new", [("contrastive", "infonce"), ("contrastive_entropy", "infonce_entropy")])
def test_old_loss_type_names_load_with_a_warning_naming_the_new_one(old, new):
    with pytest.warns(FutureWarning, match=f"use loss_type='{new}'"):
        config = MLTMAudioTextConfig(loss_type=old)
    assert config.loss_type == new
    assert config.to_dict()["loss_type"] == new


def test_old_temperature_key_loads_into_temperature():
    with pytest.warns(FutureWarning, match="'temperature'"):
        config = MLTMAudioTextConfig(contrastive_temperature=0.2)
    assert config.temperature == 0.2 and "contrastive_temperature" not in config.to_dict()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert MLTMAudioTextConfig.from_dict(config.to_dict()).temperature == 0.2


@pytest.mark.parametrize("name", ["loss_from_inputs", "matching_loss", "project_metric_", "loss_steps"])
def test_removed_members_fail_naming_their_replacement(name):
    with pytest.raises(AttributeError, match="removed in hf_mltm 0.2; instead"):
        getattr(tiny_model(), name)


def test_removed_forward_argument_fails_naming_the_loss_module():
    with pytest.raises(ValueError, match="MLTMLoss"):
        tiny_model()(input_features=torch.randn(2, 64, 16), input_ids=torch.randint(1, 99, (2, 5)),
                     output_loss_inputs=True)
