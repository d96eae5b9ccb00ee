"""Fine-tuning the Q-RAG embedders: a supervised warm start, then soft Q-learning (arXiv 2511.07328; docs/method.md §4).

Read top to bottom, this module is the whole algorithm:

1. pure math: the learning-rate schedule, the reward, the soft value
   V′(s) = α·log Σ_{available c} exp(Q_θ′(s, c)/α), the λ-returns
   G_t = r_t + γ·[(1 − λ)·V′(s_{t+1}) + λ·G_{t+1}] (G_t = r_t at an episode's last step), the Polyak update
   θ′ ← τθ + (1 − τ)θ′;
2. training documents: chunks, supporting facts (each as its occurrences: a fact repeated in the document
   is found when any one copy is selected, as :func:`qrag_core.metrics.resolve_support` scores it) and
   (action transformer frozen) their content embeddings e_i, computed once through the shared embedding cache;
3. the supervised warm start: from a random gold prefix (one copy of each of some facts), cross-entropy
   pushing softmax(Q/temperature) over the available chunks towards every copy of the facts still missing;
4. the soft-Q phase, on-policy without a replay buffer: episodes rolled out in parallel with the online
   networks (Boltzmann policy over the top-k available chunks, α_t = α_0·lr_t/lr_peak), soft values from
   target networks, λ-returns computed backwards, MSE between Q_θ(s_t, a_t) and G_t with gradients through
   the state embedding and the chosen action's embedding, Polyak target updates after each optimiser step;
5. the loop: AdamW with warm-up then linear decay per phase, gradient accumulation and clipping, periodic
   greedy evaluation (fact EM / recall, :mod:`qrag_core.evaluation`), the metrics log, atomic checkpoints
   without pickle (:mod:`qrag_core.training.checkpoint`) and exact resume; a non-finite loss or gradient
   stops the run before it reaches the weights.

Both phases run the networks in eval mode (no dropout), so a rollout, its targets and its loss all see
the same deterministic Q-function.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from qrag_core.baselines import QRAGSearch
from qrag_core.data.examples import Example
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import CheckpointError, InvalidInputError, TrainingError
from qrag_core.evaluation import evaluate
from qrag_core.model import QRAG
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


# ================================================================================================ 1. pure math
def phase_learning_rate(step: int, phase_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up over ``warmup_steps``, then linear decay; ``step`` is 0-based inside the phase.

    The rate is positive at every step of the phase (the last one gets peak / (phase_steps − warmup_steps)),
    so the annealed temperature α_t = α_0·lr_t/lr_peak never reaches zero.
    """
    ramp = (step + 1) / max(warmup_steps, 1)
    decay = (phase_steps - step) / max(phase_steps - warmup_steps, 1)
    return peak * min(1.0, ramp, decay)


def step_reward(
    kind: str,
    num_support: int,
    found_before: int,
    found_after: int,
    num_selected: int,
    min_selected: int | None = None,
) -> float:
    """Reward of one step (arXiv 2511.07328 §3.1) given how many of the ``num_support`` supporting facts
    the state had found before and after it.

    ``sparse``: 1 at the step at which all facts are first found; ``step_penalty``: then
    0.5 + 0.5·|F*|/|selected| instead, |F*| the fewest chunks that find every fact (``min_selected``,
    by default one per fact); ``per_fact``: 1/(number of facts) for every newly found fact.
    """
    if kind == "per_fact":
        return (found_after - found_before) / num_support
    if found_after < num_support or found_before == num_support:
        return 0.0
    if kind == "sparse":
        return 1.0
    if kind == "step_penalty":
        return 0.5 + 0.5 * (num_support if min_selected is None else min_selected) / num_selected
    raise InvalidInputError(f"unknown reward {kind!r}")


def soft_value(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """V(s) = α·log Σ_c exp(Q(s, c)/α) over the last dimension; unavailable chunks hold -inf."""
    return alpha * torch.logsumexp(q / alpha, dim=-1)


def boltzmann_choice(weights: np.ndarray, uniform: float) -> int:
    """The index that ``numpy.random.Generator.choice(len(weights), p=weights / weights.sum())`` draws
    from the uniform number ``uniform`` (its one draw): the same choice, with the draw made elsewhere."""
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        raise InvalidInputError(f"the policy's probabilities are not finite and positive: {weights}")
    cdf = (weights / weights.sum()).cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(uniform, side="right"))


