"""Saved retrievers (qrag_core.retriever): what a saved session brings back."""

from __future__ import annotations

import json
from pathlib import Path

from qrag_core.retriever import RETRIEVER_FILE, Retriever


def test_a_session_saved_before_the_splitter_setting_reopens_with_its_regex_chunking(tiny_model, story, tmp_path: Path):
    session = Retriever(tiny_model)
    session.add_texts([story], ids=["story"])
    session.save(tmp_path / "saved")
    meta_path = tmp_path / "saved" / RETRIEVER_FILE
    meta = json.loads(meta_path.read_text())
    del meta["chunking"]["sentence_splitter"]  # as written by an earlier qrag
    meta_path.write_text(json.dumps(meta))
    reopened = Retriever.load(tmp_path / "saved", model=tiny_model)
    assert reopened.chunking.sentence_splitter == "regex"
    assert reopened.doc_ids == ["story"]
