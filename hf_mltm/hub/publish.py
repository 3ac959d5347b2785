"""Publishing to the Hugging Face Hub: check access first, export a self-contained folder, prove it, upload it.

`publish_model` is used by ``scripts/push_to_hub.py`` and, through `push_folder`, by ``scripts/train.py
--hub.push_to_hub true`` (the trainer checks access with `check_hub_access` before training and pushes the final
folder after it). The order of the work is what makes a failure cheap:

1. `check_hub_access`: no token or ``HF_HUB_OFFLINE=1`` fails here, before anything is exported or uploaded;
2. the model and processor are loaded from the saved folder, the card is taken from its ``README.md`` (the
   trainer's card, with the repo id filled in) or built;
3. `hf_mltm.hub.export_pretrained` writes the self-contained folder to a temporary directory;
4. `hf_mltm.hub.check_export` loads *that* folder in a fresh process where ``import hf_mltm`` fails and compares
   it with the in-package model (and runs the card's usage snippet): a folder that would not load is never
   uploaded;
5. ``HfApi().create_repo`` and ``HfApi().upload_folder`` upload exactly that folder; optionally the Space folder too
   (``repo_type="space"``), with the model id as its ``HF_MLTM_SPACE_MODEL`` variable.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .check import ExportCheckError, check_export
from .export import export_pretrained
from .model_card import REPO_ID_PLACEHOLDER, build_model_card, usage_code

__all__ = [
    "SPACE_MODEL_VARIABLE",
    "ExportCheckError",
    "HubAccessError",
    "PublishResult",
    "check_hub_access",
    "card_for",
    "check_space_folder",
    "export_saved_model",
    "fill_repo_id",
    "load_saved_model",
    "publish_model",
    "push_folder",
]

# The Space variable holding the model id the demo loads.
SPACE_MODEL_VARIABLE = "HF_MLTM_SPACE_MODEL"


class HubAccessError(RuntimeError):
    """The Hub cannot be reached or no token is available; raised before any training, export or upload."""


def check_hub_access(
    model_id: str,
    token: str | None = None,
    *,
    reason: str = "hub.push_to_hub is set",
    alternative: str = "drop --hub.push_to_hub true and upload the output folder later with scripts/push_to_hub.py",
) -> str:
    """Fail fast when a push cannot work: a malformed repo id, offline mode, no token, or an unreachable Hub.

    Args:
        model_id (`str`): ``"<user or org>/<name>"``.
        token (`str`, *optional*): a Hub token; default: ``HF_TOKEN`` or the saved login.
        reason (`str`): what needs the Hub, opening each message (the trainer's ``--hub.push_to_hub`` by default).
        alternative (`str`): the way around it, closing each message.

    Returns:
        `str`: the user name the token belongs to.

    Raises:
        HubAccessError: with the reason and the fix (unset ``HF_HUB_OFFLINE``, ``hf auth login``, or the
            ``alternative``).
    """
    import huggingface_hub
    from huggingface_hub import HfApi, constants

    if not isinstance(model_id, str) or model_id.count("/") != 1 or not all(model_id.split("/")):
        raise HubAccessError(f"hub.model_id={model_id!r} must be '<user or org>/<name>'.")
    if constants.HF_HUB_OFFLINE:
        raise HubAccessError(f"{reason} but HF_HUB_OFFLINE=1 (offline mode): unset it, or {alternative}.")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubAccessError(f"{reason} but no Hugging Face token was found: run `hf auth login`, set HF_TOKEN or "
                             f"pass a token, or {alternative}.")
    try:
        info = HfApi(token=token).whoami()
    except Exception as error:  # network errors, invalid token: all mean "cannot push"
        raise HubAccessError(f"{reason} but the Hub is not reachable with this token ({type(error).__name__}: "
                             f"{error}); fix the connection or the token, or {alternative}.") from error
    return str(info.get("name", ""))


def check_space_folder(space_dir: str | Path) -> Path:
    """A Space folder must hold ``app.py`` and a ``README.md`` whose YAML header names the ``sdk``.

    Args:
        space_dir (`str` or `Path`): the folder (``space/``).

    Returns:
        `Path`: the folder.

    Raises:
        ValueError: the folder, ``app.py`` or the README's ``sdk`` is missing.
    """
    from huggingface_hub import SpaceCard

    space_dir = Path(space_dir)
    if not space_dir.is_dir():
        raise ValueError(f"space_dir={str(space_dir)!r} is not a folder; give the Space folder (e.g. space/).")
    if not (space_dir / "app.py").is_file():
        raise ValueError(f"space_dir={str(space_dir)!r} has no app.py, the file a Gradio Space runs.")
    readme = space_dir / "README.md"
    sdk = SpaceCard.load(readme).data.get("sdk") if readme.is_file() else None
    if not sdk:
        raise ValueError(f"{readme} needs a YAML header with `sdk:` (e.g. sdk: gradio, sdk_version, app_file: "
                         f"app.py); the Hub builds the Space from it.")
    return space_dir


@dataclass
class PublishResult:
    """What `publish_model` did.

    Args:
        repo_id (`str`): the model repo.
        commit_url (`str`): the model upload's commit.
        files (`list[str]`): the uploaded file names.
        space_id (`str`, *optional*), space_commit_url (`str`, *optional*): the Space upload, when requested.
    """

    repo_id: str
    commit_url: str
    files: list[str]
    space_id: str | None = None
    space_commit_url: str | None = None


def load_saved_model(model_folder: str | Path) -> tuple[Any, Any]:
    """The in-package model (eval mode) and processor of a folder saved with ``save_pretrained``.

    Raises:
        ValueError: the folder has no ``config.json``.
    """
    from transformers import AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401  (registers the model types, so the Auto classes load the package's classes)

    model_folder = Path(model_folder)
    if not (model_folder / "config.json").is_file():
        raise ValueError(f"model folder {str(model_folder)!r} has no config.json; give a folder saved with "
                         f"save_pretrained (e.g. the output_dir of scripts/train.py).")
    model = AutoModel.from_pretrained(model_folder, trust_remote_code=False).eval()
    processor = AutoProcessor.from_pretrained(model_folder, trust_remote_code=False)
    return model, processor


def card_for(model_folder: str | Path) -> str:
    """The card of a saved folder: its ``README.md`` (the trainer's card) when it has a usage section, else a new
    one (`build_model_card`). The usage snippet names `REPO_ID_PLACEHOLDER` (`fill_repo_id` replaces it)."""
    readme = Path(model_folder) / "README.md"
    if readme.is_file() and "## How to use" in (text := readme.read_text(encoding="utf-8")):
        return text
    return build_model_card(model_folder).content


def fill_repo_id(card: str, repo_id: str) -> str:
    """``card`` with ``repo_id`` in place of `REPO_ID_PLACEHOLDER` in its usage snippet."""
    return card.replace(json.dumps(REPO_ID_PLACEHOLDER), json.dumps(repo_id))


def export_saved_model(
    model_folder: str | Path, folder: str | Path, *, repo_id: str | None = None, timeout: float = 600
) -> Path:
    """Export a saved folder self-contained into ``folder`` and prove it (`check_export`, with the card's usage).

    Args:
        model_folder (`str` or `Path`): a folder saved with ``save_pretrained`` (model, processor, maybe a card).
        folder (`str` or `Path`): the new, empty export folder.
        repo_id (`str`, *optional*): the Hub id the card's usage snippet names (default: the export folder).
        timeout (`float`, defaults to 600): seconds for the fresh-process check.

    Returns:
        `Path`: ``folder``.

    Raises:
        ValueError: an unusable folder (see `export_pretrained`).
        ExportCheckError: the export does not load, or not identically, without hf_mltm.
    """
    model, processor = load_saved_model(model_folder)
    folder = Path(folder)
    card = card_for(model_folder)
    export_pretrained(model, processor, folder, model_card=fill_repo_id(card, repo_id or str(folder.resolve())))
    # The card's own snippet runs in the check, pointed at this folder instead of the Hub.
    check_export(folder, model, processor, usage_code=usage_code(card, str(folder.resolve())), timeout=timeout)
    return folder


def publish_model(
    model_folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    space_dir: str | Path | None = None,
    space_id: str | None = None,
    commit_message: str = "Upload hf_mltm model",
    timeout: float = 600,
    reason: str = "publishing to the Hub",
    alternative: str = "export without uploading (scripts/push_to_hub.py --export_dir)",
) -> PublishResult:
    """Export ``model_folder`` self-contained, prove it loads without hf_mltm, and upload it (and a Space).

    Args:
        model_folder (`str` or `Path`): a folder saved by ``save_pretrained`` (model and processor), e.g. the
            output of ``scripts/train.py``; its ``README.md`` becomes the card (or a card is built).
        repo_id (`str`): ``"<user or org>/<name>"``.
        private (`bool`, defaults to `False`): create the repos private.
        token (`str`, *optional*): a Hub token; default: ``HF_TOKEN`` or the saved login.
        space_dir (`str` or `Path`, *optional*): a Gradio Space folder to upload as well (`check_space_folder`).
        space_id (`str`, *optional*): the Space repo (default: ``repo_id``; Spaces and models are separate
            namespaces). Its ``HF_MLTM_SPACE_MODEL`` variable is set to ``repo_id``.
        commit_message (`str`): the model commit's message.
        timeout (`float`, defaults to 600): seconds for the fresh-process check.
        reason (`str`), alternative (`str`): the wording of access errors (`check_hub_access`).

    Returns:
        `PublishResult`.

    Raises:
        HubAccessError: offline, no token, or the Hub is unreachable (before any other work).
        ValueError: ``model_folder`` or ``space_dir`` is unusable, or the export fails.
        ExportCheckError: the exported folder does not load, or not identically, without hf_mltm (nothing is
            uploaded).
    """
    check_hub_access(repo_id, token, reason=reason, alternative=alternative)
    if space_id is not None:
        check_hub_access(space_id, token, reason=reason, alternative=alternative)
    if not (Path(model_folder) / "config.json").is_file():
        raise ValueError(f"model_folder={str(model_folder)!r} has no config.json; give a folder saved with "
                         f"save_pretrained (e.g. the output_dir of scripts/train.py).")
    if space_dir is not None:
        check_space_folder(space_dir)
    import huggingface_hub
    from huggingface_hub import HfApi

    token = token or huggingface_hub.get_token()
    with tempfile.TemporaryDirectory(prefix="hf_mltm_publish_") as scratch:
        folder = export_saved_model(model_folder, Path(scratch) / repo_id.split("/")[1], repo_id=repo_id,
                                    timeout=timeout)
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
        files = sorted(path.name for path in folder.iterdir())
    result = PublishResult(repo_id, str(getattr(commit, "commit_url", commit)), files)
    if space_dir is not None:
        result.space_id = space_id or repo_id
        api.create_repo(result.space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hf_mltm_space_") as staging:
            staged = _stage_space(Path(space_dir), Path(staging) / "space")
            space_commit = api.upload_folder(folder_path=str(staged), repo_id=result.space_id, repo_type="space",
                                             commit_message="Upload hf_mltm demo Space",
                                             ignore_patterns=["__pycache__/*", "*.pyc", ".cache/*"])
        api.add_space_variable(result.space_id, SPACE_MODEL_VARIABLE, repo_id)
        result.space_commit_url = str(getattr(space_commit, "commit_url", space_commit))
    return result


def push_folder(folder: str | Path, model_id: str, *, private: bool = True, token: str | None = None) -> str:
    """The trainer's push (``--hub.push_to_hub``): `publish_model` of the saved folder. Returns the commit URL.

    Raises:
        HubAccessError, ValueError, ExportCheckError: as `publish_model`.
    """
    return publish_model(folder, model_id, private=private, token=token, reason="hub.push_to_hub is set",
                         alternative="upload the output folder later with scripts/push_to_hub.py").commit_url


def _stage_space(space_dir: Path, staged: Path) -> Path:
    """The Space folder as uploaded: its files plus the ``hf_mltm`` package beside ``app.py`` (a Space installs only
    ``requirements.txt``, and hf_mltm is not on PyPI)."""
    import shutil

    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".cache")
    shutil.copytree(space_dir, staged, ignore=ignore)
    shutil.copytree(Path(__file__).resolve().parents[1], staged / "hf_mltm", ignore=ignore)
    return staged
