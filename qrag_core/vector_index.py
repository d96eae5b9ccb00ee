"""faiss indexes over the action vectors of a passage collection (docs/method.md §5).

Where every position searched is 0 (documents marked unordered, or the position mode ``none``), R(0) is
the identity and Q(s, c_i) = ⟨E_s(s), h(e_i)⟩ is a plain inner product with vectors that stay the same
at every step, so a fixed vector index answers the top-k:

- ``flat``: faiss ``IndexFlatIP``, exact (the chunks and Q of the torch scorer, to float32 rounding), the
  default where faiss sees a GPU; on a CPU it is slower than the torch scorer for one query (385 against
  261 ms at 1M passages, ``benchmarks/results/faiss_collections.md``), so there the default is ``torch``;
- ``ivf``: ``IndexIVFFlat`` with about √N inverted lists, of which ``IVF_NPROBE`` are probed (approximate;
  4d + 8 bytes per vector, a second float32 copy of the vectors);
- ``ivf-sq8``: ``IndexIVFScalarQuantizer``, the same lists holding each vector's residual to its list
  centre as d 8-bit codes (d + 8 bytes per vector, about a quarter of ``ivf``: 3.8 GiB for 10M vectors of
  d = 384); approximate in the lists it probes and in Q, which faiss computes from the codes;
- ``ivf-pq``: ``IndexIVFPQ``, the residuals product-quantised into d/8 bytes (``PQ_DIMS`` dimensions per
  byte; d/8 + 8 bytes per vector, 0.55 GiB for 10M at d = 384); the coarsest: recall and Q are lower;
- ``hnsw``: ``IndexHNSWFlat`` with ``HNSW_M`` links per vector (approximate, no training);
- ``torch``: no faiss index, the exact scorer of :mod:`qrag_core.scoring`.

The IVF kinds train their lists (and codes) on ``IVF_TRAIN_PER_LIST`` random vectors per list, then add
the vectors ``ADD_BLOCK`` at a time, so a build converts one block at a time to float32 and never holds a
second whole float32 copy of vectors given in another dtype or on a GPU. Chunks already selected are
excluded by asking for k + |selected| and dropping them. Where faiss sees GPUs (the faiss-gpu build) and
the vectors are on CUDA, the IVF and flat indexes are moved to all GPUs (hnsw has no GPU version and stays
on the CPU). faiss is optional (``pip install 'qrag[faiss]'``); without it ``flat`` falls back to the
torch scorer and only an explicit approximate kind is an error.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

VECTOR_INDEXES: tuple[str, ...] = ("torch", "flat", "ivf", "ivf-sq8", "ivf-pq", "hnsw")
"""How a passage collection is searched: the torch scorer, or one of the faiss index kinds."""
IVF_KINDS: tuple[str, ...] = ("ivf", "ivf-sq8", "ivf-pq")
"""The kinds with inverted lists, trained on a sample before the vectors are added."""
APPROXIMATE: tuple[str, ...] = (*IVF_KINDS, "hnsw")
"""The kinds that may miss some of the exact top-k (and need faiss: there is no torch fallback)."""
IVF_NPROBE = 32
"""Inverted lists an IVF index probes per query."""
IVF_POINTS_PER_LIST = 39
"""faiss's minimum of training vectors per inverted list; small collections get fewer lists."""
IVF_TRAIN_PER_LIST = 64
"""Training vectors drawn per inverted list (a seeded random sample of the collection, all of a small one)."""
PQ_DIMS = 8
"""Dimensions per 8-bit code of an ``ivf-pq`` index (d/8 codes; the nearest divisor of d if 8 does not divide it)."""
PQ_BITS = 8
"""Bits per ``ivf-pq`` code: each sub-quantiser has 2^8 centres, so at least 256 training vectors are needed."""
ADD_BLOCK = 65536
"""Vectors converted to float32 and added to a faiss index at a time."""
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


