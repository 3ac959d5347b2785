"""Hub export and publishing: self-contained model folders, model cards, and uploads (``docs/hub.md``).

- :func:`export_pretrained` writes a model folder whose remote code is self-contained: the hf_mltm modules it needs
  are vendored as flat files with relative imports (:mod:`hf_mltm.hub.vendor`), so ``AutoModel``,
  ``AutoProcessor`` and the zero-shot pipelines load it with ``trust_remote_code=True`` where hf_mltm is not
  installed.
- :func:`check_export` proves such a folder in a fresh process in which ``import hf_mltm`` fails, against the
  in-package model (equal logits).
- :func:`build_model_card` / :func:`write_model_card` build the ``README.md`` with `huggingface_hub.ModelCard`
  (``model-index`` from the evaluation metrics, licences and attributions, a usage snippet, citations, limits).
- :func:`publish_model` (``scripts/push_to_hub.py``, ``scripts/train.py --hub.push_to_hub``) checks Hub access
  first, exports to a temporary folder, checks that exact folder, and uploads it (and optionally the Space).
"""

from .check import (
    BLOCK_HF_MLTM,
    ExportCheckError,
    ExportCheckReport,
    check_export,
    check_exports,
    run_without_hf_mltm,
)
from .export import export_pretrained, find_local_paths, python_requirements, scrub_local_paths
from .model_card import (
    REPO_ID_PLACEHOLDER,
    build_model_card,
    eval_results_from_metrics,
    metrics_table,
    usage_code,
    usage_snippet,
    write_model_card,
)
from .publish import (
    HubAccessError,
    PublishResult,
    check_hub_access,
    check_space_folder,
    export_saved_model,
    load_saved_model,
    publish_model,
    push_folder,
)
from .vendor import collect_vendored_modules, rewrite_imports, vendored_file_name

__all__ = [
    "BLOCK_HF_MLTM",
    "REPO_ID_PLACEHOLDER",
    "ExportCheckError",
    "ExportCheckReport",
    "HubAccessError",
    "PublishResult",
    "build_model_card",
    "check_export",
    "check_exports",
    "check_hub_access",
    "check_space_folder",
    "collect_vendored_modules",
    "eval_results_from_metrics",
    "export_pretrained",
    "export_saved_model",
    "find_local_paths",
    "load_saved_model",
    "metrics_table",
    "publish_model",
    "push_folder",
    "python_requirements",
    "rewrite_imports",
    "run_without_hf_mltm",
    "scrub_local_paths",
    "usage_code",
    "usage_snippet",
    "vendored_file_name",
    "write_model_card",
]
