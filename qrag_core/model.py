"""The Q-RAG model: two encoders, the rotary action embedding at ρ_t, and Q (docs/method.md §2–3).

    Q_θ(s_t, c_i) = ⟨E_s(s_t; θ1), R(ρ_t(i)) · h(e_i; θ2)⟩

E_s embeds the state (question + selected chunks); e_i is the content embedding of chunk i from the
action transformer, computed once per document and kept in a :class:`DocumentIndex`
(:meth:`DocumentIndex.build <qrag_core.index.DocumentIndex.build>`); h is an optional
light action head (a d×d linear map, initialised to identity) so the action transformer can stay
frozen at the base weights: then one index serves every fine-tuned model of the same base.

Q is computed in one place, for search and training alike: :meth:`QRAG.top_k` (the exact k best chunks
of a whole index, for search), :meth:`QRAG.q_row` (a dense row, for the warm start, the rollout and the
soft values) and :meth:`QRAG.q_taken` (the chosen actions, for the soft-Q loss) all take the positions
ρ_t, the rotary frequencies and the masking of selected chunks from here. ``from_pretrained`` /
``save_pretrained`` follow sentence-transformers; the files themselves are :mod:`qrag_core.model_files`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qrag_core import scoring
from qrag_core.atomic import readable
from qrag_core.config import QRAGConfig
from qrag_core.embedding_cache import EmbeddingCache, encode_with_cache
from qrag_core.encoders import TextEncoder, default_device
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.model_files import is_model_dir, load_encoder, read_model, write_model
from qrag_core.model_names import (
    BASE_MODEL_ALIASES,
    DEFAULT_MODEL_NAME,
    check_encoder_dir,
    resolve_model_path,
    shipped_model_names,
)
from qrag_core.positions import chunk_positions, position_intervals, rope_frequencies, rotary_scores
from qrag_core.vector_index import PassageIndex, faiss_available

logger = logging.getLogger(__name__)


@dataclass
class IndexActions:
    """What a model derives from one index and keeps until its weights or the index change."""

    vectors: torch.Tensor
    """The action vectors h(e_i) of every chunk (N, d)."""
    norm_max: float
    """max_i |a_i| (bounds the fast rotary scorer's error)."""
    passage_indexes: dict[tuple[str, int, int], PassageIndex] = field(default_factory=dict)
    """faiss indexes over chunk ranges of a passage collection, by (kind, first chunk, end)."""


class QRAG(nn.Module):
    """State and action encoders plus the rotary Q-function that search and training score chunks with."""

    def __init__(
        self,
        config: QRAGConfig,
        state_encoder: TextEncoder,
        action_encoder: TextEncoder,
        action_head: nn.Linear | None = None,
        training_info: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = config.validate()
        self.state_encoder = state_encoder
        self.action_encoder = action_encoder
        if config.action_head and action_head is None:
            action_head = nn.Linear(state_encoder.dim, action_encoder.dim)
            with torch.no_grad():
                action_head.weight.copy_(torch.eye(action_encoder.dim, state_encoder.dim))
                action_head.bias.zero_()
        self.action_head = action_head
        if state_encoder.dim != action_encoder.dim:
            raise CheckpointError(
                f"state encoder size {state_encoder.dim} differs from action encoder size {action_encoder.dim}"
            )
        self.register_buffer(
            "freqs", rope_frequencies(state_encoder.dim, config.rope_theta, config.twin_heads), persistent=False
        )
        self.training_info = dict(training_info or {})
        self.action_version = 0
        if config.freeze_action_encoder:
            self.action_encoder.requires_grad_(False)
        if config.freeze_state_embeddings:
            self.state_encoder.model.get_input_embeddings().requires_grad_(False)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_base(
        cls, base_model: str | None = None, config: QRAGConfig | None = None, device: str | None = None
    ) -> QRAG:
        """An untrained model whose both encoders start from ``base_model`` (default all-MiniLM-L6-v2)."""
        config = config or QRAGConfig()
        if base_model is not None:
            config.base_model = base_model
        path = resolve_model_path(config.base_model)
        if is_model_dir(path):
            raise InvalidInputError(f"{path} is a trained qrag model; use QRAG.from_pretrained to load it")
        check_encoder_dir(path)
        state = load_encoder(path, config.state_piece_tokens, "state encoder")
        action = load_encoder(path, config.max_chunk_tokens, "action encoder")
        return cls(config, state, action).to(device or default_device())

    @classmethod
    def from_pretrained(cls, name_or_path: str | None = None, device: str | None = None) -> QRAG:
        """Load a saved model, a shipped model by name, or (untrained) any base encoder directory.

        With no argument it loads the shipped default model; while none is shipped, the untrained
        base model, with a warning saying so.
        """
        if name_or_path is None:
            if DEFAULT_MODEL_NAME in shipped_model_names():
                name_or_path = DEFAULT_MODEL_NAME
            else:
                logger.warning("no trained default model is shipped; using the UNTRAINED base model all-MiniLM-L6-v2")
                return cls.from_base(device=device)
        path = resolve_model_path(readable(name_or_path))
        if not is_model_dir(path):
            logger.info("%s is not a saved qrag model; building an untrained model on it as base", name_or_path)
            # A known base name is recorded as such: a model saved later names no path of this machine.
            return cls.from_base(name_or_path if name_or_path in BASE_MODEL_ALIASES else path, device=device)
        return cls(*read_model(Path(path))).to(device or default_device())

    def save_pretrained(self, directory: str | os.PathLike[str], compact: bool = False, overwrite: bool = True) -> None:
        """Write the model to ``directory`` atomically (a crash never leaves a half-written model).

        As in transformers, saving again over a qrag model replaces it; ``overwrite=False`` refuses that.
        Any other non-empty directory (one holding a file qrag does not write into a model) is never
        replaced: that raises :class:`~qrag_core.errors.UnsafeOutputError`, see :mod:`qrag_core.atomic`.
        ``compact`` stores the state encoder as the float16 values of only the tensors that differ from
        the base model (the base comes from ``config.base_model`` at load time, checked by fingerprint).
        """
        write_model(self, directory, compact, overwrite)

    # ----------------------------------------------------------------------------- encoding
    @property
    def device(self) -> torch.device:
        return self.freqs.device

    def weights_changed(self) -> None:
        """Call after updating weights: drops fingerprints and cached action vectors."""
        self.state_encoder.weights_changed()
        self.action_encoder.weights_changed()
        self.action_version += 1

    def set_max_chunk_tokens(self, tokens: int) -> None:
        """Embed up to ``tokens`` tokens of each chunk (and of each state piece, unless ``max_state_tokens`` is
        set) from now on.

        ``config.max_chunk_tokens`` follows. The action fingerprint names the limit, so indexes and cached
        embeddings made under another limit no longer match this model (they are rebuilt, never mixed).
        """
        dataclasses.replace(self.config, max_chunk_tokens=tokens).validate()  # the config's own checks
        self.config.max_chunk_tokens = tokens
        self.state_encoder.max_tokens = self.config.state_piece_tokens
        self.action_encoder.max_tokens = tokens
        self.weights_changed()

    def set_max_state_tokens(self, tokens: int | None) -> None:
        """Read up to ``tokens`` tokens of each state piece (question, each selected chunk) from now on (None: as
        many as of a chunk, ``max_chunk_tokens``).

        ``config.max_state_tokens`` follows. Chunks are embedded as before, so indexes and cached content
        embeddings still match this model.
        """
        dataclasses.replace(self.config, max_state_tokens=tokens).validate()
        self.config.max_state_tokens = tokens
        self.state_encoder.max_tokens = self.config.state_piece_tokens
        self.weights_changed()

    def encode_chunks(
        self,
        texts: Sequence[str],
        cache: EmbeddingCache | None = None,
        show_progress: bool = False,
        batch_size: int = 64,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Content embeddings e_i of chunk texts (no gradient), reusing ``cache`` where possible; computed with
        ``backend`` (None: the action encoder's own), e.g. the one of the index they are added to."""
        encoder = self.action_encoder
        backend = encoder.backend if backend is None else backend
        return encode_with_cache(
            texts,
            encoder.fingerprint_for(backend),
            lambda todo: encoder.encode(todo, batch_size=batch_size, show_progress=show_progress, backend=backend),
            cache,
        )

    def index_backend(self, index: DocumentIndex) -> str:
        """The encoding backend whose content embeddings ``index`` holds; InvalidInputError unless it holds this
        model's action encoder's, on any backend.

        The action transformer is frozen, so every model fine-tuned from one base reads the same index, whichever
        backend built it: search only reads the stored vectors, and chunks added later are encoded with this
        backend (:meth:`encode_chunks`), so one index never mixes two backends' vectors.
        """
        backend = self.action_encoder.backend_of(index.fingerprint)
        if backend is None:
            raise InvalidInputError(
                "this index was built with a different action encoder; rebuild it with this model "
                f"(index fingerprint {index.fingerprint}, model {self.action_encoder.fingerprint()})"
            )
        return backend

    def check_index(self, index: DocumentIndex) -> None:
        """InvalidInputError unless ``index`` holds content embeddings of this model's action encoder
        (:meth:`index_backend`)."""
        self.index_backend(index)

    def action_vectors(self, content: torch.Tensor) -> torch.Tensor:
        """h(e_i), normalised if configured: the vectors that get rotated at ρ_t(i)."""
        vectors = content.to(self.device, torch.float32)
        if self.action_head is not None:
            vectors = self.action_head(vectors)
        return nn.functional.normalize(vectors, dim=-1) if self.config.normalize else vectors

    def index_action_vectors(self, index: DocumentIndex) -> torch.Tensor:
        """Action vectors of every chunk of ``index``, computed once until the weights or the index change."""
        return self._index_actions(index).vectors

    def index_action_norm_max(self, index: DocumentIndex) -> float:
        """max_i |a_i| over the index's action vectors (bounds the fast scorer's error)."""
        return self._index_actions(index).norm_max

    def passage_index(
        self, index: DocumentIndex, kind: str, start: int = 0, end: int | None = None
    ) -> PassageIndex | None:
        """A faiss ``kind`` index over the action vectors of chunks [start, end) of ``index``, for searching a
        passage collection (positions off, :mod:`qrag_core.vector_index`); built once until the weights or the
        index change. None for ``torch``, and for ``flat`` without faiss (the torch scorer is exact too)."""
        if kind == "torch" or (kind == "flat" and not faiss_available()):
            return None
        actions = self._index_actions(index)
        key = (kind, start, len(index) if end is None else end)
        if key not in actions.passage_indexes:
            actions.passage_indexes[key] = PassageIndex(actions.vectors[key[1] : key[2]], kind)
        return actions.passage_indexes[key]

    def positions_off(self, ordered: Sequence[bool]) -> bool:
        """Whether every position is 0 for documents with these ``ordered`` flags (Q is then an inner product)."""
        return self.config.position_mode == "none" or not any(ordered)

    def _index_actions(self, index: DocumentIndex) -> IndexActions:
        def compute() -> IndexActions:
            self.check_index(index)
            with torch.inference_mode():
                blocks = [self.action_vectors(index.content[i : i + 65536]) for i in range(0, len(index), 65536)]
                vectors = torch.cat(blocks)
            return IndexActions(vectors, float(vectors.norm(dim=-1).max()))

        return index.derived(("actions", id(self), self.action_version), compute)

    def state_vectors(self, questions: Sequence[str], selections: Sequence[Sequence[str]]) -> torch.Tensor:
        """E_s of states (question + selected chunk texts), with gradients."""
        return self._state_head(self.state_encoder.embed_states(questions, selections))

    def search_state_vectors(self, questions: Sequence[str], selections: Sequence[Sequence[str]]) -> torch.Tensor:
        """E_s of states at inference: no gradients, on the state encoder's backend (``state_encoder.use_backend``:
        an ONNX Runtime copy of the fine-tuned state encoder answers a single state about twice as fast on CPU)."""
        return self._state_head(self.state_encoder.encode_states(questions, selections).to(self.device))

    def _state_head(self, vectors: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(vectors, dim=-1) if self.config.normalize else vectors

    # ----------------------------------------------------------------------------- Q (docs/method.md Eq. M2)
    def q_row(
        self, state: torch.Tensor, actions: torch.Tensor, selected: Sequence[int], ordered: bool = True
    ) -> torch.Tensor:
        """Q(s, c_i) for every chunk i of one document, −inf at the ``selected`` ones (dense, for training).

        ``state`` is E_s(s) (d,), ``actions`` the action vectors of the document's chunks (N, d) and
        ``selected`` the chunks chosen so far, which set ρ_t (positions off when not ``ordered``: a passage
        collection); gradients flow through both inputs.
        """
        positions = self._positions(actions.shape[0], selected, ordered)
        q = rotary_scores(state.unsqueeze(0), actions, positions, self.freqs)[0]
        if selected:
            q = q.index_fill(0, torch.as_tensor(list(selected), device=q.device), float("-inf"))
        return q

    def q_taken(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        taken: Sequence[tuple[int, Sequence[int], int]],
        ordered: Sequence[bool] | None = None,
    ) -> torch.Tensor:
        """Q(s_b, c_b) of B (state, chosen chunk) pairs, with gradients (the soft-Q loss, docs/method.md Eq. M8).

        ``states`` (B, d) and ``actions`` (B, d) hold E_s(s_b) and the action vector of the chunk taken
        there; ``taken[b]`` is (chunks in its document, chunks selected before, index of the chunk taken) and
        ``ordered[b]`` whether that document's order matters (default: all ordered).
        """
        flags = [True] * len(taken) if ordered is None else list(ordered)
        positions = torch.stack(
            [self._positions(n, before, flag)[chosen] for (n, before, chosen), flag in zip(taken, flags, strict=True)]
        )
        return rotary_scores(states, actions, positions, self.freqs).diagonal()

    def top_k(
        self,
        state: torch.Tensor,
        actions: torch.Tensor,
        selected: Sequence[int],
        k: int,
        doc_starts: list[int] | None = None,
        action_norm_max: float | None = None,
        ordered: Sequence[bool] | None = None,
        passages: PassageIndex | None = None,
        bonus: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The exact k best chunks (Q, chunk index, ρ_t) for one state, never a ``selected`` one (search).

        ``actions`` are the action vectors of every chunk searched (N, d); ``doc_starts`` the first chunk of
        each document when there are several (each gets its own ρ_t), ``ordered`` one flag per document
        (False: a passage collection, positions off; default all ordered); ``action_norm_max`` is max_i |a_i|
        (computed if not given). Fast even for millions of chunks (:mod:`qrag_core.scoring`). ``passages``, a
        faiss index over exactly these ``actions`` (:meth:`passage_index`), answers instead wherever every
        position is 0 (a passage collection); exact for ``flat``, approximate for the IVF kinds and ``hnsw``.
        ``bonus`` (N,), a per-chunk addition to Q (w·f of the hybrid score, :mod:`qrag_core.lexical`), ranks
        by and returns Q + bonus instead; a faiss index cannot add it, so then the exact torch scorer answers.
        """
        config = self.config
        intervals = position_intervals(
            config.position_mode,
            actions.shape[0],
            list(selected),
            config.delta,
            config.ell,
            doc_starts,
            actions.device,
            ordered,
        )
        if passages is not None and bonus is None and not (intervals.offsets.any() or intervals.slopes.any()):
            values, indices = passages.search(state, k, selected)
        else:
            values, indices = scoring.top_k(
                state, actions, intervals, self.freqs, k, list(selected), action_norm_max, bonus=bonus
            )
        return values, indices, intervals.at(indices)

    def _positions(self, num_chunks: int, selected: Sequence[int], ordered: bool = True) -> torch.Tensor:
        """ρ_t of every chunk of one document (the configured position mode) given the chunks selected so far;
        all 0 for a passage collection (not ``ordered``)."""
        sel = torch.as_tensor(list(selected), dtype=torch.long, device=self.device)
        mode = self.config.position_mode if ordered else "none"
        return chunk_positions(mode, num_chunks, sel, self.config.delta, self.config.ell)
