"""Rebuilding a source from a splitter's splits, and the retrieval session's document life cycle:
upsert, delete, restriction to some documents, result order, the shared cache, very long texts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from qrag_core import long_index
from qrag_core.chunking import Chunk
from qrag_core.embedding_cache import default_cache_dir, shared_cache_path
from qrag_core.errors import InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.retriever import PIECE_ID_KEY, Retriever
from qrag_core.search_options import SearchOptions
from qrag_core.sources import Piece, group_pieces, rebuild_source
from tests.conftest import STORY

DEMO = json.loads((Path(__file__).resolve().parents[1] / "qrag_core/demo_data/demo_document.json").read_text())
QUESTION = "Where is Mary?"


def test_overlapping_splits_rebuild_the_source_with_offsets_in_it():
    text = "One two three.\n\nFour five six. Seven eight.\nNine ten."
    pieces = [Piece(text[25:43], 25), Piece(text[0:14], 0), Piece(text[16:30], 16), Piece(text[44:], 44)]
    rebuilt = rebuild_source(pieces)
    assert rebuilt.text == text and rebuilt.offset == 0
    assert [(s, e) for s, e, _ in rebuilt.spans] == [(0, 14), (16, 30), (25, 43), (44, len(text))]
    assert rebuilt.piece_at(27) is pieces[2], "an overlapped offset belongs to the earlier split"
    later = rebuild_source([Piece("Four five", 16), Piece("five six.", 21)])
    assert (later.text, later.offset) == ("Four five six.", 16)


def test_splits_that_disagree_are_refused_and_splits_without_offsets_are_joined():
    with pytest.raises(InvalidInputError, match="disagree at offset 4.*start offsets right"):
        rebuild_source([Piece("abcdef", 0), Piece("xyz", 4)], "book.txt")
    joined = rebuild_source([Piece("First part.", None), Piece("Second part.", 3)])
    assert joined.text == "First part.\nSecond part." and joined.spans[1][:2] == (12, 24)


def test_group_pieces_keeps_first_seen_order_and_lone_pieces_apart():
    pieces = [Piece(str(i)) for i in range(5)]
    groups, which = group_pieces(["a", None, "b", "a", None], pieces)
    assert [[p.text for p in g] for g in groups] == [["0", "3"], ["1"], ["2"], ["4"]]
    assert which == [0, 1, 2, 0, 3]


@pytest.fixture()
def session(tiny_model) -> Retriever:
    return Retriever(tiny_model, cache=None)


def test_splits_of_the_demo_book_give_the_chunks_of_the_whole_book(session, tiny_model):
    text = DEMO["text"]
    whole = Retriever(tiny_model, cache=None)
    whole.add_texts([text], ids=["book"])
    cuts = list(range(0, len(text), 3000))
    splits = [Piece(text[c : c + 3500], c, {"part": n}, f"split-{n}") for n, c in enumerate(cuts)]
    assert session.add_sources([splits], ["book"]) == ["book"]
    got, want = session.index.chunks, whole.index.chunks
    assert [(c.text, c.start, c.end, c.index) for c in got] == [(c.text, c.start, c.end, c.index) for c in want]
    assert all(text[c.start : c.end] == c.text for c in got)
    assert {c.metadata[PIECE_ID_KEY] for c in got} == {f"split-{n}" for n in range(len(cuts))}
    assert torch.equal(session.index.content, whole.index.content)


def test_adding_an_id_again_replaces_the_document_in_its_place(session, tiny_model):
    notes, garden = "The kettle is broken. Anna fixed it.", "Mary went to the garden. The sun was out."
    session.add_texts([STORY, notes, "Anna left. The lab was dark."], ids=["story", "notes", "lab"])
    session.add_texts([garden], ids=["story"])
    assert session.doc_ids == ["story", "notes", "lab"]
    start, end = session.index.document_range("story")
    assert [c.text for c in session.index.chunks[start:end]] == ["Mary went to the garden.", "The sun was out."]
    assert len(session.index) == session.index.content.shape[0] == 6
    session.add_texts(["The kettle is broken."], ids=["notes"], ordered=False)  # shorter, and a passage now
    assert session.doc_ids == ["story", "notes", "lab"] and session.index.ordered == [True, False, True]
    fresh = Retriever(tiny_model, cache=None)
    fresh.add_texts([garden], ids=["story"])
    fresh.add_texts(["The kettle is broken."], ids=["notes"], ordered=False)
    fresh.add_texts(["Anna left. The lab was dark."], ids=["lab"])
    assert session.index.doc_starts.tolist() == fresh.index.doc_starts.tolist() == [0, 2, 3]
    assert torch.equal(session.index.content, fresh.index.content)
    for options in (SearchOptions(k=4), SearchOptions(k=3, beam=2), SearchOptions(k=2, document_ids=("lab", "story"))):
        got, want = session.search(QUESTION, options), fresh.search(QUESTION, options)
        assert [(s.chunk_index, s.q_value, s.position) for s in got.trace] == [
            (s.chunk_index, s.q_value, s.position) for s in want.trace
        ]
        assert [(c.chunk.doc_id, c.chunk.text) for c in got.chunks] == [
            (c.chunk.doc_id, c.chunk.text) for c in want.chunks
        ]


def test_documents_without_ids_get_ids_from_their_content(session):
    first = session.add_texts([STORY, STORY], metadatas=[{"a": 1}, {"a": 2}])
    assert len(set(first)) == 2, "same text, different metadata: two documents"
    again = session.add_texts([STORY], metadatas=[{"a": 1}])
    assert again == first[:1] and len(session.doc_ids) == 2, "adding the same document again does not duplicate it"


def test_delete_removes_documents_all_or_nothing(session):
    session.add_texts([STORY, "The kettle is broken.", "Anna fixed the printer."], ids=["a", "b", "c"])
    with pytest.raises(InvalidInputError, match=r"\['x'\].*nothing was deleted"):
        session.delete(["b", "x"])
    assert session.doc_ids == ["a", "b", "c"]
    before = session.search(QUESTION, SearchOptions(k=2, document_id="a")).texts
    session.delete(["b"])
    assert session.doc_ids == ["a", "c"]
    assert [c.text for c in session.index.chunks[-1:]] == ["Anna fixed the printer."]
    assert session.search(QUESTION, SearchOptions(k=2, document_id="a")).texts == before
    assert session.index.document_range("c") == (len(session.index) - 1, len(session.index))


def test_index_remove_keeps_embeddings_aligned():
    index = DocumentIndex("fp", 2)
    for n, doc in enumerate("abc"):
        chunks = [Chunk(text=f"{doc}{i}", index=i, doc_id=doc) for i in range(n + 1)]
        index.add(chunks, torch.full((n + 1, 2), float(n)), doc_id=doc)
    index.remove("b")
    assert index.doc_ids == ["a", "c"] and index.doc_starts.tolist() == [0, 1]
    assert index.content[:, 0].tolist() == [0.0, 2.0, 2.0, 2.0]
    assert [c.text for c in index.chunks] == ["a0", "c0", "c1", "c2"]
    with pytest.raises(InvalidInputError, match="no document 'b'"):
        index.remove("b")


def test_search_restricted_to_some_documents_and_rank_order(session):
    session.add_texts([STORY, "The kettle is broken.", "Mary is in the lab. Mary left."], ids=["a", "b", "c"])
    result = session.search(QUESTION, SearchOptions(k=3, document_ids=("c", "a")))
    assert {s.chunk.doc_id for s in result.chunks} <= {"a", "c"} and len(result.chunks) == 3
    assert session.search(QUESTION, SearchOptions(document_ids=())).chunks == []
    ranked = session.search(QUESTION, k=3, document_ids=("c", "a"), order="rank")
    assert [s.step for s in ranked.chunks] == [1, 2, 3]
    positions = [(["a", "c"].index(s.chunk.doc_id), s.chunk.index) for s in result.chunks]
    assert positions == sorted(positions)
    with pytest.raises(InvalidInputError, match="order must be one of"):
        SearchOptions(order="score")
    with pytest.raises(InvalidInputError, match=r"no document\(s\) \['zzz'\]"):  # was a bare ValueError
        session.search(QUESTION, SearchOptions(document_ids=("a", "zzz")))


def test_user_metadata_in_qrags_namespace_is_refused(session):
    with pytest.raises(InvalidInputError, match="'qrag_step'.*reserved"):
        session.add_texts([STORY], metadatas=[{"qrag_step": 3}])
    session.add_texts([STORY], metadatas=[{"step": "user's", "doc_id": "mine", "start": -1}])
    meta = session.index.chunks[0].metadata
    assert meta == {"step": "user's", "doc_id": "mine", "start": -1}


def test_the_shared_cache_is_used_by_default(tiny_model):
    session = Retriever(tiny_model)
    session.add_texts([STORY])
    assert session.cache is not None and session.cache.path == shared_cache_path()
    texts = [c.text for c in session.index.chunks]
    found = session.cache.get_many(tiny_model.action_encoder.fingerprint(), texts)
    assert len(found) == len(set(texts))


def test_very_long_texts_go_through_the_resumable_builder(session, monkeypatch):
    calls = []
    build = long_index.build_long_index

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return build(*args, **kwargs)

    monkeypatch.setattr("qrag_core.retriever.build_long_index", spy)
    reference = Retriever(session.model, cache=None)
    reference.add_texts([STORY], ids=["s"])
    session.long_text_chars = 100
    session.add_texts([STORY], ids=["s"])
    assert len(calls) == 1
    assert [c.text for c in session.index.chunks] == [c.text for c in reference.index.chunks]
    assert torch.allclose(session.index.content.float(), reference.index.content.float(), atol=1e-3)
    assert not list((default_cache_dir() / "long-index").iterdir()), "the work directory is removed when done"
