"""LlamaIndex retriever for Q-RAG multi-step retrieval (SPEC §1, §3.5).

A thin adapter over :class:`qrag_core.retrieval_session.RetrievalSession`: LlamaIndex documents or
nodes go in, each query returns one ``NodeWithScore`` per selected chunk, in document order, with
``score`` = the chunk's Q-value and node metadata ``step``, ``q_value``, ``chunk_index``,
``position`` (plus ``doc_id``, ``start``, ``end`` and the source's metadata; these retrieval keys
are hidden from the LLM prompt)::

    from qrag_integrations.llamaindex import QRAGRetriever
    retriever = QRAGRetriever.from_defaults(documents=docs, k=4)
    engine = retriever.as_query_engine(llm=my_llm)      # a RetrieverQueryEngine
    print(engine.query("Where is Mary?"))
    retriever.persist("./qrag_store")
    retriever = QRAGRetriever.from_persist_dir("./qrag_store")

Nodes of one source document (same ``ref_doc_id``) are indexed together, in the order given, as
one document, so Q-RAG's positions span the whole document.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from typing import Any

try:
    from llama_index.core.callbacks import CallbackManager
    from llama_index.core.query_engine import RetrieverQueryEngine
    from llama_index.core.retrievers import BaseRetriever
    from llama_index.core.schema import (
        BaseNode,
        Document,
        NodeRelationship,
        NodeWithScore,
        QueryBundle,
        RelatedNodeInfo,
        TextNode,
    )
except ImportError as err:  # pragma: no cover - exercised in a subprocess without LlamaIndex
    raise ImportError(
        'qrag_integrations.llamaindex needs LlamaIndex; install it with: pip install "qrag[llamaindex]"'
    ) from err

from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.model import QRAG
from qrag_core.retrieval_session import (
    RETRIEVAL_METADATA_KEYS,
    RetrievalOptions,
    RetrievalSession,
    chunk_id,
    evidence_metadata,
    saved_options,
)
from qrag_core.search import SelectedChunk

__all__ = ["QRAGRetriever"]


class QRAGRetriever(BaseRetriever):
    """Multi-step Q-RAG retrieval over the documents added to it, as a LlamaIndex retriever."""

    def __init__(
        self,
        session: RetrievalSession,
        options: RetrievalOptions | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        """``options``: k (chunks per query), beam, expand_k, stop_threshold, document_id."""
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.session = session
        self.options = options or RetrievalOptions()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        device: str | None = None,
        callback_manager: CallbackManager | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """An empty retriever on a saved or shipped model (no name: the default model)."""
        session = RetrievalSession.from_pretrained(name_or_path, chunking, cache, device)
        return cls(session, RetrievalOptions(**options), callback_manager)

    @classmethod
    def from_defaults(
        cls,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[Document] | None = None,
        model: QRAG | str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        callback_manager: CallbackManager | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """A retriever over ``nodes`` or ``documents``; ``model`` is a QRAG, a model name/path, or None."""
        if (nodes is None) == (documents is None):
            raise InvalidInputError("give exactly one of nodes= or documents=")
        if isinstance(model, QRAG):
            session = RetrievalSession(model, chunking=chunking, cache=cache)
        else:
            session = RetrievalSession.from_pretrained(model, chunking, cache)
        retriever = cls(session, RetrievalOptions(**options), callback_manager)
        if nodes is not None:
            retriever.insert_nodes(nodes)
        else:
            retriever.insert_documents(documents or [])
        return retriever

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str],
        model: QRAG | None = None,
        *,
        cache: EmbeddingCache | None = None,
        callback_manager: CallbackManager | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """Reopen a retriever written by :meth:`persist`; ``model`` and ``options`` override the saved ones."""
        session = RetrievalSession.load(persist_dir, model, cache)
        return cls(session, saved_options(persist_dir).override(**options), callback_manager)

    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the index, the options and the model's name (or the model itself if it was built in memory)."""
        self.session.save(persist_dir, self.options)

    def insert_documents(self, documents: Sequence[Document]) -> list[str]:
        """Chunk and index LlamaIndex documents; returns their ids."""
        return self.session.add_texts(
            [doc.text for doc in documents], [doc.metadata for doc in documents], [doc.doc_id for doc in documents]
        )

    def insert_nodes(self, nodes: Sequence[BaseNode]) -> list[str]:
        """Index nodes; nodes sharing a ``ref_doc_id`` form one document, in the order given."""
        groups: dict[str, list[BaseNode]] = {}
        for node in nodes:
            groups.setdefault(node.ref_doc_id or node.node_id, []).append(node)
        return self.session.add_segmented_texts(
            [[node.get_content() for node in group] for group in groups.values()],
            [[{**node.metadata, "node_id": node.node_id} for node in group] for group in groups.values()],
            list(groups),
        )

    def as_query_engine(self, **kwargs: Any) -> RetrieverQueryEngine:
        """A ``RetrieverQueryEngine`` on this retriever (``llm=``, ``response_mode=`` … as ``from_args``)."""
        return RetrieverQueryEngine.from_args(self, **kwargs)

    def _to_node(self, selected: SelectedChunk) -> NodeWithScore:
        chunk = selected.chunk
        node = TextNode(
            id_=chunk_id(chunk),
            text=chunk.text,
            metadata=evidence_metadata(selected),
            excluded_llm_metadata_keys=list(RETRIEVAL_METADATA_KEYS),
            excluded_embed_metadata_keys=list(RETRIEVAL_METADATA_KEYS),
            start_char_idx=chunk.start,
            end_char_idx=chunk.end,
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=chunk.doc_id)
        return NodeWithScore(node=node, score=selected.q_value)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.session.search(query_bundle.query_str, self.options)
        return [self._to_node(selected) for selected in result.chunks]

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)
