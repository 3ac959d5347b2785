"""Class names as text: the readable form of a label and the template captions built from it."""

from __future__ import annotations

__all__ = ["format_caption", "label_text"]


def label_text(label: str) -> str:
    """Human-readable class name: underscores become spaces (``"chirping_birds"`` -> ``"chirping birds"``).

    Example:

    ```python
    >>> from hf_mltm.data import label_text
    >>> label_text("door_wood_knock")
    'door wood knock'

    ```
    """
    return " ".join(str(label).replace("_", " ").split())


def format_caption(template: str, label: str, source: str) -> str:
    """``template.format(label=label)``, with a `ValueError` naming the template when it is not usable.

    Args:
        template (`str`): A caption with one ``{label}`` placeholder, e.g. ``"the sound of {label}"``.
        label (`str`): The class name to insert (already in `label_text` form).
        source (`str`): Where the label comes from (``"esc50.csv line 3"``), for the message.

    Returns:
        `str`: The caption.

    Raises:
        ValueError: ``template`` is not a string, or has another placeholder or unbalanced braces.
    """
    if not isinstance(template, str):
        raise ValueError(
            f"caption_template must be a string with a '{{label}}' placeholder, got {template!r}."
        )
    try:
        return template.format(label=label)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(
            f"caption_template {template!r} cannot be formatted for {source}: use a single '{{label}}' "
            f"placeholder ({error!r})."
        ) from error
