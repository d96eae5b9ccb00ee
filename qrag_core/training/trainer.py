"""The training loop: schedule, evaluation, logging and checkpoints around the updates (docs/method.md §4).

What one optimiser step does is :mod:`qrag_core.training.updates` (:func:`warm_start_update`, then
:func:`soft_q_update`). The :class:`Trainer` around them:

1. the schedule: shuffled epochs of examples fixed by the seed, a supervised warm start then the soft-Q
   phase, each with a fresh AdamW and a learning rate warmed up then linearly decayed (the soft-Q
   temperature follows it), the target networks made when the soft-Q phase starts;
2. the training documents' content embeddings (action transformer frozen), computed once through the
   shared embedding cache;
3. periodic greedy evaluation (fact EM / recall, :mod:`qrag_core.evaluation`) and the metrics log;
4. atomic checkpoints without pickle (:mod:`qrag_core.training.checkpoint`) and an exact resume; an update
   that diverges stops the run before it reaches the weights, naming the last good checkpoint.

Both phases run the networks in eval mode (no dropout), so a rollout, its targets and its loss all see
the same deterministic Q-function.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from qrag_core.baselines import QRAGSearch
from qrag_core.data.examples import Example
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import CheckpointError, DivergedError, InvalidInputError, TrainingError
from qrag_core.evaluation import evaluate
from qrag_core.model import QRAG
from qrag_core.search_options import SearchOptions
from qrag_core.training.checkpoint import (
    CHECKPOINT_DIR,
    MODEL_DIR,
    optimizer_state,
    prefixed,
    read_checkpoint,
    recover_checkpoint,
    restore_module,
    restore_optimizer,
    restore_rng,
    restore_scaler,
    rng_state,
    scaler_state,
    start_run_dir,
    with_prefix,
    write_checkpoint,
)
from qrag_core.training.config import TrainingConfig
from qrag_core.training.distributed import Processes
from qrag_core.training.metrics_log import MetricsLog
from qrag_core.training.updates import (
    Distillation,
    QFunction,
    ValueCalibration,
    frozen_copy,
    prepare_documents,
    soft_q_update,
    warm_start_update,
)

logger = logging.getLogger(__name__)

RESUME_MAY_CHANGE = frozenset({"eval_every", "eval_steps", "eval_limit", "checkpoint_every", "max_train_seconds"})
"""Settings a resumed run may change: they decide what is measured and when to stop, not what is learnt."""
TRAIN_FIELDS = (
    "step",
    "phase",
    "examples",
    "lr",
    "alpha",
    "loss",
    "grad_norm",
    "rollout_fact_em",
    "rollout_return",
    "rollout_length",
    "q_scale",
)


# ================================================================================================ the schedule
def phase_learning_rate(step: int, phase_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay; ``step`` is 0-based inside the phase.

    The rate is positive at every step of the phase (the last one gets peak / (phase_steps − warmup_steps)),
    so the annealed temperature α_t = α_0·lr_t/lr_peak never reaches zero.
    """
    ramp = (step + 1) / max(warmup_steps, 1)
    decay = (phase_steps - step) / max(phase_steps - warmup_steps, 1)
    return peak * min(1.0, ramp, decay)


