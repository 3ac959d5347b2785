"""Embed an audio collection with one or more processes and build a searchable gallery index (hf_mltm.index).

Examples::

    # ESC-50 with two CPU processes (each embeds every second clip), exact index, OT potentials from the captions
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/index.py \\
        --model runs/demo --dataset esc50 --data_dir ../shared/data/esc50 --output_dir runs/esc50_index

    # a folder of clips (metadata.csv with file_name,label, or files named by their label), approximate IVF index
    python scripts/index.py --model runs/demo --dataset path/to/clips --index_type ivf --output_dir runs/clips_index

    # a dataset saved with save_to_disk (items view: "audio" column, optional "captions")
    python scripts/index.py --model runs/demo --dataset path/to/saved --split test --output_dir runs/saved_index

Every process embeds its share of the clips (rows ``rank, rank + N, ...``) into one feature cache (``--cache_dir``,
default ``<output_dir>/feature_cache``) with its rank as the cache's writer; an interrupted run, started again with
the same arguments, computes only the clips no finished cache shard holds. The main process then reads all rows from
the cache, applies the model's head, builds the index (``datasets.Dataset.add_faiss_index``), estimates the OT
column potentials from a sample of the captions (``--potentials``), and saves the index with its manifest
(``index.json``: model folder, config hash, preprocessing, adapter) to ``--output_dir``. Load it with
``hf_mltm.index.GalleryIndex.load(output_dir)``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

# Data folders under $HF_MLTM_DATA used when --data_dir is not given.
DEFAULT_FOLDERS = {"esc50": "esc50", "clotho": "clotho", "audiocaps": "audiocaps", "urbansound8k": "urbansound8k",
                   "tau22_scenes": "tau22_scenes", "bigsoundbank": "bigsoundbank_cc0", "flickr8k": "flickr8k_1k"}
SAVED_DATASET_FILES = ("dataset_info.json", "state.json", "dataset_dict.json")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="folder saved with save_pretrained (model and processor)")
    parser.add_argument("--dataset", required=True,
                        help="a builder of hf_mltm.data (esc50, clotho, audiocaps, urbansound8k, ...), a folder of "
                             "clips, or a dataset saved with save_to_disk")
    parser.add_argument("--data_dir", help="the builder's root folder (default: $HF_MLTM_DATA/<dataset>)")
    parser.add_argument("--split", help="split to index (default: every split, with a 'split' column)")
    parser.add_argument("--max_items", type=int, help="index only the first N items (quick checks)")
    parser.add_argument("--output_dir", required=True, help="folder of the index (index.json, gallery/, ...)")
    parser.add_argument("--cache_dir", help="feature cache folder (default: <output_dir>/feature_cache)")
    parser.add_argument("--index_type", default="auto", choices=["auto", "flat", "ivf", "hnsw"],
                        help="auto: exact (flat) up to 50k items, IVF above (default: auto)")
    parser.add_argument("--nlist", type=int, help="IVF cells (default: power of two near 2 sqrt(N))")
    parser.add_argument("--nprobe", type=int, help="IVF cells scanned per query (default: max(16, nlist / 16))")
    parser.add_argument("--hnsw_m", type=int, default=32, help="HNSW links per node")
    parser.add_argument("--ef_construction", type=int, default=80, help="HNSW build beam width")
    parser.add_argument("--ef_search", type=int, default=128, help="HNSW search beam width")
    parser.add_argument("--seed", type=int, default=0, help="seed of the IVF training sample and the query sample")
    parser.add_argument("--potentials", default="captions",
                        help="query sample for the OT potentials: 'captions' (the collection's captions; skipped "
                             "when it has none), 'none', or a text file with one query per line")
    parser.add_argument("--max_potential_queries", type=int,
                        help="sample at most this many queries for the potentials (default: as many as keep the "
                             "(queries, items) cost within 512 MiB, between 128 and 4096)")
    parser.add_argument("--ot_epsilon", type=float, help="epsilon of the potentials (default: the model's ot_epsilon)")
    parser.add_argument("--batch_size", type=int, default=32, help="clips or captions per forward pass")
    parser.add_argument("--no_progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    for name in ("max_items", "nlist", "nprobe", "max_potential_queries", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be >= 1, got {value}.")
    if args.ot_epsilon is not None and not args.ot_epsilon > 0:
        parser.error(f"--ot_epsilon must be > 0, got {args.ot_epsilon}.")
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        parser.error(f"--output_dir {args.output_dir} is an existing file; give a folder.")
    if not Path(args.model).is_dir():
        parser.error(f"--model {args.model}: no such folder (give a folder saved with save_pretrained).")
    if args.potentials not in ("captions", "none") and not Path(args.potentials).is_file():
        parser.error(f"--potentials {args.potentials!r}: use 'captions', 'none' or an existing text file.")
    return args


def load_collection(args: argparse.Namespace):
    """The items-view `datasets.Dataset` to index (``audio`` column; ``item_id`` and ``captions`` when present)."""
    import datasets

    from hf_mltm.data import BUILDERS, build_audio_folder, get_builder

    name = args.dataset
    folder = Path(name).expanduser()
    if name in BUILDERS or name.startswith("build_"):
        key = name.removeprefix("build_")
        data_dir = args.data_dir or os.path.join(os.environ.get("HF_MLTM_DATA", "../shared/data"),
                                                 DEFAULT_FOLDERS.get(key, key))
        splits = get_builder(key)(data_dir, view="items")
    elif folder.is_dir() and any((folder / marker).is_file() for marker in SAVED_DATASET_FILES):
        splits = datasets.load_from_disk(str(folder))
        if isinstance(splits, datasets.Dataset):
            splits = datasets.DatasetDict({args.split or "train": splits})
    elif folder.is_dir():
        with_metadata = (folder / "metadata.csv").is_file()
        audio_dir = "audio" if (folder / "audio").is_dir() else "."
        splits = build_audio_folder(folder, view="items", metadata_file="metadata.csv" if with_metadata else None,
                                    audio_dir=audio_dir)
    else:
        from hf_mltm.validation import closest_match

        hint = closest_match(name, BUILDERS)
        raise SystemExit(f"--dataset {name}: neither a builder of hf_mltm.data ({', '.join(sorted(BUILDERS))}"
                         f"{f'; did you mean {hint!r}?' if hint else ''}) nor an existing folder.")
    if args.split is not None:
        if args.split not in splits:
            raise SystemExit(f"--split {args.split!r}: the collection has splits {sorted(splits)}.")
        items = splits[args.split]
    elif len(splits) == 1:
        items = next(iter(splits.values()))
    else:
        parts = [split.add_column("split", [split_name] * len(split)) for split_name, split in splits.items()]
        items = datasets.concatenate_datasets(parts)
    if args.max_items is not None:
        items = items.select(range(min(args.max_items, len(items))))
    if len(items) == 0:
        raise SystemExit(f"--dataset {args.dataset}: no items to index.")
    return items


def default_potential_queries(num_items: int) -> int:
    """Queries whose float32 cost against ``num_items`` items fits 512 MiB (so the potentials are solved densely
    in seconds instead of streamed), between 128 and 4096."""
    return int(min(4096, max(128, 2**27 // max(1, num_items))))


def potential_queries(args: argparse.Namespace, items) -> tuple[list[str] | None, str]:
    """The query sample of the OT potentials (seeded, at most ``--max_potential_queries``) and its description."""
    import numpy as np

    if args.potentials == "none":
        return None, "none"
    if args.potentials == "captions":
        if "captions" not in items.column_names:
            return None, "none (the collection has no captions column)"
        texts = [caption for captions in items["captions"] for caption in captions]
        origin = "captions of the gallery"
    else:
        texts = [line.strip() for line in Path(args.potentials).read_text(encoding="utf-8").splitlines()
                 if line.strip()]
        origin = f"lines of {args.potentials}"
    texts = list(dict.fromkeys(texts))  # each distinct query once
    if not texts:
        raise SystemExit(f"--potentials {args.potentials}: no queries found.")
    total = len(texts)
    limit = args.max_potential_queries or default_potential_queries(len(items))
    if total > limit:
        chosen = np.sort(np.random.default_rng(args.seed).choice(total, size=limit, replace=False))
        texts = [texts[i] for i in chosen]
    return texts, f"{origin} ({len(texts)} distinct of {total})"


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    """Embed (every process), then build and save the index (main process); returns the summary on the main
    process and `None` on the others."""
    from accelerate import PartialState
    from accelerate.utils import gather_object, parse_flag_from_env
    from transformers import AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401  (registers the model types with the Auto classes)
    from hf_mltm.index import GalleryIndex, IndexSettings, IndexSpace, fill_item_cache, fill_text_cache

    # ACCELERATE_USE_CPU=true with --multi_gpu runs several CPU processes (gloo); like Accelerator, pass it on.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    rank, world = state.process_index, state.num_processes
    progress = not args.no_progress
    model = AutoModel.from_pretrained(args.model).eval().to(state.device)
    processor = AutoProcessor.from_pretrained(args.model)
    IndexSpace.from_model(model)  # fail fast (e.g. an OMIT model) before embedding anything
    settings = IndexSettings(args.index_type, nlist=args.nlist, nprobe=args.nprobe, hnsw_m=args.hnsw_m,
                             ef_construction=args.ef_construction, ef_search=args.ef_search, seed=args.seed)
    items = load_collection(args)
    texts, texts_source = potential_queries(args, items)
    cache_dir = Path(args.cache_dir or Path(args.output_dir) / "feature_cache")
    shared = {"rank": rank, "world_size": world, "batch_size": args.batch_size, "device": state.device,
              "progress": progress}
    computed_items = fill_item_cache(model, processor, items, cache_dir, **shared)
    computed_texts = fill_text_cache(model, processor, texts, cache_dir, **shared) if texts else 0
    counts = gather_object([(computed_items, computed_texts)])
    state.wait_for_everyone()
    summary = None
    if state.is_main_process:
        index = GalleryIndex.from_model(model, processor, items, settings=settings, cache_dir=cache_dir,
                                        batch_size=args.batch_size, device=state.device, model_path=args.model,
                                        progress=progress)
        if texts:
            index.fit_potentials(texts, epsilon=args.ot_epsilon, source=texts_source, batch_size=args.batch_size,
                                 cache_dir=cache_dir)
        index.manifest["collection"] = {
            "dataset": args.dataset, "data_dir": args.data_dir, "split": args.split, "max_items": args.max_items,
            "num_items": len(items), "processes": world, "cache_dir": str(cache_dir.resolve()),
            "items_embedded_this_run": sum(count[0] for count in counts),
            "captions_embedded_this_run": sum(count[1] for count in counts),
            "potential_queries": texts_source,
        }
        index.save(args.output_dir)
        summary = index.manifest["collection"] | {"index_type": index.settings.index_type,
                                                  "space": index.space.kind}
        print(f"indexed {len(index)} items ({summary['items_embedded_this_run']} embedded now by {world} "
              f"process(es), the rest from the cache), index_type={index.settings.index_type}, space="
              f"{index.space.kind}, potentials: {texts_source}; saved to {args.output_dir}")
    state.wait_for_everyone()
    return summary


def main(argv: list[str] | None = None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