def lambda_returns(rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns of one episode, computed backwards.

    ``rewards[t]`` is r_t for t = 0..L-1 and ``next_values[t]`` is V′(s_{t+1}) for t = 0..L-2 (the last
    step ends the episode, so G_{L-1} = r_{L-1} and it needs no next value).
    """
    length = rewards.shape[0]
    if next_values.shape[0] != length - 1:
        raise InvalidInputError(f"{length} rewards need {length - 1} next-state values, got {next_values.shape[0]}")
    returns = torch.empty_like(rewards)
    returns[-1] = rewards[-1]
    for t in range(length - 2, -1, -1):
        returns[t] = rewards[t] + gamma * ((1.0 - lam) * next_values[t] + lam * returns[t + 1])
    return returns


@torch.no_grad()
def polyak_update(target: nn.Module, online: nn.Module, tau: float) -> None:
    """θ′ ← τθ + (1 − τ)θ′ for every trainable parameter of ``online`` (frozen ones are shared or equal)."""
    for (name, p_target), (other, p_online) in zip(
        target.named_parameters(remove_duplicate=False), online.named_parameters(remove_duplicate=False), strict=True
    ):
        if name != other or p_target.shape != p_online.shape:
            raise CheckpointError(f"target and online networks differ in structure ({name} vs {other})")
        if p_online.requires_grad:
            p_target.lerp_(p_online, tau)


class ValueCalibration(nn.Module):
    """Training-only dueling form of the soft-Q phase: Q(s, c) = V(s) + scale·⟨E_s(s), R(ρ_t)·h(e_c)⟩.

    The returns live on the reward scale, while the model's Q (a cosine) comes out of the warm start
    on a scale of its own; regressing the cosine itself onto the returns moves every chunk's similarity
    to the returns' level and blurs the ranking the warm start learnt. A linear state value V(s) takes
    the level of each state and a positive scale the spread; neither changes how a state ranks chunks,
    so the saved model (which keeps only the cosine) searches exactly as the calibrated Q would.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.value = nn.Linear(dim, 1)
        nn.init.zeros_(self.value.weight)
        nn.init.zeros_(self.value.bias)
        self.log_scale = nn.Parameter(torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, states: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Calibrated Q of ``q`` (B,) or (B, N) cosines for the (B, d) state embeddings."""
        value = self.value(states.detach()).squeeze(-1)  # the level is learnt here, not by moving the embeddings
        return value.view(-1, *([1] * (q.dim() - 1))) + self.scale * q


# ================================================================================================ 2. documents
@dataclass
class TrainingDocument:
    """One training example as the trainer uses it: chunk texts, supporting facts and frozen content embeddings."""

    example_id: str
    question: str
    texts: list[str]
    facts: tuple[tuple[frozenset[int], ...], ...]
    """Each supporting fact as its occurrences (sets of chunk indices); selecting any one finds the fact."""
    ordered: bool = True
    """False for a collection of independent passages: positions are off (all 0)."""
    content: torch.Tensor | None = None
    """(N, d) float16 content embeddings e_i when the action transformer is frozen; else computed per use."""

    @property
    def support(self) -> frozenset[int]:
        """Every chunk of every occurrence of every fact."""
        return frozenset(i for fact in self.facts for occurrence in fact for i in occurrence)

    @property
    def min_steps(self) -> int:
        """The fewest chunks that find every fact: the smallest occurrence of each, summed."""
        return sum(min(len(occurrence) for occurrence in fact) for fact in self.facts)

    def facts_found(self, selected: Iterable[int]) -> int:
        """How many facts have an occurrence inside ``selected``."""
        chosen = set(selected)
        return sum(any(occurrence <= chosen for occurrence in fact) for fact in self.facts)

    def missing_support(self, selected: Iterable[int]) -> list[int]:
        """Chunks not in ``selected`` of every occurrence of each fact that ``selected`` has not found."""
        chosen = set(selected)
        missing = {
            i
            for fact in self.facts
            if not any(occurrence <= chosen for occurrence in fact)
            for occurrence in fact
            for i in occurrence
        }
        return sorted(missing - chosen)

    def state_texts(self, selected: Sequence[int]) -> list[str]:
        """The selected chunks in document order, as the state encoder reads them (docs/method.md §2)."""
        return [self.texts[i] for i in sorted(selected)]


def prepare_documents(model: QRAG, examples: Iterable[Example], what: str = "training") -> list[TrainingDocument]:
    """Chunk every example and find its supporting facts' occurrences; an example without support labels is an error."""
    documents = []
    for example in examples:
        if not isinstance(example, Example):
            raise InvalidInputError(f"{what} data must hold qrag Example objects, got {type(example).__name__}")
        if not example.has_support:
            raise InvalidInputError(
                f"{what} example {example.id!r} has no support labels ('supporting_facts' or 'support')"
            )
        chunks = example.to_chunks(model.config.chunking, model.action_encoder.tokenizer)
        facts = tuple(tuple(fact) for fact in example.support_alternatives(chunks))
        documents.append(
            TrainingDocument(example.id, example.question, [c.text for c in chunks], facts, example.ordered)
        )
    if not documents:
        raise InvalidInputError(f"the {what} data holds no examples")
    return documents


def example_schedule(num_examples: int, num_steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of every optimiser step, (num_steps, batch_size): shuffled epochs, fixed by the seed."""
    rng = np.random.default_rng([seed, 7])
    needed = num_steps * batch_size
    epochs = [rng.permutation(num_examples) for _ in range(-(-needed // num_examples))]
    order = np.concatenate(epochs) if epochs else np.empty(0, dtype=np.int64)
    return order[:needed].reshape(num_steps, batch_size)


# ================================================================================================ the trainer
@dataclass
class Episode:
    """One rollout: the chunks chosen in order and the reward of each step."""

    doc: TrainingDocument
    actions: list[int] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)

    @property
    def found_all(self) -> bool:
        """Every supporting fact has an occurrence among the chosen chunks."""
        return self.doc.facts_found(self.actions) == len(self.doc.facts)


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
        self.data_info = dict(data_info or {})
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.cache = cache if cache is not None else EmbeddingCache()
        self.show_progress = show_progress and self.processes.is_main
        self.frozen = model.config.freeze_action_encoder
        self.eval_steps = config.eval_steps or model.config.max_steps
        _seed_everything(config.seed)
        self.documents = prepare_documents(model, examples)
        too_long = sum(d.min_steps > self.horizon(d) for d in self.documents)
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
        self.target: QRAG | None = None
        self.calibration: ValueCalibration | None = None
        self.target_calibration: ValueCalibration | None = None
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

    def horizon(self, doc: TrainingDocument) -> int:
        """T of an episode on ``doc``: episode_steps, or (none) the fewest steps that find all its facts."""
        return min(self.config.episode_steps or doc.min_steps, len(doc.texts))

    def content(self, doc: TrainingDocument, network: QRAG) -> torch.Tensor:
        """e_i of every chunk of ``doc`` under ``network``'s action transformer, without gradient."""
        if doc.content is not None:
            return doc.content
        return network.action_encoder.encode(doc.texts)

    def content_with_grad(self, docs: Sequence[TrainingDocument], indices: Sequence[int]) -> torch.Tensor:
        """e of chunk ``indices[j]`` of ``docs[j]``, with gradient when the action transformer is trained."""
        if self.frozen:
            return torch.stack([doc.content[i].float() for doc, i in zip(docs, indices, strict=True)])
        return self.model.action_encoder.embed([doc.texts[i] for doc, i in zip(docs, indices, strict=True)])

    # -------------------------------------------------------------------------------------------- 3. warm start
    def warm_start_draws(self, docs: Sequence[TrainingDocument]) -> list[tuple[list[int], bool]]:
        """The random part of the warm start for each of ``docs``: a gold prefix, and whether to add a mistake.

        The gold prefix is the chunks of one occurrence (drawn when a fact has several) of each of a random
        number of random facts. Drawn per example in batch order from the trainer's generator, for the
        whole global batch on every process, so that micro-batches and processes see the numbers of a
        single-process run.
        """
        draws = []
        for doc in docs:
            size = int(self.rng.integers(0, len(doc.facts)))
            chunks: set[int] = set()
            for fact in self.rng.choice(len(doc.facts), size=size, replace=False).tolist():
                occurrences = doc.facts[fact]
                # a draw only where there is a choice: with one occurrence per fact, the numbers of old runs
                chunks |= occurrences[int(self.rng.integers(len(occurrences))) if len(occurrences) > 1 else 0]
            prefix = sorted(chunks)
            mistake = self.config.warm_start_mistakes > 0 and self.rng.random() < self.config.warm_start_mistakes
            draws.append((prefix, bool(mistake)))
        return draws

    def warm_start_loss(
        self, docs: Sequence[TrainingDocument], draws: Sequence[tuple[list[int], bool]], batch_size: int
    ) -> torch.Tensor:
        """−log Σ_{missing support c} softmax(Q(s, ·)/temperature)_c from random gold prefixes, summed / batch;
        the missing support is every chunk of every occurrence of each fact the prefix has not found.

        ``draws`` are the examples' :meth:`warm_start_draws`. With ``warm_start_mistakes`` = p, a fraction p
        of the examples adds a second state: the gold prefix plus the non-support chunk the model ranks
        highest there, i.e. the state after its likeliest mistake, so that the model also learns to find
        the missing support after a wrong pick (greedy search at T > |F*| has steps to spare for that).
        """
        prefixes = [prefix for prefix, _ in draws]
        with_mistake = [b for b, (_, mistake) in enumerate(draws) if mistake]
        loss, q_rows = self.supervised_loss(docs, prefixes)
        mistakes = []
        for b in with_mistake:
            q = q_rows[b].index_fill(0, torch.as_tensor(sorted(docs[b].support)), float("-inf"))
            if torch.isfinite(q).any():
                mistakes.append((b, int(q.argmax())))
        if mistakes:
            extra, _ = self.supervised_loss(
                [docs[b] for b, _ in mistakes], [sorted([*prefixes[b], m]) for b, m in mistakes]
            )
            loss = loss + extra
        return loss / batch_size

    def supervised_loss(
        self, docs: Sequence[TrainingDocument], prefixes: Sequence[list[int]]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Summed cross-entropy of the warm start at the states (question + prefix), and those Q rows detached."""
        model, temperature = self.model, self.config.warm_start_temperature
        states = model.state_vectors(
            [d.question for d in docs], [d.state_texts(p) for d, p in zip(docs, prefixes, strict=True)]
        )
        loss, q_rows = states.new_zeros(()), []
        for row, (doc, prefix) in enumerate(zip(docs, prefixes, strict=True)):
            content = doc.content.float() if self.frozen else model.action_encoder.embed(doc.texts)
            q = model.q_row(states[row], model.action_vectors(content), prefix, doc.ordered)
            logits = q / temperature
            missing = torch.as_tensor(doc.missing_support(prefix), device=logits.device)
            loss = loss + torch.logsumexp(logits, 0) - torch.logsumexp(logits[missing], 0)
            q_rows.append(q.detach().cpu())
        return loss, q_rows

    # -------------------------------------------------------------------------------------------- 4. soft Q
    @torch.no_grad()
    def rollout(self, docs: Sequence[TrainingDocument], alpha: float) -> list[Episode]:
        """Run one episode per document in parallel with the online networks and the Boltzmann policy.

        ``docs`` is this process's slice of the global batch. Each round draws one uniform number per
        episode still running anywhere in the global batch, in batch order, so that every process draws
        the numbers of a single-process run and uses those of its own episodes.
        """
        model, top_k, processes = self.model, self.config.top_k, self.processes
        scale = 1.0 if self.calibration is None else self.calibration.scale.item()
        episodes = [Episode(doc) for doc in docs]
        actions = [model.action_vectors(self.content(doc, model)) for doc in docs]
        active = list(range(len(docs)))
        while True:
            running = processes.concat([b in active for b in range(len(docs))], self.config.batch_size)
            if not any(running):
                break
            uniforms = self.rng.random(int(sum(running)))[int(sum(running[: self.local.start])) :]
            if not active:
                continue
            states = model.state_vectors(
                [docs[b].question for b in active], [docs[b].state_texts(episodes[b].actions) for b in active]
            )
            for row, b in enumerate(active):
                episode = episodes[b]
                q = model.q_row(states[row], actions[b], episode.actions, docs[b].ordered).double().cpu()
                k = min(top_k or q.shape[0], q.shape[0] - len(episode.actions))
                top_q, top_i = q.topk(k)
                probs = torch.softmax(scale * (top_q - top_q[0]) / alpha, 0).numpy()
                choice = int(top_i[boltzmann_choice(probs, uniforms[row])])
                doc = episode.doc
                before = doc.facts_found(episode.actions)
                episode.actions.append(choice)
                after = doc.facts_found(episode.actions)
                episode.rewards.append(
                    step_reward(self.config.reward, len(doc.facts), before, after, len(episode.actions), doc.min_steps)
                )
            active = [
                b for b in active if not episodes[b].found_all and len(episodes[b].actions) < self.horizon(docs[b])
            ]
        return episodes

    @torch.no_grad()
    def episode_returns(self, episodes: Sequence[Episode], alpha: float) -> list[torch.Tensor]:
        """λ-returns of every episode, bootstrapped from the target networks' soft values V′(s_{t+1})."""
        target = self.target
        assert target is not None
        items = [(e, t) for e in episodes for t in range(1, len(e.actions))]
        next_values: dict[int, list[torch.Tensor]] = {id(e): [] for e in episodes}
        if items:
            states = target.state_vectors(
                [e.doc.question for e, _ in items], [e.doc.state_texts(e.actions[:t]) for e, t in items]
            )
            actions = {id(e): target.action_vectors(self.content(e.doc, target)) for e in episodes}
            for row, (e, t) in enumerate(items):
                q = target.q_row(states[row], actions[id(e)], e.actions[:t], e.doc.ordered)
                if self.target_calibration is not None:
                    q = self.target_calibration(states[row : row + 1], q.unsqueeze(0))[0]
                next_values[id(e)].append(soft_value(q, alpha))
        returns = []
        for e in episodes:
            values = torch.stack(next_values[id(e)]).cpu() if next_values[id(e)] else torch.empty(0)
            rewards = torch.tensor(e.rewards, dtype=torch.float32)
            returns.append(lambda_returns(rewards, values.float(), self.config.gamma, self.config.lam))
        return returns

    def q_learning_loss(
        self, episodes: Sequence[Episode], returns: Sequence[torch.Tensor], num_transitions: int
    ) -> torch.Tensor:
        """Σ (Q_θ(s_t, a_t) − G_t)² / num_transitions, with gradients through E_s(s_t) and the chosen action."""
        model = self.model
        items = [(e, t) for e in episodes for t in range(len(e.actions))]
        states = model.state_vectors(
            [e.doc.question for e, _ in items], [e.doc.state_texts(e.actions[:t]) for e, t in items]
        )
        chosen = model.action_vectors(
            self.content_with_grad([e.doc for e, _ in items], [e.actions[t] for e, t in items])
        )
        taken = [(len(e.doc.texts), e.actions[:t], e.actions[t]) for e, t in items]
        q = model.q_taken(states, chosen, taken, [e.doc.ordered for e, _ in items])
        if self.calibration is not None:
            q = self.calibration(states, q)
        targets = torch.cat(list(returns)).to(q.device)
        return ((q - targets) ** 2).sum() / num_transitions

    # -------------------------------------------------------------------------------------------- 5. the loop
    def phase(self, step: int) -> str:
        return "warm_start" if step < self.config.warm_start_steps else "soft_q"

    def learning_rate(self, step: int) -> float:
        c = self.config
        if self.phase(step) == "warm_start":
            return phase_learning_rate(step, c.warm_start_steps, c.warm_start_lr, c.warmup_steps)
        return phase_learning_rate(step - c.warm_start_steps, c.rl_steps, c.lr, c.warmup_steps)

    def start_phase(self, phase: str) -> None:
        """A fresh AdamW per phase (the two losses differ in scale); target networks for the soft-Q phase."""
        c = self.config
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        if phase == "soft_q":
            # The frozen action transformer is shared, not copied: it never changes.
            shared = {} if not self.frozen else {id(self.model.action_encoder): self.model.action_encoder}
            self.target = copy.deepcopy(self.model, memo=shared).requires_grad_(False)
            if not self.frozen:
                self.target.action_encoder.requires_grad_(False)
            if c.value_head:
                self.calibration = ValueCalibration(self.model.state_encoder.dim).to(self.model.device)
                self.target_calibration = copy.deepcopy(self.calibration).requires_grad_(False)
                groups.append({"params": list(self.calibration.parameters()), "lr_scale": c.value_head_lr / c.lr})
        self.optimizer = torch.optim.AdamW(
            groups, lr=c.lr, betas=(c.adam_beta1, c.adam_beta2), eps=c.adam_eps, weight_decay=c.weight_decay
        )

    def train_step(self) -> dict[str, Any]:
        """One optimiser step on the scheduled batch (this process's slice of it); returns its metrics.

        Every loss is divided by the global batch size or transition count, so the gradients summed over
        the processes are those of the single-process step.
        """
        c, model, step, processes = self.config, self.model, self.step, self.processes
        lr = self.learning_rate(step)
        alpha = c.alpha * lr / c.lr
        assert self.optimizer is not None
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        docs = [self.documents[i] for i in self.schedule[step]]
        local = docs[self.local]
        micro = c.micro_batch_size or c.batch_size
        metrics: dict[str, Any] = {"lr": lr}
        self.optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        if self.phase(step) == "warm_start":
            draws = self.warm_start_draws(docs)[self.local]
            for first in range(0, len(local), micro):
                with processes.autocast():
                    loss = self.warm_start_loss(local[first : first + micro], draws[first : first + micro], len(docs))
                processes.backward(loss)
                loss_total += loss.item()
            (loss_total,) = processes.sum([loss_total])
        else:
            with processes.autocast():
                episodes = self.rollout(local, alpha)
                returns = self.episode_returns(episodes, alpha)
            found, total_return, transitions = processes.sum(
                [
                    sum(e.found_all for e in episodes),
                    sum(sum(e.rewards) for e in episodes),
                    sum(len(e.actions) for e in episodes),
                ]
            )
            for first in range(0, len(local), micro):
                with processes.autocast():
                    loss = self.q_learning_loss(
                        episodes[first : first + micro], returns[first : first + micro], int(transitions)
                    )
                processes.backward(loss)
                loss_total += loss.item()
            (loss_total,) = processes.sum([loss_total])
            metrics |= {
                "alpha": alpha,
                "rollout_fact_em": found / len(docs),
                "rollout_return": total_return / len(docs),
                "rollout_length": transitions / len(docs),
            }
        self.stop_if_diverged(loss_total)  # the same sum on every process: they all stop alike
        grad_norm = processes.optimizer_step(self.optimizer, c.max_grad_norm)
        if not math.isfinite(float(grad_norm)):  # a mixed-precision scaler skips such a step; else it is harm
            self.stop_if_diverged(loss_total, float(grad_norm), self.weights_finite())
        model.weights_changed()
        if self.target is not None:
            polyak_update(self.target, model, c.tau)
            self.target.weights_changed()
        if self.calibration is not None and self.target_calibration is not None:
            polyak_update(self.target_calibration, self.calibration, c.tau)
            metrics["q_scale"] = self.calibration.scale.item()
        return metrics | {"loss": loss_total, "grad_norm": float(grad_norm)}

    def run_evaluation(self) -> dict[str, Any]:
        """Greedy search with T = eval_steps on every evaluation set: fact EM and recall (main process only)."""
        model, values = self.model, {}
        if not self.processes.is_main:
            return values
        # A trained action transformer changes the content embeddings: keep those out of the shared cache.
        method = QRAGSearch(model, self.cache if self.frozen else None, beam=1)
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

    def stop_if_diverged(self, loss: float, grad_norm: float = 0.0, weights_finite: bool = True) -> None:
        """Raise TrainingError on a non-finite loss (checked before the update) or on weights an update with
        a non-finite gradient made non-finite; they are never saved, the last checkpoint is kept."""
        if math.isfinite(loss) and weights_finite:
            return
        kept = (
            f"the last good checkpoint (step {self.checkpoint_step}) is kept in {self.out_dir / CHECKPOINT_DIR}"
            if self.out_dir is not None and self.checkpoint_step is not None
            else "no checkpoint had been written"
        )
        what = (
            f"loss {loss}; the weights were not updated"
            if not math.isfinite(loss)
            else f"gradient norm {grad_norm} made the weights non-finite; they were not saved"
        )
        raise TrainingError(
            f"training diverged at step {self.step + 1} ({self.phase(self.step)}): {what}, and {kept}. "
            "Start again with a lower learning rate (--lr / --warm-start-lr) or --max-grad-norm"
        )

    def weights_finite(self) -> bool:
        """Whether every trained parameter is finite."""
        assert self.optimizer is not None
        return all(bool(torch.isfinite(p).all()) for group in self.optimizer.param_groups for p in group["params"])

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
            tensors |= prefixed(_trainable_state(self.target, self.model), "target")
        if self.calibration is not None and self.target_calibration is not None:
            tensors |= prefixed(self.calibration.state_dict(), "calibration")
            tensors |= prefixed(self.target_calibration.state_dict(), "target_calibration")
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
                restore_module(self.target, with_prefix(tensors, "target"), "target network", strict=False)
                self.target.weights_changed()
            if self.calibration is not None and self.target_calibration is not None:
                restore_module(self.calibration, with_prefix(tensors, "calibration"), "value calibration", True)
                restore_module(
                    self.target_calibration, with_prefix(tensors, "target_calibration"), "target calibration", True
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
