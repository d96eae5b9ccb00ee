"""A model, its document index and search options: the retriever behind every framework adapter.

The LangChain and LlamaIndex adapters (SPEC §1, ``qrag_integrations``) only translate types; what a
retriever does lives here: chunking added documents while carrying their metadata to every chunk,
multi-step search with per-retriever defaults and per-call overrides (SPEC §3.5: ``k`` chunks = T
steps, beam width, early-stop threshold), the metadata attached to each retrieved chunk (step,
Q-value, chunk index, position ρ_t), thread safety, and saving/loading a populated retriever.

Thread safety: one lock guards the index and the model, so searches and additions from several
threads (or from an event loop's worker threads) run one at a time and never see a half-added
document. Torch work is CPU-bound anyway; serialising it costs no throughput on a CPU.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrag_core.atomic import Layout, atomic_directory
from qrag_core.chunking import Chunk, chunk_text
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.model_names import BASE_MODEL_ALIASES, DEFAULT_MODEL_NAME, shipped_model_names
from qrag_core.search import SearchResult, SelectedChunk

logger = logging.getLogger(__name__)

SESSION_FILE = "qrag_retriever.json"
INDEX_DIR = "index"
MODEL_DIR = "model"
SESSION_FORMAT_VERSION = 1
RETRIEVER_LAYOUT = Layout("retriever", (SESSION_FILE,), (SESSION_FILE, INDEX_DIR, MODEL_DIR))
"""What :meth:`RetrievalSession.save` writes: a save may replace only a directory like this."""

RETRIEVAL_METADATA_KEYS: tuple[str, ...] = ("doc_id", "chunk_index", "start", "end", "step", "q_value", "position")
"""Metadata keys every retrieved chunk gets on top of its source document's metadata."""


