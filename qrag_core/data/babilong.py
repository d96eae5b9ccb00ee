"""BabiLong samples (Kuratov et al. 2024): bAbI facts hidden in long book text.

For one bAbI question (see :mod:`qrag_core.data.babi`), the whole story up to the question is kept;
its statements are scattered, in order, among consecutive sentences of a haystack novel taken from a
random start of a random book (:mod:`qrag_core.data.haystack`), until the sample reaches the target
length in base-tokenizer tokens. One sentence is one chunk, so the sample is written in the
``chunks`` + ``support`` form (docs/data-format.md) with the exact indices of the supporting facts, plus the
fields ``task``, ``length`` (the target label, e.g. ``"4k"``), ``tokens`` (the actual count),
``split`` and ``source`` (``file:line`` of the bAbI question).

Training samples can carry hard distractors (``distractors`` > 0): haystack sentences that mention a word
of the question or of a supporting fact ("milk", "Mary", "garden"), placed among the others. A random
1k-token run of novel text rarely mentions the question's object, but a 1M-token one does dozens of
times, and a retriever that only learned "pick the sentence about the milk" then picks the novel's.

Lengths: ``"0k"`` is the story alone; otherwise ``k`` = 1024 tokens and ``M`` = 1024 k. The total
(facts + haystack) never exceeds the target and falls short of it by at most 1%: near the end, a
haystack sentence that would overshoot is passed over for the next one that fits.

Test samples come in two draws. The ``"official"`` draw is the 100 per task listed in
``babilong/test_100_idxs.json`` (indices into the test file's questions in file order). The ``"other"``
draw is a second, independent check: the task's remaining test questions (never one of the 100), in
a random order picked by the seed, with ids ``babilong-<task>-test-other-<length>-<index>`` and
``extra["draw"] == "other"``. Training samples are drawn from the train split (one draw). Every sample
has its own random generator seeded by (seed, task, split, draw, length, question index), so the same
seed gives the same file, sample ``i`` does not depend on how many samples are built, and a question
of the other draw sits at other haystack positions than it would in the official one. The official
draw's key leaves the draw out, so its samples are the ones built before the other draw existed.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from qrag_core.chunking import Tokenizer
from qrag_core.data.babi import SPLITS, BabiSample, babi_samples
from qrag_core.data.examples import Example
from qrag_core.data.haystack import Haystack, count_tokens, fill_to_budget, scatter_in_order
from qrag_core.data.paths import data_file
from qrag_core.errors import InvalidInputError
from qrag_core.text_files import read_json_file

logger = logging.getLogger(__name__)

BABILONG_TASKS = ("qa1", "qa2", "qa3", "qa4", "qa5")
DRAWS = ("official", "other")
"""Test draws: the 100 listed questions per task, or the task's other test questions."""
STANDARD_LENGTHS = ("0k", "1k", "4k", "16k", "32k", "128k", "1M", "10M")
LENGTH_TOLERANCE = 0.01
"""A sample's tokens lie in [target · (1 − tolerance), target]."""

DISTRACTOR_MAX_TOKENS = 64
"""Longest hard distractor in tokens (the default ``max_chunk_tokens``, so no distractor is cut)."""
_WORD = re.compile(r"[A-Za-z]+")
_FUNCTION_WORDS = frozenset("a an the to of in on into is was are where what who whom which there back".split())

_LENGTH = re.compile(r"^(\d+)([kKmM]?)$")
_UNITS = {"": 1, "k": 1024, "m": 1024 * 1024}


def parse_length(length: int | str) -> int:
    """Target tokens of a length: an integer, or a label such as ``"4k"`` or ``"1M"``."""
    if isinstance(length, int) and not isinstance(length, bool):
        value = length
    else:
        match = _LENGTH.match(str(length).strip())
        if not match:
            raise InvalidInputError(f"bad length {length!r}: use a number of tokens or a label like 0k, 4k, 128k, 1M")
        value = int(match.group(1)) * _UNITS[match.group(2).lower()]
    if value < 0:
        raise InvalidInputError(f"length must not be negative, got {length!r}")
    return value


def length_label(length: int | str) -> str:
    """The label of a length (``4096`` → ``"4k"``); counts that are no whole k or M stay numbers."""
    tokens = parse_length(length)
    if tokens == 0:
        return "0k"
    for suffix, unit in (("M", _UNITS["m"]), ("k", _UNITS["k"])):
        if tokens % unit == 0:
            return f"{tokens // unit}{suffix}"
    return str(tokens)


@lru_cache(maxsize=1)
def _test_index_table() -> dict[str, list[int]]:
    return read_json_file(data_file("babilong", "test_100_idxs.json"))


def babilong_test_indices(task: str) -> list[int]:
    """The BabiLong test questions of a task (indices into its test file's questions)."""
    table = _test_index_table()
    if task not in table:
        raise InvalidInputError(
            f"babilong/test_100_idxs.json lists no test samples for {task!r}; it has {sorted(table)}"
        )
    return list(table[task])


