"""LlamaIndex retriever for Q-RAG multi-step retrieval (arXiv 2511.07328).

A thin adapter over :class:`qrag_core.retriever.Retriever`; each query returns
``NodeWithScore`` objects with ``score`` = the Q-value of the selected chunk::

    from llama_index.core.node_parser import SentenceSplitter
    from qrag_integrations.llamaindex import QRAGRetriever
    nodes = SentenceSplitter(chunk_size=256).get_nodes_from_documents(docs)
    retriever = QRAGRetriever.from_defaults(nodes=nodes, similarity_top_k=4)
    engine = retriever.as_query_engine(llm=my_llm)      # a RetrieverQueryEngine
    print(engine.query("Where is Mary?"))
    retriever.persist("./qrag_store")
    retriever = QRAGRetriever.from_persist_dir("./qrag_store")

What comes back:

- given **nodes**, the user's own nodes (their ids, text, metadata and relationships, unchanged, so a
  ``QueryFusionRetriever`` merges them with another retriever's): Q-RAG searches sentence chunks of
  the nodes, and each node holding selected chunks is returned once, scored by its best chunk's Q.
  ``QRAGNodeWithScore.qrag`` lists qrag's metadata of the chunks selected in it;
- given **documents**, one node per selected chunk, with ``ref_doc_id``, ``start_char_idx`` and
  ``end_char_idx`` into the document's text, PREVIOUS/NEXT relationships to its neighbouring chunks
  and metadata = the document's plus qrag's ``qrag_doc_id``, ``qrag_chunk_index``, ``qrag_start``,
  ``qrag_end``, ``qrag_step``, ``qrag_q_value``, ``qrag_position`` (hidden from the LLM prompt; a
  user's keys are never overwritten, keys starting with ``qrag_`` are refused).

Nodes of one source document (same ``ref_doc_id``) are indexed as that one document, placed by
their ``start_char_idx`` (overlap removed; without offsets: in the order given), so Q-RAG's positions
span the whole document. Results come in document order (``order="document"``, the default) or in
the order the search picked them (``order="rank"``, what fusion retrievers expect). ``filters``
(``MetadataFilters``) restrict the search to the documents whose metadata match.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence
from pathlib import Path
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
    from llama_index.core.storage.docstore.utils import doc_to_json, json_to_doc
    from llama_index.core.vector_stores.types import MetadataFilters
    from llama_index.core.vector_stores.utils import build_metadata_filter_fn
    from pydantic import Field
except ImportError as err:  # pragma: no cover - exercised in a subprocess without LlamaIndex
    raise ImportError(
        'qrag_integrations.llamaindex needs LlamaIndex; install it with: pip install "qrag[llamaindex]"'
    ) from err

from qrag_core.atomic import readable
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.model import QRAG
from qrag_core.retriever import (
    PIECE_ID_KEY,
    RETRIEVAL_METADATA_KEYS,
    Retriever,
    chunk_id,
    evidence_metadata,
    saved_options,
)
from qrag_core.search import SelectedChunk
from qrag_core.search_options import SearchOptions
from qrag_core.sources import Piece, group_pieces

__all__ = ["QRAGNodeWithScore", "QRAGRetriever"]

NODES_FILE = "llamaindex_nodes.jsonl"
"""The user's nodes, saved next to the retriever (LlamaIndex's own JSON form, no pickle)."""


class QRAGNodeWithScore(NodeWithScore):
    """A retrieved node with qrag's metadata of each chunk selected in it."""

    qrag: list[dict[str, Any]] = Field(default_factory=list)
    """One dict per selected chunk: :data:`RETRIEVAL_METADATA_KEYS` and ``text``."""


