"""Hyperparameters of the soft-Q trainer (docs/method.md §4), one dataclass whose field docstrings are the CLI help.

``qrag-finetune`` builds one flag per field of :class:`TrainingConfig` from the field's type, default and
docstring (:func:`qrag_core.config.field_docs`), so the documentation of a hyperparameter is written exactly once.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from qrag_core.errors import InvalidInputError
from qrag_core.validation import check_field_types

REWARDS: tuple[str, ...] = ("sparse", "step_penalty", "per_fact")
MIXED_PRECISION: tuple[str, ...] = ("no", "bf16", "fp16")
DISTILLATION_DOCUMENTS: tuple[str, ...] = ("ordered", "collections", "all")


@dataclass
class TrainingConfig:
    """Everything that decides a training run; saved in checkpoints and in the trained model's card."""

    seed: int = 0
    """Seed of torch, numpy and random: the same seed and data give the same run."""
    batch_size: int = 8
    """Episodes (training examples) per optimiser step; they are rolled out in parallel."""
    micro_batch_size: int | None = None
    """Episodes per forward/backward pass; the passes of one step accumulate gradients (none: batch_size)."""
    warm_start_steps: int = 300
    """Optimiser steps of the supervised warm start (0 switches it off)."""
    warm_start_lr: float = 1e-4
    """Peak learning rate of the warm start."""
    warm_start_temperature: float = 0.05
    """Temperature of the warm-start softmax over the Q-values of the available chunks."""
    warm_start_mistakes: float = 0.0
    """Fraction of warm-start examples that also train from the state after the model's top-ranked wrong chunk."""
    distillation_weight: float = 0.0
    """β: the warm start adds β·KL(start model ‖ model) of its softmax, keeping the start's ranking (0: off)."""
    distillation_documents: str = "ordered"
    """Documents the distillation term covers: ordered (documents), collections (passages) or all."""
    rl_steps: int = 300
    """Optimiser steps of the soft Q-learning phase that follows the warm start (0 switches it off)."""
    lr: float = 1e-5
    """Peak learning rate of the soft Q-learning phase (5e-5 undid part of a QA2 warm start; BENCHMARKS.md)."""
    warmup_steps: int = 20
    """Linear learning-rate warm-up at the start of each phase, then linear decay to zero at its end."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.98
    """AdamW β2."""
    adam_eps: float = 1e-6
    """AdamW ε."""
    max_grad_norm: float = 2.0
    """Gradient-norm clipping threshold."""
    episode_steps: int | None = None
    """T: chunks an episode may select (none: as many as the example has support chunks; each step must find one)."""
    alpha: float = 0.05
    """α_0: temperature of the Boltzmann policy and of the soft value; annealed as α_0·lr_t/lr_peak."""
    top_k: int | None = 5
    """Sample exploratory actions among the top-k available chunks by Q (none: all available chunks)."""
    gamma: float = 0.99
    """Discount γ."""
    lam: float = 0.65
    """λ of the λ-returns."""
    tau: float = 0.1
    """Polyak rate τ of the target networks: θ′ ← τθ + (1 − τ)θ′ after each optimiser step."""
    value_head: bool = False
    """Soft-Q phase: learn Q = V(s) + scale·cosine, a linear state value V and a scale > 0 (ranking unchanged)."""
    value_head_lr: float = 1e-3
    """Peak learning rate of V(s) and the scale of --value-head (they start at 0 and 1 and must move fast)."""
    reward: str = "sparse"
    """sparse: 1 when all support is found; step_penalty: 0.5+0.5·|F*|/|selected| then; per_fact: 1/|F*| per fact."""
    eval_every: int = 100
    """Evaluate on the evaluation examples every this many optimiser steps (0: only at the end)."""
    eval_steps: int | None = None
    """T of the greedy evaluation search (none: the model's max_steps)."""
    eval_limit: int | None = None
    """Evaluate on at most this many evaluation examples (none: all)."""
    checkpoint_every: int = 100
    """Write a resumable checkpoint every this many optimiser steps (0: only at the end)."""
    max_train_seconds: float | None = None
    """Stop (evaluate, checkpoint, save) after the step that reaches this many seconds of training (none: no limit)."""
    mixed_precision: str = "no"
    """Forward passes in bf16 or fp16 (fp16: CUDA only, with loss scaling); needs qrag[distributed] (Accelerate)."""

    @property
    def total_steps(self) -> int:
        return self.warm_start_steps + self.rl_steps

    def validate(self) -> TrainingConfig:
        """Raise InvalidInputError naming the first setting of the wrong type, not finite, or inconsistent."""
        check_field_types(self)
        if not 0 <= self.seed < 2**32:
            raise InvalidInputError(f"seed must lie in [0, 2**32), got {self.seed}")
        positive = [
            "batch_size",
            "warm_start_temperature",
            "alpha",
            "max_grad_norm",
            "lr",
            "warm_start_lr",
            "value_head_lr",
            "adam_eps",
        ]
        for name in positive:
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        non_negative = [
            "warm_start_steps",
            "rl_steps",
            "warmup_steps",
            "eval_every",
            "checkpoint_every",
            "weight_decay",
            "distillation_weight",
        ]
        for name in non_negative:
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.total_steps == 0:
            raise InvalidInputError("warm_start_steps and rl_steps are both 0: there is nothing to train")
        for name in ("micro_batch_size", "episode_steps", "eval_steps", "eval_limit", "top_k"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidInputError(f"{name} must be positive or none, got {value}")
        if self.max_train_seconds is not None and self.max_train_seconds < 0:
            raise InvalidInputError(f"max_train_seconds must be >= 0 or none, got {self.max_train_seconds}")
        micro = self.micro_batch_size or self.batch_size
        if self.batch_size % micro:
            raise InvalidInputError(f"micro_batch_size {micro} must divide batch_size {self.batch_size}")
        for name in ("gamma", "lam", "tau", "warm_start_mistakes"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise InvalidInputError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("adam_beta1", "adam_beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InvalidInputError(f"{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.reward not in REWARDS:
            raise InvalidInputError(f"reward must be one of {REWARDS}, got {self.reward!r}")
        if self.distillation_weight > 0 and self.warm_start_steps == 0:
            raise InvalidInputError("distillation_weight acts in the warm start, but warm_start_steps is 0")
        if self.distillation_documents not in DISTILLATION_DOCUMENTS:
            raise InvalidInputError(
                f"distillation_documents must be one of {DISTILLATION_DOCUMENTS}, got {self.distillation_documents!r}"
            )
        if self.mixed_precision not in MIXED_PRECISION:
            raise InvalidInputError(f"mixed_precision must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
