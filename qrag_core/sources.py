"""Rebuilding a source document from the pieces a framework's text splitter cut it into.

LangChain's ``RecursiveCharacterTextSplitter(add_start_index=True)`` and LlamaIndex's node parsers
hand over a book as overlapping splits, each with its offset in the book (``start_index``,
``start_char_idx``). Q-RAG needs the book whole: its positions ρ_t (arXiv 2511.07328, Sec. 3) span
one document, and overlapping splits would index the shared sentences twice. :func:`rebuild_source`
merges the splits of one source back into its text, with offsets relative to the source, so adding
the splits of a book gives the same chunks as adding the book itself.

A splitter strips the whitespace between splits that do not overlap; it comes back as newlines
(what separates paragraphs and lines, where such splitters cut first). Splits without offsets are
joined in the order given, one newline apart.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)


@dataclass
class Piece:
    """One split of a source document, as a framework hands it over."""

    text: str
    """The split's text."""
    start: int | None = None
    """Character offset of ``text`` in the source document (None: unknown)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The split's own metadata (carried to every chunk that starts inside it)."""
    piece_id: str | None = None
    """The framework's id of the split (e.g. a LlamaIndex node id), recorded with its chunks."""


@dataclass
class RebuiltSource:
    """The text of a source document recovered from its pieces."""

    text: str
    """The source's text from ``offset`` on (gaps between pieces filled with newlines)."""
    offset: int
    """Character offset of ``text`` in the source (the first piece's start)."""
    spans: list[tuple[int, int, Piece]]
    """(start, end) of every piece in source offsets, in source order."""

    def piece_at(self, position: int) -> Piece:
        """The first piece (in source order) whose span holds source offset ``position``."""
        for start, end, piece in self.spans:
            if start <= position < end:
                return piece
        return self.spans[-1][2]


def rebuild_source(pieces: Sequence[Piece], name: str = "document") -> RebuiltSource:
    """Merge the pieces of one source into its text; overlapping parts must agree.

    With an offset on every piece they are placed at their offsets (overlap removed); otherwise they
    are joined in the given order, one newline apart.
    """
    if not pieces:
        raise InvalidInputError(f"{name} has no text")
    for number, piece in enumerate(pieces):
        if not isinstance(piece.text, str):
            raise InvalidInputError(f"split {number} of {name} must be a string, got {type(piece.text).__name__}")
        if piece.start is not None and (isinstance(piece.start, bool) or not isinstance(piece.start, int)):
            raise InvalidInputError(f"split {number} of {name}: offset must be an integer, got {piece.start!r}")
    if any(p.start is None or p.start < 0 for p in pieces):
        if len(pieces) > 1 and any(p.start is not None for p in pieces):
            logger.warning("%s: some splits have no offset in the source; joining all in the order given", name)
        return _join(pieces)
    ordered = sorted(pieces, key=lambda p: p.start)  # sort is stable: equal starts keep the given order
    offset = ordered[0].start
    text = _Text(offset)
    spans: list[tuple[int, int, Piece]] = []
    for piece in ordered:
        start = piece.start
        if start >= text.end:
            text.append("\n" * (start - text.end))
            text.append(piece.text)
        else:
            shared = text.read(start, start + len(piece.text))
            if not piece.text.startswith(shared):
                raise InvalidInputError(
                    f"splits of {name} disagree at offset {start}: the split starting there does not repeat the "
                    f"text before it ({shared[:40]!r} vs {piece.text[:40]!r}); are the start offsets right?"
                )
            text.append(piece.text[len(shared) :])
        spans.append((start, start + len(piece.text), piece))
    return RebuiltSource(text.joined(), offset, spans)


class _Text:
    """Text built by appending parts, readable by source offset without joining it all each time."""

    def __init__(self, offset: int) -> None:
        self.parts: list[str] = []
        self.starts: list[int] = []
        self.end = offset

    def append(self, part: str) -> None:
        if part:
            self.parts.append(part)
            self.starts.append(self.end)
            self.end += len(part)

    def read(self, start: int, end: int) -> str:
        """The text at source offsets [start, min(end, self.end))."""
        first = max(0, bisect.bisect_right(self.starts, start) - 1)
        out, position = [], start
        for number in range(first, len(self.parts)):
            part_start = self.starts[number]
            if part_start >= end:
                break
            part = self.parts[number]
            out.append(part[max(0, position - part_start) : end - part_start])
            position = part_start + len(part)
        return "".join(out)

    def joined(self) -> str:
        return "".join(self.parts)


def _join(pieces: Sequence[Piece]) -> RebuiltSource:
    spans: list[tuple[int, int, Piece]] = []
    position = 0
    for piece in pieces:
        spans.append((position, position + len(piece.text), piece))
        position += len(piece.text) + 1
    return RebuiltSource("\n".join(p.text for p in pieces), 0, spans)


def group_pieces(keys: Sequence[Hashable | None], pieces: Sequence[Piece]) -> tuple[list[list[Piece]], list[int]]:
    """Group pieces by source: equal non-None keys form one source (in first-seen order), a None key is a
    source of its own. Returns the groups and, for every piece, the number of its group."""
    groups: list[list[Piece]] = []
    number_of: dict[Hashable, int] = {}
    which: list[int] = []
    for key, piece in zip(keys, pieces, strict=True):
        if key is None or key not in number_of:
            groups.append([])
            if key is not None:
                number_of[key] = len(groups) - 1
        number = number_of[key] if key is not None else len(groups) - 1
        groups[number].append(piece)
        which.append(number)
    return groups, which
