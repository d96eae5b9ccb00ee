"""Indexing very long documents (10M tokens and more): sharded, resumable, bounded in memory.

Encoding dominates (about 85 chunks of 64 tokens per second on two CPU cores, so a 10M-token book
takes over an hour), so the work is cut into shards of chunks. Each encoded shard is written to disk
atomically before the next begins; after a kill, running the same call again skips the finished
shards. Each shard records which document, model and chunking it was made for, so a damaged or foreign
shard (or a damaged manifest) is detected and only that part is encoded again. Embeddings are kept as
float16 (a 10M-token document in one-sentence chunks is about 400k chunks, 300 MB), and the finished
index is an ordinary :class:`DocumentIndex` directory that reloads in seconds without re-encoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import safe_open
from tqdm.auto import tqdm

from qrag_core.atomic import Layout, check_replaceable, remove_leftover_files, save_tensors, write_file
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.index import INDEX_LAYOUT, DocumentIndex, document_chunks

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
PARTIAL_LAYOUT = Layout("partial index", (MANIFEST,), (MANIFEST, "shard-*.safetensors", ".tmp-*"))
"""What ``<directory>.partial`` holds while an index is built; only such a directory is ever removed."""
ShardEncoder = Callable[[Sequence[tuple[int, list[str]]]], Iterator[tuple[int, torch.Tensor]]]
"""Encodes shards given as ``(number, chunk texts)``, yielding ``(number, float16 embeddings)`` as each is done."""


def _manifest(fingerprint: str, document: str, chunking: ChunkingConfig, n: int, shard_size: int) -> dict:
    digest = hashlib.blake2b(document.encode("utf-8"), digest_size=16).hexdigest()
    return {
        "fingerprint": fingerprint,
        "document": digest,
        "chunking": vars(chunking),
        "chunks": n,
        "shard": shard_size,
    }


def _read_manifest(path: Path) -> dict | None:
    """The manifest of earlier partial work, or None when there is none or it is damaged."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        logger.warning("%s is damaged (%s); writing it again and checking every shard", path, err)
        return None


def _work_directory(directory: Path) -> Path:
    """Where the unfinished build of an index at ``directory`` lives: ``<directory>.partial``."""
    return directory.with_name(directory.name + ".partial")


def partial_fingerprint(directory: str | os.PathLike[str]) -> str | None:
    """The action-encoder fingerprint of the unfinished build of an index at ``directory`` (so that a resumed
    build can encode with the same backend), or None when there is none."""
    previous = _read_manifest(_work_directory(Path(directory)) / MANIFEST)
    fingerprint = previous.get("fingerprint") if isinstance(previous, dict) else None
    return fingerprint if isinstance(fingerprint, str) else None


def _read_shard(path: Path, key: str, rows: int, dim: int) -> torch.Tensor | None:
    """The embeddings of a finished shard, or None when it is missing, damaged or from other work."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            content = f.get_tensor("content")
    except Exception as err:  # safetensors raises several types for truncated or foreign files
        logger.warning("%s is damaged (%s); encoding it again", path, err)
        return None
    if metadata.get("work") != key or content.shape != (rows, dim) or content.dtype != torch.float16:
        logger.info("%s belongs to other partial work; encoding it again", path)
        return None
    logger.info("%s already encoded; skipping", path.name)
    return content


def check_output(
    directory: str | os.PathLike[str], overwrite: bool = True, protect: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """``directory`` and its ``.partial`` work directory, checked as :func:`build_long_index` checks them
    before any work (UnsafeOutputError saying why one may not be written); returns the work directory."""
    directory = Path(directory)
    check_replaceable(directory, INDEX_LAYOUT, overwrite, protect)
    work = _work_directory(directory)
    check_replaceable(work, PARTIAL_LAYOUT, overwrite=True, protect=protect)
    return work


def build_long_index(
    model: QRAG,
    document: str,
    directory: str | os.PathLike[str],
    doc_id: str = "0",
    chunking: ChunkingConfig | None = None,
    shard_size: int = 16384,
    batch_size: int = 64,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
    overwrite: bool = True,
    protect: Iterable[str | os.PathLike[str]] = (),
    encode_shards: ShardEncoder | None = None,
    backend: str | None = None,
) -> DocumentIndex:
    """Chunk and encode ``document`` into an index saved at ``directory``; resumes an interrupted run.

    Partial work lives in ``<directory>.partial`` until the index is complete. ``directory`` is checked
    before any work: it may be replaced only if it is absent, empty or (with ``overwrite``) a qrag
    index, and never if it is or contains a ``protect`` path (e.g. the document's file).
    ``encode_shards`` encodes the unfinished shards elsewhere (e.g. :class:`qrag_core.ray_index.RayShardEncoder`);
    by default ``model`` encodes them here, one after the other, through ``cache``, with ``backend`` (None: its
    action encoder's own; the index records it, so ``encode_shards`` must encode with it too).
    """
    directory = Path(directory)
    work = check_output(directory, overwrite, protect)
    chunking = chunking or model.config.chunking
    chunks = document_chunks(model, document, doc_id, chunking)
    backend = model.action_encoder.backend if backend is None else backend
    fingerprint = model.action_encoder.fingerprint_for(backend)
    manifest = _manifest(fingerprint, document, chunking, len(chunks), shard_size)
    key = hashlib.blake2b(json.dumps(manifest, sort_keys=True).encode("utf-8"), digest_size=16).hexdigest()
    work.mkdir(parents=True, exist_ok=True)
    remove_leftover_files(work)
    previous = _read_manifest(work / MANIFEST)
    if previous is not None and previous != manifest:
        logger.warning("%s holds partial work for another document or model; encoding everything again", work)
    write_file(work / MANIFEST, json.dumps(manifest))

    shards = [[c.text for c in chunks[first : first + shard_size]] for first in range(0, len(chunks), shard_size)]
    paths = [work / f"shard-{number:05d}.safetensors" for number in range(len(shards))]
    blocks = [
        _read_shard(path, key, len(texts), model.action_encoder.dim) for path, texts in zip(paths, shards, strict=True)
    ]
    todo = [(number, shards[number]) for number, block in enumerate(blocks) if block is None]
    bar = tqdm(total=len(chunks), desc="indexing", unit="chunk", disable=not show_progress)
    bar.update(len(chunks) - sum(len(texts) for _, texts in todo))
    for number, content in (encode_shards or _encoder_here(model, cache, batch_size, backend))(todo):
        save_tensors({"content": content}, paths[number], metadata={"work": key})
        blocks[number] = content
        bar.update(len(shards[number]))
    bar.close()

    index = DocumentIndex(fingerprint, model.action_encoder.dim)
    index.add(chunks, torch.cat(blocks), doc_id=doc_id)
    index.save(directory, overwrite=overwrite)
    shutil.rmtree(work)
    return index


def _encoder_here(model: QRAG, cache: EmbeddingCache | None, batch_size: int, backend: str) -> ShardEncoder:
    """The local :data:`ShardEncoder`: ``model`` encodes the shards in order on ``backend``, through ``cache``."""

    def encode(shards: Sequence[tuple[int, list[str]]]) -> Iterator[tuple[int, torch.Tensor]]:
        for number, texts in shards:
            content = model.encode_chunks(texts, cache, batch_size=batch_size, backend=backend)
            yield number, content.to(torch.float16)

    return encode
