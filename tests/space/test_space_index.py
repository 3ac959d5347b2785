"""The Space over a saved gallery index (``HF_MLTM_SPACE_INDEX``): tab 1 returns exactly what ``index.search`` returns
(ids, costs and ranking scores, with and without OT re-ranking), items whose audio file is gone are shown without a
player, an index built with another model or other preprocessing is refused at load time, and without an index the
Space searches its in-memory gallery as before.

The Space's tiny random model is saved to a folder and loaded back by the Space's own loader
(`load_audio_text_model`), and the index is built from that model by the library's own code (`GalleryIndex.from_model`,
`fit_potentials`, `save`, as ``scripts/index.py`` does) over eleven real ESC-50 clips.
"""

import copy
import re
import shutil
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from hf_mltm.data import build_esc50
from hf_mltm.index import GalleryIndex
from hf_mltm.space import IndexedGallery, SpaceInputError, SpaceService
from hf_mltm.space.gallery_index import audio_location, load_index_setting
from hf_mltm.space.loading import SpaceSetupError, load_audio_text_model
from hf_mltm.space.service import SEARCH_MODES
from tests.index.conftest import SAMPLE_TEMPLATES, tiny_model, tiny_processor

from .conftest import build_tiny_mltm, free_port

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Gradio's queue calls pandas options that pandas 3 deprecates (inside gradio, not here)
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]

QUERY = "a dog barking"
NUM_ITEMS = 11  # ten ESC-50 clips whose files stay, and one whose file is deleted after indexing


def saved_and_loaded(model, processor, folder):
    """``model`` saved to ``folder`` (a copy: saving adds ``auto_map`` to the config it is given) and loaded back as
    the Space loads ``HF_MLTM_SPACE_MODEL``."""
    copy.deepcopy(model).save_pretrained(folder)
    processor.save_pretrained(folder)
    return load_audio_text_model(str(folder))


@pytest.fixture(scope="module")
def saved(tiny_mltm, shared_data, tmp_path_factory):
    """The Space's model (saved, then loaded from its folder) and two index folders built with it: without
    potentials ("plain") and with potentials from captions in five phrasings ("ot"); item 10's audio file is deleted
    after embedding."""
    root = tmp_path_factory.mktemp("space_index")
    model_dir = root / "model"
    model, processor = saved_and_loaded(*tiny_mltm, model_dir)
    items = build_esc50(shared_data / "esc50", view="items")["test"].select(range(NUM_ITEMS - 1))
    gone = root / "clips" / "gone.flac"
    gone.parent.mkdir()
    extra = build_esc50(shared_data / "esc50", view="items")["test"][NUM_ITEMS - 1]
    shutil.copyfile(extra["audio"], gone)
    items = items.add_item({**extra, "item_id": "gone-clip", "audio": str(gone)})
    index = GalleryIndex.from_model(model, processor, items, cache_dir=root / "cache", model_path=model_dir,
                                    progress=False)
    plain = index.save(root / "plain")
    labels = sorted(set(items["label"]))
    index.fit_potentials([template.format(label) for template in SAMPLE_TEMPLATES for label in labels],
                         source="five templates")
    ot = index.save(root / "ot")
    gone.unlink()
    return {"model_dir": model_dir, "model": model, "processor": processor, "plain": plain, "ot": ot,
            "gone": str(gone), "root": root}


@pytest.fixture(scope="module")
def indexed(saved):
    return IndexedGallery.load(saved["ot"], saved["model"], saved["processor"], model_location=str(saved["model_dir"]))


@pytest.fixture(scope="module")
def reference(saved):
    """The same index loaded independently by the library (its own model checks), to compare against."""
    return GalleryIndex.load(saved["ot"], model=saved["model"], processor=saved["processor"])


@pytest.fixture(scope="module")
def index_service(gallery, explorer, indexed):
    return SpaceService(gallery, explorer, model_description="tiny random m-LTM (tests)", index=indexed)


@pytest.mark.parametrize("mode", ["distance", "ot"])
def test_index_search_returns_exactly_the_hits_of_index_search(indexed, reference, mode):
    hits = indexed.search(f"  {QUERY}  ", mode=mode, top_k=NUM_ITEMS)
    expected = reference.search(QUERY, NUM_ITEMS, rerank=mode == "ot")
    assert [(hit.rank, hit.row, hit.item_id, hit.cost, hit.score) for hit in hits] == \
        [(rank, e.row, e.item_id, e.cost, e.ranking_cost) for rank, e in enumerate(expected, start=1)]
    assert sorted(hit.row for hit in hits) == list(range(NUM_ITEMS))
    g = reference.potentials.g
    if mode == "ot":  # re-ranked by cost - g_j with the stored potentials
        assert [hit.score for hit in hits] == pytest.approx([hit.cost - float(g[hit.row]) for hit in hits], abs=1e-6)
        assert [hit.score for hit in hits] == sorted(hit.score for hit in hits)
    else:
        assert [hit.score for hit in hits] == [hit.cost for hit in hits] == sorted(hit.cost for hit in hits)
    assert [hit.item_id for hit in indexed.search(QUERY, mode=mode, top_k=3)] == [e.item_id for e in expected[:3]]


