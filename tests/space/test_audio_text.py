"""The Space's audio-text logic: gallery embeddings through the feature cache, search by distance and by
transductive OT (parity with `ranks_from_cost`), uploads, zero-shot labels and the clip-caption transport plan."""

import math

import numpy as np
import pytest
import torch

from hf_mltm.audio import load_audio
from hf_mltm.evaluation import ranks_from_cost
from hf_mltm.space import AudioGallery, SpaceInputError, prepare_audio, transport_plan
from hf_mltm.space.audio_text import classify_clip, ot_correction

pytestmark = pytest.mark.usefixtures("one_thread")


def reference_audio_embeds(model, processor, paths):
    """Clip embeddings straight through the processor and the model (no adapter, no cache)."""
    rate = processor.feature_extractor.sampling_rate
    batch = processor(audio=[load_audio(path, rate)[0] for path in paths], sampling_rate=rate, return_tensors="pt")
    with torch.no_grad():
        return model.embed_audio(batch["input_features"], batch["audio_attention_mask"])


def reference_text_embeds(model, processor, texts):
    tokens = processor.tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model.embed_text(tokens["input_ids"], tokens["attention_mask"])


def test_a_second_gallery_start_reads_every_clip_from_the_feature_cache(tiny_mltm, gallery_clips, tmp_path):
    model, processor = tiny_mltm
    encoded = []
    handle = model.audio_model.register_forward_hook(
        lambda module, args, kwargs, output: encoded.append(len(output.pooler_output)), with_kwargs=True)
    try:
        first = AudioGallery(model, processor, gallery_clips, cache_dir=tmp_path)
        assert sum(encoded) == len(gallery_clips)
        second = AudioGallery(model, processor, gallery_clips, cache_dir=tmp_path)
        assert sum(encoded) == len(gallery_clips)  # nothing ran through the audio tower again
    finally:
        handle.remove()
    torch.testing.assert_close(second.embeds.tensors["embeds"], first.embeds.tensors["embeds"], rtol=0, atol=0)


def test_distance_search_ranks_clips_by_the_model_cost(gallery, tiny_mltm, gallery_clips):
    model, processor = tiny_mltm
    audio = reference_audio_embeds(model, processor, [clip.audio for clip in gallery_clips])
    query = reference_text_embeds(model, processor, ["a dog barking"])
    with torch.no_grad():
        cost = model.pairwise_cost(audio, query)[:, 0]  # (N,)
    hits = gallery.search("  a dog   barking ", mode="distance", top_k=len(gallery_clips))
    assert [hit.clip.item_id for hit in hits] == [gallery_clips[j].item_id for j in torch.argsort(cost).tolist()]
    np.testing.assert_allclose([hit.cost for hit in hits], torch.sort(cost).values.numpy(), atol=1e-5)
    assert [hit.score for hit in hits] == [hit.cost for hit in hits]
    assert [hit.rank for hit in gallery.search("a dog barking", top_k=2)] == [1, 2]


def test_ot_search_ranks_as_ranks_from_cost_in_ot_mode_with_the_context_queries(gallery, tiny_mltm):
    model, processor = tiny_mltm
    hits = gallery.search("church bells", mode="ot", top_k=len(gallery))
    queries = reference_text_embeds(model, processor, ["church bells", *gallery.context_prompts])
    with torch.no_grad():
        cost = model.pairwise_cost(gallery.embeds.tensors["embeds"], queries).T  # (1 + K, N)
    order = [gallery.clips.index(hit.clip) for hit in hits]
    for position, item in enumerate(order):
        query_ids = torch.zeros(len(cost), dtype=torch.long)
        query_ids[0] = item
        ranks = ranks_from_cost(cost, query_ids, torch.arange(len(gallery)), mode="ot",
                                **gallery.adapter.ranking_settings(model))
        assert ranks[0, 0].item() == position


def test_ot_correction_demotes_a_hub_clip_that_every_query_is_close_to():
    # Clip 0 is close to all three queries; query 0 also has its own clip 1. By distance clip 0 wins for query 0;
    # the OT correction charges clip 0 for being everyone's neighbour, and clip 1 comes first.
    cost = torch.tensor([[0.10, 0.12, 0.90], [0.10, 0.90, 0.12], [0.10, 0.90, 0.90]])
    assert torch.argsort(cost[0]).tolist() == [0, 1, 2]
    corrected = cost[0] - ot_correction(cost, epsilon=0.05, normalization="batch_max")
    assert torch.argsort(corrected).tolist() == [1, 0, 2]


def test_search_rejects_an_empty_query_an_unknown_mode_and_no_results(gallery):
    with pytest.raises(SpaceInputError, match="Type what you want to hear"):
        gallery.search(" ")
    with pytest.raises(SpaceInputError, match="Unknown ranking mode 'cosine'"):
        gallery.search("dog", mode="cosine")
    with pytest.raises(SpaceInputError, match="at least 1, got 0"):
        gallery.search("dog", top_k=0)


