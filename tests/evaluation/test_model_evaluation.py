import math
from types import SimpleNamespace

import datasets
import pytest
import torch
from transformers import AutoTokenizer, BertConfig

from hf_mltm.audio import load_audio
from hf_mltm.evaluation import (
    evaluate_retrieval,
    modality_gap,
    retrieval_metrics,
    retrieval_ranks,
    zero_shot_classification,
)
from hf_mltm.models.mltm import MLTMAudioTextConfig, MLTMAudioTextModel, MLTMFeatureExtractor, MLTMProcessor
from hf_mltm.models.panns import PannsConfig
from hf_mltm.ot import euclidean_cost, sinkhorn

pytestmark = pytest.mark.usefixtures("one_thread")

MEL = 16
# (file, category) of real ESC-50 fold-1 clips
CLIPS = [
    ("1-100032-A-0.flac", "dog"),
    ("1-100038-A-14.flac", "chirping_birds"),
    ("1-100210-A-36.flac", "vacuum_cleaner"),
    ("1-100210-B-36.flac", "vacuum_cleaner"),
]
CAPTIONS = [
    ["a dog barks", "a dog is barking loudly"],
    ["birds chirp in the morning", "small birds sing", "chirping birds"],
    ["a vacuum cleaner runs"],
    ["a vacuum cleaner hums", "someone vacuums the floor"],
]


@pytest.fixture(scope="module")
def processor(minilm_dir):
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    return MLTMProcessor(MLTMFeatureExtractor(feature_size=MEL, max_length_s=1.0), tokenizer)


@pytest.fixture(scope="module")
def tiny_model(processor):
    torch.manual_seed(0)
    audio = PannsConfig(variant="cnn10", channels=[8, 8, 8, 16], num_mel_bins=MEL)
    text = BertConfig(vocab_size=processor.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                      num_attention_heads=2, intermediate_size=37)
    config = MLTMAudioTextConfig(audio_config=audio, text_config=text, projection_hidden_size=32, projection_dim=16,
                                 metric_type="euclidean", ot_epsilon=0.1)
    return MLTMAudioTextModel(config).eval()


@pytest.fixture(scope="module")
def items(shared_data):
    """Items view of 4 real ESC-50 clips with 2, 3, 1 and 2 captions (8 in all)."""
    return datasets.Dataset.from_dict({
        "item_id": [name[:-5] for name, _ in CLIPS],
        "item_index": list(range(len(CLIPS))),
        "audio": [str(shared_data / "esc50" / "audio" / name) for name, _ in CLIPS],
        "captions": CAPTIONS,
        "label": [label.replace("_", " ") for _, label in CLIPS],
    })


class TableModel(torch.nn.Module):
    """An m-LTM stand-in (so its family adapter drives it) whose towers return preset embeddings in call order, with
    identity heads and Euclidean ranking: known ranks, no weights. Distinct captions are encoded once each, in order
    of first appearance."""

    def __init__(self, audio_embeds, text_embeds):
        super().__init__()
        self.audio_embeds, self.text_embeds = audio_embeds, text_embeds
        self.config = SimpleNamespace(ot_epsilon=0.05, cost_normalization="batch_max", model_type="mltm_audio_text",
                                      text_pooling="mean", projection_dim=audio_embeds.shape[1])
        self.taken = {"audio": 0, "text": 0}
        self.audio_model, self.text_model = torch.nn.Identity(), torch.nn.Identity()  # towers (fingerprints only)

    def _take(self, kind, count):
        table = self.audio_embeds if kind == "audio" else self.text_embeds
        start = self.taken[kind]
        self.taken[kind] = start + count
        return table[start : start + count]

    def get_tower_outputs(self, input_features=None, audio_attention_mask=None, input_ids=None, attention_mask=None,
                          token_type_ids=None):
        outputs = {}
        if input_features is not None:
            outputs["audio_tower_embeds"] = self._take("audio", input_features.shape[0])
        if input_ids is not None:
            outputs["text_tower_embeds"] = self._take("text", input_ids.shape[0])
        return outputs

    def project_audio(self, audio_tower_embeds):
        return audio_tower_embeds

    def project_text(self, text_tower_embeds):
        return text_tower_embeds

    def pairwise_cost(self, audio_embeds, text_embeds):
        return euclidean_cost(audio_embeds, text_embeds)


