"""Retrieval and answer metrics on hand-made cases."""

from __future__ import annotations

import pytest

from qrag_core.metrics import (
    BABILONG_LABELS,
    aggregate,
    answer_correct,
    babilong_answer_correct,
    fact_em,
    fact_f1,
    fact_recall,
    fact_scores,
    value_recall,
)


def test_fact_scores_all_found_with_one_extra() -> None:
    scores = fact_scores(selected=[3, 7, 9], support=[3, 7])
    assert scores.em == 1.0
    assert scores.recall == 1.0
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.f1 == pytest.approx(0.8)


def test_fact_scores_partial_and_missing() -> None:
    assert fact_em([1, 2], [2, 5]) == 0.0
    assert fact_recall([1, 2], [2, 5]) == 0.5
    assert fact_f1([1, 2], [2, 5]) == pytest.approx(0.5)
    assert fact_scores([], [4]).f1 == 0.0
    assert fact_scores([0, 1], [4]).precision == 0.0


def test_fact_scores_ignore_duplicates_and_order() -> None:
    assert fact_scores([7, 3, 3], [3, 7]) == fact_scores([3, 7], [7, 3])


def test_fact_scores_need_support() -> None:
    with pytest.raises(ValueError, match="support"):
        fact_scores([1], [])


def test_value_recall_counts_values_in_selected_texts() -> None:
    texts = ["One of the special magic numbers for alpha is: 1234567.", "The sky is blue."]
    assert value_recall(texts, ["1234567"]) == 1.0
    assert value_recall(texts, ["1234567", "7654321"]) == 0.5
    assert value_recall([], ["1"]) == 0.0


def test_babilong_label_rule() -> None:
    labels = BABILONG_LABELS["qa1"]
    assert babilong_answer_correct("kitchen", "The kitchen.", "Where is Mary?", labels)
    assert babilong_answer_correct("Kitchen", "kitchen", "Where is Mary?", labels)
    # Two labels in the answer: ambiguous, wrong.
    assert not babilong_answer_correct("kitchen", "kitchen or garden", "Where is Mary?", labels)
    # Only the first sentence counts.
    assert not babilong_answer_correct("kitchen", "In the garden. Not the kitchen.", "Where is Mary?", labels)
    # Labels that appear in the question are ignored.
    assert babilong_answer_correct(
        "office", "She was in the kitchen, then the office", "Where was Mary before the kitchen?", labels
    )
    assert not babilong_answer_correct("kitchen", "the kitchen", "Where was Mary before the kitchen?", labels)


def test_answer_correct_uses_labels_only_for_babilong_tasks() -> None:
    assert answer_correct("milk", "Fred gave the milk", "What did Fred give to Jeff?", "qa5")
    assert not answer_correct("milk", "milk and apple", "What did Fred give to Jeff?", "qa5")
    assert answer_correct("Arthur's Magazine", "It was arthur's   magazine.", "Which came first?", "hotpotqa")
    assert not answer_correct("Paris", "London", "Capital?", None)


def test_aggregate_means_and_count() -> None:
    result = aggregate([{"fact_em": 1.0, "fact_f1": 0.5}, {"fact_em": 0.0, "fact_f1": 1.0}])
    assert result == {"n": 2, "fact_em": 0.5, "fact_f1": 0.75}
    assert aggregate([]) == {"n": 0}
