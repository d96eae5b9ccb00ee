"""The LlamaIndex retriever: nodes and documents, scores and metadata, query engines, persistence."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from llama_index.core import Document
from llama_index.core.llms import MockLLM
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.retrievers import QueryFusionRetriever
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import MetadataFilter, MetadataFilters
from llama_index.retrievers.bm25 import BM25Retriever

from qrag_core import QRAG, QRAGConfig
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.retriever import INDEX_DIR, MODEL_DIR, RETRIEVER_FILE
from qrag_core.search import SelectedChunk
from qrag_core.search_options import SearchOptions
from qrag_integrations.llamaindex import QRAGNodeWithScore, QRAGRetriever
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
    core = retriever.session.search(QUESTION, SearchOptions(k=3))
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
    assert reloaded.options == SearchOptions(k=4), "options are saved with the retriever"
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
    (tmp_path / "store" / RETRIEVER_FILE).write_text("{not json")
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
    saved = json.loads((tmp_path / "store" / RETRIEVER_FILE).read_text())
    assert "name" in saved["model"] and not (tmp_path / "store" / MODEL_DIR).exists(), "named models are not copied"
    assert (tmp_path / "store" / INDEX_DIR / "index.json").is_file()
    reloaded = QRAGRetriever.from_persist_dir(tmp_path / "store", k=2)
    assert [n.node.get_content() for n in reloaded.retrieve(QUESTION)] == texts


# ----------------------------------------------------------------------------- how users feed it
BOOK = json.loads((Path(__file__).resolve().parents[1] / "qrag_core/demo_data/demo_document.json").read_text())


def book_document() -> Document:
    return Document(text=BOOK["text"], metadata={"file_name": "book.txt"}, id_="book")


def book_nodes(chunk_size: int = 256, chunk_overlap: int = 40) -> list[TextNode]:
    return SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap).get_nodes_from_documents(
        [book_document()]
    )


def test_sentence_splitter_nodes_are_regrouped_into_their_document(tiny_model):
    nodes = book_nodes()
    assert len(nodes) > 10 and all(n.start_char_idx is not None for n in nodes)
    from_nodes = QRAGRetriever.from_defaults(nodes=nodes, model=tiny_model, k=4)
    from_document = QRAGRetriever.from_defaults(documents=[book_document()], model=tiny_model, k=4)
    assert from_nodes.session.doc_ids == ["book"]
    got = [(c.text, c.start, c.end) for c in from_nodes.session.index.chunks]
    assert got == [(c.text, c.start, c.end) for c in from_document.session.index.chunks]


def test_given_nodes_come_back_as_the_users_nodes(tiny_model):
    nodes = book_nodes()
    retriever = QRAGRetriever.from_defaults(nodes=nodes, model=tiny_model, similarity_top_k=6)
    by_id = {n.node_id: n for n in nodes}
    found = retriever.retrieve(BOOK["question"])
    assert 1 <= len(found) <= 6 and len({hit.node.node_id for hit in found}) == len(found)
    for hit in found:
        assert isinstance(hit, QRAGNodeWithScore)
        mine = by_id[hit.node.node_id]
        assert hit.node.hash == mine.hash and hit.node.metadata == mine.metadata
        assert hit.node.relationships == mine.relationships and hit.node.ref_doc_id == "book"
        assert all(chunk["text"] in mine.get_content() for chunk in hit.qrag)
        assert hit.score == max(chunk["qrag_q_value"] for chunk in hit.qrag)
    assert sorted(c["qrag_step"] for hit in found for c in hit.qrag) == [1, 2, 3, 4, 5, 6]
    starts = [hit.node.start_char_idx for hit in found]
    assert starts == sorted(starts), "document order by default"
    ranked = QRAGRetriever.from_defaults(nodes=nodes, model=tiny_model, similarity_top_k=6, order="rank")
    steps = [hit.qrag[0]["qrag_step"] for hit in ranked.retrieve(BOOK["question"])]
    assert steps == sorted(steps) and len(steps) == len(found)


def test_document_nodes_point_into_the_document_and_link_their_neighbours(tiny_model):
    retriever = QRAGRetriever.from_defaults(documents=[book_document()], model=tiny_model, k=4)
    found = retriever.retrieve(BOOK["question"])
    assert len(found) == 4
    for hit in found:
        node, index = hit.node, hit.node.metadata["qrag_chunk_index"]
        assert node.ref_doc_id == "book"
        assert BOOK["text"][node.start_char_idx : node.end_char_idx] == node.get_content()
        assert node.relationships[NodeRelationship.NEXT].node_id == f"book#{index + 1}"
        if index > 0:
            assert node.relationships[NodeRelationship.PREVIOUS].node_id == f"book#{index - 1}"
    last = len(retriever.session.index) - 1
    tail = retriever._chunk_node(SelectedChunk(retriever.session.index.chunks[last], step=1, q_value=0.0, position=0.0))
    assert NodeRelationship.NEXT not in tail.relationships


def test_delete_ref_doc_and_metadata_filters(tiny_model, documents):
    filters = MetadataFilters(filters=[MetadataFilter(key="source", value="notes.txt")])
    retriever = QRAGRetriever.from_defaults(documents=documents, model=tiny_model, k=2, filters=filters)
    assert {hit.node.ref_doc_id for hit in retriever.retrieve(QUESTION)} == {"notes"}
    retriever.filters = MetadataFilters(filters=[MetadataFilter(key="source", value="none.txt")])
    assert retriever.retrieve(QUESTION) == []
    retriever.filters = None
    retriever.delete_ref_doc("notes")
    assert retriever.session.doc_ids == ["story"]
    assert {hit.node.ref_doc_id for hit in retriever.retrieve(QUESTION)} == {"story"}


def test_inserting_a_document_again_replaces_it_and_its_nodes(tiny_model):
    retriever = QRAGRetriever.from_defaults(nodes=book_nodes(), model=tiny_model, k=3)
    fewer = book_nodes(1024, 0)
    retriever.insert_nodes(fewer)
    assert retriever.session.doc_ids == ["book"]
    assert set(retriever._nodes) == {n.node_id for n in fewer}


def test_metadata_that_cannot_be_saved_is_refused_at_insert(tiny_model):
    retriever = QRAGRetriever.from_defaults(documents=[Document(text=NOTES, id_="notes")], model=tiny_model, cache=None)
    node = TextNode(text=STORY, id_="n1", metadata={"tags": {"story"}})
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id="story")
    with pytest.raises(InvalidInputError, match=r"document 0 \(id 'story'\): key 'tags' holds an object of type set"):
        retriever.insert_nodes([node])
    with pytest.raises(InvalidInputError, match=r"id 'dated'\): key 'day' holds an object of type date"):
        retriever.insert_documents([Document(text=STORY, id_="dated", metadata={"day": datetime.date(2024, 5, 1)})])
    assert retriever.session.doc_ids == ["notes"] and retriever._nodes == {}


def test_show_progress_draws_a_bar(tiny_model, documents, capsys):
    QRAGRetriever.from_defaults(documents=documents, model=tiny_model, cache=None, show_progress=True)
    assert "encoding" in capsys.readouterr().err
    QRAGRetriever.from_defaults(documents=documents, model=tiny_model, cache=None)
    assert "encoding" not in capsys.readouterr().err, "small adds stay quiet"


def test_persist_keeps_the_users_nodes(tiny_model, tmp_path):
    nodes = book_nodes()
    retriever = QRAGRetriever.from_defaults(nodes=nodes, model=tiny_model, k=3)
    retriever.persist(tmp_path / "store")
    reloaded = QRAGRetriever.from_persist_dir(tmp_path / "store", model=tiny_model)
    before = [(h.node.node_id, h.node.hash) for h in retriever.retrieve(BOOK["question"])]
    assert [(h.node.node_id, h.node.hash) for h in reloaded.retrieve(BOOK["question"])] == before


@pytest.fixture(scope="module")
def shipped_model() -> QRAG:
    return QRAG.from_pretrained()


@pytest.mark.slow
def test_query_fusion_merges_the_same_passage_from_qrag_and_bm25(shipped_model):
    nodes = book_nodes()
    qrag = QRAGRetriever.from_defaults(nodes=nodes, model=shipped_model, k=4, order="rank")
    bm25 = BM25Retriever.from_defaults(nodes=nodes, similarity_top_k=4)
    fusion = QueryFusionRetriever(
        [qrag, bm25], llm=MockLLM(), similarity_top_k=8, num_queries=1, mode="reciprocal_rerank"
    )
    fused = fusion.retrieve(BOOK["question"])
    from_qrag = {h.node.node_id for h in qrag.retrieve(BOOK["question"])}
    from_bm25 = {h.node.node_id for h in bm25.retrieve(BOOK["question"])}
    assert from_qrag & from_bm25, "both find a node holding the facts"
    assert [h.node.node_id for h in fused] == list(dict.fromkeys(h.node.node_id for h in fused)), "merged once"
    assert {h.node.node_id for h in fused} == from_qrag | from_bm25


@pytest.mark.slow
def test_shipped_model_with_sentence_splitter_and_query_engine(shipped_model):
    nodes = book_nodes()
    retriever = QRAGRetriever.from_defaults(nodes=nodes, model=shipped_model, similarity_top_k=4)
    engine = RetrieverQueryEngine.from_args(retriever, llm=MockLLM())
    response = engine.query(BOOK["question"])
    evidence = [c["text"] for hit in response.source_nodes for c in hit.qrag]
    assert set(BOOK["support"]) <= set(evidence), "the shipped model finds both facts"
    prompt = str(response)
    assert all(hit.node.get_content() in prompt for hit in response.source_nodes)
