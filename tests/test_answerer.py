"""The OpenAI-compatible answerer, against a real HTTP server on 127.0.0.1 speaking /v1/chat/completions."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qrag_core.retriever import Retriever
from qrag_core.search_options import SearchOptions
from qrag_integrations.openai import (
    API_KEY_ENV,
    BASE_URL_ENV,
    LOCAL_API_KEY,
    MODEL_ENVS,
    Answerer,
    AnswerSettings,
    EndpointConfig,
    EndpointError,
)
from tests.conftest import STORY

QUESTION = "Where is Mary?"


def first_passage(request: dict[str, Any]) -> str:
    """The default reply: the first passage of the prompt, so the test sees the evidence was used."""
    user = request["messages"][-1]["content"]
    line = next(line for line in user.splitlines() if line.startswith("[1] "))
    return f"  From the passages: {line[4:]}\n"


class ChatServer:
    """A local OpenAI-compatible endpoint that records every request and answers with ``reply(request)``."""

    def __init__(
        self, reply: Callable[[dict[str, Any]], str] = first_passage, models: tuple[str, ...] = ("tiny-chat",)
    ) -> None:
        self.reply = reply
        self.models = models
        self.status = 200
        self.refuse_max_tokens = False
        """Answer ``max_tokens`` as OpenAI's newer models do: 400, use ``max_completion_tokens``."""
        self.requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                """Keep test output quiet."""

            def _send(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - stdlib naming
                if self.path != "/v1/models":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                data = [{"id": m, "object": "model", "created": 0, "owned_by": "test"} for m in server.models]
                self._send(200, {"object": "list", "data": data})

            def do_POST(self) -> None:  # noqa: N802 - stdlib naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                server.requests.append(body)
                server.authorizations.append(self.headers.get("Authorization"))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                elif server.status != 200:
                    self._send(server.status, {"error": {"message": "the model crashed", "type": "server_error"}})
                elif server.refuse_max_tokens and "max_tokens" in body:
                    message = (
                        "Unsupported parameter: 'max_tokens' is not supported with this model. "
                        "Use 'max_completion_tokens' instead."
                    )
                    self._send(400, {"error": {"message": message, "type": "invalid_request_error"}})
                elif body.get("stream"):
                    self._stream(body)
                else:
                    message = {"role": "assistant", "content": server.reply(body)}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0}
                    self._send(200, {**completion, "model": body["model"], "choices": [choice], "usage": usage})

            def _stream(self, body: dict[str, Any]) -> None:
                """Server-sent events: the reply in pieces of 5 characters, then ``[DONE]``."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                text = server.reply(body)
                deltas = [{"role": "assistant", "content": ""}] + [
                    {"content": text[i : i + 5]} for i in range(0, len(text), 5)
                ]
                for number, delta in enumerate(deltas):
                    finish = "stop" if number == len(deltas) - 1 else None
                    chunk = {
                        "id": "chatcmpl-1",
                        "object": "chat.completion.chunk",
                        "created": 0,
                        "model": body["model"],
                    }
                    chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}]
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    self.wfile.flush()
                self.wfile.write(b"data: [DONE]\n\n")

        return Handler


@pytest.fixture()
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture()
def session(tiny_model) -> Retriever:
    session = Retriever(tiny_model)
    session.add_texts([STORY])
    return session


@pytest.fixture(autouse=True)
def no_endpoint_env(monkeypatch):
    for name in (BASE_URL_ENV, API_KEY_ENV, *MODEL_ENVS):
        monkeypatch.delenv(name, raising=False)


def test_round_trip_sends_the_evidence_in_document_order_and_parses_the_answer(session, server):
    answerer = Answerer(session, EndpointConfig(server.url, model="tiny-chat"), options=SearchOptions(k=3))
    answer = answerer.answer(QUESTION)
    assert len(server.requests) == 1
    request = server.requests[0]
    assert request["model"] == "tiny-chat" and request["temperature"] == 0.0 and request["max_tokens"] == 256
    assert [m["role"] for m in request["messages"]] == ["system", "user"]
    user = request["messages"][1]["content"]
    evidence = [selected.chunk.text for selected in answer.evidence]
    assert len(evidence) == 3
    passages = "\n".join(f"[{i}] {text}" for i, text in enumerate(evidence, start=1))
    assert f"Passages (in document order):\n{passages}\n" in user
    assert [s.chunk.index for s in answer.evidence] == sorted(s.chunk.index for s in answer.evidence)
    assert user.rstrip().endswith(f"Question: {QUESTION}\nAnswer:")
    assert answer.text == f"From the passages: {evidence[0]}"
    assert answer.model == "tiny-chat" and answer.messages == request["messages"]
    assert server.authorizations[0] == f"Bearer {LOCAL_API_KEY}"


def test_settings_come_from_the_environment(session, server, monkeypatch):
    monkeypatch.setenv(BASE_URL_ENV, server.url)
    monkeypatch.setenv(API_KEY_ENV, "sk-local-test")
    monkeypatch.setenv(MODEL_ENVS[0], "reader-7b")
    answer = Answerer(session, settings=AnswerSettings(max_tokens=None, temperature=0.3)).answer(QUESTION, k=2)
    assert len(answer.evidence) == 2
    assert server.authorizations[0] == "Bearer sk-local-test"
    assert server.requests[0]["model"] == "reader-7b" and server.requests[0]["temperature"] == 0.3
    assert "max_tokens" not in server.requests[0]


def test_the_endpoints_only_model_is_used_when_none_is_named(session, server):
    answer = Answerer(session, EndpointConfig(server.url)).answer(QUESTION)
    assert answer.model == "tiny-chat" and server.requests[0]["model"] == "tiny-chat"
    server.models = ("a", "b")
    with pytest.raises(EndpointError, match=r"serves 2 models \['a', 'b'\].*QRAG_ANSWER_MODEL"):
        Answerer(session, EndpointConfig(server.url)).answer(QUESTION)


def test_without_an_endpoint_retrieval_works_and_answering_explains_the_setup(session):
    answerer = Answerer(session)
    assert not answerer.endpoint.configured
    assert len(answerer.retrieve(QUESTION, k=2).chunks) == 2
    with pytest.raises(EndpointError, match="no chat endpoint is configured: set OPENAI_BASE_URL"):
        answerer.answer(QUESTION)


@pytest.mark.parametrize("failure", ["status", "empty", "unreachable"])
def test_endpoint_failures_name_the_endpoint(session, server, failure):
    url = server.url
    if failure == "status":
        server.status = 500
    elif failure == "empty":
        server.reply = lambda request: "   "
    else:
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{probe.getsockname()[1]}/v1"
    answerer = Answerer(session, EndpointConfig(url, model="m"), AnswerSettings(max_retries=0, timeout_s=10))
    with pytest.raises(EndpointError, match=f"chat endpoint {url}"):
        answerer.answer(QUESTION)


@pytest.mark.slow
def test_real_minilm_answer_round_trip(real_model, server):
    session = Retriever(real_model)
    session.add_texts([STORY])
    answer = Answerer(session, EndpointConfig(server.url, model="tiny-chat"), options=SearchOptions(k=2)).answer(
        QUESTION
    )
    user = server.requests[0]["messages"][1]["content"]
    assert "[1] Mary moved to the bathroom.\n[2] Mary went back to the kitchen." in user
    assert answer.text == "From the passages: Mary moved to the bathroom."


def test_an_endpoint_that_wants_max_completion_tokens_gets_it(session, server):
    server.refuse_max_tokens = True
    answerer = Answerer(session, EndpointConfig(server.url, model="m"), AnswerSettings(max_tokens=40))
    answer = answerer.answer(QUESTION)
    assert answer.text.startswith("From the passages:")
    assert [("max_tokens" in r, r.get("max_completion_tokens")) for r in server.requests] == [(True, None), (False, 40)]
    answerer.answer(QUESTION)
    assert server.requests[-1]["max_completion_tokens"] == 40 and "max_tokens" not in server.requests[-1]
    fixed = Answerer(session, EndpointConfig(server.url, model="m"), AnswerSettings(token_limit_parameter="max_tokens"))
    with pytest.raises(EndpointError, match="max_completion_tokens"):
        fixed.answer(QUESTION)


def test_api_openai_com_gets_max_completion_tokens(session):
    answerer = Answerer(session, EndpointConfig(api_key="sk-test", model="gpt-test"))
    request = answerer._request("gpt-test", [], stream=False)
    assert request["max_completion_tokens"] == 256 and "max_tokens" not in request


def test_streaming_yields_the_answer_in_pieces(session, server):
    answerer = Answerer(session, EndpointConfig(server.url, model="m"), options=SearchOptions(k=2))
    streaming = answerer.stream(QUESTION)
    pieces = list(streaming)
    assert len(pieces) > 3 and server.requests[0]["stream"] is True
    full = answerer.answer(QUESTION)
    assert "".join(pieces) == streaming.text and streaming.text.strip() == full.text
    assert [s.chunk.text for s in streaming.evidence] == [s.chunk.text for s in full.evidence]
    server.reply = lambda request: "  "
    with pytest.raises(EndpointError, match="streamed an empty answer"):
        list(answerer.stream(QUESTION))


async def test_async_answer_and_stream_leave_the_loop_free(session, server):
    answerer = Answerer(session, EndpointConfig(server.url, model="m"), options=SearchOptions(k=2))
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.001)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    answer = await answerer.aanswer(QUESTION)
    streaming = await answerer.astream(QUESTION)
    pieces = [piece async for piece in streaming]
    ticking.cancel()
    assert answer.text == answerer.answer(QUESTION).text
    assert "".join(pieces).strip() == answer.text and len(pieces) > 3
    assert ticks > 0
    with pytest.raises(TypeError, match="async for"):
        list(streaming)


def test_without_the_openai_client_retrieval_works_and_answering_names_the_install_command(
    session, server, monkeypatch
):
    monkeypatch.setitem(sys.modules, "openai", None)  # as if the extra were not installed
    answerer = Answerer(session, EndpointConfig(server.url, model="m"))
    assert len(answerer.retrieve(QUESTION, k=2).chunks) == 2
    with pytest.raises(ImportError, match=r'pip install "qrag\[openai\]"'):
        answerer.answer(QUESTION)
    assert not server.requests
