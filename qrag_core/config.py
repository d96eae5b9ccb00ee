"""Configuration dataclasses of a Q-RAG model (SPEC §3), saved as ``config.json`` next to the weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from qrag_core.errors import CheckpointError

PositionMode = Literal["relative", "absolute", "none"]
POSITION_MODES: tuple[str, ...] = ("relative", "absolute", "none")
CONFIG_FORMAT_VERSION = 1


@dataclass
class ChunkingConfig:
    """How a raw document is split into chunks (the actions of the retrieval episode)."""

    mode: Literal["sentences", "tokens"] = "sentences"
    """`sentences`: one sentence per chunk (BabiLong); `tokens`: windows of `max_tokens` tokens."""
    max_tokens: int = 64
    """Window length in base-tokenizer tokens for `tokens` mode; sentences longer than this are split."""
    overlap_tokens: int = 0
    """Tokens shared by consecutive windows in `tokens` mode."""


@dataclass
class QRAGConfig:
    """Every hyperparameter a saved Q-RAG model needs to score and search exactly as it did when saved."""

    base_model: str = "all-MiniLM-L6-v2"
    """Name or path of the sentence-transformers/transformers model both encoders start from."""
    max_chunk_tokens: int = 64
    """Each piece of the state text (question, each selected chunk) and each chunk is truncated to this."""
    normalize: bool = True
    """L2-normalise state and action embeddings, so Q lies in [-1, 1] like the rewards."""
    position_mode: str = "relative"
    """`relative` (ρ_t of SPEC §3.3, temporal tasks), `absolute` (ℓ·i/N) or `none` (open-domain QA)."""
    delta: float = 10.0
    """δ of ρ_t: the distance between consecutive intervals."""
    ell: float = 9.0
    """ℓ of ρ_t: the span of positions inside one interval."""
    rope_theta: float = 10000.0
    """θ of the rotary encoding: pair k of dimensions turns by p·θ^(-2k/d)."""
    twin_heads: bool = False
    """Split d into two halves with their own rotary frequencies, acting as twin Q heads whose sum is Q."""
    freeze_action_encoder: bool = True
    """Keep the action transformer at the base weights and train only a linear action head on top."""
    freeze_state_embeddings: bool = False
    """Keep the state encoder's word embeddings at the base weights (half of MiniLM's parameters: cheaper
    training steps, and a compact checkpoint then stores only the transformer layers)."""
    action_head: bool = True
    """Apply a trainable d×d linear map (initialised to identity) to content embeddings."""
    max_steps: int = 4
    """T: chunks selected per query by default."""
    stop_threshold: float | None = None
    """Stop early when the best Q falls below this (None: always take `max_steps` steps)."""
    beam_width: int = 1
    """Default beam width B of the search (1 = greedy)."""
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    """How documents are chunked by default."""

    def validate(self) -> QRAGConfig:
        if self.position_mode not in POSITION_MODES:
            raise CheckpointError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        if self.max_chunk_tokens <= 0 or self.chunking.max_tokens <= 0:
            raise CheckpointError("max_chunk_tokens and chunking.max_tokens must be positive")
        if self.max_steps <= 0 or self.beam_width <= 0:
            raise CheckpointError("max_steps and beam_width must be positive")
        if self.ell <= 0 or self.delta <= 0 or self.rope_theta <= 1:
            raise CheckpointError("delta and ell must be positive and rope_theta > 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QRAGConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown config keys {unknown}; was this saved by a newer qrag?")
        values = dict(data)
        if isinstance(values.get("chunking"), dict):
            values["chunking"] = ChunkingConfig(**values["chunking"])
        return cls(**values).validate()
