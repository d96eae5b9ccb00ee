"""Haystack text: six public-domain novels split into sentences (the stand-in for PG19).

BabiLong hides the facts of a bAbI story among consecutive sentences of a book, starting at a random
place of a random book; RULER's "essay" haystack is built the same way here (the Paul Graham essays
are not redistributable). Each novel is cleaned as ``haystack/SOURCES.md`` prescribes: only the text
between the Gutenberg ``*** START OF`` and ``*** END OF`` lines is kept, and the hard-wrapped lines of
each paragraph are joined before the paragraph is split into sentences with
:func:`qrag_core.chunking.iter_sentence_spans` (its ``regex`` splitter, as when the benchmarks were measured).

Lengths are counted in tokens of the base model's tokenizer (all-MiniLM-L6-v2), sentence by sentence:
WordPiece splits on whitespace first, so the token count of sentences joined by spaces is the sum of
their counts. The counts of every novel sentence are computed once and cached on disk, so building a
10M-token sample only walks through arrays of counts; no long text is ever built or tokenised.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from qrag_core.chunking import Tokenizer, iter_sentence_spans
from qrag_core.data.paths import DataNotFoundError, data_file
from qrag_core.embedding_cache import default_cache_dir
from qrag_core.text_files import read_text_file

logger = logging.getLogger(__name__)

_START = re.compile(r"^\*\*\* ?START OF.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF.*$", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SPACE = re.compile(r"\s+")
_COUNT_BATCH = 4096


def strip_gutenberg(raw: str, name: str = "book") -> str:
    """The body of a Project Gutenberg eBook: the text between its START and END marker lines."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    start, end = _START.search(text), _END.search(text)
    if start is None or end is None or end.start() <= start.end():
        raise DataNotFoundError(f"{name}: no '*** START OF' ... '*** END OF' Project Gutenberg markers found")
    return text[start.end() : end.start()]


def book_paragraphs(body: str) -> list[str]:
    """Paragraphs of a hard-wrapped text, each on one line with whitespace collapsed."""
    paragraphs = (_SPACE.sub(" ", p).strip() for p in _PARAGRAPH_BREAK.split(body))
    return [p for p in paragraphs if p]


def split_sentences(paragraph: str) -> list[str]:
    # The regex splitter, not the library default for user documents: every published BabiLong / NIAH number
    # was measured on haystacks split this way. They switch when the benchmarks are re-measured with the next
    # default model.
    return [paragraph[s:e] for s, e in iter_sentence_spans(paragraph, "regex")]


def haystack_books() -> list[Path]:
    """The novel files of ``<data>/haystack``, sorted by name."""
    books = sorted(data_file("haystack").glob("*.txt"))
    if not books:
        raise DataNotFoundError(f"no .txt novels in {data_file('haystack')}")
    return books


@lru_cache(maxsize=8)
def book_sentences(path: Path) -> tuple[str, ...]:
    """The sentences of one cleaned novel, in order."""
    body = strip_gutenberg(read_text_file(path), path.name)
    return tuple(s for paragraph in book_paragraphs(body) for s in split_sentences(paragraph))


@lru_cache(maxsize=1)
def base_tokenizer() -> Any:
    """The tokenizer of the base model (all-MiniLM-L6-v2), which defines every benchmark length."""
    from transformers import AutoTokenizer

    from qrag_core.model_names import base_minilm_path

    return AutoTokenizer.from_pretrained(base_minilm_path())


def count_tokens(texts: Sequence[str], tokenizer: Tokenizer | None = None) -> list[int]:
    """Tokens of each text (without special tokens), in batches."""
    tokenizer = tokenizer or base_tokenizer()
    counts: list[int] = []
    for first in range(0, len(texts), _COUNT_BATCH):
        ids = tokenizer(list(texts[first : first + _COUNT_BATCH]), add_special_tokens=False, verbose=False)["input_ids"]
        counts.extend(len(x) for x in ids)
    return counts


