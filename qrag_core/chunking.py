"""Splitting documents into chunks, the actions of a retrieval episode (docs/method.md §1).

Two splitters, both keeping each chunk's text, its index in the document and its character offsets
in the source so a user can trace a retrieved chunk back to where it came from:

- sentences (one sentence per chunk, as BabiLong is built), with over-long sentences cut into
  token windows when a tokenizer is given. Sentence boundaries come from ``ChunkingConfig.sentence_splitter``:
  ``punkt`` (the default: NLTK's Punkt with an English model trained on public-domain novels, shipped in
  ``punkt_english/``), ``pysbd`` (optional extra) or ``regex`` (the splitter the benchmark haystacks and
  models saved before the option existed use);
- token windows of ``max_tokens`` tokens of the base tokenizer (default 64), optionally overlapping.

Both work on streams of text blocks so a 10M-token document never needs one giant tokenizer call.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

from qrag_core.config import DEFAULT_SENTENCE_SPLITTER, SENTENCE_SPLITTERS, ChunkingConfig
from qrag_core.errors import InvalidInputError

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'”’)\]]*\s+|\n\s*\n")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_HONORIFIC_END = re.compile(r"(?<![^\s\"'“‘(\[])(?:Mr|Mrs|Ms|Messrs|Dr|Mme|Mlle|Mmes|Mdme)\.$")
_BLOCK_CHARS = 200_000
SHIPPED_PUNKT_DIR = Path(__file__).resolve().parent / "punkt_english"
"""The English Punkt model (NLTK ``punkt_tab`` files) trained on public-domain novels by ``recipes/train_punkt.py``."""


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


def iter_sentence_spans(text: str, splitter: str = DEFAULT_SENTENCE_SPLITTER) -> Iterator[tuple[int, int]]:
    """Yield (start, end) character spans of the sentences of ``text``, whitespace trimmed.

    ``splitter`` is one of :data:`SENTENCE_SPLITTERS`: ``regex`` ends a sentence after ``.``, ``!`` or
    ``?`` followed by whitespace, and at blank lines; closing quotes or brackets right after the mark
    belong to neither sentence (``He said "Go." Then`` gives ``He said "Go.``), as in the benchmark
    haystacks, which were split this way and are kept so; the others cut
    the text at blank lines (paragraphs) and let a sentence-boundary library split each paragraph,
    so abbreviations such as "Mr." or "Dr." do not end a sentence.
    """
    if splitter == "regex":
        for block_start, block in _blocks(text):
            pos = 0
            for match in _SENTENCE_END.finditer(block):
                yield from _trimmed_span(block, pos, match.start(), block_start)
                pos = match.end()
            yield from _trimmed_span(block, pos, len(block), block_start)
        return
    split = _library_splitter(splitter)
    for block_start, block in _blocks(text):
        pos = 0
        for match in [*_PARAGRAPH_BREAK.finditer(block), None]:
            end = len(block) if match is None else match.start()
            paragraph = block[pos:end]
            if paragraph.strip():
                # Hard-wrapped lines are one paragraph: the libraries see spaces (same length, so spans stay exact).
                for start, stop in split(paragraph.replace("\n", " ")):
                    yield from _trimmed_span(paragraph, start, stop, block_start + pos)
            pos = end if match is None else match.end()


def _library_splitter(name: str) -> Callable[[str], list[tuple[int, int]]]:
    """The span function of a library sentence splitter: a paragraph's sentences as exact (start, end) spans."""
    if name == "pysbd":
        return _pysbd_spans
    if name == "punkt":
        return _punkt().span_tokenize_list
    raise InvalidInputError(f"unknown sentence splitter {name!r}; use one of {', '.join(SENTENCE_SPLITTERS)}")


@lru_cache(maxsize=1)
def _pysbd_segmenter() -> Any:
    try:
        import pysbd
    except ImportError:
        raise InvalidInputError("the 'pysbd' sentence splitter needs pysbd (pip install 'qrag[pysbd]')") from None

    return pysbd.Segmenter(language="en", clean=False)


def _pysbd_spans(paragraph: str) -> list[tuple[int, int]]:
    """pysbd's sentences of a paragraph located in it: each segment is a substring, found left to right."""
    spans, cursor = [], 0
    for segment in _pysbd_segmenter().segment(paragraph):
        piece = segment.strip()
        if not piece:
            continue
        start = paragraph.find(piece, cursor)
        if start < 0:  # pysbd changed the text (never seen on the benchmark novels): keep the rest whole
            spans.append((cursor, len(paragraph)))
            return spans
        spans.append((start, start + len(piece)))
        cursor = start + len(piece)
    return spans


class _Punkt:
    """NLTK's Punkt sentence tokenizer with the English parameters qrag ships (plain-text files, no pickle)."""

    def __init__(self, params: Any) -> None:
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        self.tokenizer = PunktSentenceTokenizer(params)

    def span_tokenize_list(self, paragraph: str) -> list[tuple[int, int]]:
        """Punkt's spans, with a break after an honorific ("Mr.", "Mrs.", "Dr." ...) undone: Punkt splits
        "Mr. Darcy" when the name often starts sentences, and a title never ends one."""
        spans: list[tuple[int, int]] = []
        for start, end in self.tokenizer.span_tokenize(paragraph):
            if spans and _HONORIFIC_END.search(paragraph, spans[-1][0], spans[-1][1]):
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        return spans


@lru_cache(maxsize=1)
def _punkt() -> _Punkt:
    """Punkt with :data:`SHIPPED_PUNKT_DIR`'s English model (trained by ``recipes/train_punkt.py``)."""
    from nltk.tokenize.punkt import PunktParameters

    def lines(name: str) -> list[list[str]]:
        text = (SHIPPED_PUNKT_DIR / name).read_text(encoding="utf-8")
        return [line.split("\t") for line in text.splitlines() if line]

    # Read here rather than with nltk's loader, which only opens files under NLTK's own data directories.
    params = PunktParameters()
    params.abbrev_types = {fields[0] for fields in lines("abbrev_types.txt")}
    params.sent_starters = {fields[0] for fields in lines("sent_starters.txt")}
    params.collocations = {(first, second) for first, second in lines("collocations.tab")}
    params.ortho_context = defaultdict(int, {word: int(flags) for word, flags in lines("ortho_context.tab")})
    return _Punkt(params)


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
        spans = iter_sentence_spans(text, config.sentence_splitter)
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
    """Wrap ready-made chunk texts (the ``chunks`` form of a data file) as chunks, offsets in their joined text."""
    chunks, pos = [], 0
    for i, piece in enumerate(texts):
        validate_text(piece, f"chunk {i}")
        chunks.append(
            Chunk(text=piece, index=i, start=pos, end=pos + len(piece), doc_id=doc_id, metadata=dict(metadata or {}))
        )
        pos += len(piece) + 1
    return chunks
