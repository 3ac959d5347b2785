"""Publish a saved hf_mltm model to the Hugging Face Hub as a self-contained repo (thin CLI over `hf_mltm.hub`).

Usage::

    # upload runs/demo (model, processor, model card) to user/name, and the Gradio Space folder
    python scripts/push_to_hub.py --model runs/demo --repo_id user/name [--private] [--space_dir space/] \\
        [--space_id user/name-demo] [--token hf_...]

    # offline: only export the self-contained folder and check it (no token needed)
    python scripts/push_to_hub.py --model runs/demo --export_dir runs/demo_hub

Before anything is exported, the Hub access is checked (no token or HF_HUB_OFFLINE=1 fail here). The folder is
exported to a temporary directory with its hf_mltm code vendored, loaded in a fresh process in which `import
hf_mltm` fails and compared with the in-package model; only that exact folder is uploaded. Details: docs/hub.md.
"""

from __future__ import annotations

import argparse
import sys

from hf_mltm.hub import ExportCheckError, HubAccessError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="folder saved with save_pretrained (model and processor)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--repo_id", help="the Hub model repo, <user or org>/<name>")
    target.add_argument("--export_dir", help="export and check into this new folder instead of uploading")
    parser.add_argument("--private", action="store_true", help="create the repos private")
    parser.add_argument("--space_dir", help="a Gradio Space folder (app.py, README.md) to upload as well")
    parser.add_argument("--space_id", help="the Space repo (default: --repo_id, in the Spaces namespace)")
    parser.add_argument("--token", help="a Hub token (default: HF_TOKEN or the saved `hf auth login`)")
    args = parser.parse_args(argv)
    if args.export_dir and (args.space_dir or args.space_id or args.private or args.token):
        parser.error("--export_dir only exports; --space_dir, --space_id, --private and --token need --repo_id")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.export_dir:
            from hf_mltm.hub import export_saved_model

            folder = export_saved_model(args.model, args.export_dir)
            print(f"exported and checked without hf_mltm: {folder}")
            return 0
        from hf_mltm.hub import publish_model

        result = publish_model(args.model, args.repo_id, private=args.private, token=args.token,
                               space_dir=args.space_dir, space_id=args.space_id)
    except (ValueError, HubAccessError, ExportCheckError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"pushed {len(result.files)} files to {result.repo_id}: {result.commit_url}")
    if result.space_id:
        print(f"pushed the Space to {result.space_id}: {result.space_commit_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
