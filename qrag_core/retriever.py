"""The retriever: a model and its document index, behind every framework adapter and the answerer.

The LangChain and LlamaIndex adapters (``qrag_integrations``) only translate types; what a retriever
does lives here: rebuilding a source from a text splitter's overlapping splits (so ρ_t spans the
whole source, :mod:`qrag_core.sources`), chunking it while carrying each split's metadata to its
chunks, replacing a document added again under the same id, deleting documents, multi-step search
(:class:`~qrag_core.search_options.SearchOptions`: ``k`` chunks = T steps, beam width, early-stop
threshold, a restriction to some documents, result order), the ``qrag_*`` metadata attached to each
retrieved chunk (:data:`RETRIEVAL_METADATA_KEYS`), thread safety, the shared embedding cache, and
saving/loading a populated retriever with its search options. Very long texts are encoded by the
resumable sharded builder (:func:`qrag_core.long_index.build_long_index`): adding one again after an
interruption skips the shards already encoded.

Thread safety: one lock guards the index and the model, so searches and additions from several
threads (or from an event loop's worker threads) run one at a time and never see a half-added
document. Torch work is CPU-bound anyway; serialising it costs no throughput on a CPU.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from qrag_core.atomic import Layout, atomic_directory, readable
from qrag_core.chunking import Chunk, chunk_text
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache, default_cache_dir, shared_cache
from qrag_core.errors import CheckpointError, DataFormatError, InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.long_index import build_long_index
from qrag_core.model import QRAG
from qrag_core.model_names import BASE_MODEL_ALIASES, DEFAULT_MODEL_NAME, shipped_model_names
from qrag_core.search import SearchResult, SelectedChunk, search
from qrag_core.search_options import SearchOptions
from qrag_core.sources import Piece, RebuiltSource, rebuild_source
from qrag_core.text_files import read_json_file
from qrag_core.validation import check_format_version, check_json_metadata

logger = logging.getLogger(__name__)

RETRIEVER_FILE = "qrag_retriever.json"
INDEX_DIR = "index"
MODEL_DIR = "model"
RETRIEVER_FORMAT_VERSION = 1


def _extra_files(directory: Path) -> list[str]:
    """The further files a saved retriever's own file lists (see ``extra_files`` of ``save``)."""
    try:
        listed = json.loads((directory / RETRIEVER_FILE).read_text(encoding="utf-8")).get("extra_files", [])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    return [name for name in listed if isinstance(name, str)] if isinstance(listed, list) else []


RETRIEVER_LAYOUT = Layout("retriever", (RETRIEVER_FILE,), (RETRIEVER_FILE, INDEX_DIR, MODEL_DIR), listed=_extra_files)
"""What :meth:`Retriever.save` writes: a save may replace only a directory like this."""

METADATA_PREFIX = "qrag_"
"""Prefix of every metadata key qrag adds; a user's metadata keys may not start with it."""
RETRIEVAL_METADATA_KEYS: tuple[str, ...] = tuple(
    METADATA_PREFIX + key for key in ("doc_id", "chunk_index", "start", "end", "step", "q_value", "position")
)
"""Metadata keys every retrieved chunk gets on top of its source's metadata: the document's id, the
chunk's index in it, its character offsets in the source, the search step that picked it, its Q-value
and its position ρ_t at that step."""
PIECE_ID_KEY = METADATA_PREFIX + "piece_id"
"""Metadata key holding the id of the split a chunk starts in (a LangChain split or LlamaIndex node id)."""
LONG_TEXT_CHARS = 2_000_000
"""Texts longer than this (about 500k tokens) are encoded by the resumable sharded builder."""
PROGRESS_MIN_CHUNKS = 2000
"""Adds that encode at least this many chunks show a progress bar unless told otherwise."""


def evidence_metadata(selected: SelectedChunk) -> dict[str, Any]:
    """The source's metadata plus where the chunk is and why it was picked (:data:`RETRIEVAL_METADATA_KEYS`)."""
    chunk = selected.chunk
    values = (chunk.doc_id, chunk.index, chunk.start, chunk.end, selected.step, selected.q_value, selected.position)
    return {**chunk.metadata, **dict(zip(RETRIEVAL_METADATA_KEYS, values, strict=True))}


