import json

import pytest
import torch
from PIL import Image
from torch.nn import functional as F
from transformers import (
    AutoModel,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
    AutoTokenizer,
    BertConfig,
    ResNetConfig,
    ViTConfig,
    pipeline,
)

from hf_mltm.evaluation import score_retrieval
from hf_mltm.models.omit import (
    OMITImageProcessor,
    OMITImageTextConfig,
    OMITImageTextModel,
    OMITLoss,
    OMITProcessor,
)
from hf_mltm.models.omit.modeling_omit import keep_top
from hf_mltm.ot import fragment_ot_scores

pytestmark = pytest.mark.usefixtures("one_thread")

FRAGMENT_DIM, EMBED = 12, 16


def tiny_text_config() -> BertConfig:
    return BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)


def tiny_config(**kwargs) -> OMITImageTextConfig:
    kwargs.setdefault("text_config", tiny_text_config())
    return OMITImageTextConfig(image_fragment_dim=FRAGMENT_DIM, embed_dim=EMBED, image_projection_hidden_size=8,
                               **kwargs)


def tiny_inputs(batch=3, regions=5, tokens=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    attention_mask = (torch.arange(tokens)[None] < torch.tensor([7, 5, 4, 6, 7, 3][:batch])[:, None]).long()
    return {
        "image_fragments": torch.randn(batch, regions, FRAGMENT_DIM, generator=generator),
        "image_fragment_mask": torch.arange(regions)[None] < torch.tensor([5, 3, 4, 5, 2, 5][:batch])[:, None],
        "input_ids": torch.randint(1, 99, (batch, tokens), generator=generator),
        "attention_mask": attention_mask,
    }


@pytest.mark.parametrize("loss_type", ["triplet", "infonce", "mltm"])
@pytest.mark.parametrize("partial_matching", ["none", "relevance_threshold", "top_fraction", "mass"])
def test_forward_shapes_and_finite_loss(loss_type, partial_matching):
    model = OMITImageTextModel(tiny_config(loss_type=loss_type, partial_matching=partial_matching)).eval()
    out = model(**tiny_inputs(), return_loss=True, output_transport_plan=True)
    assert out.logits_per_image.shape == (3, 3)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.logits_per_image, out.scores / model.config.temperature)
    assert out.image_embeds.shape == out.text_embeds.shape == (3, EMBED)
    assert out.transport_plan.shape == (3, 3, 5, 7)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.image_projection.linear.weight.grad.abs().sum() > 0
    assert model.text_projection.weight.grad.abs().sum() > 0


def test_scores_follow_the_documented_formula_and_fragments_are_masked():
    model = OMITImageTextModel(tiny_config()).eval()
    inputs = tiny_inputs()
    out = model(**inputs, output_transport_plan=True)
    images, image_mask = model.get_image_fragments(image_fragments=inputs["image_fragments"],
                                                   image_fragment_mask=inputs["image_fragment_mask"])
    texts, text_mask = model.get_text_fragments(inputs["input_ids"], inputs["attention_mask"])
    torch.testing.assert_close(images.norm(dim=-1), torch.ones(3, 5))
    # [CLS] and the last valid token ([SEP]) are not word fragments; padding neither.
    lengths = inputs["attention_mask"].sum(-1)
    assert text_mask.sum(-1).tolist() == (lengths - 2).tolist() and not text_mask[:, 0].any()
    similarity = torch.einsum("brd,tld->btrl", images, texts)
    torch.testing.assert_close(out.scores, (out.transport_plan * similarity).sum((-2, -1)))
    expected = fragment_ot_scores(images, texts, image_mask, text_mask, 0.05, tol=1e-3).value
    torch.testing.assert_close(out.scores, expected)
    padded = ~(image_mask[:, None, :, None] & text_mask[None, :, None, :])
    assert (out.transport_plan[padded.expand_as(out.transport_plan)] == 0).all()
    torch.testing.assert_close(out.image_embeds, F.normalize((images * image_mask[..., None]).sum(1), dim=-1))


def test_triplet_loss_equals_hand_computed_values_in_warmup_and_hardest_phases():
    # Positives 0.6, 0.4, 0.7 on the diagonal, margin 0.05. Violations [margin - S_ii + S_ij]_+:
    # image anchors: row 1 has 0.23 (caption 0); caption anchors: column 0 has 0.03 (image 1), column 1 has 0.15
    # (image 0) and 0.10 (image 2). Sum over negatives: (0.03 + (0.23 + 0.25) + 0) / 3 = 0.17.
    # Hardest negative: (0.03 + (0.23 + 0.15) + 0) / 3 = 0.41 / 3.
    scores = torch.tensor([[0.6, 0.5, 0.1], [0.58, 0.4, 0.3], [0.2, 0.45, 0.7]])
    model = OMITImageTextModel(tiny_config(triplet_margin=0.05, triplet_warmup_steps=2)).train()
    loss_fn = OMITLoss.from_model(model)
    # The warm-up counts optimizer steps (the trainer's global step), not loss calls: two micro-batches of one
    # accumulated step both see step 0.
    losses = [loss_fn.loss_from_scores(scores, step=step).item() for step in (0, 0, 1, 2, 3)]
    assert losses == pytest.approx([0.17, 0.17, 0.17, 0.41 / 3, 0.41 / 3], abs=1e-6)
    assert loss_fn.loss_from_scores(scores).item() == pytest.approx(0.41 / 3, abs=1e-6)  # no step: after warm-up


