"""A document index: chunks plus their cached content embeddings e_i (docs/method.md §2).

:meth:`DocumentIndex.build` is the one way to make an index from documents (texts, chunk texts or
chunks, chunked and encoded by a model's action encoder); :func:`qrag_core.long_index.build_long_index`
does the same for one very long document in resumable shards, chunking it with :func:`document_chunks`.

Content embeddings are computed once per document and encoder; every retrieval step only
re-rotates them (O(N·d)). They are stored as float16 (half the memory of float32; scores are
computed in float32). The index records the fingerprint of the encoder that made them, so a model
with a different action transformer refuses it instead of silently scoring garbage, while models
that share the frozen base action transformer (the default) all reuse one index.

An index can hold several documents (open-domain use): positions are computed per document and a
search can be restricted to one of them. Each document is either ordered (a story, a book: its chunk
order matters and ρ_t is used) or a collection of independent passages (positions off); the index
records which.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file

from qrag_core.atomic import Layout, atomic_directory, readable, save_tensors
from qrag_core.chunking import Chunk, chunk_text, chunks_from_texts
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import CheckpointError, DataFormatError, InvalidInputError
from qrag_core.text_files import iter_json_lines, read_json_file
from qrag_core.validation import check_format_version, check_json_metadata, is_int

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)

INDEX_FORMAT_VERSION = 1
INDEX_FILE = "index.json"
CHUNKS_FILE = "chunks.jsonl"
EMBEDDINGS_FILE = "embeddings.safetensors"
INDEX_LAYOUT = Layout("index", (INDEX_FILE,), (INDEX_FILE, CHUNKS_FILE, EMBEDDINGS_FILE))
"""What :meth:`DocumentIndex.save` writes: a save may replace only a directory like this."""


class DocumentIndex:
    """Chunks of one or more documents with their content embeddings, in document order."""

    def __init__(self, fingerprint: str, dim: int) -> None:
        self.fingerprint = fingerprint
        self.dim = dim
        self.chunks: list[Chunk] = []
        self.doc_ids: list[str] = []
        self._doc_starts: list[int] = []
        self.ordered: list[bool] = []
        """Per document: True when its chunk order matters (ρ_t), False for a passage collection."""
        self._blocks: list[torch.Tensor] = []
        self._content: torch.Tensor | None = torch.empty((0, dim), dtype=torch.float16)
        self._derived: dict[tuple[Hashable, ...], Any] = {}

    @classmethod
    def build(
        cls,
        model: QRAG,
        documents: str | Sequence[str] | Sequence[Sequence[str]] | Sequence[Sequence[Chunk]],
        doc_ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any] | None] | None = None,
        chunking: ChunkingConfig | None = None,
        cache: EmbeddingCache | None = None,
        show_progress: bool = False,
        ordered: bool | Sequence[bool] = True,
    ) -> DocumentIndex:
        """Chunk and encode documents with ``model``'s action encoder into a new index.

        Each document is a text (chunked by ``chunking``, default the model's), its chunk texts, or its
        :class:`Chunk` objects. ``doc_ids`` and ``metadatas`` give one entry per document (default ids
        "0", "1", ...); ``cache`` reuses content embeddings computed before; ``ordered`` (one flag, or
        one per document) is True for a document whose chunk order matters (ρ_t), False for a collection
        of independent passages (positions off). Very long documents: :func:`qrag_core.long_index.build_long_index`.
        """
        if not isinstance(documents, (str, list, tuple)):
            raise InvalidInputError(
                f"documents must be a string or a list of documents, got {type(documents).__name__}"
            )
        docs = [documents] if isinstance(documents, str) else list(documents)
        if not docs:
            raise InvalidInputError("no documents to index")
        for name, values in (("doc_ids", doc_ids), ("metadatas", metadatas)):
            if values is not None and (isinstance(values, (str, dict)) or len(values) != len(docs)):
                given = f"{len(values)}" if not isinstance(values, (str, dict)) else f"a {type(values).__name__}"
                raise InvalidInputError(f"{name} must be a list with one entry per document: {len(docs)}, got {given}")
        flags = [ordered] * len(docs) if isinstance(ordered, bool) else list(ordered)
        if len(flags) != len(docs) or not all(isinstance(flag, bool) for flag in flags):
            raise InvalidInputError(f"ordered must be True, False or one of them per document ({len(docs)})")
        if doc_ids is not None and not all(isinstance(d, str) and d for d in doc_ids):
            raise InvalidInputError("every doc_id must be a non-empty string")
        if metadatas is not None and not all(m is None or isinstance(m, dict) for m in metadatas):
            raise InvalidInputError("every entry of metadatas must be a dict (or None)")
        chunk_lists = []
        for i, doc in enumerate(docs):
            doc_id = doc_ids[i] if doc_ids is not None else str(i)
            meta = metadatas[i] if metadatas is not None else None
            if isinstance(doc, str):
                chunk_lists.append(document_chunks(model, doc, doc_id, chunking, meta))
            elif isinstance(doc, (list, tuple)) and doc and all(isinstance(c, Chunk) for c in doc):
                chunk_lists.append(list(doc))
            elif isinstance(doc, (list, tuple)) and doc:
                chunk_lists.append(chunks_from_texts(doc, doc_id=doc_id, metadata=meta))
            else:
                raise InvalidInputError(
                    f"document {i} must be a non-empty string or list of chunk texts, got {type(doc).__name__}"
                )
            check_chunk_metadata(chunk_lists[-1], chunk_lists[-1][0].doc_id)  # before the costly encoding
        content = model.encode_chunks(
            [c.text for chunks in chunk_lists for c in chunks], cache, show_progress=show_progress
        )
        index = cls(model.action_encoder.fingerprint(), model.action_encoder.dim)
        first = 0
        for chunks, flag in zip(chunk_lists, flags, strict=True):
            index._insert(chunks, content[first : first + len(chunks)], chunks[0].doc_id, flag, metadata_checked=True)
            first += len(chunks)
        return index

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def content(self) -> torch.Tensor:
        """(N, d) float16 content embeddings, in chunk order."""
        if self._content is None:
            self._content = torch.cat(self._blocks) if self._blocks else torch.empty((0, self.dim), dtype=torch.float16)
            self._blocks = [self._content]
        return self._content

    def derived(self, key: tuple[Hashable, ...], compute: Callable[[], Any]) -> Any:
        """Data derived from this index (a model's action vectors, the lexical term weights, the copy of some
        documents a restricted search uses), computed once per key.

        The first item of ``key`` names the kind of data; a new key replaces the value of the same kind (e.g.
        the action vectors of an older weight version), values of other kinds stay. All of it is forgotten
        whenever a document is added or removed.
        """
        if key not in self._derived:
            for old in [k for k in self._derived if k[0] == key[0]]:
                del self._derived[old]
            self._derived[key] = compute()
        return self._derived[key]

    @property
    def doc_starts(self) -> torch.Tensor:
        return torch.tensor(self._doc_starts, dtype=torch.long)

    def add(
        self,
        chunks: Sequence[Chunk],
        embeddings: torch.Tensor,
        doc_id: str | None = None,
        ordered: bool = True,
        replace: bool = False,
    ) -> str:
        """Append one document's chunks (indices 0..n-1 inside it) and their content embeddings.

        ``ordered=False`` marks the chunks as a collection of independent passages (positions off).
        ``replace=True``: a document already under ``doc_id`` is replaced where it is (keeping its place
        in document order) instead of refused.
        """
        return self._insert(chunks, embeddings, doc_id, ordered, replace)

    def _insert(
        self,
        chunks: Sequence[Chunk],
        embeddings: torch.Tensor,
        doc_id: str | None,
        ordered: bool,
        replace: bool = False,
        metadata_checked: bool = False,
    ) -> str:
        """:meth:`add`; ``metadata_checked``: the chunks' metadata passed :func:`check_chunk_metadata` already
        (chunks copied from another index, or checked before encoding), so it is not serialised again."""
        if not isinstance(ordered, bool):
            raise InvalidInputError(f"ordered must be True or False, got {ordered!r}")
        if not chunks:
            raise InvalidInputError("a document must have at least one chunk")
        if embeddings.shape != (len(chunks), self.dim):
            raise InvalidInputError(
                f"expected embeddings of shape {(len(chunks), self.dim)}, got {tuple(embeddings.shape)}"
            )
        doc_id = doc_id if doc_id is not None else str(len(self.doc_ids))
        if doc_id in self.doc_ids and not replace:
            raise InvalidInputError(f"document id {doc_id!r} is already in the index")
        if not metadata_checked:
            check_chunk_metadata(chunks, doc_id)
        embeddings = embeddings.to(torch.float16).cpu()
        if doc_id in self.doc_ids:
            self._replace(self.doc_ids.index(doc_id), chunks, embeddings, ordered)
            return doc_id
        self._doc_starts.append(len(self.chunks))
        self.ordered.append(ordered)
        self.doc_ids.append(doc_id)
        self.chunks.extend(chunks)
        self._blocks.append(embeddings)
        self._content = None
        self._derived.clear()
        return doc_id

    def _replace(self, pos: int, chunks: Sequence[Chunk], embeddings: torch.Tensor, ordered: bool) -> None:
        """Put ``chunks`` and their embeddings in place of those of the ``pos``-th document; the documents
        after it shift by the difference in length (positions ρ_t are per document, so theirs stay)."""
        start, end = self.document_range(self.doc_ids[pos])
        content = self.content
        self._content = torch.cat([content[:start], embeddings, content[end:]])
        self._blocks = [self._content]
        self.chunks[start:end] = chunks
        self.ordered[pos] = ordered
        shift = len(chunks) - (end - start)
        self._doc_starts[pos + 1 :] = [s + shift for s in self._doc_starts[pos + 1 :]]
        self._derived.clear()

    def add_from(self, other: DocumentIndex, doc_id: str, replace: bool = False) -> None:
        """Append document ``doc_id`` of ``other`` (its chunks, embeddings and ordered flag); ``replace``: as
        in :meth:`add`."""
        start, end = other.document_range(doc_id)
        flag = other.ordered[other.doc_ids.index(doc_id)]
        self._insert(other.chunks[start:end], other.content[start:end], doc_id, flag, replace, metadata_checked=True)

    def remove(self, doc_id: str) -> None:
        """Drop one document's chunks and embeddings; the documents after it move up."""
        start, end = self.document_range(doc_id)
        pos = self.doc_ids.index(doc_id)
        content = self.content
        self._content = torch.cat([content[:start], content[end:]])
        self._blocks = [self._content]
        del self.chunks[start:end]
        del self.doc_ids[pos]
        del self._doc_starts[pos]
        del self.ordered[pos]
        self._doc_starts[pos:] = [s - (end - start) for s in self._doc_starts[pos:]]
        self._derived.clear()

    def document_range(self, doc_id: str) -> tuple[int, int]:
        """Global [start, end) chunk range of one document."""
        try:
            pos = self.doc_ids.index(doc_id)
        except ValueError:
            raise InvalidInputError(f"no document {doc_id!r} in the index (it has {len(self.doc_ids)})") from None
        end = self._doc_starts[pos + 1] if pos + 1 < len(self._doc_starts) else len(self.chunks)
        return self._doc_starts[pos], end

    def save(self, directory: str | os.PathLike[str], overwrite: bool = True) -> None:
        """Write the index to a directory atomically (a crash leaves the previous index intact).

        Saving over a qrag index replaces it (``overwrite=False`` refuses that); any other non-empty
        directory is never replaced (:class:`~qrag_core.errors.UnsafeOutputError`).
        """
        with atomic_directory(directory, INDEX_LAYOUT, overwrite) as tmp:
            save_tensors({"content": self.content}, tmp / EMBEDDINGS_FILE)
            with open(tmp / CHUNKS_FILE, "w", encoding="utf-8") as f:
                for chunk in self.chunks:
                    f.write(json.dumps(asdict(chunk), ensure_ascii=False) + "\n")
            meta = {
                "format_version": INDEX_FORMAT_VERSION,
                "fingerprint": self.fingerprint,
                "dim": self.dim,
                "doc_ids": self.doc_ids,
                "doc_starts": self._doc_starts,
                "ordered": self.ordered,
            }
            (tmp / INDEX_FILE).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> DocumentIndex:
        """The index :meth:`save` wrote to ``directory`` (CheckpointError if it is missing or corrupt)."""
        directory = Path(readable(directory))
        meta_path = directory / "index.json"
        if not meta_path.is_file():
            raise CheckpointError(f"{meta_path} is missing: {directory} is not a saved qrag index")
        try:
            meta = read_json_file(meta_path)
            if not isinstance(meta, dict):
                raise TypeError("expected a JSON object")
            check_format_version(meta, INDEX_FORMAT_VERSION, meta_path)
            index = cls(meta["fingerprint"], int(meta["dim"]))
            doc_ids, doc_starts = list(meta["doc_ids"]), list(meta["doc_starts"])
            ordered = list(meta.get("ordered", [True] * len(doc_ids)))  # indexes saved before the flag: ordered
            if len(ordered) != len(doc_ids) or not all(isinstance(flag, bool) for flag in ordered):
                raise ValueError(f"'ordered' must hold one true/false per document, got {ordered!r}")
        except (KeyError, TypeError, ValueError) as err:  # DataFormatError (undecodable, invalid JSON) included
            raise CheckpointError(f"{meta_path} is corrupt: {err}") from err
        try:
            content = load_file(str(directory / "embeddings.safetensors"))["content"]
        except Exception as err:  # safetensors raises several types for truncated or missing files
            raise CheckpointError(f"{directory / 'embeddings.safetensors'} cannot be read: {err}") from err
        chunks_path = directory / "chunks.jsonl"
        try:
            chunks = [_chunk_from_row(row, chunks_path, line) for line, row in iter_json_lines(chunks_path)]
        except (OSError, DataFormatError) as err:
            raise CheckpointError(f"{chunks_path} cannot be read: {err}") from err
        if content.shape != (len(chunks), index.dim) or len(doc_ids) != len(doc_starts):
            raise CheckpointError(
                f"{directory}: {len(chunks)} chunks but embeddings of shape {tuple(content.shape)}; index corrupt"
            )
        index.chunks, index.doc_ids, index._doc_starts, index.ordered = chunks, doc_ids, doc_starts, ordered
        index._blocks, index._content = [content], content
        return index


def document_chunks(
    model: QRAG,
    text: str,
    doc_id: str,
    chunking: ChunkingConfig | None = None,
    metadata: dict[str, Any] | None = None,
) -> list[Chunk]:
    """The chunks of one document text under ``model``: ``chunking`` (default the model's) with its tokenizer."""
    return chunk_text(
        text, chunking or model.config.chunking, model.action_encoder.tokenizer, doc_id=doc_id, metadata=metadata
    )


def check_chunk_metadata(chunks: Sequence[Chunk], doc_id: str) -> None:
    """The metadata of every chunk of document ``doc_id`` can be saved (:func:`check_json_metadata`)."""
    for chunk in chunks:
        if chunk.metadata:
            check_json_metadata(chunk.metadata, f"document {doc_id!r}, chunk {chunk.index}")


_CHUNK_FIELDS: dict[str, type] = {"text": str, "index": int, "start": int, "end": int, "doc_id": str, "metadata": dict}
"""The fields of a saved chunk and their JSON types."""


def _chunk_from_row(row: Any, path: Path, line: int) -> Chunk:
    """The :class:`Chunk` a ``chunks.jsonl`` line holds; DataFormatError names the line and a bad field."""
    if not isinstance(row, dict):
        raise DataFormatError(str(path), line, f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(_CHUNK_FIELDS))
    if unknown:
        raise DataFormatError(str(path), line, f"unknown fields {unknown}; a chunk has {list(_CHUNK_FIELDS)}")
    missing = [name for name in ("text", "index") if name not in row]
    if missing:
        raise DataFormatError(str(path), line, f"missing fields {missing}")
    for name, value in row.items():
        kind = _CHUNK_FIELDS[name]
        if not ((is_int(value) and value >= 0) if kind is int else isinstance(value, kind)):
            wanted = "an integer >= 0" if kind is int else f"a JSON {'string' if kind is str else 'object'}"
            raise DataFormatError(str(path), line, f"field {name!r} must be {wanted}, got {value!r}")
    return Chunk(**row)
