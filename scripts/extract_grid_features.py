"""Precompute EfficientNet-Lite0 grid fragments (49 x 1280 per image) for OMIT into the resumable feature cache.

A thin command line over `hf_mltm.data.grid_features.extract_grid_features`: the images of ``--image_dir`` (or
only those a Karpathy-split JSON lists, with the JSON's ``filename`` as ``item_id``) are encoded by the converted
EfficientNet-Lite0 (`EfficientNetLiteModel`) and stored in the content-keyed feature cache under
``--output_dir`` (``image-<fingerprint>/`` shards, plus ``items.json`` mapping each item id to its image's
content key). Running the same command again after an interruption computes only the images no finished shard
holds; an edited image file is computed again. Load the result with
``hf_mltm.data.grid_features.load_grid_features``.

Usage::

    python scripts/extract_grid_features.py --image_dir ../shared/data/flickr8k_1k/Images \
        --karpathy_json ../shared/data/flickr8k_1k/dataset_flickr8k_1k.json --output_dir cache/flickr8k_grid
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from hf_mltm.data.grid_features import DTYPES, extract_grid_features, find_images


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image_dir", required=True, help="folder of the images")
    parser.add_argument(
        "--karpathy_json", default=None, help="Karpathy-split JSON: only its images, item_id = its 'filename'"
    )
    parser.add_argument(
        "--output_dir", required=True, help="root of the feature cache and items.json (created if missing)"
    )
    parser.add_argument("--batch_size", type=int, default=32, help="images per encoder call")
    parser.add_argument("--shard_size", type=int, default=256, help="rows per feature-cache shard")
    parser.add_argument("--limit", type=int, default=None, help="only the first LIMIT images")
    parser.add_argument("--dtype", choices=DTYPES, default="float16", help="storage dtype of the fragments")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)

    image_paths, item_ids = find_images(args.image_dir, args.karpathy_json, args.limit)
    dataset = extract_grid_features(
        image_paths,
        item_ids,
        args.output_dir,
        batch_size=args.batch_size,
        shard_size=args.shard_size,
        dtype=args.dtype,
        progress=not args.no_progress,
    )
    shape = dataset.features["fragments"].shape
    print(f"{len(dataset)} images, fragments {shape} {args.dtype}, in {args.output_dir}")


if __name__ == "__main__":
    main()
