"""The model card (``README.md``) of a saved or exported hf_mltm model, built with `huggingface_hub.ModelCard`.

The card has YAML metadata (`huggingface_hub.ModelCardData`: library, licence, tags, pipeline tag, base model and a
``model-index`` of `huggingface_hub.EvalResult` entries made from the evaluation metrics) and sections: the model,
how to use it (a snippet that runs against the exported folder without hf_mltm; ``tests/hub`` runs it), the
training data with its licences, the training settings, the results, the limits of the training data, the
licences and attributions of code and weights, and the BibTeX of both papers.

The metrics are the dict `hf_mltm.evaluation.evaluate_retrieval` returns (``{mode: {direction: {"R@1": ...},
"rsum": ...}}``, e.g. ``{"distance": {"text_to_audio": {...}, "audio_to_text": {...}, "rsum": 150.0}}``) or the
zero-shot one (``{"distance": {"audio_to_label": {...}}}``); entries that are not metrics (``"cost"``,
``"settings"``, ...) are skipped.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CITATIONS",
    "REPO_ID_PLACEHOLDER",
    "build_model_card",
    "detect_components",
    "eval_results_from_metrics",
    "metrics_table",
    "usage_code",
    "usage_snippet",
    "write_model_card",
]

# The repo id in the card's usage snippet until the card is published (`hf_mltm.hub.publish` fills it in).
REPO_ID_PLACEHOLDER = "<user>/<model>"

CITATIONS = {
    "mltm_audio_text": """@inproceedings{luong2024revisiting,
  title     = {Revisiting Deep Audio-Text Retrieval Through the Lens of Transportation},
  author    = {Luong, Manh and Nguyen, Khai and Ho, Nhat and Haf, Reza and Phung, Dinh and Qu, Lizhen},
  booktitle = {The Twelfth International Conference on Learning Representations (ICLR)},
  year      = {2024},
  url       = {https://openreview.net/forum?id=l60EM8md3t}
}""",
    "omit_image_text": """@inproceedings{pan2025omit,
  title     = {Learning Image-Text Matching with Optimal Partial Transport},
  author    = {Pan, Zhengxin and Wang, Haishuai and Wu, Fangyu and Zhang, Bailing and Bu, Jiajun and Chen, Hongyang},
  booktitle = {IEEE International Conference on Acoustics, Speech and Signal Processing (ICASSP)},
  year      = {2025},
  note      = {arXiv:2603.14349}
}""",
}

_FAMILIES = {
    "mltm_audio_text": ("m-LTM", "audio", "audio-text retrieval trained by mini-batch learning-to-match (entropic "
                        "optimal transport with a learned Mahalanobis ground metric), Luong et al., ICLR 2024"),
    "omit_image_text": ("OMIT", "image", "image-text matching by optimal (partial) transport between image "
                        "fragments and word fragments, Pan et al., ICASSP 2025"),
}

# Pretrained parts a checkpoint can be built from, their licences and the attribution they require.
COMPONENTS = {
    "aisfx": {
        "part": "audio tower",
        "name": "aiSFX 9-layer CNN (512-d)",
        "licence": "CC BY 4.0",
        "text": (
            "The audio tower's weights are derived from the pretrained aiSFX model by Alison Bernice Ma and Alexander "
            "Lerch (\"Representation Learning for the Automatic Indexing of Sound Effects Libraries\", ISMIR 2022, "
            "https://github.com/alisonbma/aisfx), licensed under CC BY 4.0 "
            "(https://creativecommons.org/licenses/by/4.0/). Changes: converted to the hf_mltm `PannsModel` layout "
            "(variant `aisfx9`) and used as this model's audio tower (frozen or fine-tuned: see the training "
            "settings). CC BY 4.0 requires this attribution in every copy or adaptation of these weights."
        ),
    },
    "minilm": {
        "part": "text tower",
        "name": "sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers, 384-d)",
        "licence": "Apache-2.0",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2",
        "text": "The text tower and tokenizer are sentence-transformers' all-MiniLM-L6-v2 (Apache-2.0).",
    },
    "efficientnet_lite0": {
        "part": "vision tower",
        "name": "EfficientNet-Lite0 (ImageNet)",
        "licence": "Apache-2.0",
        "text": "The vision tower is EfficientNet-Lite0 with its ImageNet weights (Apache-2.0).",
    },
}

# Datasets the hf_mltm builders read, by builder name: full name and licence (../shared/data/README.md).
DATASETS = {
    "esc50": ("ESC-50 (Piczak, 2015)", "CC BY-NC 3.0; the ESC-10 subset CC BY 3.0"),
    "urbansound8k": ("UrbanSound8K (Salamon et al., 2014)", "CC BY-NC 3.0"),
    "tau22_scenes": ("TAU Urban Acoustic Scenes 2022 Mobile", "academic, non-commercial use"),
    "clotho": ("Clotho v2 (Drossos et al., 2020)", "Clotho terms; audio under Creative Commons licences from "
                                                   "Freesound"),
    "audiocaps": ("AudioCaps (Kim et al., 2019)", "captions MIT; audio from YouTube"),
    "bigsoundbank": ("BigSoundBank", "CC0"),
    "flickr8k": ("Flickr8k (Hodosh et al., 2013)", "research use"),
    "flickr30k": ("Flickr30K (Young et al., 2014)", "research use"),
    "coco": ("MS-COCO (Lin et al., 2014)", "annotations CC BY 4.0; images under their Flickr licences"),
    "coco_captions": ("MS-COCO captions (Chen et al., 2015)", "annotations CC BY 4.0"),
    "audio_folder": ("a local audio folder", "see the folder's own terms"),
}

_METRIC_TYPES = {"medR": "median_rank", "meanR": "mean_rank"}
_LITE0_STAGES = (16, 24, 40, 80, 112, 192, 320)

_LIMITATIONS = {
    "audio": [
        "- The training data is small (hundreds to a few thousand clips), far below the AudioCaps/Clotho scale of "
        "the paper: expect much lower retrieval scores, and do not compare them with the paper's tables.",
        "- Captions built from class labels (ESC-50, UrbanSound8K, TAU scenes) are templates such as \"the sound "
        "of {label}\", not free descriptions: the model learns label words more than the language of real "
        "captions, and long or compositional queries are outside its training distribution.",
        "- Zero-shot results follow the zero-shot protocol: the evaluation classes are held out of training (e.g. "
        "the ESC-10 classes of ESC-50) and each clip is ranked against prompts of all candidate labels; with few "
        "classes and clips the numbers are noisy.",
    ],
    "image": [
        "- The training data is small (e.g. the 800 training images of a 1,000-image Flickr8k subset, against "
        "29,000 for Flickr30K in the paper): expect much lower retrieval scores, and do not compare them with the "
        "paper's tables.",
        "- The image fragments come from a CNN grid (e.g. EfficientNet-Lite0's 7 x 7 map) or the configured "
        "vision tower, not the paper's Faster R-CNN region features.",
        "- The zero-shot image-classification pipeline scores labels as short captions (\"This is a photo of "
        "{label}.\"); the model was trained on human captions, not on label prompts, and was not evaluated as a "
        "classifier.",
    ],
}


# ----------------------------------------------------------------------------------------------------------------------
# Metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _metric_type(name: str) -> str:
    """``"R@5"`` -> ``"recall_at_5"``, ``"mAP@10"`` -> ``"map_at_10"``, ``"medR"`` -> ``"median_rank"``."""
    if name in _METRIC_TYPES:
        return _METRIC_TYPES[name]
    match = re.fullmatch(r"([A-Za-z]+)@(\d+)", name)
    if match:
        prefix = {"R": "recall", "mAP": "map", "MRR": "mrr"}.get(match.group(1), match.group(1).lower())
        return f"{prefix}_at_{match.group(2)}"
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def _directions(result: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(result, Mapping):
        return {}
    return {str(key): value for key, value in result.items() if isinstance(value, Mapping)
            and any(_is_number(v) for v in value.values())}


def metrics_table(metrics: Mapping[str, Any] | None) -> str:
    """Markdown table of ``evaluate_retrieval`` (or zero-shot) output.

    Args:
        metrics (`Mapping`, *optional*): ``{mode: {direction: {metric: value}, "rsum": x}}``.

    Returns:
        `str`: ``| ranking | direction | R@1 | ... |`` rows, one per ranking mode and direction, plus rsum; or
        ``"(no evaluation was run)"``.
    """
    modes = {mode: (result, _directions(result)) for mode, result in (metrics or {}).items() if _directions(result)}
    # One header for all modes: a metric missing from a mode leaves its cell empty instead of shifting columns.
    names = sorted({name for _, directions in modes.values() for values in directions.values() for name in values
                    if _is_number(values[name])}, key=_metric_order)
    lines: list[str] = []
    if modes:
        lines += ["| ranking | direction | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for mode, (result, directions) in modes.items():
        for direction, values in directions.items():
            lines.append(f"| {mode} | {direction} | " + " | ".join(_format(values.get(n)) for n in names) + " |")
        if _is_number(result.get("rsum")):
            lines.append(f"| {mode} | rsum | {_format(result['rsum'])} |" + " |" * max(len(names) - 1, 0))
    return "\n".join(lines) if lines else "(no evaluation was run)"


def _metric_order(name: str) -> tuple[int, str]:
    order = ["R@1", "R@5", "R@10", "medR", "meanR", "mAP@10", "MRR@10"]
    return (order.index(name) if name in order else len(order), name)


def _format(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else ("" if value is None else str(value))


def eval_results_from_metrics(
    metrics: Mapping[str, Any] | None,
    *,
    item: str,
    dataset_type: str,
    dataset_name: str,
    dataset_split: str | None = None,
) -> list[Any]:
    """`huggingface_hub.EvalResult` entries (the card's ``model-index``) of ``evaluate_retrieval`` output.

    One entry per ranking mode, direction and metric: task ``text-to-audio-retrieval`` /
    ``audio-to-text-retrieval`` (``image`` for OMIT) or ``zero-shot-audio-classification`` for ``*_to_label``;
    metric type ``recall_at_1``, ``median_rank``, ...; metric name e.g. ``"R@1 (text_to_audio, distance
    ranking)"``; metric config the ranking mode. ``rsum`` is reported under the retrieval task of the first
    direction. Recall values are percentages, as in the metrics dict.

    Args:
        metrics (`Mapping`, *optional*): the metrics dict.
        item (`str`): ``"audio"`` or ``"image"``.
        dataset_type (`str`): the dataset identifier (a builder name such as ``"esc50"`` or a Hub dataset id).
        dataset_name (`str`): a readable name of the evaluation data.
        dataset_split (`str`, *optional*): its split.

    Returns:
        `list[EvalResult]` (empty without numeric metrics).

    Raises:
        ValueError: ``item`` is not ``"audio"`` or ``"image"``.
    """
    from huggingface_hub import EvalResult

    if item not in ("audio", "image"):
        raise ValueError(f"item={item!r} must be 'audio' or 'image'.")
    results = []
    for mode, result in (metrics or {}).items():
        directions = _directions(result)
        for direction, values in directions.items():
            if direction.endswith("_to_label"):
                task_type, task_name = f"zero-shot-{item}-classification", f"Zero-shot {item} classification"
            else:
                task_type = direction.replace("_", "-") + "-retrieval"
                task_name = direction.replace("_", " ").capitalize() + " retrieval"
            for name, value in values.items():
                if _is_number(value):
                    results.append(EvalResult(
                        task_type=task_type, task_name=task_name, dataset_type=dataset_type,
                        dataset_name=dataset_name, dataset_split=dataset_split, metric_type=_metric_type(name),
                        metric_name=f"{name} ({direction}, {mode} ranking)", metric_config=str(mode),
                        metric_value=float(value)))
        if directions and isinstance(result, Mapping) and _is_number(result.get("rsum")):
            first = next(iter(directions))
            results.append(EvalResult(
                task_type=first.replace("_", "-") + "-retrieval",
                task_name=first.replace("_", " ").capitalize() + " retrieval", dataset_type=dataset_type,
                dataset_name=dataset_name, dataset_split=dataset_split, metric_type="rsum",
                metric_name=f"rsum (R@1+R@5+R@10 of both directions, {mode} ranking)", metric_config=str(mode),
                metric_value=float(result["rsum"])))
    return results


# ----------------------------------------------------------------------------------------------------------------------
# What the checkpoint is made of


def _read_config(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    if source is None:
        return {}
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    path = path / "config.json" if path.is_dir() else path
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}); the model card needs the saved config.") from error


def detect_components(config: Mapping[str, Any]) -> list[str]:
    """The pretrained parts (keys of `COMPONENTS`) a saved config shows: ``"aisfx"``, ``"minilm"``,
    ``"efficientnet_lite0"``.

    aisfx: a PANNs audio tower of variant ``aisfx9`` (the only weights of that architecture). MiniLM: a BERT text
    tower with the all-MiniLM-L6-v2 shape (6 layers, 384-d, vocabulary 30522) or a ``_name_or_path`` naming
    MiniLM. EfficientNet-Lite0: an ``efficientnet_lite`` vision tower of the Lite0 shape (width 1.0, stages of 16 to
    320 channels, head 1280).

    Args:
        config (`Mapping`): the model's ``config.json`` content.

    Returns:
        `list[str]`.
    """
    found = []
    audio = config.get("audio_config") or {}
    if audio.get("model_type") == "panns" and audio.get("variant") == "aisfx9":
        found.append("aisfx")
    text = config.get("text_config") or {}
    minilm_shape = (text.get("model_type"), text.get("hidden_size"), text.get("num_hidden_layers"),
                    text.get("vocab_size")) == ("bert", 384, 6, 30522)
    if minilm_shape or "minilm" in str(text.get("_name_or_path", "")).lower():
        found.append("minilm")
    vision = config.get("vision_config") or {}
    if vision.get("model_type") == "efficientnet_lite" and (
            vision.get("width_coefficient", 1.0), vision.get("head_channels", 1280),
            list(vision.get("out_channels") or _LITE0_STAGES)) == (1.0, 1280, list(_LITE0_STAGES)):
        found.append("efficientnet_lite0")
    return found


def usage_snippet(config: Mapping[str, Any], repo_id: str = REPO_ID_PLACEHOLDER) -> str:
    """Python code that loads the model from the Hub (or a folder) without hf_mltm and scores an example.

    Args:
        config (`Mapping`): the model's ``config.json`` content (``model_type``, ``vision_config``).
        repo_id (`str`, defaults to `REPO_ID_PLACEHOLDER`): the Hub id or folder in the snippet.

    Returns:
        `str`: the code (m-LTM: audio-caption scores and the zero-shot audio pipeline; OMIT with a vision tower:
        image-caption scores and the zero-shot image pipeline; OMIT on precomputed fragments: fragment-caption
        scores).

    Raises:
        ValueError: an unknown ``model_type``.
    """
    model_type = config.get("model_type")
    head = [
        f"repo_id = {json.dumps(repo_id)}  # or the local folder of the exported model",
        "model = AutoModel.from_pretrained(repo_id, trust_remote_code=True).eval()",
        "processor = AutoProcessor.from_pretrained(repo_id, trust_remote_code=True)",
        "",
    ]
    if model_type == "mltm_audio_text":
        return "\n".join([
            "import numpy as np",
            "import torch",
            "from transformers import AutoModel, AutoProcessor, pipeline",
            "",
            *head,
            "rate = processor.feature_extractor.sampling_rate",
            "# One second of noise keeps this runnable; use your mono clip at `rate` Hz (float32 in [-1, 1]).",
            "audio = 0.1 * np.random.default_rng(0).standard_normal(rate).astype(np.float32)",
            'captions = ["a dog barks", "rain falls on a tin roof"]',
            'inputs = processor(text=captions, audio=[audio], sampling_rate=rate, return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits_per_audio  # (clips, captions): higher is a better match",
            "print(dict(zip(captions, logits[0].tolist())))",
            "",
            'classifier = pipeline("zero-shot-audio-classification", model=repo_id, trust_remote_code=True)',
            'print(classifier(audio, candidate_labels=["dog", "rain", "car engine"]))',
        ])
    if model_type == "omit_image_text" and config.get("vision_config") is not None:
        return "\n".join([
            "import numpy as np",
            "import torch",
            "from PIL import Image",
            "from transformers import AutoModel, AutoProcessor, pipeline",
            "",
            *head,
            "# A random picture keeps this runnable; use Image.open('photo.jpg').convert('RGB').",
            "image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))",
            'captions = ["a dog runs on the grass", "two children play in the sea"]',
            'inputs = processor(images=[image], text=captions, return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(**inputs).logits_per_image  # (images, captions): higher is a better match",
            "print(dict(zip(captions, logits[0].tolist())))",
            "",
            'classifier = pipeline("zero-shot-image-classification", model=repo_id, trust_remote_code=True)',
            'print(classifier(image, candidate_labels=["a dog", "a child", "a street"]))',
        ])
    if model_type == "omit_image_text":
        return "\n".join([
            "import torch",
            "from transformers import AutoModel, AutoProcessor",
            "",
            *head,
            "# This checkpoint scores precomputed image fragments (B, R, image_fragment_dim), e.g. the 7x7 grid of",
            "# EfficientNet-Lite0 features; random ones keep this runnable.",
            "image_fragments = torch.randn(1, 49, model.config.image_fragment_dim)",
            'captions = ["a dog runs on the grass", "two children play in the sea"]',
            'text = processor(text=captions, return_tensors="pt")',
            "with torch.no_grad():",
            "    logits = model(image_fragments=image_fragments, **text).logits_per_image  # (images, captions)",
            "print(dict(zip(captions, logits[0].tolist())))",
        ])
    raise ValueError(f"model_type={model_type!r}: the model card knows 'mltm_audio_text' and 'omit_image_text'.")


def usage_code(card_text: str, repo_id: str) -> str | None:
    """The usage snippet of a card (the first ``python`` block of "## How to use"), pointed at ``repo_id``.

    Args:
        card_text (`str`): the ``README.md`` text.
        repo_id (`str`): Hub id or folder replacing `REPO_ID_PLACEHOLDER`.

    Returns:
        `str` or `None` when the card has no such block.
    """
    section = card_text.split("## How to use", 1)
    if len(section) < 2:
        return None
    match = re.search(r"```python\n(.*?)```", section[1], flags=re.DOTALL)
    if match is None:
        return None
    return match.group(1).replace(json.dumps(REPO_ID_PLACEHOLDER), json.dumps(str(repo_id)))


def _source_fields(description: str) -> tuple[str, str | None]:
    """Builder name and split of a ``describe_sources`` line (``"esc50 `esc50` split `test`, args {...}"``)."""
    match = re.match(r"(\w+) `[^`]*` split `([^`]*)`", description)
    if match:
        return match.group(1), match.group(2)
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", description.strip())[:64] or "custom", None


def _dataset_lines(datasets: Sequence[str]) -> list[str]:
    lines = [f"- {entry}" for entry in datasets] or ["- (not recorded)"]
    known = []
    for entry in datasets:
        builder, _ = _source_fields(entry)
        if builder in DATASETS and DATASETS[builder] not in known:
            known.append(DATASETS[builder])
    if known:
        lines += ["", "| dataset | licence |", "|---|---|"] + [f"| {name} | {licence} |" for name, licence in known]
    return lines


def build_model_card(
    config: str | Path | Mapping[str, Any] | None = None,
    *,
    model_type: str | None = None,
    repo_id: str | None = None,
    loss: str | None = None,
    datasets: Sequence[str] = (),
    metrics: Mapping[str, Any] | None = None,
    training: Mapping[str, Any] | None = None,
    eval_data: str | None = None,
    best_epoch: int | None = None,
    components: Sequence[str] | None = None,
    requirements: Sequence[str] | None = None,
) -> Any:
    """The model card of an hf_mltm model.

    Args:
        config (`str`, `Path` or `Mapping`, *optional*): the saved folder, its ``config.json`` or that file's
            content: gives the family, the towers (for the licences) and the usage snippet.
        model_type (`str`, *optional*): ``"mltm_audio_text"`` or ``"omit_image_text"`` (default: the config's).
        repo_id (`str`, *optional*): the Hub id in the usage snippet and the ``model-index`` name (default:
            `REPO_ID_PLACEHOLDER`, filled in when published).
        loss (`str`, *optional*): the training loss (default: the config's ``loss_type``).
        datasets (`Sequence[str]`): the training data, one description per source (``describe_sources`` lines;
            their builder names, e.g. ``esc50``, add the dataset's full name and licence).
        metrics (`Mapping`, *optional*): ``evaluate_retrieval`` or zero-shot output of the selected checkpoint.
        training (`Mapping`, *optional*): training settings, listed as they are.
        eval_data (`str`, *optional*): description of the evaluation data (``describe_sources`` lines joined by
            ``"; "``): names the ``model-index`` dataset.
        best_epoch (`int`, *optional*): the epoch (1-based) whose checkpoint was kept.
        components (`Sequence[str]`, *optional*): keys of `COMPONENTS` the weights come from (default:
            `detect_components` of the config).
        requirements (`Sequence[str]`, *optional*): pip packages the code needs (default: the config folder's
            vendored code, :func:`hf_mltm.hub.export.python_requirements`, when it has any).

    Returns:
        `huggingface_hub.ModelCard`.

    Raises:
        ValueError: an unknown model type or component.
    """
    from huggingface_hub import ModelCard, ModelCardData

    saved = _read_config(config)
    model_type = model_type or saved.get("model_type")
    if model_type not in _FAMILIES:
        raise ValueError(f"model_type={model_type!r}: the model card knows {sorted(_FAMILIES)}; pass the saved "
                         f"folder or model_type.")
    saved.setdefault("model_type", model_type)
    family, item, summary = _FAMILIES[model_type]
    components = list(detect_components(saved) if components is None else components)
    unknown = [name for name in components if name not in COMPONENTS]
    if unknown:
        raise ValueError(f"components={unknown} are unknown; choose among {sorted(COMPONENTS)}.")
    loss = loss or saved.get("loss_type") or "default"
    name = repo_id.rsplit("/", 1)[-1] if repo_id else f"hf_mltm-{model_type}"
    has_pipeline = model_type == "mltm_audio_text" or saved.get("vision_config") is not None
    licence = "cc-by-4.0" if any(COMPONENTS[c]["licence"] == "CC BY 4.0" for c in components) else "apache-2.0"
    base_models = [COMPONENTS[c]["base_model"] for c in components if "base_model" in COMPONENTS[c]]

    eval_results = []
    if metrics:
        eval_sources = [part for part in (eval_data or "").split("; ") if part]
        fields = [_source_fields(part) for part in eval_sources]
        dataset_type = "+".join(dict.fromkeys(builder for builder, _ in fields)) or "custom"
        splits = {split for _, split in fields if split}
        readable = "; ".join(
            (DATASETS[builder][0] if builder in DATASETS else builder) + (f", {split} split" if split else "")
            for builder, split in fields) or "evaluation data"
        eval_results = eval_results_from_metrics(metrics, item=item, dataset_type=dataset_type,
                                                 dataset_name=readable,
                                                 dataset_split=splits.pop() if len(splits) == 1 else None)
    data = ModelCardData(
        library_name="transformers",
        license=licence,
        tags=["hf_mltm", "optimal-transport", "retrieval", f"{item}-text", model_type],
        pipeline_tag=f"zero-shot-{item}-classification" if has_pipeline else None,
        base_model=base_models or None,
        eval_results=eval_results or None,
        model_name=name if eval_results else None,
    )
    if requirements is None:
        requirements = []
        if config is not None and not isinstance(config, Mapping) and Path(config).is_dir() and any(
                Path(config).glob("*.py")):
            from .export import python_requirements

            requirements = python_requirements(config)
    install = " ".join(requirements) if requirements else "torch transformers"
    snippet = usage_snippet(saved, repo_id or REPO_ID_PLACEHOLDER)

    towers = []
    for key, part in (("audio_config", "audio tower"), ("vision_config", "vision tower"), ("text_config", "text tower")):
        sub = saved.get(key)
        if isinstance(sub, Mapping):
            details = ", ".join(f"{k}={sub[k]}" for k in ("variant", "hidden_size", "num_hidden_layers") if k in sub)
            towers.append(f"- {part}: `{sub.get('model_type')}`" + (f" ({details})" if details else ""))
    if model_type == "omit_image_text" and saved.get("vision_config") is None:
        towers.insert(0, f"- image side: precomputed fragments of size {saved.get('image_fragment_dim', '?')}")
    settings = [f"- `{key}`: {saved[key]}" for key in ("projection_dim", "embed_dim", "metric_type", "ot_epsilon",
                                                       "partial_ot_mass", "partial_matching", "text_pooling")
                if key in saved]

    eval_line = f"Data: {eval_data or 'none'}." + (
        f" Selected checkpoint: epoch {best_epoch} (best rsum)." if best_epoch else "")
    licence_lines = [
        "- The model code (the `.py` files of this repository, vendored from hf_mltm) is Apache-2.0.",
        *[f"- {COMPONENTS[c]['part'].capitalize()}: {COMPONENTS[c]['name']}, {COMPONENTS[c]['licence']}. "
          f"{COMPONENTS[c]['text']}" for c in components],
    ]
    if licence == "cc-by-4.0":
        licence_lines.append("- The weights as a whole are therefore distributed under CC BY 4.0, with the "
                             "attribution above.")
    else:
        licence_lines.append("- The weights are distributed under Apache-2.0.")

    body = [
        f"# {family} {item}-text model" + (f": `{repo_id}`" if repo_id else ""),
        "",
        f"{family}: {summary}. Trained with hf_mltm (`scripts/train.py`); the code in this "
        "repository is self-contained: it loads with `trust_remote_code=True` without installing hf_mltm.",
        "",
        "## Model",
        "",
        f"- model type: `{model_type}`, training loss: `{loss}`",
        *towers,
        *settings,
        "",
        "## How to use",
        "",
        f"Needs `pip install {install}`.",
        "",
        "```python",
        snippet,
        "```",
        "",
        "## Training data",
        "",
        *_dataset_lines(datasets),
        "",
        "## Training settings",
        "",
        *([f"- `{key}`: {value}" for key, value in (training or {}).items()] or ["- (not recorded)"]),
        "",
        "## Evaluation",
        "",
        eval_line,
        "",
        metrics_table(metrics),
        "",
        "Recall@k (R@k) is in percent; medR/meanR are ranks (1 is best). `distance` ranks by the model's ground "
        "cost; `ot` re-ranks with an OT plan over the whole test set at once (transductive), reported separately.",
        "",
        "## Limitations",
        "",
        *_LIMITATIONS[item],
        "- `ot` ranking is transductive: a query's ranking depends on the rest of the gallery it is ranked in.",
        "- The datasets' own licences (above) apply to what was learned from them; several are non-commercial.",
        "",
        "## Licence",
        "",
        *licence_lines,
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATIONS["mltm_audio_text"],
        "",
        CITATIONS["omit_image_text"],
        "```",
        "",
    ]
    order = ["library_name", "license", "tags", "pipeline_tag", "base_model", "datasets"]
    content = "---\n" + data.to_yaml(original_order=order) + "\n---\n\n" + "\n".join(body)
    return ModelCard(content)


def write_model_card(
    output_dir: str | Path,
    *,
    model_type: str,
    loss: str,
    datasets: list[str],
    metrics: dict[str, Any] | None,
    training: dict[str, Any],
    eval_data: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """Write ``output_dir/README.md``: `build_model_card` for the model saved in ``output_dir``.

    The trainer's call (hf_mltm.training): the folder's ``config.json``, when present, gives the towers and
    therefore the licences, the attribution and the usage snippet.

    Args:
        output_dir: the folder holding the saved model.
        model_type (`str`): e.g. ``"mltm_audio_text"``.
        loss (`str`): the training loss (``config.loss_type``).
        datasets (`list[str]`): descriptions of the training data (what exactly was trained on).
        metrics (`dict`, *optional*): the selected checkpoint's ``evaluate_retrieval`` output.
        training (`dict`): the training settings (printed as a list).
        eval_data (`str`, *optional*): description of the evaluation data.
        best_epoch (`int`, *optional*): the epoch (1-based) whose checkpoint was kept.

    Returns:
        `Path` of the README.
    """
    output_dir = Path(output_dir)
    card = build_model_card(output_dir, model_type=model_type, loss=loss, datasets=datasets, metrics=metrics,
                            training=training, eval_data=eval_data, best_epoch=best_epoch)
    path = output_dir / "README.md"
    path.write_text(card.content, encoding="utf-8")
    return path
