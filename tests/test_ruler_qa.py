"""RULER-style HotpotQA in a haystack: length, support, determinism, each gold paragraph exactly once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrag_core.data import paths
from qrag_core.data.examples import read_jsonl
from qrag_core.data.haystack import count_tokens
from qrag_core.data.hotpotqa import HOTPOTQA_FILE
from qrag_core.data.ruler_qa import build_ruler_qa
from qrag_core.errors import InvalidInputError
from tests.test_data_builders import needs_data


def _records() -> list[dict]:
    return json.loads(paths.data_file(*HOTPOTQA_FILE).read_text())


def _check_sample(example, record: dict, target: int) -> None:
    """Tokens within 1 % below the target; support = the gold paragraphs, each present once; titles once."""
    counts = count_tokens(example.chunks)
    assert example.extra["tokens"] == sum(counts)
    assert target * 0.99 <= example.extra["tokens"] <= target
    gold_titles = {title for title, _ in record["supporting_facts"]}
    gold_texts = {f"{t}: {''.join(s).strip()}" for t, s in record["context"] if t in gold_titles}
    assert {example.chunks[i] for i in example.support} == gold_texts
    assert len(example.support) == len(gold_texts)
    for text in gold_texts:
        assert example.chunks.count(text) == 1
    for title in gold_titles:
        assert sum(chunk.startswith(title + ": ") for chunk in example.chunks) == 1
    assert example.question == record["question"] and example.answer == record["answer"]
    assert example.extra["source_id"] == record["_id"] and example.extra["task"] == "qa_hotpotqa"


@needs_data
@pytest.mark.parametrize("length", ["4k", "32k"])
def test_qa_hotpotqa_length_and_support(length: str) -> None:
    examples = build_ruler_qa("qa_hotpotqa", length, n=4)
    records = _records()
    target = 4096 if length == "4k" else 32768
    for example, record in zip(examples, records, strict=False):
        _check_sample(example, record, target)
        assert example.extra["length"] == length and example.extra["haystack"] == "paragraphs"
        assert example.ordered is False  # a collection of paragraphs in random order: positions off
    # the gold paragraphs land at different places from sample to sample
    assert len({tuple(e.support) for e in examples}) == len(examples)


@needs_data
def test_qa_hotpotqa_deterministic_by_seed() -> None:
    first = build_ruler_qa("qa_hotpotqa", "4k", n=3, seed=1)
    again = build_ruler_qa("qa_hotpotqa", "4k", n=3, seed=1)
    other = build_ruler_qa("qa_hotpotqa", "4k", n=3, seed=2)
    assert [(e.chunks, e.support) for e in first] == [(e.chunks, e.support) for e in again]
    assert [e.chunks for e in first] != [e.chunks for e in other]


@needs_data
def test_qa_hotpotqa_fills_with_novel_sentences_when_paragraphs_run_out(tmp_path: Path) -> None:
    records = _records()[:3]
    small = tmp_path / "three.json"
    small.write_text(json.dumps(records))
    examples = build_ruler_qa("qa_hotpotqa", "8k", n=3, path=small)
    for example, record in zip(examples, records, strict=True):
        _check_sample(example, record, 8192)
        assert example.extra["haystack"] == "paragraphs+novel"
        paragraphs = [
            c
            for c in example.chunks
            if any(c == f"{t}: {''.join(s).strip()}" for r in records for t, s in r["context"])
        ]
        assert len(paragraphs) == len({t for r in records for t, _ in r["context"]})  # every title once


@needs_data
def test_qa_hotpotqa_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="unknown RULER QA task"):
        build_ruler_qa("qa_squad", "4k", n=1)
    with pytest.raises(InvalidInputError, match="only 297"):
        build_ruler_qa("qa_hotpotqa", "4k", n=300)
    with pytest.raises(InvalidInputError, match="more than"):
        build_ruler_qa("qa_hotpotqa", 100, n=1)


@needs_data
def test_qrag_data_ruler_qa_hotpotqa(tmp_path: Path) -> None:
    from qrag_core.cli.data import main as data_main

    out = tmp_path / "qa.jsonl"
    assert data_main(["ruler", "--task", "qa_hotpotqa", "--length", "4k", "--n", "2", "--out", str(out)]) == 0
    rows = read_jsonl(out, need_support=True)
    assert [r.extra["task"] for r in rows] == ["qa_hotpotqa"] * 2
    assert [r.support for r in rows] == [e.support for e in build_ruler_qa("qa_hotpotqa", "4k", n=2)]
