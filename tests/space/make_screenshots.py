"""Make the screenshots of ``docs/space.md``: start the real Space (the settings of ``make space``: the ``make demo``
model, the ESC-50 gallery, the default OMIT model), use every tab in headless Chromium and save one PNG per tab.

Usage (from the repository root, after ``make demo``)::

    HF_MLTM_DATA=../shared/data .venv/bin/python -m tests.space.make_screenshots --output_dir docs/images
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tests.space.browser import browser_page, drive_space
from tests.space.conftest import free_port, load_app_module


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("docs/images"), help="where the PNGs go")
    args = parser.parse_args(argv)
    app = load_app_module()
    service, data, roots = app.build_service()
    if data is None:
        parser.error("the screenshots show the ESC-50 gallery and a Flickr8k photo: set HF_MLTM_DATA")
    demo = app.build_demo(service, app.default_examples(service, data))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                        allowed_paths=roots)
    by_label = {}
    for clip in service.gallery.clips:
        by_label.setdefault(clip.label, clip)
    from hf_mltm.space.loading import example_images

    photo, human = example_images(data, 2)[1]  # a test-split photo, never seen in training
    try:
        with browser_page(1280, 900) as page:
            seen = drive_space(
                page, f"http://127.0.0.1:{port}/", mode="ot", query="a rooster crowing at dawn",
                clip=by_label["crying baby"].audio,
                labels="crying baby\ndog\nrooster\nrain\nclock tick\nsneezing\nchurch bells",
                plan_clips=[by_label[label].display_name for label in ("dog", "rooster", "rain", "church bells")],
                plan_captions="a dog barking\na rooster crowing\nheavy rain\na helicopter", plan_mass=0.75,
                picture=photo, captions="\n".join([human[0], "A woman hails a taxi on the street ."]), rule="mass",
                screenshots=args.output_dir)
    finally:
        demo.close()
    for path in seen.screenshots:
        print(path)


if __name__ == "__main__":
    main()
