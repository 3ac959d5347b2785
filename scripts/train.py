"""Train a hf_mltm model from a YAML config (thin CLI over `hf_mltm.training.train`).

Usage::

    accelerate launch scripts/train.py --config configs/demo.yaml [--training.num_epochs 2 ...]
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 scripts/train.py --config ...

Any ``--section.key value`` (or ``--section.key=value``) overrides the file; values are YAML (``1.0e-4``,
``[1, 2]``, ``null``, ``true``).
"""

from __future__ import annotations

import argparse
import os
import sys

from hf_mltm.training import load_config, train
from hf_mltm.training.hub import ExportCheckError, HubAccessError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML experiment file (configs/*.yaml)")
    args, overrides = parser.parse_known_args(argv)
    try:
        config = load_config(args.config, overrides)
        result = train(config)
    except (ValueError, HubAccessError, ExportCheckError) as error:  # the last: the pushed folder's check
        print(f"error: {error}", file=sys.stderr)
        return 2
    if int(os.environ.get("RANK", "0")) != 0:  # one summary line per run, not per process
        return 0
    print(f"done: {result.global_step} steps in {result.train_seconds:.1f} s; model saved to {result.output_dir}"
          + (f" (best epoch {result.best_epoch})" if result.best_epoch else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