def test_uploaded_clips_are_searched_with_the_gallery_without_changing_it(gallery, gallery_clips):
    rate = gallery.processor.feature_extractor.sampling_rate
    upload = prepare_audio(gallery_clips[3].audio, rate)
    user = gallery.add_clips(None, [upload])
    assert len(gallery) == len(gallery_clips) and len(user) == 1
    assert user.clips[0].item_id == "upload 1" and user.clips[0].audio == gallery_clips[3].audio
    torch.testing.assert_close(user.embeds.tensors["embeds"][0], gallery.embeds.tensors["embeds"][3], atol=1e-5,
                               rtol=0)
    hits = {hit.clip.item_id: hit.cost for hit in gallery.search("water", top_k=10, user=user)}
    assert len(hits) == len(gallery_clips) + 1
    assert math.isclose(hits["upload 1"], hits[gallery_clips[3].item_id], abs_tol=1e-5)
    with pytest.raises(SpaceInputError, match="At most 1 clips can be added per visit"):
        from hf_mltm.space import InputLimits

        gallery.add_clips(user, [upload], limits=InputLimits(max_uploads=1))


def test_zero_shot_probabilities_are_the_softmax_of_minus_cost_over_epsilon(tiny_mltm, gallery_clips):
    model, processor = tiny_mltm
    labels = ["dog", "chirping_birds", "vacuum cleaner"]
    clip = prepare_audio(gallery_clips[0].audio, processor.feature_extractor.sampling_rate)
    scores = classify_clip(model, processor, clip, labels, template="a recording of {label}")
    prompts = ["a recording of dog", "a recording of chirping birds", "a recording of vacuum cleaner"]
    audio = reference_audio_embeds(model, processor, [gallery_clips[0].audio])
    with torch.no_grad():
        cost = model.pairwise_cost(audio, reference_text_embeds(model, processor, prompts))[0].double()
    expected = torch.softmax(-cost / model.config.ot_epsilon, dim=-1)
    by_label = {score.label: score for score in scores}
    for label, prompt, probability in zip(labels, prompts, expected.tolist(), strict=True):
        assert by_label[label].prompt == prompt
        assert math.isclose(by_label[label].probability, probability, abs_tol=1e-5)
    assert [score.probability for score in scores] == sorted((s.probability for s in scores), reverse=True)
    assert math.isclose(sum(score.probability for score in scores), 1.0, abs_tol=1e-9)


def test_transport_plan_of_a_2x2_cost_matches_its_closed_form():
    # Balanced, symmetric cost [[0, 1], [1, 0]]: P = [[p, q], [q, p]] with p + q = 1/2 and p / q = exp(1 / eps).
    epsilon = 0.2
    view = transport_plan(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), epsilon=epsilon, normalization="none")
    p = 0.5 / (1 + math.exp(-1 / epsilon))
    np.testing.assert_allclose(view.plan, [[p, 0.5 - p], [0.5 - p, p]], atol=1e-9)
    np.testing.assert_allclose(view.row_left, 0, atol=1e-9)


def test_partial_transport_leaves_out_the_clip_and_caption_that_match_nothing():
    # Clip 0 matches caption 0 at cost 0; every other pair costs 1. With mass 1/2 only that pair is transported.
    view = transport_plan(torch.tensor([[0.0, 1.0], [1.0, 1.0]]), epsilon=0.01, mass=0.5, normalization="none")
    np.testing.assert_allclose(view.plan, [[0.5, 0.0], [0.0, 0.0]], atol=1e-6)
    rows, cols = view.left_fraction()
    np.testing.assert_allclose(rows, [0, 1], atol=1e-5)
    np.testing.assert_allclose(cols, [0, 1], atol=1e-5)
    assert math.isclose(view.plan.sum(), 0.5, abs_tol=1e-8)


@pytest.mark.parametrize(("epsilon", "mass", "message"), [(0.0, 1.0, "epsilon must be a number in"),
                                                         (float("nan"), 1.0, "epsilon must be"),
                                                         (0.1, 0.0, "mass must be in"),
                                                         (0.1, 1.5, "mass must be in")])
def test_transport_plan_rejects_bad_epsilon_or_mass(epsilon, mass, message):
    with pytest.raises(SpaceInputError, match=message):
        transport_plan(torch.ones(2, 2), epsilon=epsilon, mass=mass)


def test_plan_between_gallery_clips_uses_the_model_cost_and_normalisation(gallery, tiny_mltm, gallery_clips):
    model, processor = tiny_mltm
    names = [clip.display_name for clip in gallery_clips[:3]]
    view = gallery.plan_between(names, ["a dog", "rain"], epsilon=0.1, mass=0.7)
    audio = reference_audio_embeds(model, processor, [clip.audio for clip in gallery_clips[:3]])
    with torch.no_grad():
        cost = model.pairwise_cost(audio, reference_text_embeds(model, processor, ["a dog", "rain"]))
    np.testing.assert_allclose(view.cost, cost.double().numpy(), atol=1e-5)
    expected = transport_plan(cost, epsilon=0.1, mass=0.7, normalization=model.config.cost_normalization)
    np.testing.assert_allclose(view.plan, expected.plan, atol=1e-6)
    assert math.isclose(view.plan.sum(), 0.7, abs_tol=1e-6)
    with pytest.raises(SpaceInputError, match="at least two clips"):
        gallery.plan_between(names[:1], ["a dog"], epsilon=0.1)
    with pytest.raises(SpaceInputError, match="No clip named 'nothing'"):
        gallery.plan_between([names[0], "nothing"], ["a dog"], epsilon=0.1)