def ivf_lists(size: int) -> int:
    """Inverted lists of an IVF index over ``size`` vectors: about √N, with at least 39 training vectors each."""
    return max(1, min(int(math.sqrt(size)), size // IVF_POINTS_PER_LIST))


def training_rows(size: int) -> torch.Tensor:
    """The rows (sorted) an IVF index over ``size`` vectors is trained on: ``IVF_TRAIN_PER_LIST`` per list,
    drawn with a fixed seed, so the same collection always gets the same index."""
    want = min(size, ivf_lists(size) * IVF_TRAIN_PER_LIST)
    if want == size:
        return torch.arange(size)
    return torch.randperm(size, generator=torch.Generator().manual_seed(0))[:want].sort().values


def pq_codes(dim: int) -> int:
    """Codes per vector of an ``ivf-pq`` index: the largest divisor of ``dim`` up to dim / ``PQ_DIMS``."""
    return max(m for m in range(1, max(1, dim // PQ_DIMS) + 1) if dim % m == 0)


def _float32(block: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(block.detach().to("cpu", torch.float32).numpy())


class PassageIndex:
    """A faiss index over the action vectors (N, d) of a passage collection, searched by inner product."""

    def __init__(self, vectors: torch.Tensor, kind: str) -> None:
        training = vectors[training_rows(len(vectors)).to(vectors.device)] if kind in IVF_KINDS else None
        self._build(kind, len(vectors), vectors.split(ADD_BLOCK), training, vectors.device)

    @classmethod
    def from_blocks(
        cls,
        kind: str,
        size: int,
        blocks: Iterable[torch.Tensor],
        training: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
    ) -> PassageIndex:
        """The index of ``size`` vectors given as consecutive ``blocks`` (each (rows, d)), never all at once.

        An IVF kind needs ``training``: the rows :func:`training_rows` names (what :class:`PassageIndex`
        of the whole tensor trains on); ``device`` is where the vectors live (CUDA: faiss uses the GPUs).
        """
        index = cls.__new__(cls)
        index._build(kind, size, blocks, training, torch.device(device))
        return index

    def _build(
        self,
        kind: str,
        size: int,
        blocks: Iterable[torch.Tensor],
        training: torch.Tensor | None,
        device: torch.device,
    ) -> None:
        if kind not in VECTOR_INDEXES[1:]:
            raise InvalidInputError(f"a faiss passage index is one of {list(VECTOR_INDEXES[1:])}, got {kind!r}")
        if size < 1:
            raise InvalidInputError(f"a faiss {kind} index needs at least one passage, got {size}")
        if kind in IVF_KINDS and (training is None or training.ndim != 2 or len(training) < 1):
            raise InvalidInputError(f"a faiss {kind} index needs training vectors (rows, d), got {training!r}")
        if kind == "ivf-pq" and len(training) < 2**PQ_BITS:
            raise InvalidInputError(
                f"an ivf-pq index needs at least {2**PQ_BITS} passages to train its codes, got {len(training)}; "
                "search a collection this small with 'flat' or 'ivf-sq8'"
            )
        self.kind = kind
        self.device = device
        self._parts: list[Any] = []  # objects the faiss index points into, kept alive with it
        index, added = None, 0
        logger.info("building a faiss %s index over %d passages", kind, size)
        for block in blocks:
            if index is None:
                index = self._empty(kind, size, block.shape[1], training)
            if block.ndim != 2 or block.shape[1] != index.d:
                raise InvalidInputError(f"passage vectors must be (rows, {index.d}), got a block {tuple(block.shape)}")
            index.add(_float32(block))
            added += len(block)
        if added != size:
            raise InvalidInputError(f"a faiss {kind} index of {size} passages was given {added}")
        if faiss_gpus() and device.type == "cuda" and kind != "hnsw":
            faiss = _faiss()
            options = faiss.GpuMultipleClonerOptions()
            # ivf-pq: float16 lookup tables (d/8 x 256 float32 entries exceed 48 KiB of shared memory from d = 384)
            options.useFloat16 = kind == "ivf-pq"
            index = faiss.index_cpu_to_all_gpus(index, options)  # a copy: the CPU index is no longer needed
        self.index = index
        self.size = size

    def _empty(self, kind: str, size: int, dim: int, training: torch.Tensor | None) -> Any:
        """The faiss index of ``kind`` for ``size`` vectors of ``dim``, trained where it needs training."""
        faiss = _faiss()
        if kind == "flat":
            index = faiss.IndexFlatIP(dim)
            # Reserve the whole storage once: grown block by block, it doubles its capacity and asks for 2x
            # (25 GiB for 10M vectors of d = 384, refused where 15 GiB fit); shrinking keeps the capacity.
            index.codes.resize(size * index.code_size)
            index.codes.resize(0)
            return index
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            return index
        if training is None or training.shape[1] != dim:
            raise InvalidInputError(f"training vectors must be (rows, {dim}), got {training!r}")
        lists = ivf_lists(size)
        quantizer = faiss.IndexFlatIP(dim)
        self._parts.append(quantizer)
        metric = faiss.METRIC_INNER_PRODUCT
        if kind == "ivf":
            index = faiss.IndexIVFFlat(quantizer, dim, lists, metric)
        elif kind == "ivf-sq8":
            index = faiss.IndexIVFScalarQuantizer(quantizer, dim, lists, faiss.ScalarQuantizer.QT_8bit, metric)
        else:
            index = faiss.IndexIVFPQ(quantizer, dim, lists, pq_codes(dim), PQ_BITS, metric)
        logger.info("training the %d lists of a faiss %s index on %d vectors", lists, kind, len(training))
        index.train(_float32(training))
        index.nprobe = min(IVF_NPROBE, lists)
        return index

    def search(self, state: torch.Tensor, k: int, exclude: Sequence[int] = ()) -> tuple[torch.Tensor, torch.Tensor]:
        """The k best (inner product, chunk index) for one ``state`` (d,), never an ``exclude`` one.

        An approximate index may return fewer than k when its probed lists hold fewer chunks; ``ivf-sq8`` and
        ``ivf-pq`` return faiss's estimate of the inner product from their codes, the others the exact one.
        """
        skip = set(exclude)
        want = min(k + len(skip), self.size)
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(HNSW_EF_SEARCH, want)
        query = _float32(state[None])
        values, ids = self.index.search(query, want)
        keep = [j for j, i in enumerate(ids[0].tolist()) if i >= 0 and i not in skip][:k]
        return (
            torch.from_numpy(values[0, keep].copy()).to(self.device),
            torch.from_numpy(ids[0, keep].copy()).to(self.device),
        )
