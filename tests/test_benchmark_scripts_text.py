"""The passage-length and sentence-splitting benchmark scripts: their measures on small hand-made inputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrag_core.data.examples import Example
from qrag_core.data.haystack import count_tokens
from tests.conftest import load_script


@pytest.fixture(scope="module")
def passage_length():
    return load_script("benchmarks/passage_length.py")


@pytest.fixture(scope="module")
def sentence_splitting():
    return load_script("benchmarks/sentence_splitting.py")


def test_length_distribution_counts_every_paragraph(passage_length) -> None:
    chunks = ["T: " + "word " * 10, "U: " + "word " * 100, "V: short"]
    examples = [
        Example(id="a", question="q", chunks=chunks[:2], support=[0]),
        Example(id="b", question="q", chunks=chunks[2:], support=[0]),
    ]
    counts = count_tokens(chunks)
    dist = passage_length.length_distribution(examples, [64, 128])
    assert dist["paragraphs"] == 3 and dist["max"] == max(counts)
    assert dist["share_above"] == {"64": pytest.approx(1 / 3), "128": 0.0}
    assert dist["mean"] == pytest.approx(sum(counts) / 3)


def test_markdown_of_passage_length_results(passage_length, tmp_path: Path) -> None:
    scores = {
        "fact_em": 0.5,
        "fact_recall": 0.75,
        "fact_f1": 0.6,
        "seconds": 3.0,
        "machine": "m",
        "command": "c",
        "commit": "x",
    }
    dist = {
        "paragraphs": 3,
        "mean": 40.0,
        "percentiles": {str(p): 40.0 for p in passage_length.PERCENTILES},
        "max": 90,
        "share_above": {"64": 0.25},
    }
    results = {"suites": {"hotpotqa": {"n": 2, "distribution": dist, "dense": {"64": {"2": scores}}}}}
    out = tmp_path / "p.md"
    passage_length.write_markdown(results, out)
    text = out.read_text()
    assert "| 64 | 0.500 | 0.750 | 0.600 | 3 |" in text and "25.0%" in text


def test_offset_checks_catch_overlap_untrimmed_spans_and_lost_text(sentence_splitting) -> None:
    text = "One. “Two.” Three."
    assert sentence_splitting.exact_offsets(text, [(0, 4), (5, 11), (12, 18)])
    assert sentence_splitting.all_text_kept(text, [(0, 4), (5, 11), (12, 18)])
    assert not sentence_splitting.exact_offsets(text, [(0, 5), (5, 11)])  # trailing space: not trimmed
    assert not sentence_splitting.exact_offsets(text, [(0, 4), (2, 11)])  # overlap
    assert sentence_splitting.exact_offsets(text, [(0, 4), (5, 10)]) and not sentence_splitting.all_text_kept(
        text, [(0, 4), (5, 10), (12, 18)]
    )  # the closing quote is in no chunk


def test_measure_reports_abbreviation_ends(sentence_splitting) -> None:
    text = "Mr. Smith came. Dr. Watson left."
    regex = sentence_splitting.measure([text], "regex")
    punkt = sentence_splitting.measure([text], "punkt")
    assert (regex["chunks"], regex["abbreviation_end_count"]) == (4, 2)
    assert (punkt["chunks"], punkt["abbreviation_end_count"]) == (2, 0)
    assert punkt["exact_offsets"] and punkt["all_text_kept"]


@pytest.fixture(scope="module")
def lexical_index_script():
    return load_script("benchmarks/lexical_index.py")


def test_the_lexical_index_document_takes_consecutive_sentences_around_the_books(lexical_index_script) -> None:
    import numpy as np

    from qrag_core.data.haystack import Haystack

    books = Haystack([("a", "b"), ("c",)], [np.array([3, 4]), np.array([5])], ["one", "two"])
    assert lexical_index_script.document(books, 7) == ["a", "b"]
    assert lexical_index_script.document(books, 13) == ["a", "b", "c", "a"], "around again after the last book"


def test_the_lexical_index_measurement_and_table(lexical_index_script, tmp_path: Path) -> None:
    chunks = ["Gate 12 opened at 0740.", "Mary went home.", "Flight LX318 was late."] * 50
    kinds = lexical_index_script.measure_alternately(chunks, repeats=2)
    identifiers, everything = kinds["identifier words"], kinds["all words"]
    assert (identifiers["vocabulary"], everything["vocabulary"]) == (3, 12)
    assert identifiers["seconds"] > 0 and everything["peak_mb"] >= 0
    entry = {"chunks": 150, "words": 650, "kinds": kinds}
    entry |= {"machine": "M", "commit": "c", "command": "benchmarks/lexical_index.py"}
    out = tmp_path / "lexical_index.md"
    lexical_index_script.write_markdown({"lengths": {"10M": entry, "1M": entry}}, out)
    text = out.read_text()
    assert text.index("| 1M | 150 | 650 | all words | 12 |") < text.index("| 10M |"), "lengths in order"
    assert "| 1M | 150 | 650 | identifier words | 3 |" in text and "- 10M: M; commit c" in text
