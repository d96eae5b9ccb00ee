"""Reading the text and JSON files qrag is given, with errors that name the file, line and byte offset.

Every text file qrag reads (JSONL data, bAbI files, a model's ``config.json``, an index's
``chunks.jsonl``, a document to index) must be UTF-8. Undecodable bytes, a binary file (NUL bytes)
and lone surrogates (a ``\\ud800``-style JSON escape of half a UTF-16 pair, which no UTF-8 text can
hold) raise :class:`DataFormatError` instead of a ``UnicodeDecodeError`` traceback, or a crash much
later when the text reaches the tokenizer or the embedding cache. A UTF-8 byte-order mark at the
start of a file is accepted and dropped.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrag_core.errors import DataFormatError

BOM = "\ufeff"


def _decode(raw: bytes, path: Path, first_line: int, offset: int) -> str:
    """``raw`` (which starts at byte ``offset`` of line ``first_line`` of ``path``) as text."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = first_line + raw.count(b"\n", 0, err.start)
        raise DataFormatError(
            str(path),
            line,
            f"not valid UTF-8: byte {raw[err.start]:#04x} at byte offset {offset + err.start} ({err.reason}); "
            "save the file as UTF-8",
        ) from None


def iter_text_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(line number, text with its line ending) of each line of a UTF-8 file."""
    path = Path(path)
    with open(path, "rb") as f:
        offset = 0
        for number, raw in enumerate(f, start=1):
            text = _decode(raw, path, number, offset)
            yield number, text.removeprefix(BOM) if number == 1 else text
            offset += len(raw)


def read_text_file(path: str | Path) -> str:
    """The whole text of a UTF-8 file; a binary file (one with NUL bytes) is refused."""
    path = Path(path)
    raw = path.read_bytes()
    text = _decode(raw, path, 1, 0)
    nul = raw.find(b"\0")
    if nul >= 0:
        raise DataFormatError(
            str(path), raw.count(b"\n", 0, nul) + 1, f"NUL byte at byte offset {nul}: a binary file, not text"
        )
    return text.removeprefix(BOM)


def check_unicode(value: Any, path: str | Path, line: int) -> None:
    """Every string inside ``value`` (a decoded JSON value or a text) is valid Unicode (no lone surrogate)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError as err:
                raise DataFormatError(
                    str(path),
                    line + item.count("\n", 0, err.start),
                    f"lone surrogate {item[err.start]!r} (half of a UTF-16 pair) at character {err.start} of "
                    f"{item[:40]!r}: not valid Unicode",
                ) from None
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(text: str, path: str | Path, line: int) -> Any:
    """The JSON value in ``text`` (line ``line`` of ``path``), checked by :func:`check_unicode`."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataFormatError(
            str(path), line + err.lineno - 1, f"invalid JSON: {err.msg} (column {err.colno})"
        ) from None
    except RecursionError:
        raise DataFormatError(str(path), line, "invalid JSON: nested too deeply") from None
    check_unicode(value, path, line)
    return value


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line of a JSONL file; DataFormatError names file and line."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"data file {path} is a directory; give a JSONL file")
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    for number, text in iter_text_lines(path):
        if text.strip():
            yield number, parse_json(text, path, number)


def read_json_file(path: str | Path) -> Any:
    """The JSON value of a whole UTF-8 file (e.g. a ``config.json``)."""
    return parse_json(read_text_file(path), path, 1)
