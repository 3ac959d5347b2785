"""Driving the Space in a real headless Chromium (Debian ``chromium`` through the Python ``playwright`` package):
shared by the browser test and by the script that makes the screenshots of ``docs/space.md``.

``playwright install`` cannot download its own browser on these machines, so the system browser at
`CHROMIUM` is launched with the flags that work here (``PLATFORM.md``) and a fresh profile folder.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 60_000


@contextlib.contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[object]:
    """A page of a headless Chromium with a fresh profile (playwright passes the profile as ``--user-data-dir``)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="hf_mltm_chromium_") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile, executable_path=str(CHROMIUM), args=FLAGS, headless=True,
            viewport={"width": width, "height": height})
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context.pages[0] if context.pages else context.new_page()
        finally:
            context.close()


@dataclass
class SpaceSession:
    """What the browser read from each tab."""

    search_status: str = ""
    search_rows: list[list[str]] = field(default_factory=list)
    label_status: str = ""
    top_labels: str = ""
    plan_status: str = ""
    plan_rows: list[list[str]] = field(default_factory=list)
    image_status: str = ""
    overlays: int = 0
    screenshots: list[Path] = field(default_factory=list)


def _table(page, selector: str) -> list[list[str]]:
    """The body rows of a Gradio dataframe (a virtualised grid of ``role=row`` / ``role=gridcell`` elements; the
    rows are all rendered while they fit its 500 px height)."""
    rows = page.locator(f"{selector} [role=row].virtual-row")
    return [[cell.strip() for cell in rows.nth(i).get_by_role("gridcell").all_inner_texts()]
            for i in range(rows.count())]


def _open_tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()


def _shot(page, folder: Path | None, name: str, session: SpaceSession) -> None:
    if folder is not None:
        path = folder / name
        page.screenshot(path=str(path), full_page=True)
        session.screenshots.append(path)


def drive_space(page, url: str, *, query: str, clip: str, labels: str, plan_clips: list[str], plan_captions: str,
                picture: str, captions: str, screenshots: Path | None = None, mode: str = "distance",
                plan_mass: float | None = None, rule: str | None = None) -> SpaceSession:
    """Use each tab of the Space at ``url`` as a person would, and read what it shows.

    Args:
        page: a playwright page (`browser_page`).
        query: typed into the search box; ``mode`` picks the ranking.
        clip: an audio file uploaded in the labels tab, ranked against ``labels`` (one per line).
        plan_clips: display names of the gallery clips picked in the plan explorer (typed into its dropdown), with
            ``plan_captions`` (one per line); ``plan_mass`` is typed into the mass slider's box when given.
        picture, captions: the photo and captions of the image-text tab; ``rule`` picks its partial-matching rule.
        screenshots: where to save one full-page PNG per tab (``space_search.png``, ``space_labels.png``,
            ``space_plan.png``, ``space_omit.png``); `None` saves none.
    """
    session = SpaceSession()
    if screenshots is not None:
        screenshots.mkdir(parents=True, exist_ok=True)
    page.goto(url)

    # Tab 1: text -> audio
    page.locator("#query").get_by_role("textbox").fill(query)
    if mode != "distance":
        page.locator("#mode").get_by_text("transductive OT re-ranking").click()
    page.locator("#search-button").click()
    page.locator("#search-status").get_by_text("Top ").wait_for()
    page.locator("#search-results [role=row].virtual-row").first.wait_for()
    session.search_status = page.locator("#search-status").inner_text().strip()
    session.search_rows = _table(page, "#search-results")
    _shot(page, screenshots, "space_search.png", session)

    # Tab 2: audio -> labels
    _open_tab(page, "Audio → labels")
    page.locator("#clip input[type=file]").set_input_files(clip)
    page.locator("#clip audio, #clip .waveform-container, #clip [data-testid=waveform-Audio]").first.wait_for(
        state="attached")
    page.locator("#labels").get_by_role("textbox").fill(labels)
    page.locator("#label-button").click()
    page.locator("#label-status").get_by_text("best label").wait_for()
    page.locator("#bars .vega-embed svg").first.wait_for()
    page.wait_for_timeout(1000)  # the bar chart draws after its data arrives
    session.label_status = page.locator("#label-status").inner_text().strip()
    session.top_labels = page.locator("#top-labels").inner_text().strip()
    _shot(page, screenshots, "space_labels.png", session)

    # Tab 3: transport-plan explorer
    _open_tab(page, "Transport-plan explorer")
    dropdown = page.locator("#plan-clips").get_by_role("combobox")
    for name in plan_clips:
        dropdown.click()
        dropdown.fill(name)
        page.get_by_role("option", name=name, exact=True).click()
    page.locator("#plan-captions").get_by_role("textbox").fill(plan_captions)
    if plan_mass is not None:
        page.locator("#mass input[type=number]").fill(str(plan_mass))
    page.locator("#plan-button").click()
    page.locator("#plan-status").get_by_text("Plan between").wait_for()
    page.locator("#heatmap img").first.wait_for()
    page.locator("#plan-table [role=row].virtual-row").first.wait_for()
    session.plan_status = page.locator("#plan-status").inner_text().strip()
    session.plan_rows = _table(page, "#plan-table")
    _shot(page, screenshots, "space_plan.png", session)

    # Tab 4: image-text (OMIT)
    _open_tab(page, "Image ↔ text (OMIT)")
    page.locator("#picture input[type=file]").set_input_files(picture)
    page.locator("#picture img").first.wait_for()
    page.locator("#image-captions").get_by_role("textbox").fill(captions)
    if rule is not None:
        page.locator("#rule").get_by_text(rule, exact=True).click()
    page.locator("#image-button").click()
    page.locator("#image-status").get_by_text("Best caption").wait_for()
    page.locator("#overlays img").first.wait_for()
    session.image_status = page.locator("#image-status").inner_text().strip()
    session.overlays = page.locator("#overlays img").count()
    _shot(page, screenshots, "space_omit.png", session)
    return session