def tokenizer_key(tokenizer: Tokenizer) -> str:
    """A short hash that identifies a tokenizer's vocabulary and rules (for caching token counts)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    ident = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))  # type: ignore[attr-defined]
    return hashlib.blake2b(ident.encode("utf-8"), digest_size=8).hexdigest()


def _cached_counts(path: Path, sentences: Sequence[str], tokenizer: Tokenizer) -> np.ndarray:
    content = hashlib.blake2b(path.read_bytes(), digest_size=8).hexdigest()
    cache_file = default_cache_dir() / "haystack-token-counts" / f"{path.stem}-{content}-{tokenizer_key(tokenizer)}.npy"
    if cache_file.is_file():
        counts = np.load(cache_file)
        if len(counts) == len(sentences):
            return counts
    logger.info("counting the tokens of %d sentences of %s (once; cached in %s)", len(sentences), path.name, cache_file)
    counts = np.asarray(count_tokens(sentences, tokenizer), dtype=np.int32)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_file.with_name(cache_file.stem + ".tmp.npy")
    np.save(tmp, counts)
    tmp.replace(cache_file)
    return counts


@dataclass(eq=False)
class Haystack:
    """Sentences of the novels with their token counts; samples runs of consecutive sentences (hashed by identity)."""

    sentences: list[tuple[str, ...]]
    """Per book, its sentences in order."""
    counts: list[np.ndarray]
    """Per book, the token count of each sentence."""
    names: list[str]
    """Per book, its file name."""
    _mentions: dict[tuple[str, int], list[tuple[int, int]]] = field(default_factory=dict, repr=False)
    """Cache of :meth:`mentions`: (word, max_tokens) → (book, sentence) of the sentences that qualify."""

    @classmethod
    def load(cls, tokenizer: Tokenizer | None = None, books: Sequence[Path] | None = None) -> Haystack:
        tokenizer = tokenizer or base_tokenizer()
        paths = list(books) if books is not None else haystack_books()
        sentences = [book_sentences(p) for p in paths]
        counts = [_cached_counts(p, s, tokenizer) for p, s in zip(paths, sentences, strict=True)]
        return cls(sentences, counts, [p.name for p in paths])

    @property
    def total_tokens(self) -> int:
        return int(sum(int(c.sum()) for c in self.counts))

    def all_sentences(self) -> Iterator[str]:
        for book in self.sentences:
            yield from book

    def mentions(self, word: str, max_tokens: int) -> list[tuple[int, int]]:
        """(book, sentence index) of every sentence of 1..``max_tokens`` tokens that contains ``word`` as a
        whole word, ignoring case (computed once per word and bound)."""
        key = (word.lower(), max_tokens)
        if key not in self._mentions:
            pattern = re.compile(rf"\b{re.escape(key[0])}\b", re.IGNORECASE)
            self._mentions[key] = [
                (b, i)
                for b, (book, counts) in enumerate(zip(self.sentences, self.counts, strict=True))
                for i, text in enumerate(book)
                if 0 < counts[i] <= max_tokens and pattern.search(text)
            ]
        return self._mentions[key]

    def topical(self, words: Sequence[str], n: int, rng: random.Random, max_tokens: int) -> list[tuple[str, int]]:
        """Up to ``n`` distinct (sentence, tokens) pairs that mention one of ``words`` (hard distractors).

        Each pick draws a word uniformly, then one of its sentences of at most ``max_tokens`` tokens, so a
        rare word ("milk") is as likely to be represented as a common one; words no sentence mentions are skipped.
        """
        pools = [pool for word in dict.fromkeys(words) if (pool := self.mentions(word, max_tokens))]
        chosen: dict[tuple[int, int], None] = {}
        for _ in range(4 * n):
            if len(chosen) == n or not pools:
                break
            chosen.setdefault(rng.choice(rng.choice(pools)))
        return [(self.sentences[b][i], int(self.counts[b][i])) for b, i in chosen]

    def stream(self, rng: random.Random) -> Iterator[tuple[str, int]]:
        """Endless (sentence, tokens) pairs: consecutive sentences from a random start of a random book.

        When a book ends, the run goes on from a random place of another random book, as BabiLong's
        sampler does, so any length (10M tokens and more) can be reached.
        """
        while True:
            book = rng.randrange(len(self.sentences))
            texts, counts = self.sentences[book], self.counts[book]
            for i in range(rng.randrange(len(texts)), len(texts)):
                yield texts[i], int(counts[i])


def fill_to_budget(
    stream: Iterator[tuple[str, int]], budget: int, tolerance: int, max_passed_over: int = 1000
) -> tuple[list[str], int]:
    """Take sentences from ``stream`` until their tokens reach ``budget`` minus at most ``tolerance``.

    Sentences are taken in order while they fit; near the end, a sentence that would overshoot the
    budget is passed over for the next ones that fit, so the total never exceeds the budget. When
    ``max_passed_over`` sentences in a row do not fit (a stream of long sentences only), filling
    stops short of the tolerance. Returns the sentences and their total token count.
    """
    taken: list[str] = []
    total = 0
    passed_over = 0
    while budget - total > tolerance and passed_over < max_passed_over:
        text, tokens = next(stream)
        if 0 < tokens <= budget - total:
            taken.append(text)
            total += tokens
            passed_over = 0
        else:
            passed_over += 1
    return taken, total


def scatter_in_order(
    background: Sequence[str], items: Sequence[str], rng: random.Random
) -> tuple[list[str], list[int]]:
    """Insert ``items`` at random places of ``background``, keeping the order of both.

    Returns the merged list and the index of each item in it. Each item picks one of the
    ``len(background) + 1`` gaps uniformly (several items may share a gap, in order), as BabiLong does.
    """
    gaps = sorted(rng.randrange(len(background) + 1) for _ in items)
    merged: list[str] = []
    positions: list[int] = []
    item = 0
    for gap in range(len(background) + 1):
        while item < len(items) and gaps[item] == gap:
            positions.append(len(merged))
            merged.append(items[item])
            item += 1
        if gap < len(background):
            merged.append(background[gap])
    return merged, positions