def example_schedule(num_examples: int, num_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of every optimiser step, (num_steps, batch_size): shuffled epochs, fixed by the seed."""
    rng = np.random.default_rng([seed, 7])
    needed = num_steps * batch_size
    epochs = [rng.permutation(num_examples) for _ in range(-(-needed // num_examples))]
    order = np.concatenate(epochs) if epochs else np.empty(0, dtype=np.int64)
    return order[:needed].reshape(num_steps, batch_size)


# ================================================================================================ the trainer
@dataclass
class TrainingResult:
    """What a finished (or time-limited) run produced."""

    steps: int
    examples: int
    train_seconds: float
    rows: list[dict[str, str]]
    evaluation: dict[str, dict[str, float]]


class Trainer:
    """Runs the warm start and the soft-Q phase on ``model`` in place; see the module docstring."""

    def __init__(
        self,
        model: QRAG,
        examples: Iterable[Example],
        config: TrainingConfig,
        eval_sets: Mapping[str, Iterable[Example]] | None = None,
        out_dir: str | os.PathLike[str] | None = None,
        cache: EmbeddingCache | None = None,
        show_progress: bool = True,
        data_info: Mapping[str, Any] | None = None,
        processes: Processes | None = None,
    ) -> None:
        self.config = config.validate()
        self.processes = processes or Processes.from_environment(config.mixed_precision)
        self.local = self.processes.local_slice(config.batch_size)
        if self.processes.device is not None:
            model.to(self.processes.device)
        self.processes.broadcast_module(model)
        self.model = model
        # Q_0 of the distillation term (M4′): the model as handed in, before any checkpoint is resumed
        self.distillation = (
            Distillation(frozen_copy(model, model), config.distillation_weight, config.distillation_documents)
            if config.distillation_weight > 0
            else None
        )
        self.data_info = dict(data_info or {})
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cache = cache if cache is not None else EmbeddingCache()
        self.show_progress = show_progress and self.processes.is_main
        self.frozen = model.config.freeze_action_encoder
        self.eval_steps = config.eval_steps or model.config.max_steps
        _seed_everything(config.seed)
        self.documents = prepare_documents(model, examples)
        too_long = sum(d.min_steps > d.horizon(config.episode_steps) for d in self.documents)
        if too_long:
            logger.warning(
                "%d of %d training examples need more support chunks than the %s steps of an episode",
                too_long,
                len(self.documents),
                config.episode_steps,
            )
        self.eval_sets = {name: list(exs)[: config.eval_limit] for name, exs in (eval_sets or {}).items()}
        for name, eval_examples in self.eval_sets.items():
            prepare_documents(model, eval_examples, what=f"evaluation ({name})")  # fail early on bad labels
        self.schedule = example_schedule(len(self.documents), config.total_steps, config.batch_size, config.seed)
        self.rng = np.random.default_rng([config.seed, 11])
        self.step = 0
        self.train_seconds = 0.0
        self.train_cpu_seconds = 0.0
        self.wall_seconds = 0.0
        self.last_evaluation: dict[str, dict[str, float]] = {}
        self.checkpoint_step: int | None = None
        # what the updates change, made per phase by start_phase: Q_θ (the model, calibrated in the soft-Q
        # phase if asked for), the target networks θ′ of the soft-Q phase, and the phase's optimiser
        self.online = QFunction(model)
        self.target: QFunction | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        fields = list(TRAIN_FIELDS)
        for name in self.eval_sets:
            fields += [f"eval_{name}_fact_em", f"eval_{name}_fact_recall"]
        self.fields = [*fields, "train_seconds", "train_cpu_seconds", "wall_seconds"]

    # -------------------------------------------------------------------------------------------- content
    def encode_training_documents(self) -> None:
        """Content embeddings of this process's scheduled training documents, once, via the cache (frozen encoder)."""
        if not self.frozen:
            return
        used = sorted(set(self.schedule[:, self.local].ravel().tolist()))
        todo = [self.documents[i] for i in used if self.documents[i].content is None]
        if not todo:
            return
        texts = [t for doc in todo for t in doc.texts]
        logger.info("content embeddings of %d training documents (%d chunks)", len(todo), len(texts))
        content = self.model.encode_chunks(texts, self.cache, show_progress=self.show_progress).to(torch.float16)
        first = 0
        for doc in todo:
            doc.content = content[first : first + len(doc.texts)]
            first += len(doc.texts)

    # -------------------------------------------------------------------------------------------- the schedule
    def phase(self, step: int) -> str:
        return "warm_start" if step < self.config.warm_start_steps else "soft_q"

    def learning_rate(self, step: int) -> float:
        c = self.config
        if self.phase(step) == "warm_start":
            return phase_learning_rate(step, c.warm_start_steps, c.warm_start_lr, c.warmup_steps)
        return phase_learning_rate(step - c.warm_start_steps, c.rl_steps, c.lr, c.warmup_steps)

    def start_phase(self, phase: str) -> None:
        """A fresh AdamW per phase (the two losses differ in scale); target networks for the soft-Q phase."""
        c, model = self.config, self.model
        groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if phase == "soft_q":
            calibration = ValueCalibration(model.state_encoder.dim).to(model.device) if c.value_head else None
            self.online = QFunction(model, calibration)
            self.target = self.online.target_copy()
            if calibration is not None:
                groups.append({"params": list(calibration.parameters()), "lr_scale": c.value_head_lr / c.lr})
        self.optimizer = torch.optim.AdamW(
            groups, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps, weight_decay=c.weight_decay
        )

    def train_step(self) -> dict[str, Any]:
        """The update of the step's phase on the step's scheduled batch; returns its metrics."""
        step, c = self.step, self.config
        docs = [self.documents[i] for i in self.schedule[step]]
        lr = self.learning_rate(step)
        assert self.optimizer is not None
        try:
            if self.phase(step) == "warm_start":
                return warm_start_update(
                    self.model, self.optimizer, docs, c, lr, self.rng, self.processes, self.distillation
                )
            assert self.target is not None
            return soft_q_update(self.online, self.target, self.optimizer, docs, c, lr, self.rng, self.processes)
        except DivergedError as err:
            kept = (
                f"the last good checkpoint (step {self.checkpoint_step}) is kept in {self.out_dir / CHECKPOINT_DIR}"
                if self.out_dir is not None and self.checkpoint_step is not None
                else "no checkpoint had been written"
            )
            raise TrainingError(
                f"training diverged at step {step + 1} ({self.phase(step)}): {err}, and {kept}. "
                "Start again with a lower learning rate (--lr / --warm-start-lr) or --max-grad-norm"
            ) from None

    # -------------------------------------------------------------------------------------------- evaluation, logging
    def run_evaluation(self) -> dict[str, Any]:
        """Greedy search with T = eval_steps on every evaluation set: fact EM and recall (main process only)."""
        model, values = self.model, {}
        if not self.processes.is_main:
            return values
        # A trained action transformer changes the content embeddings: keep those out of the shared cache.
        method = QRAGSearch(model, self.cache if self.frozen else None, SearchOptions(beam=1))
        for name, examples in self.eval_sets.items():
            scores = evaluate(method, examples, self.eval_steps, model.config.chunking, model.action_encoder.tokenizer)
            self.last_evaluation[name] = {
                "fact_em": scores["fact_em"],
                "fact_recall": scores["fact_recall"],
                "steps": self.eval_steps,
                "documents": scores["n"],
            }
            values |= {f"eval_{name}_fact_em": scores["fact_em"], f"eval_{name}_fact_recall": scores["fact_recall"]}
        return values

    def run(self, resume: bool = False, overwrite: bool = False) -> TrainingResult:
        """Train to the end of the schedule (or the time limit), evaluating, logging and checkpointing.

        ``resume`` continues from the checkpoint in the output directory; otherwise the run starts there
        only if no earlier run's files are in it, or ``overwrite`` lets it replace an earlier qrag run's.
        """
        c = self.config
        self.model.eval()
        if resume and overwrite:
            raise InvalidInputError("resume and overwrite exclude each other: continue the run, or start it over")
        if resume:
            self.load_checkpoint()
        else:
            if self.out_dir is not None and self.processes.is_main:
                start_run_dir(self.out_dir, overwrite, {"config": c.to_dict(), "data": self.data_info})
            self.start_phase(self.phase(0))
        log = MetricsLog(
            self.fields, self.out_dir if self.processes.is_main else None, resume_step=self.step if resume else None
        )
        wall_start = time.perf_counter() - self.wall_seconds
        with self._training_clock():
            self.encode_training_documents()
        if self.step == 0 and not resume and self.eval_sets:  # the evaluation before training
            log.write(
                {"step": 0, "phase": self.phase(0), "examples": 0} | self.run_evaluation() | self._times(wall_start)
            )
        bar = tqdm(total=c.total_steps, initial=self.step, desc="training", unit="step", disable=not self.show_progress)
        try:
            while self.step < c.total_steps:
                if self.step > 0 and self.phase(self.step) != self.phase(self.step - 1):
                    self.start_phase(self.phase(self.step))
                with self._training_clock():
                    metrics = self.train_step()
                phase = self.phase(self.step)
                self.step += 1
                row = {"step": self.step, "phase": phase, "examples": self.step * c.batch_size} | metrics
                last = self.step == c.total_steps or self._out_of_time()
                if self._due(c.eval_every) or last or self.step == c.warm_start_steps:
                    row |= self.run_evaluation()
                log.write(row | self._times(wall_start))
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.4f}", phase=phase)
                if last:
                    break
                if self._due(c.checkpoint_every) and self.processes.is_main:
                    self.save_checkpoint(wall_start)
        finally:
            bar.close()
            log.close()
        if self.step < c.total_steps:
            logger.info("stopped after %.0f s of training (max_train_seconds)", self.train_seconds)
        self.model.training_info = self.training_info()
        if self.out_dir is not None and self.processes.is_main:
            self.save_checkpoint(wall_start)
            self.model.save_pretrained(self.out_dir / MODEL_DIR)
        self.processes.barrier()  # the others return once the main process has written the model
        return TrainingResult(self.step, self.step * c.batch_size, self.train_seconds, log.rows, self.last_evaluation)

    @contextlib.contextmanager
    def _training_clock(self) -> Iterator[None]:
        """Adds the wall time and the process CPU time of the enclosed training work to the run's totals."""
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.train_seconds += time.perf_counter() - wall
            self.train_cpu_seconds += time.process_time() - cpu

    def _out_of_time(self) -> bool:
        """Whether the time limit is reached (on any process: they all stop after the same step)."""
        limit = self.config.max_train_seconds
        return limit is not None and self.processes.sum([self.train_seconds >= limit])[0] > 0

    def _due(self, every: int) -> bool:
        return every > 0 and self.step % every == 0

    def _times(self, wall_start: float) -> dict[str, float]:
        self.wall_seconds = time.perf_counter() - wall_start
        return {
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "wall_seconds": self.wall_seconds,
        }

    def training_info(self) -> dict[str, Any]:
        """What the model card records about this run."""
        c = self.config
        return self.data_info | {
            "trainer": "qrag soft-Q (docs/method.md §4)",
            "training_examples": len(self.documents),
            "steps": self.step,
            "warm_start_steps": min(self.step, c.warm_start_steps),
            "soft_q_steps": max(0, self.step - c.warm_start_steps),
            "examples_seen": self.step * c.batch_size,
            "seconds": round(self.train_seconds, 1),
            "cpu_seconds": round(self.train_cpu_seconds, 1),
            "action_encoder": "frozen (action head trained)" if self.frozen else "trained",
            "processes": self.processes.world_size,
            "config": c.to_dict(),
            "evaluation": {
                f"{name}_{k}": v for name, scores in self.last_evaluation.items() for k, v in scores.items()
            },
        }

    # -------------------------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self, wall_start: float) -> None:
        """Write model, target networks, optimiser, RNG states and counters atomically to out/checkpoint."""
        if self.out_dir is None:
            return
        self._times(wall_start)
        assert self.optimizer is not None
        self.model.training_info = self.training_info()
        optimizer, tensors = optimizer_state(self.optimizer)
        rng, rng_tensors = rng_state(self.rng)
        tensors |= rng_tensors
        if self.target is not None:
            tensors |= prefixed(_trainable_state(self.target.model, self.model), "target")
            if self.online.calibration is not None and self.target.calibration is not None:
                tensors |= prefixed(self.online.calibration.state_dict(), "calibration")
                tensors |= prefixed(self.target.calibration.state_dict(), "target_calibration")
        state = {
            "step": self.step,
            # the phase of the step just done, whose optimiser (and target networks) are saved; the loop
            # starts the next phase itself, exactly as an uninterrupted run does
            "phase": self.phase(max(self.step - 1, 0)),
            "train_seconds": self.train_seconds,
            "train_cpu_seconds": self.train_cpu_seconds,
            "wall_seconds": self.wall_seconds,
            "config": self.config.to_dict(),
            "last_evaluation": self.last_evaluation,
            "optimizer": optimizer,
            "rng": rng,
        }
        if self.processes.scaler is not None:
            state["scaler"], scaler_tensors = scaler_state(self.processes.scaler)
            tensors |= scaler_tensors
        write_checkpoint(self.out_dir / CHECKPOINT_DIR, self.model, state, tensors)
        self.checkpoint_step = self.step

    def load_checkpoint(self) -> None:
        """Restore the state written by :meth:`save_checkpoint`, so the run continues exactly."""
        if self.out_dir is None:
            raise InvalidInputError("resuming needs the output directory of the interrupted run")
        directory = self.out_dir / CHECKPOINT_DIR
        if self.processes.is_main:
            recover_checkpoint(directory)
        self.processes.barrier()
        state, tensors = read_checkpoint(directory)
        try:
            changed = sorted(
                k
                for k, v in state["config"].items()
                if self.config.to_dict().get(k) != v and k not in RESUME_MAY_CHANGE
            )
            if changed:
                raise CheckpointError(f"the checkpoint in {directory} was written with other settings: {changed}")
            saved = QRAG.from_pretrained(str(directory / MODEL_DIR), device=str(self.model.device))
            self.model.load_state_dict(saved.state_dict())
            self.model.weights_changed()
            self.step = state["step"]
            self.train_seconds, self.wall_seconds = state["train_seconds"], state["wall_seconds"]
            self.train_cpu_seconds = state["train_cpu_seconds"]
            self.last_evaluation = state["last_evaluation"]
            self.start_phase(state["phase"])
            assert self.optimizer is not None
            restore_optimizer(self.optimizer, state["optimizer"], tensors)
            if self.target is not None:
                restore_module(self.target.model, with_prefix(tensors, "target"), "target network", strict=False)
                self.target.model.weights_changed()
                if self.online.calibration is not None and self.target.calibration is not None:
                    calibration, target_calibration = self.online.calibration, self.target.calibration
                    restore_module(calibration, with_prefix(tensors, "calibration"), "value calibration", True)
                    restore_module(
                        target_calibration, with_prefix(tensors, "target_calibration"), "target calibration", True
                    )
            restore_rng(self.rng, state["rng"], tensors)
            if self.processes.scaler is not None:
                if "scaler" in state:
                    restore_scaler(self.processes.scaler, state["scaler"], tensors)
                else:
                    logger.warning("%s holds no loss-scaler state (an older qrag): the loss scale restarts", directory)
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise CheckpointError(f"the checkpoint in {directory} is corrupt or incomplete: {err!r}") from err
        self.checkpoint_step = self.step
        logger.info("resumed from %s at step %d", directory, self.step)


