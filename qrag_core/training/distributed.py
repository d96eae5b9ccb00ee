"""Data-parallel training over several processes: the few collective steps the trainer needs.

``qrag-finetune`` (and :func:`qrag_core.training.train`) runs unchanged under ``torchrun`` or
``accelerate launch``: Hugging Face Accelerate sets up the processes (gloo on CPU, NCCL on CUDA, one
GPU per process) and mixed precision. Every process holds the whole model, the same target networks
and the same optimiser; each step, every process takes its contiguous slice of the scheduled global
batch, computes its part of the loss (divided by the *global* batch size or transition count), and
the gradients of the trainable parameters are summed over the processes before clipping and the
optimiser step, so every process applies the same update and the Polyak update of the target
networks stays identical everywhere.

Gradients are summed by hand (one all-reduce of one flat buffer per optimiser step) instead of
wrapping the model in ``DistributedDataParallel``: the updates (:mod:`qrag_core.training.updates`)
call the model's methods (``state_vectors``, ``action_vectors``, ``q_row``, ``q_taken``) rather than
``forward()``, so DDP's hooks would not see the passes; a step makes several backward passes
(micro-batches, the warm start's extra states) that DDP would have to be told not to synchronise; and
the losses are already normalised by the global batch, so the sum (not DDP's mean) is the
single-process gradient.

The random draws of a step (the warm start's gold prefixes, the rollout's Boltzmann choices) are
made for the whole global batch by every process from the same generator, each process using the
draws of its own slice; a run of N processes with global batch B therefore follows the run of one
process with batch B up to floating-point summation order.

The single-process :class:`Processes` does nothing and needs no extra package; only a launched
multi-process run or ``mixed_precision`` other than ``no`` builds :class:`AcceleratedProcesses`
(``pip install 'qrag[distributed]'``).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from qrag_core.errors import InvalidInputError, QRAGError

logger = logging.getLogger(__name__)

COLLECTIVE_TIMEOUT = datetime.timedelta(hours=3)
"""How long a process waits at a collective step, e.g. while the main process evaluates or checkpoints."""


def launched_processes() -> int:
    """The number of processes torchrun / accelerate launch started for this run (1 when run directly)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


class Processes:
    """One process: every collective step is the identity, so a single-process run is exactly as before."""

    world_size = 1
    rank = 0
    mixed_precision = "no"

    @classmethod
    def from_environment(cls, mixed_precision: str = "no") -> Processes:
        """The processes of this run: started by torchrun / accelerate launch, or this one alone."""
        if launched_processes() == 1 and mixed_precision == "no":
            return cls()
        return AcceleratedProcesses(mixed_precision)

    @property
    def is_main(self) -> bool:
        """Whether this process evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """The device this process trains on (None: wherever the model already is)."""
        return None

    def local_slice(self, batch_size: int) -> slice:
        """This process's contiguous part of a global batch of ``batch_size`` examples."""
        if batch_size % self.world_size:
            raise InvalidInputError(f"batch_size {batch_size} must be a multiple of the {self.world_size} processes")
        size = batch_size // self.world_size
        return slice(self.rank * size, (self.rank + 1) * size)

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over the processes."""
        return list(values)

    def concat(self, values: Sequence[float], batch_size: int) -> list[float]:
        """The per-example ``values`` of every process's slice, joined into the global batch's list."""
        return list(values)

    def broadcast_module(self, module: nn.Module) -> None:
        """Give ``module`` the main process's parameters and buffers."""

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """The mixed-precision context of forward passes."""
        return contextlib.nullcontext()

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The loss scaler of fp16 mixed precision, whose state a checkpoint keeps (None: no loss scaling)."""
        return None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> torch.Tensor:
        """Sum the gradients over the processes, clip them, step; returns the gradient norm before clipping."""
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        return grad_norm

    def barrier(self) -> None:
        """Wait until every process is here."""


class AcceleratedProcesses(Processes):
    """Several processes (or mixed precision) through Hugging Face Accelerate and ``torch.distributed``."""

    def __init__(self, mixed_precision: str = "no") -> None:
        try:
            from accelerate import Accelerator
            from accelerate.utils import InitProcessGroupKwargs
        except ImportError as err:
            raise QRAGError(
                "multi-process or mixed-precision training needs Hugging Face Accelerate: "
                "pip install 'qrag[distributed]'"
            ) from err
        on_gpu = torch.cuda.is_available()
        if mixed_precision == "fp16" and not on_gpu:
            raise InvalidInputError("fp16 mixed precision needs a CUDA GPU; use bf16 (or no) on CPU")
        launcher_precision = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
        if launcher_precision != "no" and launcher_precision != mixed_precision:
            logger.warning(
                "accelerate launch asked for %s mixed precision; this run uses --mixed-precision %s",
                launcher_precision,
                mixed_precision,
            )
        self.accelerator = Accelerator(
            cpu=not on_gpu,
            mixed_precision=mixed_precision,
            kwargs_handlers=[InitProcessGroupKwargs(timeout=COLLECTIVE_TIMEOUT)],
        )
        self.world_size = self.accelerator.num_processes
        self.rank = self.accelerator.process_index
        self.mixed_precision = mixed_precision
        logger.info(
            "process %d of %d on %s (%s), mixed precision %s",
            self.rank,
            self.world_size,
            self.device,
            self.accelerator.distributed_type,
            mixed_precision,
        )

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    def _all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        if self.world_size > 1:
            reduce_op = torch.distributed.ReduceOp.SUM if op == "sum" else torch.distributed.ReduceOp.MAX
            torch.distributed.all_reduce(tensor, op=reduce_op)
        return tensor

    def sum(self, values: Sequence[float]) -> list[float]:
        tensor = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self._all_reduce(tensor).tolist()

    def concat(self, values: Sequence[float], batch_size: int) -> list[float]:
        joined = torch.zeros(batch_size, dtype=torch.float64, device=self.device)
        joined[self.local_slice(batch_size)] = torch.tensor(list(values), dtype=torch.float64, device=self.device)
        return self._all_reduce(joined).tolist()

    def broadcast_module(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        with torch.no_grad():
            for tensor in [*module.parameters(), *module.buffers()]:
                torch.distributed.broadcast(tensor.data, src=0)

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        return self.accelerator.autocast()

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        return self.accelerator.scaler

    def backward(self, loss: torch.Tensor) -> None:
        self.accelerator.backward(loss)  # scales the loss under fp16

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> torch.Tensor:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        self.reduce_gradients(params)
        scaler = self.scaler
        if scaler is not None:  # after the sum, so that every process sees the same inf/NaN and skips alike
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        return grad_norm

    def reduce_gradients(self, params: Sequence[torch.Tensor]) -> None:
        """Sum the gradients of ``params`` over the processes in one flat all-reduce.

        A parameter that got no gradient on some process counts as zero there; one that got none
        anywhere keeps ``grad = None`` (the optimiser skips it, as in a single-process run).
        """
        if self.world_size == 1:
            return
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=self.device)
        for p, anywhere in zip(params, self._all_reduce(has_grad, op="max").tolist(), strict=True):
            if anywhere and p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = self._all_reduce(torch.cat([g.reshape(-1) for g in grads]))
        first = 0
        for g in grads:
            g.copy_(flat[first : first + g.numel()].view_as(g))
            first += g.numel()

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()
