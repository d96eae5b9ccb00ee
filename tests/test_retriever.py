"""Retrievers (qrag_core.retriever): what a saved retriever brings back, in which files, and what adding refuses."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from qrag_core.retriever import RETRIEVER_FILE, Retriever, saved_options
from qrag_core.search_options import SearchOptions


def test_a_retriever_saved_before_the_splitter_setting_reopens_with_regex_chunking(tiny_model, story, tmp_path: Path):
    retriever = Retriever(tiny_model)
    retriever.add_texts([story], ids=["story"])
    retriever.save(tmp_path / "saved")
    meta_path = tmp_path / "saved" / RETRIEVER_FILE
    meta = json.loads(meta_path.read_text())
    del meta["chunking"]["sentence_splitter"]  # as written by an earlier qrag
    meta_path.write_text(json.dumps(meta))
    reopened = Retriever.load(tmp_path / "saved", model=tiny_model)
    assert reopened.chunking.sentence_splitter == "regex"
    assert reopened.doc_ids == ["story"]


def test_the_saved_layout_and_option_names_are_those_earlier_versions_wrote_and_read(tiny_model, story, tmp_path):
    retriever = Retriever(tiny_model, cache=None)
    retriever.add_texts([story], ids=["story"])
    retriever.save(tmp_path / "saved", SearchOptions(k=2, document_ids=["story"], order="rank"))
    assert sorted(p.name for p in (tmp_path / "saved").iterdir()) == ["index", "model", "qrag_retriever.json"]
    meta = json.loads((tmp_path / "saved" / "qrag_retriever.json").read_text())
    assert meta["format_version"] == 1 and meta["model"] == {"saved": "model"}
    assert meta["options"] == {
        "k": 2,
        "beam": None,
        "expand_k": None,
        "beam_score": None,  # added later as well
        "stop_threshold": None,
        "document_id": None,
        "document_ids": ["story"],
        "order": "rank",
        "vector_index": None,  # added later; a file without it loads with the default
        "lexical_weight": None,  # added later too
        "passage_lexical_weight": None,  # and this one
        "identifier_weight": None,  # and this one
    }
    assert saved_options(tmp_path / "saved") == SearchOptions(k=2, document_ids=("story",), order="rank")


def test_chunks_added_later_are_encoded_with_the_backend_that_built_the_index(tiny_model, story):
    retriever = Retriever(tiny_model, cache=None)
    tiny_model.action_encoder.use_backend("torch-bf16")  # before anything is indexed: the index follows
    try:
        retriever.add_texts([story], ids=["story"])
        bf16 = tiny_model.action_encoder.fingerprint_for("torch-bf16")
        assert retriever.index.fingerprint == bf16
        tiny_model.action_encoder.use_backend("torch")  # e.g. another retriever's choice on the shared model
        more = "Mary went to the hallway."
        retriever.add_texts([more], ids=["more"])
        assert retriever.index.fingerprint == bf16 and retriever.index.doc_ids == ["story", "more"]
        added = retriever.index.content[-1]
        expected = tiny_model.action_encoder.encode([more], backend="torch-bf16")[0].half()
        assert torch.equal(added, expected), "the index's own backend encoded it"
        float32 = tiny_model.action_encoder.encode([more])[0].half()
        assert not torch.equal(added, float32), "not the model's current (float32) one"
        assert tiny_model.action_encoder.backend == "torch", "the shared model's backend is left as it was"
    finally:
        tiny_model.action_encoder.use_backend("torch")