def _trainable_state(target: QRAG, online: QRAG) -> dict[str, torch.Tensor]:
    """The target's copies of the online network's trainable parameters (frozen ones are shared)."""
    trainable = {name for name, p in online.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in target.state_dict().items() if k in trainable}


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    model: QRAG,
    examples: Iterable[Example],
    config: TrainingConfig | None = None,
    eval_examples: Iterable[Example] | Mapping[str, Iterable[Example]] | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    cache: EmbeddingCache | None = None,
    show_progress: bool = True,
    data_info: Mapping[str, Any] | None = None,
    processes: Processes | None = None,
    overwrite: bool = False,
) -> TrainingResult:
    """Fine-tune ``model`` in place on labelled examples (a list, a generator, or ``read_jsonl(...)``).

    ``eval_examples`` is one evaluation set or several by name. With ``out_dir`` the run writes
    ``metrics.csv``, TensorBoard events, checkpoints and the final model (``out_dir/model``);
    ``resume=True`` continues the run whose checkpoint is there, ``overwrite=True`` starts over in place
    of an earlier run there (without it, an earlier run's files are never replaced; files that no qrag
    run wrote never are). ``data_info`` (e.g. the data file names) is recorded in the model card. Under
    ``torchrun`` / ``accelerate launch`` the run is data-parallel (``processes`` defaults to the launched
    ones, :mod:`qrag_core.training.distributed`): every process gets the same arguments, the main process
    evaluates and writes ``out_dir``.
    """
    if eval_examples is None:
        eval_sets: Mapping[str, Iterable[Example]] = {}
    elif isinstance(eval_examples, Mapping):
        eval_sets = eval_examples
    else:
        eval_sets = {"eval": eval_examples}
    trainer = Trainer(
        model, examples, config or TrainingConfig(), eval_sets, out_dir, cache, show_progress, data_info, processes
    )
    return trainer.run(resume=resume, overwrite=overwrite)
