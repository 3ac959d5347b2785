"""Reading metadata files (CSV, JSON) strictly: UTF-8, the expected columns and fields, paths inside the data folder.

Every problem raises a `ValueError` (`MissingDataFileError` for an absent file) that names the file, the line or
JSON position, and the expected layout. Encoding: metadata must be UTF-8 (a leading byte-order mark is allowed).
Other encodings are *not* guessed, since a wrong guess would silently change captions; a file that is not valid
UTF-8 raises with the byte offset of the first bad byte and asks to re-save the file as UTF-8.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from .errors import MissingDataFileError

__all__ = ["check_relative_path", "expected", "read_csv_rows", "read_json", "read_text", "require_fields"]


def expected(what: str) -> str:
    """`` (expected <what>)`` for the end of a message, or nothing when ``what`` is empty."""
    return f" (expected {what})" if what else ""


def read_text(path: Path, kind: str) -> str:
    """The content of a UTF-8 text file, without a leading byte-order mark.

    Args:
        path (`Path`): An existing file.
        kind (`str`): ``"CSV"`` or ``"JSON"``, for the message.

    Returns:
        `str`: The decoded text.

    Raises:
        ValueError: The file is not valid UTF-8. The message gives the file, the byte offset (0-based, counted
            from the start of the file) and line of the first undecodable byte, and the fix.
    """
    data = path.read_bytes()
    start = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[start:].decode("utf-8")
    except UnicodeDecodeError as error:
        offset = start + error.start
        line = data[:offset].count(b"\n") + 1
        raise ValueError(
            f"{kind} file {str(path)!r} is not valid UTF-8: byte 0x{data[offset]:02x} at byte offset {offset} "
            f"(line {line}) cannot be decoded ({error.reason}). Re-save the file as UTF-8 (e.g. "
            f"`iconv -f latin1 -t utf-8 old.csv > new.csv` for a Latin-1 file); other encodings are not guessed."
        ) from error


def read_csv_rows(path: Path, required: Sequence[str], *, what: str = "") -> list[dict[str, Any]]:
    """Read a UTF-8 CSV file with a header line into dicts, checking its columns and row lengths.

    Args:
        path (`Path`): The CSV file.
        required (`Sequence[str]`): Columns that must be in the header.
        what (`str`, *optional*): Short description of the expected layout for error messages.

    Returns:
        `list[dict[str, str]]`: One dict per data row; each carries ``"_line"`` (1-based line number in the file).

    Raises:
        MissingDataFileError: The file does not exist.
        ValueError: The file is not UTF-8, is empty, misses a required column, has a row with more or fewer
            fields than the header, or is not valid CSV. The message names the file, the line and the expected
            columns.
    """
    if not path.is_file():
        raise MissingDataFileError(f"Metadata file {str(path)!r} does not exist{expected(what)}.")
    reader = csv.DictReader(io.StringIO(read_text(path, "CSV"), newline=""), strict=True)
    rows = []
    try:
        header = reader.fieldnames
        if not header:
            raise ValueError(
                f"CSV file {str(path)!r} is empty: expected a header with columns {list(required)}."
            )
        missing = [column for column in required if column not in header]
        if missing:
            raise ValueError(
                f"CSV file {str(path)!r} lacks column(s) {missing}: expected a header with {list(required)}, "
                f"found {header}{expected(what)}."
            )
        for row in reader:
            if None in row or any(value is None for value in row.values()):
                raise ValueError(
                    f"CSV file {str(path)!r} line {reader.line_num} has "
                    f"{'more' if None in row else 'fewer'} fields than its header ({len(header)} columns: "
                    f"{header}); quote fields that contain commas."
                )
            row["_line"] = reader.line_num
            rows.append(row)
    except csv.Error as error:
        raise ValueError(
            f"CSV file {str(path)!r} is malformed near line {reader.line_num}: {error}."
        ) from error
    return rows


def read_json(path: Path, *, what: str = "") -> Any:
    """Load a UTF-8 JSON file.

    Raises:
        MissingDataFileError: The file does not exist.
        ValueError: The file is not UTF-8 or not valid JSON; the message names the file and the position.
    """
    if not path.is_file():
        raise MissingDataFileError(f"JSON file {str(path)!r} does not exist{expected(what)}.")
    try:
        return json.loads(read_text(path, "JSON"))
    except json.JSONDecodeError as error:
        raise ValueError(
            f"JSON file {str(path)!r} is malformed (line {error.lineno}, column {error.colno}: {error.msg})"
            f"{expected(what)}."
        ) from error


def require_fields(record: Any, fields: Sequence[str], where: str, what: str = "") -> None:
    """Raise a `ValueError` naming ``where`` unless ``record`` is a dict holding all ``fields``."""
    if not isinstance(record, Mapping):
        raise ValueError(f"{where} must be a JSON object, got {type(record).__name__}{expected(what)}.")
    missing = [field for field in fields if field not in record]
    if missing:
        raise ValueError(f"{where} lacks field(s) {missing}{expected(what)}.")


def check_relative_path(value: Any, where: str, field: str) -> str:
    """``value`` if it is a non-empty relative path that cannot leave the folder it is joined to.

    Metadata paths (a CSV ``filename``, a JSON ``file_name`` or ``filepath``) are joined to the data folder. An
    absolute path, a drive (``C:``) or a ``..`` component would read outside it, so they are rejected; the check
    is on the text (a symbolic link inside the data folder is followed as usual). Backslashes count as separators.

    Args:
        value (`Any`): The field's value.
        where (`str`): File and row, e.g. ``"meta/esc50.csv line 3"`` or ``"captions.json images[2]"``.
        field (`str`): The field's name.

    Returns:
        `str`: ``value`` unchanged.

    Raises:
        ValueError: ``value`` is not a non-empty string, is absolute or has a ``..`` component.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {field!r} must be a non-empty relative path, got {value!r}.")
    posix = PurePosixPath(value.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(value).drive or ".." in posix.parts:
        raise ValueError(
            f"{where}: field {field!r} = {value!r} points outside the data folder (an absolute path or a '..' "
            f"component); write it relative to the data folder, without '..'."
        )
    return value
