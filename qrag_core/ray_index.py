"""Encoding the shards of a long-document index on a Ray cluster (``qrag-index build --engine ray``).

The chunk texts of the shards still to encode become a Ray Dataset; ``map_batches`` sends batches of
them to ``workers`` actors, each holding one copy of the action encoder (on a GPU where the cluster
has GPUs), and the embeddings stream back to this process, which writes every shard as soon as all
its rows are in. So the index on disk is the one :func:`qrag_core.long_index.build_long_index` writes
locally (same chunks, same shard files, float16, resumable after a kill), only encoded elsewhere; the
embeddings agree with a local build within float16 rounding (the batches are padded differently).

The encoder travels to the workers as the files of its saved directory (safetensors weights,
tokenizer, configuration) and is rebuilt there by the usual loader, checked against its fingerprint.
It connects to the cluster named by ``RAY_ADDRESS`` (or an already initialised Ray), else starts a
local one for the call. Needs ``pip install 'qrag[distributed]'``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from qrag_core.errors import CheckpointError, InvalidInputError, QRAGError

if TYPE_CHECKING:
    from qrag_core.config import ChunkingConfig
    from qrag_core.encoders import TextEncoder
    from qrag_core.index import DocumentIndex
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)

LOCAL_OBJECT_STORE_BYTES = 512 * 1024**2
"""Object store of a local Ray started for one build: chunk texts and embeddings pass through it in batches."""


def encoder_files(encoder: TextEncoder) -> dict[str, bytes]:
    """The files of ``encoder``'s saved directory, by relative path: what a worker needs to rebuild it."""
    with tempfile.TemporaryDirectory(prefix="qrag-encoder-") as tmp:
        encoder.save(tmp)
        root = Path(tmp)
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def load_encoder_files(
    files: dict[str, bytes], max_tokens: int, fingerprint: str, backend: str = "torch"
) -> TextEncoder:
    """Rebuild an encoder from :func:`encoder_files` (inference on ``backend``); it must have ``fingerprint``."""
    from qrag_core.encoders import TextEncoder

    with tempfile.TemporaryDirectory(prefix="qrag-encoder-") as tmp:
        for name, data in files.items():
            path = Path(tmp) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        encoder = TextEncoder.from_path(tmp, max_tokens).eval()
    encoder.use_backend(backend)
    if encoder.fingerprint() != fingerprint:
        raise CheckpointError(
            f"the encoder rebuilt on a Ray worker has fingerprint {encoder.fingerprint()}, not {fingerprint}"
        )
    return encoder


class EncoderActor:
    """One Ray worker: holds one copy of the action encoder and encodes batches of chunk texts to float16."""

    def __init__(
        self, files: Any, max_tokens: int, fingerprint: str, backend: str, batch_size: int, threads: int
    ) -> None:
        """``files``: a Ray reference to :func:`encoder_files` of the encoder (put once, read by every actor)."""
        import ray

        torch.set_num_threads(threads)
        self.encoder = load_encoder_files(ray.get(files), max_tokens, fingerprint, backend)
        if torch.cuda.is_available():
            self.encoder.to("cuda")
        self.batch_size = batch_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        content = self.encoder.encode([str(t) for t in batch["text"]], batch_size=self.batch_size)
        return {"shard": batch["shard"], "row": batch["row"], "content": content.to(torch.float16).numpy()}


