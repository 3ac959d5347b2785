"""The child side of :func:`hf_mltm.hub.check.check_export`: load an exported folder as a user without hf_mltm would.

Run as a script (``runpy.run_path``) by a fresh interpreter in which ``import hf_mltm`` already fails
(:data:`hf_mltm.hub.check.BLOCK_HF_MLTM` ran first); this file therefore imports nothing from hf_mltm. It reads a
list of jobs (JSON: a folder, the example inputs saved with `torch.save`, the pipeline task, the usage code) and
writes what it computed for each with `torch.save`, for the parent to compare with the in-package model.
"""

from __future__ import annotations

import json
import sys


def _blocked() -> bool:
    try:
        import hf_mltm  # noqa: F401
    except ImportError:
        return True
    return False


def main(jobs_path: str) -> None:
    with open(jobs_path, encoding="utf-8") as handle:
        jobs = json.load(handle)
    if not _blocked():
        raise SystemExit("hf_mltm is importable in the check process: the import blocker did not run.")
    for job in jobs:
        check(job)


def check(job: dict) -> None:
    """Load one folder, run its processor, model, pipeline and usage code; save what they gave."""
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

    torch.set_num_threads(1)  # the parent computes its reference with one thread too
    folder = job["folder"]
    example = torch.load(job["example"], weights_only=True)
    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)

    media: dict = {}
    if "audio" in example:
        media = {"audio": [example["audio"].numpy()], "sampling_rate": int(example["sampling_rate"])}
    elif "image" in example:
        media = {"images": [Image.fromarray(example["image"].numpy())]}
    inputs = dict(processor(text=example["text"], return_tensors="pt", **media))
    fragments = {key: example[key] for key in ("image_fragments", "image_fragment_mask") if key in example}
    with torch.no_grad():
        output = model(**inputs, **fragments)
    logits = output.logits_per_audio if "audio" in example else output.logits_per_image
    result = {
        "classes": {
            "config": type(config).__module__ + "." + type(config).__name__,
            "model": type(model).__module__ + "." + type(model).__name__,
            "processor": type(processor).__module__ + "." + type(processor).__name__,
        },
        "inputs": {key: value for key, value in inputs.items() if torch.is_tensor(value)},
        "logits": logits,
    }

    task = job.get("pipeline")
    if task:
        classifier = pipeline(task, model=folder, trust_remote_code=True)
        item = example["audio"].numpy() if "audio" in example else Image.fromarray(example["image"].numpy())
        labels, template = example["labels"], example["hypothesis_template"]
        predictions = classifier(item, candidate_labels=labels, hypothesis_template=template)
        result["pipeline"] = [(str(p["label"]), float(p["score"])) for p in predictions]

    code = job.get("usage_code")
    if code:
        namespace = {"__name__": "__main__"}
        exec(compile(code, "README.md (usage)", "exec"), namespace)  # the card's own snippet, as a user runs it
        result["usage_ran"] = True

    result["hf_mltm_modules"] = sorted(name for name in sys.modules if name == "hf_mltm" or name.startswith("hf_mltm."))
    torch.save(result, job["output"])


if __name__ == "__main__":
    main(sys.argv[1])