def check_user_metadata(metadata: object, what: str) -> dict[str, Any]:
    """A copy of a user's metadata dict; refuses keys in qrag's namespace (they would be overwritten) and
    values a save could not write (:func:`~qrag_core.validation.check_json_metadata`)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise InvalidInputError(f"metadata of {what} must be a dict, got {type(metadata).__name__}")
    clashes = sorted(k for k in metadata if isinstance(k, str) and k.startswith(METADATA_PREFIX))
    if clashes:
        raise InvalidInputError(
            f"metadata of {what} has key(s) {clashes}: keys starting with {METADATA_PREFIX!r} are reserved for "
            "qrag's retrieval metadata; rename them"
        )
    check_json_metadata(metadata, what)
    return dict(metadata)


def chunk_id(chunk: Chunk) -> str:
    """A stable identifier of a chunk inside an index: ``<doc_id>#<chunk index>``."""
    return f"{chunk.doc_id}#{chunk.index}"


class Retriever:
    """A Q-RAG model with the documents added to it so far, searchable from several threads."""

    def __init__(
        self,
        model: QRAG,
        index: DocumentIndex | None = None,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        model_name: str | None = None,
        long_text_chars: int = LONG_TEXT_CHARS,
    ) -> None:
        """``cache``: an embedding cache, True for the shared on-disk one (``$QRAG_CACHE_DIR``, opened on
        first use) or None/False for none. ``model_name``: the name or path ``model`` was loaded from, so
        :meth:`save` records it instead of writing the weights; None for a model built in memory (saved
        with the retriever)."""
        self.model = model
        model.eval()
        if index is None:
            index = DocumentIndex(model.action_encoder.fingerprint(), model.action_encoder.dim)
        else:
            model.check_index(index)
        self.index = index
        self.chunking = chunking or model.config.chunking
        self._cache = cache
        self.model_name = model_name
        self.long_text_chars = long_text_chars
        self._lock = threading.RLock()

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | None = None,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | bool | None = True,
        device: str | None = None,
    ) -> Retriever:
        """A retriever on :meth:`QRAG.from_pretrained` (no name: the shipped default model)."""
        model = QRAG.from_pretrained(name_or_path, device=device)
        if name_or_path is None:
            name_or_path = _default_model_name()
        elif Path(name_or_path).expanduser().is_dir():
            name_or_path = str(Path(name_or_path).expanduser().resolve())
        return cls(model, chunking=chunking, cache=cache, model_name=name_or_path)

    @property
    def cache(self) -> EmbeddingCache | None:
        """The embedding cache in use (the shared one is opened here, on first use)."""
        if self._cache is True:
            self._cache = shared_cache()
        return self._cache or None

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
        show_progress: bool | None = None,
        ordered: bool | None = None,
    ) -> list[str]:
        """Chunk and index one document per text; each chunk carries its document's metadata.

        Returns the document ids: the given ones, or where ``ids`` is missing or None, one derived from
        the text and metadata (adding the same document again replaces it instead of duplicating it).
        ``ordered``: see :meth:`add_sources`.
        """
        texts = _as_list(texts, "texts")
        metadatas = _as_list(metadatas, "metadatas") if metadatas is not None else [None] * len(texts)
        if len(metadatas) != len(texts):
            raise InvalidInputError(f"{len(texts)} texts but {len(metadatas)} metadatas")
        sources = [[Piece(text, 0, meta)] for text, meta in zip(texts, metadatas, strict=True)]
        return self.add_sources(sources, ids, chunking, show_progress, ordered)

    def add_sources(
        self,
        sources: Sequence[Sequence[Piece]],
        ids: Sequence[str | None] | None = None,
        chunking: ChunkingConfig | None = None,
        show_progress: bool | None = None,
        ordered: bool | None = None,
    ) -> list[str]:
        """Index source documents, each given as its splits (:func:`qrag_core.sources.rebuild_source`).

        A source whose id is already in the index replaces that document where it is (its place in document
        order is kept). The batch is all or nothing: a refused or failing source leaves the index as it was.
        ``show_progress``: a progress bar while encoding (None: for adds of at least
        :data:`PROGRESS_MIN_CHUNKS` chunks). ``ordered``: True for documents whose chunks are read in order
        (a story, a contract: positions ρ_t), False for independent passages (a FAQ, Wikipedia paragraphs:
        positions off, docs/method.md §3), None to decide per document: a document of one chunk is a passage,
        a longer one is ordered. Returns the ids. The chunks are encoded with the backend that built the index
        (:meth:`QRAG.index_backend`), whatever the model's own is now, so its vectors never mix two backends;
        an empty index takes the model's current backend.
        """
        if ordered is not None and not isinstance(ordered, bool):
            raise InvalidInputError(f"ordered must be True, False or None, got {ordered!r}")
        sources = _as_list(sources, "sources")
        if not sources:
            raise InvalidInputError("no documents to add")
        ids = _as_list(ids, "ids") if ids is not None else [None] * len(sources)
        if len(ids) != len(sources):
            raise InvalidInputError(f"{len(sources)} documents but {len(ids)} ids")
        config = chunking or self.chunking
        rebuilt = [self._rebuild(pieces, position, ids[position]) for position, pieces in enumerate(sources)]
        doc_ids = _document_ids(ids, rebuilt)
        unique = dict(zip(doc_ids, rebuilt, strict=True))  # an id derived twice is the same document twice
        with self._lock:
            if len(self.index) == 0:  # the model's backend may have changed since the index was opened
                self.index = DocumentIndex(self.model.action_encoder.fingerprint(), self.index.dim)
            backend = self.model.index_backend(self.index)
            fresh = DocumentIndex(self.index.fingerprint, self.index.dim)
            chunk_lists = {doc_id: self._chunk(source, doc_id, config) for doc_id, source in unique.items()}
            long = {doc_id for doc_id, source in unique.items() if len(source.text) > self.long_text_chars}
            texts = [c.text for doc_id, chunks in chunk_lists.items() if doc_id not in long for c in chunks]
            if show_progress is None:
                show_progress = len(texts) >= PROGRESS_MIN_CHUNKS
            content = (
                self.model.encode_chunks(texts, self.cache, show_progress=show_progress, backend=backend)
                if texts
                else None
            )
            first = 0
            for doc_id, chunks in chunk_lists.items():
                if doc_id in long:
                    embeddings = self._encode_long(unique[doc_id], doc_id, config, show_progress, backend)
                else:
                    embeddings = content[first : first + len(chunks)]
                    first += len(chunks)
                fresh.add(chunks, embeddings, doc_id=doc_id, ordered=len(chunks) > 1 if ordered is None else ordered)
            replaced = [doc_id for doc_id in unique if doc_id in self.index.doc_ids]
            for doc_id in fresh.doc_ids:  # a replaced document keeps its place in document order
                self.index.add_from(fresh, doc_id, replace=True)
        logger.info("indexed %d document(s) (%d replaced), %d chunks", len(unique), len(replaced), len(fresh.chunks))
        return doc_ids

    def _rebuild(self, pieces: Sequence[Piece], position: int, doc_id: str | None) -> RebuiltSource:
        """The source of document ``position`` of a batch (id ``doc_id``, None: derived later), metadata checked."""
        pieces = _as_list(pieces, f"document {position}")
        name = f"document {position}" if doc_id is None else f"document {position} (id {doc_id!r})"
        for number, piece in enumerate(pieces):
            if not isinstance(piece, Piece):
                raise InvalidInputError(f"document {position}: split {number} is a {type(piece).__name__}, not a Piece")
        checked = [
            dataclasses.replace(
                piece,
                metadata=check_user_metadata(piece.metadata, name if len(pieces) == 1 else f"{name}, split {number}"),
            )
            for number, piece in enumerate(pieces)
        ]
        return rebuild_source(checked, f"document {position}")

    def _chunk(self, source: RebuiltSource, doc_id: str, config: ChunkingConfig) -> list[Chunk]:
        """Chunks of a rebuilt source, offsets in the source, each with the metadata of its split."""
        chunks = chunk_text(source.text, config, self.model.action_encoder.tokenizer, doc_id=doc_id)
        for chunk in chunks:
            piece = source.piece_at(source.offset + chunk.start)
            chunk.start += source.offset
            chunk.end += source.offset
            chunk.metadata = dict(piece.metadata)
            if piece.piece_id is not None:
                chunk.metadata[PIECE_ID_KEY] = piece.piece_id
        return chunks

    def _encode_long(
        self, source: RebuiltSource, doc_id: str, config: ChunkingConfig, show_progress: bool, backend: str
    ) -> torch.Tensor:
        """Embeddings of a very long text on ``backend`` through the resumable sharded builder (its work dir is
        kept under the cache directory until the text is encoded, so an interrupted add resumes)."""
        fingerprint = self.model.action_encoder.fingerprint_for(backend)
        key = hashlib.blake2b(
            f"{fingerprint}|{config}|{doc_id}".encode() + source.text.encode("utf-8"),
            digest_size=12,
        ).hexdigest()
        directory = default_cache_dir() / "long-index" / key
        logger.info("%s: %d characters; encoding it in resumable shards (%s)", doc_id, len(source.text), directory)
        built = build_long_index(
            self.model,
            source.text,
            directory,
            doc_id,
            config,
            cache=self.cache,
            show_progress=show_progress,
            backend=backend,
        )
        content = built.content
        shutil.rmtree(directory, ignore_errors=True)
        return content

    def delete(self, ids: Sequence[str]) -> None:
        """Remove documents by id; all or nothing (an unknown id removes none and is named)."""
        ids = _as_list(ids, "ids")
        with self._lock:
            unknown = sorted({i for i in ids if i not in self.index.doc_ids}, key=str)
            if unknown:
                raise InvalidInputError(f"no document(s) {unknown} in the index; nothing was deleted")
            for doc_id in dict.fromkeys(ids):
                self.index.remove(doc_id)
        logger.info("deleted %d document(s)", len(set(ids)))

    # ----------------------------------------------------------------------------- search
    def search(self, question: str, options: SearchOptions | None = None, **overrides: Any) -> SearchResult:
        """Multi-step search over every added document (or some, see :class:`SearchOptions`); ``overrides``
        change single options of ``options``."""
        with self._lock:
            if len(self.index) == 0:
                raise InvalidInputError("the retriever has no documents yet; add some with add_texts/add_documents")
            return search(self.model, question, self.index, options, **overrides)

    # ----------------------------------------------------------------------------- persistence
    def save(
        self,
        directory: str | os.PathLike[str],
        options: SearchOptions | None = None,
        overwrite: bool = True,
        extra_files: Mapping[str, str] | None = None,
    ) -> None:
        """Write the index, how to get the model back (its name, or the model itself when it has none)
        and a retriever's ``options`` (read back by :func:`saved_options`).

        The directory is written atomically, with ``extra_files`` (file name → UTF-8 text, e.g. an
        adapter's own records) in it; saving over a saved retriever replaces it (``overwrite=False``
        refuses that), any other non-empty directory is never replaced.
        """
        extra_files = dict(extra_files or {})
        own = {RETRIEVER_FILE, INDEX_DIR, MODEL_DIR}
        if any(name in own or Path(name).name != name or name.startswith(".") for name in extra_files):
            raise InvalidInputError(f"extra files need plain names other than qrag's own, got {sorted(extra_files)}")
        with self._lock, atomic_directory(directory, RETRIEVER_LAYOUT, overwrite) as tmp:
            for name, text in extra_files.items():
                (tmp / name).write_text(text, encoding="utf-8")
            self.index.save(tmp / INDEX_DIR)
            if self.model_name is not None:
                model_entry: dict[str, Any] = {"name": self.model_name}
            else:
                self.model.save_pretrained(tmp / MODEL_DIR)
                model_entry = {"saved": MODEL_DIR}
            meta = {
                "format_version": RETRIEVER_FORMAT_VERSION,
                "model": model_entry,
                "state_fingerprint": self.model.state_encoder.weights_fingerprint(),
                "model_config": self.model.config.to_dict(),
                "chunking": dataclasses.asdict(self.chunking),
                "options": (options or SearchOptions()).as_dict(),
                "extra_files": sorted(extra_files),
            }
            (tmp / RETRIEVER_FILE).write_text(json.dumps(meta, indent=2))

    @classmethod
    def load(
        cls,
        directory: str | os.PathLike[str],
        model: QRAG | None = None,
        cache: EmbeddingCache | bool | None = True,
        device: str | None = None,
    ) -> Retriever:
        """Reopen a saved retriever, or a bare index (``qrag-index build`` output) on ``model`` or the
        default model; ``model`` replaces the saved one (it must share its action encoder)."""
        directory = Path(readable(directory))
        if not (directory / RETRIEVER_FILE).is_file() and directory.is_dir() and any(directory.iterdir()):
            return cls._open_index(directory, model, cache, device)
        meta = _read_retriever_file(directory)
        try:
            model_entry = meta["model"]
            chunking = ChunkingConfig.from_dict(meta["chunking"])  # an older retriever keeps its regex chunking
            expected_state = meta["state_fingerprint"]
        except (KeyError, TypeError, InvalidInputError) as err:
            raise CheckpointError(f"{directory / RETRIEVER_FILE} is corrupt: {err}") from err
        index = DocumentIndex.load(directory / INDEX_DIR)
        name: str | None = None
        if model is None:
            if "saved" in model_entry:
                model = QRAG.from_pretrained(str(directory / model_entry["saved"]), device=device)
            else:
                name = model_entry.get("name")
                model = QRAG.from_pretrained(name, device=device)
                if model.state_encoder.weights_fingerprint() != expected_state:
                    logger.warning(
                        "%s now resolves to a different model than when this retriever was saved; "
                        "results will differ from before",
                        name,
                    )
        return cls(model, index=index, chunking=chunking, cache=cache, model_name=name)

    @classmethod
    def _open_index(
        cls, directory: Path, model: QRAG | None, cache: EmbeddingCache | bool | None, device: str | None
    ) -> Retriever:
        try:
            index = DocumentIndex.load(directory)
        except CheckpointError as err:
            raise CheckpointError(
                f"{directory} is neither a saved qrag retriever ({RETRIEVER_FILE} is missing) nor a qrag index: {err}"
            ) from err
        name = None
        if model is None:
            model, name = QRAG.from_pretrained(None, device=device), _default_model_name()
        return cls(model, index=index, cache=cache, model_name=name)