class RayShardEncoder:
    """Encodes index shards on Ray: call it with ``(shard number, chunk texts)`` pairs, get shards back.

    ``workers`` actors (one model each) take batches of ``rows_per_task`` chunks; each actor uses
    ``cpus_per_worker`` CPU threads, and one GPU when the cluster has GPUs.
    """

    def __init__(
        self,
        encoder: TextEncoder,
        workers: int = 2,
        batch_size: int = 64,
        rows_per_task: int = 1024,
        cpus_per_worker: int = 1,
        object_store_memory: int = LOCAL_OBJECT_STORE_BYTES,
    ) -> None:
        if workers <= 0 or rows_per_task <= 0 or cpus_per_worker <= 0:
            raise InvalidInputError(
                f"workers, rows_per_task and cpus_per_worker must be positive, got {workers}, {rows_per_task}, "
                f"{cpus_per_worker}"
            )
        self.encoder = encoder
        self.workers = workers
        self.batch_size = batch_size
        self.rows_per_task = rows_per_task
        self.cpus_per_worker = cpus_per_worker
        self.object_store_memory = object_store_memory

    def __call__(self, shards: Sequence[tuple[int, list[str]]]) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield ``(shard number, (rows, d) float16 embeddings)`` for every shard, each as soon as it is done."""
        if not shards:
            return
        ray = _import_ray()
        started = _connect(ray, self.workers * self.cpus_per_worker, self.object_store_memory)
        try:
            yield from self._encode(ray, shards)
        finally:
            if started:
                ray.shutdown()

    def _encode(self, ray: Any, shards: Sequence[tuple[int, list[str]]]) -> Iterator[tuple[int, torch.Tensor]]:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        gpus = 1 if ray.cluster_resources().get("GPU", 0) >= self.workers else 0
        logger.info("encoding %d shards on Ray: %d workers, %d GPU each", len(shards), self.workers, gpus)
        rows = [{"shard": n, "row": r, "text": text} for n, texts in shards for r, text in enumerate(texts)]
        constructor_args = (
            ray.put(encoder_files(self.encoder)),
            self.encoder.max_tokens,
            self.encoder.fingerprint(),
            self.encoder.backend,
            self.batch_size,
            self.cpus_per_worker,
        )
        dataset = ray.data.from_items(rows).map_batches(
            EncoderActor,
            fn_constructor_args=constructor_args,
            batch_size=self.rows_per_task,
            compute=ray.data.ActorPoolStrategy(size=self.workers),
            num_cpus=self.cpus_per_worker,
            num_gpus=gpus,
            batch_format="numpy",
        )
        sizes = {n: len(texts) for n, texts in shards}
        pending: dict[int, torch.Tensor] = {}
        filled: dict[int, int] = {}
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for shard in np.unique(batch["shard"]):
                mask = batch["shard"] == shard
                number = int(shard)
                if number not in pending:
                    pending[number] = torch.empty((sizes[number], self.encoder.dim), dtype=torch.float16)
                    filled[number] = 0
                pending[number][torch.from_numpy(batch["row"][mask])] = torch.from_numpy(batch["content"][mask])
                filled[number] += int(mask.sum())
                if filled[number] == sizes[number]:
                    yield number, pending.pop(number)
        if pending:
            raise QRAGError(f"Ray returned incomplete shards {sorted(pending)}")


def build_long_index_on_ray(
    model: QRAG,
    document: str,
    directory: str | os.PathLike[str],
    workers: int = 2,
    doc_id: str = "0",
    chunking: ChunkingConfig | None = None,
    shard_size: int = 16384,
    batch_size: int = 64,
    cpus_per_worker: int = 1,
    show_progress: bool = True,
    **options: Any,
) -> DocumentIndex:
    """:func:`~qrag_core.long_index.build_long_index` with the shards encoded by ``workers`` Ray actors.

    Resumable like the local build (finished shards are kept and skipped); the embedding cache is not
    used (the workers may be other machines). Further ``options`` go to ``build_long_index``.
    """
    from qrag_core.long_index import build_long_index

    encode = RayShardEncoder(model.action_encoder, workers, batch_size, cpus_per_worker=cpus_per_worker)
    return build_long_index(
        model,
        document,
        directory,
        doc_id=doc_id,
        chunking=chunking,
        shard_size=shard_size,
        batch_size=batch_size,
        show_progress=show_progress,
        encode_shards=encode,
        **options,
    )


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401 - the Data library is an extra of ray
    except ImportError as err:
        raise QRAGError("indexing on Ray needs Ray Data: pip install 'qrag[distributed]'") from err
    return ray


def _connect(ray: Any, num_cpus: int, object_store_memory: int) -> bool:
    """Join the running Ray, the cluster at ``RAY_ADDRESS``, or start a local one; True if started here."""
    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        logger.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=False)
        return True
    logger.info("starting a local Ray with %d CPUs", num_cpus)
    ray.init(
        num_cpus=num_cpus,
        object_store_memory=object_store_memory,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    return True