def _constructed_half_unrelated_example():
    """One image and one caption, each with 8 fragments: 4 regions close to 4 of the words, 4 regions orthogonal to
    every word, and 4 words orthogonal to every region (half of each side is unrelated to the other)."""
    generator = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(EMBED, EMBED, generator=generator))[0].T  # orthonormal rows
    related_words, unrelated_words = basis[:4], basis[12:16]
    related_regions = F.normalize(related_words + 0.1 * basis[4:8], dim=-1)
    unrelated_regions = basis[8:12]
    image = torch.cat([related_regions, unrelated_regions])[None]  # (1, 8, d)
    words = torch.cat([related_words, unrelated_words])[None]  # (1, 8, d)
    return image, torch.ones(1, 8, dtype=torch.bool), words, torch.ones(1, 8, dtype=torch.bool)


@pytest.mark.parametrize(
    ("settings", "max_unrelated_share"),
    [
        ({"partial_matching": "none"}, None),
        ({"partial_matching": "relevance_threshold", "relevance_threshold": 0.2}, 0.0),
        ({"partial_matching": "top_fraction", "relevance_top_fraction": 0.5}, 0.0),
        ({"partial_matching": "mass", "partial_ot_mass": 0.5}, 0.01),
    ],
)
def test_partial_matching_leaves_unrelated_regions_out(settings, max_unrelated_share):
    model = OMITImageTextModel(tiny_config(**settings)).eval()
    image, image_mask, words, word_mask = _constructed_half_unrelated_example()
    result = model.pair_scores(image, image_mask, words, word_mask, return_plans=True)
    plan = result.plan[0, 0]
    unrelated_share = ((plan[4:].sum() + plan[:4, 4:].sum()) / plan.sum()).item()  # touching an unrelated fragment
    if max_unrelated_share is None:  # balanced OT must move the uniform mass of the unrelated fragments too
        assert unrelated_share > 0.45
        assert result.value.item() < 0.6
    else:
        assert unrelated_share <= max_unrelated_share + 1e-6
        assert result.value.item() > 0.95  # only the related regions, each matched to its word


def test_training_keeps_a_random_fraction_of_fragments():
    model = OMITImageTextModel(tiny_config(fragment_keep_ratio=0.8)).train()
    fragments = torch.randn(4, 10, FRAGMENT_DIM)
    mask = torch.arange(10)[None] < torch.tensor([10, 5, 1, 7])[:, None]
    _, kept = model.project_image_fragments(fragments, mask)
    assert kept.sum(-1).tolist() == [8, 4, 1, 6]  # ceil(0.8 n), at least one
    assert not (kept & ~mask).any()
    model.eval()
    assert torch.equal(model.project_image_fragments(fragments, mask)[1], mask)


def test_keep_top_breaks_ties_by_index():
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.1]])
    valid = torch.tensor([[True, True, True, False]])
    assert keep_top(scores, valid, torch.tensor([2])).tolist() == [[True, True, False, False]]


def test_cached_tower_outputs_and_the_loss_module_reproduce_the_forward():
    model = OMITImageTextModel(tiny_config(loss_type="infonce")).eval()
    inputs = tiny_inputs()
    full = model(**inputs, return_loss=True)
    towers = model.get_tower_outputs(**inputs)
    assert set(towers) == {"image_fragments", "image_fragment_mask", "text_hidden_states", "attention_mask"}
    cached = model(**towers, return_loss=True)
    torch.testing.assert_close(cached.scores, full.scores)
    torch.testing.assert_close(cached.loss, full.loss)
    # What a trainer does: a plain forward, then the loss module on its outputs (reusing the batch scores) ...
    torch.testing.assert_close(OMITLoss.from_model(model)(full), full.loss)
    # ... and, when the outputs hold no scores (e.g. gathered from several processes), scoring the fragments again.
    fragments_only = {key: full[key] for key in ("image_fragments", "image_fragment_mask", "text_fragments",
                                                 "text_fragment_mask")}
    torch.testing.assert_close(OMITLoss.from_model(model)(fragments_only), full.loss)


