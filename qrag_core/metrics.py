"""Retrieval and answer metrics of the benchmarks (BENCHMARKS.md).

- Support facts (BabiLong, HotpotQA, MuSiQue; the paper's Table 2/3): with S the selected chunks and
  F* the support chunks, fact EM = [F* ⊆ S], fact recall = |S ∩ F*| / |F*|, fact precision =
  |S ∩ F*| / |S| and fact F1 their harmonic mean. A fact that occurs several times in a document is
  found by selecting any one occurrence: :func:`resolve_support` takes, for each fact, the
  occurrence the selection covers best, and F* is the union of those.
- RULER NIAH: value recall, the fraction of the needle values that appear in the selected chunks.
- BabiLong answer accuracy (when a reader model produces an answer): BabiLong's label rule. The
  reader's first sentence is searched for the task's answer labels; labels named in the question
  never count; the answer is right when the target is the only label left.

Scores of single examples are averaged with :func:`aggregate`.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

BABILONG_LABELS: dict[str, frozenset[str]] = {
    "qa1": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa2": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa3": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa4": frozenset({"bathroom", "bedroom", "garden", "hallway", "kitchen", "office"}),
    "qa5": frozenset({"bill", "fred", "jeff", "mary", "apple", "football", "milk"}),
}
"""The answer labels of each BabiLong task, as BabiLong's evaluation defines them."""


@dataclass(frozen=True)
class FactScores:
    """Support-fact scores of one example."""

    em: float
    recall: float
    precision: float
    f1: float


def fact_scores(selected: Collection[int], support: Collection[int]) -> FactScores:
    """EM, recall, precision and F1 of selected chunk indices against the support indices."""
    chosen, gold = set(selected), set(support)
    if not gold:
        raise ValueError("fact scores need at least one support index")
    hits = len(chosen & gold)
    recall = hits / len(gold)
    precision = hits / len(chosen) if chosen else 0.0
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return FactScores(em=float(gold <= chosen), recall=recall, precision=precision, f1=f1)


def resolve_support(selected: Collection[int], facts: Iterable[Sequence[Collection[int]]]) -> set[int]:
    """F* for a selection: per fact (its occurrences, each a set of chunk indices), the occurrence with the
    largest selected fraction (ties: the first), all joined."""
    chosen = set(selected)
    gold: set[int] = set()
    for occurrences in facts:
        if not occurrences or not all(occurrences):
            raise ValueError("every supporting fact needs at least one occurrence of at least one chunk")
        gold |= set(max(occurrences, key=lambda chunks: len(chosen.intersection(chunks)) / len(chunks)))
    return gold


def fact_em(selected: Collection[int], support: Collection[int]) -> float:
    return fact_scores(selected, support).em


def fact_recall(selected: Collection[int], support: Collection[int]) -> float:
    return fact_scores(selected, support).recall


def fact_f1(selected: Collection[int], support: Collection[int]) -> float:
    return fact_scores(selected, support).f1


def value_recall(selected_texts: Iterable[str], values: Sequence[str]) -> float:
    """Fraction of ``values`` found (as substrings) in the selected chunk texts (RULER NIAH)."""
    if not values:
        raise ValueError("value recall needs at least one expected value")
    text = "\n".join(selected_texts)
    return sum(value in text for value in values) / len(values)


def babilong_answer_correct(target: str, output: str, question: str, labels: Iterable[str]) -> bool:
    """BabiLong's label rule: the target must be the only task label in the output's first sentence.

    The output is lower-cased and cut at its first full stop (and at any ``<context>``/``<example>``
    tag a reader may echo); labels that appear in the question are ignored.
    """
    first = output.lower().split(".")[0].split("<context>")[0].split("<example>")[0]
    lowered = {label.lower() for label in labels}
    in_question = {label for label in lowered if label in question.lower()}
    in_output = {label for label in lowered if label in first} - in_question
    return in_output == {target.lower()}


def answer_correct(target: str, output: str, question: str, task: str | None = None) -> bool:
    """BabiLong's label rule for QA1–5; otherwise the normalised target must occur in the output."""
    if task in BABILONG_LABELS:
        return babilong_answer_correct(target, output, question, BABILONG_LABELS[task])
    return " ".join(target.lower().split()) in " ".join(output.lower().split())


def aggregate(rows: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Mean of every metric over rows (each row a dict of metric → score); adds ``n``."""
    totals: dict[str, float] = {}
    counts: dict[str, int] = {}
    n = 0
    for row in rows:
        n += 1
        for key, value in row.items():
            totals[key] = totals.get(key, 0.0) + float(value)
            counts[key] = counts.get(key, 0) + 1
    return {"n": n, **{key: totals[key] / counts[key] for key in totals}}
