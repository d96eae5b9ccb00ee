"""MuSiQue-Ans (Trivedi et al. 2022; SPEC §5): paragraph chunks, support from ``is_supporting``.

Each question comes with twenty paragraphs, two to four of them supporting. A chunk is one paragraph
written ``"Title: text"``. The shared data holds 200 answerable dev questions
(``musique/musique_ans_v1.0_dev_subset.jsonl``). Rows carry ``task`` = ``musique`` and ``hops``
(the id's prefix: 2hop, 3hop1, ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrag_core.data.examples import Example
from qrag_core.data.paths import data_file
from qrag_core.errors import DataFormatError, InvalidInputError
from qrag_core.text_files import iter_json_lines

MUSIQUE_FILE = ("musique", "musique_ans_v1.0_dev_subset.jsonl")


def musique_example(record: dict[str, Any], path: str, line: int) -> Example:
    """One MuSiQue record as an example; DataFormatError (file, line) when it is malformed."""
    try:
        paragraphs = record["paragraphs"]
        chunks = [f"{p['title']}: {p['paragraph_text']}".strip() for p in paragraphs]
        support = [i for i, p in enumerate(paragraphs) if p["is_supporting"]]
        ident, question, answer = str(record["id"]), record["question"], record["answer"]
    except (KeyError, TypeError) as err:
        raise DataFormatError(path, line, f"not a MuSiQue record: missing or bad field {err}") from None
    if not support:
        raise DataFormatError(path, line, f"record {ident} has no supporting paragraph")
    return Example(
        id=ident,
        question=question,
        chunks=chunks,
        support=support,
        answer=answer,
        extra={"task": "musique", "hops": ident.split("__")[0]},
    )


def iter_musique(n: int | None = None, path: str | Path | None = None) -> Iterator[Example]:
    """The first ``n`` (default: all) questions of the MuSiQue JSONL file, in file order."""
    if n is not None and n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    path = Path(path) if path is not None else data_file(*MUSIQUE_FILE)
    for count, (number, record) in enumerate(iter_json_lines(path), start=1):
        yield musique_example(record, str(path), number)
        if n is not None and count >= n:
            return


def build_musique(n: int | None = None, path: str | Path | None = None) -> list[Example]:
    return list(iter_musique(n, path))