def test_score_retrieval_encodes_once_and_matches_the_forward_scores():
    # Tight tolerance: chunks stop at their own iteration counts, so scores agree to the solver tolerance.
    model = OMITImageTextModel(tiny_config(ot_tol=1e-7, ot_max_iter=5000)).eval()
    inputs = tiny_inputs(batch=6, seed=3)
    expected = model(**inputs).scores
    images = {"image_fragments": inputs["image_fragments"], "image_fragment_mask": inputs["image_fragment_mask"]}
    captions = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    calls = []
    model.text_model.register_forward_hook(lambda module, args, output: calls.append(len(args) or 1))
    scores = score_retrieval(model, images, captions, batch_size=4)
    assert len(calls) == 2  # captions encoded once, in two batches
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=0)  # float32 solves stopped at their own step


@pytest.mark.parametrize(
    ("vision_config", "fragments"),
    [
        (ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
                   patch_size=8), 16),  # (32 / 8)^2 patches, the class token left out
        (ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"), 16),  # 4 x 4 map
    ],
)
def test_vision_towers_give_patch_or_grid_fragments(vision_config, fragments):
    model = OMITImageTextModel(tiny_config(vision_config=vision_config)).eval()
    pixel_values = torch.randn(2, 3, 32, 32)
    images, mask = model.get_image_fragments(pixel_values=pixel_values)
    assert images.shape == (2, fragments, EMBED) and mask.all()
    out = model(pixel_values=pixel_values, input_ids=torch.randint(1, 99, (3, 6)))
    assert out.logits_per_image.shape == (2, 3) and out.vision_model_output is not None
    with pytest.raises(ValueError, match="exactly one of pixel_values"):
        model(pixel_values=pixel_values, image_fragments=torch.randn(2, 3, FRAGMENT_DIM), input_ids=torch.ones(1, 3))


def test_precomputed_model_rejects_pixel_values_and_bad_fragment_shapes():
    model = OMITImageTextModel(tiny_config()).eval()
    with pytest.raises(ValueError, match="no vision tower"):
        model.get_image_fragments(pixel_values=torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"image_fragments must have shape \(B, R, 12\)"):
        model.get_image_fragments(image_fragments=torch.randn(1, 3, 7))
    with pytest.raises(ValueError, match="paired batches"):
        OMITLoss.from_model(model).loss_from_scores(torch.zeros(2, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"partial_matching": "soft"}, "partial_matching='soft' is not supported"),
        ({"fragment_keep_ratio": 0.0}, r"fragment_keep_ratio must be in \(0, 1\]"),
        ({"relevance_threshold": 2.0}, "relevance_threshold is a cosine"),
        ({"ot_epsilon": 0.0}, "ot_epsilon must be > 0"),
        ({"loss_type": "mltm_partial"}, "loss_type='mltm_partial' is not supported"),
    ],
)
def test_invalid_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(**kwargs)


def test_input_embeddings_are_the_text_towers():
    model = OMITImageTextModel(tiny_config())
    assert model.get_input_embeddings() is model.text_model.embeddings.word_embeddings
    replacement = torch.nn.Embedding(99, 32)
    model.set_input_embeddings(replacement)
    assert model.text_model.get_input_embeddings() is replacement


def test_save_and_auto_load_round_trip(tmp_path):
    model = OMITImageTextModel(tiny_config(partial_matching="mass", partial_ot_mass=0.7)).eval()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "omit_image_text" and config["auto_map"]["AutoModel"].endswith("OMITImageTextModel")
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, OMITImageTextModel)
    inputs = tiny_inputs()
    torch.testing.assert_close(loaded(**inputs).scores, model(**inputs).scores)


@pytest.fixture
def tiny_vit_folder(tmp_path, minilm_dir):
    vision = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    config = OMITImageTextConfig(vision_config=vision, text_config=BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=37), embed_dim=EMBED, image_projection_hidden_size=8)
    model = OMITImageTextModel(config).eval()
    processor = OMITProcessor(OMITImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                              tokenizer)
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    return tmp_path


def test_zero_shot_image_classification_pipeline_on_a_real_image(tiny_vit_folder, shared_data):
    image = Image.open(next(iter(sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))))).convert("RGB")
    model = AutoModelForZeroShotImageClassification.from_pretrained(tiny_vit_folder).eval()
    assert isinstance(model, OMITImageTextModel)
    classifier = pipeline("zero-shot-image-classification", model=tiny_vit_folder)
    labels = ["a dog", "a child", "a street", "the sea"]
    results = classifier(image, candidate_labels=labels)
    assert sorted(r["label"] for r in results) == sorted(labels)
    assert sum(r["score"] for r in results) == pytest.approx(1.0, abs=1e-5)
    processor = AutoProcessor.from_pretrained(tiny_vit_folder)
    prompts = [f"This is a photo of {label}." for label in labels]
    inputs = processor(images=image, text=prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**inputs).logits_per_image[0]
    expected = [labels[i] for i in logits.argsort(descending=True)]
    assert [r["label"] for r in results] == expected


