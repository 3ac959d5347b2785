"""Reproduce the evidence suite: the papers' claims tested side by side on real data, with seeds and 95 % CIs.

Each suite (``configs/claims/<name>.yaml``) trains every method's heads on frozen-tower features cached once
(``--cache_dir``), selects the learning rate, the method's scale and the epoch on a validation split only, repeats
the selected setting over the suite's seeds, and only then evaluates the reported split. Outputs:
``benchmarks/results/claims_<name>.json`` (+ ``.md`` table) and plots in ``docs/images/``; see
`hf_mltm.experiments.runner` and ``docs/results.md``.

Examples::

    python scripts/reproduce.py --suite audio_zero_shot            # one suite (about 5-10 min on 2 idle cores)
    python scripts/reproduce.py --suite all                        # every suite, in priority order
    python scripts/reproduce.py --suite all --quick                # one seed, few epochs, small data (a smoke test)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", nargs="+", default=["all"],
                        help="suite name(s) from configs/claims (audio_zero_shot, epsilon_sweep, image_text, "
                             "noisy_correspondence, explain_audio, explain_prompt, explain_validation, "
                             "explain_temperature, explain_triplet, explain_noise, omit_fragments) or 'all' (in that "
                             "order)")
    parser.add_argument("--quick", action="store_true",
                        help="one seed, few epochs, one search run per method, smaller data (finishes in minutes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="override the suites' seeds")
    parser.add_argument("--config_dir", default=str(REPO / "configs" / "claims"))
    parser.add_argument("--data_root", default=None, help="shared data folder (default $HF_MLTM_DATA or ../shared/data)")
    parser.add_argument("--cache_dir", default=str(REPO / "runs" / "claims" / "feature_cache"),
                        help="feature cache shared by all suites (tower outputs are computed once)")
    parser.add_argument("--runs_dir", default=str(REPO / "runs" / "claims" / "runs"),
                        help="finished runs are kept here, so an interrupted suite resumes where it stopped")
    parser.add_argument("--fresh", action="store_true",
                        help="train every run again (ignore and do not write --runs_dir); use after editing the "
                             "training code or a loss")
    parser.add_argument("--results_dir", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--images_dir", default=None,
                        help="plots (default docs/images; runs/claims/quick_images with --quick)")
    parser.add_argument("--artifacts_dir", default=str(REPO / "runs" / "claims" / "artifacts"),
                        help="embeddings behind the plots (for --report_only)")
    parser.add_argument("--report_only", action="store_true",
                        help="run nothing: rewrite the Markdown tables and plots from an earlier run's outputs")
    parser.add_argument("--num_threads", type=int, default=1,
                        help="torch threads (1 avoids oversubscription on small matrices; default 1)")
    parser.add_argument("--progress", action="store_true", help="progress bars while filling the feature cache")
    parser.add_argument("--jobs", type=int, default=1,
                        help="run the suites in this many processes (one core each), shared by their recorded cost; "
                             "a job's log goes to runs/claims/logs/job<k>.log")
    return parser.parse_args(argv)


def run_jobs(args: argparse.Namespace, argv: list[str]) -> int:
    """Run ``args.suite`` in ``args.jobs`` child processes of this script (`split_suites`), then print their tables
    and summary lines. The feature cache and the run store are safe to share between processes."""
    import subprocess

    from hf_mltm.experiments.runner import available_suites, recorded_cost, split_suites

    known = available_suites(args.config_dir)
    names = known if args.suite == ["all"] else list(args.suite)
    groups = split_suites(names, min(args.jobs, len(names)), [recorded_cost(args.results_dir, n) for n in names])
    base = _without_option(_without_option(argv, "--jobs", 1), "--suite", None)
    logs = REPO / "runs" / "claims" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    children = []
    for index, group in enumerate(groups):
        out_path, err_path = logs / f"job{index}.log", logs / f"job{index}.err.log"
        print(f"job {index}: {' '.join(group)} (progress in {err_path})", flush=True)
        command = [sys.executable, str(Path(__file__).resolve()), *base, "--suite", *group]
        with out_path.open("w", encoding="utf-8") as out, err_path.open("w", encoding="utf-8") as err:
            children.append((subprocess.Popen(command, stdout=out, stderr=err), out_path))
    status = 0
    for process, out_path in children:
        status = max(status, process.wait())
        print(out_path.read_text(encoding="utf-8"), end="", flush=True)
    return status


def _without_option(argv: list[str], option: str, values: int | None) -> list[str]:
    """``argv`` without ``option`` and its values (``values`` of them, or all up to the next option when `None`)."""
    result, index = [], 0
    while index < len(argv):
        if argv[index] == option or argv[index].startswith(option + "="):
            index += 1
            if "=" not in argv[index - 1]:
                while index < len(argv) and not argv[index].startswith("--") and (values is None or values > 0):
                    index += 1
                    if values is not None:
                        values -= 1
            continue
        result.append(argv[index])
        index += 1
    return result


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.jobs < 1:
        raise SystemExit(f"--jobs must be >= 1, got {args.jobs}.")
    if args.jobs > 1 and not args.report_only:
        return run_jobs(args, argv)
    import torch

    from hf_mltm.experiments.runner import default_data_root, main_command, reproduce

    if args.num_threads < 1:
        raise SystemExit(f"--num_threads must be >= 1, got {args.num_threads}.")
    torch.set_num_threads(args.num_threads)
    images_dir = args.images_dir or str(REPO / ("runs/claims/quick_images" if args.quick else "docs/images"))
    try:
        reproduce(args.suite, config_dir=args.config_dir, data_root=args.data_root or default_data_root(REPO),
                  cache_dir=args.cache_dir, results_dir=args.results_dir, images_dir=images_dir,
                  artifacts_dir=args.artifacts_dir, quick=args.quick, report_only=args.report_only, seeds=args.seeds,
                  command=main_command(), progress=args.progress, runs_dir=None if args.fresh else args.runs_dir)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
