"""Stopping analysis: the ROC AUC rank statistic, stop decisions, thresholds, and agreement with the search."""

from __future__ import annotations

import dataclasses
import math

import pytest

from qrag_core.data.examples import Example
from qrag_core.errors import InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.search import search
from qrag_core.stopping import StepTrace, analyse_stopping, best_threshold, roc_auc, stop_decisions, trace_examples


def test_roc_auc_hand_computed_with_ties() -> None:
    # positives 0.9, 0.5; negatives 0.5, 0.1: pairs (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) ½, (0.5>0.1) 1 → 3.5 / 4
    assert roc_auc([0.9, 0.5, 0.5, 0.1], [True, True, False, False]) == pytest.approx(0.875)
    # positives 3, 1; negatives 2, 2, 0: 3 beats all (3), 1 beats 0 only (1) → 4 / 6
    assert roc_auc([2, 3, 2, 1, 0], [False, True, False, True, False]) == pytest.approx(4 / 6)
    assert roc_auc([1, 2, 3, 4], [False, False, True, True]) == 1.0
    assert roc_auc([1, 2, 3, 4], [True, True, False, False]) == 0.0
    assert roc_auc([5, 5, 5], [True, False, False]) == 0.5
    with pytest.raises(InvalidInputError, match="both classes"):
        roc_auc([1, 2], [True, True])
    with pytest.raises(InvalidInputError, match="2 scores but 1 labels"):
        roc_auc([1, 2], [True])


def one_copy(*support: int) -> list[list[frozenset[int]]]:
    """Supporting facts that occur once, one chunk each."""
    return [[frozenset({i})] for i in support]


def _traces() -> list[StepTrace]:
    return [
        StepTrace("a", one_copy(1, 2), [1, 2, 5, 6], [0.9, 0.8, 0.1, 0.05]),
        StepTrace("b", one_copy(3), [3, 4, 7, 8], [0.9, 0.2, 0.1, 0.1]),
    ]


def test_a_repeated_fact_is_found_by_either_copy() -> None:
    """Fact one in chunk 0 or 4, fact two in chunk 2: steps 1-2 found everything, as fact EM scores it."""
    trace = StepTrace("r", [[frozenset({0}), frozenset({4})], [frozenset({2})]], [4, 2, 0, 6], [0.9, 0.8, 0.1, 0.05])
    assert [trace.found_before(t) for t in (2, 3, 4)] == [False, True, True]
    best = best_threshold([trace])
    assert best["threshold"] == 0.8 and best["fact_em"] == 1.0 and best["fact_f1"] == 1.0


def test_stop_decisions_label_steps_after_all_support() -> None:
    q_values, labels = stop_decisions(_traces())
    assert q_values == [0.8, 0.1, 0.05, 0.2, 0.1, 0.1]
    assert labels == [False, True, True, True, True, True]
    a, b = _traces()
    assert [a.found_before(t) for t in (1, 2, 3, 4)] == [False, False, True, True]
    assert a.stopped(0.5) == [1, 2] and b.stopped(0.5) == [3]
    assert a.stopped(-math.inf) == [1, 2, 5, 6] and a.stopped(math.inf) == [1]


def test_best_threshold_is_the_lowest_with_the_best_f1() -> None:
    best = best_threshold(_traces())
    # 0.8 is the lowest candidate at which both searches stop right after their support (F1 1 each)
    assert best["threshold"] == 0.8
    assert best["fact_f1"] == 1.0 and best["fact_em"] == 1.0 and best["chunks"] == 1.5


def _examples() -> list[Example]:
    chunks = [
        "Mary moved to the bathroom.",
        "The clock struck nine.",
        "John went to the hallway.",
        "Mary picked up the milk.",
        "It rained all night.",
        "Sandra journeyed to the garden.",
    ]
    return [
        Example(id="x", question="Where is the milk?", chunks=chunks, support=[0, 3]),
        Example(id="y", question="Where is John?", chunks=chunks, support=[2]),
    ]


def test_trace_agrees_with_search_and_its_stop_threshold(tiny_model) -> None:
    examples = _examples()
    traces = trace_examples(tiny_model, examples, steps=4)
    for example, trace in zip(examples, traces, strict=True):
        assert len(trace.chunks) == 4 == len(set(trace.chunks))
        index = DocumentIndex.build(tiny_model, [example.chunks])
        for threshold in sorted(trace.q_values[1:]) + [1e30]:  # 1e30: stop after one chunk (search takes finite ones)
            result = search(tiny_model, example.question, index, k=4, beam=1, stop_threshold=threshold)
            assert [s.chunk_index for s in result.trace] == trace.stopped(threshold)
    report = analyse_stopping(tiny_model, examples, steps=4)
    assert report["n"] == 2 and report["decisions"] == 6
    assert report["fixed"]["4"]["chunks"] == 4.0
    # +inf keeps one chunk and the lowest candidate keeps all four: the best threshold is at least as good
    assert report["best_threshold"]["fact_f1"] >= max(report["fixed"][t]["fact_f1"] for t in ("1", "4"))
    assert report["auc"] is None or 0.0 <= report["auc"] <= 1.0
    with pytest.raises(InvalidInputError, match="at least 2 steps"):
        trace_examples(tiny_model, examples, steps=1)


def test_a_passage_collection_is_traced_with_positions_off(tiny_model) -> None:
    example = dataclasses.replace(_examples()[0], ordered=False)
    trace = trace_examples(tiny_model, [example], steps=4)[0]
    for ordered in (False, True):
        index = DocumentIndex.build(tiny_model, [example.chunks], ordered=ordered)
        result = search(tiny_model, example.question, index, k=4, beam=1)
        same = [s.q_value for s in result.trace] == pytest.approx(trace.q_values)
        assert same is not ordered  # the collection's Q-values, not those of an ordered document
