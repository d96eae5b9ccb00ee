"""One optimiser step of Q-RAG's fine-tuning: :func:`warm_start_update` and :func:`soft_q_update`.

Like CleanRL's ``pqn.py``, each update reads top to bottom and is handed everything it reads and
changes (networks, optimiser, random generator, the step's batch); nothing is kept on an object.
The equations are those of docs/method.md (M1–M9, following arXiv 2511.07328 §3):

- :func:`warm_start_update`: random gold prefixes → the supervised cross-entropy L_ws (M4) →
  optimiser step;
- :func:`soft_q_update`: rollout with the online networks and the Boltzmann policy (M5; rewards M1) →
  soft values V′(s_{t+1}) of the target networks (M6) → λ-returns G_t (M7) → mean squared error L_Q
  (M8) → optimiser step → Polyak update of the targets (M9).

Above them sit their pieces, pure functions tested by hand (reward, soft value, λ-returns, Polyak
update), the training documents, and :class:`QFunction`: the Q_θ the soft-Q phase learns, which an
optional :class:`ValueCalibration` wraps, so the update never asks whether a calibration is there.
The schedule, evaluation, logging and checkpoints are :mod:`qrag_core.training.trainer`'s.

Under data parallelism (:mod:`qrag_core.training.distributed`) every process calls the same update on
the same global batch: it works on its own slice, draws the random numbers of the whole batch, divides
its losses by the global batch (or transition count) and sums the gradients before the step, so that
every process applies the single-process update.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from qrag_core.data.examples import Example
from qrag_core.errors import CheckpointError, DivergedError, InvalidInputError
from qrag_core.model import QRAG
from qrag_core.training.config import TrainingConfig
from qrag_core.training.distributed import Processes

ModuleT = TypeVar("ModuleT", bound=nn.Module)


# ================================================================================================ training documents
@dataclass
class TrainingDocument:
    """One training example as the updates use it: chunk texts, supporting facts and frozen content embeddings."""

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

    def horizon(self, episode_steps: int | None) -> int:
        """T of an episode on this document: ``episode_steps``, or (none) the fewest steps that find all facts."""
        return min(episode_steps or self.min_steps, len(self.texts))

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
    """Chunk every example and find its supporting facts' occurrences; an example without support labels is an error.

    Each fact is kept as all its occurrences: a fact repeated in the document is found when any one copy
    is selected, as :func:`qrag_core.metrics.resolve_support` scores it.
    """
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


def content(network: QRAG, doc: TrainingDocument) -> torch.Tensor:
    """e_i of every chunk of ``doc`` under ``network``'s action transformer, without gradient."""
    if doc.content is not None:
        return doc.content
    return network.action_encoder.encode(doc.texts)


def content_with_grad(model: QRAG, docs: Sequence[TrainingDocument], indices: Sequence[int]) -> torch.Tensor:
    """e of chunk ``indices[j]`` of ``docs[j]``, with gradient when the action transformer is trained."""
    if model.config.freeze_action_encoder:
        return torch.stack([doc.content[i].float() for doc, i in zip(docs, indices, strict=True)])
    return model.action_encoder.embed([doc.texts[i] for doc, i in zip(docs, indices, strict=True)])


