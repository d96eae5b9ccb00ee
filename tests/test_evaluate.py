"""The evaluation loop, the baselines and the qrag-eval CLI (issue 3 tests)."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from qrag_core.baselines import BM25TopK, DenseTopK, make_method
from qrag_core.chunking import Chunk
from qrag_core.data.examples import Example
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.evaluation import QRAGSearch, evaluate, steps_for

CHUNKS = [
    "Mary moved to the bathroom.",
    "The zebra ate grass by the river.",
    "John went to the hallway.",
    "It had rained all night.",
    "Mary went back to the kitchen.",
    "The clock struck nine.",
]


class FixedSelection:
    """A method that always selects the same chunk indices (to check the loop's arithmetic)."""

    name = "fixed"

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices
        self.calls: list[int] = []

    def select(self, question: str, chunks: Sequence[Chunk], steps: int) -> list[int]:
        self.calls.append(steps)
        return self.indices[:steps]


def _example(i: int, support: list[int], task: str | None = "qa1", **extra: object) -> Example:
    fields = {"task": task, **extra} if task else dict(extra)
    return Example(id=f"e{i}", question="Where is Mary?", chunks=list(CHUNKS), support=support, extra=fields)


def test_evaluate_aggregates_overall_and_per_task() -> None:
    examples = [_example(0, [0, 4]), _example(1, [2]), _example(2, [4], task="qa2")]
    result = evaluate(FixedSelection([0, 4]), examples, steps=2)
    assert result["n"] == 3
    assert result["fact_em"] == pytest.approx(2 / 3)
    assert result["fact_recall"] == pytest.approx(2 / 3)
    # F1 per example: 1, 0, 2/3.
    assert result["fact_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert result["per_task"]["qa1"] == {
        "n": 2,
        "fact_em": 0.5,
        "fact_recall": 0.5,
        "fact_precision": 0.5,
        "fact_f1": 0.5,
    }
    assert result["per_task"]["qa2"]["fact_f1"] == pytest.approx(2 / 3)
    assert result["seconds"] >= 0 and result["method"] == "fixed"


def test_steps_default_by_task_and_capped_by_chunk_count() -> None:
    assert steps_for(_example(0, [0], task="hotpotqa"), None) == 2
    assert steps_for(_example(0, [0], task="musique"), None) == 4
    assert steps_for(_example(0, [0], task="qa3"), None) == 4
    assert steps_for(_example(0, [0], task="hotpotqa"), 3) == 3
    method = FixedSelection([0, 1])
    short = Example(id="s", question="q?", chunks=["a.", "b."], support=[1])
    evaluate(method, [short], steps=5)
    assert method.calls == [2]


def test_evaluate_value_recall_reader_and_document_form() -> None:
    document = " ".join(CHUNKS)
    example = Example(
        id="d",
        question="Where is Mary?",
        document=document,
        answer="kitchen",
        supporting_facts=["Mary went back to the kitchen."],
        extra={"task": "qa1", "values": ["kitchen", "garden"]},
    )
    seen: list[list[str]] = []

    def reader(question: str, texts: Sequence[str]) -> str:
        seen.append(list(texts))
        return "The kitchen."

    result = evaluate(FixedSelection([4, 0]), [example], steps=2, reader=reader)
    assert result["fact_em"] == 1.0
    assert result["value_recall"] == 0.5
    assert result["answer_accuracy"] == 1.0
    assert seen == [[CHUNKS[0], CHUNKS[4]]]  # the reader sees the chunks in document order


def test_evaluate_rejects_examples_without_support_and_empty_input() -> None:
    with pytest.raises(InvalidInputError, match="no support"):
        evaluate(FixedSelection([0]), [Example(id="x", question="q?", chunks=["a."])])
    with pytest.raises(InvalidInputError, match="no examples"):
        evaluate(FixedSelection([0]), [])


def test_dense_baseline_ranks_identical_text_first_and_uses_cache(tiny_model) -> None:
    cache = EmbeddingCache()
    dense = DenseTopK(tiny_model, cache)
    example = Example(id="z", question=CHUNKS[3], chunks=list(CHUNKS), support=[3])
    result = evaluate(dense, [example], steps=1)
    assert result["fact_em"] == 1.0
    assert len(cache.get_many(tiny_model.action_encoder.fingerprint(), CHUNKS)) == len(CHUNKS)


def test_bm25_baseline_finds_the_rare_word() -> None:
    example = Example(id="b", question="What did the zebra eat?", chunks=list(CHUNKS), support=[1])
    assert evaluate(BM25TopK(), [example], steps=1)["fact_em"] == 1.0
    assert len(BM25TopK().select("zebra", [Chunk(t, i) for i, t in enumerate(CHUNKS)], 3)) == 3


def test_qrag_search_method_restores_training_mode(tiny_model) -> None:
    tiny_model.train()
    method = QRAGSearch(tiny_model, EmbeddingCache())
    result = evaluate(method, [_example(0, [0, 4])], steps=3)
    assert result["n"] == 1 and 0.0 <= result["fact_f1"] <= 1.0
    assert tiny_model.training


def test_make_method_rejects_unknown_names() -> None:
    with pytest.raises(InvalidInputError, match="unknown method"):
        make_method("tfidf")
    assert make_method("bm25").name == "bm25"
