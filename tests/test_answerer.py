"""The OpenAI-compatible answerer, against a real HTTP server on 127.0.0.1 speaking /v1/chat/completions."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from qrag_core.answerer import (
    API_KEY_ENV,
    BASE_URL_ENV,
    LOCAL_API_KEY,
    MODEL_ENVS,
    Answerer,
    AnswerSettings,
    EndpointConfig,
    EndpointError,
)
from qrag_core.retrieval_session import RetrievalOptions, RetrievalSession
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
                else:
                    message = {"role": "assistant", "content": server.reply(body)}
                    choice = {"index": 0, "message": message, "finish_reason": "stop"}
                    usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
                    completion = {"id": "chatcmpl-1", "object": "chat.completion", "created": 0}
                    self._send(200, {**completion, "model": body["model"], "choices": [choice], "usage": usage})

        return Handler


@pytest.fixture()
def server() -> Iterator[ChatServer]:
    with ChatServer() as running:
        yield running


@pytest.fixture()
def session(tiny_model) -> RetrievalSession:
    session = RetrievalSession(tiny_model)
    session.add_texts([STORY])
    return session


@pytest.fixture(autouse=True)
def no_endpoint_env(monkeypatch):
    for name in (BASE_URL_ENV, API_KEY_ENV, *MODEL_ENVS):
        monkeypatch.delenv(name, raising=False)


def test_round_trip_sends_the_evidence_in_document_order_and_parses_the_answer(session, server):
    answerer = Answerer(session, EndpointConfig(server.url, model="tiny-chat"), options=RetrievalOptions(k=3))
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
    session = RetrievalSession(real_model)
    session.add_texts([STORY])
    answer = Answerer(session, EndpointConfig(server.url, model="tiny-chat"), options=RetrievalOptions(k=2)).answer(
        QUESTION
    )
    user = server.requests[0]["messages"][1]["content"]
    assert "[1] Mary moved to the bathroom.\n[2] Mary went back to the kitchen." in user
    assert answer.text == "From the passages: Mary moved to the bathroom."
