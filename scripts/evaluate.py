"""Evaluate a saved retrieval model: cross-modal retrieval or zero-shot classification, written as a report.

Examples::

    # retrieval on Clotho evaluation, plain distance and transductive OT ranking reported separately
    python scripts/evaluate.py --model runs/mltm --dataset clotho --data_dir ../shared/data/clotho \\
        --split test --ranking distance ot --output_dir runs/mltm/eval_clotho

    # ESC-50 zero-shot classification (prompts "This is a sound of {label}.")
    python scripts/evaluate.py --model runs/mltm --dataset esc50 --zero_shot --output_dir runs/mltm/eval_esc50

    # an OMIT model scored with another partial-matching rule than it was saved with
    python scripts/evaluate.py --model runs/omit --config configs/flickr8k_omit_small.yaml \
        --model_config partial_matching=mass partial_ot_mass=0.8 --output_dir runs/omit/eval_mass

Writes ``metrics.json``, ``metrics.md`` and ``plot.png`` to ``--output_dir`` and prints the markdown table. All the
logic lives in :mod:`hf_mltm.evaluation` and the dataset builders in :mod:`hf_mltm.data`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import torch

# This file is named like the `evaluate` library: keep its folder off the import path so that a library importing
# `evaluate` does not get this script instead.
sys.path[:] = [entry for entry in sys.path if Path(entry or ".").resolve() != Path(__file__).resolve().parent]

DATASETS = {
    # --dataset: (builder in hf_mltm.data, folder under $HF_MLTM_DATA used when --data_dir is not given)
    "esc50": ("build_esc50", "esc50"),
    "clotho": ("build_clotho", "clotho"),
    "audiocaps": ("build_audiocaps", "audiocaps"),
    "flickr8k": ("build_flickr8k", "flickr8k_1k"),
    "flickr30k": ("build_flickr30k", None),
    "coco": ("build_coco", None),
    "coco_captions": ("build_coco_captions", None),  # any image folder + a COCO-format caption file
    "audio_folder": ("build_audio_folder", None),
}
HEATMAP_ITEMS = 16


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder saved with save_pretrained (model and processor)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=sorted(DATASETS), help="dataset built by hf_mltm.data")
    source.add_argument("--dataset_path", help="a dataset in the items view saved with save_to_disk")
    source.add_argument("--config", help="a training config (scripts/train.py): evaluate on its data.eval sources")
    parser.add_argument("--data_dir", help="the dataset's root folder (default: $HF_MLTM_DATA/<dataset>)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--annotation_file",
                        help="--dataset coco_captions: the COCO-format caption file ({images, annotations}) of the "
                             "images in --data_dir; all its images form the --split split")
    parser.add_argument("--ranking", nargs="+", default=["distance"], choices=["distance", "ot"],
                        help="ranking modes, each reported separately (default: distance)")
    parser.add_argument("--ot_epsilon", type=float, help="epsilon of OT ranking (default: the model's ot_epsilon)")
    parser.add_argument("--zero_shot", action="store_true",
                        help="zero-shot classification of labelled clips (ESC-50 protocol) instead of retrieval")
    parser.add_argument("--template", default="This is a sound of {label}.", help="zero-shot prompt template")
    parser.add_argument("--fragments_dir",
                        help="precomputed image fragments (scripts/extract_grid_features.py) for an OMIT model "
                             "without a vision tower")
    parser.add_argument("--max_items", type=int, help="evaluate only the first N items (quick checks)")
    parser.add_argument("--model_config", nargs="+", default=[], metavar="KEY=VALUE",
                        help="model config values to use for this evaluation only, e.g. partial_matching=mass "
                             "ot_epsilon=0.1 (YAML values; unknown keys fail)")
    parser.add_argument("--cache_dir",
                        help="feature cache folder for the frozen towers' outputs (hf_mltm.feature_cache; default: "
                             "no cache)")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--output_dir", required=True, help="folder for metrics.json, metrics.md and plot.png")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    if args.max_items is not None and args.max_items < 1:
        parser.error(f"--max_items must be >= 1, got {args.max_items}.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is an existing file; give a folder.")
    model_path = Path(args.model).expanduser()
    if (args.model.startswith((".", "/", "~")) or args.model.count("/") > 1) and not model_path.is_dir():
        parser.error(f"--model {args.model}: no such folder (give a folder saved with save_pretrained, or a Hub id).")
    args.model_config = parse_model_config(parser, args.model_config)
    return args


def parse_model_config(parser: argparse.ArgumentParser, pairs: list[str]) -> dict[str, Any]:
    """``["key=value", ...]`` -> ``{key: YAML value}``."""
    import yaml

    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            parser.error(f"--model_config expects KEY=VALUE pairs, got {pair!r}.")
        values[key] = yaml.safe_load(value)
    return values


def apply_model_config(model, values: dict[str, Any]) -> None:
    """Set evaluation-time config values on ``model.config``, checked like the config's own (unknown keys fail
    naming the closest one; values are validated by re-building the config)."""
    from hf_mltm.training.model_factory import check_config_keys

    if not values:
        return
    check_config_keys(type(model.config), values)
    type(model.config)(**{**model.config.to_dict(), **values})  # validates the combination, raises ValueError
    for key, value in values.items():
        setattr(model.config, key, value)


def load_items(args: argparse.Namespace):
    """The items-view `datasets.Dataset` to evaluate."""
    import datasets

    if args.config is not None:
        from hf_mltm.training.config import load_config
        from hf_mltm.training.data_factory import build_eval_items

        items = build_eval_items(load_config(args.config).data)
    elif args.dataset_path is not None:
        loaded = datasets.load_from_disk(args.dataset_path)
        if isinstance(loaded, datasets.DatasetDict):
            if args.split not in loaded:
                raise SystemExit(f"--dataset_path {args.dataset_path} has splits {list(loaded)}, not {args.split!r}.")
            loaded = loaded[args.split]
        items = loaded
    else:
        import hf_mltm.data

        builder_name, default_folder = DATASETS[args.dataset]
        data_dir = args.data_dir
        if data_dir is None:
            if default_folder is None:
                raise SystemExit(f"--dataset {args.dataset} needs --data_dir (the dataset's root folder).")
            data_dir = os.path.join(os.environ.get("HF_MLTM_DATA", "../shared/data"), default_folder)
        extra = {}
        if args.dataset == "coco_captions":
            if args.annotation_file is None:
                raise SystemExit("--dataset coco_captions needs --annotation_file (a COCO-format caption file).")
            extra = {"annotation_file": args.annotation_file, "split": args.split}
        splits = getattr(hf_mltm.data, builder_name)(data_dir, view="items", splits=args.split, **extra)
        items = next(iter(splits.values()))
    if "captions" not in items.column_names and not args.zero_shot:
        raise SystemExit(f"The dataset has no 'captions' column (columns {items.column_names}): is it the items view?")
    if args.max_items is not None:
        items = items.select(range(min(args.max_items, len(items))))
    return items


def class_labels(items) -> list[str]:
    """Class names ordered by ``label_id`` (or sorted, without one)."""
    if "label" not in items.column_names:
        raise SystemExit(f"--zero_shot needs a labelled dataset ('label' column); got columns {items.column_names}.")
    if "label_id" in items.column_names:
        by_id = dict(zip(items["label_id"], items["label"], strict=True))
        return [by_id[key] for key in sorted(by_id)]
    return sorted(set(items["label"]))


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Evaluate and write the report; returns the results (without embeddings)."""
    from transformers import AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401  (registers the model types with the Auto classes)
    from hf_mltm.evaluation import evaluate_retrieval, markdown_table, save_report, zero_shot_classification

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = AutoModel.from_pretrained(args.model).to(device).eval()
    apply_model_config(model, args.model_config)
    processor = AutoProcessor.from_pretrained(args.model)
    items = load_items(args)
    progress = not args.no_progress
    similarity = None
    if args.zero_shot:
        results = zero_shot_classification(model, items, processor, class_labels(items), template=args.template,
                                           batch_size=args.batch_size, device=device, progress=progress,
                                           cache_dir=args.cache_dir)
    else:
        fragments_dir = args.fragments_dir
        if fragments_dir is None and args.config is not None:
            from hf_mltm.training.config import load_config

            fragments_dir = load_config(args.config).data.get("fragments")
        fragments = None
        if fragments_dir is not None:
            from hf_mltm.data import load_grid_features

            fragments = load_grid_features(fragments_dir)
        results = evaluate_retrieval(model, items, processor, ranking_modes=args.ranking, batch_size=args.batch_size,
                                     ot_epsilon=args.ot_epsilon, device=device, progress=progress,
                                     fragments=fragments, cache_dir=args.cache_dir)
        cost = results.pop("cost")  # (items, captions): the heatmap shows -cost of the first items' captions
        owner = torch.tensor([index for index, row in enumerate(items["captions"]) for _ in row])
        similarity = -cost[:HEATMAP_ITEMS][:, owner < HEATMAP_ITEMS]
    if args.model_config:
        results["model_config_overrides"] = args.model_config
    results["run"] = {"model": str(args.model), "dataset": args.dataset or str(args.dataset_path or args.config),
                      "split": args.split, "num_items": len(items), "zero_shot": args.zero_shot,
                      "ranking": list(args.ranking) if not args.zero_shot else ["distance"]}
    source = args.dataset or Path(args.dataset_path or args.config).name
    title = f"{Path(args.model).name} on {source} ({'eval sources' if args.config else args.split})"
    save_report(results, args.output_dir, similarity=similarity, title=title)
    print(markdown_table(results))
    return results


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
