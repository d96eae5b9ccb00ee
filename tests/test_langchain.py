"""The LangChain retriever: standard langchain-tests suite, metadata, options, async path, LCEL chain."""

from __future__ import annotations

import asyncio
import datetime
import json
import subprocess
import sys
import threading
import time
from functools import cache
from pathlib import Path

import pytest
from langchain_core.documents import Document
from langchain_core.language_models.fake_chat_models import ParrotFakeChatModel
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import ConfigurableField, RunnablePassthrough
from langchain_tests.integration_tests import RetrieversIntegrationTests
from langchain_text_splitters import RecursiveCharacterTextSplitter
from transformers import AutoTokenizer

from qrag_core import ChunkingConfig
from qrag_core.cli.index import main as index_main
from qrag_core.config import field_docs
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.model_names import base_minilm_path
from qrag_core.retriever import Retriever
from qrag_core.search_options import SearchOptions
from qrag_integrations.langchain import QRAGRetriever
from tests.conftest import STORY, make_tiny_model

QUESTION = "Where is Mary?"
NOTES = "Notes from the lab. The kettle is broken. Anna fixed the printer. The window faces north."


@cache
def shared_story_session() -> Retriever:
    """One tiny-model session over the story, shared by the standard tests (searching never mutates it)."""
    session = Retriever(make_tiny_model(AutoTokenizer.from_pretrained(base_minilm_path())))
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
        assert meta["source"] == f"{meta['qrag_doc_id']}.txt"
        assert sources[meta["qrag_doc_id"]][meta["qrag_start"] : meta["qrag_end"]] == doc.page_content
        assert doc.id == f"{meta['qrag_doc_id']}#{meta['qrag_chunk_index']}"
        assert isinstance(meta["qrag_q_value"], float) and isinstance(meta["qrag_position"], float)
    assert sorted(doc.metadata["qrag_step"] for doc in docs) == [1, 2, 3, 4, 5, 6]
    assert all(doc.metadata["page"] == 1 for doc in docs if doc.metadata["qrag_doc_id"] == "story")


def test_documents_come_in_document_order_and_match_the_core_search(retriever):
    docs = retriever.invoke(QUESTION, k=5)
    order = [(["story", "notes"].index(d.metadata["qrag_doc_id"]), d.metadata["qrag_chunk_index"]) for d in docs]
    assert order == sorted(order)
    core = retriever.session.search(QUESTION, SearchOptions(k=5))
    assert [d.page_content for d in docs] == core.texts
    assert [d.metadata["qrag_q_value"] for d in docs] == [s.q_value for s in core.chunks]


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
    assert [d.metadata["qrag_doc_id"] for d in retriever.invoke(QUESTION, document_id="notes")] == ["notes"] * 3
    beam = retriever.invoke(QUESTION, beam=3, expand_k=2)
    core = retriever.session.search(QUESTION, SearchOptions(k=3, beam=3, expand_k=2))
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


def test_the_option_fields_are_the_search_options(retriever):
    docs = field_docs(SearchOptions)
    for name in SearchOptions.names():
        assert QRAGRetriever.model_fields[name].description == docs[name]
        assert QRAGRetriever.model_fields[name].default is None
    assert retriever.search_options() == SearchOptions(k=3)


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
    with pytest.raises(InvalidInputError, match=r"\['b'\] are repeated"):
        retriever.add_texts([NOTES, STORY], ids=["b", "b"])
    with pytest.raises(InvalidInputError, match="empty"):
        retriever.add_texts([NOTES, " "], ids=["a", "c"])
    assert retriever.session.doc_ids == ["a"], "a refused batch adds nothing"
    assert retriever.session.index.chunks[0].text == "Mary moved to the bathroom.", "nor replaces anything"


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
        "import sys, qrag_core, qrag_core.retriever, qrag_integrations.openai, qrag_integrations\n"
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


# ----------------------------------------------------------------------------- how users feed it
BOOK = json.loads((Path(__file__).resolve().parents[1] / "qrag_core/demo_data/demo_document.json").read_text())


def book_splits(chunk_size: int = 1000, chunk_overlap: int = 200) -> list[Document]:
    splitter = RecursiveCharacterTextSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, add_start_index=True)
    return splitter.split_documents([Document(page_content=BOOK["text"], metadata={"source": "book.txt"})])


