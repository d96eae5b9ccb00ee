"""LangChain retriever for Q-RAG multi-step retrieval (SPEC §1, §3.5).

A thin adapter: documents go into a :class:`qrag_core.retrieval_session.RetrievalSession`, queries
come back as ``Document`` objects, one per selected chunk, in document order, with metadata
``step``, ``q_value``, ``chunk_index``, ``position`` (plus ``doc_id``, ``start``, ``end`` and the
source document's metadata)::

    from qrag_integrations.langchain import QRAGRetriever
    retriever = QRAGRetriever.from_pretrained(k=4)
    retriever.add_texts([long_text], metadatas=[{"source": "book.txt"}])
    docs = retriever.invoke("Where is Mary?", k=2)      # per-call override

``ainvoke`` runs the search in a worker thread, so it never blocks the event loop; the session's
lock makes concurrent calls (and additions) safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import model_validator
except ImportError as err:  # pragma: no cover - exercised in a subprocess without LangChain
    raise ImportError(
        'qrag_integrations.langchain needs LangChain; install it with: pip install "qrag[langchain]"'
    ) from err

from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.model import QRAG
from qrag_core.retrieval_session import RetrievalOptions, RetrievalSession, chunk_id, evidence_metadata

__all__ = ["QRAGRetriever"]


class QRAGRetriever(BaseRetriever):
    """Multi-step Q-RAG retrieval over the documents added to it, as a LangChain retriever."""

    session: RetrievalSession
    """The model, the index of added documents and the lock that guards them."""
    k: int | None = None
    """Chunks to fetch per query, i.e. search steps (None: the model's default)."""
    beam: int | None = None
    """Beam width (1 = greedy; None: the model's default)."""
    expand_k: int | None = None
    """Top actions each beam is expanded by (None: the beam width)."""
    stop_threshold: float | None = None
    """Stop early when the best Q falls below this (None: the model's default)."""
    document_id: str | None = None
    """Search only this added document (None: all of them)."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        device: str | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """A retriever on a saved or shipped model (no name: the default); ``options`` as the fields."""
        return cls(session=RetrievalSession.from_pretrained(name_or_path, chunking, cache, device), **options)

    @classmethod
    def from_model(
        cls, model: QRAG, *, chunking: ChunkingConfig | None = None, cache: EmbeddingCache | None = None, **options: Any
    ) -> QRAGRetriever:
        """A retriever on a model already in memory (e.g. one just fine-tuned)."""
        return cls(session=RetrievalSession(model, chunking=chunking, cache=cache), **options)

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
    ) -> list[str]:
        """Chunk and index one document per text; returns the document ids."""
        return self.session.add_texts(texts, metadatas, ids, chunking)

    def add_documents(self, documents: Sequence[Document], chunking: ChunkingConfig | None = None) -> list[str]:
        """Chunk and index LangChain documents; each chunk carries its document's metadata."""
        return self.add_texts(
            [doc.page_content for doc in documents],
            [doc.metadata for doc in documents],
            [doc.id for doc in documents],
            chunking,
        )

    async def aadd_documents(self, documents: Sequence[Document], chunking: ChunkingConfig | None = None) -> list[str]:
        """:meth:`add_documents` in a worker thread (encoding a long document takes a while)."""
        return await asyncio.to_thread(self.add_documents, documents, chunking)

    @model_validator(mode="after")
    def _check_options(self) -> QRAGRetriever:
        self.search_options()
        return self

    def search_options(self) -> RetrievalOptions:
        """This retriever's search options (validated)."""
        return RetrievalOptions(**{name: getattr(self, name) for name in RetrievalOptions.names()})

    def _search(self, query: str, overrides: dict[str, Any]) -> list[Document]:
        result = self.session.search(query, self.search_options().override(**overrides))
        return [
            Document(page_content=sel.chunk.text, metadata=evidence_metadata(sel), id=chunk_id(sel.chunk))
            for sel in result.chunks
        ]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        return self._search(query, overrides)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **overrides: Any
    ) -> list[Document]:
        return await asyncio.to_thread(self._search, query, overrides)
