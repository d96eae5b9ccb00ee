"""RULER needle-in-a-haystack tasks (Hsieh et al. 2024), one sentence per chunk.

A needle is the sentence "One of the special magic {numbers|words|uuids} for {key} is: {value}."
hidden at a random depth of a haystack; the question asks for the value(s) of one or more keys.
The eight variants of RULER's ``synthetic.yaml``:

============== ========= ====== ======== ========================================
task           haystack  keys   values   needles
============== ========= ====== ======== ========================================
niah_single_1  noise     words  numbers  1
niah_single_2  essay     words  numbers  1
niah_single_3  essay     words  uuids    1
niah_multikey_1 essay    words  numbers  4 keys, one asked
niah_multikey_2 needle   words  numbers  1 (the haystack is other keys' needles)
niah_multikey_3 needle   uuids  uuids    1 (the haystack is other keys' needles)
niah_multivalue essay    words  numbers  4 values of one key, all asked
niah_multiquery essay    words  numbers  4 keys, all asked
============== ========= ====== ======== ========================================

Haystacks: ``noise`` repeats "The grass is green. The sky is blue. ..."; ``essay`` is consecutive
sentences of the haystack novels (the stand-in for the Paul Graham essays); ``needle`` is needles of
other keys. Word keys are two random words of the novels joined by a hyphen (RULER: adjective-noun),
word values one word, numbers seven digits, uuids random version-4 UUIDs.

Rows carry ``support`` (the asked needles' chunk indices), ``answer`` (the values joined by ", ") and
the fields ``task``, ``length``, ``tokens``, ``haystack`` and ``values`` (for NIAH value recall).
Lengths and token counting are as for BabiLong (:mod:`qrag_core.data.babilong`).
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from qrag_core.chunking import Tokenizer
from qrag_core.data.babilong import LENGTH_TOLERANCE, length_label, parse_length
from qrag_core.data.examples import Example
from qrag_core.data.haystack import Haystack, count_tokens, fill_to_budget, scatter_in_order
from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

NEEDLE_TEMPLATE = "One of the special magic {kind} for {key} is: {value}."
QUESTION_TEMPLATE = "What are all the special magic {kind} for {query} mentioned in the provided text?"
NOISE_SENTENCES = (
    "The grass is green.",
    "The sky is blue.",
    "The sun is yellow.",
    "Here we go.",
    "There and back again.",
)
_WORD = re.compile(r"\b[a-z]{4,10}\b")


@dataclass(frozen=True)
class NiahTask:
    """One RULER NIAH variant."""

    haystack: str
    """``noise``, ``essay`` or ``needle``."""
    keys: str
    """Kind of key: ``words`` or ``uuids``."""
    values: str
    """Kind of value: ``numbers``, ``words`` or ``uuids``."""
    num_keys: int = 1
    """Needles with distinct keys placed in the haystack."""
    num_values: int = 1
    """Values (needles) per key."""
    num_queries: int = 1
    """Keys asked for (out of ``num_keys``)."""


NIAH_TASKS: dict[str, NiahTask] = {
    "niah_single_1": NiahTask("noise", "words", "numbers"),
    "niah_single_2": NiahTask("essay", "words", "numbers"),
    "niah_single_3": NiahTask("essay", "words", "uuids"),
    "niah_multikey_1": NiahTask("essay", "words", "numbers", num_keys=4),
    "niah_multikey_2": NiahTask("needle", "words", "numbers"),
    "niah_multikey_3": NiahTask("needle", "uuids", "uuids"),
    "niah_multivalue": NiahTask("essay", "words", "numbers", num_values=4),
    "niah_multiquery": NiahTask("essay", "words", "numbers", num_keys=4, num_queries=4),
}


@lru_cache(maxsize=1)
def _vocabulary(haystack: Haystack) -> tuple[str, ...]:
    """Lower-case words of 4-10 letters of the novels, sorted (the word pool for keys and values)."""
    words = {w for sentence in haystack.all_sentences() for w in _WORD.findall(sentence)}
    return tuple(sorted(words))


class _Draw:
    """Random keys and values of each kind, never repeating one within a sample."""

    def __init__(self, rng: random.Random, vocabulary: tuple[str, ...]) -> None:
        self.rng = rng
        self.vocabulary = vocabulary
        self.used: set[str] = set()

    def _fresh(self, make: Callable[[], str]) -> str:
        while True:
            item = make()
            if item not in self.used:
                self.used.add(item)
                return item

    def __call__(self, kind: str, as_key: bool = False) -> str:
        if kind == "uuids":
            return self._fresh(lambda: str(uuid.UUID(int=self.rng.getrandbits(128), version=4)))
        if kind == "numbers":
            return self._fresh(lambda: str(self.rng.randrange(1_000_000, 10_000_000)))
        if as_key:
            return self._fresh(lambda: f"{self.rng.choice(self.vocabulary)}-{self.rng.choice(self.vocabulary)}")
        return self._fresh(lambda: self.rng.choice(self.vocabulary))


def _needle(kind: str, key: str, value: str) -> str:
    return NEEDLE_TEMPLATE.format(kind=kind, key=key, value=value)


def _background(
    spec: NiahTask, haystack: Haystack, draw: _Draw, tokenizer: Tokenizer | None
) -> Iterator[tuple[str, int]]:
    """Endless (sentence, tokens) pairs of the task's haystack kind."""
    if spec.haystack == "essay":
        return haystack.stream(draw.rng)
    if spec.haystack == "noise":
        counts = count_tokens(NOISE_SENTENCES, tokenizer)
        return itertools.cycle(zip(NOISE_SENTENCES, counts, strict=True))

    def needles() -> Iterator[tuple[str, int]]:
        while True:
            text = _needle(spec.values, draw(spec.keys, as_key=True), draw(spec.values))
            yield text, count_tokens([text], tokenizer)[0]

    return needles()


