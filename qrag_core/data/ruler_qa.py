"""RULER-style long-context QA over real text (Hsieh et al. 2024, its ``qa_2`` task): HotpotQA in a haystack.

Each sample is one HotpotQA **test** question (the 297-question dev subset of
:mod:`qrag_core.data.hotpotqa`) whose gold paragraphs are hidden among other Wikipedia paragraphs, up to
a target length in base-tokenizer tokens. As in RULER, the question's own distractor paragraphs come
first, then paragraphs of the other test questions (each Wikipedia title once, none with the title of
one of the question's own paragraphs, so every gold paragraph is present exactly once); all paragraphs
are shuffled together (seeded), so the gold ones land in random order at random positions. When the
other questions' paragraphs run out before the target (the 297 questions hold about 360k tokens of
distinct paragraphs), consecutive sentences of the haystack novels (:mod:`qrag_core.data.haystack`,
one sentence per chunk, as BabiLong is built) fill the rest, the paragraphs scattered among them at
random places.

Chunks are the paragraphs (``"Title: text"``, as in the HotpotQA rows) and the novel sentences;
``support`` holds the gold paragraphs' chunk indices. A sample is a passage collection (``ordered`` false,
positions off), as HotpotQA's own rows are: its paragraphs come in random order. Lengths and token
counting are as for BabiLong (:mod:`qrag_core.data.babilong`): a sample's tokens, the sum of its chunks'
counts, lie within 1 % below the target. Rows carry ``task`` (``qa_hotpotqa``), ``length``, ``tokens``, ``haystack``
(``paragraphs`` or ``paragraphs+novel``), ``source_id`` (the HotpotQA ``_id``) and ``type``.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qrag_core.chunking import Tokenizer
from qrag_core.data.babilong import LENGTH_TOLERANCE
from qrag_core.data.examples import Example
from qrag_core.data.haystack import Haystack, count_tokens, fill_to_budget, scatter_in_order
from qrag_core.data.hotpotqa import HOTPOTQA_FILE, hotpot_example, read_hotpot_records
from qrag_core.data.paths import data_file
from qrag_core.data.ruler import check_request
from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

QA_TASKS = ("qa_hotpotqa",)
"""The RULER QA tasks built here."""


@dataclass(frozen=True)
class PoolQuestion:
    """One HotpotQA question with the title and token count of each of its paragraphs."""

    example: Example
    titles: tuple[str, ...]
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class ParagraphPool:
    """The HotpotQA questions and their distinct paragraphs (the haystack of the QA samples)."""

    questions: list[PoolQuestion]
    paragraphs: list[tuple[str, str, int]]
    """(title, chunk text, tokens) of each Wikipedia title's first paragraph, in file order."""

    @classmethod
    def load(cls, path: str | Path | None = None, tokenizer: Tokenizer | None = None) -> ParagraphPool:
        """The questions of a HotpotQA file (default: the test subset) with their token counts."""
        path = Path(path) if path is not None else data_file(*HOTPOTQA_FILE)
        records = read_hotpot_records(path)
        examples = [hotpot_example(record, f"{path} (record {i})") for i, record in enumerate(records)]
        counts = iter(count_tokens([chunk for e in examples for chunk in e.chunks or []], tokenizer))
        questions = []
        paragraphs: dict[str, tuple[str, str, int]] = {}
        for example, record in zip(examples, records, strict=True):
            titles = tuple(str(title) for title, _ in record["context"])
            tokens = tuple(next(counts) for _ in titles)
            questions.append(PoolQuestion(example, titles, tokens))
            for title, text, count in zip(titles, example.chunks or [], tokens, strict=True):
                paragraphs.setdefault(title, (title, text, count))
        return cls(questions, list(paragraphs.values()))


def make_qa_sample(
    question: PoolQuestion, pool: ParagraphPool, target: int, rng: random.Random, haystack: Callable[[], Haystack]
) -> tuple[list[str], list[int], int, str]:
    """Chunks, support indices, token count and haystack kind of one sample (see the module docstring)."""
    example = question.example
    support = set(example.support or [])
    chunks = example.chunks or []
    gold = [(chunks[i], question.tokens[i]) for i in sorted(support)]
    gold_tokens = sum(tokens for _, tokens in gold)
    if gold_tokens > target:
        raise InvalidInputError(
            f"{example.id}: the gold paragraphs alone have {gold_tokens} tokens, more than {target}"
        )
    tolerance = int(target * LENGTH_TOLERANCE)
    own = [(chunks[i], question.tokens[i]) for i in range(len(chunks)) if i not in support]
    titles = set(question.titles)
    others = [(text, tokens) for title, text, tokens in pool.paragraphs if title not in titles]
    rng.shuffle(own)
    rng.shuffle(others)
    # After the last paragraph the stream yields empty items, which fill_to_budget passes over until it stops.
    stream = itertools.chain(own, others, itertools.repeat(("", 0)))
    taken, taken_tokens = fill_to_budget(stream, target - gold_tokens, tolerance)
    paragraphs = [(text, True) for text, _ in gold] + [(text, False) for text in taken]
    rng.shuffle(paragraphs)
    left = target - gold_tokens - taken_tokens
    novel, novel_tokens = fill_to_budget(haystack().stream(rng), left, tolerance) if left > tolerance else ([], 0)
    # With no novel sentences this keeps the shuffled paragraphs as they are.
    merged, positions = scatter_in_order(novel, [text for text, _ in paragraphs], rng)
    gold_at = [p for p, (_, is_gold) in zip(positions, paragraphs, strict=True) if is_gold]
    kind = "paragraphs+novel" if novel else "paragraphs"
    return merged, gold_at, gold_tokens + taken_tokens + novel_tokens, kind


def iter_ruler_qa(
    task: str,
    length: int | str,
    n: int = 100,
    seed: int = 0,
    haystack: Haystack | None = None,
    tokenizer: Tokenizer | None = None,
    path: str | Path | None = None,
) -> Iterator[Example]:
    """Samples of the first ``n`` HotpotQA test questions at a target length (see the module docstring).

    ``haystack`` supplies the novel filler (loaded only when the paragraphs run out); ``path`` reads
    another HotpotQA file instead of the test subset.
    """
    target, label = check_request("RULER QA", task, QA_TASKS, length, n)
    pool = ParagraphPool.load(path, tokenizer)
    if n > len(pool.questions):
        raise InvalidInputError(f"n={n} but there are only {len(pool.questions)} HotpotQA test questions")
    loaded: list[Haystack] = [haystack] if haystack is not None else []

    def novels() -> Haystack:
        if not loaded:
            loaded.append(Haystack.load(tokenizer))
        return loaded[0]

    for index, question in enumerate(pool.questions[:n]):
        rng = random.Random(f"ruler-qa:{seed}:{task}:{target}:{index}")
        chunks, support, tokens, kind = make_qa_sample(question, pool, target, rng, novels)
        source = question.example
        yield Example(
            id=f"ruler-{task}-{label}-{index}",
            question=source.question,
            chunks=chunks,
            support=sorted(support),
            answer=source.answer,
            ordered=False,
            extra={
                "task": task,
                "length": label,
                "tokens": tokens,
                "haystack": kind,
                "source_id": source.id,
                "type": source.extra.get("type"),
            },
        )


def build_ruler_qa(*args: Any, **kwargs: Any) -> list[Example]:
    """All examples of :func:`iter_ruler_qa` (same arguments) as a list."""
    return list(iter_ruler_qa(*args, **kwargs))
