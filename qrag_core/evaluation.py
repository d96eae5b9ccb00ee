"""One evaluation loop for ``qrag-eval``, the benchmarks and the trainer's periodic evaluation.

For each example, a retrieval method of :mod:`qrag_core.baselines` (a Q-RAG model's multi-step
search, or a baseline) selects up to T chunks of the example's document; the selection is scored
against the example's support chunks (fact EM / recall / precision / F1, :mod:`qrag_core.metrics`),
against its needle values when it has them (RULER NIAH value recall), and, when a reader is given,
by the accuracy of the reader's answer from the selected chunks (BabiLong's label rule for QA1–5).
The methods index documents through the shared embedding cache, so a haystack sentence is
encoded once per machine, whichever benchmark or model needs it.

The result is a plain dict: ``n``, ``fact_em``, ``fact_recall``, ``fact_precision``, ``fact_f1``,
``value_recall`` and ``answer_accuracy`` where measured, ``seconds`` (wall time), ``method``,
``steps``, ``per_task`` (the same scores per ``task`` field, when the rows carry one) and ``per_type``
(per question type: HotpotQA's ``type``, bridge or comparison; MuSiQue's ``hops``, 2hop to 4hop).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from tqdm.auto import tqdm

from qrag_core.chunking import Chunk, Tokenizer
from qrag_core.config import ChunkingConfig
from qrag_core.data.examples import Example
from qrag_core.errors import InvalidInputError
from qrag_core.metrics import aggregate, answer_correct, fact_scores, resolve_support, value_recall
from qrag_core.validation import check_positive_int

logger = logging.getLogger(__name__)

DEFAULT_STEPS = 4
"""T when neither the caller nor the task says otherwise (BabiLong / RULER use 4–6)."""
TASK_STEPS = {"hotpotqa": 2, "musique": 4, "qa_hotpotqa": 2}
"""T by ``task`` field for the open-domain sets (HotpotQA 2, MuSiQue 4; HotpotQA in a haystack 2)."""

Reader = Callable[[str, Sequence[str]], str]
"""Answers a question from the selected chunk texts (in document order); used for answer accuracy."""


class RetrievalMethod(Protocol):
    """Something that picks chunks of one document for a question."""

    name: str

    def select(self, question: str, chunks: Sequence[Chunk], steps: int, ordered: bool = True) -> list[int]:
        """Indices into ``chunks`` of at most ``steps`` selected chunks.

        ``ordered`` is False when the chunks are a collection of independent passages, not one document.
        """
        ...


def steps_for(example: Example, steps: int | None) -> int:
    """T for one example: the given value, else the task's default, else :data:`DEFAULT_STEPS`."""
    if steps is not None:
        return steps
    return TASK_STEPS.get(str(example.extra.get("task", "")), DEFAULT_STEPS)


def score_example(
    example: Example,
    method: RetrievalMethod,
    steps: int | None = None,
    chunking: ChunkingConfig | None = None,
    tokenizer: Tokenizer | None = None,
    reader: Reader | None = None,
) -> dict[str, float]:
    """Retrieve for one example and score the selection (see the module docstring)."""
    chunks = example.to_chunks(chunking, tokenizer)
    if not example.has_support:
        raise InvalidInputError(f"example {example.id} has no support labels ('support' or 'supporting_facts')")
    support = example.support_alternatives(chunks)
    t = min(steps_for(example, steps), len(chunks))
    selected = method.select(example.question, chunks, t, ordered=example.ordered)
    facts = fact_scores(selected, resolve_support(selected, support))
    row = {"fact_em": facts.em, "fact_recall": facts.recall, "fact_precision": facts.precision, "fact_f1": facts.f1}
    texts = [chunks[i].text for i in sorted(selected)]
    values = example.extra.get("values")
    if values:
        row["value_recall"] = value_recall(texts, [str(v) for v in values])
    if reader is not None and example.answer is not None:
        output = reader(example.question, texts)
        task = example.extra.get("task")
        row["answer_accuracy"] = float(answer_correct(example.answer, output, example.question, task))
    return row


def evaluate(
    method: RetrievalMethod,
    examples: Iterable[Example],
    steps: int | None = None,
    chunking: ChunkingConfig | None = None,
    tokenizer: Tokenizer | None = None,
    reader: Reader | None = None,
    show_progress: bool = False,
) -> dict[str, Any]:
    """Scores of ``method`` on ``examples``: overall means, ``seconds`` and ``per_task`` means.

    ``steps`` is T for every example (None: per task, see :func:`steps_for`); ``chunking`` and
    ``tokenizer`` split examples given as raw documents (default: sentences; the tokenizer cuts
    over-long ones); ``reader`` enables answer accuracy.
    """
    check_positive_int("steps", steps, allow_none=True)
    start = time.perf_counter()
    rows: list[dict[str, float]] = []
    groups: dict[str, list[str | None]] = {"per_task": [], "per_type": []}
    for example in tqdm(examples, desc=f"evaluating {method.name}", unit="ex", disable=not show_progress):
        rows.append(score_example(example, method, steps, chunking, tokenizer, reader))
        for key, value in (("per_task", example.extra.get("task")), ("per_type", question_type(example))):
            groups[key].append(None if value is None else str(value))
    if not rows:
        raise InvalidInputError("no examples to evaluate")
    result: dict[str, Any] = aggregate(rows)
    result["seconds"] = time.perf_counter() - start
    result["method"] = method.name
    result["steps"] = steps
    for key, labels in groups.items():
        names = sorted({label for label in labels if label is not None})
        if names:
            result[key] = {
                name: aggregate(row for row, label in zip(rows, labels, strict=True) if label == name) for name in names
            }
    return result


QUESTION_TYPE_FIELDS = ("type", "hops")
"""Example fields that name a question's type, first found wins (HotpotQA ``type``, MuSiQue ``hops``)."""


def question_type(example: Example) -> str | None:
    """The question's type (e.g. ``bridge``, ``comparison``, ``3hop``), or None when the row names none."""
    for field in QUESTION_TYPE_FIELDS:
        if example.extra.get(field) is not None:
            return str(example.extra[field])
    return None
