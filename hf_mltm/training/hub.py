"""``--hub.push_to_hub``: check Hub access before training, upload the final folder after it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["HubAccessError", "check_hub_access", "push_folder"]


class HubAccessError(RuntimeError):
    """The Hub cannot be reached or no token is available; raised before training starts."""


def check_hub_access(model_id: str, token: str | None = None) -> str:
    """Fail fast when ``push_to_hub`` cannot work: offline mode, no token, or an unreachable Hub.

    Args:
        model_id (`str`): ``"<user or org>/<name>"``.
        token (`str`, *optional*): a Hub token; default: ``HF_TOKEN`` or the saved login.

    Returns:
        `str`: the user name the token belongs to.

    Raises:
        HubAccessError: with the reason and the fix (unset ``HF_HUB_OFFLINE``, ``hf auth login``, or drop
            ``--hub.push_to_hub``).
    """
    import huggingface_hub
    from huggingface_hub import constants

    if "/" not in model_id:
        raise HubAccessError(f"hub.model_id={model_id!r} must be '<user or org>/<name>'.")
    if constants.HF_HUB_OFFLINE:
        raise HubAccessError("hub.push_to_hub is set but HF_HUB_OFFLINE=1 (offline mode): unset it, or drop "
                             "--hub.push_to_hub true and upload the output folder later.")
    token = token or huggingface_hub.get_token()
    if not token:
        raise HubAccessError("hub.push_to_hub is set but no Hugging Face token was found: run `hf auth login`, set "
                             "HF_TOKEN, or drop --hub.push_to_hub true.")
    try:
        info = huggingface_hub.whoami(token=token)
    except Exception as error:  # network errors, invalid token: all mean "cannot push"
        raise HubAccessError(f"hub.push_to_hub is set but the Hub is not reachable with this token "
                             f"({type(error).__name__}: {error}); fix the connection/token or drop "
                             "--hub.push_to_hub true.") from error
    return str(info.get("name", ""))


def push_folder(folder: str | Path, model_id: str, *, private: bool = True, token: str | None = None) -> str:
    """Create ``model_id`` if needed and upload ``folder`` (model, processor, README.md). Returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(model_id, private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=model_id, commit_message="Upload hf_mltm model",
                               ignore_patterns=["checkpoints/*", "best/*", "embedding_cache.pt", "*.jsonl",
                                                "debug_*"])
    return str(getattr(commit, "commit_url", commit))
