"""Passage collections (positions off) next to ordered documents (ρ_t) in one index, in training and on disk."""

import json

import pytest
import torch

from qrag_core.data.examples import Example, example_from_json
from qrag_core.data.hotpotqa import hotpot_example
from qrag_core.errors import DataFormatError, InvalidInputError
from qrag_core.index import INDEX_FILE, DocumentIndex
from qrag_core.positions import position_intervals
from qrag_core.search import search
from qrag_core.training.updates import prepare_documents

PASSAGES = [f"Passage {i} is about {w}." for i, w in enumerate("apples rivers kings ships towers wolves".split())]
STORY = [f"Line {i}: the {w} moved." for i, w in enumerate("cat dog bird fish goat".split())]


def test_unordered_document_is_one_interval_at_zero_and_leaves_ordered_ones_alone():
    # documents [0, 6) unordered and [6, 11) ordered; chunk 2 and chunk 8 selected
    mixed = position_intervals("relative", 11, [2, 8], 10.0, 9.0, [0, 6], ordered=[False, True])
    assert mixed.dense(11)[:6].tolist() == [0.0] * 6
    alone = position_intervals("relative", 5, [2], 10.0, 9.0)
    assert mixed.dense(11)[6:].tolist() == pytest.approx(alone.dense(5).tolist())
    with pytest.raises(InvalidInputError, match="ordered flags"):
        position_intervals("relative", 11, [], 10.0, 9.0, [0, 6], ordered=[True])


def test_search_over_a_collection_ranks_by_the_plain_inner_product(tiny_model):
    index = DocumentIndex.build(tiny_model, [PASSAGES], ordered=False)
    result = search(tiny_model, "towers and kings", index, k=1, alternatives=len(PASSAGES) - 1)
    with torch.inference_mode():
        state = tiny_model.state_vectors(["towers and kings"], [[]])[0]
        plain = tiny_model.index_action_vectors(index) @ state
    assert result.trace[0].chunk_index == int(plain.argmax())
    assert result.trace[0].q_value == pytest.approx(float(plain.max()), abs=1e-5)
    assert result.trace[0].position == 0.0
    ordered = search(tiny_model, "towers and kings", DocumentIndex.build(tiny_model, [PASSAGES]), k=1)
    assert ordered.trace[0].position != 0.0 or ordered.trace[0].chunk_index == 0  # ρ_0 = ℓ·i/N when ordered


def test_index_records_the_flag_per_document_and_keeps_it_on_disk(tiny_model, tmp_path):
    index = DocumentIndex.build(tiny_model, [PASSAGES, STORY], doc_ids=["wiki", "story"], ordered=[False, True])
    assert index.ordered == [False, True]
    index.save(tmp_path / "idx")
    loaded = DocumentIndex.load(tmp_path / "idx")
    assert loaded.ordered == [False, True]
    copy = DocumentIndex(index.fingerprint, index.dim)
    copy.add_from(loaded, "story")
    copy.add_from(loaded, "wiki")
    assert copy.ordered == [True, False]
    loaded.remove("wiki")
    assert loaded.ordered == [True]
    # Searching only the collection gives positions 0; only the story gives ρ_t.
    assert all(s.position == 0.0 for s in search(tiny_model, "kings", index, k=2, document_id="wiki").trace)


def test_index_saved_before_the_flag_loads_as_ordered(tiny_model, tmp_path):
    DocumentIndex.build(tiny_model, [STORY, PASSAGES], ordered=[True, False]).save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / INDEX_FILE).read_text())
    del meta["ordered"]
    (tmp_path / "idx" / INDEX_FILE).write_text(json.dumps(meta))
    assert DocumentIndex.load(tmp_path / "idx").ordered == [True, True]


def test_bad_ordered_values_are_refused(tiny_model):
    with pytest.raises(InvalidInputError, match="one of them per document"):
        DocumentIndex.build(tiny_model, [PASSAGES, STORY], ordered=[False])
    index = DocumentIndex("fp", 4)
    with pytest.raises(InvalidInputError, match="ordered must be"):
        index.add(DocumentIndex.build(tiny_model, [STORY]).chunks, torch.zeros(5, 4), ordered="no")  # type: ignore[arg-type]


def test_jsonl_ordered_field_round_trips_and_bad_values_name_the_line():
    row = {"question": "Who?", "chunks": PASSAGES, "support": [1], "ordered": False}
    example = example_from_json(row, ("data.jsonl", 7))
    assert example.ordered is False and "ordered" not in example.extra
    assert example.to_json()["ordered"] is False
    assert "ordered" not in Example("a", "q", chunks=PASSAGES).to_json()
    with pytest.raises(DataFormatError, match=r"data.jsonl.*7.*'ordered' must be true"):
        example_from_json({**row, "ordered": "false"}, ("data.jsonl", 7))


def test_hotpotqa_paragraphs_are_a_collection_and_train_with_positions_off(tiny_model):
    record = {
        "_id": "h1",
        "question": "Which river?",
        "answer": "Nile",
        "context": [["Nile", ["The Nile is a river."]], ["Alps", ["The Alps are mountains."]]],
        "supporting_facts": [["Nile", 0]],
    }
    example = hotpot_example(record, "hotpot.json")
    assert example.ordered is False
    (doc,) = prepare_documents(tiny_model, [example])
    assert doc.ordered is False
    with torch.no_grad():
        state = tiny_model.state_vectors([doc.question], [[]])[0]
        actions = tiny_model.action_vectors(tiny_model.encode_chunks(doc.texts))
        q = tiny_model.q_row(state, actions, [], ordered=doc.ordered)
    assert q.tolist() == pytest.approx((actions @ state).tolist(), abs=1e-5)


def test_adapters_mark_passages_and_ordered_documents(tiny_model):
    from langchain_core.documents import Document as LCDocument
    from llama_index.core.schema import Document as LIDocument

    from qrag_core.retriever import Retriever
    from qrag_integrations.langchain import QRAGRetriever as LangChainRetriever
    from qrag_integrations.llamaindex import QRAGRetriever as LlamaIndexRetriever

    story = " ".join(STORY)
    retriever = Retriever(tiny_model, cache=None)
    ids = retriever.add_texts([PASSAGES[0], story], ids=["passage", "story"])  # automatic: one chunk = a passage
    assert dict(zip(ids, retriever.index.ordered, strict=True)) == {"passage": False, "story": True}
    retriever.add_texts([story], ids=["story"], ordered=False)  # said explicitly, replacing the document
    assert retriever.index.ordered[retriever.index.doc_ids.index("story")] is False
    with pytest.raises(InvalidInputError, match="ordered"):
        retriever.add_texts([story], ordered="yes")

    langchain = LangChainRetriever.from_model(tiny_model, k=2)
    langchain.add_documents([LCDocument(page_content=p) for p in PASSAGES[:3]] + [LCDocument(page_content=story)])
    assert langchain.session.index.ordered == [False, False, False, True]
    langchain.add_texts(PASSAGES[3:], ordered=True)
    assert langchain.session.index.ordered[-3:] == [True, True, True]

    docs = [LIDocument(text=story, doc_id="s")]
    llama = LlamaIndexRetriever.from_defaults(documents=docs, model=tiny_model, k=2, ordered=False)
    assert llama.session.index.ordered == [False]
    llama.insert_documents([LIDocument(text=PASSAGES[0], doc_id="p")])
    assert llama.session.index.ordered == [False, False]
    assert len(llama.retrieve("Where did the cat go?")) == 2
