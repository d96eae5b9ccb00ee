"""``qrag-demo``: multi-step retrieval over a long document, offline, with the retrieval trace.

By default it uses the document shipped inside the package (a bAbI story hidden in a chapter of a
public-domain novel, :mod:`qrag_core.data.demo`), so it runs right after ``pip install qrag`` with
no repository and no benchmark data. With ``--task``/``--length``/``--sample`` it builds a BabiLong
sample from the benchmark data instead. It loads the default model (offline), indexes the document
and prints the step-by-step trace: which chunk was picked at each step, its Q-value and its position
ρ_t, and whether all support facts were found. A bad option gets argparse's error before anything
loads; every error is one line, ``qrag-demo: error: …``, exit 2 (:func:`qrag_core.cli.run_reporting_errors`).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass

from qrag_core.chunking import chunk_text
from qrag_core.cli import (
    DefaultsHelpFormatter,
    add_search_flags,
    add_verbose_flag,
    from_flags,
    non_negative_int,
    run_tool,
)
from qrag_core.data.babilong import BABILONG_TASKS, build_babilong
from qrag_core.data.demo import load_demo_document
from qrag_core.data.paths import DataNotFoundError
from qrag_core.embedding_cache import shared_cache
from qrag_core.errors import QRAGError
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.model_names import DEFAULT_MODEL_NAME, shipped_model_names
from qrag_core.search import search
from qrag_core.search_options import SearchOptions

BABILONG_DEFAULTS = {"task": "qa2", "length": "4k", "sample": 0}
SEARCH_FLAGS_SKIPPED = ("document_id", "document_ids", "order")
"""Search options without a flag: the demo's index holds one document, shown in document order."""


@dataclass
class DemoInput:
    """What the demo retrieves from: a document as chunk texts, its question and the support chunks."""

    name: str
    chunks: list[str]
    question: str
    answer: str
    support: set[int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrag-demo",
        description=(
            "Multi-step retrieval over a long document, offline, with a retrieval trace. Without --task, "
            "--length or --sample it uses the document shipped with qrag; with them, a BabiLong sample "
            "built from the benchmark data ($QRAG_DATA_DIR)."
        ),
        formatter_class=DefaultsHelpFormatter,
    )
    parser.add_argument("--model", default=None, help="model name or path (default: the shipped default model)")
    parser.add_argument(
        "--task", default=None, choices=BABILONG_TASKS, help="BabiLong: bAbI task the facts come from (qa2)"
    )
    parser.add_argument("--length", default=None, help="BabiLong: document length in tokens (1k, 4k, ..., 1M; 4k)")
    parser.add_argument(
        "--sample", type=non_negative_int, default=None, help="BabiLong: which of the 100 test samples (0)"
    )
    parser.add_argument("--no-cache", action="store_true", help="do not use the on-disk embedding cache")
    add_search_flags(parser, skip=SEARCH_FLAGS_SKIPPED)
    add_verbose_flag(parser)
    return parser


def shipped_input(model: QRAG) -> DemoInput:
    """The document shipped with qrag, in the model's chunks."""
    demo = load_demo_document()
    chunks = [c.text for c in chunk_text(demo.text, model.config.chunking, model.action_encoder.tokenizer)]
    support = {i for i, text in enumerate(chunks) if text in demo.support}
    return DemoInput(f"the shipped demo document ({demo.title})", chunks, demo.question, demo.answer, support)


def babilong_input(args: argparse.Namespace) -> DemoInput | None:
    """The BabiLong sample the arguments ask for; None when they ask for none (use the shipped document)."""
    given = {name: getattr(args, name) for name in BABILONG_DEFAULTS}
    if all(value is None for value in given.values()):
        return None
    task, length, sample = (BABILONG_DEFAULTS[n] if v is None else v for n, v in given.items())
    try:
        examples = build_babilong(task, "test", length, n=sample + 1)
    except DataNotFoundError as err:
        raise QRAGError(
            f"the BabiLong demo needs the benchmark data: {err}. "
            "Without --task, --length and --sample the demo uses the document shipped with qrag."
        ) from err
    if sample >= len(examples):
        raise QRAGError(f"--sample {sample}: there are only {len(examples)} test samples")
    example = examples[sample]
    name = f"{example.id}, {example.extra.get('tokens')} tokens"
    return DemoInput(name, list(example.chunks), example.question, example.answer or "", set(example.support or []))


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    sample = babilong_input(args)
    built = time.perf_counter()
    if args.model is None and DEFAULT_MODEL_NAME not in shipped_model_names():
        print("NOTE: no trained default model is shipped yet; this demo runs the UNTRAINED base encoder.\n")
    model = QRAG.from_pretrained(args.model).eval()
    demo = sample or shipped_input(model)
    cache = None if args.no_cache else shared_cache()
    loaded = time.perf_counter()
    index = DocumentIndex.build(model, [demo.chunks], doc_ids=["demo"], cache=cache)
    indexed = time.perf_counter()
    result = search(model, demo.question, index, from_flags(SearchOptions, args))
    searched = time.perf_counter()

    found = demo.support & {s.chunk.index for s in result.chunks}
    print(f"Document: {demo.name}, {len(index)} sentence chunks")
    print(f"Support facts: {', '.join(repr(demo.chunks[i]) for i in sorted(demo.support))}")
    print(f"Expected answer: {demo.answer}\n")
    print(result.format())
    print("\nEvidence handed to the reader, in document order:")
    for s in result.chunks:
        mark = "*" if s.chunk.index in demo.support else " "
        print(f"  {mark} [{s.chunk.index:>5}] {s.chunk.text}")
    print(f"\nSupport facts found: {len(found)}/{len(demo.support)} (* marks them)")
    print(
        f"Time: build sample {built - started:.1f}s, load model {loaded - built:.1f}s, "
        f"index {indexed - loaded:.1f}s, search {searched - indexed:.2f}s, total {searched - started:.1f}s"
    )


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv, quiet=True)


if __name__ == "__main__":
    sys.exit(main())
