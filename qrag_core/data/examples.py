"""Retrieval examples and their JSONL form (docs/data-format.md).

One example per line, either form::

    {"id": "x1", "question": "Where is Mary?", "answer": "bathroom",
     "document": "…long text…", "supporting_facts": ["Mary moved to the bathroom."]}
    {"id": "x2", "question": "…", "answer": "…", "chunks": ["…", "…"], "support": [3, 17]}

In the first form the document is chunked by the library and a chunk counts as support when it
contains a supporting fact (whitespace-normalised); a fact longer than one chunk marks the chunks
that lie inside it. A fact that occurs several times in the document (in several chunks, or as
several runs of consecutive chunks that together are exactly the fact) is found when ANY one of its
occurrences is selected: :meth:`Example.support_alternatives` gives each fact's occurrences and
:func:`qrag_core.metrics.resolve_support` scores a selection against them. In the second form each
``support`` index is one fact with one occurrence.

``answer`` and support labels are optional for inference; training needs them. A supporting fact
must be a non-blank string (an empty one would be contained in every chunk) and a support index a
JSON integer (``true`` is not index 1); an optional ``values`` field (RULER NIAH value recall) is a
list of strings. An optional ``ordered`` boolean (default ``true``) says whether the chunks are one
document whose order matters (a story, a book: positions ρ_t are used) or ``false`` for a collection of
independent passages (HotpotQA's ten paragraphs, a folder of files: positions are off, docs/method.md §3).
The file must be UTF-8 (see :mod:`qrag_core.text_files`). Every malformed line
raises :class:`DataFormatError` naming the file, the line and the problem; nothing is skipped
silently.
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
from qrag_core.text_files import iter_json_lines
from qrag_core.validation import is_int

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
    ordered: bool = True
    """True: one document whose chunk order matters (ρ_t); False: a collection of passages (positions off)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Any other fields of the JSON line (e.g. ``task``, ``length``), kept as they are."""
    source: tuple[str, int] | None = field(default=None, compare=False, repr=False)
    """(file, line) the example was read from, named by errors found later (e.g. a fact not in the document)."""

    @property
    def has_support(self) -> bool:
        return bool(self.supporting_facts) or bool(self.support)

    def to_chunks(self, config: ChunkingConfig | None = None, tokenizer: Tokenizer | None = None) -> list[Chunk]:
        if self.chunks is not None:
            return chunks_from_texts(self.chunks, doc_id=self.id)
        assert self.document is not None
        return chunk_text(self.document, config, tokenizer, doc_id=self.id)

    def support_alternatives(self, chunks: list[Chunk]) -> list[list[frozenset[int]]]:
        """Each supporting fact as its occurrences: sets of chunk indices, any one of which finds the fact.

        ``support`` indices are one fact each, with one occurrence. A supporting fact occurs in every
        chunk that contains it; a fact contained in no chunk occurs as each run of consecutive chunks
        that together are exactly the fact, else (the fact's text is not in the document as such) as
        all the chunks that lie inside it together.
        """
        if self.support is not None:
            bad = [i for i in self.support if not is_int(i) or not 0 <= i < len(chunks)]
            if bad:
                raise self._error(f"support indices {bad} are not integers in 0..{len(chunks) - 1}")
            return [[frozenset({i})] for i in sorted(set(self.support))]
        normalised = [normalise_space(c.text) for c in chunks]
        facts = []
        for fact in self.supporting_facts or []:
            target = normalise_space(fact) if isinstance(fact, str) else ""
            if not target:
                raise self._error(f"supporting fact {fact!r} is not a non-blank string: every chunk would contain it")
            occurrences = [frozenset({i}) for i, text in enumerate(normalised) if target in text]
            if not occurrences:
                inside = [i for i, text in enumerate(normalised) if text and text in target]
                runs = _consecutive_runs(inside)
                occurrences = [run for run in runs if " ".join(normalised[i] for i in sorted(run)) == target]
                occurrences = occurrences or ([frozenset(inside)] if inside else [])
            if not occurrences:
                raise self._error(f"supporting fact not found in any chunk: {fact[:80]!r}")
            facts.append(occurrences)
        return facts

    def support_indices(self, chunks: list[Chunk]) -> list[int]:
        """Every chunk of every occurrence of a supporting fact (see :meth:`support_alternatives`).

        Builders that know the exact support (the benchmark builders) write the ``chunks``/``support``
        form, which has no ambiguity.
        """
        return sorted({i for fact in self.support_alternatives(chunks) for occurrence in fact for i in occurrence})

    def _error(self, problem: str) -> InvalidInputError:
        """An error naming this example, and its file and line when it was read from one."""
        if self.source is not None:
            return DataFormatError(*self.source, f"example {self.id}: {problem}")
        return InvalidInputError(f"example {self.id}: {problem}")

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
        if not self.ordered:
            row["ordered"] = False
        row.update(self.extra)
        return row


_KNOWN = {"id", "question", "answer", "document", "supporting_facts", "chunks", "support", "ordered"}


def _consecutive_runs(indices: list[int]) -> list[frozenset[int]]:
    """Sorted indices cut into runs of consecutive numbers."""
    runs: list[list[int]] = []
    for i in indices:
        if runs and runs[-1][-1] == i - 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return [frozenset(run) for run in runs]


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
    blank = [i for i, f in enumerate(facts or []) if not f.strip()]
    if blank:
        raise fail(f"'supporting_facts' entries {blank} are empty or blank: every chunk would contain them")
    if support is not None:
        if not has_chunks or not isinstance(support, list) or not all(is_int(i) for i in support):
            raise fail("'support' must be a list of integer chunk indices, used with 'chunks'")
        bad = [i for i in support if not 0 <= i < len(chunks)]
        if bad:
            raise fail(f"'support' indices {bad} are outside 0..{len(chunks) - 1}")
    values = row.get("values")
    if values is not None and (not isinstance(values, list) or not all(isinstance(v, str) for v in values)):
        raise fail("'values' (the expected values of RULER value recall) must be a list of strings")
    if need_support and not (facts or support):
        raise fail("training needs support labels: 'supporting_facts' (with 'document') or 'support' (with 'chunks')")
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, str):
        raise fail("'answer' must be a string")
    ordered = row.get("ordered", True)
    if not isinstance(ordered, bool):
        raise fail(f"'ordered' must be true (one ordered document) or false (a passage collection), got {ordered!r}")
    example_id = row.get("id", f"{Path(path).name}:{line}")
    return Example(
        id=str(example_id),
        question=question,
        document=document,
        chunks=chunks,
        answer=answer,
        supporting_facts=facts,
        support=support,
        ordered=ordered,
        extra={k: v for k, v in row.items() if k not in _KNOWN},
        source=(path, line),
    )


def iter_jsonl(path: str | Path, need_support: bool = False) -> Iterator[Example]:
    """Examples of a JSONL file; the first malformed line raises DataFormatError (file, line, problem)."""
    for number, row in iter_json_lines(path):
        yield example_from_json(row, (str(path), number), need_support)


def read_jsonl(path: str | Path, need_support: bool = False) -> list[Example]:
    return list(iter_jsonl(path, need_support))


def write_jsonl(examples: Iterable[Example], path: str | Path) -> int:
    """Write examples atomically; returns how many were written."""
    path = Path(path)
    if path.is_dir():
        raise InvalidInputError(f"{path} is a directory; give a file name such as {path / 'data.jsonl'}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for example in examples:
            f.write(json.dumps(example.to_json(), ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count
