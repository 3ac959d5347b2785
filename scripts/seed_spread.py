"""Mean, standard deviation and range over seeds of ``scripts/evaluate.py`` reports (``metrics.json``).

Usage::

    python scripts/seed_spread.py runs/demo_seed0/eval_zero_shot runs/demo_seed1/eval_zero_shot runs/demo_seed2/eval_zero_shot

Each argument is a report folder (or its ``metrics.json``); all must come from the same evaluation. Prints one
markdown table (``hf_mltm.evaluation.spread_table``). ``make demo-seeds`` runs it on the demo's seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("reports", nargs="+", help="report folders of scripts/evaluate.py (or their metrics.json)")
    parser.add_argument("--metrics", nargs="+", default=["R@1", "R@5", "R@10"], help="metric columns")
    parser.add_argument("--digits", type=int, default=2)
    args = parser.parse_args(argv)

    from hf_mltm.evaluation import spread_table

    results = []
    for report in args.reports:
        path = Path(report)
        path = path / "metrics.json" if path.is_dir() else path
        if not path.is_file():
            parser.error(f"{report}: no metrics.json there; give folders written by scripts/evaluate.py --output_dir.")
        results.append(json.loads(path.read_text(encoding="utf-8")))
    try:
        table = spread_table(results, metrics=args.metrics, digits=args.digits)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"mean ± std (min-max) over {len(results)} runs: {', '.join(args.reports)}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
