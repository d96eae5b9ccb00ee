"""faiss indexes over the action vectors of a passage collection (docs/method.md §5).

Where every position searched is 0 (documents marked unordered, or the position mode ``none``), R(0) is
the identity and Q(s, c_i) = ⟨E_s(s), h(e_i)⟩ is a plain inner product with vectors that stay the same
at every step, so a fixed vector index answers the top-k:

- ``flat``: faiss ``IndexFlatIP``, exact (the chunks and Q of the torch scorer, to float32 rounding), the
  default where faiss sees a GPU; on a CPU it is slower than the torch scorer for one query (385 against
  261 ms at 1M passages, ``benchmarks/results/faiss_collections.md``), so there the default is ``torch``;
- ``ivf``: ``IndexIVFFlat`` with about √N inverted lists, of which ``IVF_NPROBE`` are probed (approximate);
- ``hnsw``: ``IndexHNSWFlat`` with ``HNSW_M`` links per vector (approximate, no training);
- ``torch``: no faiss index, the exact scorer of :mod:`qrag_core.scoring`.

Chunks already selected are excluded by asking for k + |selected| and dropping them. Where faiss sees
GPUs (the faiss-gpu build) and the vectors are on CUDA, flat and ivf indexes are moved to all GPUs (hnsw
has no GPU version and stays on the CPU). faiss is optional (``pip install 'qrag[faiss]'``); without it
``flat`` falls back to the torch scorer and only an explicit ``ivf`` or ``hnsw`` is an error.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

VECTOR_INDEXES: tuple[str, ...] = ("torch", "flat", "ivf", "hnsw")
"""How a passage collection is searched: the torch scorer, or one of the faiss index kinds."""
APPROXIMATE: tuple[str, ...] = ("ivf", "hnsw")
"""The kinds that may miss some of the exact top-k (and need faiss: there is no torch fallback)."""
IVF_NPROBE = 32
"""Inverted lists an ``ivf`` index probes per query."""
IVF_POINTS_PER_LIST = 39
"""faiss's minimum of training vectors per inverted list; small collections get fewer lists."""
HNSW_M = 32
"""Links per vector of an ``hnsw`` index."""
HNSW_EF_CONSTRUCTION = 64
"""Candidate list size while an ``hnsw`` index is built."""
HNSW_EF_SEARCH = 128
"""Candidate list size of an ``hnsw`` search (at least k + |selected| is used)."""


def faiss_available() -> bool:
    """Whether faiss can be imported (the ``qrag[faiss]`` extra)."""
    return importlib.util.find_spec("faiss") is not None


@functools.lru_cache(maxsize=1)
def faiss_gpus() -> int:
    """How many GPUs faiss can use (0 without faiss, or with the CPU-only build)."""
    if not faiss_available():
        return 0
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def default_kind() -> str:
    """``flat`` (exact faiss) where faiss sees a GPU, else ``torch`` (exact, and faster than flat on a CPU)."""
    return "flat" if faiss_gpus() else "torch"


def check_kind(kind: str | None, what: str) -> None:
    """InvalidInputError for an unknown kind, or an approximate one while faiss is not installed."""
    if kind is None:
        return
    if kind not in VECTOR_INDEXES:
        raise InvalidInputError(f"{what} must be one of {list(VECTOR_INDEXES)}, got {kind!r}")
    if kind in APPROXIMATE and not faiss_available():
        raise InvalidInputError(
            f"{what} {kind!r} needs faiss, which is not installed: pip install 'qrag[faiss]' "
            "(or faiss-gpu on CUDA), or search with 'torch' or 'flat' (exact)"
        )


def _faiss() -> Any:
    import faiss

    return faiss


class PassageIndex:
    """A faiss index over the action vectors (N, d) of a passage collection, searched by inner product."""

    def __init__(self, vectors: torch.Tensor, kind: str) -> None:
        if kind not in VECTOR_INDEXES[1:]:
            raise InvalidInputError(f"a faiss passage index is one of {list(VECTOR_INDEXES[1:])}, got {kind!r}")
        faiss = _faiss()
        self.kind = kind
        self.device = vectors.device
        data = np.ascontiguousarray(vectors.detach().to("cpu", torch.float32).numpy())
        n, dim = data.shape
        self._parts: list[Any] = []  # objects the faiss index points into, kept alive with it
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
        elif kind == "ivf":
            lists = max(1, min(int(math.sqrt(n)), n // IVF_POINTS_PER_LIST))
            quantizer = faiss.IndexFlatIP(dim)
            self._parts.append(quantizer)
            index = faiss.IndexIVFFlat(quantizer, dim, lists, faiss.METRIC_INNER_PRODUCT)
            index.train(data)
            index.nprobe = min(IVF_NPROBE, lists)
        else:
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        logger.info("building a faiss %s index over %d passages", kind, n)
        index.add(data)
        if faiss_gpus() and self.device.type == "cuda" and kind != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)  # a copy: the CPU index is no longer needed
        self.index = index
        self.size = n

    def search(self, state: torch.Tensor, k: int, exclude: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best (inner product, chunk index) for one ``state`` (d,), never an ``exclude`` one.

        An approximate index may return fewer than k when its probed lists hold fewer chunks.
        """
        skip = set(exclude)
        want = min(k + len(skip), self.size)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, want)
        query = np.ascontiguousarray(state.detach().to("cpu", torch.float32).numpy()[None])
        values, ids = self.index.search(query, want)
        keep = [j for j, i in enumerate(ids[0].tolist()) if i >= 0 and i not in skip][:k]
        return (
            torch.from_numpy(values[0, keep].copy()).to(self.device),
            torch.from_numpy(ids[0, keep].copy()).to(self.device),
        )