def test_ot_and_distance_rankings_of_the_index_differ_for_this_query(indexed):
    # Guards the parity test above against comparing one ranking with itself.
    distance = [hit.row for hit in indexed.search(QUERY, mode="distance", top_k=NUM_ITEMS)]
    ot = [hit.row for hit in indexed.search(QUERY, mode="ot", top_k=NUM_ITEMS)]
    assert sorted(distance) == sorted(ot) and distance != ot


def test_service_rows_and_players_show_the_index_hits(gallery, explorer, indexed, saved):
    service = SpaceService(gallery, explorer, index=indexed, players=NUM_ITEMS)
    status, rows, players = service.search(QUERY, "ot", NUM_ITEMS)
    hits = indexed.search(QUERY, mode="ot", top_k=NUM_ITEMS)
    assert rows == [[hit.rank, f"{hit.label} ({hit.item_id})", hit.label, hit.location, round(hit.cost, 4),
                     round(hit.score, 4)] for hit in hits]
    gone = next(hit for hit in hits if hit.item_id == "gone-clip")
    assert gone.location == saved["gone"] and gone.audio is None and players[gone.rank - 1] is None
    for hit, player in zip(hits, players, strict=True):
        if hit.item_id != "gone-clip":
            assert player == (hit.location, f"{hit.rank}. {hit.label} ({hit.item_id})")
            assert Path(hit.location).is_file()
    assert status == (f"Top {NUM_ITEMS} of {NUM_ITEMS} indexed clips for “{QUERY}”, ranked by OT re-ranking with "
                      "the index's gallery potentials. 1 hit has no audio file on this machine: shown by id and path "
                      "only.")
    with pytest.raises(SpaceInputError, match="searches a saved gallery index; clips cannot be added"):
        service.add_uploads([gone.location], None)


@pytest.mark.parametrize("top_k", [0, 2.5, float("nan"), float("inf"), True, "3"])
def test_index_search_refuses_a_result_count_that_is_not_a_positive_whole_number(indexed, top_k):
    with pytest.raises(SpaceInputError, match="The number of results must be a whole number of at least 1"):
        indexed.search(QUERY, top_k=top_k)


def test_an_index_without_potentials_offers_only_the_distance_ranking(gallery, saved):
    model, processor = saved["model"], saved["processor"]
    plain = IndexedGallery.load(saved["plain"], model, processor, model_location=str(saved["model_dir"]))
    service = SpaceService(gallery, index=plain)
    assert plain.modes == ("distance",) and service.search_modes == [("distance", "distance")]
    with pytest.raises(SpaceInputError, match="This index has no gallery potentials"):
        service.search(QUERY, "ot", 3)
    reference = GalleryIndex.load(saved["plain"], model=model, processor=processor)
    _, rows, _ = service.search(QUERY, "distance", 3)
    assert [row[1].split("(")[-1][:-1] for row in rows] == [hit.item_id for hit in reference.search(QUERY, 3)]


@pytest.mark.parametrize(
    ("make_other", "field"),
    # the same config with other weights, saved and loaded like the Space's model; the same weights with another
    # config (ot_epsilon)
    [(lambda tokenizer, folder: saved_and_loaded(*build_tiny_mltm(tokenizer, seed=1), folder)[0], "fingerprint"),
     (lambda tokenizer, folder: tiny_model(tokenizer, ot_epsilon=0.1), "config_sha256")],
)
def test_an_index_of_another_model_is_refused_naming_both_models(saved, tokenizer, make_other, field, tmp_path):
    other = make_other(tokenizer, tmp_path / "other")
    processor = saved["processor"]
    message = (f"HF_MLTM_SPACE_INDEX={saved['ot']} was built with the model {saved['model_dir'].resolve()} but the "
               f"Space loads runs/other (field 'model.{field}'")
    with pytest.raises(ValueError, match=re.escape(message)) as caught:
        IndexedGallery.load(saved["ot"], other, processor, model_location="runs/other")
    assert caught.value.args[0].endswith(
        f"set HF_MLTM_SPACE_MODEL to {saved['model_dir'].resolve()}, or rebuild the index with this model: python "
        f"scripts/index.py --model runs/other --dataset <dataset> --output_dir {saved['ot']}.")


