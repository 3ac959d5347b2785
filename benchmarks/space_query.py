"""Latency of one text query of the Space's search tab over a 1,000-clip gallery, after warm-up.

What is timed is exactly what the search button runs, `hf_mltm.space.AudioGallery.search`: the query through the
text tower and head, its cost to every clip, and (``ot`` mode) the transductive OT solve with the gallery's class
prompts as context queries, then the top-10 sort. Encoding the gallery is not timed: the Space does it once at start
(from the feature cache).

The gallery is the real clips the Space shows (ESC-50 fold 1 of ``$HF_MLTM_DATA``, 398 clips, else the 10 packaged
animal sounds), each encoded once, then repeated in order until there are ``--gallery_size`` rows (the search cost
depends on the number of rows, not on their content). The model is the Space's (``HF_MLTM_SPACE_MODEL``, else
``runs/demo``); when neither exists, the demo architecture (configs/demo.yaml: aisfx + all-MiniLM-L6-v2 towers)
with untrained heads is used instead, which has the same cost per query.

Threads: the Space runs each query on one torch thread (``HF_MLTM_SPACE_THREADS``, default 1) and answers two at
once on the 2 cores. One query of a few tokens gains nothing from a second thread, and on a loaded machine two
threads per query are far slower (OpenMP workers wait for a core at every layer): ``--threads 2`` shows it.

Usage: ``python benchmarks/space_query.py [--gallery_size 1000] [--queries 40] [--threads 1]``; prints a markdown
table (median, 90th percentile and worst latency in ms per ranking mode) and, last, one line
``space_query_ms distance=<median> ot=<median> budget=200``. ``--output`` also writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_mltm.adapters import Encoded  # noqa: E402
from hf_mltm.space import AudioGallery, GalleryClip  # noqa: E402
from hf_mltm.space.audio_text import encode_clips  # noqa: E402
from hf_mltm.space.loading import (  # noqa: E402
    data_dir,
    default_gallery_clips,
    feature_cache_dir,
    load_audio_text_model,
    resolve_audio_model,
)

BUDGET_MS = 200.0
QUERIES = [
    "a dog barking", "rain falling on a roof", "a rooster crowing at dawn", "church bells ringing",
    "a baby crying", "footsteps on a wooden floor", "a helicopter flying over", "waves crashing on the shore",
    "someone snoring loudly", "a clock ticking", "birds chirping in the morning", "a door knocking",
    "glass breaking", "a car horn in traffic", "crackling fire", "wind blowing through trees",
    "a cat meowing", "keyboard typing", "a train passing by", "thunder in the distance",
]


def load_model():
    """The Space's audio-text model, or the demo architecture with untrained heads (same cost per query)."""
    source = resolve_audio_model()
    if os.environ.get("HF_MLTM_SPACE_MODEL") or (Path(source.location) / "config.json").is_file():
        model, processor = load_audio_text_model(source.location)
        return model, processor, source.description
    import yaml

    from hf_mltm.training.model_factory import build_model_and_processor

    section = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "demo.yaml").read_text())["model"]
    model, processor = build_model_and_processor(section)
    return model.eval(), processor, "configs/demo.yaml architecture, untrained heads (no runs/demo)"


def repeated_gallery(model, processor, clips: list[GalleryClip], size: int) -> AudioGallery:
    """A gallery of ``size`` rows: ``clips`` encoded once (through the feature cache), then repeated in order."""
    encoded = encode_clips(model, processor, [clip.audio for clip in clips], cache_dir=feature_cache_dir(),
                           progress=True)
    rows = [i % len(clips) for i in range(size)]
    index = torch.tensor(rows)
    embeds = Encoded({key: value[index] for key, value in encoded.tensors.items()}, encoded.pooled[index])
    repeated = [GalleryClip(f"{clips[i].item_id}#{k}", clips[i].label, clips[i].audio, clips[i].source)
                for k, i in enumerate(rows)]
    return AudioGallery(model, processor, repeated, embeds=embeds, cache_dir=feature_cache_dir())


def time_queries(gallery: AudioGallery, mode: str, count: int, warmup: int = 5) -> list[float]:
    """Latency in ms of ``count`` searches (queries cycled from `QUERIES`), after ``warmup`` untimed ones."""
    for query in QUERIES[:warmup]:
        gallery.search(query, mode=mode, top_k=10)
    times = []
    for i in range(count):
        start = time.perf_counter()
        gallery.search(QUERIES[i % len(QUERIES)], mode=mode, top_k=10)
        times.append(1000 * (time.perf_counter() - start))
    return times


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery_size", type=int, default=1000, help="rows of the gallery (real clips repeated)")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per ranking mode")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per query (the Space answers two queries at once on 2 cores, one thread "
                             "each: HF_MLTM_SPACE_THREADS)")
    parser.add_argument("--output", type=Path, default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if args.gallery_size < 1 or args.queries < 1 or args.threads < 1:
        parser.error("--gallery_size, --queries and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    model, processor, description = load_model()
    clips = default_gallery_clips(data_dir())
    gallery = repeated_gallery(model, processor, clips, args.gallery_size)
    results = {"model": description, "distinct_clips": len(clips), "gallery_size": len(gallery),
               "context_queries": len(gallery.context_prompts), "threads": args.threads,
               "torch": torch.__version__, "machine": platform.machine(), "modes": {}}
    print(f"\nmodel: {description}; gallery: {len(clips)} distinct clips repeated to {len(gallery)}; "
          f"{len(gallery.context_prompts)} context prompts; {args.threads} threads\n")
    print("| ranking | queries | median ms | p90 ms | max ms |\n|---|---|---|---|---|")
    for mode in ("distance", "ot"):
        times = sorted(time_queries(gallery, mode, args.queries))
        row = {"median_ms": statistics.median(times), "p90_ms": times[int(0.9 * (len(times) - 1))],
               "max_ms": times[-1], "queries": len(times)}
        results["modes"][mode] = row
        print(f"| {mode} | {len(times)} | {row['median_ms']:.1f} | {row['p90_ms']:.1f} | {row['max_ms']:.1f} |")
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
    modes = results["modes"]
    print(f"\nspace_query_ms distance={modes['distance']['median_ms']:.1f} ot={modes['ot']['median_ms']:.1f} "
          f"budget={BUDGET_MS:.0f}")
    return results


if __name__ == "__main__":
    main()
