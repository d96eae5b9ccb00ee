"""Answering questions over long documents with any OpenAI-compatible chat endpoint.

Q-RAG retrieves a few chunks step by step; the reader (a frozen chat model, local or proprietary)
sees only those chunks, in the order they appear in the document, so its context does not grow
with the document. The endpoint is anything that speaks ``POST /v1/chat/completions`` (OpenAI,
vLLM, llama.cpp server, Ollama, LM Studio …), reached with the ``openai`` client
(``pip install "qrag[openai]"``)::

    from qrag_integrations.openai import Answerer, EndpointConfig
    from qrag_core.retriever import Retriever
    retriever = Retriever.from_pretrained()
    retriever.add_texts([long_text])
    answerer = Answerer(retriever, EndpointConfig.from_env(base_url="http://127.0.0.1:8000/v1"))
    answer = answerer.answer("Where is Mary?")
    print(answer.text, answer.evidence)
    for piece in answerer.stream("Where is Mary?"):      # the answer as it is generated
        print(piece, end="", flush=True)
    answer = await answerer.aanswer("Where is Mary?")    # async: never blocks the event loop

Endpoint settings come from arguments or the environment: ``OPENAI_BASE_URL``, ``OPENAI_API_KEY``
and ``QRAG_ANSWER_MODEL`` (or ``OPENAI_MODEL``). When no model is named, the endpoint's only model
is used (``GET /v1/models``). The answer's length limit is sent as ``max_completion_tokens`` to
api.openai.com (its newer models refuse ``max_tokens``) and as ``max_tokens`` elsewhere (what local
servers read); an endpoint that refuses ``max_tokens`` gets ``max_completion_tokens`` from then on.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from qrag_core.errors import QRAGError
from qrag_core.retriever import Retriever
from qrag_core.search import SearchResult, SelectedChunk
from qrag_core.search_options import SearchOptions

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
    token_limit_parameter: Literal["auto", "max_tokens", "max_completion_tokens"] = "auto"
    """Request field carrying ``max_tokens`` (auto: ``max_completion_tokens`` for api.openai.com and for an
    endpoint that refused ``max_tokens``, else ``max_tokens``)."""
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


@dataclass
class StreamingAnswer:
    """An answer arriving piece by piece: iterate it (``for``, or ``async for`` from :meth:`Answerer.astream`);
    ``text`` holds what has arrived so far."""

    question: str
    evidence: list[SelectedChunk]
    """The retrieved chunks shown to the model, in document order."""
    search: SearchResult
    """The full search result (step-by-step trace)."""
    model: str
    """The chat model that answers."""
    messages: list[dict[str, str]]
    """The chat messages sent."""
    pieces: Iterator[str] | AsyncIterator[str] = field(repr=False)
    """The text deltas as the endpoint sends them."""
    endpoint: str = ""
    """Where the answer comes from (named when it turns out empty)."""
    text: str = ""
    """The answer received so far (all of it once iterated)."""

    def __iter__(self) -> Iterator[str]:
        if not isinstance(self.pieces, Iterator):
            raise TypeError("this answer streams asynchronously; use 'async for'")
        for piece in self.pieces:
            if piece:
                self.text += piece
                yield piece
        self._check()

    async def __aiter__(self) -> AsyncIterator[str]:
        if not isinstance(self.pieces, AsyncIterator):
            raise TypeError("this answer streams synchronously; use 'for'")
        async for piece in self.pieces:
            if piece:
                self.text += piece
                yield piece
        self._check()

    def _check(self) -> None:
        if not self.text.strip():
            raise EndpointError(f"the chat endpoint {self.endpoint} streamed an empty answer (model {self.model})")


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
        retriever: Retriever,
        endpoint: EndpointConfig | None = None,
        settings: AnswerSettings | None = None,
        options: SearchOptions | None = None,
    ) -> None:
        """``endpoint`` defaults to :meth:`EndpointConfig.from_env`; ``options`` are the search defaults."""
        self.retriever = retriever
        self.endpoint = endpoint or EndpointConfig.from_env()
        self.settings = settings or AnswerSettings()
        self.options = options or SearchOptions()
        self._client: openai.OpenAI | None = None
        self._async_client: openai.AsyncOpenAI | None = None
        self._model: str | None = self.endpoint.model
        self._wants_completion_tokens: bool | None = None

    def retrieve(self, question: str, **overrides: Any) -> SearchResult:
        """The evidence for ``question`` (no endpoint needed); ``overrides`` as :class:`SearchOptions`."""
        return self.retriever.search(question, self.options.override(**overrides))

    def answer(self, question: str, **overrides: Any) -> Answer:
        """Retrieve, then ask the chat model; raises :class:`EndpointError` when that fails."""
        result, messages, model = self._prepare(question, overrides)
        completion = self._create(self._openai_client().chat.completions.create, model, messages)
        return self._answer(question, result, model, messages, completion)

    async def aanswer(self, question: str, **overrides: Any) -> Answer:
        """:meth:`answer` without blocking the event loop (search in a worker thread, async HTTP)."""
        result, messages, model = await asyncio.to_thread(self._prepare, question, overrides)
        create = self._async_openai_client().chat.completions.create
        completion = await self._acreate(create, model, messages)
        return self._answer(question, result, model, messages, completion)

    def stream(self, question: str, **overrides: Any) -> StreamingAnswer:
        """Retrieve, then stream the chat model's answer (iterate the result for the text pieces)."""
        result, messages, model = self._prepare(question, overrides)
        chunks = self._create(self._openai_client().chat.completions.create, model, messages, stream=True)
        return StreamingAnswer(question, result.chunks, result, model, messages, self._pieces(chunks), self._where())

    async def astream(self, question: str, **overrides: Any) -> StreamingAnswer:
        """:meth:`stream` for an event loop: ``async for piece in await answerer.astream(q)``."""
        result, messages, model = await asyncio.to_thread(self._prepare, question, overrides)
        create = self._async_openai_client().chat.completions.create
        chunks = await self._acreate(create, model, messages, stream=True)
        return StreamingAnswer(question, result.chunks, result, model, messages, self._apieces(chunks), self._where())

    def _prepare(self, question: str, overrides: dict[str, Any]) -> tuple[SearchResult, list[dict[str, str]], str]:
        result = self.retrieve(question, **overrides)
        return result, build_messages(question, result.chunks, self.settings.system_prompt), self._chat_model()

    def _request(self, model: str, messages: list[dict[str, str]], stream: bool) -> dict[str, Any]:
        request: dict[str, Any] = {"model": model, "messages": messages, "temperature": self.settings.temperature}
        if self.settings.max_tokens is not None:
            request[self._limit_parameter()] = self.settings.max_tokens
        if stream:
            request["stream"] = True
        return request

    def _limit_parameter(self) -> str:
        if self.settings.token_limit_parameter != "auto":
            return self.settings.token_limit_parameter
        if self._wants_completion_tokens is None:
            self._wants_completion_tokens = self.endpoint.base_url is None
        return "max_completion_tokens" if self._wants_completion_tokens else "max_tokens"

    def _retry_with_completion_tokens(self, err: Exception) -> bool:
        """Whether ``err`` is an endpoint refusing ``max_tokens`` for ``max_completion_tokens`` (then switch)."""
        openai = _openai_module()
        refused = (
            isinstance(err, openai.BadRequestError)
            and "max_completion_tokens" in str(err)
            and self.settings.token_limit_parameter == "auto"
            and self.settings.max_tokens is not None
            and not self._wants_completion_tokens
        )
        if refused:
            logger.info("%s wants max_completion_tokens instead of max_tokens; using it from now on", self._where())
            self._wants_completion_tokens = True
        return refused

    def _failed(self, err: Exception) -> EndpointError:
        return EndpointError(f"the chat endpoint {self._where()} failed: {err}")

    def _create(self, create: Any, model: str, messages: list[dict[str, str]], stream: bool = False) -> Any:
        for attempt in (1, 2):
            try:
                return create(**self._request(model, messages, stream))
            except _openai_module().APIError as err:
                if attempt == 2 or not self._retry_with_completion_tokens(err):
                    raise self._failed(err) from err
        raise AssertionError("unreachable")

    async def _acreate(self, create: Any, model: str, messages: list[dict[str, str]], stream: bool = False) -> Any:
        for attempt in (1, 2):
            try:
                return await create(**self._request(model, messages, stream))
            except _openai_module().APIError as err:
                if attempt == 2 or not self._retry_with_completion_tokens(err):
                    raise self._failed(err) from err
        raise AssertionError("unreachable")

    def _answer(
        self, question: str, result: SearchResult, model: str, messages: list[dict[str, str]], completion: Any
    ) -> Answer:
        text = completion.choices[0].message.content if completion.choices else None
        if not text or not text.strip():
            raise EndpointError(f"the chat endpoint {self._where()} returned an empty answer (model {model})")
        logger.info("answered with %s from %d chunks", model, len(result.chunks))
        return Answer(question, text.strip(), result.chunks, result, model, messages)

    def _pieces(self, chunks: Any) -> Iterator[str]:
        try:
            for chunk in chunks:
                yield _delta(chunk)
        except _openai_module().APIError as err:
            raise self._failed(err) from err

    async def _apieces(self, chunks: Any) -> AsyncIterator[str]:
        try:
            async for chunk in chunks:
                yield _delta(chunk)
        except _openai_module().APIError as err:
            raise self._failed(err) from err

    def _where(self) -> str:
        return self.endpoint.base_url or "api.openai.com"

    def _client_options(self) -> dict[str, Any]:
        if not self.endpoint.configured:
            raise EndpointError(f"no chat endpoint is configured: {endpoint_help()}")
        return {
            "base_url": self.endpoint.base_url,
            "api_key": self.endpoint.api_key or LOCAL_API_KEY,
            "timeout": self.settings.timeout_s,
            "max_retries": self.settings.max_retries,
        }

    def _openai_client(self) -> openai.OpenAI:
        if self._client is None:
            self._client = _openai_module().OpenAI(**self._client_options())
        return self._client

    def _async_openai_client(self) -> openai.AsyncOpenAI:
        if self._async_client is None:
            self._async_client = _openai_module().AsyncOpenAI(**self._client_options())
        return self._async_client

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


def _delta(chunk: Any) -> str:
    """The text a streamed completion chunk adds (empty for role-only or final chunks)."""
    if not chunk.choices:
        return ""
    return chunk.choices[0].delta.content or ""
