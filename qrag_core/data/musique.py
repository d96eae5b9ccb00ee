"""MuSiQue-Ans (Trivedi et al. 2022): paragraph chunks, support from ``is_supporting``.

Each question comes with twenty paragraphs, two to four of them supporting. A chunk is one paragraph
written ``"Title: text"``. Two splits of the shared data (:data:`MUSIQUE_SPLITS`): ``dev`` (the
default), 200 answerable dev questions (``musique/musique_ans_v1.0_dev_subset.jsonl``), the questions
every benchmark reports on; ``train``, 100 official train questions
(``musique/musique_ans_v1.0_train_subset.jsonl``), none of them a dev question. Rows carry ``task`` =
``musique``, ``hops`` (the id's prefix: 2hop, 3hop1, ...) and ``split``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qrag_core.data.examples import Example
from qrag_core.data.paths import data_file
from qrag_core.errors import DataFormatError, InvalidInputError
from qrag_core.text_files import iter_json_lines

MUSIQUE_SPLITS: dict[str, tuple[str, str]] = {
    "dev": ("musique", "musique_ans_v1.0_dev_subset.jsonl"),
    "train": ("musique", "musique_ans_v1.0_train_subset.jsonl"),
}
"""Per split, its file in the data directory."""
MUSIQUE_FILE = MUSIQUE_SPLITS["dev"]


def musique_example(record: dict[str, Any], path: str, line: int, extra: dict[str, Any] | None = None) -> Example:
    """One MuSiQue record as an example; DataFormatError (file, line) when it is malformed.

    ``extra`` is added to the row's fields (the split label).
    """
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
        ordered=False,
        extra={"task": "musique", "hops": ident.split("__")[0], **(extra or {})},
    )


def iter_musique(n: int | None = None, path: str | Path | None = None, split: str = "dev") -> Iterator[Example]:
    """The first ``n`` (default: all) questions of a split (see the module docstring), in file order.

    ``path`` reads that JSONL file instead of the split's (its rows are still labelled ``split``).
    """
    if n is not None and n <= 0:
        raise InvalidInputError(f"n must be positive, got {n}")
    if split not in MUSIQUE_SPLITS:
        raise InvalidInputError(f"unknown MuSiQue split {split!r}; choose one of {', '.join(MUSIQUE_SPLITS)}")
    path = Path(path) if path is not None else data_file(*MUSIQUE_SPLITS[split])
    for count, (number, record) in enumerate(iter_json_lines(path), start=1):
        yield musique_example(record, str(path), number, {"split": split})
        if n is not None and count >= n:
            return


def build_musique(n: int | None = None, path: str | Path | None = None, split: str = "dev") -> list[Example]:
    return list(iter_musique(n, path, split))
