"""Parsing the bAbI QA tasks (Weston et al. 2015) into single-question samples, as BabiLong does.

A bAbI file holds stories of numbered lines; the numbering restarts at 1 with each story. A question
line is ``ID question<TAB>answer<TAB>supporting fact IDs``. Every question becomes one sample whose
context is the whole story up to that question, without the earlier question lines (BabiLong's
``get_dataset_df``), and whose support indices point into that context. Sample ``i`` of a file is
its ``i``-th question in file order, the reading under which ``babilong/test_100_idxs.json`` indexes
the test files (see ``shared/data/README.md``).

Splits: ``test`` is the en-10k test file (identical to the 1k one); ``train`` is the en-10k train
file, except for QA3 whose en-10k train file is missing from the shared data: there it is the 1k
train file plus the official ``en-valid-10k/qa3_valid.txt``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from qrag_core.data.paths import DataNotFoundError, data_file
from qrag_core.errors import DataFormatError, InvalidInputError
from qrag_core.text_files import iter_text_lines

logger = logging.getLogger(__name__)

SPLITS = ("train", "test")


@dataclass(frozen=True)
class BabiSample:
    """One bAbI question with the story that precedes it."""

    story: tuple[str, ...]
    """The story's statements up to the question, in order (earlier questions removed)."""
    question: str
    answer: str
    support: tuple[int, ...]
    """Indices into ``story`` of the supporting facts, in the order the file lists them."""
    source: str
    """``file:line`` of the question, for tracing a sample back to the data."""


def parse_babi_file(path: str | Path) -> list[BabiSample]:
    """All questions of one bAbI file, each with its story context; DataFormatError on a bad line."""
    path = Path(path)
    samples: list[BabiSample] = []
    story: list[str] = []
    line_to_fact: dict[int, int] = {}
    expected_id = 1
    for number, raw in iter_text_lines(path):
        line = raw.rstrip("\r\n")
        if not line.strip():
            continue
        head, _, rest = line.partition(" ")
        if not (head.isascii() and head.isdigit()) or not rest:
            raise DataFormatError(str(path), number, "expected 'ID text' with a numeric ID")
        line_id = int(head)
        if line_id == 1:
            story, line_to_fact = [], {}
        elif line_id != expected_id:
            raise DataFormatError(str(path), number, f"line ID {line_id} does not follow {expected_id - 1}")
        expected_id = line_id + 1
        if "\t" not in rest:
            line_to_fact[line_id] = len(story)
            story.append(rest.strip())
            continue
        fields = rest.split("\t")
        if len(fields) != 3:
            raise DataFormatError(str(path), number, "a question line needs question<TAB>answer<TAB>fact IDs")
        question, answer, refs = (x.strip() for x in fields)
        try:
            support = tuple(line_to_fact[int(r)] for r in refs.split())
        except (KeyError, ValueError):
            support = ()
        if not support:
            raise DataFormatError(str(path), number, f"supporting fact IDs {refs!r} name no earlier fact")
        samples.append(BabiSample(tuple(story), question, answer, support, f"{path.name}:{number}"))
    return samples


def _task_number(task: str) -> int:
    if not (task.startswith("qa") and task[2:].isdigit() and 1 <= int(task[2:]) <= 20):
        raise InvalidInputError(f"unknown bAbI task {task!r}; use qa1 .. qa20")
    return int(task[2:])


def _task_file(folder: str, task: str, split: str) -> Path:
    number = _task_number(task)
    matches = sorted(data_file("babi", folder).glob(f"qa{number}_*_{split}.txt"))
    if not matches:
        raise DataNotFoundError(f"no bAbI {split} file for {task} in {data_file('babi', folder)}")
    return matches[0]


def babi_files(task: str, split: str) -> list[Path]:
    """The files a split of a task is read from (see the module docstring)."""
    if split not in SPLITS:
        raise InvalidInputError(f"unknown split {split!r}; use one of {SPLITS}")
    if split == "test":
        return [_task_file("en-10k", task, "test")]
    if _task_number(task) == 3:
        return [_task_file("en", task, "train"), data_file("babi", "en-valid-10k", "qa3_valid.txt")]
    return [_task_file("en-10k", task, "train")]


@lru_cache(maxsize=16)
def babi_samples(task: str, split: str) -> tuple[BabiSample, ...]:
    """Every single-question sample of a task's split, in file order."""
    samples = [s for path in babi_files(task, split) for s in parse_babi_file(path)]
    logger.debug("bAbI %s %s: %d questions", task, split, len(samples))
    return tuple(samples)
