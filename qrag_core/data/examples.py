"""Retrieval examples and their JSONL form (SPEC §4).

One example per line, either form::

    {"id": "x1", "question": "Where is Mary?", "answer": "bathroom",
     "document": "…long text…", "supporting_facts": ["Mary moved to the bathroom."]}
    {"id": "x2", "question": "…", "answer": "…", "chunks": ["…", "…"], "support": [3, 17]}

In the first form the document is chunked by the library and a chunk counts as support when it
contains a supporting fact (whitespace-normalised). ``answer`` and support labels are optional for
inference; training needs them. Every malformed line raises :class:`DataFormatError` naming the file,
the line and the problem; nothing is skipped silently.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qrag_core.chunking import Chunk, Tokenizer, chunk_text, chunks_from_texts
from qrag_core.config import ChunkingConfig
from qrag_core.errors import DataFormatError, InvalidInputError

_SPACE = re.compile(r"\s+")


def normalise_space(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


@dataclass
class Example:
    """A question over one document, with optional answer and support labels."""

    id: str
    question: str
    document: str | None = None
    """The raw document (first form); chunked by the library."""
    chunks: list[str] | None = None
    """Ready-made chunk texts (second form)."""
    answer: str | None = None
    supporting_facts: list[str] | None = None
    """Texts of the supporting facts (first form)."""
    support: list[int] | None = None
    """Indices of the supporting chunks (second form)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other fields of the JSON line (e.g. ``task``, ``length``), kept as they are."""

    @property
    def has_support(self) -> bool:
        return bool(self.supporting_facts) or bool(self.support)

    def to_chunks(self, config: ChunkingConfig | None = None, tokenizer: Tokenizer | None = None) -> list[Chunk]:
        if self.chunks is not None:
            return chunks_from_texts(self.chunks, doc_id=self.id)
        assert self.document is not None
        return chunk_text(self.document, config, tokenizer, doc_id=self.id)

    def support_indices(self, chunks: list[Chunk]) -> list[int]:
        """Indices of the support chunks: given directly, or every chunk that contains a supporting fact.

        A fact longer than one chunk marks the chunks that lie inside it. Builders that know the exact
        support (the benchmark builders) write the ``chunks``/``support`` form, which has no ambiguity.
        """
        if self.support is not None:
            bad = [i for i in self.support if not 0 <= i < len(chunks)]
            if bad:
                raise InvalidInputError(f"example {self.id}: support indices {bad} outside 0..{len(chunks) - 1}")
            return sorted(set(self.support))
        found: set[int] = set()
        normalised = [normalise_space(c.text) for c in chunks]
        for fact in self.supporting_facts or []:
            target = normalise_space(fact)
            hits = [i for i, text in enumerate(normalised) if target in text]
            hits = hits or [i for i, text in enumerate(normalised) if text and text in target]
            if not hits:
                raise InvalidInputError(f"example {self.id}: supporting fact not found in any chunk: {fact[:80]!r}")
            found.update(hits)
        return sorted(found)

    def to_json(self) -> dict[str, Any]:
        row: dict[str, Any] = {"id": self.id, "question": self.question}
        if self.answer is not None:
            row["answer"] = self.answer
        if self.document is not None:
            row["document"] = self.document
            if self.supporting_facts is not None:
                row["supporting_facts"] = self.supporting_facts
        else:
            row["chunks"] = self.chunks
            if self.support is not None:
                row["support"] = self.support
        row.update(self.extra)
        return row


_KNOWN = {"id", "question", "answer", "document", "supporting_facts", "chunks", "support"}


def example_from_json(row: object, where: tuple[str, int], need_support: bool = False) -> Example:
    """Validate one decoded JSON line; ``where`` is (file, line) for error messages."""
    path, line = where

    def fail(problem: str) -> DataFormatError:
        return DataFormatError(path, line, problem)

    if not isinstance(row, dict):
        raise fail(f"expected a JSON object, got {type(row).__name__}")
    question = row.get("question")
    if not isinstance(question, str) or not question.strip():
        raise fail("'question' must be a non-empty string")
    has_doc, has_chunks = "document" in row, "chunks" in row
    if has_doc == has_chunks:
        raise fail("give exactly one of 'document' (a string) or 'chunks' (a list of strings)")
    document, chunks = row.get("document"), row.get("chunks")
    if has_doc and (not isinstance(document, str) or not document.strip()):
        raise fail("'document' must be a non-empty string")
    if has_chunks and (
        not isinstance(chunks, list) or not chunks or not all(isinstance(c, str) and c.strip() for c in chunks)
    ):
        raise fail("'chunks' must be a non-empty list of non-empty strings")
    facts, support = row.get("supporting_facts"), row.get("support")
    if facts is not None and (not has_doc or not isinstance(facts, list) or not all(isinstance(f, str) for f in facts)):
        raise fail("'supporting_facts' must be a list of strings, used with 'document'")
    if support is not None:
        if not has_chunks or not isinstance(support, list) or not all(isinstance(i, int) for i in support):
            raise fail("'support' must be a list of chunk indices, used with 'chunks'")
        bad = [i for i in support if not 0 <= i < len(chunks)]
        if bad:
            raise fail(f"'support' indices {bad} are outside 0..{len(chunks) - 1}")
    if need_support and not (facts or support):
        raise fail("training needs support labels: 'supporting_facts' (with 'document') or 'support' (with 'chunks')")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise fail("'answer' must be a string")
    example_id = row.get("id", f"{Path(path).name}:{line}")
    return Example(
        id=str(example_id),
        question=question,
        document=document,
        chunks=chunks,
        answer=answer,
        supporting_facts=facts,
        support=support,
        extra={k: v for k, v in row.items() if k not in _KNOWN},
    )


def iter_json_lines(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line; invalid JSON raises DataFormatError (file, line)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError as err:
                raise DataFormatError(str(path), number, f"invalid JSON: {err.msg} (column {err.colno})") from None


def iter_jsonl(path: str | Path, need_support: bool = False) -> Iterator[Example]:
    """Examples of a JSONL file; the first malformed line raises DataFormatError (file, line, problem)."""
    for number, row in iter_json_lines(path):
        yield example_from_json(row, (str(path), number), need_support)


def read_jsonl(path: str | Path, need_support: bool = False) -> list[Example]:
    return list(iter_jsonl(path, need_support))


def write_jsonl(examples: Iterable[Example], path: str | Path) -> int:
    """Write examples atomically; returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count
