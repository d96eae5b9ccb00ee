"""Indexing very long documents (10M tokens and more): sharded, resumable, bounded in memory.

Encoding dominates (about 85 chunks of 64 tokens per second on two CPU cores, so a 10M-token book
takes over an hour), so the work is cut into shards of chunks. Each encoded shard is written to disk
atomically before the next begins; after a kill, running the same call again skips the finished
shards. Embeddings are kept as float16 (a 10M-token document in one-sentence chunks is about 400k
chunks, 300 MB), and the finished index is an ordinary :class:`DocumentIndex` directory that reloads
in seconds without re-encoding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from qrag_core.chunking import chunk_text
from qrag_core.config import ChunkingConfig
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.index import DocumentIndex

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
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
    encode_shards: ShardEncoder | None = None,
) -> DocumentIndex:
    """Chunk and encode ``document`` into an index saved at ``directory``; resumes an interrupted run.

    Partial work lives in ``<directory>.partial`` until the index is complete. ``encode_shards``
    encodes the unfinished shards elsewhere (e.g. :class:`qrag_core.ray_index.RayShardEncoder`);
    by default ``model`` encodes them here, one after the other, through ``cache``.
    """
    directory = Path(directory)
    work = directory.with_name(directory.name + ".partial")
    chunking = chunking or model.config.chunking
    chunks = chunk_text(document, chunking, model.action_encoder.tokenizer, doc_id=doc_id)
    fingerprint = model.action_encoder.fingerprint()
    manifest = _manifest(fingerprint, document, chunking, len(chunks), shard_size)
    manifest_path = work / MANIFEST
    if work.exists() and (not manifest_path.is_file() or json.loads(manifest_path.read_text()) != manifest):
        logger.warning("%s holds partial work for another document or model; starting over", work)
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest))

    starts = range(0, len(chunks), shard_size)
    shards = [[c.text for c in chunks[first : first + shard_size]] for first in starts]
    todo = [(n, texts) for n, texts in enumerate(shards) if not (work / f"shard-{n:05d}.safetensors").is_file()]
    logger.info("%d of %d shards already encoded; skipping them", len(shards) - len(todo), len(shards))
    if encode_shards is None:
        encode_shards = _encoder_here(model, cache, batch_size)
    bar = tqdm(total=len(chunks), desc="indexing", unit="chunk", disable=not show_progress)
    bar.update(len(chunks) - sum(len(texts) for _, texts in todo))
    for number, content in encode_shards(todo):
        path = work / f"shard-{number:05d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file({"content": content}, str(tmp))
        os.replace(tmp, path)
        bar.update(len(shards[number]))
    bar.close()

    content = torch.cat([load_file(str(work / f"shard-{i:05d}.safetensors"))["content"] for i in range(len(starts))])
    index = DocumentIndex(fingerprint, model.action_encoder.dim)
    index.add(chunks, content, doc_id=doc_id)
    index.save(directory)
    shutil.rmtree(work)
    return index


def _encoder_here(model: QRAG, cache: EmbeddingCache | None, batch_size: int) -> ShardEncoder:
    """The local :data:`ShardEncoder`: ``model`` encodes the shards in order, through ``cache``."""

    def encode(shards: Sequence[tuple[int, list[str]]]) -> Iterator[tuple[int, torch.Tensor]]:
        for number, texts in shards:
            yield number, model.encode_chunks(texts, cache, batch_size=batch_size).to(torch.float16)

    return encode