def three_items(items):
    captions = [["t0", "t1"], ["t2", "t3"], ["t4"]]
    return items.select(range(3)).map(lambda row, i: {"captions": captions[i]}, with_indices=True)


def test_hand_checked_ranks_give_exact_metrics(items, processor):
    # audio a0=(1,0), a1=(0,1), a2=(-1,0); captions t0,t1 of a0, t2,t3 of a1, t4 of a2
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    model = TableModel(audio, text)
    result = evaluate_retrieval(model, three_items(items), processor, batch_size=2, progress=False,
                                return_embeddings=True)
    assert model.taken == {"audio": 3, "text": 5}
    # text->audio best ranks [0, 1 (a0 ties a2, lower index first), 0, 1, 2]
    t2a = result["distance"]["text_to_audio"]
    assert t2a["R@1"] == pytest.approx(40.0) and t2a["R@5"] == pytest.approx(100.0)
    assert t2a["medR"] == 2 and t2a["meanR"] == pytest.approx(1.8)
    assert t2a["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 2 + 1 / 3) / 5)
    assert t2a["mAP@10"] == pytest.approx(t2a["MRR@10"])
    # audio->text: a0 ranks t0,t4,t1,t2,t3 -> positives at 0, 2; a1 -> t1,t2,t0,t3,t4 -> 1, 3; a2 -> t3,t1,t2,t0,t4 -> 4
    a2t = result["distance"]["audio_to_text"]
    assert a2t["R@1"] == pytest.approx(100 / 3) and a2t["R@5"] == pytest.approx(100.0)
    assert a2t["medR"] == 2 and a2t["meanR"] == pytest.approx(5 / 3 + 1)
    assert a2t["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 / 5) / 3)
    assert a2t["mAP@10"] == pytest.approx(((1 + 2 / 3) / 2 + (1 / 2 + 2 / 4) / 2 + 1 / 5) / 3)
    assert result["distance"]["rsum"] == pytest.approx(40 + 100 + 100 + 100 / 3 + 100 + 100)
    # centroids (0, 1/3) and (1/5, 2/5): gap sqrt(1/25 + 1/225) = sqrt(10) / 15
    assert result["modality_gap"] == pytest.approx(math.sqrt(10) / 15)
    assert (result["num_items"], result["num_captions"]) == (3, 5)
    assert result["embeddings"]["text_item_index"].tolist() == [0, 0, 1, 1, 2]
    assert set(result) == {"distance", "modality_gap", "num_items", "num_captions", "settings", "embeddings", "cost"}
    torch.testing.assert_close(result["cost"], euclidean_cost(audio, text))  # (items, captions)


def test_ot_ranking_removes_a_hub(items, processor):
    # a0 is a hub: captions of a1 and a2 lie closer to a0 than to their own clip, but each clip gets 1/3 of the
    # mass in the transductive OT plan, which restores the one-to-one matching.
    audio = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[-0.3, -0.3], [0.45, 0.0], [0.0, 0.45]])
    data = three_items(items).map(lambda row, i: {"captions": [f"t{i}"]}, with_indices=True)
    result = evaluate_retrieval(TableModel(audio, text), data, processor, ranking_modes=("distance", "ot"),
                                progress=False)
    assert result["distance"]["text_to_audio"]["R@1"] == pytest.approx(100 / 3)
    assert result["ot"]["text_to_audio"]["R@1"] == pytest.approx(100.0)
    assert result["ot"]["audio_to_text"]["R@1"] == pytest.approx(100.0)
    assert result["settings"] == {"ot_epsilon": 0.05, "cost_normalization": "batch_max"}