@dataclass(frozen=True)
class RetrievalOptions:
    """How a retriever searches; a field left at None uses the model's default (its QRAGConfig)."""

    k: int | None = None
    """Chunks to fetch, i.e. search steps T (default ``config.max_steps``)."""
    beam: int | None = None
    """Beam width B (1 = greedy; default ``config.beam_width``)."""
    expand_k: int | None = None
    """Top actions each beam is expanded by (default: the beam width)."""
    stop_threshold: float | None = None
    """Stop early when the best Q falls below this (default ``config.stop_threshold``)."""
    document_id: str | None = None
    """Search only this document of a multi-document index (default: all of them)."""

    def __post_init__(self) -> None:
        for name in ("k", "beam", "expand_k"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
                raise InvalidInputError(f"retrieval option {name} must be a positive integer, got {value!r}")
        if self.stop_threshold is not None and (
            isinstance(self.stop_threshold, bool) or not isinstance(self.stop_threshold, int | float)
        ):
            raise InvalidInputError(f"retrieval option stop_threshold must be a number, got {self.stop_threshold!r}")
        if self.document_id is not None and not isinstance(self.document_id, str):
            raise InvalidInputError(f"retrieval option document_id must be a string, got {self.document_id!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def override(self, **changes: Any) -> RetrievalOptions:
        """These options with ``changes`` applied; None values keep the current setting."""
        unknown = sorted(set(changes) - set(self.names()))
        if unknown:
            raise InvalidInputError(f"unknown retrieval option(s) {unknown}; known options: {list(self.names())}")
        return dataclasses.replace(self, **{name: value for name, value in changes.items() if value is not None})

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`qrag_core.search.search`."""
        return {
            "steps": self.k,
            "beam": self.beam,
            "expand_k": self.expand_k,
            "stop_threshold": self.stop_threshold,
            "document_id": self.document_id,
        }


def evidence_metadata(selected: SelectedChunk) -> dict[str, Any]:
    """The source document's metadata plus where the chunk is and why it was picked."""
    chunk = selected.chunk
    return {
        **chunk.metadata,
        "doc_id": chunk.doc_id,
        "chunk_index": chunk.index,
        "start": chunk.start,
        "end": chunk.end,
        "step": selected.step,
        "q_value": selected.q_value,
        "position": selected.position,
    }


def chunk_id(chunk: Chunk) -> str:
    """A stable identifier of a chunk inside an index: ``<doc_id>#<chunk index>``."""
    return f"{chunk.doc_id}#{chunk.index}"


class RetrievalSession:
    """A Q-RAG model with the documents added to it so far, searchable from several threads."""

    def __init__(
        self,
        model: QRAG,
        index: DocumentIndex | None = None,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        model_name: str | None = None,
    ) -> None:
        """``model_name``: the name or path ``model`` was loaded from, so :meth:`save` records it instead
        of writing the weights; None for a model built in memory (saved with the session)."""
        self.model = model
        model.eval()
        if index is None:
            index = DocumentIndex(model.action_encoder.fingerprint(), model.action_encoder.dim)
        else:
            model.check_index(index)
        self.index = index
        self.chunking = chunking or model.config.chunking
        self.cache = cache
        self.model_name = model_name
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        device: str | None = None,
    ) -> RetrievalSession:
        """A session on :meth:`QRAG.from_pretrained` (no name: the shipped default model)."""
        model = QRAG.from_pretrained(name_or_path, device=device)
        if name_or_path is None:
            name_or_path = _default_model_name()
        elif Path(name_or_path).expanduser().is_dir():
            name_or_path = str(Path(name_or_path).expanduser().resolve())
        return cls(model, chunking=chunking, cache=cache, model_name=name_or_path)

    # ----------------------------------------------------------------------------- adding documents
    @property
    def doc_ids(self) -> list[str]:
        return list(self.index.doc_ids)

    def __len__(self) -> int:
        """Number of chunks in the index."""
        return len(self.index)

    def add_texts(
        self,
        texts: Sequence[str],
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
    ) -> list[str]:
        """Chunk and index one document per text; each chunk carries its document's metadata.

        Returns the document ids (given ones, or fresh ones where ``ids`` is missing or None).
        """
        return self.add_segmented_texts([[text] for text in _as_list(texts, "texts")], metadatas, ids, chunking)

    def add_segmented_texts(
        self,
        documents: Sequence[Sequence[str]],
        metadatas: Sequence[dict[str, Any] | Sequence[dict[str, Any] | None] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
    ) -> list[str]:
        """Index documents that arrive already cut into consecutive segments (e.g. LlamaIndex nodes).

        Each segment is chunked on its own (a long segment gives several chunks) and the chunks are
        numbered through the whole document, so positions ρ_t span the document. ``metadatas[i]``
        is one dict for the whole document or one dict per segment. Offsets are in the document's
        segments joined by newlines.
        """
        documents = _as_list(documents, "documents")
        if not documents:
            raise InvalidInputError("no documents to add")
        metadatas = _as_list(metadatas, "metadatas") if metadatas is not None else [None] * len(documents)
        ids = _as_list(ids, "ids") if ids is not None else [None] * len(documents)
        for what, values in (("metadatas", metadatas), ("ids", ids)):
            if len(values) != len(documents):
                raise InvalidInputError(f"{len(documents)} documents but {len(values)} {what}")
        config = chunking or self.chunking
        with self._lock:
            doc_ids = self._new_doc_ids(ids)
            chunk_lists = [
                self._chunk_document(segments, meta, doc_id, config, position)
                for position, (segments, meta, doc_id) in enumerate(zip(documents, metadatas, doc_ids, strict=True))
            ]
            self.model.index_documents(chunk_lists, doc_ids=doc_ids, cache=self.cache, index=self.index)
        logger.info("indexed %d document(s), %d chunks", len(doc_ids), sum(len(c) for c in chunk_lists))
        return doc_ids

    def _new_doc_ids(self, ids: Sequence[str | None]) -> list[str]:
        given = [i for i in ids if i is not None]
        for doc_id in given:
            if not isinstance(doc_id, str) or not doc_id:
                raise InvalidInputError(f"document ids must be non-empty strings, got {doc_id!r}")
        taken = set(self.index.doc_ids)
        counts = Counter(given)
        clashes = sorted({i for i in given if i in taken or counts[i] > 1})
        if clashes:
            raise InvalidInputError(f"document id(s) {clashes} are already in the index or repeated")
        return [i if i is not None else uuid.uuid4().hex for i in ids]

    def _chunk_document(
        self,
        segments: Sequence[str],
        metadata: dict[str, Any] | Sequence[dict[str, Any] | None] | None,
        doc_id: str,
        config: ChunkingConfig,
        position: int,
    ) -> list[Chunk]:
        segments = _as_list(segments, f"document {position}")
        if not segments:
            raise InvalidInputError(f"document {position} ({doc_id}) has no text")
        if metadata is None or isinstance(metadata, dict):
            segment_metas = [metadata] * len(segments)
        else:
            segment_metas = _as_list(metadata, f"metadata of document {position}")
            if len(segment_metas) != len(segments):
                raise InvalidInputError(
                    f"document {position} ({doc_id}) has {len(segments)} segments but {len(segment_metas)} metadatas"
                )
        chunks: list[Chunk] = []
        offset = 0
        for text, meta in zip(segments, segment_metas, strict=True):
            if meta is not None and not isinstance(meta, dict):
                raise InvalidInputError(f"metadata of document {position} must be a dict, got {type(meta).__name__}")
            for piece in chunk_text(text, config, self.model.action_encoder.tokenizer, doc_id=doc_id, metadata=meta):
                chunks.append(
                    dataclasses.replace(piece, index=len(chunks), start=piece.start + offset, end=piece.end + offset)
                )
            offset += len(text) + 1
        return chunks

    # ----------------------------------------------------------------------------- search
    def search(self, question: str, options: RetrievalOptions | None = None) -> SearchResult:
        """Multi-step search over every added document (or ``options.document_id``)."""
        options = options or RetrievalOptions()
        with self._lock:
            if len(self.index) == 0:
                raise InvalidInputError("the retriever has no documents yet; add some with add_texts/add_documents")
            return self.model.search(question, self.index, **options.search_kwargs())

    # ----------------------------------------------------------------------------- persistence
    def save(
        self, directory: str | os.PathLike[str], options: RetrievalOptions | None = None, overwrite: bool = True
    ) -> None:
        """Write the index, how to get the model back (its name, or the model itself when it has none)
        and a retriever's ``options`` (read back by :func:`saved_options`).

        The directory is written atomically; saving over a saved retriever replaces it
        (``overwrite=False`` refuses that), any other non-empty directory is never replaced.
        """
        with self._lock, atomic_directory(directory, RETRIEVER_LAYOUT, overwrite) as tmp:
            self.index.save(tmp / INDEX_DIR)
            if self.model_name is not None:
                model_entry: dict[str, Any] = {"name": self.model_name}
            else:
                self.model.save_pretrained(tmp / MODEL_DIR)
                model_entry = {"saved": MODEL_DIR}
            meta = {
                "format_version": SESSION_FORMAT_VERSION,
                "model": model_entry,
                "state_fingerprint": self.model.state_encoder.fingerprint(),
                "model_config": self.model.config.to_dict(),
                "chunking": dataclasses.asdict(self.chunking),
                "options": dataclasses.asdict(options or RetrievalOptions()),
            }
            (tmp / SESSION_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        model: QRAG | None = None,
        cache: EmbeddingCache | None = None,
        device: str | None = None,
    ) -> RetrievalSession:
        """Reopen a saved session; ``model`` replaces the saved one (it must share its action encoder)."""
        directory = Path(directory)
        meta = _read_session_file(directory)
        try:
            model_entry = meta["model"]
            chunking = ChunkingConfig(**meta["chunking"])
            expected_state = meta["state_fingerprint"]
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{directory / SESSION_FILE} is corrupt: {err}") from err
        index = DocumentIndex.load(directory / INDEX_DIR)
        name: str | None = None
        if model is None:
            if "saved" in model_entry:
                model = QRAG.from_pretrained(str(directory / model_entry["saved"]), device=device)
            else:
                name = model_entry.get("name")
                model = QRAG.from_pretrained(name, device=device)
                if model.state_encoder.fingerprint() != expected_state:
                    logger.warning(
                        "%s now resolves to a different model than when this retriever was saved; "
                        "results will differ from before",
                        name,
                    )
        return cls(model, index=index, chunking=chunking, cache=cache, model_name=name)


def saved_options(directory: str | os.PathLike[str]) -> RetrievalOptions:
    """The retriever options saved with a session by :meth:`RetrievalSession.save`."""
    meta = _read_session_file(Path(directory))
    try:
        return RetrievalOptions(**meta.get("options", {}))
    except (TypeError, InvalidInputError) as err:
        raise CheckpointError(f"{Path(directory) / SESSION_FILE}: bad saved options: {err}") from err


def _read_session_file(directory: Path) -> dict[str, Any]:
    meta_path = directory / SESSION_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} is missing: {directory} is not a saved qrag retriever")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is corrupt: expected a JSON object")
    if meta.get("format_version", 0) > SESSION_FORMAT_VERSION:
        raise CheckpointError(f"{meta_path} was written by a newer qrag; upgrade qrag")
    return meta


def _default_model_name() -> str:
    """The name :meth:`QRAG.from_pretrained` loads when given none (so a saved session reloads that model)."""
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in shipped_model_names() else BASE_MODEL_ALIASES[0]


def _as_list(values: Any, what: str) -> list[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidInputError(f"{what} must be a list, got {type(values).__name__}")
    return list(values)
