"""HotpotQA, distractor setting (Yang et al. 2018; SPEC §5): paragraph chunks, support from the labels.

Each question comes with ten Wikipedia paragraphs (two gold, eight distractors). A chunk is one
paragraph written ``"Title: text"``; the support chunks are the paragraphs whose titles the
``supporting_facts`` name. The shared data holds a 297-question subset of the dev set
(``hotpotqa/hotpot_dev_distractor_v1_subset.json``). Rows carry ``task`` = ``hotpotqa`` plus the
dataset's ``type`` (bridge / comparison) and ``level``.
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


def hotpot_example(record: dict[str, Any], where: str) -> Example:
    """One HotpotQA record as an example; DataFormatError (naming ``where``) when it is malformed."""
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
        extra={"task": "hotpotqa", "type": record.get("type"), "level": record.get("level")},
    )


def iter_hotpotqa(n: int | None = None, path: str | Path | None = None) -> Iterator[Example]:
    """The first ``n`` (default: all) questions of the HotpotQA file, in file order."""
    if n is not None and n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    path = Path(path) if path is not None else data_file(*HOTPOTQA_FILE)
    records = read_json_file(path)
    if not isinstance(records, list):
        raise DataFormatError(str(path), 1, "expected a JSON array of HotpotQA records")
    for number, record in enumerate(records[:n]):
        yield hotpot_example(record, f"{path} (record {number})")


def build_hotpotqa(n: int | None = None, path: str | Path | None = None) -> list[Example]:
    return list(iter_hotpotqa(n, path))