def test_tiny_model_on_real_clips_matches_direct_ranking(tiny_model, items, processor):
    result = evaluate_retrieval(tiny_model, items, processor, ranking_modes=("distance", "ot"), batch_size=3,
                                progress=False, return_embeddings=True)
    embeds = result["embeddings"]
    assert embeds["audio_embeds"].shape == (4, 16) and embeds["text_embeds"].shape == (8, 16)
    # the embeddings are the model's, whatever the batching
    waveforms = [load_audio(path, 32000)[0] for path in items["audio"]]
    features = processor(audio=waveforms, sampling_rate=32000, return_tensors="pt")
    with torch.no_grad():
        direct_audio = tiny_model.embed_audio(features["input_features"], features["audio_attention_mask"])
        tokens = processor(text=[c for group in CAPTIONS for c in group], return_tensors="pt")
        direct_text = tiny_model.embed_text(tokens["input_ids"], tokens["attention_mask"], tokens["token_type_ids"])
    torch.testing.assert_close(embeds["audio_embeds"], direct_audio, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(embeds["text_embeds"], direct_text, atol=1e-5, rtol=1e-4)
    assert embeds["text_item_index"].tolist() == [0, 0, 1, 1, 1, 2, 3, 3]
    # distance mode: stable sort of the model's cost; OT mode: the same cost minus the OT item potential g
    cost = tiny_model.pairwise_cost(embeds["audio_embeds"], embeds["text_embeds"]).T  # (T, N)
    scale = cost.max().item()
    g = sinkhorn(None, None, cost / scale, 0.1, max_iter=100, tol=1e-6, warn=False).g * scale
    owners = embeds["text_item_index"]
    for mode, ranked_cost in (("distance", cost), ("ot", cost - g)):
        order = ranked_cost.argsort(dim=1, stable=True)
        best = (order == owners[:, None]).float().argmax(1)
        assert result[mode]["text_to_audio"] == pytest.approx(retrieval_metrics(best))
        assert result[mode]["rsum"] == pytest.approx(
            sum(result[mode][d][f"R@{k}"] for d in ("text_to_audio", "audio_to_text") for k in (1, 5, 10))
        )
    ranks = retrieval_ranks(embeds["audio_embeds"], embeds["text_embeds"], torch.arange(4), owners, mode="ot",
                            epsilon=0.1, cost_fn=tiny_model.pairwise_cost)
    assert result["ot"]["audio_to_text"] == pytest.approx(retrieval_metrics(ranks))
    assert result["modality_gap"] == pytest.approx(modality_gap(embeds["audio_embeds"], embeds["text_embeds"]))


def test_modality_gap_on_constructed_embeddings():
    items = torch.tensor([[3.0, 0.0], [0.0, 2.0]])  # normalised: (1, 0), (0, 1) -> centroid (0.5, 0.5)
    texts = torch.tensor([[-1.0, 0.0]])
    assert modality_gap(items, texts) == pytest.approx(math.sqrt(1.5**2 + 0.5**2))
    assert modality_gap(texts, texts * 5) == 0.0
    with pytest.raises(ValueError, match="same d"):
        modality_gap(items, torch.ones(2, 3))


def test_zero_shot_hand_checked(items, processor):
    # prompts: dog (1,0), chirping birds (0,1), vacuum cleaner (-1,0), car horn (0,-1)
    prompts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    # clip 0 (dog) on the dog prompt: rank 0; clip 1 (birds) nearer dog than birds: rank 1; clip 2 (vacuum) on
    # the vacuum prompt: rank 0; clip 3 (vacuum) see below
    audio = torch.tensor([[1.0, 0.0], [0.9, 0.5], [-1.0, 0.0], [0.2, -1.0]])
    labels = ["dog", "chirping_birds", "vacuum_cleaner", "car_horn"]
    model = TableModel(audio, prompts)
    result = zero_shot_classification(model, items, processor, labels, batch_size=3, progress=False)
    assert result["prompts"] == ["This is a sound of dog.", "This is a sound of chirping birds.",
                                 "This is a sound of vacuum cleaner.", "This is a sound of car horn."]
    assert result["references"] == [0, 1, 2, 2]
    # clip 3 (0.2, -1): distances car horn 0.2, dog 1.28, vacuum 1.56, birds 2.01 -> true class at rank 2
    assert result["predictions"] == [0, 0, 2, 3]
    assert result["predicted_labels"] == ["dog", "dog", "vacuum cleaner", "car horn"]
    metrics = result["distance"]["audio_to_label"]
    assert result["accuracy"] == pytest.approx(0.5) and metrics["R@1"] == pytest.approx(50.0)
    assert metrics["R@5"] == pytest.approx(100.0)
    assert metrics["MRR@10"] == pytest.approx((1 + 1 / 2 + 1 + 1 / 3) / 4)


def test_zero_shot_tiny_model_predictions_are_the_nearest_prompt(tiny_model, items, processor):
    labels = ["dog", "chirping_birds", "vacuum_cleaner", "rain", "car_horn"]
    result = zero_shot_classification(tiny_model, items, processor, labels, template="the sound of {label}",
                                      progress=False)
    assert result["references"] == [0, 1, 2, 2]
    with torch.no_grad():
        tokens = processor(text=[f"the sound of {label.replace('_', ' ')}" for label in labels], return_tensors="pt")
        prompt_embeds = tiny_model.embed_text(tokens["input_ids"], tokens["attention_mask"])
        audio = evaluate_retrieval(tiny_model, items, processor, progress=False,
                                   return_embeddings=True)["embeddings"]["audio_embeds"]
        expected = tiny_model.pairwise_cost(audio, prompt_embeds).argmin(1)
    assert result["predictions"] == expected.tolist()
    correct = sum(p == r for p, r in zip(result["predictions"], result["references"], strict=True))
    assert result["accuracy"] == pytest.approx(correct / 4)


def test_bad_inputs_raise_clear_errors(items, processor):
    model = TableModel(torch.eye(2), torch.eye(2))
    with pytest.raises(ValueError, match="Unknown ranking mode"):
        evaluate_retrieval(model, items, processor, ranking_modes=("plan",))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['captions'\]"):
        evaluate_retrieval(model, items.remove_columns("captions"), processor, progress=False)
    with pytest.raises(ValueError, match="not among the 2 labels"):
        zero_shot_classification(model, items, processor, ["dog", "chirping birds"], progress=False)
    with pytest.raises(ValueError, match="no '\\{label\\}' field"):
        zero_shot_classification(model, items, processor, ["dog"], template="a sound", progress=False)
    broken = items.select(range(1)).map(lambda row: {"audio": ""})
    with pytest.raises(ValueError, match="Row 0 of the dataset has an unusable 'audio' value"):
        evaluate_retrieval(model, broken, processor, progress=False)


def test_image_text_pair_scoring_model_on_real_flickr8k_items(shared_data, minilm_dir):
    from hf_mltm.data import build_flickr8k
    from hf_mltm.models.omit import OMITImageProcessor, OMITImageTextConfig, OMITImageTextModel, OMITProcessor

    items = build_flickr8k(shared_data / "flickr8k_1k", view="items", splits=["test"])["test"].select(range(6))
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_dir))
    config = OMITImageTextConfig(
        image_fragment_dim=8, embed_dim=16, image_projection_hidden_size=8, ot_tol=1e-7, ot_max_iter=5000,
        text_config=BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=37),
    )
    torch.manual_seed(0)
    model = OMITImageTextModel(config).eval()
    generator = torch.Generator().manual_seed(1)
    fragments = {item_id: torch.randn(4 + index % 3, 8, generator=generator).numpy()
                 for index, item_id in enumerate(items["item_id"])}
    processor = OMITProcessor(OMITImageProcessor(), tokenizer)
    results = evaluate_retrieval(model, items, processor, ranking_modes=("distance", "ot"), batch_size=4,
                                 fragments=fragments, progress=False)

    # Independent check: one forward over all pairs, ranks by sorting the scores.
    captions = [caption for row in items["captions"] for caption in row]
    owner = torch.tensor([index for index, row in enumerate(items["captions"]) for _ in row])
    padded = torch.zeros(6, 6, 8)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    for index, item_id in enumerate(items["item_id"]):
        padded[index, : len(fragments[item_id])] = torch.from_numpy(fragments[item_id])
        mask[index, : len(fragments[item_id])] = True
    with torch.no_grad():
        scores = model(image_fragments=padded, image_fragment_mask=mask,
                       **tokenizer(captions, padding=True, return_tensors="pt")).scores  # (6, 30)
    torch.testing.assert_close(1 - results["cost"], scores, atol=1e-5, rtol=0)
    text_rank = (scores.T > scores.T.gather(1, owner[:, None])).sum(1)  # rank of the true image per caption
    image_best = torch.stack([(scores[i] > scores[i, owner == i].max()).sum() for i in range(6)])
    distance = results["distance"]
    assert distance["text_to_image"]["R@1"] == pytest.approx(100 * (text_rank < 1).float().mean().item())
    assert distance["text_to_image"]["R@5"] == pytest.approx(100 * (text_rank < 5).float().mean().item())
    assert distance["image_to_text"]["R@1"] == pytest.approx(100 * (image_best < 1).float().mean().item())
    assert set(results["ot"]) == {"text_to_image", "image_to_text", "rsum"}
    assert results["num_items"] == 6 and results["num_captions"] == 30
