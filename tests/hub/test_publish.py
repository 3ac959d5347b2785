"""Publishing: access is checked before any work, and the exact folder that is uploaded loads without hf_mltm."""

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from huggingface_hub import HfApi, ModelCard, constants

import hf_mltm.hub.publish as publish
from hf_mltm.hub import (
    ExportCheckError,
    HubAccessError,
    check_export,
    check_space_folder,
    find_local_paths,
    load_saved_model,
    publish_model,
    usage_code,
)
from hf_mltm.hub.model_card import REPO_ID_PLACEHOLDER
from tests.utils import load_script

pytestmark = pytest.mark.usefixtures("one_thread")

REPO_ID = "someone/tiny-mltm"


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if publishing gets as far as loading, exporting or uploading anything."""

    def forbidden(*args, **kwargs):
        raise AssertionError("publishing did work before checking Hub access")

    for name in ("load_saved_model", "export_saved_model", "export_pretrained", "check_export"):
        monkeypatch.setattr(publish, name, forbidden)
    monkeypatch.setattr(HfApi, "create_repo", forbidden)
    monkeypatch.setattr(HfApi, "upload_folder", forbidden)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """A Hub that accepts the token and keeps a copy of every uploaded folder; the calls are recorded in order."""
    calls = []

    def whoami(self, token=None, **kwargs):
        calls.append(("whoami",))
        return {"name": "someone"}

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs.get("repo_type"), kwargs.get("private")))
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, repo_type=None, **kwargs):
        copy = tmp_path / "uploaded" / f"{repo_type}_{len(calls)}"
        shutil.copytree(folder_path, copy)
        calls.append(("upload_folder", repo_id, repo_type, str(folder_path), copy))
        return SimpleNamespace(commit_url=f"https://hub.example/{repo_id}/commit/1")

    def add_space_variable(self, repo_id, key, value, **kwargs):
        calls.append(("add_space_variable", repo_id, key, value))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name, function in [("whoami", whoami), ("create_repo", create_repo), ("upload_folder", upload_folder),
                           ("add_space_variable", add_space_variable)]:
        monkeypatch.setattr(HfApi, name, function)
    return calls


@pytest.fixture
def space_dir(tmp_path) -> Path:
    space = tmp_path / "space"
    space.mkdir()
    (space / "app.py").write_text("import gradio\n")
    (space / "README.md").write_text("---\ntitle: demo\nsdk: gradio\nsdk_version: 6.31.0\napp_file: app.py\n---\n")
    return space


def test_publish_fails_offline_before_any_work(no_work, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError, match=r"publishing to the Hub but HF_HUB_OFFLINE=1 \(offline mode\): unset "
                                             r"it, or export without uploading"):
        publish_model(tmp_path / "not_even_a_model", REPO_ID, token="hf_token")
    # the command line says the same, as an error line and exit code 2
    assert load_script("push_to_hub").main(["--model", str(tmp_path), "--repo_id", REPO_ID]) == 2
    assert "error: publishing to the Hub but HF_HUB_OFFLINE=1" in capsys.readouterr().err


def test_publish_fails_without_a_token_before_any_work(no_work, monkeypatch, tmp_path):
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(HubAccessError, match="no Hugging Face token was found: run `hf auth login`"):
        publish_model(tmp_path, REPO_ID)
    with pytest.raises(HubAccessError, match="must be '<user or org>/<name>'"):
        publish_model(tmp_path, "tiny-mltm", token="hf_token")


def test_the_trainer_names_still_import_and_its_push_is_the_publishing_flow():
    from hf_mltm.training.hub import HubAccessError as TrainerHubAccessError
    from hf_mltm.training.hub import check_hub_access, push_folder
    from hf_mltm.training.model_card import write_model_card

    assert TrainerHubAccessError is HubAccessError and check_hub_access is publish.check_hub_access
    assert push_folder is publish.push_folder and write_model_card.__module__ == "hf_mltm.hub.model_card"


def test_space_folder_needs_app_py_and_an_sdk_header(space_dir, tmp_path):
    assert check_space_folder(space_dir) == space_dir
    (space_dir / "README.md").write_text("# demo\n")
    with pytest.raises(ValueError, match="needs a YAML header with `sdk:`"):
        check_space_folder(space_dir)
    (space_dir / "app.py").unlink()
    with pytest.raises(ValueError, match="has no app.py"):
        check_space_folder(space_dir)
    with pytest.raises(ValueError, match="is not a folder"):
        check_space_folder(tmp_path / "nowhere")


def test_a_folder_that_fails_the_check_is_not_uploaded(fake_hub, saved_mltm, monkeypatch):
    def failing_check(folder, *args, **kwargs):
        raise ExportCheckError(f"{folder} does not load without hf_mltm")

    monkeypatch.setattr(publish, "check_export", failing_check)
    with pytest.raises(ExportCheckError, match="does not load without hf_mltm"):
        publish_model(saved_mltm, REPO_ID, token="hf_token")
    assert [call[0] for call in fake_hub] == ["whoami"]  # nothing created, nothing uploaded


def test_the_exact_folder_that_is_uploaded_loads_without_hf_mltm(fake_hub, saved_mltm, space_dir, monkeypatch,
                                                                  tmp_path, minilm_dir):
    checked = []

    def recording_check(folder, model, processor, **kwargs):
        checked.append((str(folder), kwargs["usage_code"], len(fake_hub)))

    monkeypatch.setattr(publish, "check_export", recording_check)  # the real check runs below, on the upload
    result = publish_model(saved_mltm, REPO_ID, token="hf_token", private=True, space_dir=space_dir)

    assert [call[0] for call in fake_hub] == ["whoami", "create_repo", "upload_folder", "create_repo",
                                              "upload_folder", "add_space_variable"]
    (_, model_repo, model_type, uploaded_path, copy) = fake_hub[2]
    assert (model_repo, model_type) == (REPO_ID, "model") and fake_hub[1][1:] == (REPO_ID, None, True)
    # The preflight checked exactly the folder that was then uploaded, before anything was created on the Hub.
    assert checked == [(uploaded_path, checked[0][1], 1)]
    assert f'repo_id = "{uploaded_path}"' in checked[0][1]  # and ran the card's snippet against it
    assert fake_hub[3][1:] == (REPO_ID, "space", True)
    assert fake_hub[4][1:3] == (REPO_ID, "space")
    space_copy = fake_hub[4][4]  # the Space folder plus the hf_mltm package beside app.py
    assert (space_copy / "app.py").is_file() and (space_copy / "hf_mltm" / "__init__.py").is_file()
    assert not list(space_copy.rglob("__pycache__"))
    assert fake_hub[5][1:] == (REPO_ID, "HF_MLTM_SPACE_MODEL", REPO_ID)
    assert result.commit_url == f"https://hub.example/{REPO_ID}/commit/1" and result.space_id == REPO_ID

    # Only the model, the processor, the card and the vendored code: no checkpoints, logs or hf_mltm-importing copies.
    names = {path.name for path in copy.iterdir()}
    assert names == set(result.files)
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "modeling_mltm.py", "models_panns.py", "ot_sinkhorn.py", "audio.py"} <= names
    assert not names & {"checkpoints", "metrics.jsonl", "best"}
    # No local path: the towers' folders (recorded by the saved config), the MiniLM folder, the temporary export.
    assert "_name_or_path" in (saved_mltm / "config.json").read_text()
    for path in copy.glob("*.json"):
        text = path.read_text()
        assert str(saved_mltm.parent) not in text and str(minilm_dir) not in text, path.name
        assert str(Path(uploaded_path).parent) not in text and str(tmp_path) not in text, path.name
    assert find_local_paths(copy) == []

    card = ModelCard.load(copy / "README.md")
    assert f'repo_id = "{REPO_ID}"' in card.text and REPO_ID_PLACEHOLDER not in card.text
    assert card.data.license == "apache-2.0" and card.data.pipeline_tag == "zero-shot-audio-classification"
    assert {(r.task_type, r.metric_type, r.metric_value) for r in card.data.eval_results} >= {
        ("text-to-audio-retrieval", "recall_at_1", 20.0), ("audio-to-text-retrieval", "median_rank", 2.0)}
    assert "Needs `pip install huggingface-hub numpy soundfile soxr torch transformers`." in card.text

    # The real fresh-process check on the uploaded copy: hf_mltm blocked, equal processor outputs and logits,
    # the zero-shot audio pipeline, and the card's own usage snippet.
    model, processor = load_saved_model(saved_mltm)
    snippet = usage_code(card.text.replace(json.dumps(REPO_ID), json.dumps(REPO_ID_PLACEHOLDER)), str(copy))
    report = check_export(copy, model, processor, usage_code=snippet)
    assert report.classes["model"].startswith("transformers_modules.") and report.classes["model"].endswith(
        ".modeling_mltm.MLTMAudioTextModel")
    assert report.logits.shape == (1, 3)
    assert sorted(label for label, _ in report.pipeline) == ["car engine", "dog", "rain"]
    assert report.usage_ran


def test_push_to_hub_script_rejects_upload_options_without_a_repo(tmp_path, capsys):
    script = load_script("push_to_hub")
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--model", str(tmp_path), "--export_dir", str(tmp_path / "out"), "--token", "hf_x"])
    assert exit_info.value.code == 2
    assert "--export_dir only exports; --space_dir, --space_id, --private and --token need --repo_id" in (
        capsys.readouterr().err)
    assert script.main(["--model", str(tmp_path), "--export_dir", str(tmp_path / "out")]) == 2  # no config.json
    assert "has no config.json" in capsys.readouterr().err and not (tmp_path / "out").exists()
