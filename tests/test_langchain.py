"""The LangChain retriever: standard langchain-tests suite, metadata, options, async path, LCEL chain."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from functools import cache

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from transformers import AutoTokenizer

from qrag_core import ChunkingConfig
from qrag_core.errors import InvalidInputError
from qrag_core.model_names import base_minilm_path
from qrag_core.retrieval_session import RetrievalOptions, RetrievalSession
from qrag_integrations.langchain import QRAGRetriever
from tests.conftest import STORY, make_tiny_model

QUESTION = "Where is Mary?"
NOTES = "Notes from the lab. The kettle is broken. Anna fixed the printer. The window faces north."


@cache
def shared_story_session() -> RetrievalSession:
    """One tiny-model session over the story, shared by the standard tests (searching never mutates it)."""
    session = RetrievalSession(make_tiny_model(AutoTokenizer.from_pretrained(base_minilm_path())))
    session.add_texts([STORY], metadatas=[{"source": "story.txt"}])
    return session


class TestQRAGRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[QRAGRetriever]:
        return QRAGRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"session": shared_story_session(), "k": 2}

    @property
    def retriever_query_example(self) -> str:
        return QUESTION


@pytest.fixture()
def retriever(tiny_model) -> QRAGRetriever:
    retriever = QRAGRetriever.from_model(tiny_model, k=3)
    retriever.add_documents(
        [
            Document(page_content=STORY, metadata={"source": "story.txt", "page": 1}, id="story"),
            Document(page_content=NOTES, metadata={"source": "notes.txt"}, id="notes"),
        ]
    )
    return retriever


def test_documents_carry_source_metadata_and_why_they_were_picked(retriever):
    docs = retriever.invoke(QUESTION, k=6)
    assert len(docs) == 6
    sources = {"story": STORY, "notes": NOTES}
    for doc in docs:
        meta = doc.metadata
        assert meta["source"] == f"{meta['doc_id']}.txt"
        assert sources[meta["doc_id"]][meta["start"] : meta["end"]] == doc.page_content
        assert doc.id == f"{meta['doc_id']}#{meta['chunk_index']}"
        assert isinstance(meta["q_value"], float) and isinstance(meta["position"], float)
    assert sorted(doc.metadata["step"] for doc in docs) == [1, 2, 3, 4, 5, 6]
    assert all(doc.metadata["page"] == 1 for doc in docs if doc.metadata["doc_id"] == "story")


def test_documents_come_in_document_order_and_match_the_core_search(retriever):
    docs = retriever.invoke(QUESTION, k=5)
    order = [(["story", "notes"].index(d.metadata["doc_id"]), d.metadata["chunk_index"]) for d in docs]
    assert order == sorted(order)
    core = retriever.session.search(QUESTION, RetrievalOptions(k=5))
    assert [d.page_content for d in docs] == core.texts
    assert [d.metadata["q_value"] for d in docs] == [s.q_value for s in core.chunks]


def test_long_documents_are_chunked(tiny_model):
    retriever = QRAGRetriever.from_model(tiny_model, chunking=ChunkingConfig(mode="tokens", max_tokens=4), k=2)
    retriever.add_texts([STORY])
    tokenizer = tiny_model.action_encoder.tokenizer
    chunks = retriever.session.index.chunks
    assert len(chunks) > STORY.count(".")
    assert all(len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 4 for c in chunks)
    assert [c.index for c in chunks] == list(range(len(chunks)))


def test_constructor_options_and_per_call_overrides(retriever):
    assert len(retriever.invoke(QUESTION)) == 3
    assert len(retriever.invoke(QUESTION, k=1)) == 1
    assert [d.metadata["doc_id"] for d in retriever.invoke(QUESTION, document_id="notes")] == ["notes"] * 3
    beam = retriever.invoke(QUESTION, beam=3, expand_k=2)
    core = retriever.session.search(QUESTION, RetrievalOptions(k=3, beam=3, expand_k=2))
    assert [d.page_content for d in beam] == core.texts
    stopping = QRAGRetriever(session=retriever.session, k=5, stop_threshold=1.5)
    assert len(stopping.invoke(QUESTION)) == 1, "Q <= 1 for normalised vectors: stops after the first chunk"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"top_k": 2}, "unknown retrieval option.*top_k"), ({"k": 0}, "positive integer"), ({"beam": "2"}, "beam")],
)
def test_bad_options_name_the_problem(retriever, overrides, message):
    with pytest.raises(InvalidInputError, match=message):
        retriever.invoke(QUESTION, **overrides)


def test_bad_constructor_options_are_refused_at_construction(retriever):
    with pytest.raises(ValueError, match="k must be a positive integer"):
        QRAGRetriever(session=retriever.session, k=0)


def test_empty_retriever_and_bad_documents_are_explained(tiny_model):
    retriever = QRAGRetriever.from_model(tiny_model)
    with pytest.raises(InvalidInputError, match="no documents yet"):
        retriever.invoke(QUESTION)
    with pytest.raises(InvalidInputError, match="empty"):
        retriever.add_texts(["   "])
    retriever.add_texts([STORY], ids=["a"])
    with pytest.raises(InvalidInputError, match=r"\['a'\] are already in the index"):
        retriever.add_texts([NOTES, STORY], ids=["b", "a"])
    assert retriever.session.doc_ids == ["a"], "a refused batch adds nothing"


async def test_ainvoke_runs_in_a_worker_thread_and_leaves_the_loop_free(retriever, monkeypatch):
    search = retriever.session.search
    threads = []

    def slow_search(question, options):
        threads.append(threading.get_ident())
        time.sleep(0.3)
        return search(question, options)

    monkeypatch.setattr(retriever.session, "search", slow_search)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    docs = await retriever.ainvoke(QUESTION, k=2)
    ticking.cancel()
    assert len(docs) == 2
    assert threads and threads[0] != threading.get_ident()
    assert ticks >= 3, f"the event loop ran only {ticks} ticks during a 0.3 s search (blocked?)"


async def test_concurrent_async_calls_and_additions_are_safe(retriever):
    questions = [QUESTION, "Where did John go?", "Who fixed the printer?", "What struck nine?"] * 2
    expected = [
        [d.page_content for d in retriever.invoke(q, k=k, document_id="story")] for k, q in enumerate(questions, 1)
    ]
    extra = [Document(page_content=f"Room {i} is painted blue. Nobody lives there.") for i in range(4)]
    results = await asyncio.gather(
        *(retriever.ainvoke(q, k=k, document_id="story") for k, q in enumerate(questions, 1)),
        *(retriever.aadd_documents([doc]) for doc in extra),
    )
    assert [[d.page_content for d in docs] for docs in results[: len(questions)]] == expected
    assert len(retriever.session.doc_ids) == 2 + len(extra)
    assert len({doc_id for ids in results[len(questions) :] for doc_id in ids}) == len(extra)


def test_lcel_chain_passes_the_evidence_to_the_chat_model(retriever):
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    chain = {"context": retriever, "question": RunnablePassthrough()} | prompt | ParrotFakeChatModel()
    reply = chain.invoke(QUESTION)
    assert f"Question: {QUESTION}" in reply.content
    for doc in retriever.invoke(QUESTION):
        assert doc.page_content in reply.content


@pytest.mark.slow
def test_real_minilm_retriever_end_to_end():
    retriever = QRAGRetriever.from_pretrained(k=2)
    retriever.add_documents([Document(page_content=STORY, metadata={"source": "story.txt"})])
    docs = retriever.invoke(QUESTION)
    assert [d.page_content for d in docs] == ["Mary moved to the bathroom.", "Mary went back to the kitchen."]
    assert all(d.metadata["source"] == "story.txt" for d in docs)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_import_qrag_core_loads_no_framework():
    code = (
        "import sys, qrag_core, qrag_core.retrieval_session, qrag_core.answerer, qrag_integrations\n"
        "loaded = [m for m in ('langchain_core', 'llama_index', 'openai') if m in sys.modules]\n"
        "print(loaded)\n"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("module", "blocked", "extra"),
    [
        ("qrag_integrations.langchain", "langchain_core", "langchain"),
        ("qrag_integrations.llamaindex", "llama_index", "llamaindex"),
    ],
)
def test_adapter_without_its_extra_names_the_install_command(module, blocked, extra):
    code = f"import sys\nsys.modules[{blocked!r}] = None\nimport {module}\n"
    result = run_python(code)
    assert result.returncode != 0
    assert f"ImportError: {module} needs" in result.stderr
    assert f'pip install "qrag[{extra}]"' in result.stderr
