"""Answering questions over long documents with any OpenAI-compatible chat endpoint (SPEC §1, §3.5).

Q-RAG retrieves a few chunks step by step; the reader (a frozen chat model, local or proprietary)
sees only those chunks, in the order they appear in the document, so its context does not grow
with the document. The endpoint is anything that speaks ``POST /v1/chat/completions`` (OpenAI,
vLLM, llama.cpp server, Ollama, LM Studio …), reached with the ``openai`` client
(``pip install "qrag[openai]"``)::

    from qrag_core.answerer import Answerer, EndpointConfig
    from qrag_core.retrieval_session import RetrievalSession
    session = RetrievalSession.from_pretrained()
    session.add_texts([long_text])
    answerer = Answerer(session, EndpointConfig.from_env(base_url="http://127.0.0.1:8000/v1"))
    answer = answerer.answer("Where is Mary?")
    print(answer.text, answer.evidence)

Endpoint settings come from arguments or the environment: ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``
and ``QRAG_ANSWER_MODEL`` (or ``OPENAI_MODEL``). When no model is named, the endpoint's only model
is used (``GET /v1/models``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qrag_core.errors import QRAGError
from qrag_core.retrieval_session import RetrievalOptions, RetrievalSession
from qrag_core.search import SearchResult, SelectedChunk

if TYPE_CHECKING:
    import openai

logger = logging.getLogger(__name__)

BASE_URL_ENV = "OPENAI_BASE_URL"
API_KEY_ENV = "OPENAI_API_KEY"
MODEL_ENVS = ("QRAG_ANSWER_MODEL", "OPENAI_MODEL")
LOCAL_API_KEY = "not-needed"
"""Sent when a base URL is set without a key: local servers ignore it, the client insists on one."""

DEFAULT_SYSTEM_PROMPT = (
    "You answer questions about a long document. You only see the passages a retriever selected from it, "
    "listed in the order they appear in the document, so later passages describe later events. "
    "Answer from these passages only, as briefly as possible. If they do not contain the answer, say so."
)


class EndpointError(QRAGError):
    """The chat endpoint is not configured, unreachable, or answered with an error or nothing."""


def endpoint_help() -> str:
    """How to point the answerer at a chat endpoint (shown when none is configured)."""
    return (
        f"set {BASE_URL_ENV} to an OpenAI-compatible endpoint (e.g. http://127.0.0.1:8000/v1 for a local vLLM "
        f"or llama.cpp server), and {API_KEY_ENV} if it needs a key (for api.openai.com, {API_KEY_ENV} alone "
        f"is enough); name the chat model with {MODEL_ENVS[0]}"
    )


@dataclass
class EndpointConfig:
    """Where the chat model is: an OpenAI-compatible base URL, its key and the model name."""

    base_url: str | None = None
    """Base URL ending in ``/v1`` (None: the openai client's default, api.openai.com)."""
    api_key: str | None = None
    """API key (None: none needed, e.g. a local server)."""
    model: str | None = None
    """Chat model name (None: the endpoint's only model)."""

    @classmethod
    def from_env(
        cls, base_url: str | None = None, api_key: str | None = None, model: str | None = None
    ) -> EndpointConfig:
        """Arguments first, then ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``, ``QRAG_ANSWER_MODEL``/``OPENAI_MODEL``."""
        env_model = next((os.environ[name] for name in MODEL_ENVS if os.environ.get(name)), None)
        return cls(
            base_url=base_url or os.environ.get(BASE_URL_ENV) or None,
            api_key=api_key or os.environ.get(API_KEY_ENV) or None,
            model=model or env_model,
        )

    @property
    def configured(self) -> bool:
        """Whether there is an endpoint to call: a base URL, or a key for the default OpenAI URL."""
        return self.base_url is not None or self.api_key is not None


@dataclass
class AnswerSettings:
    """How the chat model is asked."""

    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    """Instructions sent as the system message."""
    temperature: float = 0.0
    """Sampling temperature (0: deterministic answers)."""
    max_tokens: int | None = 256
    """Longest answer in tokens (None: the endpoint's default)."""
    timeout_s: float = 60.0
    """Seconds to wait for the endpoint."""
    max_retries: int = 2
    """Retries of failed requests (by the openai client, with backoff)."""


@dataclass
class Answer:
    """The chat model's answer and the evidence it was given."""

    question: str
    text: str
    """The answer, stripped."""
    evidence: list[SelectedChunk]
    """The retrieved chunks shown to the model, in document order."""
    search: SearchResult
    """The full search result (step-by-step trace)."""
    model: str
    """The chat model that answered."""
    messages: list[dict[str, str]]
    """The chat messages sent."""


def format_evidence(evidence: list[SelectedChunk]) -> str:
    """Numbered passages, one per line, in the order given (document order)."""
    return "\n".join(f"[{i}] {selected.chunk.text}" for i, selected in enumerate(evidence, start=1))


def build_messages(question: str, evidence: list[SelectedChunk], system_prompt: str) -> list[dict[str, str]]:
    """The chat messages: instructions, then the passages and the question."""
    user = f"Passages (in document order):\n{format_evidence(evidence)}\n\nQuestion: {question}\nAnswer:"
    return [{"role": "system", "content": system_prompt}, {"role": "user", "content": user}]


def _openai_module() -> Any:
    try:
        import openai
    except ImportError as err:
        raise ImportError('the answerer needs the openai client; install it with: pip install "qrag[openai]"') from err
    return openai


class Answerer:
    """Retrieves evidence with Q-RAG and asks an OpenAI-compatible chat model to answer from it."""

    def __init__(
        self,
        session: RetrievalSession,
        endpoint: EndpointConfig | None = None,
        settings: AnswerSettings | None = None,
        options: RetrievalOptions | None = None,
    ) -> None:
        """``endpoint`` defaults to :meth:`EndpointConfig.from_env`; ``options`` are the search defaults."""
        self.session = session
        self.endpoint = endpoint or EndpointConfig.from_env()
        self.settings = settings or AnswerSettings()
        self.options = options or RetrievalOptions()
        self._client: openai.OpenAI | None = None
        self._model: str | None = self.endpoint.model

    def retrieve(self, question: str, **overrides: Any) -> SearchResult:
        """The evidence for ``question`` (no endpoint needed); ``overrides`` as :class:`RetrievalOptions`."""
        return self.session.search(question, self.options.override(**overrides))

    def answer(self, question: str, **overrides: Any) -> Answer:
        """Retrieve, then ask the chat model; raises :class:`EndpointError` when that fails."""
        result = self.retrieve(question, **overrides)
        evidence = result.chunks
        messages = build_messages(question, evidence, self.settings.system_prompt)
        model = self._chat_model()
        openai = _openai_module()
        request: dict[str, Any] = {"model": model, "messages": messages, "temperature": self.settings.temperature}
        if self.settings.max_tokens is not None:
            request["max_tokens"] = self.settings.max_tokens
        try:
            completion = self._openai_client().chat.completions.create(**request)
        except openai.APIError as err:
            raise EndpointError(f"the chat endpoint {self._where()} failed: {err}") from err
        text = completion.choices[0].message.content if completion.choices else None
        if not text or not text.strip():
            raise EndpointError(f"the chat endpoint {self._where()} returned an empty answer (model {model})")
        logger.info("answered with %s from %d chunks", model, len(evidence))
        return Answer(question, text.strip(), evidence, result, model, messages)

    def _where(self) -> str:
        return self.endpoint.base_url or "api.openai.com"

    def _openai_client(self) -> openai.OpenAI:
        if not self.endpoint.configured:
            raise EndpointError(f"no chat endpoint is configured: {endpoint_help()}")
        if self._client is None:
            self._client = _openai_module().OpenAI(
                base_url=self.endpoint.base_url,
                api_key=self.endpoint.api_key or LOCAL_API_KEY,
                timeout=self.settings.timeout_s,
                max_retries=self.settings.max_retries,
            )
        return self._client

    def _chat_model(self) -> str:
        """The configured model, else the endpoint's only model."""
        if self._model is None:
            client = self._openai_client()
            try:
                names = [entry.id for entry in client.models.list()]
            except _openai_module().APIError as err:
                raise EndpointError(
                    f"no chat model named and {self._where()} cannot list its models ({err}); set {MODEL_ENVS[0]}"
                ) from err
            if len(names) != 1:
                raise EndpointError(
                    f"no chat model named and {self._where()} serves {len(names)} models {names[:10]}; "
                    f"choose one with {MODEL_ENVS[0]}"
                )
            self._model = names[0]
        return self._model
