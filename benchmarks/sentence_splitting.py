"""Sentence splitters compared on a whole novel: quality (abbreviation breaks, long chunks) and speed.

    OMP_NUM_THREADS=1 python benchmarks/sentence_splitting.py                  # Pride and Prejudice
    OMP_NUM_THREADS=1 python benchmarks/sentence_splitting.py --book 2701-0.txt

The three splitters of ``ChunkingConfig.sentence_splitter`` (:func:`qrag_core.chunking.iter_sentence_spans`):
``regex`` (the splitter the benchmark haystacks were built with), ``punkt`` (NLTK's Punkt with the English
model ``recipes/train_punkt.py`` trains on the five other haystack novels, so the default book is held
out) and ``pysbd``. Each splits the novel twice: as a user document (the cleaned Gutenberg text,
hard-wrapped lines and blank lines between paragraphs) and as the BabiLong haystack does (paragraph by
paragraph, lines joined). Reported per splitter and form:

- chunks, and the share that ends in an abbreviation (``Mr.``, ``Mrs.``, ``Dr.``, ``St.`` ...), i.e.
  a sentence cut after a title;
- the share longer than 64 base-tokenizer tokens (the default ``max_chunk_tokens``, so truncated when
  encoded) and the longest chunk;
- whether the spans are exact source offsets (in order, non-overlapping, trimmed) and whether the
  chunks together keep every non-space character of the text (the regex drops a closing quote that
  follows a sentence end);
- speed: sentences per second, after the splitter is loaded (loading time reported apart);
- examples: the first chunks ending in an abbreviation, for checking by hand.

Results go to ``benchmarks/results/sentence_splitting.json`` and ``benchmarks/results/sentence_splitting.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import RESULTS_DIR, add_render_only_flag, markdown_table, provenance

from qrag_core.atomic import write_file
from qrag_core.chunking import iter_sentence_spans
from qrag_core.cli import add_verbose_flag, run_tool
from qrag_core.config import SENTENCE_SPLITTERS
from qrag_core.data.haystack import book_paragraphs, count_tokens, strip_gutenberg
from qrag_core.data.paths import data_file

logger = logging.getLogger("sentence_splitting")

RESULTS = RESULTS_DIR / "sentence_splitting.json"
MARKDOWN = RESULTS_DIR / "sentence_splitting.md"
ABBREVIATION_END = re.compile(r"\b(?:Mr|Mrs|Ms|Messrs|Dr|St|Mme|Mlle|Col|Capt|Gen|Rev|Prof|Sr|Jr|Lt)\.$")
EXAMPLES = 4
LONG_TOKENS = 64


def exact_offsets(text: str, spans: list[tuple[int, int]]) -> bool:
    """Spans in order, non-overlapping, non-empty and trimmed (so each chunk is exactly ``text[start:end]``)."""
    previous = 0
    for start, end in spans:
        if start < previous or end <= start or text[start:end] != text[start:end].strip():
            return False
        previous = end
    return True


def all_text_kept(text: str, spans: list[tuple[int, int]]) -> bool:
    """Whether the chunks together hold every non-space character of ``text`` (nothing falls between them)."""
    return "".join(text.split()) == "".join("".join(text[s:e].split()) for s, e in spans)


def measure(texts: list[str], splitter: str) -> dict[str, Any]:
    """Split each of ``texts`` (a whole document, or the paragraphs of one) and score the chunks."""
    start = time.perf_counter()
    spans = [list(iter_sentence_spans(text, splitter)) for text in texts]
    seconds = time.perf_counter() - start
    chunks = [text[s:e] for text, found in zip(texts, spans, strict=True) for s, e in found]
    abbreviated = [i for i, chunk in enumerate(chunks) if ABBREVIATION_END.search(chunk)]
    tokens = count_tokens(chunks)

    def context(i: int) -> str:
        following = chunks[i + 1][:40] if i + 1 < len(chunks) else ""
        return f"{chunks[i][-60:]} ‖ {following}".replace("\n", " ")

    return {
        "chunks": len(chunks),
        "seconds": seconds,
        "sentences_per_second": len(chunks) / seconds,
        "abbreviation_end": len(abbreviated) / len(chunks),
        "abbreviation_end_count": len(abbreviated),
        "longer_than_64_tokens": sum(t > LONG_TOKENS for t in tokens) / len(chunks),
        "longest_tokens": max(tokens),
        "exact_offsets": all(exact_offsets(text, found) for text, found in zip(texts, spans, strict=True)),
        "all_text_kept": all(all_text_kept(text, found) for text, found in zip(texts, spans, strict=True)),
        "examples": [context(i) for i in abbreviated[:EXAMPLES]],
    }


def load_seconds(splitter: str) -> float:
    """Time of the first call of a splitter (importing its library, reading its model)."""
    start = time.perf_counter()
    list(iter_sentence_spans("Mr. Smith arrived. He sat down.", splitter))
    return time.perf_counter() - start


def run(book: str, splitters: list[str]) -> dict[str, Any]:
    path = data_file("haystack", book)
    body = strip_gutenberg(path.read_text(encoding="utf-8-sig"), path.name)
    forms: dict[str, Callable[[], list[str]]] = {
        "document": lambda: [body],
        "haystack paragraphs": lambda: book_paragraphs(body),
    }
    results: dict[str, Any] = {
        "book": book,
        "characters": len(body),
        "splitters": {},
    }
    for splitter in splitters:
        entry: dict[str, Any] = {"load_seconds": load_seconds(splitter)}
        for form, texts in forms.items():
            entry[form] = measure(texts(), splitter)
            logger.info(
                "%s on %s: %d chunks, %.1f %% end in an abbreviation, %.0f sentences/s",
                splitter,
                form,
                entry[form]["chunks"],
                100 * entry[form]["abbreviation_end"],
                entry[form]["sentences_per_second"],
            )
        results["splitters"][splitter] = entry
    results.update(provenance("shared with other jobs"))
    return results


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    out = [
        "# Sentence splitting",
        "",
        f"Generated by `benchmarks/sentence_splitting.py` on `{results['book']}` ({results['characters']:,} chars).",
        "*document*: the cleaned Gutenberg text as one user document; *haystack paragraphs*: paragraph by paragraph",
        "with lines joined, as the BabiLong/NIAH haystacks are built (they keep `regex`). `punkt` uses the model",
        "`recipes/train_punkt.py` trains on the five other novels. Abbreviation end: chunks ending in Mr./Mrs./Dr./",
        f"St./... (a sentence cut after a title). > {LONG_TOKENS} tokens: truncated when encoded by default.",
        "",
    ]
    rows = []
    for splitter, entry in results["splitters"].items():
        for form in ("document", "haystack paragraphs"):
            m = entry[form]
            rows.append(
                [
                    splitter,
                    form,
                    f"{m['chunks']:,}",
                    f"{m['abbreviation_end']:.2%} ({m['abbreviation_end_count']})",
                    f"{m['longer_than_64_tokens']:.1%}",
                    str(m["longest_tokens"]),
                    "yes" if m["exact_offsets"] else "**no**",
                    "yes" if m["all_text_kept"] else "**no**",
                    f"{m['sentences_per_second']:,.0f}",
                    f"{entry['load_seconds']:.1f}",
                ]
            )
    out += markdown_table(
        [
            "splitter",
            "text",
            "chunks",
            "abbreviation end",
            f"> {LONG_TOKENS} tokens",
            "longest (tokens)",
            "exact offsets",
            "all text kept",
            "sentences/s",
            "load (s)",
        ],
        rows,
    )
    out += ["", "First chunks ending in an abbreviation (chunk end ‖ next chunk), user-document form:", ""]
    for splitter, entry in results["splitters"].items():
        examples = entry["document"]["examples"]
        out.append(f"- **{splitter}**: " + ("; ".join(f"`{e}`" for e in examples) if examples else "none"))
    out += ["", f"Machine: {results['machine']}. Commit {results['commit']}; `{results['command']}`."]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, "\n".join(out) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument("--book", default="1342-0.txt", help="haystack novel (default: %(default)s)")
    parser.add_argument(
        "--splitters",
        nargs="+",
        choices=SENTENCE_SPLITTERS,
        default=["regex", "punkt", "pysbd"],
        help="sentence splitters to compare (default: %(default)s)",
    )
    add_render_only_flag(parser)
    add_verbose_flag(parser)
    return parser


def run_or_render(args: argparse.Namespace) -> None:
    if args.render_only:
        write_markdown(json.loads(RESULTS.read_text(encoding="utf-8")))
        return
    results = run(args.book, args.splitters)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    write_file(RESULTS, json.dumps(results, indent=1, sort_keys=True))
    write_markdown(results)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run_or_render, argv)


if __name__ == "__main__":
    sys.exit(main())
