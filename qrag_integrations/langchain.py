"""LangChain retriever for Q-RAG multi-step retrieval (arXiv 2511.07328).

A thin adapter: documents go into a :class:`qrag_core.retriever.Retriever`, queries
come back as ``Document`` objects, one per selected chunk, with the source's metadata plus qrag's
``qrag_doc_id``, ``qrag_chunk_index``, ``qrag_start``/``qrag_end`` (offsets in the source),
``qrag_step``, ``qrag_q_value`` and ``qrag_position`` (a user's metadata keys are never overwritten;
keys starting with ``qrag_`` are refused). Results come in document order (``order="document"``,
what a reader wants) or in the order the search picked them (``order="rank"``)::

    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from qrag_integrations.langchain import QRAGRetriever
    retriever = QRAGRetriever.from_pretrained(k=4)
    splits = RecursiveCharacterTextSplitter(chunk_size=1000, add_start_index=True).split_documents([book])
    retriever.add_documents(splits)                     # regrouped into the book, overlap removed
    docs = retriever.invoke("Where is Mary?", k=2)      # per-call override
    retriever.save("book-retriever")                    # no pickle
    retriever = QRAGRetriever.load("book-retriever")    # also opens a `qrag-index build` directory

Splits of one source (documents with the same ``source`` and a ``start_index``, as a LangChain text
splitter's ``add_start_index=True`` makes them) are indexed as that one source, so positions ρ_t span
it; other documents stay separate. Adding a document under an id already present replaces it; a
document without id gets one derived from its text and metadata (a split source: its ``source``).

The search options (``k``, ``beam``, ``expand_k``, ``beam_score``, ``stop_threshold``, ``document_id``,
``document_ids``, ``order``, ``vector_index``, ``lexical_weight``, ``passage_lexical_weight``,
``identifier_weight``) are the fields of :class:`qrag_core.search_options.SearchOptions`, one retriever field
each (same name, type and documentation); each can be overridden per call. ``add_documents(...,
ordered=False)`` marks the documents as independent passages (positions off); by default a document that is
a single chunk is one.

``ainvoke`` runs the search in a worker thread, so it never blocks the event loop; the core
retriever's lock makes concurrent calls (and additions) safe.
"""

from __future__ import annotations

import asyncio
import os
import typing
from collections.abc import Sequence
from typing import Any

try:
    from langchain_core.callbacks import AsyncCallbackManagerForRetrieverRun, CallbackManagerForRetrieverRun
    from langchain_core.documents import Document
    from langchain_core.retrievers import BaseRetriever
    from pydantic import BaseModel, Field, create_model, model_validator
except ImportError as err:  # pragma: no cover - exercised in a subprocess without LangChain
    raise ImportError(
        'qrag_integrations.langchain needs LangChain; install it with: pip install "qrag[langchain]"'
    ) from err

from qrag_core.config import ChunkingConfig, field_docs
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.model import QRAG
from qrag_core.retriever import Retriever, chunk_id, evidence_metadata, saved_options
from qrag_core.search_options import SearchOptions
from qrag_core.sources import Piece, group_pieces

__all__ = ["QRAGRetriever"]

START_KEY = "start_index"
"""Metadata key of a split's offset in its source (LangChain's ``add_start_index=True``)."""
SOURCE_KEY = "source"
"""Metadata key naming a split's source (set by LangChain's document loaders)."""


def _search_option_fields() -> type[BaseModel]:
    """A pydantic model with one field per search option: its name, type, default None and docstring."""
    docs, hints = field_docs(SearchOptions), typing.get_type_hints(SearchOptions)
    fields: dict[str, Any] = {
        name: (hints[name], Field(default=None, description=docs[name])) for name in SearchOptions.names()
    }
    return create_model("SearchOptionFields", **fields)


