"""GalleryIndex on a real gallery (398 ESC-50 clips): exactness against brute force, OT re-ranking against the exact
transductive ranking, search by text and audio, save / load with the manifest, and input errors."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_mltm.evaluation import ranks_from_cost
from hf_mltm.index import (
    ColumnPotentials,
    GalleryIndex,
    IndexSettings,
    IndexSpace,
    recall_at_k,
    top1_agreement,
    topk_overlap,
)
from hf_mltm.ot import CostChunks, streaming_sinkhorn

from .conftest import SAMPLE_TEMPLATES, TEST_TEMPLATE, tiny_model, tiny_processor

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force(gallery):
    """The exact (queries, items) cost by model.pairwise_cost and the rows sorted by it (stable)."""
    index, model = gallery["index"], gallery["model"]
    embeds = torch.from_numpy(np.asarray(index.items.with_format("numpy")["embeddings"]))
    with torch.no_grad():
        cost = model.pairwise_cost(embeds, gallery["query_embeds"]).T  # (queries, items)
    return cost, torch.sort(cost, dim=1, stable=True).indices.numpy()


def exact_ot_order(cost, settings):
    """Rows sorted by C - g of the exact transductive solve over all test queries (what ranks_from_cost uses)."""
    result = streaming_sinkhorn(CostChunks.from_matrix(cost), settings["epsilon"],
                                normalization=settings["normalization"])
    return torch.sort(cost - result.g * result.cost_scale, dim=1, stable=True).indices.numpy()


def test_exact_index_top_k_equals_brute_force_by_pairwise_cost(real_gallery):
    index = real_gallery["index"]
    assert index.settings.index_type == "flat" and index.space.kind == "mahalanobis"
    cost, order = brute_force(real_gallery)
    out = index.search_embeddings(real_gallery["query_embeds"], k=20)
    np.testing.assert_array_equal(out.rows, order[:, :20])
    np.testing.assert_allclose(out.costs, torch.sort(cost, dim=1).values[:, :20].numpy(), atol=1e-5)
    assert topk_overlap(order[:, :10], out.rows) == 1.0  # recall@10 of the exact index


def test_ivf_scanning_every_cell_is_exact(real_gallery):
    import faiss

    index = real_gallery["index"]
    _, order = brute_force(real_gallery)
    full = GalleryIndex.build(index.items, index.space, settings=IndexSettings("ivf", nlist=8, nprobe=8))
    assert full.settings.train_size == 320  # 40 * nlist
    assert faiss.extract_index_ivf(full.faiss_index).nprobe == 8
    assert topk_overlap(order[:, :10], full.search_embeddings(real_gallery["query_embeds"], 10).rows) == 1.0
    assert IndexSettings().resolve(398).index_type == "flat"
    assert IndexSettings().resolve(1_000_000) == IndexSettings("ivf", nlist=2048, nprobe=128, train_size=81_920)


def test_ot_reranking_with_the_query_set_itself_equals_ranks_from_cost_ot(real_gallery):
    index = real_gallery["index"]
    cost, _ = brute_force(real_gallery)
    settings = index.ranking_settings
    assert settings == {"epsilon": 0.05, "normalization": "batch_max"}  # the model's ot_epsilon, cost_normalization
    index.fit_potentials(real_gallery["texts"])
    out = index.search_embeddings(real_gallery["query_embeds"], k=10, rerank=True)
    assert out.certified.all()
    np.testing.assert_array_equal(out.rows, exact_ot_order(cost, settings)[:, :10])
    # R@k from the index equal those of the evaluation code's exact transductive ranking
    ranks = ranks_from_cost(cost, torch.from_numpy(real_gallery["query_ids"]),
                            torch.from_numpy(real_gallery["item_ids"]), mode="ot", **settings)
    expected = {f"R@{k}": float((ranks[:, 0] < k).double().mean()) for k in (1, 5, 10)}
    assert recall_at_k(out.rows, real_gallery["query_ids"], real_gallery["item_ids"]) == expected


def test_ot_reranking_from_another_caption_set_agrees_with_the_exact_ranking(real_gallery):
    """The approximation of docs/index.md: potentials from 250 captions in five other phrasings, applied to the test
    queries one at a time, against the exact transductive ranking over the test queries. Measured: top-1 agreement
    0.56, top-10 overlap 0.67, R@k within 0.04 (plain distance ranking: 0.12 / 0.15)."""
    index = real_gallery["index"]
    cost, distance_order = brute_force(real_gallery)
    exact = exact_ot_order(cost, index.ranking_settings)[:, :10]
    sample = [template.format(label) for template in SAMPLE_TEMPLATES for label in real_gallery["labels"]]
    assert not set(sample) & set(real_gallery["texts"])
    potentials = index.fit_potentials(sample, source="five other templates")
    assert potentials.num_queries == 250 and potentials.converged
    out = index.search_embeddings(real_gallery["query_embeds"], k=10, rerank=True)
    agreement, overlap = top1_agreement(exact, out.rows), topk_overlap(exact, out.rows)
    assert agreement >= 0.5 and overlap >= 0.6
    assert agreement > 3 * top1_agreement(exact, distance_order) and overlap > 3 * topk_overlap(exact, distance_order)
    approx = recall_at_k(out.rows, real_gallery["query_ids"], real_gallery["item_ids"])
    reference = recall_at_k(exact, real_gallery["query_ids"], real_gallery["item_ids"])
    assert all(abs(approx[key] - reference[key]) <= 0.06 for key in reference)


def test_search_by_text_and_by_audio_returns_items_with_scores(real_gallery, esc50_items):
    index = real_gallery["index"]
    index.fit_potentials(real_gallery["texts"])
    hits = index.search("the sound of rooster", k=3)
    assert len(hits) == 3 and [hit.ranking_cost for hit in hits] == sorted(hit.ranking_cost for hit in hits)
    plain = index.search("the sound of rooster", k=3, rerank=False)
    assert [hit.cost for hit in plain] == sorted(hit.cost for hit in plain)
    assert all(hit.cost == hit.ranking_cost for hit in plain)
    assert set(hits[0].item) == {"item_id", "item_index", "audio", "captions", "label", "label_id", "fold"}
    assert hits[0].item_id == hits[0].item["item_id"] == esc50_items[hits[0].row]["item_id"]
    # query by example: the clip itself comes first, at cost ~0
    clip = esc50_items[17]
    by_example = index.search(Path(clip["audio"]), k=2)
    assert by_example[0].row == 17 and by_example[0].cost < 1e-3
    with pytest.raises(ValueError, match="OT re-ranking applies to text queries"):
        index.search(Path(clip["audio"]), k=2, rerank=True)


def test_save_load_round_trip_keeps_manifest_results_and_potentials(real_gallery, tmp_path):
    index = real_gallery["index"]
    index.fit_potentials(real_gallery["texts"], source="test queries")
    folder = index.save(tmp_path / "index")
    (folder / "notes.txt").write_text("kept")
    loaded = GalleryIndex.load(folder, model=real_gallery["model"], processor=real_gallery["processor"])
    manifest = json.loads((folder / "index.json").read_text())
    assert manifest == json.loads(json.dumps(loaded.to_manifest(), default=str))
    assert manifest["model"]["config_sha256"] == index.manifest["model"]["config_sha256"]
    assert manifest["preprocessing"]["feature_extractor"]["max_length_s"] == 1.0
    assert manifest["adapter"]["model_type"] == "mltm_audio_text"
    assert manifest["potentials"]["source"] == "test queries" and manifest["space"]["kind"] == "mahalanobis"
    torch.testing.assert_close(loaded.potentials.g, index.potentials.g, atol=0, rtol=0)
    torch.testing.assert_close(loaded.space.transform, index.space.transform, atol=0, rtol=0)
    for rerank in (False, True):
        a = index.search_embeddings(real_gallery["query_embeds"], 10, rerank=rerank)
        b = loaded.search_embeddings(real_gallery["query_embeds"], 10, rerank=rerank)
        np.testing.assert_array_equal(a.rows, b.rows)
        np.testing.assert_array_equal(a.costs, b.costs)
    assert [hit.row for hit in loaded.search(TEST_TEMPLATE.format("dog"), k=5)] == \
        [hit.row for hit in index.search(TEST_TEMPLATE.format("dog"), k=5)]
    # saving again over the folder keeps unrelated files and stays loadable
    index.save(folder)
    assert (folder / "notes.txt").read_text() == "kept"
    assert len(GalleryIndex.load(folder, load_model=False)) == 398


def test_load_refuses_another_model_other_preprocessing_and_broken_files(real_gallery, tokenizer, tmp_path):
    folder = real_gallery["index"].save(tmp_path / "index")
    other = tiny_model(tokenizer, seed=1)
    with pytest.raises(ValueError, match=r"embedded with another model \(field 'model.config_sha256'"):
        GalleryIndex.load(folder, model=other, processor=tiny_processor(tokenizer))
    same_weights = real_gallery["model"]
    longer = type(real_gallery["processor"])(
        type(real_gallery["processor"].feature_extractor)(feature_size=16, max_length_s=2.0), tokenizer)
    with pytest.raises(ValueError, match=r"field 'preprocessing' differs .*\['feature_extractor'\]"):
        GalleryIndex.load(folder, model=same_weights, processor=longer)
    manifest = json.loads((folder / "index.json").read_text())
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "index.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(ValueError, match="field 'version' is 99"):
        GalleryIndex.load(broken, load_model=False)
    (broken / "index.json").write_text(json.dumps({**manifest, "num_items": 5}))
    with pytest.raises(ValueError, match="num_items is 5 but"):
        GalleryIndex.load(broken, load_model=False)
    (broken / "index.json").write_text(json.dumps(manifest))
    (broken / "index.faiss").write_bytes(b"not faiss")
    with pytest.raises(ValueError, match="index.faiss"):
        GalleryIndex.load(broken, load_model=False)
    with pytest.raises(ValueError, match="index.json not found"):
        GalleryIndex.load(tmp_path / "nowhere")


def test_search_input_errors_name_the_argument(real_gallery):
    index = GalleryIndex.build(real_gallery["index"].items, real_gallery["index"].space)
    queries = real_gallery["query_embeds"]
    with pytest.raises(ValueError, match="rerank=True needs the gallery's column potentials"):
        index.search_embeddings(queries, 5, rerank=True)
    with pytest.raises(ValueError, match="k must be a positive int"):
        index.search_embeddings(queries, 0)
    with pytest.raises(ValueError, match=r"query_embeds must be a \(n, d=16\)"):
        index.search_embeddings(queries[:, :8], 5)
    with pytest.raises(ValueError, match="no model/processor to embed text queries"):
        index.search("a dog", k=3)
    with pytest.raises(ValueError, match="potentials have 3 entries but the gallery has 398"):
        index.set_potentials(ColumnPotentials(torch.zeros(3), 0.05, "none", 1.0, 1, 1, 0.0, True))
    assert len(index.search_embeddings(queries[:1], 500).rows[0]) == 500  # k > N: padded with -1
    assert (index.search_embeddings(queries[:1], 500).rows[0, 398:] == -1).all()


def test_build_rejects_missing_or_non_finite_embeddings(real_gallery, esc50_items):
    space = IndexSpace("euclidean", 16)
    with pytest.raises(ValueError, match="has no 'embeddings' column"):
        GalleryIndex.build(esc50_items, space)
    embeds = torch.zeros(len(esc50_items), 16)
    embeds[5, 0] = float("inf")
    with pytest.raises(ValueError, match=r"embeddings holds NaN or inf in rows \[5\]"):
        GalleryIndex.build(esc50_items, space, embeddings=embeds)
    with pytest.raises(ValueError, match="embeddings has 3 rows but items has 398"):
        GalleryIndex.build(esc50_items, space, embeddings=torch.zeros(3, 16))
    with pytest.raises(ValueError, match="index_type='annoy'"):
        IndexSettings("annoy")


def test_build_on_a_selection_keeps_rows_aligned_with_their_embeddings():
    import datasets

    vectors = np.random.default_rng(0).standard_normal((50, 4)).astype(np.float32)
    items = datasets.Dataset.from_dict({"item_id": [f"clip{i}" for i in range(50)]})
    whole = GalleryIndex.build(items, IndexSpace("euclidean", 4), embeddings=vectors)
    for index in (GalleryIndex.build(whole.items.select(range(10, 20)), whole.space),  # embeddings column
                  GalleryIndex.build(items.select(range(10, 20)), whole.space, embeddings=vectors[10:20])):
        hit = index.hits(index.search_embeddings(vectors[12:13], 1))[0][0]
        assert (hit.row, hit.item_id, hit.cost) == (2, "clip12", 0.0)


def test_a_model_and_its_saved_copy_have_the_same_record(tokenizer, tmp_path):
    from hf_mltm.index.gallery import model_record
    from hf_mltm.models.mltm import MLTMAudioTextModel

    model = tiny_model(tokenizer)
    built = model_record(model)  # an index built before the model was ever saved
    model.save_pretrained(tmp_path / "model")  # adds auto_map to the config
    assert "auto_map" in json.loads((tmp_path / "model" / "config.json").read_text())
    saved = model_record(MLTMAudioTextModel.from_pretrained(tmp_path / "model").eval())
    assert (built["config_sha256"], built["fingerprint"]) == (saved["config_sha256"], saved["fingerprint"])
    other = model_record(tiny_model(tokenizer, seed=1))
    assert other["fingerprint"] != built["fingerprint"]
