"""Checks every model family must pass, on tiny configs, in the style of transformers' ``ModelTesterMixin``.

Each family has a ``<Family>ModelTester`` that builds a tiny config and inputs (hidden 32, 1-2 blocks, 16 mel bins x
64 frames or 12-d fragments, batch 3) and the common tests run on all of them: output shapes and the transformers
output contract, tuple/dict equivalence, eval-mode determinism, batch independence (an item's scores do not depend
on the other items of its batch), save/load round trips, gradients reaching every trainable parameter, the loss
module equal to ``return_loss``, and loading a checkpoint that lacks the heads.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, BertConfig

from hf_mltm.adapters import get_adapter
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel
from hf_mltm.models.omit import OMITImageTextConfig, OMITImageTextModel
from hf_mltm.models.panns import PannsConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_text_config() -> BertConfig:
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)


class MLTMModelTester:
    """Tiny `MLTMAudioTextModel`: PANNs Cnn10 (8-16 channels, 16 mel bins) + 2-layer BERT (hidden 32), d = 16."""

    model_class = MLTMAudioTextModel
    batch_size, frames, mel_bins, tokens = 3, 64, 16, 7
    item_logits, embed_keys = "logits_per_audio", ("audio_embeds", "text_embeds")

    def get_config(self, **kwargs) -> MLTMAudioTextConfig:
        return MLTMAudioTextConfig(audio_config=PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=16),
                                   text_config=tiny_text_config(), projection_hidden_size=32, projection_dim=16,
                                   metric_type="full", **kwargs)

    def get_inputs(self, batch: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        batch = batch or self.batch_size
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.tensor([7, 5, 4, 6][:batch])
        return {
            "input_features": torch.randn(batch, self.frames, self.mel_bins, generator=generator),
            "input_ids": torch.randint(1, 99, (batch, self.tokens), generator=generator),
            "attention_mask": (torch.arange(self.tokens)[None] < lengths[:, None]).long(),
        }

    def select(self, inputs: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
        return {key: value[rows] for key, value in inputs.items()}

    def head_names(self) -> tuple[str, ...]:
        return ("audio_projection", "text_projection", "metric")


class OMITModelTester(MLTMModelTester):
    """Tiny `OMITImageTextModel` on precomputed 12-d fragments (5 per image, some padded) + 2-layer BERT, d = 16."""

    model_class = OMITImageTextModel
    regions, fragment_dim = 5, 12
    item_logits, embed_keys = "logits_per_image", ("image_embeds", "text_embeds")

    def get_config(self, **kwargs) -> OMITImageTextConfig:
        kwargs.setdefault("ot_tol", 1e-6)
        kwargs.setdefault("ot_max_iter", 2000)
        return OMITImageTextConfig(image_fragment_dim=self.fragment_dim, embed_dim=16, image_projection_hidden_size=8,
                                   text_config=tiny_text_config(), **kwargs)

    def get_inputs(self, batch: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
        batch = batch or self.batch_size
        generator = torch.Generator().manual_seed(seed)
        lengths = torch.tensor([7, 5, 4, 6][:batch])
        return {
            "image_fragments": torch.randn(batch, self.regions, self.fragment_dim, generator=generator),
            "image_fragment_mask": torch.arange(self.regions)[None] < torch.tensor([5, 3, 4, 5][:batch])[:, None],
            "input_ids": torch.randint(1, 99, (batch, self.tokens), generator=generator),
            "attention_mask": (torch.arange(self.tokens)[None] < lengths[:, None]).long(),
        }

    def head_names(self) -> tuple[str, ...]:
        return ("image_projection", "text_projection")


TESTERS = [pytest.param(MLTMModelTester(), id="mltm"), pytest.param(OMITModelTester(), id="omit")]


@pytest.mark.parametrize("tester", TESTERS)
def test_create_and_check_model_outputs(tester):
    model = tester.model_class(tester.get_config()).eval()
    out = model(**tester.get_inputs(), return_loss=True)
    b = tester.batch_size
    assert out[tester.item_logits].shape == (b, b) and out.logits_per_text.shape == (b, b)
    torch.testing.assert_close(out.logits_per_text, out[tester.item_logits].T)
    for key in tester.embed_keys:
        assert out[key].shape == (b, 16)
        torch.testing.assert_close(out[key].norm(dim=-1), torch.ones(b))
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert list(out.keys())[0] == "loss"  # the transformers contract: loss first, index access skips None


@pytest.mark.parametrize("tester", TESTERS)
def test_return_dict_false_gives_the_same_values_as_a_tuple(tester):
    model = tester.model_class(tester.get_config()).eval()
    inputs = tester.get_inputs()
    as_dict = model(**inputs, return_loss=True)
    as_tuple = model(**inputs, return_loss=True, return_dict=False)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict[tester.item_logits])


@pytest.mark.parametrize("tester", TESTERS)
def test_eval_mode_is_deterministic_and_scores_do_not_depend_on_the_batch(tester):
    model = tester.model_class(tester.get_config()).eval()
    inputs = tester.get_inputs()
    first, second = model(**inputs), model(**inputs)
    torch.testing.assert_close(first[tester.item_logits], second[tester.item_logits], rtol=0, atol=0)
    # Item 1 against caption 2 alone equals its entry in the full batch (padding and batch mates do not leak).
    alone = model(**{**tester.select(inputs, [1]), **{k: v[[2]] for k, v in inputs.items()
                                                       if k in ("input_ids", "attention_mask")}})
    torch.testing.assert_close(alone[tester.item_logits][0, 0], first[tester.item_logits][1, 2], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("tester", TESTERS)
def test_save_and_from_pretrained_round_trip_reproduces_the_outputs(tester, tmp_path):
    model = tester.model_class(tester.get_config()).eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is tester.model_class
    inputs = tester.get_inputs()
    torch.testing.assert_close(loaded(**inputs)[tester.item_logits], model(**inputs)[tester.item_logits],
                               rtol=0, atol=0)


@pytest.mark.parametrize("tester", TESTERS)
def test_training_gradients_reach_every_trainable_head_parameter(tester):
    model = tester.model_class(tester.get_config()).train()
    model(**tester.get_inputs(), return_loss=True).loss.backward()
    for name, parameter in model.named_parameters():
        if name.startswith(tester.head_names()) and parameter.requires_grad:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("tester", TESTERS)
def test_the_loss_module_on_plain_outputs_equals_return_loss(tester):
    model = tester.model_class(tester.get_config()).eval()
    inputs = tester.get_inputs()
    item_ids = torch.tensor([0, 0, 1])  # rows 0 and 1 show the same item: positives of each other
    expected = model(**inputs, return_loss=True, item_ids=item_ids).loss
    loss_fn = get_adapter(model).loss(model)
    torch.testing.assert_close(loss_fn(model(**inputs), item_ids=item_ids), expected)


@pytest.mark.parametrize("tester", TESTERS)
def test_heads_missing_from_a_checkpoint_are_initialised_not_garbage(tester, tmp_path):
    model = tester.model_class(tester.get_config())
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(tester.head_names())}
    model.save_pretrained(tmp_path, state_dict=state)
    loaded = AutoModel.from_pretrained(tmp_path)
    for name, parameter in loaded.named_parameters():
        if name.startswith(tester.head_names()):
            assert torch.isfinite(parameter).all() and parameter.abs().max() < 10, name