class QRAGRetriever(BaseRetriever, _search_option_fields()):
    """Multi-step Q-RAG retrieval over the documents added to it, as a LangChain retriever."""

    session: Retriever
    """The core retriever: the model, the index of added documents and the lock that guards them."""
    show_progress: bool | None = None
    """Progress bar while encoding added documents (None: for large adds only)."""

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        device: str | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """A retriever on a saved or shipped model (no name: the default); ``options`` as the fields.

        ``cache``: True (default) for the shared on-disk embedding cache (``$QRAG_CACHE_DIR``), None for none.
        """
        return cls(session=Retriever.from_pretrained(name_or_path, chunking, cache, device), **options)

    @classmethod
    def from_model(
        cls,
        model: QRAG,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        **options: Any,
    ) -> QRAGRetriever:
        """A retriever on a model already in memory (e.g. one just fine-tuned)."""
        return cls(session=Retriever(model, chunking=chunking, cache=cache), **options)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        model: QRAG | None = None,
        cache: EmbeddingCache | bool | None = True,
        device: str | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """Reopen a retriever written by :meth:`save`, or a ``qrag-index build`` directory (on ``model`` or
        the default model); ``options`` override the saved ones."""
        session = Retriever.load(path, model, cache, device)  # both loads find a killed save's old copy
        return cls(session=session, **saved_options(path).override(**options).as_dict())

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index, the options and the model's name (or the model, if built in memory) to ``path``."""
        self.session.save(path, self.search_options())

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
        ordered: bool | None = None,
    ) -> list[str]:
        """Chunk and index one document per text; returns the document ids. ``ordered``: as in
        :meth:`add_documents`."""
        return self.session.add_texts(texts, metadatas, ids, chunking, self.show_progress, ordered)

    def add_documents(
        self,
        documents: Sequence[Document],
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
        ordered: bool | None = None,
    ) -> list[str]:
        """Chunk and index LangChain documents; returns the id each document was added under.

        Splits of one source (same ``source``, with ``start_index``) become that one document.
        ``ordered``: True if each document is text read in order (a book, one file: positions ρ_t), False
        if the documents are independent passages (positions off), None (default): a document that is a
        single chunk is a passage, a longer one is ordered.
        """
        documents = list(documents)
        if ids is not None and len(ids) != len(documents):
            raise InvalidInputError(f"{len(documents)} documents but {len(ids)} ids")
        given = list(ids) if ids is not None else [doc.id for doc in documents]
        keys = [_source_key(doc) for doc in documents]
        pieces = [
            Piece(doc.page_content, 0, doc.metadata)
            if key is None
            else Piece(doc.page_content, doc.metadata[START_KEY], doc.metadata, doc_id)
            for doc, key, doc_id in zip(documents, keys, given, strict=True)
        ]
        groups, which = group_pieces(keys, pieces)
        group_ids = [
            _group_id([given[i] for i, w in enumerate(which) if w == number], keys[which.index(number)])
            for number in range(len(groups))
        ]
        added = self.session.add_sources(groups, group_ids, chunking, self.show_progress, ordered)
        return [added[number] for number in which]

    async def aadd_documents(
        self,
        documents: Sequence[Document],
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
        ordered: bool | None = None,
    ) -> list[str]:
        """:meth:`add_documents` in a worker thread (encoding a long document takes a while)."""
        return await asyncio.to_thread(self.add_documents, documents, ids, chunking, ordered)

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by the ids :meth:`add_documents` returned (all or nothing)."""
        self.session.delete(ids)

    async def adelete(self, ids: Sequence[str]) -> None:
        """:meth:`delete` in a worker thread."""
        await asyncio.to_thread(self.delete, ids)

    @model_validator(mode="after")
    def _check_options(self) -> QRAGRetriever:
        self.search_options()
        return self

    def search_options(self) -> SearchOptions:
        """This retriever's search options (checked by :class:`SearchOptions`)."""
        return SearchOptions(**{name: getattr(self, name) for name in SearchOptions.names()})

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


def _source_key(doc: Document) -> tuple[str, Any] | None:
    """The source a split belongs to (None: a document of its own)."""
    start, source = doc.metadata.get(START_KEY), doc.metadata.get(SOURCE_KEY)
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0 and source is not None:
        return ("source", str(source))
    return None


def _group_id(member_ids: list[str | None], key: tuple[str, Any] | None) -> str | None:
    """A document's id; for a split source, its splits' common id if they share one, else its ``source``."""
    if key is None or (len(set(member_ids)) == 1 and member_ids[0] is not None):
        return member_ids[0]
    return key[1]
