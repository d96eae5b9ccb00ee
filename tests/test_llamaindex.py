"""The LlamaIndex retriever: nodes and documents, scores and metadata, query engines, persistence."""

from __future__ import annotations

import json

import pytest
from llama_index.core import Document
from llama_index.core.llms import MockLLM
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from qrag_core import QRAGConfig
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.retrieval_session import INDEX_DIR, MODEL_DIR, SESSION_FILE, RetrievalOptions
from qrag_integrations.llamaindex import QRAGRetriever
from tests.conftest import STORY, make_tiny_model

QUESTION = "Where is Mary?"
NOTES = "Notes from the lab. The kettle is broken. Anna fixed the printer. The window faces north."


@pytest.fixture()
def documents() -> list[Document]:
    return [
        Document(text=STORY, metadata={"source": "story.txt"}, id_="story"),
        Document(text=NOTES, metadata={"source": "notes.txt"}, id_="notes"),
    ]


@pytest.fixture()
def retriever(tiny_model, documents) -> QRAGRetriever:
    return QRAGRetriever.from_defaults(documents=documents, model=tiny_model, k=3)


def test_nodes_with_q_value_scores_in_document_order(retriever, documents):
    found = retriever.retrieve(QUESTION)
    assert len(found) == 3 and all(isinstance(n, NodeWithScore) for n in found)
    texts = {doc.doc_id: doc.text for doc in documents}
    order = []
    for hit in found:
        meta = hit.node.metadata
        assert hit.score == meta["qrag_q_value"]
        assert meta["source"] == f"{meta['qrag_doc_id']}.txt"
        assert texts[meta["qrag_doc_id"]][hit.node.start_char_idx : hit.node.end_char_idx] == hit.node.get_content()
        assert hit.node.node_id == f"{meta['qrag_doc_id']}#{meta['qrag_chunk_index']}"
        assert hit.node.relationships[NodeRelationship.SOURCE].node_id == meta["qrag_doc_id"]
        order.append((["story", "notes"].index(meta["qrag_doc_id"]), meta["qrag_chunk_index"]))
    assert order == sorted(order)
    assert sorted(hit.node.metadata["qrag_step"] for hit in found) == [1, 2, 3]
    core = retriever.session.search(QUESTION, RetrievalOptions(k=3))
    assert [hit.node.get_content() for hit in found] == core.texts


def test_nodes_of_one_source_form_one_document(tiny_model):
    def node(text: str, doc: str, part: int) -> TextNode:
        return TextNode(
            text=text,
            id_=f"{doc}-{part}",
            metadata={"part": part},
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)},
        )

    nodes = [
        node("Mary moved to the bathroom. John went to the hallway.", "a", 0),
        node("The kettle is broken.", "b", 0),
        node("Mary went back to the kitchen.", "a", 1),
    ]
    retriever = QRAGRetriever.from_defaults(nodes=nodes, model=tiny_model, k=4)
    assert retriever.session.doc_ids == ["a", "b"]
    chunks = [c for c in retriever.session.index.chunks if c.doc_id == "a"]
    assert [c.text for c in chunks] == [
        "Mary moved to the bathroom.",
        "John went to the hallway.",
        "Mary went back to the kitchen.",
    ]
    assert [c.index for c in chunks] == [0, 1, 2]
    assert [(c.metadata["qrag_piece_id"], c.metadata["part"]) for c in chunks] == [("a-0", 0), ("a-0", 0), ("a-1", 1)]
    joined = "\n".join(n.text for n in nodes if n.ref_doc_id == "a")
    assert all(joined[c.start : c.end] == c.text for c in chunks)


def test_from_defaults_needs_exactly_one_source(tiny_model, documents):
    with pytest.raises(InvalidInputError, match="exactly one of nodes= or documents="):
        QRAGRetriever.from_defaults(model=tiny_model)
    with pytest.raises(InvalidInputError, match="exactly one"):
        QRAGRetriever.from_defaults(nodes=documents, documents=documents, model=tiny_model)