def _question_indices(task: str, split: str, draw: str, n: int | None, seed: int, available: int) -> list[int]:
    """The question indices of a draw, in sample order (the first ``n`` of them)."""
    if split == "test" and draw == "official":
        chosen = babilong_test_indices(task)
        return chosen if n is None else chosen[:n]
    if split == "test":
        official = set(babilong_test_indices(task))
        order = [i for i in range(available) if i not in official]
        key = f"babilong-test-other-order:{seed}:{task}"
    else:
        order = list(range(available))
        key = f"babilong-train-order:{seed}:{task}"
    random.Random(key).shuffle(order)
    return order if n is None else order[:n]


def topic_words(sample: BabiSample) -> list[str]:
    """The content words of the question and its supporting facts, lower-cased, in order of first use."""
    texts = [sample.question, *(sample.story[i] for i in sample.support)]
    words = (w.lower() for text in texts for w in _WORD.findall(text))
    return list(dict.fromkeys(w for w in words if w not in _FUNCTION_WORDS))


def make_sample(
    sample: BabiSample,
    target: int,
    haystack: Haystack | None,
    rng: random.Random,
    tokenizer: Tokenizer | None = None,
    distractors: int = 0,
) -> tuple[list[str], list[int], int] | None:
    """Chunks, support indices and token count of one sample; None when the story alone is too long.

    ``distractors`` haystack sentences that mention a :func:`topic_words` word are placed at random among
    the ordinary haystack sentences (as many as fit the budget).
    """
    story_tokens = sum(count_tokens(sample.story, tokenizer))
    if target == 0:
        return list(sample.story), sorted(set(sample.support)), story_tokens
    if story_tokens > target:
        return None
    assert haystack is not None, "a haystack is needed for lengths above 0k"
    hard: list[str] = []
    hard_tokens = 0
    if distractors > 0:
        for text, tokens in haystack.topical(topic_words(sample), distractors, rng, DISTRACTOR_MAX_TOKENS):
            if story_tokens + hard_tokens + tokens <= target:
                hard.append(text)
                hard_tokens += tokens
    background, noise_tokens = fill_to_budget(
        haystack.stream(rng), target - story_tokens - hard_tokens, int(target * LENGTH_TOLERANCE)
    )
    if hard:
        background, _ = scatter_in_order(background, hard, rng)
    chunks, fact_positions = scatter_in_order(background, sample.story, rng)
    support = sorted({fact_positions[i] for i in sample.support})
    return chunks, support, story_tokens + hard_tokens + noise_tokens


def iter_babilong(
    task: str,
    split: str,
    length: int | str,
    n: int | None = None,
    seed: int = 0,
    haystack: Haystack | None = None,
    tokenizer: Tokenizer | None = None,
    distractors: int = 0,
    draw: str = "official",
) -> Iterator[Example]:
    """BabiLong examples one at a time (a 10M-token sample is built as a list of sentences, never a string).

    ``n`` limits the count: the first ``n`` of the 100 test samples, or ``n`` random training questions
    (all of them, shuffled, when None). ``haystack`` and ``tokenizer`` default to the novels and the
    base tokenizer. ``distractors`` adds that many hard distractors per sample (see :func:`make_sample`).
    ``draw="other"`` (test split only) draws ``n`` random test questions outside the 100 instead (all of
    them when None), the seed picking both the questions and their haystack positions.
    """
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; use one of {SPLITS}")
    if draw not in DRAWS:
        raise InvalidInputError(f"unknown draw {draw!r}; use one of {DRAWS}")
    if draw == "other" and split != "test":
        raise InvalidInputError(
            f"the 'other' draw picks test questions outside babilong/test_100_idxs.json; the {split} split has "
            "a single draw (use draw='official')"
        )
    if n is not None and n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    if distractors < 0:
        raise InvalidInputError(f"distractors must not be negative, got {distractors}")
    target = parse_length(length)
    label = length_label(target)
    samples = babi_samples(task, split)
    if target > 0 and haystack is None:
        haystack = Haystack.load(tokenizer)
    skipped = 0
    # The split and, for the other draw, the draw, as sample ids and random keys write it: the official
    # draw's keys are those of before the other draw existed, so its samples (and caches of them) stay valid.
    part = split if draw == "official" else f"{split}-{draw}"
    for index in _question_indices(task, split, draw, n, seed, len(samples)):
        if not 0 <= index < len(samples):
            raise InvalidInputError(f"{task} {split}: question index {index} outside 0..{len(samples) - 1}")
        sample = samples[index]
        rng = random.Random(f"babilong:{seed}:{task}:{part}:{target}:{index}")
        built = make_sample(sample, target, haystack, rng, tokenizer, distractors)
        if built is None:
            skipped += 1
            continue
        chunks, support, tokens = built
        extra = {"task": task, "length": label, "tokens": tokens, "split": split, "source": sample.source}
        if distractors and target > 0:
            extra["distractors"] = distractors
        if draw != "official":
            extra["draw"] = draw
        yield Example(
            id=f"babilong-{task}-{part}-{label}-{index}",
            question=sample.question,
            chunks=chunks,
            support=support,
            answer=sample.answer,
            extra=extra,
        )
    if skipped:
        logger.warning(
            "%s %s %s: skipped %d questions whose story alone is longer than the target", task, split, label, skipped
        )


def build_babilong(*args: Any, **kwargs: Any) -> list[Example]:
    """All examples of :func:`iter_babilong` (same arguments) as a list."""
    return list(iter_babilong(*args, **kwargs))
