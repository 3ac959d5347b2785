"""Where the Space's models and gallery come from: settings, defaults, fallbacks and their error messages."""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_mltm.models.omit import OMITImageProcessor, OMITProcessor
from hf_mltm.space.loading import (
    ModelSource,
    SpaceSetupError,
    default_gallery_clips,
    ensure_demo_model,
    example_images,
    load_audio_text_model,
    load_fragment_explorer,
    resolve_audio_model,
    resolve_omit_model,
)
from tests.space.conftest import build_tiny_omit

pytestmark = pytest.mark.usefixtures("one_thread")


def model_folder(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text("{}")
    return path


def test_the_audio_model_setting_wins_and_is_required_on_a_space(tmp_path):
    demo = tmp_path / "demo"
    assert resolve_audio_model({}, demo_dir=demo).location == str(demo)
    folder = model_folder(tmp_path / "mine")
    assert resolve_audio_model({"HF_MLTM_SPACE_MODEL": str(folder)}, demo_dir=demo).location == str(folder)
    assert resolve_audio_model({"HF_MLTM_SPACE_MODEL": "someone/mltm-demo"}).location == "someone/mltm-demo"
    with pytest.raises(SpaceSetupError, match="Set the Space variable HF_MLTM_SPACE_MODEL"):
        resolve_audio_model({"SPACE_ID": "someone/space"})
    with pytest.raises(SpaceSetupError, match="is not a model folder"):
        resolve_audio_model({"HF_MLTM_SPACE_MODEL": str(tmp_path / "missing")})


def test_the_omit_model_falls_back_to_a_trained_folder_then_to_untrained_heads(tmp_path):
    assert resolve_omit_model({}, trained_dir=tmp_path / "none").location is None
    assert "UNTRAINED" in resolve_omit_model({}, trained_dir=tmp_path / "none").description
    trained = model_folder(tmp_path / "flickr8k_omit")
    assert resolve_omit_model({}, trained_dir=trained).location == str(trained)
    assert resolve_omit_model({"HF_MLTM_SPACE_OMIT_MODEL": "a/b"}, trained_dir=trained).location == "a/b"


def test_ensure_demo_model_trains_only_when_the_folder_has_no_model(tmp_path, monkeypatch):
    calls = []

    def fake_run(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 3)

    monkeypatch.setattr(subprocess, "run", fake_run)
    existing = model_folder(tmp_path / "demo")
    assert ensure_demo_model(existing) == existing and calls == []
    with pytest.raises(SpaceSetupError, match=r"training the demo model failed \(exit code 3\)"):
        ensure_demo_model(tmp_path / "empty")
    assert calls[0][-4:] == ["--config", str(Path("configs/demo.yaml").resolve()), "--output_dir",
                             str(tmp_path / "empty")]


def test_default_gallery_is_esc50_with_data_else_the_packaged_animal_sounds(shared_data):
    esc50 = default_gallery_clips(shared_data)
    assert len(esc50) == 398 and esc50[0].label == "dog" and esc50[0].source == "ESC-50"
    assert all(Path(clip.audio).is_file() for clip in esc50)
    animals = default_gallery_clips(None)
    assert len(animals) == 10 and {"cat", "cow", "dog"} <= {clip.label for clip in animals}
    assert all(Path(clip.audio).is_file() for clip in animals)
    assert default_gallery_clips(shared_data, limit=3) == esc50[:3]


def test_example_images_come_with_their_human_captions(shared_data):
    images = example_images(shared_data, 2)
    assert len(images) == 2 and all(Path(path).is_file() and len(captions) == 5 for path, captions in images)
    assert Path(images[0][0]).name == "1009434119_febe49276a.jpg"  # the first test-split image
    assert images[0][1][0] == "A black and white dog is running in a grassy garden surrounded by a white fence ."
    assert example_images(None) == []


def test_a_saved_model_of_the_wrong_family_is_refused_with_its_type(tokenizer, tiny_mltm, tmp_path):
    build_tiny_omit(tokenizer).save_pretrained(tmp_path / "omit")
    with pytest.raises(SpaceSetupError, match="is a 'omit_image_text' model; the audio tabs need"):
        load_audio_text_model(str(tmp_path / "omit"))
    model, processor = tiny_mltm
    model.save_pretrained(tmp_path / "mltm")
    with pytest.raises(SpaceSetupError, match="is a 'mltm_audio_text' model; tab 4 needs an omit_image_text"):
        load_fragment_explorer(ModelSource(str(tmp_path / "mltm"), "x"))


def test_a_saved_audio_text_model_loads_with_its_processor(tiny_mltm, tmp_path):
    model, processor = tiny_mltm
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    loaded, loaded_processor = load_audio_text_model(str(tmp_path))
    assert not loaded.training and loaded_processor.feature_extractor.to_dict() == processor.feature_extractor.to_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_a_saved_omit_model_with_its_vision_tower_loads_into_the_explorer(tokenizer, tmp_path, shared_data):
    folder = tmp_path / "omit"
    model = build_tiny_omit(tokenizer)
    model.save_pretrained(folder)
    OMITProcessor(OMITImageProcessor.for_efficientnet_lite(), tokenizer).save_pretrained(folder)
    explorer = load_fragment_explorer(ModelSource(str(folder), "saved tiny OMIT"))
    assert not explorer.untrained and explorer.grid_encoder is None and explorer.description == "saved tiny OMIT"
    photo = sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0]
    from hf_mltm.space import FragmentExplorer, prepare_image

    reference = FragmentExplorer(model, tokenizer, OMITImageProcessor.for_efficientnet_lite())
    loaded, expected = (e.score(prepare_image(str(photo)), ["a girl"]) for e in (explorer, reference))
    np.testing.assert_allclose(loaded.scores, expected.scores, atol=1e-6)


def test_the_default_omit_explorer_runs_untrained_heads_on_the_real_grid_tower(shared_data):
    from hf_mltm.space import prepare_image

    explorer = load_fragment_explorer(ModelSource(None, "untrained"))
    assert explorer.untrained and explorer.grid_encoder is not None
    photo = sorted((shared_data / "flickr8k_1k" / "Images").glob("*.jpg"))[0]
    result = explorer.score(prepare_image(str(photo)), ["a girl on the stairs"])
    assert result.grid_shape == (7, 7) and result.plans.shape[1] == 49
    assert [word.word for word in result.word_masses(0)] == ["a", "girl", "on", "the", "stairs"]
