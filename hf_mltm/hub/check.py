"""Prove an exported folder in a fresh Python process in which ``import hf_mltm`` fails.

`check_export` is the test the export must pass and the preflight of publishing: a new interpreter, whose
first statements install an import blocker (`BLOCK_HF_MLTM`), loads the folder with ``AutoConfig``,
``AutoModel`` and ``AutoProcessor`` (``trust_remote_code=True``), runs the processor and the model on an example,
runs the zero-shot pipeline of the family (``zero-shot-audio-classification`` on a numpy waveform,
``zero-shot-image-classification`` on a PIL image) and the usage code of the model card. The parent compares the
processor outputs and the logits with those of the in-package model and processor: they must be equal
(`torch.equal`), because the vendored code is the package code and the weights are the same.

The in-package reference is the model's own class loaded from the folder's weights (after checking that they equal
the given model's). A model built in memory can differ from a loaded copy in the last bit (about 1e-9 after a
CNN tower): the CPU convolution kernels accumulate in an order that depends on the weights' memory alignment,
which differs between a fresh allocation and a tensor read from a safetensors file. That is no property of the
code, and both loads of the same file share it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "BLOCK_HF_MLTM",
    "ExportCheckError",
    "ExportCheckReport",
    "check_export",
    "check_exports",
    "run_without_hf_mltm",
]

# First statements of every check process: a meta-path finder that makes `import hf_mltm` (and its submodules) fail
# with ModuleNotFoundError, as on a machine where it is not installed. It precedes every other finder, including
# an editable install's.
BLOCK_HF_MLTM = '''import sys
class _BlockHfMltm:
    """Finds `hf_mltm` and its submodules as missing."""
    def find_spec(self, name, path=None, target=None):
        if name == "hf_mltm" or name.startswith("hf_mltm."):
            raise ModuleNotFoundError(f"No module named {name!r} (hf_mltm is blocked in this check)", name=name)
        return None
sys.meta_path.insert(0, _BlockHfMltm())
'''

_CHILD = Path(__file__).with_name("_fresh_check.py")
_CAPTIONS = ["a dog barks twice", "rain falls on a tin roof", "a child laughs in a park"]
_LABELS = ["dog", "rain", "car engine"]
_TEMPLATES = {"audio": "This is a sound of {}.", "image": "This is a photo of {}."}


class ExportCheckError(RuntimeError):
    """An exported folder does not load, or does not reproduce the in-package model, without hf_mltm."""


@dataclass
class ExportCheckReport:
    """What `check_export` verified.

    Args:
        folder (`Path`): the checked folder.
        classes (`dict[str, str]`): the classes the fresh process loaded (config, model, processor), all from
            ``transformers_modules``.
        logits (`torch.FloatTensor` of shape `(num_items, num_captions)`): the logits both sides computed.
        pipeline (`list[tuple[str, float]]`, *optional*): the zero-shot pipeline's labels and scores.
        usage_ran (`bool`): whether the model card's usage code ran.
    """

    folder: Path
    classes: dict[str, str]
    logits: torch.Tensor
    pipeline: list[tuple[str, float]] | None = None
    usage_ran: bool = False


def run_without_hf_mltm(
    code: str, *, cwd: str | Path | None = None, env: dict[str, str] | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run Python ``code`` in a fresh interpreter in which ``import hf_mltm`` fails.

    Args:
        code (`str`): the program; it runs after `BLOCK_HF_MLTM`.
        cwd (`str` or `Path`, *optional*): working folder (default: a new temporary folder).
        env (`dict`, *optional*): extra environment variables. ``HF_HUB_OFFLINE=1`` and a private
            ``HF_MODULES_CACHE`` are set unless given.
        timeout (`float`, defaults to 600): seconds before the process is killed.

    Returns:
        `subprocess.CompletedProcess` with text ``stdout``/``stderr`` (not checked: see ``returncode``).
    """
    with tempfile.TemporaryDirectory(prefix="hf_mltm_check_") as scratch:
        environment = dict(os.environ)
        environment.update({"HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(Path(scratch) / "modules"),
                            "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false"})
        environment.pop("PYTHONPATH", None)
        environment.update(env or {})
        try:
            return subprocess.run([sys.executable, "-c", BLOCK_HF_MLTM + code], cwd=str(cwd or scratch),
                                  env=environment, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as error:
            raise ExportCheckError(f"the check process did not finish within {timeout:.0f} s.") from error


def _example(model: Any, processor: Any) -> tuple[dict[str, Any], str, str | None]:
    """Example inputs for the family, the output key and the pipeline task."""
    generator = torch.Generator().manual_seed(0)
    model_type = getattr(model.config, "model_type", None)
    if model_type == "mltm_audio_text":
        rate = int(processor.feature_extractor.sampling_rate)
        audio = 0.1 * torch.randn(rate, generator=generator)  # one second of noise at the extractor's rate
        example = {"audio": audio, "sampling_rate": rate, "text": _CAPTIONS, "labels": _LABELS,
                   "hypothesis_template": _TEMPLATES["audio"]}
        return example, "logits_per_audio", "zero-shot-audio-classification"
    if model_type == "omit_image_text":
        example = {"text": _CAPTIONS, "labels": _LABELS, "hypothesis_template": _TEMPLATES["image"]}
        if getattr(model.config, "vision_config", None) is not None:
            example["image"] = torch.randint(0, 256, (48, 64, 3), generator=generator, dtype=torch.uint8)
            return example, "logits_per_image", "zero-shot-image-classification"
        dim = int(model.config.image_fragment_dim)
        example["image_fragments"] = torch.randn(2, 5, dim, generator=generator)
        example["image_fragment_mask"] = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
        return example, "logits_per_image", None
    raise ValueError(f"model.config.model_type={model_type!r}: check_export knows 'mltm_audio_text' and "
                     f"'omit_image_text'.")


def _reference(model: Any, processor: Any, example: dict[str, Any], key: str) -> tuple[dict, torch.Tensor, Any]:
    """The in-package processor outputs and logits (one thread, as in the child), and the pipeline's logits."""
    import numpy as np
    from PIL import Image

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        media: dict[str, Any] = {}
        if "audio" in example:
            media = {"audio": [example["audio"].numpy()], "sampling_rate": example["sampling_rate"]}
        elif "image" in example:
            media = {"images": [Image.fromarray(np.asarray(example["image"]))]}
        inputs = dict(processor(text=example["text"], return_tensors="pt", **media))
        fragments = {k: example[k] for k in ("image_fragments", "image_fragment_mask") if k in example}
        was_training = model.training
        model.eval()
        with torch.no_grad():
            logits = getattr(model(**inputs, **fragments), key)
            prompts = [example["hypothesis_template"].format(label) for label in example["labels"]]
            pipeline_logits = None
            if media:
                first = {name: value[:1] if name in ("audio", "images") else value for name, value in media.items()}
                pipeline_inputs = dict(processor(text=prompts, return_tensors="pt", **first))
                pipeline_logits = getattr(model(**pipeline_inputs), key)[0]
        model.train(was_training)
    finally:
        torch.set_num_threads(threads)
    return {k: v for k, v in inputs.items() if torch.is_tensor(v)}, logits, pipeline_logits


@dataclass
class _Job:
    folder: Path
    example: dict[str, Any]
    key: str
    task: str | None
    inputs: dict[str, torch.Tensor]
    logits: torch.Tensor
    pipeline_logits: torch.Tensor | None
    usage_code: str | None


def _prepare(folder: str | Path, model: Any, processor: Any, pipeline: bool, usage_code: str | None) -> _Job:
    folder = Path(folder).resolve()
    if not (folder / "config.json").is_file():
        raise ValueError(f"folder={str(folder)!r} has no config.json; export the model first (export_pretrained).")
    example, key, task = _example(model, processor)
    reference = type(model).from_pretrained(folder).eval()
    saved, given = reference.state_dict(), model.state_dict()
    changed = sorted(name for name in given
                     if name not in saved or not torch.equal(saved[name].cpu(), given[name].cpu()))
    if changed:
        raise ExportCheckError(f"{folder} holds other weights than the given model ({changed[:5]} differ); export "
                               f"the model again.")
    inputs, logits, pipeline_logits = _reference(reference, processor, example, key)
    return _Job(folder, example, key, task if pipeline else None, inputs, logits, pipeline_logits, usage_code)


def _compare(job: _Job, result: dict[str, Any]) -> ExportCheckReport:
    problems = []
    if result["hf_mltm_modules"]:
        problems.append(f"the check process imported {result['hf_mltm_modules']}")
    for role, name in result["classes"].items():
        if not name.startswith("transformers_modules."):
            problems.append(f"the {role} class {name} does not come from the folder's code")
    for name, value in job.inputs.items():
        other = result["inputs"].get(name)
        if other is None or other.shape != value.shape or not torch.equal(other, value):
            problems.append(f"processor output {name!r} differs from the in-package processor's")
    logits = result["logits"]
    if logits.shape != job.logits.shape or not torch.equal(logits, job.logits):
        difference = ((logits - job.logits).abs().max().item() if logits.shape == job.logits.shape
                      else f"shapes {tuple(logits.shape)} vs {tuple(job.logits.shape)}")
        problems.append(f"{job.key} differ from the in-package model's (max difference {difference})")
    predictions = result.get("pipeline")
    if job.task is not None:
        labels = job.example["labels"]
        expected = torch.softmax(job.pipeline_logits, dim=-1)
        order = [labels[i] for i in expected.argsort(descending=True, stable=True).tolist()]
        scores = dict(predictions or [])
        if [label for label, _ in predictions or []] != order or any(
                abs(scores[label] - expected[i].item()) > 1e-6 for i, label in enumerate(labels)):
            problems.append(f"the {job.task} pipeline gave {predictions}, the in-package model ranks {order} with "
                            f"scores {expected.tolist()}")
    if job.usage_code and not result.get("usage_ran"):
        problems.append("the usage code did not run")
    if problems:
        raise ExportCheckError(f"{job.folder} does not reproduce the in-package model without hf_mltm: "
                               + "; ".join(problems) + ".")
    return ExportCheckReport(job.folder, result["classes"], job.logits, predictions, bool(result.get("usage_ran")))


def check_exports(
    exports: Sequence[tuple[str | Path, Any, Any]],
    *,
    pipeline: bool = True,
    usage_codes: Sequence[str | None] | None = None,
    timeout: float = 600,
) -> list[ExportCheckReport]:
    """`check_export` for several folders in one fresh process (one interpreter start-up instead of several).

    Args:
        exports (`Sequence[tuple]`): ``(folder, model, processor)`` triples.
        pipeline (`bool`, defaults to `True`): also check the zero-shot pipelines.
        usage_codes (`Sequence[str | None]`, *optional*): code to run for each folder, in the same order.
        timeout (`float`, defaults to 600): seconds before the check process is killed.

    Returns:
        `list[ExportCheckReport]`, in the order of ``exports``.

    Raises:
        ValueError, ExportCheckError: as `check_export`; the message names the folder.
    """
    usage_codes = list(usage_codes) if usage_codes is not None else [None] * len(exports)
    if len(usage_codes) != len(exports):
        raise ValueError(f"usage_codes has {len(usage_codes)} entries for {len(exports)} exports; give one per "
                         f"export (None for none).")
    jobs = [_prepare(folder, model, processor, pipeline, code)
            for (folder, model, processor), code in zip(exports, usage_codes, strict=False)]
    with tempfile.TemporaryDirectory(prefix="hf_mltm_check_") as scratch:
        scratch = Path(scratch)
        specs = []
        for index, job in enumerate(jobs):
            torch.save(job.example, scratch / f"example{index}.pt")
            specs.append({"folder": str(job.folder), "example": str(scratch / f"example{index}.pt"),
                          "output": str(scratch / f"result{index}.pt"), "pipeline": job.task,
                          "usage_code": job.usage_code})
        (scratch / "jobs.json").write_text(json.dumps(specs), encoding="utf-8")
        code = (f"import runpy\nsys.argv = ['_fresh_check', {str(scratch / 'jobs.json')!r}]\n"
                f"runpy.run_path({str(_CHILD)!r}, run_name='__main__')\n")
        process = run_without_hf_mltm(code, cwd=scratch, timeout=timeout)
        if process.returncode != 0:
            folders = ", ".join(str(job.folder) for job in jobs)
            raise ExportCheckError(f"{folders}: does not load without hf_mltm (exit code {process.returncode}):\n"
                                   + _tail(process.stderr or process.stdout))
        results = [torch.load(scratch / f"result{index}.pt", weights_only=True) for index in range(len(jobs))]
    return [_compare(job, result) for job, result in zip(jobs, results, strict=False)]


def check_export(
    folder: str | Path,
    model: Any,
    processor: Any,
    *,
    pipeline: bool = True,
    usage_code: str | None = None,
    timeout: float = 600,
) -> ExportCheckReport:
    """Load ``folder`` in a fresh process without hf_mltm and compare it with ``model`` and ``processor``.

    Checks, in that process: ``import hf_mltm`` fails; ``AutoConfig``/``AutoModel``/``AutoProcessor`` load the
    folder with ``trust_remote_code=True`` from its vendored files (classes from ``transformers_modules``, no
    ``hf_mltm`` module imported); the processor and the model run on an example (a second of noise and three
    captions for m-LTM; a random image, or random fragments, and captions for OMIT); the family's zero-shot
    pipeline, built from the folder path alone, classifies the example (``pipeline=True``; not for OMIT without a
    vision tower); ``usage_code`` runs. Then, here: the processor outputs and the logits equal exactly those of
    the in-package processor and of the model's in-package class loaded from the folder (whose weights must equal
    ``model``'s), and the pipeline's scores are the softmax of the in-package logits of its prompts, in the same
    order.

    Args:
        folder (`str` or `Path`): an exported folder (:func:`hf_mltm.hub.export_pretrained`).
        model (`PreTrainedModel`): the in-package model the folder was exported from.
        processor (`ProcessorMixin`): its processor.
        pipeline (`bool`, defaults to `True`): also check the zero-shot pipeline.
        usage_code (`str`, *optional*): Python code to run after loading (e.g. the card's usage snippet, with the
            folder path in place of the repo id: :func:`hf_mltm.hub.usage_code`).
        timeout (`float`, defaults to 600): seconds before the check process is killed.

    Returns:
        `ExportCheckReport`.

    Raises:
        ValueError: ``folder`` has no ``config.json`` or the model family is unknown.
        ExportCheckError: the folder holds other weights, does not load without hf_mltm, loads hf_mltm code, or
            gives other outputs (the message has the child's error output or the differences).
    """
    return check_exports([(folder, model, processor)], pipeline=pipeline, usage_codes=[usage_code],
                         timeout=timeout)[0]


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
