"""The small long document every example searches, and the command-line flags the examples share.

A bAbI story (the facts a question needs) is scattered, in order, among consecutive
sentences of a public-domain novel, as BabiLong builds its samples, but small enough that the
examples run in seconds on a CPU. The data comes from the shared offline data directory
(``$QRAG_DATA_DIR`` or ``<repository>/../shared/data``); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from qrag_core.data.babi import babi_samples
from qrag_core.data.demo import load_demo_document
from qrag_core.data.haystack import book_sentences, haystack_books, scatter_in_order


@dataclass
class ExampleDocument:
    """A question over a document, with the answer and the facts a good retriever should find."""

    text: str
    """The document: story facts hidden among novel sentences, one sentence after another."""
    question: str
    answer: str
    supporting_facts: list[str]
    """The story sentences the answer depends on."""
    source: str
    """Where the story and the background text come from."""
    doc_id: str
    """A short identifier of the document."""


def example_document(
    task: str = "qa2", question_index: int = 0, background_sentences: int = 150, split: str = "test"
) -> ExampleDocument:
    """Question ``question_index`` of a bAbI ``task`` split, hidden among novel sentences."""
    sample = babi_samples(task, split)[question_index]
    rng = random.Random(f"{task}:{split}:{question_index}")
    book = haystack_books()[0]
    novel = book_sentences(book)
    start = rng.randrange(len(novel) - background_sentences)
    sentences, _ = scatter_in_order(novel[start : start + background_sentences], sample.story, rng)
    return ExampleDocument(
        text=" ".join(sentences),
        question=sample.question,
        answer=sample.answer,
        supporting_facts=[sample.story[i] for i in sample.support],
        source=f"bAbI {task} {split} ({sample.source}) in {book.name}",
        doc_id=f"{task}-{split}-{question_index}",
    )


def example_arguments(description: str) -> argparse.ArgumentParser:
    """A parser with the flags every example takes (model, steps, which question, document size)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--model", default=None, help="saved qrag model directory or shipped name; None: the shipped default model"
    )
    parser.add_argument("--k", type=int, default=4, help="chunks to retrieve, one per search step")
    parser.add_argument("--task", default="qa2", help="bAbI task (qa1..qa20) the question comes from")
    parser.add_argument("--question-index", type=int, default=0, help="which question of the task's test split")
    parser.add_argument(
        "--background-sentences", type=int, default=150, help="novel sentences the story facts are hidden among"
    )
    return parser


def print_case(document: ExampleDocument) -> None:
    print(f"Document: {len(document.text)} characters, {document.source}")
    print(f"Question: {document.question}   (expected answer: {document.answer})")
    print(f"Facts a good retriever finds: {document.supporting_facts}\n")


def folder_arguments(description: str) -> argparse.ArgumentParser:
    """A parser for the folder examples: which folder, where to save the index, the question."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument(
        "--folder", type=Path, default=None, help="folder of .txt files to index (default: a demo folder in a temp dir)"
    )
    parser.add_argument("--store", type=Path, default=None, help="where to save the index (default: a temp dir)")
    parser.add_argument("--question", default=None, help="what to ask (default: the demo document's question)")
    parser.add_argument("--model", default=None, help="saved qrag model directory or shipped name")
    parser.add_argument("--k", type=int, default=4, help="chunks to retrieve, one per search step")
    return parser


def demo_folder(folder: Path) -> Path:
    """A folder of two text files: the document shipped with qrag (a novel's chapter with a bAbI story
    hidden in it) and a short unrelated note."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pride_and_prejudice_43.txt").write_text(load_demo_document().text, encoding="utf-8")
    (folder / "notes.txt").write_text(
        "Notes from the lab.\n\nThe kettle is broken. Anna fixed the printer.\nThe window faces north.\n",
        encoding="utf-8",
    )
    return folder


def folder_case(args: argparse.Namespace) -> tuple[Path, Path, str]:
    """The folder to index, where to save the index and the question, from :func:`folder_arguments`
    (the demo folder, a temporary store and the demo question where not given)."""
    scratch = Path(tempfile.mkdtemp(prefix="qrag-example-"))
    folder = args.folder or demo_folder(scratch / "texts")
    return folder, args.store or scratch / "store", args.question or load_demo_document().question
