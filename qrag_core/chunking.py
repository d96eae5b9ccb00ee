"""Splitting documents into chunks, the actions of a retrieval episode (SPEC §3.1).

Two splitters, both keeping each chunk's text, its index in the document and its character offsets
in the source so a user can trace a retrieved chunk back to where it came from:

- sentences (one sentence per chunk, as BabiLong is built), with over-long sentences cut into
  token windows when a tokenizer is given;
- token windows of ``max_tokens`` tokens of the base tokenizer (default 64), optionally overlapping.

Both work on streams of text blocks so a 10M-token document never needs one giant tokenizer call.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from qrag_core.config import ChunkingConfig
from qrag_core.errors import InvalidInputError

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n\s*\n")
_BLOCK_CHARS = 200_000


class Tokenizer(Protocol):
    def __call__(self, text: str, **kwargs: Any) -> Any: ...


@dataclass
class Chunk:
    """One retrievable piece of a document."""

    text: str
    """The chunk's text, exactly as in the source (without surrounding whitespace)."""
    index: int
    """Position of the chunk in its document (0-based, document order)."""
    start: int = 0
    """Character offset of the chunk's first character in the source document."""
    end: int = 0
    """Character offset one past the chunk's last character."""
    doc_id: str = "0"
    """Identifier of the document the chunk belongs to."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Metadata carried from the source document (e.g. a LangChain Document's metadata)."""


def validate_text(text: object, what: str = "document") -> str:
    if not isinstance(text, str):
        raise InvalidInputError(f"{what} must be a string, got {type(text).__name__}")
    if not text.strip():
        raise InvalidInputError(f"{what} is empty (or only whitespace); there is nothing to retrieve from")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InvalidInputError(
            f"{what} holds a lone surrogate {text[err.start]!r} at character {err.start}: not valid Unicode"
        ) from None
    return text


def _blocks(text: str, block_chars: int = _BLOCK_CHARS) -> Iterator[tuple[int, str]]:
    """Cut text into blocks of about ``block_chars`` characters at whitespace, with their offsets."""
    start = 0
    while start < len(text):
        end = min(len(text), start + block_chars)
        if end < len(text):
            cut = text.rfind("\n", start + block_chars // 2, end)
            if cut < 0:
                cut = text.rfind(" ", start + block_chars // 2, end)
            end = cut + 1 if cut >= 0 else end
        yield start, text[start:end]
        start = end


def iter_sentence_spans(text: str) -> Iterator[tuple[int, int]]:
    """Yield (start, end) character spans of the sentences of ``text``, whitespace trimmed."""
    for block_start, block in _blocks(text):
        pos = 0
        for match in _SENTENCE_END.finditer(block):
            yield from _trimmed_span(block, pos, match.start(), block_start)
            pos = match.end()
        yield from _trimmed_span(block, pos, len(block), block_start)


def _trimmed_span(block: str, start: int, end: int, offset: int) -> Iterator[tuple[int, int]]:
    piece = block[start:end]
    stripped = piece.strip()
    if stripped:
        lead = len(piece) - len(piece.lstrip())
        yield offset + start + lead, offset + start + lead + len(stripped)


def _token_windows(
    text: str, tokenizer: Tokenizer, max_tokens: int, overlap: int, offset: int = 0
) -> Iterator[tuple[int, int]]:
    """Character spans of consecutive windows of ``max_tokens`` tokens of ``text``."""
    step = max_tokens - overlap
    for block_start, block in _blocks(text):
        offsets = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        for first in range(0, len(offsets), step):
            window = offsets[first : first + max_tokens]
            yield offset + block_start + window[0][0], offset + block_start + window[-1][1]
            if first + max_tokens >= len(offsets):
                break


def chunk_text(
    text: str,
    config: ChunkingConfig | None = None,
    tokenizer: Tokenizer | None = None,
    doc_id: str = "0",
    metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    """Split one document into chunks according to ``config``.

    ``tokenizer`` is required for token windows, and in sentence mode it is used to cut sentences
    longer than ``config.max_tokens`` tokens into windows (without it they stay whole).
    """
    config = (config or ChunkingConfig()).validate()
    validate_text(text)
    if config.mode == "tokens":
        if tokenizer is None:
            raise InvalidInputError("token-window chunking needs a tokenizer")
        spans: Iterable[tuple[int, int]] = _token_windows(text, tokenizer, config.max_tokens, config.overlap_tokens)
    else:
        spans = iter_sentence_spans(text)
        if tokenizer is not None:
            spans = _split_long(text, spans, tokenizer, config.max_tokens)
    meta = dict(metadata or {})
    return [
        Chunk(text=text[s:e], index=i, start=s, end=e, doc_id=doc_id, metadata=dict(meta))
        for i, (s, e) in enumerate(spans)
    ]


def _split_long(
    text: str, spans: Iterable[tuple[int, int]], tokenizer: Tokenizer, max_tokens: int
) -> Iterator[tuple[int, int]]:
    for start, end in spans:
        # A token is rarely shorter than 2 characters; only sentences that could be long are tokenised.
        if end - start <= 2 * max_tokens:
            yield start, end
            continue
        yield from _token_windows(text[start:end], tokenizer, max_tokens, 0, offset=start)


def chunks_from_texts(texts: Iterable[str], doc_id: str = "0", metadata: dict[str, Any] | None = None) -> list[Chunk]:
    """Wrap ready-made chunk texts (SPEC §4 ``chunks`` form) as chunks, offsets in their joined text."""
    chunks, pos = [], 0
    for i, piece in enumerate(texts):
        validate_text(piece, f"chunk {i}")
        chunks.append(
            Chunk(text=piece, index=i, start=pos, end=pos + len(piece), doc_id=doc_id, metadata=dict(metadata or {}))
        )
        pos += len(piece) + 1
    return chunks
