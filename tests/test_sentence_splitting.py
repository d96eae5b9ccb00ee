"""Sentence splitters behind ChunkingConfig.sentence_splitter: boundaries, exact offsets, saved configs."""

from __future__ import annotations

import json

import pytest

from qrag_core.chunking import chunk_text, iter_sentence_spans
from qrag_core.config import ChunkingConfig, QRAGConfig
from qrag_core.data.haystack import split_sentences
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.model_names import SHIPPED_MODELS_DIR

TEXT = (
    "Mr. Bennet replied\nthat he had not. “I am sick of Mr. Bingley,” cried his wife.\n\n"
    "Chapter 2\n\n“You are an adept yourself, Mr. Darcy.” “You saw me dance at Meryton,\n"
    "I believe?” Mrs. Long said so. Dr. Jones left."
)


def _sentences(text: str, splitter: str) -> list[str]:
    return [text[s:e] for s, e in iter_sentence_spans(text, splitter)]


def _exact(text: str, splitter: str, keeps_all_text: bool = True) -> None:
    """Spans in order and trimmed; with ``keeps_all_text``, every non-space character lies in a chunk."""
    spans = list(iter_sentence_spans(text, splitter))
    ends = [0] + [e for _, e in spans]
    assert all(s >= previous and e > s for (s, e), previous in zip(spans, ends, strict=False))
    assert all(text[s:e] == text[s:e].strip() for s, e in spans)
    kept = "".join("".join(text[s:e].split()) for s, e in spans)
    assert (kept == "".join(text.split())) == keeps_all_text


def test_regex_splitter_is_unchanged_and_cuts_after_titles() -> None:
    assert _sentences("Mr. Smith came home. He slept!", "regex") == ["Mr.", "Smith came home.", "He slept!"]
    assert split_sentences("Mr. Smith came home. He slept.") == ["Mr.", "Smith came home.", "He slept."]
    # the regex counts a closing quote after a sentence end as part of the gap, so the quote is in no chunk
    assert _sentences("“Go.” He went.", "regex") == ["“Go.", "He went."]
    _exact(TEXT, "regex", keeps_all_text=False)


@pytest.mark.parametrize("splitter", ["punkt", "pysbd"])
def test_library_splitters_keep_titles_with_names_and_give_exact_offsets(splitter: str) -> None:
    sentences = _sentences(TEXT, splitter)
    assert sentences[0] == "Mr. Bennet replied\nthat he had not."  # hard-wrapped line kept, offsets into the source
    assert "“I am sick of Mr. Bingley,” cried his wife." in sentences
    assert "Chapter 2" in sentences  # a blank line always ends a sentence
    assert not any(s.endswith(("Mr.", "Mrs.", "Dr.")) for s in sentences)
    assert sentences[-2:] == ["Mrs. Long said so.", "Dr. Jones left."]
    _exact(TEXT, splitter)


def test_punkt_undoes_its_break_after_a_title_before_a_name() -> None:
    text = "“What a library you have at Pemberley, Mr. Darcy!” “It ought to be good.” She smiled."
    assert _sentences(text, "punkt") == [
        "“What a library you have at Pemberley, Mr. Darcy!”",
        "“It ought to be good.”",
        "She smiled.",
    ]


def test_chunking_config_default_is_punkt_and_unknown_splitters_are_refused() -> None:
    assert ChunkingConfig().sentence_splitter == "punkt"
    chunks = chunk_text("Mr. Smith came home. He slept.")
    assert [c.text for c in chunks] == ["Mr. Smith came home.", "He slept."] and chunks[1].start == 21
    regex = chunk_text("Mr. Smith came home. He slept.", ChunkingConfig(sentence_splitter="regex"))
    assert [c.text for c in regex] == ["Mr.", "Smith came home.", "He slept."]
    with pytest.raises(InvalidInputError, match="sentence_splitter must be one of"):
        ChunkingConfig(sentence_splitter="spacy").validate()
    with pytest.raises(InvalidInputError, match="unknown sentence splitter"):
        list(iter_sentence_spans("A. B.", "spacy"))


def test_configs_saved_before_the_field_load_as_regex() -> None:
    old = QRAGConfig().to_dict()
    del old["chunking"]["sentence_splitter"]
    assert QRAGConfig.from_dict(old).chunking.sentence_splitter == "regex"
    assert QRAGConfig.from_dict(QRAGConfig().to_dict()).chunking.sentence_splitter == "punkt"
    assert ChunkingConfig.from_dict({"mode": "sentences"}).sentence_splitter == "regex"
    bad = QRAGConfig().to_dict()
    bad["chunking"]["sentence_splitter"] = "spacy"
    with pytest.raises(CheckpointError, match="sentence_splitter"):
        QRAGConfig.from_dict(bad)
    for config_file in SHIPPED_MODELS_DIR.glob("*/config.json"):
        saved = json.loads(config_file.read_text())["qrag"]["config"]
        assert QRAGConfig.from_dict(saved).chunking.sentence_splitter == saved["chunking"].get(
            "sentence_splitter", "regex"
        )


def test_qrag_index_build_takes_the_sentence_splitter(tmp_path) -> None:
    from qrag_core.cli.index import _chunking, parse_args

    document = tmp_path / "book.txt"
    document.write_text("Mr. Smith came home. He slept.")
    base = ["build", "--document", str(document), "--out", str(tmp_path / "idx")]
    assert _chunking(parse_args(base)).sentence_splitter == "punkt"
    assert _chunking(parse_args([*base, "--sentence-splitter", "regex"])).sentence_splitter == "regex"
    with pytest.raises(SystemExit):
        parse_args([*base, "--sentence-splitter", "spacy"])