def test_retriever_query_engine_reads_the_evidence(retriever):
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(QUESTION)
    evidence = [hit.node.get_content() for hit in response.source_nodes]
    assert evidence == [hit.node.get_content() for hit in retriever.retrieve(QUESTION)]
    prompt = str(response)  # MockLLM answers with the prompt it was given
    positions = [prompt.index(text) for text in evidence]
    assert positions == sorted(positions), "the LLM sees the chunks in document order"
    assert "source: story.txt" in prompt or "source: notes.txt" in prompt
    assert "q_value" not in prompt, "retrieval diagnostics stay out of the prompt"


async def test_as_query_engine_sync_and_async(retriever):
    engine = retriever.as_query_engine(llm=MockLLM(), response_mode="simple_summarize")
    sync = engine.query(QUESTION)
    asynchronous = await engine.aquery(QUESTION)
    assert [n.node.node_id for n in sync.source_nodes] == [n.node.node_id for n in asynchronous.source_nodes]
    assert len(sync.source_nodes) == 3
    assert str(sync) == str(asynchronous) and QUESTION in str(sync)


def test_persist_and_reload_an_in_memory_model(minilm_tokenizer, documents, tmp_path):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))
    retriever = QRAGRetriever.from_defaults(documents=documents, model=model, k=4)
    retriever.persist(tmp_path / "store")
    assert (tmp_path / "store" / MODEL_DIR / "config.json").is_file()
    reloaded = QRAGRetriever.from_persist_dir(tmp_path / "store")
    assert reloaded.options == RetrievalOptions(k=4), "options are saved with the retriever"
    assert reloaded.session.doc_ids == ["story", "notes"]
    before = [(n.node.node_id, n.score) for n in retriever.retrieve(QUESTION)]
    after = [(n.node.node_id, n.score) for n in reloaded.retrieve(QUESTION)]
    assert [i for i, _ in after] == [i for i, _ in before]
    assert [s for _, s in after] == pytest.approx([s for _, s in before], abs=1e-5)
    assert len(QRAGRetriever.from_persist_dir(tmp_path / "store", model=model, k=1).retrieve(QUESTION)) == 1


def test_reloading_with_another_action_encoder_is_refused(retriever, minilm_tokenizer, tmp_path):
    retriever.persist(tmp_path / "store")
    with pytest.raises(InvalidInputError, match="different action encoder"):
        QRAGRetriever.from_persist_dir(tmp_path / "store", model=make_tiny_model(minilm_tokenizer, seed=5))


def test_bad_persist_dirs_are_explained(tmp_path, retriever):
    with pytest.raises(CheckpointError, match="not a saved qrag retriever"):
        QRAGRetriever.from_persist_dir(tmp_path)
    retriever.persist(tmp_path / "store")
    (tmp_path / "store" / SESSION_FILE).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        QRAGRetriever.from_persist_dir(tmp_path / "store")


@pytest.mark.slow
def test_real_minilm_from_pretrained_query_engine_and_persist(documents, tmp_path):
    retriever = QRAGRetriever.from_pretrained(k=2)
    retriever.insert_documents(documents)
    engine = retriever.as_query_engine(llm=MockLLM())
    response = engine.query(QUESTION)
    texts = [n.node.get_content() for n in response.source_nodes]
    assert texts == ["Mary moved to the bathroom.", "Mary went back to the kitchen."]
    retriever.persist(tmp_path / "store")
    saved = json.loads((tmp_path / "store" / SESSION_FILE).read_text())
    assert "name" in saved["model"] and not (tmp_path / "store" / MODEL_DIR).exists(), "named models are not copied"
    assert (tmp_path / "store" / INDEX_DIR / "index.json").is_file()
    reloaded = QRAGRetriever.from_persist_dir(tmp_path / "store", k=2)
    assert [n.node.get_content() for n in reloaded.retrieve(QUESTION)] == texts
