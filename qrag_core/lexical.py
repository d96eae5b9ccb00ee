"""The lexical feature of the hybrid search score Q + w·f (docs/method.md §5, "Hybrid score").

MiniLM embeddings blur rare tokens (names, numbers, uuids) that a word match finds at once. The
feature f of a chunk is its BM25 score against the *state text* (the question plus the texts of the
chunks selected so far), divided by the best such score among the chunks still available at that step,
so f lies in [0, 1] for every question and step and one weight w fits all of them.

:class:`LexicalIndex` holds the BM25 term weights of every chunk of an index as one sparse matrix
(chunks × vocabulary, stored by word), built once per :class:`~qrag_core.index.DocumentIndex` and kept
in its derived values (:func:`lexical_index`); scoring a state is one sparse matrix–vector product (the
entries of the state's words summed into their chunks), so a step costs milliseconds even at ~50k
chunks (a 1M-token index). Words are lowercased runs of letters and digits;
there is no stop-word list, BM25's inverse document frequency gives words found everywhere ~0 weight.

The *identifier* feature (ordered documents only) is the same score over the state's identifier words
(:func:`identifier_text`: words holding a digit, such as numbers, dates, codes and the parts of a uuid). Prose
names few of them, so it matches keys and ids without the pull of a repeated name or place that the all-words
feature has in a story. It has an index of its own that keeps only those words (under one in a thousand in a
novel): the same scores for identifier words, built faster (about 2x at 10M tokens of a novel) in a small
fraction of the memory (14 MB against 835 MB at peak there; benchmarks/lexical_index.py).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from qrag_core.index import DocumentIndex

WORD = re.compile(r"\w+")
"""A word: a run of letters, digits or underscores (lowercased first)."""
IDENTIFIER = re.compile(r"\b\w*\d\w*")
"""An identifier word: a word holding a decimal digit."""
K1 = 1.5
"""BM25 k1: how quickly repeated occurrences of a word in a chunk stop adding to its score."""
B = 0.75
"""BM25 b: how much a long chunk's term frequencies are discounted."""


def words(text: str) -> list[str]:
    """The words of ``text`` as BM25 counts them."""
    return WORD.findall(text.lower())


def identifier_text(text: str) -> str:
    """The identifier words of ``text`` (those holding a digit), space-separated; empty when it has none."""
    return " ".join(IDENTIFIER.findall(text.lower()))


class LexicalIndex:
    """BM25 term weights of a list of chunk texts: a sparse (chunks × vocabulary) matrix, stored by word.

    ``identifiers_only`` keeps the identifier words only; chunk lengths still count every word, so an
    identifier word scores exactly as in the full index."""

    def __init__(self, texts: Sequence[str], identifiers_only: bool = False) -> None:
        self.vocabulary: dict[str, int] = {}
        rows: list[int] = []
        columns: list[int] = []
        counts: list[float] = []
        lengths: list[int] = []
        for row, text in enumerate(texts):
            lowered = text.lower()
            tokens = WORD.findall(lowered)
            lengths.append(len(tokens))
            if identifiers_only:
                tokens = IDENTIFIER.findall(lowered)
            frequencies: dict[int, int] = {}
            for token in tokens:
                column = self.vocabulary.setdefault(token, len(self.vocabulary))
                frequencies[column] = frequencies.get(column, 0) + 1
            rows.extend([row] * len(frequencies))
            columns.extend(frequencies)
            counts.extend(map(float, frequencies.values()))
        self.size = len(texts)
        row_index = torch.tensor(rows, dtype=torch.long)
        column_index = torch.tensor(columns, dtype=torch.long)
        tf = torch.tensor(counts, dtype=torch.float32)
        length = torch.tensor(lengths, dtype=torch.float32)
        document_frequency = torch.bincount(column_index, minlength=len(self.vocabulary)).float()
        # Lucene's BM25 idf, never negative: log(1 + (N − df + 0.5) / (df + 0.5)).
        idf = torch.log1p((self.size - document_frequency + 0.5) / (document_frequency + 0.5))
        mean_length = max(float(length.mean()) if self.size else 0.0, 1e-9)
        norm = K1 * (1 - B + B * length / mean_length)
        weights = idf[column_index] * tf * (K1 + 1) / (tf + norm[row_index])
        # Column-major (the chunks of each word together), so a query sums the entries of its words only.
        order = torch.argsort(column_index, stable=True)
        self.rows = row_index[order]
        self.weights = weights[order]
        self.starts: list[int] = [0, *torch.cumsum(document_frequency.long(), 0).tolist()]
        """Where each word's entries begin in ``rows`` and ``weights``."""

    def scores(self, text: str) -> torch.Tensor:
        """BM25 of every chunk for the query ``text`` (each distinct word counted once), shape (N,)."""
        scores = torch.zeros(self.size)
        columns = sorted({self.vocabulary[w] for w in words(text) if w in self.vocabulary})
        if columns:
            entries = torch.cat([torch.arange(self.starts[c], self.starts[c + 1]) for c in columns])
            scores.index_add_(0, self.rows[entries], self.weights[entries])
        return scores


def lexical_index(index: DocumentIndex, identifiers_only: bool = False) -> LexicalIndex:
    """The :class:`LexicalIndex` of every chunk of ``index`` (of its identifier words only, if so asked),
    built once until a document is added."""
    kind = "lexical-identifiers" if identifiers_only else "lexical"
    return index.derived((kind,), lambda: LexicalIndex([chunk.text for chunk in index.chunks], identifiers_only))


def lexical_feature(
    index: DocumentIndex,
    state_text: str,
    start: int,
    end: int,
    selected: Sequence[int],
    identifiers_only: bool = False,
) -> torch.Tensor:
    """f for chunks [start, end) of ``index``: BM25 against ``state_text`` over the best among those not
    ``selected`` (indices relative to ``start``), in [0, 1]; 0 at the selected chunks, and everywhere when
    no available chunk shares a word with the state. ``identifiers_only``: only the state's identifier words
    count (:func:`identifier_text`), scored by the smaller index of those words.

    A state without any word that counts (e.g. a bAbI story's, for the identifier words: it has none) is 0
    everywhere without building a lexical index (at a million tokens of a novel, about 0.7 s and 96 MB at
    peak; its identifier-word index about 0.5 s and 12 MB)."""
    if identifiers_only:
        state_text = identifier_text(state_text)
    if not WORD.search(state_text):
        return torch.zeros(end - start)
    feature = lexical_index(index, identifiers_only).scores(state_text)[start:end].clone()
    if selected:
        feature[list(selected)] = 0.0
    best = float(feature.max()) if len(feature) else 0.0
    return feature / best if best > 0 else feature
