"""Writes qrag_core/demo_data/demo_document.json, the document `qrag-demo` ships with.

A bAbI qa2 story (two supporting facts; CC BY 3.0, see qrag_core/demo_data/NOTICE.txt), its
statements inserted in order as paragraphs of their own among the paragraphs of Chapter 43 of Jane
Austen's *Pride and Prejudice* (Project Gutenberg eBook #1342, public domain), kept as the eBook has
it (hard-wrapped lines, blank lines between paragraphs). Run from the repository root with the
benchmark data next to it:

    python scripts/make_demo_text.py ../shared/data
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from qrag_core.data.babi import parse_babi_file

BOOK = "haystack/1342-0.txt"
BABI = "babi/en/qa2_two-supporting-facts_test.txt"
QUESTION_LINE = 41
OUT = Path("qrag_core/demo_data/demo_document.json")


def main(data: Path) -> None:
    book = (data / BOOK).read_text(encoding="utf-8-sig").replace("\r\n", "\n")
    chapter = book[book.index("\nChapter 43\n") : book.index("\nChapter 44\n")].strip()
    paragraphs = [p.strip("\n") for p in chapter.split("\n\n") if p.strip()]
    sample = next(s for s in parse_babi_file(data / BABI) if s.source.endswith(f":{QUESTION_LINE}"))
    story = list(sample.story)
    every = len(paragraphs) / (len(story) + 1)
    out: list[str] = []
    for number, paragraph in enumerate(paragraphs):
        out.append(paragraph)
        while story and len(sample.story) - len(story) < (number + 1) / every:
            out.append(story.pop(0))
    out.extend(story)
    document = {
        "title": "Pride and Prejudice, Chapter 43 (Jane Austen), with a bAbI qa2 story",
        "book": "Project Gutenberg eBook #1342, public domain",
        "babi": f"{BABI}:{QUESTION_LINE} (bAbI tasks, CC BY 3.0)",
        "question": sample.question,
        "answer": sample.answer,
        "support": [sample.story[i] for i in sample.support],
        "text": "\n\n".join(out) + "\n",
    }
    OUT.write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT}: {len(document['text'])} characters, {len(sample.story)} story statements")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
