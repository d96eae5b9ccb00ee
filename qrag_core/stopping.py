"""When to stop searching: how well the best Q-value predicts that all support is already found.

Q-RAG's search (arXiv 2511.07328) can stop when the best Q of the next step falls below a threshold:
the value estimates the return still to come, so once every supporting chunk is selected it should
drop. This module measures that on labelled examples:

1. :func:`trace_examples` runs greedy search (beam 1, no early stop) for T steps per example and
   records the best Q at each step and which chunk it took;
2. every step t ≥ 2 (a search keeps at least one chunk) is a stopping decision whose label is "all
   support was already found by steps 1..t−1"; :func:`roc_auc` of "best Q below a threshold" for that
   label is the separability of the two cases, whatever threshold is chosen;
3. :func:`best_threshold` finds the threshold whose stopped selections (stop before the first step
   t ≥ 2 whose best Q is below it) have the highest mean fact F1, next to fixed T = 1..steps.

The threshold is chosen on the examples it is scored on (an upper bound for a threshold chosen on
other data); the reports say so.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from qrag_core.data.examples import Example
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.metrics import aggregate, fact_scores, resolve_support
from qrag_core.model import QRAG
from qrag_core.search import search

logger = logging.getLogger(__name__)


@dataclass
class StepTrace:
    """The greedy search of one example: per step the chunk taken and its (the best) Q-value."""

    example_id: str
    facts: list[list[frozenset[int]]]
    """Each supporting fact as its occurrences (:meth:`~qrag_core.data.examples.Example.support_alternatives`):
    a fact repeated in the document is found when any one copy is selected."""
    chunks: list[int]
    """Chunk index taken at each step, in step order."""
    q_values: list[float]
    """Best Q at each step (the Q of the chunk taken)."""

    def found_before(self, step: int) -> bool:
        """Whether steps 1..``step``−1 had already found every supporting fact (``step`` is 1-based)."""
        selected = set(self.chunks[: step - 1])
        return all(any(occurrence <= selected for occurrence in fact) for fact in self.facts)

    def stopped(self, threshold: float) -> list[int]:
        """The chunks kept when the search stops before the first step t ≥ 2 whose best Q is below ``threshold``."""
        for t in range(2, len(self.chunks) + 1):
            if self.q_values[t - 1] < threshold:
                return self.chunks[: t - 1]
        return list(self.chunks)


def trace_examples(
    model: QRAG,
    examples: Iterable[Example],
    steps: int,
    cache: EmbeddingCache | None = None,
    show_progress: bool = False,
) -> list[StepTrace]:
    """Greedy search of ``steps`` steps (fewer when a document has fewer chunks) on each labelled example."""
    if steps < 2:
        raise InvalidInputError(f"stopping needs at least 2 steps to decide on, got {steps}")
    was_training = model.training
    model.eval()
    traces = []
    try:
        for example in tqdm(examples, desc="tracing search", unit="ex", disable=not show_progress):
            chunks = example.to_chunks()
            if not example.has_support:
                raise InvalidInputError(f"example {example.id} has no support labels")
            index = DocumentIndex.build(model, [chunks], cache=cache, ordered=example.ordered)
            result = search(
                model,
                example.question,
                index,
                k=min(steps, len(chunks)),
                beam=1,
                stop_threshold=-sys.float_info.max,  # finite (the search requires it) and below every Q
                alternatives=0,
            )
            traces.append(
                StepTrace(
                    example.id,
                    example.support_alternatives(chunks),
                    [index.chunks[s.chunk_index].index for s in result.trace],
                    [s.q_value for s in result.trace],
                )
            )
    finally:
        model.train(was_training)
    return traces


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive) for boolean ``labels``.

    The Mann–Whitney rank statistic: the probability that a random positive scores above a random
    negative, ties counting one half (tied scores get the mean of their ranks).
    """
    if len(scores) != len(labels):
        raise InvalidInputError(f"{len(scores)} scores but {len(labels)} labels")
    positives = sum(bool(label) for label in labels)
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        raise InvalidInputError(f"ROC AUC needs both classes, got {positives} positive and {negatives} negative")
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    ranks = [0.0] * len(scores)
    first = 0
    while first < len(order):
        last = first
        while last + 1 < len(order) and scores[order[last + 1]] == scores[order[first]]:
            last += 1
        mean_rank = (first + last) / 2 + 1  # ranks are 1-based
        for position in range(first, last + 1):
            ranks[order[position]] = mean_rank
        first = last + 1
    positive_ranks = sum(rank for rank, label in zip(ranks, labels, strict=True) if label)
    return (positive_ranks - positives * (positives + 1) / 2) / (positives * negatives)


def stop_decisions(traces: Sequence[StepTrace]) -> tuple[list[float], list[bool]]:
    """Best Q and label ("all support already found") of every step t ≥ 2 of every trace."""
    q_values, labels = [], []
    for trace in traces:
        for t in range(2, len(trace.chunks) + 1):
            q_values.append(trace.q_values[t - 1])
            labels.append(trace.found_before(t))
    return q_values, labels


def _scores(traces: Sequence[StepTrace], selections: Iterable[list[int]]) -> dict[str, float]:
    rows = []
    for trace, selected in zip(traces, selections, strict=True):
        facts = fact_scores(selected, resolve_support(selected, trace.facts))
        rows.append(
            {
                "fact_em": facts.em,
                "fact_recall": facts.recall,
                "fact_precision": facts.precision,
                "fact_f1": facts.f1,
                "chunks": float(len(selected)),
            }
        )
    return aggregate(rows)


def best_threshold(traces: Sequence[StepTrace]) -> dict[str, Any]:
    """The stop threshold with the highest mean fact F1 over ``traces``, with its scores.

    Candidates are every recorded best Q (stop when Q is below it) and +∞ (keep one chunk); no
    stopping at all is the lowest candidate's outcome or better. Ties go to the lower threshold.
    """
    q_values, _ = stop_decisions(traces)
    candidates = sorted({*q_values, math.inf})
    best: dict[str, Any] | None = None
    for threshold in candidates:
        scores = _scores(traces, (trace.stopped(threshold) for trace in traces))
        if best is None or scores["fact_f1"] > best["fact_f1"]:
            best = {**scores, "threshold": threshold}
    assert best is not None
    return best


def analyse_stopping(
    model: QRAG,
    examples: Iterable[Example],
    steps: int,
    cache: EmbeddingCache | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """ROC AUC of "best Q below a threshold" for "all support already found", best-threshold and fixed-T scores.

    Returns ``n``, ``steps``, ``decisions`` (steps t ≥ 2 scored), ``positives`` (of them, all support
    found before), ``auc`` (None when one class is empty), ``best_threshold`` (its fact scores, the
    threshold and mean ``chunks`` kept) and ``fixed`` (the same scores taking exactly t chunks, per t).
    """
    traces = trace_examples(model, examples, steps, cache, show_progress)
    if not traces:
        raise InvalidInputError("no examples to analyse")
    q_values, labels = stop_decisions(traces)
    positives = sum(labels)
    auc = None
    if 0 < positives < len(labels):
        auc = roc_auc([-q for q in q_values], labels)  # a lower Q should mean "stop"
    longest = max(len(trace.chunks) for trace in traces)
    return {
        "n": len(traces),
        "steps": steps,
        "decisions": len(labels),
        "positives": positives,
        "auc": auc,
        "best_threshold": best_threshold(traces),
        "fixed": {str(t): _scores(traces, (trace.chunks[:t] for trace in traces)) for t in range(1, longest + 1)},
    }
