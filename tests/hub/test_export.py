"""Self-contained export: the folder loads in a fresh process in which `import hf_mltm` fails (OMIT here; m-LTM
through the publishing flow in test_publish.py) and records no local path."""

import json
from pathlib import Path

import pytest
from transformers import BertConfig, BertModel
from transformers.dynamic_module_utils import get_relative_import_files

from hf_mltm.hub import (
    check_exports,
    export_pretrained,
    find_local_paths,
    run_without_hf_mltm,
    scrub_local_paths,
    usage_code,
)
from hf_mltm.hub.model_card import REPO_ID_PLACEHOLDER

pytestmark = pytest.mark.usefixtures("one_thread")


def _json_texts(folder: Path) -> dict[str, str]:
    return {path.name: path.read_text() for path in folder.glob("*.json")}


def test_the_import_blocker_makes_hf_mltm_missing_in_the_check_process():
    process = run_without_hf_mltm("import json\nimport hf_mltm.ot\n", timeout=60)
    assert process.returncode == 1
    # the parent package is imported first, and it is missing
    assert "ModuleNotFoundError: No module named 'hf_mltm' (hf_mltm is blocked in this check)" in process.stderr


def test_omit_exports_load_without_hf_mltm_and_reproduce_the_logits(omit_models, tmp_path, minilm_dir):
    folders, cards = {}, {}
    for name, (model, processor) in omit_models.items():
        folders[name] = export_pretrained(model, processor, tmp_path / name)
        cards[name] = (folders[name] / "README.md").read_text()
        assert f'repo_id = "{REPO_ID_PLACEHOLDER}"' in cards[name]

    # What is vendored: computed from the import graph, so the image-text family gets no audio code, and only the
    # EfficientNet-Lite checkpoint gets that tower family, registered by the vendored configuration.
    files = {name: {path.name for path in folder.glob("*.py")} for name, folder in folders.items()}
    assert {"configuration_omit.py", "modeling_omit.py", "processing_omit.py", "image_processing_omit.py",
            "loss_omit.py", "ot_fragments.py", "ot_sinkhorn.py", "image.py"} <= files["fragments"]
    assert not files["fragments"] & {"audio.py", "ot_streaming.py", "feature_extraction_panns.py", "ot.py",
                                     "models_efficientnet_lite.py"}
    assert files["efficientnet_lite"] - files["fragments"] == {
        "models_efficientnet_lite.py", "configuration_efficientnet_lite.py", "modeling_efficientnet_lite.py"}
    configuration = folders["efficientnet_lite"] / "configuration_omit.py"
    assert ("from .models_efficientnet_lite import __name__ as _models_efficientnet_lite_module  # noqa: F401"
            in configuration.read_text().splitlines())
    assert folders["efficientnet_lite"] / "models_efficientnet_lite.py" in {
        Path(p) for p in get_relative_import_files(configuration)}

    for folder in folders.values():
        config = json.loads((folder / "config.json").read_text())
        assert config["auto_map"] == {
            "AutoConfig": "configuration_omit.OMITImageTextConfig",
            "AutoModel": "modeling_omit.OMITImageTextModel",
            "AutoModelForZeroShotImageClassification": "modeling_omit.OMITImageTextModel",
        }
        processor_config = json.loads((folder / "processor_config.json").read_text())
        assert processor_config["auto_map"] == {"AutoProcessor": "processing_omit.OMITProcessor"}
        texts = _json_texts(folder)
        assert not [file for file, text in texts.items() if str(tmp_path) in text or str(minilm_dir) in text]
        assert find_local_paths(folder, roots=(tmp_path, minilm_dir)) == []

    reports = check_exports(
        [(folders[name], *omit_models[name]) for name in ("fragments", "efficientnet_lite")],
        usage_codes=[usage_code(cards[name], str(folders[name])) for name in ("fragments", "efficientnet_lite")],
    )
    fragments, tower = reports
    assert all(cls.startswith("transformers_modules.fragments.") for cls in fragments.classes.values())
    assert all(cls.startswith("transformers_modules.efficientnet_lite.") for cls in tower.classes.values())
    assert fragments.logits.shape == (2, 3) and tower.logits.shape == (1, 3)
    assert fragments.pipeline is None  # no vision tower: nothing for the image pipeline to run
    assert sorted(label for label, _ in tower.pipeline) == ["car engine", "dog", "rain"]
    assert sum(score for _, score in tower.pipeline) == pytest.approx(1.0, abs=1e-6)
    assert fragments.usage_ran and tower.usage_ran


def test_export_refuses_a_used_folder_a_missing_processor_and_foreign_models(omit_models, tmp_path):
    model, processor = omit_models["fragments"]
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        export_pretrained(model, processor, tmp_path / "used")
    with pytest.raises(ValueError, match="processor is None"):
        export_pretrained(model, None, tmp_path / "new")
    bert = BertModel(BertConfig(vocab_size=10, hidden_size=8, num_hidden_layers=1, num_attention_heads=1,
                                intermediate_size=8))
    with pytest.raises(ValueError, match="needs an hf_mltm model"):
        export_pretrained(bert, processor, tmp_path / "new")
    assert not (tmp_path / "new").exists()  # nothing was written


def test_export_refuses_to_write_a_local_path_it_cannot_remove(omit_models, tmp_path):
    model, processor = omit_models["fragments"]
    model.config.data_root = str(tmp_path / "my_data")  # a field the export cannot interpret
    try:
        with pytest.raises(ValueError, match=r"config\.json: data_root = '.*my_data'.*Clear these fields"):
            export_pretrained(model, processor, tmp_path / "out")
    finally:
        del model.config.data_root
    assert sorted(path.name for path in tmp_path.iterdir()) == []  # no half-written folder is left


def test_scrub_and_find_local_paths(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "_name_or_path": "/somewhere/model", "text_config": {"_name_or_path": str(tmp_path), "hidden_size": 4},
        "audio_config": {"name_or_path": "x"}}))
    (tmp_path / "tokenizer.json").write_text(json.dumps({"vocab": {"/": 1, "//": 2, "/s": 3, "##/": 4}}))
    (tmp_path / "extra.json").write_text(json.dumps({"cache": [str(tmp_path / "cache")], "home": "~/models/x",
                                                    "elsewhere": "/data/never/created", "url": "https://x.org/a"}))
    removed = scrub_local_paths(tmp_path)
    assert sorted(removed) == ["config.json: _name_or_path", "config.json: audio_config.name_or_path",
                               "config.json: text_config._name_or_path"]
    assert json.loads((tmp_path / "config.json").read_text()) == {"audio_config": {},
                                                                   "text_config": {"hidden_size": 4}}
    # vocabulary tokens such as "/" are not paths; a path under the folder, any absolute path and a home path are
    assert find_local_paths(tmp_path) == [f"extra.json: cache[0] = {str(tmp_path / 'cache')!r}",
                                          "extra.json: home = '~/models/x'",
                                          "extra.json: elsewhere = '/data/never/created'"]