def saved_options(directory: str | os.PathLike[str]) -> SearchOptions:
    """The search options saved with a retriever by :meth:`Retriever.save` (defaults for a bare index)."""
    directory = Path(readable(directory))
    if not (directory / RETRIEVER_FILE).is_file() and (directory / "index.json").is_file():
        return SearchOptions()
    meta = _read_retriever_file(directory)
    try:
        return SearchOptions(**meta.get("options", {}))
    except (TypeError, InvalidInputError) as err:
        raise CheckpointError(f"{directory / RETRIEVER_FILE}: bad saved options: {err}") from err


def _read_retriever_file(directory: Path) -> dict[str, Any]:
    meta_path = directory / RETRIEVER_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path} is missing: {directory} is not a saved qrag retriever")
    try:
        meta = read_json_file(meta_path)
    except DataFormatError as err:
        raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_path} is corrupt: expected a JSON object")
    check_format_version(meta, RETRIEVER_FORMAT_VERSION, meta_path)
    return meta


def _default_model_name() -> str:
    """The name :meth:`QRAG.from_pretrained` loads when given none (so a saved retriever reloads that model)."""
    return DEFAULT_MODEL_NAME if DEFAULT_MODEL_NAME in shipped_model_names() else BASE_MODEL_ALIASES[0]


def _document_ids(ids: Sequence[str | None], sources: Sequence[RebuiltSource]) -> list[str]:
    """The given ids (checked), and for the others an id derived from the text and first metadata."""
    given = [i for i in ids if i is not None]
    for doc_id in given:
        if not isinstance(doc_id, str) or not doc_id:
            raise InvalidInputError(f"document ids must be non-empty strings, got {doc_id!r}")
    repeated = sorted(i for i, n in Counter(given).items() if n > 1)
    if repeated:
        raise InvalidInputError(f"document id(s) {repeated} are repeated in one batch")
    return [doc_id if doc_id is not None else content_id(source) for doc_id, source in zip(ids, sources, strict=True)]


def content_id(source: RebuiltSource) -> str:
    """An id for a document added without one: the same text and metadata always get the same id."""
    metadata = json.dumps(source.spans[0][2].metadata, sort_keys=True, default=repr)
    digest = hashlib.blake2b(f"{source.offset}|{metadata}|{source.text}".encode(), digest_size=16)
    return digest.hexdigest()


def _as_list(values: Any, what: str) -> list[Any]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise InvalidInputError(f"{what} must be a list, got {type(values).__name__}")
    return list(values)
