"""A real browser on the Space: headless Debian Chromium driven by playwright loads the page, types a query and reads
the ranked clips, uploads a real clip and reads its labels, opens the plan explorer and the image-text tab, and saves
one screenshot per tab (to ``$HF_MLTM_SPACE_SCREENSHOTS`` when set, else to a temporary folder). What it reads must
be what `SpaceService` computes for the same inputs."""

import os
import re
from pathlib import Path

import pytest
from PIL import Image

from tests.space.browser import CHROMIUM, browser_page, drive_space

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore::pandas.errors.Pandas4Warning"),  # inside gradio's queue
    pytest.mark.skipif(not CHROMIUM.is_file(), reason=f"no browser at {CHROMIUM}: apt-get install -y chromium "
                                                      "(.ci/run installs it in CI)"),
]


def plain(markdown: str) -> str:
    """Markdown status text as the browser shows it (bold markers dropped)."""
    return re.sub(r"\*\*(.*?)\*\*", r"\1", markdown)


def test_a_visitor_uses_every_tab_and_sees_what_the_service_computes(launched, service, gallery_clips, shared_data,
                                                                   tmp_path):
    screenshots = Path(os.environ.get("HF_MLTM_SPACE_SCREENSHOTS", tmp_path))
    photo = str(sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0])
    names = [clip.display_name for clip in gallery_clips[:3]]
    inputs = {"query": "a dog barking", "clip": gallery_clips[0].audio, "labels": "dog\nchirping birds\nrain",
              "plan_clips": names, "plan_captions": "a dog\nbirds singing", "picture": photo,
              "captions": "a girl climbing stairs\ntwo dogs"}
    with browser_page() as page:
        seen = drive_space(page, launched, screenshots=screenshots, mode="ot", **inputs)

    status, rows, _ = service.search(inputs["query"], "ot", 10)
    assert seen.search_status == status
    assert seen.search_rows == [[str(value) for value in row] for row in rows]

    status, confidences, _ = service.classify(inputs["clip"], inputs["labels"], "the sound of {label}")
    assert seen.label_status == plain(status)
    best = max(confidences, key=confidences.get)
    assert seen.top_labels.splitlines()[1] == best
    assert f"{round(100 * confidences[best])}%" in seen.top_labels

    status, _, rows = service.explore(names, inputs["plan_captions"], service.gallery.settings["epsilon"], 1.0)
    assert seen.plan_status == status
    assert [[row[0], row[1], float(row[2]), float(row[3])] for row in seen.plan_rows] == rows

    status, _, overlays = service.image_text(photo, inputs["captions"], 1, "none")
    assert seen.image_status == plain(status)
    assert seen.overlays == len(overlays) == 4  # a / girl / climbing / stairs

    assert [path.name for path in seen.screenshots] == ["space_search.png", "space_labels.png", "space_plan.png",
                                                        "space_omit.png"]
    for path in seen.screenshots:
        with Image.open(path) as shot:
            assert shot.width == 1280 and shot.height >= 600