@pytest.mark.parametrize(("chunk_size", "chunk_overlap"), [(1000, 200), (300, 0)])
def test_splits_of_a_book_are_regrouped_into_the_book(tiny_model, chunk_size, chunk_overlap):
    whole = QRAGRetriever.from_model(tiny_model, k=4)
    whole.add_documents([Document(page_content=BOOK["text"], metadata={"source": "book.txt"})], ids=["book.txt"])
    split = QRAGRetriever.from_model(tiny_model, k=4)
    splits = book_splits(chunk_size, chunk_overlap)
    assert split.add_documents(splits) == ["book.txt"] * len(splits)
    assert split.session.doc_ids == ["book.txt"]
    got = [(c.text, c.start, c.end) for c in split.session.index.chunks]
    assert got == [(c.text, c.start, c.end) for c in whole.session.index.chunks]
    assert all(BOOK["text"][start:end] == text for text, start, end in got), "offsets are in the book"
    docs = split.invoke(BOOK["question"])
    assert [d.page_content for d in docs] == [d.page_content for d in whole.invoke(BOOK["question"])]
    assert {d.metadata["start_index"] for d in docs} <= {s.metadata["start_index"] for s in splits}


def test_separate_documents_stay_separate(tiny_model):
    retriever = QRAGRetriever.from_model(tiny_model)
    pages = [Document(page_content=STORY, metadata={"source": "a.pdf", "page": p}) for p in (1, 2)]
    other = book_splits(3000, 0)[:2]
    for doc in other:
        doc.metadata["source"] = "other.txt"
    ids = retriever.add_documents([*pages, *book_splits(3000, 0)[:2], *other])
    assert len(set(ids)) == 4, "two pages without start_index, two split sources"
    assert ids[2:] == ["book.txt", "book.txt", "other.txt", "other.txt"]


def test_re_adding_upserts_and_delete_removes(retriever):
    assert retriever.add_documents([Document(page_content=NOTES, id="notes")]) == ["notes"]
    assert retriever.session.doc_ids == ["story", "notes"]
    ids = retriever.add_documents(book_splits()[:3])
    assert retriever.add_documents(book_splits()[:3]) == ids and retriever.session.doc_ids[-1] == "book.txt"
    assert len(retriever.session.doc_ids) == 3
    retriever.delete(["book.txt", "story"])
    assert retriever.session.doc_ids == ["notes"]
    assert {d.metadata["qrag_doc_id"] for d in retriever.invoke(QUESTION)} == {"notes"}
    with pytest.raises(InvalidInputError, match="nothing was deleted"):
        retriever.delete(["story"])


async def test_async_add_and_delete(retriever):
    ids = await retriever.aadd_documents([Document(page_content="A new room.")], ids=["room"])
    assert ids == ["room"] and "room" in retriever.session.doc_ids
    await retriever.adelete(ids)
    assert "room" not in retriever.session.doc_ids


def test_user_metadata_is_never_overwritten(tiny_model):
    retriever = QRAGRetriever.from_model(tiny_model, k=2)
    user = {"doc_id": "mine", "step": "draft", "start": "page 3", "q_value": None}
    retriever.add_documents([Document(page_content=STORY, metadata=user)])
    for doc in retriever.invoke(QUESTION):
        assert {key: doc.metadata[key] for key in user} == user
        assert doc.metadata["qrag_step"] in (1, 2)
    with pytest.raises(InvalidInputError, match="reserved"):
        retriever.add_documents([Document(page_content=STORY, metadata={"qrag_doc_id": "x"})])


def test_metadata_that_cannot_be_saved_is_refused_at_add_documents(tiny_model):
    retriever = QRAGRetriever.from_model(tiny_model, k=2, cache=None)
    loaded = Document(page_content=STORY, metadata={"source": "a.pdf", "page": 0, "total_pages": 2}, id="a")
    dated = Document(page_content=NOTES, metadata={"source": "b.txt", "modified": datetime.date(2024, 5, 1)}, id="b")
    with pytest.raises(
        InvalidInputError, match=r"document 1 \(id 'b'\): key 'modified' holds an object of type date, .* convert"
    ):
        retriever.add_documents([loaded, dated])
    assert retriever.session.doc_ids == []
    assert retriever.add_documents([loaded]) == ["a"]


