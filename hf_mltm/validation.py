"""Argument checks shared by the whole package: one choice among several, known keys, known keyword arguments.

Every check raises a `ValueError` that names the argument (or where a mapping came from), the rejected value and,
for strings, the closest valid one, so that a typo in Python or in a YAML config is fixed from the message alone:

```python
>>> from hf_mltm.validation import check_choice
>>> check_choice("loss_type", "mltmm", ("mltm", "mltm_partial", "contrastive"))
Traceback (most recent call last):
    ...
ValueError: loss_type='mltmm' is not supported; did you mean 'mltm'? Choose one of ['mltm', 'mltm_partial', 'contrastive'].

```
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

__all__ = [
    "check_bool",
    "check_captions",
    "check_choice",
    "check_known_keys",
    "closest_match",
    "keyword_names",
    "strict_keywords",
]

F = TypeVar("F", bound=Callable[..., Any])

# difflib's default ratio: 'mltmm' -> 'mltm' (0.89), 'exclude_esc1O' -> 'exclude_esc10' (0.92), 'Items' -> 'items' (0.8)
_CLOSE_MATCH_CUTOFF = 0.6


def closest_match(value: Any, candidates: Iterable[Any]) -> str | None:
    """The string of ``candidates`` closest to ``value`` (`difflib.get_close_matches`), or `None`.

    Args:
        value (`Any`): The rejected value; only a `str` can have a close match.
        candidates (`Iterable`): Valid values; non-strings are ignored.

    Returns:
        `str` or `None`: The best match with a similarity ratio of at least 0.6, else `None`.
    """
    if not isinstance(value, str):
        return None
    strings = [candidate for candidate in candidates if isinstance(candidate, str)]
    matches = difflib.get_close_matches(value, strings, n=1, cutoff=_CLOSE_MATCH_CUTOFF)
    if not matches:  # a case-only difference ('ITEMS') scores low on the raw strings
        lowered = {candidate.lower(): candidate for candidate in strings}
        matches = [lowered[m] for m in difflib.get_close_matches(value.lower(), list(lowered), n=1)]
    return matches[0] if matches else None


def _is_choice(value: Any, choice: Any) -> bool:
    # True == 1 in Python, but a flag is no valid spelling of an integer choice (nor 1 of True)
    if isinstance(value, bool) != isinstance(choice, bool):
        return False
    try:
        return bool(value == choice)
    except Exception:  # e.g. an array compared with a string
        return False


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise a `ValueError` unless ``value`` is one of ``choices``.

    The message names the argument, the value, the closest valid choice (strings only) and all choices:
    ``"view='item' is not supported; did you mean 'items'? Choose one of ['captions', 'items']."``

    Args:
        name (`str`): The argument's name as the caller spells it (``"view"``, ``"model.config.loss_type"``).
        value (`Any`): The value to check.
        choices (`Iterable`): The valid values; a bool never matches an int choice and vice versa.

    Raises:
        ValueError: ``value`` is not among ``choices``.
    """
    choices = list(choices)
    if any(_is_choice(value, choice) for choice in choices):
        return
    close = closest_match(value, choices)
    hint = f"did you mean {close!r}? Choose" if close is not None else "choose"
    raise ValueError(f"{name}={value!r} is not supported; {hint} one of {choices}.")


def check_bool(name: str, value: Any) -> bool:
    """``value`` as a Python `bool`, or a `ValueError` when it is anything else.

    Strings (``"no"``, ``"False"``), numbers and `None` are rejected: they would silently count as `True` or
    `False`. A NumPy bool is accepted.

    Args:
        name (`str`): The argument's name, for the message.
        value (`Any`): The value to check.

    Returns:
        `bool`: ``value``.

    Raises:
        ValueError: ``value`` is not a bool.
    """
    if isinstance(value, bool | np.bool_):
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r} ({type(value).__name__}).")


