"""The retrieval methods of the evaluation loop: Q-RAG's search and the baselines it is measured against.

- ``qrag``: :class:`QRAGSearch`, the Q-RAG multi-step search (docs/method.md §5) with a trained model.
- ``dense``: single-step top-T by cosine similarity of mean-pooled embeddings of the untrained base
  encoder (all-MiniLM-L6-v2 by default). Chunk embeddings are the content embeddings e_i of the
  frozen action encoder, so they come from the same shared cache as Q-RAG's.
- ``bm25``: top-T by BM25 (``bm25s``, English stop words) over the chunks of each document.
- ``multistep-untrained``: the same search loop with both encoders at the base weights.

:func:`make_method` builds any of them by name."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qrag_core.chunking import Chunk
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.evaluation import RetrievalMethod
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.search import search
from qrag_core.search_options import SearchOptions

logger = logging.getLogger(__name__)

METHODS = ("qrag", "dense", "bm25", "multistep-untrained")
BASELINES = ("dense", "bm25", "multistep-untrained")


def _top_in_document_order(scores: torch.Tensor, steps: int) -> list[int]:
    return sorted(scores.topk(min(steps, len(scores))).indices.tolist())


@dataclass
class QRAGSearch:
    """Q-RAG multi-step search (docs/method.md §5) with a trained or untrained model."""

    model: QRAG
    cache: EmbeddingCache | None = None
    """Where content embeddings are looked up and stored (None: encode every document afresh)."""
    options: SearchOptions = SearchOptions()
    """How to search; T (``k``) is the evaluation's, per example (options left at None: the model's defaults)."""
    name: str = "qrag"

    def select(self, question: str, chunks: Sequence[Chunk], steps: int, ordered: bool = True) -> list[int]:
        was_training = self.model.training
        self.model.eval()
        try:
            index = DocumentIndex.build(self.model, [list(chunks)], cache=self.cache, ordered=ordered)
            result = search(self.model, question, index, self.options, k=steps)
        finally:
            self.model.train(was_training)
        return [selected.chunk.index for selected in result.chunks]


@dataclass
class DenseTopK:
    """Single-step dense retrieval: the T chunks most similar (cosine) to the question."""

    model: QRAG
    """Supplies the encoder: its action transformer embeds both the chunks and the question."""
    cache: EmbeddingCache | None = None
    name: str = "dense"

    def select(self, question: str, chunks: Sequence[Chunk], steps: int, ordered: bool = True) -> list[int]:
        content = self.model.encode_chunks([c.text for c in chunks], self.cache)
        query = self.model.action_encoder.encode([question])
        scores = torch.nn.functional.cosine_similarity(content, query, dim=-1)
        return _top_in_document_order(scores, steps)


@dataclass
class BM25TopK:
    """Single-step lexical retrieval: the T chunks with the highest BM25 score for the question."""

    stopwords: str = "en"
    """bm25s stop-word list applied to chunks and question."""
    name: str = "bm25"

    def select(self, question: str, chunks: Sequence[Chunk], steps: int, ordered: bool = True) -> list[int]:
        import bm25s

        corpus = bm25s.tokenize([c.text for c in chunks], stopwords=self.stopwords, show_progress=False)
        if not corpus.vocab:  # no chunk has a word BM25 can match (only stop words or punctuation): no ranking
            return list(range(min(steps, len(chunks))))
        retriever = bm25s.BM25()
        retriever.index(corpus, show_progress=False)
        query = bm25s.tokenize([question], stopwords=self.stopwords, show_progress=False, return_ids=False)
        found, _ = retriever.retrieve(query, k=min(steps, len(chunks)), show_progress=False)
        return sorted(int(i) for i in found[0])


def base_model_of(name_or_path: str | None) -> QRAG:
    """The untrained model on the base encoder of ``name_or_path`` (a trained model's base, or the encoder itself)."""
    if name_or_path is None:
        return QRAG.from_base()
    return QRAG.from_base(QRAG.from_pretrained(name_or_path).config.base_model)


def make_method(
    name: str,
    model: str | QRAG | None = None,
    cache: EmbeddingCache | None = None,
    options: SearchOptions | None = None,
    base: QRAG | None = None,
) -> RetrievalMethod:
    """A retrieval method by name (:data:`METHODS`).

    ``model`` is a loaded model or a name/path: for ``qrag`` the model searched (None: the default
    model); for ``dense`` and ``multistep-untrained`` its base encoder is used untrained (None: the
    default base), unless ``base``, an untrained model already loaded, is given (several baselines
    then share one). ``options`` (beam width, threshold, …) apply to the search methods.
    """
    if name not in METHODS:
        raise InvalidInputError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    if name == "bm25":
        return BM25TopK()
    if name == "qrag":
        loaded = model if isinstance(model, QRAG) else QRAG.from_pretrained(model)
        return QRAGSearch(loaded, cache, options or SearchOptions())
    if base is None:
        base = QRAG.from_base(model.config.base_model) if isinstance(model, QRAG) else base_model_of(model)
    if name == "dense":
        return DenseTopK(base, cache)
    return QRAGSearch(base, cache, options or SearchOptions(), name="multistep-untrained")
