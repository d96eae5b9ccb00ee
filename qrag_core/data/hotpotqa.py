"""HotpotQA, distractor setting (Yang et al. 2018): paragraph chunks, support from the labels.

Each question comes with ten Wikipedia paragraphs (two gold, eight distractors). A chunk is one
paragraph written ``"Title: text"``; the support chunks are the paragraphs whose titles the
``supporting_facts`` name. Two splits of the shared data (:data:`HOTPOTQA_SPLITS`):

- ``test`` (the default): a 297-question subset of the official dev set
  (``hotpotqa/hotpot_dev_distractor_v1_subset.json``), the questions every benchmark reports on;
- ``train``: 907 questions for training. The official train file is not available offline, so this
  split is the 100 official train questions of ``hotpotqa/hotpot_train_v1.1_subset.json`` followed by
  807 official **dev** questions (``hotpotqa/hotpot_dev_distractor_v1_trainpool.json``) that are
  disjoint from the 297 test questions. A report on a model trained on it must say that its HotpotQA
  training used dev questions (disjoint from the test questions).

Rows carry ``task`` = ``hotpotqa``, the dataset's ``type`` (bridge / comparison) and ``level``,
``split`` (``train`` / ``test``, the split asked for) and ``official_split`` (``train`` / ``dev``, the
official HotpotQA split the question comes from).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrag_core.data.examples import Example
from qrag_core.data.paths import data_file
from qrag_core.errors import DataFormatError, InvalidInputError
from qrag_core.text_files import read_json_file

HOTPOTQA_FILE = ("hotpotqa", "hotpot_dev_distractor_v1_subset.json")
"""The test split's file (the 297-question dev subset)."""
HOTPOTQA_SPLITS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "test": (("hotpotqa", "hotpot_dev_distractor_v1_subset.json", "dev"),),
    "train": (
        ("hotpotqa", "hotpot_train_v1.1_subset.json", "train"),
        ("hotpotqa", "hotpot_dev_distractor_v1_trainpool.json", "dev"),
    ),
}
"""Per split, its files in order: (folder, file name, official split of the file's questions)."""


HELD_OUT = 60
"""How many questions of the ``train`` split, the last ones, the general model's recipe holds out of training
(for its periodic evaluation; the benchmarks' training-split checks use them too)."""


def train_and_held_out(held_out: int = HELD_OUT) -> tuple[list[Example], list[Example]]:
    """The ``train`` split cut in two: the questions trained on, then the last ``held_out`` ones."""
    if held_out <= 0:
        raise InvalidInputError(f"held_out must be positive, got {held_out}")
    questions = list(iter_hotpotqa(split="train"))
    return questions[:-held_out], questions[-held_out:]


def hotpot_example(record: dict[str, Any], where: str, extra: dict[str, Any] | None = None) -> Example:
    """One HotpotQA record as an example; DataFormatError (naming ``where``) when it is malformed.

    ``extra`` is added to the row's fields (the split labels).
    """
    try:
        titles = [title for title, _ in record["context"]]
        chunks = [f"{title}: {''.join(sentences).strip()}".strip() for title, sentences in record["context"]]
        gold = {title for title, _ in record["supporting_facts"]}
        question, answer, ident = record["question"], record["answer"], record["_id"]
    except (KeyError, TypeError, ValueError) as err:
        raise DataFormatError(where, 0, f"not a HotpotQA record: {err!r}") from None
    support = [i for i, title in enumerate(titles) if title in gold]
    if len(support) < len(gold):
        raise DataFormatError(where, 0, f"record {ident}: a supporting title is not among its paragraphs")
    return Example(
        id=str(ident),
        question=question,
        chunks=chunks,
        support=support,
        answer=answer,
        ordered=False,
        extra={"task": "hotpotqa", "type": record.get("type"), "level": record.get("level"), **(extra or {})},
    )


def read_hotpot_records(path: Path) -> list[Any]:
    """The records of a HotpotQA JSON file (a JSON array); DataFormatError when it is not one."""
    records = read_json_file(path)
    if not isinstance(records, list):
        raise DataFormatError(str(path), 1, "expected a JSON array of HotpotQA records")
    return records


def iter_hotpotqa(n: int | None = None, path: str | Path | None = None, split: str = "test") -> Iterator[Example]:
    """The first ``n`` (default: all) questions of a split (see the module docstring), in file order.

    ``path`` reads that one file instead of the split's files (its rows are labelled ``split`` only).
    """
    if n is not None and n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    if split not in HOTPOTQA_SPLITS:
        raise InvalidInputError(f"unknown HotpotQA split {split!r}; choose one of {', '.join(HOTPOTQA_SPLITS)}")
    sources: list[tuple[Path, dict[str, str]]] = (
        [(Path(path), {"split": split})]
        if path is not None
        else [
            (data_file(folder, name), {"split": split, "official_split": official})
            for folder, name, official in HOTPOTQA_SPLITS[split]
        ]
    )
    left = n
    for source, labels in sources:
        records = read_hotpot_records(source)
        for number, record in enumerate(records[:left]):
            yield hotpot_example(record, f"{source} (record {number})", labels)
        if left is not None:
            left -= min(left, len(records))
            if left == 0:
                return


def build_hotpotqa(n: int | None = None, path: str | Path | None = None, split: str = "test") -> list[Example]:
    return list(iter_hotpotqa(n, path, split))