def check_known_keys(given: Mapping[Any, Any] | Iterable[Any], allowed: Iterable[str], where: str) -> None:
    """Raise a `ValueError` naming every key of ``given`` that is not in ``allowed``.

    Args:
        given (`Mapping` or `Iterable[str]`): The keys to check (a mapping's keys, e.g. a YAML section or
            ``**kwargs``), in the order they are reported.
        allowed (`Iterable[str]`): The valid keys.
        where (`str`): Where the keys come from, e.g. ``"model.config"``, ``"data.train[0].args"`` or
            ``"build_esc50() keyword arguments"``.

    Raises:
        ValueError: Some keys are unknown. The message lists each one with its closest valid key, if any, and all
            valid keys: ``"data.train[0].args: unknown key 'exclude_esc1O' (did you mean 'exclude_esc10'?); valid
            keys: [...]"``.
    """
    allowed = set(allowed)
    keys = list(given.keys() if isinstance(given, Mapping) else given)
    unknown = [key for key in keys if not isinstance(key, str) or key not in allowed]
    if not unknown:
        return
    described = []
    for key in unknown:
        close = closest_match(key, sorted(allowed))
        described.append(f"{key!r}" + (f" (did you mean {close!r}?)" if close is not None else ""))
    plural = "s" if len(unknown) > 1 else ""
    raise ValueError(f"{where}: unknown key{plural} {', '.join(described)}; valid keys: {sorted(allowed)}.")


def keyword_names(func: Callable[..., Any]) -> frozenset[str]:
    """The names ``func`` accepts as keyword arguments.

    For a function wrapped by `strict_keywords`, the names it checks (its own parameters plus those it forwards
    through ``**kwargs``); otherwise the parameters of its signature that can be passed by keyword (``**kwargs``
    itself is not a name).

    Args:
        func (`Callable`): A function or a `strict_keywords` wrapper.

    Returns:
        `frozenset[str]`: The keyword names.
    """
    recorded = getattr(func, "__keyword_names__", None)
    if recorded is not None:
        return frozenset(recorded)
    keyword_kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(p.name for p in inspect.signature(func).parameters.values() if p.kind in keyword_kinds)


def strict_keywords(
    *, forwards_to: Callable[..., Any] | None = None, exclude: Iterable[str] = ()
) -> Callable[[F], F]:
    """Decorator: calling the function with an unknown keyword argument raises a `ValueError`, not a `TypeError`.

    The check runs before the function body, so a typo (``build_esc50(d, exclude_esc1O=True)``) fails at once
    with ``"build_esc50() keyword arguments: unknown key 'exclude_esc1O' (did you mean 'exclude_esc10'?); ..."``.
    The accepted names are recorded on the wrapper for `keyword_names`.

    Args:
        forwards_to (`Callable`, *optional*): For a function that passes ``**kwargs`` on: the callee whose keyword
            names it also accepts.
        exclude (`Iterable[str]`, defaults to ``()``): Names of ``forwards_to`` that are not accepted.

    Returns:
        A decorator that returns a wrapper with the same signature (``__wrapped__``) and docstring.
    """

    def decorate(func: F) -> F:
        own = {
            name
            for name, parameter in inspect.signature(func).parameters.items()
            if parameter.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        forwarded = keyword_names(forwards_to) - set(exclude) if forwards_to is not None else frozenset()
        names = frozenset(own | forwarded)
        where = f"{func.__name__}() keyword arguments"

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            check_known_keys(kwargs, names, where)
            return func(*args, **kwargs)

        wrapper.__keyword_names__ = names
        return wrapper  # type: ignore[return-value]

    return decorate


def check_captions(text: Any) -> str | list[str]:
    """``text`` (one caption or a list of captions) as a tokenizer takes it, or a `ValueError` naming the first
    caption that is not a string (its index and type): a tokenizer would fail with a traceback instead."""
    if isinstance(text, str):
        return text
    if isinstance(text, list | tuple):
        if not text:
            raise ValueError("`text` is an empty list: pass at least one caption, or text=None for no captions.")
        for index, caption in enumerate(text):
            if not isinstance(caption, str):
                raise ValueError(
                    f"Caption {index} of `text` is {str(caption)[:60]!r} of type {type(caption).__name__}: every "
                    f"caption must be a string."
                )
        return list(text)
    raise ValueError(
        f"`text` must be a string or a list of strings, got {str(text)[:60]!r} of type {type(text).__name__}."
    )
