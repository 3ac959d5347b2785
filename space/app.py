"""hf_mltm Space: optimal-transport audio-text search, zero-shot labels, a transport-plan explorer and OMIT image-text
matching, in four tabs.

Run locally with ``make space`` (``.venv/bin/python space/app.py``); settings are environment variables, listed in
`hf_mltm.space.loading` and ``docs/space.md``. This file only lays out the Gradio components and connects each event
to one method of `hf_mltm.space.SpaceService`, where the behaviour lives (and is tested).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

# Running as `python space/app.py` from a checkout: make the package importable without installing it.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_mltm.space import PARTIAL_MATCHING_RULES, SpaceInputError, SpaceService  # noqa: E402
from hf_mltm.space.limits import AUDIO_SUFFIXES  # noqa: E402
from hf_mltm.space.service import EXPLORER_COLUMNS, LABEL_COLUMNS, SCORE_COLUMNS, SEARCH_COLUMNS  # noqa: E402

LOGGER = logging.getLogger("hf_mltm.space")
TITLE = "hf_mltm: optimal-transport cross-modal retrieval"


@dataclass
class Examples:
    """Example inputs of each tab (file paths must lie under the launch's ``allowed_paths``)."""

    queries: list[str] = field(default_factory=lambda: ["a dog barking", "rain falling on a roof",
                                                        "a rooster crowing at dawn", "church bells ringing"])
    clips: list[list[Any]] = field(default_factory=list)  # [path, labels, template]
    plans: list[list[Any]] = field(default_factory=list)  # [clip names, captions]
    images: list[list[Any]] = field(default_factory=list)  # [path, captions]


def friendly(function: Callable[..., Any]) -> Callable[..., Any]:
    """Show an input problem as a Gradio error message; log anything unexpected and show a short message instead of
    a traceback."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        try:
            return function(*args)
        except SpaceInputError as error:
            raise gr.Error(str(error), print_exception=False) from None
        except ValueError as error:
            raise gr.Error(f"This input cannot be used: {error}", print_exception=False) from None
        except Exception as error:  # noqa: BLE001  (anything else is a bug: log it, keep the page usable)
            LOGGER.exception("unexpected error in %s", function.__name__)
            raise gr.Error(f"Something went wrong on the server ({type(error).__name__}); try another input.",
                           print_exception=False) from None

    return wrapper


def build_demo(service: SpaceService, examples: Examples | None = None) -> gr.Blocks:
    """The Gradio app of a `SpaceService`: four tabs, one endpoint per action.

    API endpoints (``gradio_client``): ``/search``, ``/add_clips``, ``/classify``, ``/explore``, ``/image_text``.
    With a gallery index (``service.index``) tab 1 searches the index and has no upload box (no ``/add_clips``).
    """
    examples = examples or Examples()
    settings = service.gallery.settings
    with gr.Blocks(title=TITLE) as demo:
        gr.Markdown(f"# {TITLE}\nAudio-text model: {service.model_description or 'given in code'} "
                    f"({service.searched_description}).")
        user_clips = gr.State(None)

        with gr.Tab("Text → audio search", id="search"):
            with gr.Row():
                query = gr.Textbox(label="What do you want to hear?", placeholder="a dog barking", scale=4,
                                   elem_id="query")
                mode = gr.Radio(service.search_modes, value="distance", label="ranking", scale=2, elem_id="mode")
                top_k = gr.Slider(1, 20, value=10, step=1, label="results", scale=1)
            search_button = gr.Button("Search", variant="primary", elem_id="search-button")
            search_status = gr.Markdown(elem_id="search-status")
            results = gr.Dataframe(headers=SEARCH_COLUMNS, label="ranked clips", interactive=False,
                                   elem_id="search-results")
            with gr.Row():
                players = [gr.Audio(type="filepath", interactive=False, label=f"hit {i + 1}")
                           for i in range(service.players)]
            if service.index is None:  # a saved index is fixed: visitors' clips cannot join it
                with gr.Accordion("Add your own clips to the gallery (this visit only)", open=False):
                    uploads = gr.File(file_count="multiple", file_types=list(AUDIO_SUFFIXES), label="audio files")
                    add_button = gr.Button("Add to gallery")
                    add_status = gr.Markdown(elem_id="add-status")
            gr.Examples(examples=[[text] for text in examples.queries], inputs=[query], label="example queries")

            def search(text: str, ranking: str, count: float, user: Any) -> list[Any]:
                status, rows, hits = service.search(text, ranking, count, user)
                audio = [gr.Audio(value=hit[0], label=hit[1]) if hit else gr.Audio(value=None, label="-")
                         for hit in hits]
                return [status, pd.DataFrame(rows, columns=SEARCH_COLUMNS), *audio]

            search_outputs = [search_status, results, *players]
            search_button.click(friendly(search), [query, mode, top_k, user_clips], search_outputs, api_name="search")
            query.submit(friendly(search), [query, mode, top_k, user_clips], search_outputs,
                         api_visibility="private")
            if service.index is None:
                add_button.click(friendly(service.add_uploads), [uploads, user_clips], [add_status, user_clips],
                                 api_name="add_clips")

        with gr.Tab("Audio → labels", id="labels"):
            with gr.Row():
                with gr.Column():
                    clip = gr.Audio(sources=["upload", "microphone"], type="filepath", label="clip",
                                    elem_id="clip")
                    labels = gr.Textbox(label="labels or captions (one per line)", lines=6, elem_id="labels",
                                        value="dog\nrooster\nrain\nchurch bells\ncrying baby")
                    template = gr.Textbox(label="prompt template", value="the sound of {label}",
                                          elem_id="template")
                    label_button = gr.Button("Rank labels", variant="primary", elem_id="label-button")
                with gr.Column():
                    label_status = gr.Markdown(elem_id="label-status")
                    top_labels = gr.Label(num_top_classes=5, label="best labels", elem_id="top-labels")
                    bars = gr.BarPlot(x="label", y="probability", label="probability per label",
                                      sort="-y", y_lim=[0, 1], elem_id="bars")
            if examples.clips:
                gr.Examples(examples=examples.clips, inputs=[clip, labels, template], label="example clips")

            def classify(audio: Any, names: str, prompt: str) -> list[Any]:
                status, confidences, rows = service.classify(audio, names, prompt)
                return [status, confidences, pd.DataFrame(rows, columns=LABEL_COLUMNS)]

            label_button.click(friendly(classify), [clip, labels, template], [label_status, top_labels, bars],
                               api_name="classify")

        with gr.Tab("Transport-plan explorer", id="plan"):
            gr.Markdown("Pick clips and type captions: the heatmap is the entropic OT plan between them (uniform "
                        "capacities). Lower *epsilon* gives a sharper plan; a *mass* below 1 transports only that "
                        "much, and the clips and captions matched worst are left out (hatched row and column).")
            with gr.Row():
                with gr.Column():
                    most = service.limits.max_plan_clips
                    plan_clips = gr.Dropdown(service.gallery.display_names, multiselect=True, max_choices=most,
                                             label=f"clips (2 to {most})", elem_id="plan-clips")
                    plan_captions = gr.Textbox(label="captions (one per line)", lines=5, elem_id="plan-captions")
                    epsilon = gr.Slider(0.01, 1.0, value=float(settings["epsilon"]), step=0.01, label="epsilon",
                                        elem_id="epsilon")
                    mass = gr.Slider(0.1, 1.0, value=1.0, step=0.05, label="transported mass", elem_id="mass")
                    plan_button = gr.Button("Show plan", variant="primary", elem_id="plan-button")
                with gr.Column():
                    plan_status = gr.Markdown(elem_id="plan-status")
                    heatmap = gr.Image(type="pil", label="transport plan", interactive=False, elem_id="heatmap")
                    plan_table = gr.Dataframe(headers=EXPLORER_COLUMNS, label="mass per clip and caption",
                                              interactive=False, elem_id="plan-table")
            if examples.plans:
                gr.Examples(examples=examples.plans, inputs=[plan_clips, plan_captions], label="examples")

            def explore(names: Sequence[str], captions: str, eps: float, share: float) -> list[Any]:
                status, picture, rows = service.explore(names, captions, eps, share)
                return [status, picture, pd.DataFrame(rows, columns=EXPLORER_COLUMNS)]

            plan_inputs, plan_outputs = [plan_clips, plan_captions, epsilon, mass], [plan_status, heatmap, plan_table]
            plan_button.click(friendly(explore), plan_inputs, plan_outputs, api_name="explore")
            for slider in (epsilon, mass):
                slider.release(friendly(explore), plan_inputs, plan_outputs, api_visibility="private")

        with gr.Tab("Image ↔ text (OMIT)", id="omit"):
            explorer = service.explorer
            gr.Markdown(f"OMIT model: {explorer.description if explorer else 'none loaded'}."
                        + (" **Its projection heads are untrained: scores and overlays show how the fragment plan "
                           "works, not learned matches.**" if explorer is not None and explorer.untrained else ""))
            with gr.Row():
                with gr.Column():
                    picture = gr.Image(type="filepath", label="picture", elem_id="picture")
                    image_captions = gr.Textbox(label="captions (one per line)", lines=4, elem_id="image-captions")
                    with gr.Row():
                        caption_number = gr.Number(value=1, precision=0, minimum=1, label="caption # to show",
                                                   elem_id="caption-number")
                        rule = gr.Radio(list(PARTIAL_MATCHING_RULES), value="none", label="partial matching",
                                        elem_id="rule")
                    image_button = gr.Button("Score captions", variant="primary", elem_id="image-button")
                with gr.Column():
                    image_status = gr.Markdown(elem_id="image-status")
                    scores = gr.Dataframe(headers=SCORE_COLUMNS, label="caption scores", interactive=False,
                                          elem_id="caption-scores")
                    overlays = gr.Gallery(label="where each word's mass lands", columns=4, height="auto",
                                          elem_id="overlays")
            if examples.images:
                gr.Examples(examples=examples.images, inputs=[picture, image_captions], label="examples")

            def image_text(image: Any, captions: str, number: float, matching: str) -> list[Any]:
                status, rows, pictures = service.image_text(image, captions, number, matching)
                return [status, pd.DataFrame(rows, columns=SCORE_COLUMNS), pictures]

            image_button.click(friendly(image_text), [picture, image_captions, caption_number, rule],
                               [image_status, scores, overlays], api_name="image_text")
    return demo


def default_examples(service: SpaceService, data: Path | None) -> Examples:
    """Example inputs drawn from the gallery and the data folder (a drawn picture when there are no photographs)."""
    from hf_mltm.space.loading import example_images

    examples = Examples()
    by_label: dict[str, Any] = {}
    for clip in service.gallery.clips:
        by_label.setdefault(clip.label, clip)
    wanted = [label for label in ("dog", "rooster", "rain", "church bells", "cat", "cow") if label in by_label]
    chosen = (wanted or list(by_label))[:3]
    labels = "\n".join(dict.fromkeys(chosen + [label for label in list(by_label)[:5] if label not in chosen]))
    examples.clips = [[by_label[label].audio, labels, "the sound of {label}"] for label in chosen]
    if len(chosen) >= 2:
        examples.plans = [[[by_label[label].display_name for label in chosen],
                           "\n".join(f"the sound of {label}" for label in chosen)]]
    images = example_images(data)
    if not images:
        images = [(_drawn_picture(), ["a red ball on green grass under a blue sky", "a cat sleeping on a sofa"])]
    examples.images = [[path, "\n".join(captions[:4])] for path, captions in images]
    return examples


def _drawn_picture() -> str:
    """A simple drawn picture (sky, grass, a red ball) saved to a temporary PNG: the tab-4 example when no photographs
    are available."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (320, 240), (120, 170, 235))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 150, 320, 240), fill=(60, 150, 60))
    draw.ellipse((130, 110, 190, 170), fill=(210, 30, 30))
    path = Path(tempfile.mkdtemp(prefix="hf_mltm_space_")) / "ball_on_grass.png"
    image.save(path)
    return str(path)


def build_service() -> tuple[SpaceService, Path | None, list[str]]:
    """The service from the settings (see `hf_mltm.space.loading`), the data folder and the paths the app may serve."""
    from hf_mltm.space import AudioGallery
    from hf_mltm.space.gallery_index import load_index_setting
    from hf_mltm.space.loading import (
        data_dir,
        default_gallery_clips,
        ensure_demo_model,
        feature_cache_dir,
        load_audio_text_model,
        load_fragment_explorer,
        on_a_space,
        resolve_audio_model,
        resolve_omit_model,
    )

    source = resolve_audio_model()
    if not os.environ.get("HF_MLTM_SPACE_MODEL") and not on_a_space():
        ensure_demo_model(Path(source.location))
    model, processor = load_audio_text_model(source.location)
    # HF_MLTM_SPACE_INDEX: checked against the model before the gallery is encoded, so a mismatch fails fast.
    index = load_index_setting(model, processor, model_location=str(source.location))
    data = data_dir()
    clips = default_gallery_clips(data)
    print(f"hf_mltm Space: encoding a gallery of {len(clips)} clips (cached after the first start)...", flush=True)
    gallery = AudioGallery(model, processor, clips, cache_dir=feature_cache_dir(), progress=True)
    explorer = load_fragment_explorer(resolve_omit_model())
    roots = {str(Path(clip.audio).parent) for clip in clips}
    if data is not None:
        roots.add(str(data))
    if index is not None:
        roots.update(index.audio_roots())
    service = SpaceService(gallery, explorer, model_description=source.description, index=index)
    return service, data, sorted(roots)


def main() -> None:
    """Start the Space (``make space``): ``127.0.0.1`` locally, all interfaces on a Hugging Face Space."""
    import torch

    from hf_mltm.space.loading import on_a_space

    logging.basicConfig(level=logging.INFO)
    service, data, roots = build_service()
    demo = build_demo(service, default_examples(service, data))
    # One thread per request: two requests at once fill the 2 cores, and a query of a few tokens gains nothing from
    # a second thread (benchmarks/space_query.py).
    torch.set_num_threads(int(os.environ.get("HF_MLTM_SPACE_THREADS", "1")))
    port = int(os.environ.get("GRADIO_SERVER_PORT", "7860"))
    demo.queue(default_concurrency_limit=2).launch(
        server_name="0.0.0.0" if on_a_space() else "127.0.0.1", server_port=port, allowed_paths=roots)


if __name__ == "__main__":
    main()