class QRAGRetriever(BaseRetriever):
    """Multi-step Q-RAG retrieval over the documents added to it, as a LlamaIndex retriever."""

    def __init__(
        self,
        session: Retriever,
        options: SearchOptions | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
        filters: MetadataFilters | None = None,
        show_progress: bool | None = None,
    ) -> None:
        """``session``: the core retriever. ``options``: the search options (:class:`SearchOptions`: k chunks
        per query, beam, expand_k, beam_score, stop_threshold, document_id(s), order). ``filters``: search only the
        documents whose metadata match. ``show_progress``: a progress bar while encoding inserted
        documents (None: for large inserts only)."""
        super().__init__(callback_manager=callback_manager, verbose=verbose)
        self.session = session
        self.options = options or SearchOptions()
        self.filters = filters
        self.show_progress = show_progress
        self._nodes: dict[str, BaseNode] = {}

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        device: str | None = None,
        callback_manager: CallbackManager | None = None,
        filters: MetadataFilters | None = None,
        show_progress: bool | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """An empty retriever on a saved or shipped model (no name: the default model).

        ``cache``: True (default) for the shared on-disk embedding cache (``$QRAG_CACHE_DIR``), None for none.
        """
        session = Retriever.from_pretrained(name_or_path, chunking, cache, device)
        return cls(session, _options(options), callback_manager, filters=filters, show_progress=show_progress)

    @classmethod
    def from_defaults(
        cls,
        nodes: Sequence[BaseNode] | None = None,
        documents: Sequence[Document] | None = None,
        model: QRAG | str | None = None,
        *,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        callback_manager: CallbackManager | None = None,
        filters: MetadataFilters | None = None,
        show_progress: bool | None = None,
        ordered: bool | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """A retriever over ``nodes`` or ``documents``; ``model`` is a QRAG, a model name/path, or None.

        ``ordered``: as in :meth:`insert_documents`. ``options``: ``k`` (or ``similarity_top_k``), ``beam``,
        ``expand_k``, ``stop_threshold``, ``order`` …
        """
        if (nodes is None) == (documents is None):
            raise InvalidInputError("give exactly one of nodes= or documents=")
        if isinstance(model, QRAG):
            session = Retriever(model, chunking=chunking, cache=cache)
        else:
            session = Retriever.from_pretrained(model, chunking, cache)
        retriever = cls(session, _options(options), callback_manager, filters=filters, show_progress=show_progress)
        if nodes is not None:
            retriever.insert_nodes(nodes, ordered=ordered)
        else:
            retriever.insert_documents(documents or [], ordered=ordered)
        return retriever

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str],
        model: QRAG | None = None,
        *,
        cache: EmbeddingCache | bool | None = True,
        callback_manager: CallbackManager | None = None,
        filters: MetadataFilters | None = None,
        **options: Any,
    ) -> QRAGRetriever:
        """Reopen a retriever written by :meth:`persist`, or a ``qrag-index build`` directory; ``model``
        and ``options`` override the saved ones."""
        persist_dir = readable(persist_dir)  # after a save killed between its renames, the complete old copy
        session = Retriever.load(persist_dir, model, cache)
        saved = saved_options(persist_dir).override(**_option_values(options))
        retriever = cls(session, saved, callback_manager, filters=filters)
        nodes_path = Path(persist_dir) / NODES_FILE
        if nodes_path.is_file():
            with open(nodes_path, encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    try:
                        node = json_to_doc(json.loads(line))
                    except (ValueError, KeyError, TypeError) as err:
                        raise CheckpointError(f"{nodes_path}:{number}: not a saved LlamaIndex node: {err}") from err
                    retriever._nodes[node.node_id] = node
        return retriever

    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the index, the options, the given nodes and the model's name (or the model itself if it
        was built in memory)."""
        nodes = "".join(json.dumps(doc_to_json(node), ensure_ascii=False) + "\n" for node in self._nodes.values())
        self.session.save(persist_dir, self.options, extra_files={NODES_FILE: nodes})

    def insert_documents(
        self, documents: Sequence[Document], show_progress: bool | None = None, ordered: bool | None = None
    ) -> list[str]:
        """Chunk and index LlamaIndex documents (one document each, replacing one of the same id).

        ``ordered``: True if each document is text read in order (positions ρ_t), False if they are
        independent passages (positions off), None (default): a single-chunk document is a passage.
        """
        return self.session.add_sources(
            [[Piece(doc.text, 0, doc.metadata)] for doc in documents],
            [doc.doc_id for doc in documents],
            show_progress=self._progress(show_progress),
            ordered=ordered,
        )

    def insert_nodes(
        self, nodes: Sequence[BaseNode], show_progress: bool | None = None, ordered: bool | None = None
    ) -> list[str]:
        """Index nodes; nodes sharing a ``ref_doc_id`` form one document. Returns the document ids.
        ``ordered``: as in :meth:`insert_documents`."""
        nodes = list(nodes)
        keys = [node.ref_doc_id or node.node_id for node in nodes]
        pieces = [Piece(node.get_content(), node.start_char_idx, node.metadata, node.node_id) for node in nodes]
        groups, which = group_pieces(keys, pieces)
        doc_ids = [keys[which.index(number)] for number in range(len(groups))]
        added = self.session.add_sources(groups, doc_ids, show_progress=self._progress(show_progress), ordered=ordered)
        for doc_id in added:
            self._forget(doc_id)
        self._nodes.update((node.node_id, node) for node in nodes)
        return added

    def delete_ref_doc(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Remove a document (and the nodes of it that were given) from the index."""
        self.session.delete([ref_doc_id])
        self._forget(ref_doc_id)

    def as_query_engine(self, **kwargs: Any) -> RetrieverQueryEngine:
        """A ``RetrieverQueryEngine`` on this retriever (``llm=``, ``response_mode=`` … as ``from_args``)."""
        return RetrieverQueryEngine.from_args(self, **kwargs)

    def _progress(self, show_progress: bool | None) -> bool | None:
        return self.show_progress if show_progress is None else show_progress

    def _forget(self, doc_id: str) -> None:
        for node_id in [i for i, node in self._nodes.items() if (node.ref_doc_id or node.node_id) == doc_id]:
            del self._nodes[node_id]

    def _search_options(self) -> SearchOptions:
        if self.filters is None or not self.filters.filters:
            return self.options
        index = self.session.index
        metadata = {doc_id: index.chunks[index.document_range(doc_id)[0]].metadata for doc_id in index.doc_ids}
        matches = build_metadata_filter_fn(metadata.__getitem__, self.filters)
        return self.options.override(document_ids=[doc_id for doc_id in index.doc_ids if matches(doc_id)])

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        result = self.session.search(query_bundle.query_str, self._search_options())
        found: dict[str, QRAGNodeWithScore] = {}
        for selected in result.chunks:
            user_node = self._nodes.get(selected.chunk.metadata.get(PIECE_ID_KEY, ""))
            node = user_node if user_node is not None else self._chunk_node(selected)
            hit = found.setdefault(node.node_id, QRAGNodeWithScore(node=node, score=selected.q_value))
            hit.score = max(hit.get_score(), selected.q_value)
            hit.qrag.append({**_retrieval_metadata(selected), "text": selected.chunk.text})
        return list(found.values())

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return await asyncio.to_thread(self._retrieve, query_bundle)

    def _chunk_node(self, selected: SelectedChunk) -> TextNode:
        """A node for a chunk of an inserted document: offsets into its text, links to its neighbours."""
        chunk = selected.chunk
        metadata = evidence_metadata(selected)
        metadata.pop(PIECE_ID_KEY, None)
        node = TextNode(
            id_=chunk_id(chunk),
            text=chunk.text,
            metadata=metadata,
            excluded_llm_metadata_keys=list(RETRIEVAL_METADATA_KEYS),
            excluded_embed_metadata_keys=list(RETRIEVAL_METADATA_KEYS),
            start_char_idx=chunk.start,
            end_char_idx=chunk.end,
        )
        start, end = self.session.index.document_range(chunk.doc_id)
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=chunk.doc_id)
        if chunk.index > 0:
            node.relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=f"{chunk.doc_id}#{chunk.index - 1}")
        if chunk.index + 1 < end - start:
            node.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=f"{chunk.doc_id}#{chunk.index + 1}")
        return node


def _retrieval_metadata(selected: SelectedChunk) -> dict[str, Any]:
    metadata = evidence_metadata(selected)
    return {key: metadata[key] for key in RETRIEVAL_METADATA_KEYS}


def _option_values(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments as search option values; ``similarity_top_k`` is LlamaIndex's name for ``k``."""
    options = dict(options)
    if "similarity_top_k" in options:
        if options.get("k") is not None:
            raise InvalidInputError("give k or similarity_top_k, not both")
        options["k"] = options.pop("similarity_top_k")
    return options


def _options(options: dict[str, Any]) -> SearchOptions:
    return SearchOptions().override(**_option_values(options))