@pytest.fixture(scope="module")
def flickr8k_fragments(shared_data):
    """EfficientNet-Lite0 grid fragments (49 x 1280) and the first caption of 16 real Flickr8k training images."""
    from hf_mltm.data import build_flickr8k
    from hf_mltm.data.grid_features import EfficientNetLite0GridEncoder

    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["train"])["train"].select(range(16))
    processor = OMITImageProcessor.for_efficientnet_lite()
    images = [Image.open(path).convert("RGB") for path in items["image"]]
    with torch.no_grad():
        fragments = EfficientNetLite0GridEncoder()(processor(images, return_tensors="pt")["pixel_values"])
    return fragments, [captions[0] for captions in items["captions"]]


def test_twenty_training_steps_on_real_flickr8k_fragments_lower_the_loss(flickr8k_fragments, minilm_dir):
    fragments, captions = flickr8k_fragments
    assert fragments.shape == (16, 49, 1280)
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    text_model = AutoModel.from_pretrained(minilm_dir)
    config = OMITImageTextConfig(image_fragment_dim=1280, text_config=text_model.config, embed_dim=256,
                                 image_projection_hidden_size=256, loss_type="triplet", triplet_margin=0.05,
                                 triplet_warmup_steps=10)
    model = OMITImageTextModel(config, text_model=text_model)
    model.text_model.requires_grad_(False)
    text = tokenizer(captions, padding=True, return_tensors="pt")
    batch = {"image_fragments": fragments, **text}

    def eval_loss():  # the VSE++ (hardest-negative) loss on all 16 pairs, without fragment dropout
        model.eval()
        with torch.no_grad():
            return model(**batch, return_loss=True).loss.item()

    before = eval_loss()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-4)
    model.train()
    for step in range(20):
        rows = slice(0, 8) if step % 2 == 0 else slice(8, 16)
        loss = model(**{key: value[rows] for key, value in batch.items()}, return_loss=True, loss_step=step).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_loss()
    assert after < 0.7 * before, (before, after)


def test_a_ready_made_text_tower_keeps_its_padding_mask(minilm_dir):
    # Regression: composing the config reset the tower's attention implementation to None, and BERT then let padded
    # captions attend to their padding (token states changed by up to 2.2 on a padded batch).
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    reference = AutoModel.from_pretrained(minilm_dir).eval()
    tower = AutoModel.from_pretrained(minilm_dir)
    model = OMITImageTextModel(OMITImageTextConfig(image_fragment_dim=FRAGMENT_DIM, text_config=tower.config),
                               text_model=tower).eval()
    batch = tokenizer(["a dog runs across the grass", "two kids"], padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model.text_model(**batch).last_hidden_state, reference(**batch).last_hidden_state)


def test_saved_folder_loads_with_trust_remote_code_in_a_fresh_process(tmp_path):
    import os
    import subprocess
    import sys

    model = OMITImageTextModel(tiny_config(partial_matching="top_fraction")).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "modeling_omit.py").exists() and (tmp_path / "configuration_omit.py").exists()
    inputs = tiny_inputs()
    torch.save(inputs, tmp_path / "inputs.pt")
    script = (
        "import torch\n"
        "from transformers import AutoModel\n"
        f"model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()\n"
        "assert type(model).__module__.startswith('transformers_modules'), type(model).__module__\n"
        f"inputs = torch.load({str(tmp_path / 'inputs.pt')!r})\n"
        f"torch.save(model(**inputs).logits_per_image, {str(tmp_path / 'logits.pt')!r})\n"
    )
    environment = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=tmp_path, timeout=300)
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), model(**inputs).logits_per_image, atol=0, rtol=0)


def test_saved_model_with_a_pooler_free_text_tower_reloads_with_no_missing_weights(tmp_path):
    # Regression: the factory loads text towers without their unused pooler, but the model rebuilt its tower from
    # the config with a pooler, so reloading best/ reported "pooler ... MISSING, newly initialized".
    from transformers import BertModel

    text_model = BertModel(tiny_text_config(), add_pooling_layer=False)
    model = OMITImageTextModel(tiny_config(text_config=text_model.config), text_model=text_model).eval()
    model.save_pretrained(tmp_path)
    loaded, info = OMITImageTextModel.from_pretrained(tmp_path, output_loading_info=True)
    assert info["missing_keys"] == [] or info["missing_keys"] == set()
    assert not any("pooler" in name for name, _ in loaded.named_parameters())
