"""Configuration dataclasses of a Q-RAG model (docs/method.md), saved as ``config.json`` next to the weights.

Every config dataclass documents each field with a docstring under it; :func:`field_docs` reads them,
so the command-line tools' help and the framework adapters' field descriptions are written once.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Literal

from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.validation import check_field_types, check_non_negative

PositionMode = Literal["relative", "absolute", "none"]
POSITION_MODES: tuple[str, ...] = ("relative", "absolute", "none")
CHUNKING_MODES: tuple[str, ...] = ("sentences", "tokens")
CONFIG_FORMAT_VERSION = 1
SENTENCE_SPLITTERS: tuple[str, ...] = ("punkt", "pysbd", "regex")
DEFAULT_SENTENCE_SPLITTER = "punkt"
LEGACY_SENTENCE_SPLITTER = "regex"
"""The splitter of configs saved before ``sentence_splitter`` existed: they were chunked with the regex."""


@dataclass
class ChunkingConfig:
    """How a raw document is split into chunks (the actions of the retrieval episode)."""

    mode: Literal["sentences", "tokens"] = "sentences"
    """`sentences`: one sentence per chunk (BabiLong); `tokens`: windows of `max_tokens` tokens."""
    max_tokens: int = 64
    """Window length in base-tokenizer tokens for `tokens` mode; sentences longer than this are split."""
    overlap_tokens: int = 0
    """Tokens shared by consecutive windows in `tokens` mode."""
    sentence_splitter: str = DEFAULT_SENTENCE_SPLITTER
    """`sentences` mode: `punkt` (NLTK Punkt, learned abbreviations), `pysbd` (rules) or `regex` (ends at `.!?`)."""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChunkingConfig:
        """A saved chunking config; one saved before ``sentence_splitter`` existed was chunked with the regex."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown chunking config keys {unknown}; was this saved by a newer qrag?")
        return cls(**{"sentence_splitter": LEGACY_SENTENCE_SPLITTER, **data}).validate()

    def validate(self) -> ChunkingConfig:
        """Raise InvalidInputError naming the first setting of the wrong type or out of range."""
        check_field_types(self, prefix="chunking.")
        if self.mode not in CHUNKING_MODES:
            raise InvalidInputError(f"chunking.mode must be one of {CHUNKING_MODES}, got {self.mode!r}")
        if self.sentence_splitter not in SENTENCE_SPLITTERS:
            raise InvalidInputError(
                f"chunking.sentence_splitter must be one of {SENTENCE_SPLITTERS}, got {self.sentence_splitter!r}"
            )
        if self.max_tokens <= 0:
            raise InvalidInputError(
                f"chunk size (chunking.max_tokens) must be a positive number of tokens, got {self.max_tokens}"
            )
        if not 0 <= self.overlap_tokens < self.max_tokens:
            raise InvalidInputError(
                f"chunking.overlap_tokens must be in [0, max_tokens), got {self.overlap_tokens} with "
                f"max_tokens={self.max_tokens}"
            )
        return self


@dataclass
class QRAGConfig:
    """Every hyperparameter a saved Q-RAG model needs to score and search exactly as it did when saved."""

    base_model: str = "all-MiniLM-L6-v2"
    """Name or path of the sentence-transformers/transformers model both encoders start from."""
    max_chunk_tokens: int = 64
    """Each chunk is truncated to this for its content embedding (and each state piece, unless max_state_tokens
    is set)."""
    max_state_tokens: int | None = None
    """Each piece of the state text (question, each selected chunk) is truncated to this (None:
    max_chunk_tokens). The state encoder alone reads it, so an index serves models that differ only here."""
    normalize: bool = True
    """L2-normalise state and action embeddings, so Q lies in [-1, 1] like the rewards."""
    position_mode: str = "relative"
    """`relative` (ρ_t of docs/method.md Eq. M3, temporal tasks), `absolute` (ℓ·i/N) or `none` (open-domain QA)."""
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
    lexical_weight: float = 0.0
    """w of the hybrid search score Q + w·f in ordered documents, f the step's BM25 of a chunk against the state
    text scaled to [0, 1] (0: pure Q)."""
    passage_lexical_weight: float | None = None
    """w of the hybrid score in passage collections (None: lexical_weight)."""
    identifier_weight: float = 0.0
    """Weight of the identifier feature added to the score in ordered documents: the step's BM25 over the state
    text's words holding a digit (numbers, ids, uuids), scaled to [0, 1] (0: none)."""
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    """How documents are chunked by default."""

    def validate(self) -> QRAGConfig:
        """Raise InvalidInputError naming the first setting of the wrong type or out of range (NaN and ±inf
        included: a NaN δ or θ would silently give NaN scores)."""
        check_field_types(self)
        if not isinstance(self.chunking, ChunkingConfig):
            raise InvalidInputError(f"chunking must be a ChunkingConfig, got {type(self.chunking).__name__}")
        self.chunking.validate()
        if self.position_mode not in POSITION_MODES:
            raise InvalidInputError(f"position_mode must be one of {POSITION_MODES}, got {self.position_mode!r}")
        for name in ("max_chunk_tokens", "max_steps", "beam_width", "delta", "ell"):
            if getattr(self, name) <= 0:
                raise InvalidInputError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_state_tokens is not None and self.max_state_tokens <= 0:
            raise InvalidInputError(f"max_state_tokens must be positive, got {self.max_state_tokens}")
        for name in ("lexical_weight", "passage_lexical_weight", "identifier_weight"):
            check_non_negative(name, getattr(self, name), allow_none=True)
        if self.rope_theta <= 1:
            raise InvalidInputError(f"rope_theta must be > 1, got {self.rope_theta}")
        return self

    @property
    def state_piece_tokens(self) -> int:
        """Tokens of each state piece the state encoder reads: max_state_tokens, else max_chunk_tokens."""
        return self.max_chunk_tokens if self.max_state_tokens is None else self.max_state_tokens

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QRAGConfig:
        """The config saved in a model's ``config.json``; CheckpointError when it is not a valid one."""
        if not isinstance(data, dict):
            raise CheckpointError(f"the model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CheckpointError(f"unknown config keys {unknown}; was this saved by a newer qrag?")
        values = dict(data)
        # A config without the field predates it, so its documents were chunked with the regex splitter.
        chunking = values.get("chunking", {})
        if not isinstance(chunking, dict):
            raise CheckpointError(f"config key 'chunking' must be an object, got {type(chunking).__name__}")
        try:
            values["chunking"] = ChunkingConfig.from_dict(chunking)
            return cls(**values).validate()
        except (TypeError, InvalidInputError) as err:
            raise CheckpointError(f"invalid model config: {err}") from err


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (``field: type = value`` then ``\"\"\"doc\"\"\"``)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, following in zip(body, body[1:], strict=False):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):
            docs[node.target.id] = following.value.value.strip()
    return docs
