"""A persistent cache of content embeddings keyed by (encoder fingerprint, text hash).

Encoding is the expensive part of indexing (~85 chunks/s on two CPU cores), so no text is ever
encoded twice by the same weights: haystack sentences shared by many benchmark samples, a document
indexed again, or a corpus re-indexed after fine-tuning a frozen-action model all hit this cache.
Storage is one SQLite file (standard library, safe against interruption); vectors are float16. One
cache may be used from several threads (a retriever encodes in an event loop's worker threads).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

_LOOKUP_BATCH = 500


def text_key(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def default_cache_dir() -> Path:
    """Where qrag keeps everything it caches: ``$QRAG_CACHE_DIR`` or ``~/.cache/qrag``.

    It holds ``embeddings.sqlite`` (:func:`shared_cache_path`), ``onnx/`` (exported encoders,
    :mod:`qrag_core.onnx_backend`), ``long-index/`` (the resumable work of a very long text being added
    to a retriever) and ``haystack-token-counts/`` (:mod:`qrag_core.data.haystack`). Every one of them
    may be deleted; it is rebuilt when needed.
    """
    return Path(os.environ.get("QRAG_CACHE_DIR", Path.home() / ".cache" / "qrag"))


class EmbeddingCache:
    """Maps texts to embeddings for one encoder fingerprint; in memory, or in SQLite when given a path."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._memory: dict[tuple[str, bytes], np.ndarray] = {}
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._db = sqlite3.connect(self.path, timeout=120, check_same_thread=False)
                self._db.execute("CREATE TABLE IF NOT EXISTS emb (fp TEXT, key BLOB, vec BLOB, PRIMARY KEY (fp, key))")
            except sqlite3.Error as err:
                raise InvalidInputError(
                    f"cannot use {self.path} as the embedding cache ({err}); give another cache file"
                ) from err

    def get_many(self, fingerprint: str, texts: Sequence[str]) -> dict[bytes, np.ndarray]:
        keys = list({text_key(t) for t in texts})
        found = {k: self._memory[(fingerprint, k)] for k in keys if (fingerprint, k) in self._memory}
        missing = [k for k in keys if k not in found]
        if self._db is None:
            return found
        with self._lock:
            for first in range(0, len(missing), _LOOKUP_BATCH):
                part = missing[first : first + _LOOKUP_BATCH]
                marks = ",".join("?" * len(part))
                rows = self._db.execute(
                    f"SELECT key, vec FROM emb WHERE fp = ? AND key IN ({marks})", [fingerprint, *part]
                )
                for key, vec in rows:
                    found[key] = np.frombuffer(vec, dtype=np.float16)
        return found

    def put_many(self, fingerprint: str, texts: Sequence[str], vectors: torch.Tensor) -> None:
        arr = vectors.to(torch.float16).cpu().numpy()
        if self._db is None:
            for i, text in enumerate(texts):
                self._memory[(fingerprint, text_key(text))] = arr[i]
            return
        rows = [(fingerprint, text_key(t), arr[i].tobytes()) for i, t in enumerate(texts)]
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO emb VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def encode_with_cache(
    texts: Sequence[str],
    fingerprint: str,
    encode: Callable[[Sequence[str]], torch.Tensor],
    cache: EmbeddingCache | None,
) -> torch.Tensor:
    """Embeddings of ``texts`` in order, encoding only texts neither cached nor repeated in the input."""
    unique = list(dict.fromkeys(texts))
    found = cache.get_many(fingerprint, unique) if cache is not None else {}
    todo = [t for t in unique if text_key(t) not in found]
    if todo:
        fresh = encode(todo)
        if cache is not None:
            cache.put_many(fingerprint, todo, fresh)
        for text, vec in zip(todo, fresh, strict=True):
            found[text_key(text)] = vec.to(torch.float16).numpy()
    logger.debug("encoded %d of %d texts (%d cached or repeated)", len(todo), len(texts), len(texts) - len(todo))
    return torch.from_numpy(np.stack([np.asarray(found[text_key(t)], dtype=np.float32) for t in texts]))


def shared_cache_path() -> Path:
    """Where the cache every qrag command and retriever shares lives: ``<default_cache_dir()>/embeddings.sqlite``."""
    return default_cache_dir() / "embeddings.sqlite"


def shared_cache() -> EmbeddingCache:
    """The on-disk cache every qrag command and retriever shares (at :func:`shared_cache_path`)."""
    return EmbeddingCache(shared_cache_path())