def test_an_index_of_other_preprocessing_is_refused(saved, tokenizer):
    model = saved["model"]
    shorter = tiny_processor(tokenizer)  # clips cropped to 1 s instead of the Space's 2 s
    with pytest.raises(ValueError, match=re.escape("but the Space's model runs/demo has other settings (field "
                                                   "'preprocessing', entries ['feature_extractor'])")):
        IndexedGallery.load(saved["ot"], model, shorter, model_location="runs/demo")


def test_an_index_that_records_no_model_is_refused(reference, saved, tmp_path):
    model, processor = saved["model"], saved["processor"]
    folder = GalleryIndex.build(reference.items, reference.space).save(tmp_path / "vectors_only")
    with pytest.raises(ValueError, match=re.escape(f"HF_MLTM_SPACE_INDEX={folder}: its index.json has no 'model' "
                                                   "record, so it cannot be checked")):
        IndexedGallery.load(folder, model, processor, model_location="runs/demo")


def test_the_index_setting_loads_the_folder_or_nothing(saved, tmp_path):
    model, processor = saved["model"], saved["processor"]
    location = str(saved["model_dir"])
    assert load_index_setting(model, processor, model_location=location, environ={}) is None
    assert load_index_setting(model, processor, model_location=location,
                              environ={"HF_MLTM_SPACE_INDEX": "  "}) is None
    loaded = load_index_setting(model, processor, model_location=location,
                                environ={"HF_MLTM_SPACE_INDEX": str(saved["ot"])})
    assert len(loaded) == NUM_ITEMS and loaded.has_potentials and loaded.folder == str(saved["ot"])
    with pytest.raises(SpaceSetupError, match="is not a gallery index folder \\(no index.json there\\)"):
        load_index_setting(model, processor, model_location=location, environ={"HF_MLTM_SPACE_INDEX": str(tmp_path)})


def test_audio_location_reads_paths_and_undecoded_audio_values():
    assert audio_location("/data/a.wav") == "/data/a.wav"
    assert audio_location(Path("/data/b.wav")) == "/data/b.wav"
    assert audio_location({"path": "/data/c.flac", "bytes": None}) == "/data/c.flac"
    assert audio_location({"path": None, "bytes": b"RIFF"}) == ""
    assert audio_location(None) == ""


def test_without_an_index_the_service_searches_the_in_memory_gallery_as_before(service, gallery):
    assert service.index is None
    assert service.search_modes == SEARCH_MODES == [("distance", "distance"), ("transductive OT re-ranking", "ot")]
    assert service.searched_description == f"gallery of {len(gallery)} clips"
    for mode in ("distance", "ot"):
        status, rows, _ = service.search(QUERY, mode, 4)
        hits = gallery.search(QUERY, mode=mode, top_k=4)
        assert rows == [[hit.rank, hit.clip.display_name, hit.clip.label, hit.clip.source, round(hit.cost, 4),
                         round(hit.score, 4)] for hit in hits]
        assert status.startswith(f"Top 4 of {len(gallery)} clips for “{QUERY}”")


def test_the_app_searches_the_index_end_to_end(index_service, indexed, reference, app_module, shared_data):
    demo = app_module.build_demo(index_service, app_module.default_examples(index_service, shared_data))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=[str(shared_data), *indexed.audio_roots()])
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        assert sorted(endpoints) == ["/classify", "/explore", "/image_text", "/search"]  # no uploads into an index
        for mode in ("ot", "distance"):
            status, table, *players = client.predict(QUERY, mode, 4, api_name="/search")
            expected = reference.search(QUERY, 4, rerank=mode == "ot")
            assert [(row[1].split("(")[-1][:-1], row[4], row[5]) for row in table["data"]] == \
                [(e.item_id, round(e.cost, 4), round(e.ranking_cost, 4)) for e in expected]
            assert (status, table["data"]) == index_service.search(QUERY, mode, 4)[:2]
            for player, hit in zip(players, expected, strict=False):
                if hit.item_id == "gone-clip":
                    assert player["value"] is None
                else:
                    assert Path(player["value"]).read_bytes() == Path(hit.item["audio"]).read_bytes()
        with pytest.raises(AppError, match=re.escape("Type what you want to hear first")):
            client.predict("  ", "distance", 3, api_name="/search")
    finally:
        demo.close()
