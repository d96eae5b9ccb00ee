"""The small document shipped inside the package for ``qrag-demo``, the examples and the tests.

Chapter 43 of *Pride and Prejudice* (public domain) with the 20 statements of one bAbI qa2 story
(CC BY 3.0; attribution in ``qrag_core/demo_data/NOTICE.txt``) placed in order between its
paragraphs: about 7k tokens, a question whose answer needs two of those statements, and the answer.
It works with no benchmark data installed; ``scripts/make_demo_text.py`` rebuilds it from the data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from qrag_core.errors import CheckpointError

DEMO_FILE = Path(__file__).resolve().parents[1] / "demo_data" / "demo_document.json"


@dataclass(frozen=True)
class DemoDocument:
    """The shipped demo document and its question."""

    title: str
    """What the text is and where it comes from."""
    text: str
    """The document (the novel's line breaks and blank lines kept)."""
    question: str
    """A bAbI question about the story hidden in the text."""
    answer: str
    """Its answer."""
    support: tuple[str, ...]
    """The story statements the answer follows from, in story order."""


@cache
def load_demo_document() -> DemoDocument:
    """The shipped demo document (read once)."""
    try:
        raw = json.loads(DEMO_FILE.read_text(encoding="utf-8"))
        return DemoDocument(raw["title"], raw["text"], raw["question"], raw["answer"], tuple(raw["support"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"the shipped demo document {DEMO_FILE} cannot be read ({err}); reinstall qrag") from err
