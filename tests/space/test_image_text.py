"""The Space's OMIT explorer: caption scores equal the model's own, words gather their wordpieces, fragments map to
grid cells row-major, the partial-matching switch changes the plan (and only for that request), and the overlays."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from hf_mltm.space import FragmentScores, SpaceInputError, prepare_image
from hf_mltm.space.plots import grid_overlay, plan_heatmap

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photo(shared_data):
    return prepare_image(str(sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0]))


CAPTIONS = ["a girl skateboarding down the stairs", "two dogs"]


def test_scores_equal_the_models_own_logits_times_temperature(explorer, photo):
    result = explorer.score(photo, CAPTIONS)
    model = explorer.model
    pixel_values = explorer.image_processor(photo, return_tensors="pt")["pixel_values"]
    tokens = explorer.tokenizer(CAPTIONS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(pixel_values=pixel_values, input_ids=tokens["input_ids"],
                       attention_mask=tokens["attention_mask"]).logits_per_image[0]
    np.testing.assert_allclose(result.scores, (logits * model.config.temperature).double().numpy(), atol=1e-5)
    assert result.grid_shape == (7, 7) and result.plans.shape[:2] == (2, 49)


def test_words_gather_their_wordpieces_and_share_the_whole_caption_mass(explorer, photo):
    result = explorer.score(photo, CAPTIONS)
    pieces = explorer.tokenizer.tokenize("skateboarding")
    assert len(pieces) > 1  # the word is split, so merging is exercised
    words = result.word_masses(0)
    assert [word.word for word in words] == CAPTIONS[0].split()
    assert math.isclose(sum(word.total for word in words), 1.0, abs_tol=1e-9)
    skate = next(word for word in words if word.word == "skateboarding")
    columns = dict(result.words[0])["skateboarding"]
    assert len(columns) == len(pieces)
    np.testing.assert_allclose(skate.grid.ravel(), result.plans[0][:, columns].sum(1), atol=1e-12)


def test_a_fragment_lands_on_its_row_major_grid_cell():
    plan = np.zeros((1, 49, 2))
    plan[0, 7 * 2 + 5, 0] = 0.75  # fragment 19 = row 2, column 5
    plan[0, 0, 1] = 0.25
    result = FragmentScores(["x y"], np.zeros(1), plan, [[("x", [0]), ("y", [1])]], (7, 7),
                            Image.new("RGB", (224, 224)), "none")
    x, y = result.word_masses(0)
    expected = np.zeros((7, 7))
    expected[2, 5] = 0.75
    np.testing.assert_array_equal(x.grid, expected)
    assert (x.total, y.total) == (0.75, 0.25)
    with pytest.raises(SpaceInputError, match="Pick a caption number from 1 to 1"):
        result.word_masses(1)


def test_partial_matching_switch_changes_the_plan_for_that_request_only(explorer, photo):
    config = explorer.model.config
    full = explorer.score(photo, CAPTIONS, rule="none")
    partial = explorer.score(photo, CAPTIONS, rule="mass")
    top = explorer.score(photo, CAPTIONS, rule="top_fraction")
    assert config.partial_matching == "none" and explorer.model.config is config
    np.testing.assert_allclose(full.plans.sum((1, 2)), 1.0, atol=1e-3)
    np.testing.assert_allclose(partial.plans.sum((1, 2)), config.partial_ot_mass, atol=1e-3)
    # top_fraction keeps the most relevant half of each side: half the grid cells receive nothing
    kept_cells = (top.plans[0].sum(1) > 0).sum()
    assert kept_cells == math.ceil(49 * config.relevance_top_fraction)
    with pytest.raises(SpaceInputError, match="Unknown partial-matching rule 'most'"):
        explorer.score(photo, CAPTIONS, rule="most")


def test_picture_is_the_crop_the_model_saw(explorer, photo):
    result = explorer.score(photo, CAPTIONS[:1])
    assert result.picture.size == (224, 224)
    again = explorer.image_processor(result.picture, return_tensors="pt")["pixel_values"]
    original = explorer.image_processor(photo, return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(again, original, atol=1 / 128 + 1e-6, rtol=0)  # one uint8 step after rounding


def test_grid_overlay_brightens_the_cell_with_the_most_mass():
    grid = np.zeros((7, 7))
    grid[2, 5] = 1.0
    overlay = np.asarray(grid_overlay(Image.new("RGB", (224, 224), (128, 128, 128)), grid)).astype(int)
    cell, other = overlay[2 * 32 + 16, 5 * 32 + 16], overlay[16, 16]
    assert cell.sum() > other.sum() + 200
    with pytest.raises(ValueError, match="non-negative"):
        grid_overlay(Image.new("RGB", (8, 8)), -grid)


def test_plan_heatmap_needs_one_label_per_row_and_column():
    picture = plan_heatmap(np.full((2, 3), 1 / 6), ["a", "b"], ["x", "y", "z"])
    assert picture.mode == "RGB" and picture.width > picture.height
    with pytest.raises(ValueError, match="needs 2 row labels and 3 column labels"):
        plan_heatmap(np.full((2, 3), 1 / 6), ["a"], ["x", "y", "z"])
