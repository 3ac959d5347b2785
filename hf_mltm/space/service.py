"""What each control of the Space does, as plain functions of plain values: `SpaceService`.

`space/app.py` only lays out the Gradio components and connects each event to one method here. Every method
returns exactly what the UI shows (a status line in Markdown, table rows, pictures, file paths), and raises
`SpaceInputError` with a message for the user when an input is unusable; the app turns that into a Gradio error
pop-up (never a traceback). This keeps everything the UI shows testable without a browser.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from .audio_text import AudioGallery, UserClips, classify_clip
from .gallery_index import INDEX_RANKING_LABELS, IndexedGallery, IndexHit
from .image_text import PARTIAL_MATCHING_RULES, FragmentExplorer
from .limits import DEFAULT_LIMITS, InputLimits, SpaceInputError, parse_lines, prepare_audio, prepare_image
from .plots import grid_overlay, plan_heatmap

__all__ = [
    "EXPLORER_COLUMNS",
    "INDEX_SEARCH_MODES",
    "LABEL_COLUMNS",
    "SCORE_COLUMNS",
    "SEARCH_COLUMNS",
    "SEARCH_MODES",
    "SpaceService",
]

SEARCH_COLUMNS = ["rank", "clip", "label", "source", "cost", "ranking score"]
LABEL_COLUMNS = ["label", "probability", "cost", "prompt"]
EXPLORER_COLUMNS = ["side", "name", "transported (%)", "left out (%)"]
SCORE_COLUMNS = ["#", "OT score", "caption"]
RANKING_LABELS = {"distance": "distance (cost)", "ot": "transductive OT re-ranking"}
# The ranking radio of tab 1: (label shown, value), without and with a gallery index.
SEARCH_MODES = [("distance", "distance"), ("transductive OT re-ranking", "ot")]
INDEX_SEARCH_MODES = [("distance", "distance"), ("OT re-ranking (gallery potentials)", "ot")]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def _round(value: float, digits: int = 4) -> float:
    return float(round(float(value), digits))


@dataclass
class SpaceService:
    """The Space's behaviour behind its controls.

    Args:
        gallery (`AudioGallery`): the clip gallery (and through it the audio-text model and processor).
        explorer (`FragmentExplorer`, *optional*): the OMIT model of tab 4; `None` hides nothing but answers with a
            message.
        limits (`InputLimits`): the input limits.
        model_description (`str`): where the audio-text model comes from (shown in the UI).
        players (`int`, defaults to 5): how many of the top hits get an audio player.
        index (`IndexedGallery`, *optional*): a saved gallery index (``HF_MLTM_SPACE_INDEX``); when given, text
            search (tab 1) runs on it instead of on ``gallery``, and visitors cannot add clips. ``gallery`` still
            serves the plan explorer (tab 3) and the examples.
    """

    gallery: AudioGallery
    explorer: FragmentExplorer | None = None
    limits: InputLimits = field(default_factory=lambda: DEFAULT_LIMITS)
    model_description: str = ""
    players: int = 5
    index: IndexedGallery | None = None

    @property
    def sampling_rate(self) -> int:
        """The sampling rate in Hz the audio tower expects."""
        return int(self.gallery.processor.feature_extractor.sampling_rate)

    # -- tab 1: text -> audio ---------------------------------------------------------------------------------------

    @property
    def search_modes(self) -> list[tuple[str, str]]:
        """The choices of the ranking control, ``(label, mode)``: distance and transductive OT over the in-memory
        gallery; with an index, distance and OT re-ranking by its potentials (distance only when it has none)."""
        if self.index is None:
            return list(SEARCH_MODES)
        return [choice for choice in INDEX_SEARCH_MODES if choice[1] in self.index.modes]

    @property
    def searched_description(self) -> str:
        """What tab 1 searches, for the page header."""
        if self.index is None:
            return f"gallery of {len(self.gallery)} clips"
        where = f" `{self.index.folder}`" if self.index.folder else ""
        return (f"text search over the saved index{where} of {len(self.index)} clips; plan explorer over a gallery "
                f"of {len(self.gallery)} clips")

    def add_uploads(self, files: Any, user: UserClips | None) -> tuple[str, UserClips]:
        """Add uploaded clips to this visitor's gallery.

        Args:
            files: a list of file paths (or file dicts), or one path.
            user (`UserClips`, *optional*): the visitor's clips so far.

        Returns:
            `(status, user)`: a Markdown status line (with trimming notices) and the visitor's clips.
        """
        if self.index is not None:
            raise SpaceInputError("This Space searches a saved gallery index; clips cannot be added to it.")
        if files is None or (isinstance(files, (list, tuple)) and not files):
            raise SpaceInputError("No clip to add: upload one or more audio files first.")
        files = files if isinstance(files, (list, tuple)) else [files]
        prepared = [prepare_audio(file, self.sampling_rate, limits=self.limits) for file in files]
        user = self.gallery.add_clips(user, prepared, limits=self.limits)
        notices = [clip.notice for clip in prepared if clip.notice]
        status = (f"Added {_count(len(prepared), 'clip')}: the gallery now has "
                  f"{_count(len(self.gallery) + len(user), 'clip')} ({len(user)} yours, for this visit only).")
        return " ".join([status, *notices]), user

    def search(self, query: Any, mode: str, top_k: Any, user: UserClips | None = None
               ) -> tuple[str, list[list[Any]], list[tuple[str, str] | None]]:
        """Rank the gallery for a text query.

        Returns:
            `(status, rows, players)`: a Markdown status line; table rows under `SEARCH_COLUMNS` (1-based rank,
            display name, label, source, cost and ranking score rounded to 4 digits); and for the first
            ``self.players`` hits ``(audio path, caption)`` pairs, padded with `None`.

            With an index (``self.index``), the rows are `IndexedGallery.search`'s hits (``index.search``): the
            source column holds the item's audio path (``"index row <row>"`` when it names none), and a hit whose
            audio file is not on this machine gets `None` instead of a player.
        """
        try:
            top_k = int(top_k)
        except (TypeError, ValueError) as error:
            raise SpaceInputError(f"The number of results must be a whole number, got {top_k!r}.") from error
        if self.index is not None:
            return self._search_index(query, mode, top_k)
        hits = self.gallery.search(query, mode=mode, top_k=top_k, user=user, limits=self.limits)
        rows = [[hit.rank, hit.clip.display_name, hit.clip.label, hit.clip.source, _round(hit.cost),
                 _round(hit.score)] for hit in hits]
        players: list[tuple[str, str] | None] = [
            (hit.clip.audio, f"{hit.rank}. {hit.clip.display_name}") for hit in hits[: self.players]]
        players += [None] * (self.players - len(players))
        total = len(self.gallery) + (len(user) if user is not None else 0)
        status = (f"Top {len(hits)} of {total} clips for “{' '.join(str(query).split())}”, ranked by "
                  f"{RANKING_LABELS[mode]}.")
        return status, rows, players

    def _search_index(self, query: Any, mode: str, top_k: int
                      ) -> tuple[str, list[list[Any]], list[tuple[str, str] | None]]:
        hits: list[IndexHit] = self.index.search(query, mode=mode, top_k=top_k, limits=self.limits)
        rows = [[hit.rank, hit.display_name, hit.label, hit.location or f"index row {hit.row}", _round(hit.cost),
                 _round(hit.score)] for hit in hits]
        players: list[tuple[str, str] | None] = [
            (hit.audio, f"{hit.rank}. {hit.display_name}") if hit.audio is not None else None
            for hit in hits[: self.players]]
        players += [None] * (self.players - len(players))
        status = (f"Top {len(hits)} of {len(self.index)} indexed clips for “{' '.join(str(query).split())}”, ranked "
                  f"by {INDEX_RANKING_LABELS[mode]}.")
        missing = sum(hit.audio is None for hit in hits)
        if missing:
            status += (f" {_count(missing, 'hit')} {'has' if missing == 1 else 'have'} no audio file on this "
                       "machine: shown by id and path only.")
        return status, rows, players

    # -- tab 2: audio -> labels ------------------------------------------------------------------------------------

    def classify(self, audio: Any, labels: Any, template: Any) -> tuple[str, dict[str, float], list[list[Any]]]:
        """Zero-shot labels for one clip.

        Returns:
            `(status, confidences, rows)`: a Markdown status line (with a trimming notice); ``{label: probability}``
            for a label component; table rows under `LABEL_COLUMNS`, most probable first (the bar chart's data).
        """
        clip = prepare_audio(audio, self.sampling_rate, limits=self.limits)
        names = parse_lines(labels, "label", limits=self.limits)
        scores = classify_clip(self.gallery.model, self.gallery.processor, clip, names, template=template,
                               limits=self.limits)
        confidences = {score.label: _round(score.probability) for score in scores}
        rows = [[score.label, _round(score.probability), _round(score.cost), score.prompt] for score in scores]
        status = (f"{clip.name}: {clip.duration_s:.1f} s, best label **{scores[0].label}** "
                  f"({100 * scores[0].probability:.1f} %).")
        return " ".join(filter(None, [status, clip.notice])), confidences, rows

    # -- tab 3: transport-plan explorer ------------------------------------------------------------------------------

    def explore(self, clip_names: Sequence[str] | None, captions: Any, epsilon: Any, mass: Any
                ) -> tuple[str, Image.Image, list[list[Any]]]:
        """The entropic OT plan between the chosen gallery clips and captions.

        Returns:
            `(status, heatmap, rows)`: a Markdown status line, the heatmap picture, and per clip then per caption a
            row under `EXPLORER_COLUMNS` (share of its capacity transported and left out, in percent, 1 digit).
        """
        texts = parse_lines(captions, "caption", limits=self.limits)
        if len(clip_names or []) > self.limits.max_plan_clips:
            raise SpaceInputError(f"{len(clip_names)} clips picked; at most {self.limits.max_plan_clips} are "
                                  "allowed.")
        try:
            epsilon, mass = float(epsilon), float(mass)
        except (TypeError, ValueError) as error:
            raise SpaceInputError(f"epsilon and mass must be numbers, got {epsilon!r} and {mass!r}.") from error
        names = list(dict.fromkeys(clip_names or []))
        view = self.gallery.plan_between(names, texts, epsilon=epsilon, mass=mass)
        rows_left, cols_left = view.left_fraction()
        rows = [["clip", name, _round(100 * (1 - left), 1), _round(100 * left, 1)]
                for name, left in zip(names, rows_left, strict=True)]
        rows += [["caption", text, _round(100 * (1 - left), 1), _round(100 * left, 1)]
                 for text, left in zip(texts, cols_left, strict=True)]
        title = f"entropic OT plan, epsilon = {epsilon:g}, mass = {mass:g}"
        heatmap = plan_heatmap(view.plan, names, texts, row_left=view.row_left, col_left=view.col_left, title=title)
        status = (f"Plan between {_count(len(names), 'clip')} and {_count(len(texts), 'caption')} (epsilon "
                  f"{epsilon:g}, mass {mass:g}).")
        if mass < 1:
            left_out = [row[1] for row in rows if row[3] >= 50]
            status += (" Left mostly untransported: " + "; ".join(left_out) + "." if left_out
                       else " No clip or caption keeps half of its capacity.")
        return status, heatmap, rows

    # -- tab 4: image-text (OMIT) -------------------------------------------------------------------------------------

    def image_text(self, image: Any, captions: Any, caption_number: Any, rule: str
                   ) -> tuple[str, list[list[Any]], list[tuple[Image.Image, str]]]:
        """Score captions against a picture and show where each word of one caption sends its mass.

        Args:
            image: the uploaded picture (path, file dict or PIL image).
            captions: captions, one per line.
            caption_number: 1-based number of the caption whose words are shown.
            rule (`str`): the partial-matching rule (`PARTIAL_MATCHING_RULES`).

        Returns:
            `(status, rows, overlays)`: a Markdown status line; rows under `SCORE_COLUMNS` in the order typed
            (number, OT score rounded to 4 digits, caption); per word of the chosen caption the picture with the word's mass on the
            fragment grid and a caption ``"<word>: <share> %"``.
        """
        if self.explorer is None:
            raise SpaceInputError("No image-text model is loaded; set HF_MLTM_SPACE_OMIT_MODEL.")
        picture = prepare_image(image, limits=self.limits)
        texts = parse_lines(captions, "caption", limits=self.limits)
        try:
            index = int(caption_number) - 1
        except (TypeError, ValueError) as error:
            raise SpaceInputError(f"The caption number must be a whole number, got {caption_number!r}.") from error
        if rule not in PARTIAL_MATCHING_RULES:
            raise SpaceInputError(f"Unknown partial-matching rule {rule!r}; pick one of "
                                  f"{', '.join(PARTIAL_MATCHING_RULES)}.")
        result = self.explorer.score(picture, texts, rule=rule)
        words = result.word_masses(index)
        rows = [[i + 1, _round(score), text] for i, (text, score) in enumerate(zip(texts, result.scores, strict=True))]
        overlays = [(grid_overlay(result.picture, word.grid), f"{word.word}: {100 * word.total:.0f} %")
                    for word in words]
        best = int(result.scores.argmax())
        h, w = result.grid_shape
        status = (f"Best caption: #{best + 1} (score {result.scores[best]:.3f}). Words of caption #{index + 1} on the "
                  f"{h} x {w} fragment grid, partial matching: {rule}.")
        if self.explorer.untrained:
            status += " **Untrained projection heads: the plans show the mechanism, not learned matches.**"
        return status, rows, overlays