def make_niah_sample(
    task: str, target: int, haystack: Haystack, rng: random.Random, tokenizer: Tokenizer | None = None
) -> tuple[str, list[str], list[int], list[str], int]:
    """Question, chunks, support indices, asked values and token count of one NIAH sample."""
    spec = NIAH_TASKS[task]
    draw = _Draw(rng, _vocabulary(haystack))
    keys = [draw(spec.keys, as_key=True) for _ in range(spec.num_keys)]
    needles = [(key, draw(spec.values)) for key in keys for _ in range(spec.num_values)]
    asked = set(rng.sample(keys, spec.num_queries))
    rng.shuffle(needles)
    texts = [_needle(spec.values, key, value) for key, value in needles]
    needle_tokens = sum(count_tokens(texts, tokenizer))
    if needle_tokens > target:
        raise InvalidInputError(f"{task}: the needles alone have {needle_tokens} tokens, more than the target {target}")
    background, noise_tokens = fill_to_budget(
        _background(spec, haystack, draw, tokenizer), target - needle_tokens, int(target * LENGTH_TOLERANCE)
    )
    chunks, positions = scatter_in_order(background, texts, rng)
    support = [p for p, (key, _) in zip(positions, needles, strict=True) if key in asked]
    values = [value for key, value in needles if key in asked]
    asked_in_order = [key for key in keys if key in asked]
    query = (
        asked_in_order[0]
        if len(asked_in_order) == 1
        else ", ".join(asked_in_order[:-1]) + ", and " + asked_in_order[-1]
    )
    question = QUESTION_TEMPLATE.format(kind=spec.values, query=query)
    return question, chunks, support, values, needle_tokens + noise_tokens


def check_request(kind: str, task: str, tasks: Iterable[str], length: int | str, n: int) -> tuple[int, str]:
    """Target tokens and length label of a request for ``n`` samples of a RULER ``task`` (one of ``tasks``);
    InvalidInputError for an unknown task, a non-positive ``n`` or a zero length."""
    if task not in tasks:
        raise InvalidInputError(f"unknown {kind} task {task!r}; choose one of {', '.join(tasks)}")
    if n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    target = parse_length(length)
    if target == 0:
        raise InvalidInputError(f"a {kind} sample needs a positive length")
    return target, length_label(target)


def iter_niah(
    task: str,
    length: int | str,
    n: int = 100,
    seed: int = 0,
    haystack: Haystack | None = None,
    tokenizer: Tokenizer | None = None,
) -> Iterator[Example]:
    """``n`` samples of a NIAH task at a target length (see the module docstring)."""
    target, label = check_request("NIAH", task, NIAH_TASKS, length, n)
    haystack = haystack or Haystack.load(tokenizer)
    for index in range(n):
        rng = random.Random(f"niah:{seed}:{task}:{target}:{index}")
        question, chunks, support, values, tokens = make_niah_sample(task, target, haystack, rng, tokenizer)
        yield Example(
            id=f"ruler-{task}-{label}-{index}",
            question=question,
            chunks=chunks,
            support=sorted(support),
            answer=", ".join(values),
            extra={
                "task": task,
                "length": label,
                "tokens": tokens,
                "haystack": NIAH_TASKS[task].haystack,
                "values": values,
            },
        )


def build_niah(*args: Any, **kwargs: Any) -> list[Example]:
    """All examples of :func:`iter_niah` (same arguments) as a list."""
    return list(iter_niah(*args, **kwargs))
