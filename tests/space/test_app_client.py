"""``gradio_client`` against a local launch of ``space/app.py`` (tiny random models, real clips and photos): each
endpoint returns exactly what `SpaceService` computes for the UI, and bad inputs come back as the friendly message
(never a traceback)."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    # Gradio's queue calls pandas options that pandas 3 deprecates (inside gradio, not here)
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),
]


@pytest.fixture(scope="module")
def client(launched):
    return Client(launched, verbose=False)


@pytest.fixture(scope="module")
def photo(shared_data):
    return str(sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0])


def test_the_api_has_one_endpoint_per_action(client):
    endpoints = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    assert sorted(endpoints) == ["/add_clips", "/classify", "/explore", "/image_text", "/search"]


@pytest.mark.parametrize("mode", ["distance", "ot"])
def test_search_returns_the_ranked_table_and_players_of_the_service(client, service, mode):
    status, table, *players = client.predict("a dog barking", mode, 4, api_name="/search")
    expected_status, rows, hits = service.search("a dog barking", mode, 4)
    assert status == expected_status
    assert table["headers"] == ["rank", "clip", "label", "source", "cost", "ranking score"]
    assert table["data"] == rows
    for player, hit in zip(players, hits, strict=True):
        if hit is None:
            assert player["value"] is None
        else:
            assert Path(player["value"]).name == Path(hit[0]).name and player["label"] == hit[1]
            assert Path(player["value"]).read_bytes() == Path(hit[0]).read_bytes()


@pytest.mark.parametrize(
    ("args", "message"),
    [(("   ", "distance", 3), "Type what you want to hear first"),
     (("dog", "ot", 0), "Value 0 is less than minimum value 1"),  # Gradio checks the slider's range itself
     (("dog", "cosine", 3), "is not in the list of choices: ['distance', 'ot']")],
)
def test_search_answers_bad_input_with_the_friendly_message(client, args, message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(*args, api_name="/search")


def test_uploaded_clips_join_the_search_of_that_session_only(launched, gallery_clips, service, tmp_path):
    visitor = Client(launched, verbose=False)
    status = visitor.predict([handle_file(gallery_clips[2].audio)], api_name="/add_clips")  # the state stays server-side
    assert status == f"Added 1 clip: the gallery now has {len(gallery_clips) + 1} clips (1 yours, for this visit only)."
    _, table, *_ = visitor.predict("a dog barking", "distance", 10, api_name="/search")
    names = [row[1] for row in table["data"]]
    assert len(names) == len(gallery_clips) + 1
    assert f"{Path(gallery_clips[2].audio).stem} (upload 1)" in names
    _, table, *_ = Client(launched, verbose=False).predict("a dog barking", "distance", 10, api_name="/search")
    assert len(table["data"]) == len(gallery_clips)  # another visitor does not see it
    (tmp_path / "broken.wav").write_bytes(b"RIFF, but not a wave file")
    with pytest.raises(AppError, match=re.escape("'broken.wav' could not be decoded as audio")):
        visitor.predict([handle_file(str(tmp_path / "broken.wav"))], api_name="/add_clips")
    (tmp_path / "notes.txt").write_text("not audio")  # the upload component itself refuses other file types
    with pytest.raises(AppError, match=re.escape("Invalid file type. Please upload a file that is one of these "
                                                 "formats: ['.wav', '.flac'")):
        visitor.predict([handle_file(str(tmp_path / "notes.txt"))], api_name="/add_clips")


def test_classify_returns_the_labels_and_bars_of_the_service(client, service, gallery_clips):
    labels = "dog\nchirping birds, rain"
    status, top, bars = client.predict(handle_file(gallery_clips[0].audio), labels, "the sound of {label}",
                                       api_name="/classify")
    expected_status, confidences, rows = service.classify(gallery_clips[0].audio, labels, "the sound of {label}")
    assert status == expected_status
    assert top["label"] == rows[0][0]
    assert {entry["label"]: entry["confidence"] for entry in top["confidences"]} == confidences
    assert bars["columns"] == ["label", "probability", "cost", "prompt"] and bars["data"] == rows


def test_classify_trims_a_long_recording_and_says_so(client, tmp_path):
    rate = 8000
    noise = np.random.default_rng(0).uniform(-0.3, 0.3, 40 * rate)
    sf.write(tmp_path / "long.wav", noise, rate)
    status, _, _ = client.predict(handle_file(str(tmp_path / "long.wav")), "wind\nrain", "the sound of {label}",
                                  api_name="/classify")
    assert "'long.wav' lasts 40.0 s; only its first 30 s were used (the Space's limit)." in status


@pytest.mark.parametrize(
    ("labels", "template", "message"),
    [("", "the sound of {label}", "Type at least one label"),
     ("dog", "the sound", "has no {label}"),
     ("dog", "{label} in {place}", "may only contain the field {label}")],
)
def test_classify_answers_bad_labels_or_templates_with_the_friendly_message(client, gallery_clips, labels, template,
                                                                            message):
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(handle_file(gallery_clips[0].audio), labels, template, api_name="/classify")


def test_classify_without_a_clip_asks_for_one(client):
    with pytest.raises(AppError, match="No audio: upload or record a clip first"):
        client.predict(None, "dog", "the sound of {label}", api_name="/classify")


def test_explore_returns_the_plan_table_and_heatmap_of_the_service(client, service, gallery_clips):
    names = [clip.display_name for clip in gallery_clips[:3]]
    status, heatmap, table = client.predict(names, "a dog\nbirds singing", 0.1, 0.7, api_name="/explore")
    expected_status, picture, rows = service.explore(names, "a dog\nbirds singing", 0.1, 0.7)
    assert status == expected_status and table["data"] == rows
    with Image.open(heatmap) as shown:
        assert shown.size == picture.size


@pytest.mark.parametrize(
    ("count", "captions", "message"),
    [(1, "a dog", "Pick at least two clips"), (2, "", "Type at least one caption")],
)
def test_explore_answers_bad_selections_with_the_friendly_message(client, gallery_clips, count, captions, message):
    names = [clip.display_name for clip in gallery_clips[:count]]
    with pytest.raises(AppError, match=message):
        client.predict(names, captions, 0.1, 1.0, api_name="/explore")


def test_image_text_returns_the_scores_and_word_overlays_of_the_service(client, service, photo):
    captions = "a girl climbing stairs\ntwo dogs playing"
    status, table, gallery = client.predict(handle_file(photo), captions, 1, "mass", api_name="/image_text")
    expected_status, rows, overlays = service.image_text(photo, captions, 1, "mass")
    assert status == expected_status and table["data"] == rows
    assert [item["caption"] for item in gallery] == [caption for _, caption in overlays]
    assert [item["caption"].split(":")[0] for item in gallery] == ["a", "girl", "climbing", "stairs"]
    with Image.open(gallery[0]["image"]) as shown:
        assert shown.size == overlays[0][0].size == (224, 224)
    assert "Untrained projection heads" in status


@pytest.mark.parametrize(
    ("picture", "captions", "number", "message"),
    [(None, "a dog", 1, "No picture: upload an image first"),
     ("photo", "a dog", 3, "Pick a caption number from 1 to 1"),
     ("photo", " ", 1, "Type at least one caption")],
)
def test_image_text_answers_bad_input_with_the_friendly_message(client, photo, picture, captions, number, message):
    image = handle_file(photo) if picture == "photo" else None
    with pytest.raises(AppError, match=re.escape(message)):
        client.predict(image, captions, number, "none", api_name="/image_text")