def test_rank_order_and_k_through_configurable_fields(retriever):
    ranked = retriever.invoke(QUESTION, k=4, order="rank")
    assert [d.metadata["qrag_step"] for d in ranked] == [1, 2, 3, 4]
    assert sorted(d.page_content for d in ranked) == sorted(d.page_content for d in retriever.invoke(QUESTION, k=4))
    configurable = retriever.configurable_fields(k=ConfigurableField(id="k"))
    assert len(configurable.invoke(QUESTION, config={"configurable": {"k": 1}})) == 1
    assert len(configurable.invoke(QUESTION)) == 3


def test_save_and_load_keep_documents_and_options(retriever, tmp_path):
    retriever.order = "rank"
    retriever.save(tmp_path / "store")
    loaded = QRAGRetriever.load(tmp_path / "store", model=retriever.session.model)
    assert (loaded.k, loaded.order) == (3, "rank") and loaded.session.doc_ids == ["story", "notes"]
    before = [(d.page_content, d.metadata) for d in retriever.invoke(QUESTION)]
    after = [(d.page_content, d.metadata) for d in loaded.invoke(QUESTION)]
    assert [t for t, _ in after] == [t for t, _ in before]
    assert [m["qrag_q_value"] for _, m in after] == pytest.approx([m["qrag_q_value"] for _, m in before], abs=1e-5)
    assert QRAGRetriever.load(tmp_path / "store", model=retriever.session.model, k=1).k == 1
    assert not any(p.suffix in (".pkl", ".pickle") for p in (tmp_path / "store").rglob("*"))


def test_load_refuses_a_directory_that_holds_neither(tmp_path):
    (tmp_path / "junk.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="neither a saved qrag retriever"):
        QRAGRetriever.load(tmp_path)


@pytest.fixture(scope="module")
def shipped_retriever() -> QRAGRetriever:
    return QRAGRetriever.from_pretrained(k=4)


@pytest.mark.slow
def test_shipped_model_retrieves_the_same_from_the_splits_as_from_the_book(shipped_retriever):
    whole = QRAGRetriever(session=Retriever(shipped_retriever.session.model), k=4)
    whole.add_documents([Document(page_content=BOOK["text"], metadata={"source": "book.txt"})])
    split = QRAGRetriever(session=Retriever(shipped_retriever.session.model), k=4)
    split.add_documents(book_splits())
    assert len(split.session.index) == len(whole.session.index)
    want = whole.invoke(BOOK["question"])
    got = split.invoke(BOOK["question"])
    assert [d.page_content for d in got] == [d.page_content for d in want]
    keys = ("qrag_step", "qrag_chunk_index", "qrag_start", "qrag_position")
    assert [[d.metadata[k] for k in keys] for d in got] == [[d.metadata[k] for k in keys] for d in want]
    assert set(BOOK["support"]) <= {d.page_content for d in got}, "the shipped model finds both facts"


@pytest.mark.slow
def test_load_opens_a_qrag_index_build_directory(shipped_retriever, tmp_path):
    (tmp_path / "book.txt").write_text(BOOK["text"], encoding="utf-8")
    assert index_main(["build", "--document", str(tmp_path / "book.txt"), "--out", str(tmp_path / "idx")]) == 0
    loaded = QRAGRetriever.load(tmp_path / "idx", model=shipped_retriever.session.model, k=4)
    assert loaded.session.doc_ids == ["book.txt"]
    docs = loaded.invoke(BOOK["question"])
    assert set(BOOK["support"]) <= {d.page_content for d in docs}
    assert all(BOOK["text"][d.metadata["qrag_start"] : d.metadata["qrag_end"]] == d.page_content for d in docs)
    default = QRAGRetriever.load(tmp_path / "idx")
    assert [d.page_content for d in default.invoke(BOOK["question"])][:4] == [d.page_content for d in docs]


def test_show_progress_draws_a_bar_while_encoding(tiny_model, capsys):
    QRAGRetriever.from_model(tiny_model, cache=None, show_progress=True).add_texts([STORY])
    assert "encoding" in capsys.readouterr().err