# ================================================================================================ the pieces
def step_reward(
    kind: str,
    num_support: int,
    found_before: int,
    found_after: int,
    num_selected: int,
    min_selected: int | None = None,
) -> float:
    """Reward r_t of one step (M1; arXiv 2511.07328 §3.1) given how many of the ``num_support`` supporting
    facts the state had found before and after it.

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


def boltzmann_choice(weights: np.ndarray, uniform: float) -> int:
    """The index that ``numpy.random.Generator.choice(len(weights), p=weights / weights.sum())`` draws
    from the uniform number ``uniform`` (its one draw): the same choice, with the draw made elsewhere."""
    if not np.isfinite(weights).all() or weights.sum() <= 0:
        raise InvalidInputError(f"the policy's probabilities are not finite and positive: {weights}")
    cdf = (weights / weights.sum()).cumsum()
    cdf /= cdf[-1]
    return int(cdf.searchsorted(uniform, side="right"))


def soft_value(q: torch.Tensor, alpha: float) -> torch.Tensor:
    """V(s) = α·log Σ_c exp(Q(s, c)/α) (M6) over the last dimension; unavailable chunks hold -inf."""
    return alpha * torch.logsumexp(q / alpha, dim=-1)


def lambda_returns(rewards: torch.Tensor, next_values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns (M7) of one episode, computed backwards.

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
    """θ′ ← τθ + (1 − τ)θ′ (M9) for every trainable parameter of ``online`` (frozen ones are shared or equal)."""
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


class QFunction(nn.Module):
    """Q_θ as the soft-Q phase learns it: the model's Q (M2), optionally wrapped in a :class:`ValueCalibration`.

    The target networks θ′ are a copy of the whole (:meth:`target_copy`), so one Polyak update (M9)
    moves the model's and the calibration's targets alike.
    """

    def __init__(self, model: QRAG, calibration: ValueCalibration | None = None) -> None:
        super().__init__()
        self.model = model
        self.register_module("calibration", calibration)

    @property
    def scale(self) -> float:
        """The factor on the model's Q in the calibrated Q (1 without a calibration)."""
        return 1.0 if self.calibration is None else self.calibration.scale.item()

    def calibrated(self, states: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Q of the model's ``q`` (B,) or (B, N) for the (B, d) state embeddings: itself without a calibration."""
        return q if self.calibration is None else self.calibration(states, q)

    def target_copy(self) -> QFunction:
        """θ′: a copy without gradients (:func:`frozen_copy`)."""
        return frozen_copy(self, self.model)


def frozen_copy(module: ModuleT, model: QRAG) -> ModuleT:
    """A copy of ``module`` (``model`` or a module holding it) without gradients; a frozen action
    transformer is shared, not copied (it never changes)."""
    encoder = model.action_encoder
    shared = {id(encoder): encoder} if model.config.freeze_action_encoder else {}
    return copy.deepcopy(module, memo=shared).requires_grad_(False)


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


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """lr_t for every parameter group, times the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]


def weights_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every trained parameter is finite."""
    return all(bool(torch.isfinite(p).all()) for group in optimizer.param_groups for p in group["params"])


def optimizer_step(
    model: QRAG, optimizer: torch.optim.Optimizer, loss: float, max_grad_norm: float, processes: Processes
) -> float:
    """Sum the gradients over the processes, clip them and step; returns the gradient norm before clipping.

    A non-finite ``loss`` (the same sum on every process, so they all stop alike) raises
    :class:`DivergedError` before the step; a non-finite gradient that made the weights non-finite
    raises after it (a mixed-precision loss scaler skips such a step, which is harmless).
    """
    if not math.isfinite(loss):
        raise DivergedError(f"loss {loss}; the weights were not updated")
    grad_norm = float(processes.optimizer_step(optimizer, max_grad_norm))
    if not math.isfinite(grad_norm) and not weights_finite(optimizer):
        raise DivergedError(f"gradient norm {grad_norm} made the weights non-finite; they were not saved")
    model.weights_changed()
    return grad_norm


# ================================================================================================ warm start
def warm_start_draws(
    docs: Sequence[TrainingDocument], mistakes: float, rng: np.random.Generator
) -> list[tuple[list[int], bool]]:
    """The random part of the warm start for each of ``docs``: a gold prefix, and whether to add a mistake.

    The gold prefix is the chunks of one occurrence (drawn when a fact has several) of each of a random
    number of random facts; a mistake is added with probability ``mistakes``. Drawn per example in batch
    order, for the whole global batch on every process, so that micro-batches and processes see the
    numbers of a single-process run.
    """
    draws = []
    for doc in docs:
        size = int(rng.integers(0, len(doc.facts)))
        chunks: set[int] = set()
        for fact in rng.choice(len(doc.facts), size=size, replace=False).tolist():
            occurrences = doc.facts[fact]
            # a draw only where there is a choice: with one occurrence per fact, the numbers of old runs
            chunks |= occurrences[int(rng.integers(len(occurrences))) if len(occurrences) > 1 else 0]
        prefix = sorted(chunks)
        mistake = mistakes > 0 and rng.random() < mistakes
        draws.append((prefix, bool(mistake)))
    return draws


@dataclass
class Distillation:
    """The warm start's optional distillation term (M4′): the frozen start model Q_0 and its weight β."""

    teacher: QRAG
    """Q_0: a frozen copy of the model the run started from (:func:`frozen_copy`)."""
    weight: float
    """β."""
    documents: str = "ordered"
    """ordered, collections or all (TrainingConfig.distillation_documents)."""

    def covers(self, doc: TrainingDocument) -> bool:
        return self.documents == "all" or doc.ordered == (self.documents == "ordered")

    @torch.no_grad()
    def teacher_q(self, docs: Sequence[TrainingDocument], prefixes: Sequence[list[int]]) -> dict[int, torch.Tensor]:
        """Q_0(q + P, ·) of each covered document of ``docs`` at its prefix, by batch row."""
        rows = [b for b, doc in enumerate(docs) if self.covers(doc)]
        if not rows:
            return {}
        teacher = self.teacher
        states = teacher.state_vectors(
            [docs[b].question for b in rows], [docs[b].state_texts(prefixes[b]) for b in rows]
        )
        return {
            b: teacher.q_row(
                states[r], teacher.action_vectors(content(teacher, docs[b]).float()), prefixes[b], docs[b].ordered
            )
            for r, b in enumerate(rows)
        }


def softmax_kl(teacher_logits: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(teacher_logits) ‖ softmax(logits)) over the entries finite in both (−inf: selected chunks)."""
    available = torch.isfinite(teacher_logits) & torch.isfinite(logits)
    target, log_p = torch.log_softmax(teacher_logits[available], 0), torch.log_softmax(logits[available], 0)
    return nn.functional.kl_div(log_p, target, reduction="sum", log_target=True)


def supervised_loss(
    model: QRAG,
    docs: Sequence[TrainingDocument],
    prefixes: Sequence[list[int]],
    temperature: float,
    distillation: Distillation | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Σ L_ws (M4), plus Σ L_kd (M4′) with a ``distillation``, at the states question + prefix, and those
    states' Q rows (detached).

    L_ws = −log Σ_{missing support c} softmax(Q(s, ·)/temperature)_c, the missing support being every
    chunk of every occurrence of each fact the prefix has not found.
    """
    states = model.state_vectors(
        [d.question for d in docs], [d.state_texts(p) for d, p in zip(docs, prefixes, strict=True)]
    )
    teacher_q = distillation.teacher_q(docs, prefixes) if distillation is not None else {}
    loss, q_rows = states.new_zeros(()), []
    for row, (doc, prefix) in enumerate(zip(docs, prefixes, strict=True)):
        e = doc.content.float() if model.config.freeze_action_encoder else model.action_encoder.embed(doc.texts)
        q = model.q_row(states[row], model.action_vectors(e), prefix, doc.ordered)
        logits = q / temperature
        missing = torch.as_tensor(doc.missing_support(prefix), device=logits.device)
        loss = loss + torch.logsumexp(logits, 0) - torch.logsumexp(logits[missing], 0)
        if row in teacher_q:
            assert distillation is not None
            loss = loss + distillation.weight * softmax_kl(teacher_q[row] / temperature, logits)
        q_rows.append(q.detach().cpu())
    return loss, q_rows


def warm_start_loss(
    model: QRAG,
    docs: Sequence[TrainingDocument],
    draws: Sequence[tuple[list[int], bool]],
    batch_size: int,
    temperature: float,
    distillation: Distillation | None = None,
) -> torch.Tensor:
    """L_ws (M4), and L_kd (M4′) with a ``distillation``, of ``docs`` from their :func:`warm_start_draws`,
    summed and divided by ``batch_size``.

    An example drawn with a mistake adds a second state: the gold prefix plus the non-support chunk the
    model ranks highest there, i.e. the state after its likeliest mistake, so that the model also learns
    to find the missing support after a wrong pick (greedy search at T > |F*| has steps to spare for that).
    """
    prefixes = [prefix for prefix, _ in draws]
    loss, q_rows = supervised_loss(model, docs, prefixes, temperature, distillation)
    mistakes = []
    for b in [b for b, (_, mistake) in enumerate(draws) if mistake]:
        q = q_rows[b].index_fill(0, torch.as_tensor(sorted(docs[b].support)), float("-inf"))
        if torch.isfinite(q).any():
            mistakes.append((b, int(q.argmax())))
    if mistakes:
        extra, _ = supervised_loss(
            model,
            [docs[b] for b, _ in mistakes],
            [sorted([*prefixes[b], m]) for b, m in mistakes],
            temperature,
            distillation,
        )
        loss = loss + extra
    return loss / batch_size


def warm_start_update(
    model: QRAG,
    optimizer: torch.optim.Optimizer,
    docs: Sequence[TrainingDocument],
    config: TrainingConfig,
    lr: float,
    rng: np.random.Generator,
    processes: Processes | None = None,
    distillation: Distillation | None = None,
) -> dict[str, float]:
    """One optimiser step of the supervised warm start (M4; M4′ with a ``distillation``) on the global batch
    ``docs``; returns its metrics."""
    processes = processes or Processes()
    local = processes.local_slice(len(docs))
    mine, micro = docs[local], config.micro_batch_size or len(docs)
    set_learning_rate(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)

    # Random gold prefixes P ⊂ F* (and which examples add their likeliest mistake), for the whole batch.
    draws = warm_start_draws(docs, config.warm_start_mistakes, rng)[local]

    # L_ws = −log Σ_{c ∈ F* \ P} softmax_c(Q_θ(q + P, ·)/τ_ws) (M4), over micro-batches, per global example;
    # with a distillation, + β·KL(softmax(Q_0(q + P, ·)/τ_ws) ‖ softmax(Q_θ(q + P, ·)/τ_ws)) (M4′).
    loss_total = 0.0
    for first in range(0, len(mine), micro):
        with processes.autocast():
            loss = warm_start_loss(
                model,
                mine[first : first + micro],
                draws[first : first + micro],
                len(docs),
                config.warm_start_temperature,
                distillation,
            )
        processes.backward(loss)
        loss_total += loss.item()
    (loss_total,) = processes.sum([loss_total])

    # AdamW step on the gradients summed over the processes, clipped.
    grad_norm = optimizer_step(model, optimizer, loss_total, config.max_grad_norm, processes)
    return {"lr": lr, "loss": loss_total, "grad_norm": grad_norm}


# ================================================================================================ soft Q
@torch.no_grad()
def rollout(
    online: QFunction,
    docs: Sequence[TrainingDocument],
    alpha: float,
    config: TrainingConfig,
    rng: np.random.Generator,
    processes: Processes | None = None,
) -> list[Episode]:
    """Episodes on this process's slice of the global batch ``docs``, in parallel, with the online networks
    and the Boltzmann policy over the top-k available chunks (M5); each step's reward is r_t (M1).

    Each round draws one uniform number per episode still running anywhere in the global batch, in batch
    order, so that every process draws the numbers of a single-process run and uses those of its own episodes.
    """
    processes = processes or Processes()
    local = processes.local_slice(len(docs))
    model, scale, mine = online.model, online.scale, docs[local]
    episodes = [Episode(doc) for doc in mine]
    actions = [model.action_vectors(content(model, doc)) for doc in mine]
    active = list(range(len(mine)))
    while True:
        running = processes.concat([b in active for b in range(len(mine))], len(docs))
        if not any(running):
            break
        uniforms = rng.random(int(sum(running)))[int(sum(running[: local.start])) :]
        if not active:
            continue
        states = model.state_vectors(
            [mine[b].question for b in active], [mine[b].state_texts(episodes[b].actions) for b in active]
        )
        for row, b in enumerate(active):
            episode, doc = episodes[b], mine[b]
            q = model.q_row(states[row], actions[b], episode.actions, doc.ordered).double().cpu()
            k = min(config.top_k or q.shape[0], q.shape[0] - len(episode.actions))
            top_q, top_i = q.topk(k)
            # π(c | s_t) ∝ exp((Q(s_t, c) − max Q)/α_t), Q calibrated (a state value cancels in the softmax)
            probs = torch.softmax(scale * (top_q - top_q[0]) / alpha, 0).numpy()
            choice = int(top_i[boltzmann_choice(probs, uniforms[row])])
            before = doc.facts_found(episode.actions)
            episode.actions.append(choice)
            after = doc.facts_found(episode.actions)
            episode.rewards.append(
                step_reward(config.reward, len(doc.facts), before, after, len(episode.actions), doc.min_steps)
            )
        active = [
            b
            for b in active
            if not episodes[b].found_all and len(episodes[b].actions) < mine[b].horizon(config.episode_steps)
        ]
    return episodes


@torch.no_grad()
def episode_returns(
    target: QFunction, episodes: Sequence[Episode], alpha: float, gamma: float, lam: float
) -> list[torch.Tensor]:
    """λ-returns G_t (M7) of every episode, bootstrapped from the target networks' soft values V′(s_{t+1}) (M6)."""
    network = target.model
    items = [(e, t) for e in episodes for t in range(1, len(e.actions))]
    next_values: dict[int, list[torch.Tensor]] = {id(e): [] for e in episodes}
    if items:
        states = network.state_vectors(
            [e.doc.question for e, _ in items], [e.doc.state_texts(e.actions[:t]) for e, t in items]
        )
        actions = {id(e): network.action_vectors(content(network, e.doc)) for e in episodes}
        for row, (e, t) in enumerate(items):
            q = network.q_row(states[row], actions[id(e)], e.actions[:t], e.doc.ordered)
            q = target.calibrated(states[row : row + 1], q.unsqueeze(0))[0]
            next_values[id(e)].append(soft_value(q, alpha))
    returns = []
    for e in episodes:
        values = torch.stack(next_values[id(e)]).cpu() if next_values[id(e)] else torch.empty(0)
        rewards = torch.tensor(e.rewards, dtype=torch.float32)
        returns.append(lambda_returns(rewards, values.float(), gamma, lam))
    return returns


def q_learning_loss(
    online: QFunction, episodes: Sequence[Episode], returns: Sequence[torch.Tensor], num_transitions: int
) -> torch.Tensor:
    """Σ (Q_θ(s_t, a_t) − G_t)² / num_transitions (M8), with gradients through E_s(s_t) and the chosen action."""
    model = online.model
    items = [(e, t) for e in episodes for t in range(len(e.actions))]
    states = model.state_vectors(
        [e.doc.question for e, _ in items], [e.doc.state_texts(e.actions[:t]) for e, t in items]
    )
    chosen = model.action_vectors(content_with_grad(model, [e.doc for e, _ in items], [e.actions[t] for e, t in items]))
    taken = [(len(e.doc.texts), e.actions[:t], e.actions[t]) for e, t in items]
    q = online.calibrated(states, model.q_taken(states, chosen, taken, [e.doc.ordered for e, _ in items]))
    targets = torch.cat(list(returns)).to(q.device)
    return ((q - targets) ** 2).sum() / num_transitions


def soft_q_update(
    online: QFunction,
    target: QFunction,
    optimizer: torch.optim.Optimizer,
    docs: Sequence[TrainingDocument],
    config: TrainingConfig,
    lr: float,
    rng: np.random.Generator,
    processes: Processes | None = None,
) -> dict[str, float]:
    """One optimiser step of soft Q-learning (M5–M9) on the global batch ``docs``; returns its metrics.

    On-policy without a replay buffer, as in PQN: the batch's episodes are rolled out, their targets
    computed and regressed onto in the same step.
    """
    processes = processes or Processes()
    micro = config.micro_batch_size or len(docs)
    alpha = config.alpha * lr / config.lr  # α_t = α_0·lr_t/lr_peak (M5): the policy anneals with the schedule
    set_learning_rate(optimizer, lr)
    optimizer.zero_grad(set_to_none=True)

    with processes.autocast():
        # Rollout: the online networks choose with the Boltzmann policy (M5) and collect the rewards r_t (M1).
        episodes = rollout(online, docs, alpha, config, rng, processes)
        # Targets: V′(s_{t+1}) = α·log Σ exp(Q_θ′(s_{t+1}, ·)/α) (M6) from the target networks, then
        # G_t = r_t + γ·[(1 − λ)·V′(s_{t+1}) + λ·G_{t+1}], G_{T−1} = r_{T−1} (M7), backwards.
        returns = episode_returns(target, episodes, alpha, config.gamma, config.lam)
    found, total_return, transitions = processes.sum(
        [
            sum(e.found_all for e in episodes),
            sum(sum(e.rewards) for e in episodes),
            sum(len(e.actions) for e in episodes),
        ]
    )

    # L_Q = mean_t (Q_θ(s_t, a_t) − G_t)² (M8) over the batch's transitions, over micro-batches of episodes.
    loss_total = 0.0
    for first in range(0, len(episodes), micro):
        with processes.autocast():
            loss = q_learning_loss(
                online, episodes[first : first + micro], returns[first : first + micro], int(transitions)
            )
        processes.backward(loss)
        loss_total += loss.item()
    (loss_total,) = processes.sum([loss_total])

    # AdamW step on the gradients summed over the processes, clipped.
    grad_norm = optimizer_step(online.model, optimizer, loss_total, config.max_grad_norm, processes)

    # Polyak: θ′ ← τ·θ + (1 − τ)·θ′ (M9), the calibration's target with it.
    polyak_update(target, online, config.tau)
    target.model.weights_changed()

    metrics = {
        "lr": lr,
        "alpha": alpha,
        "loss": loss_total,
        "grad_norm": grad_norm,
        "rollout_fact_em": found / len(docs),
        "rollout_return": total_return / len(docs),
        "rollout_length": transitions / len(docs),
    }
    if online.calibration is not None:
        metrics["q_scale"] = online.scale
    return metrics
