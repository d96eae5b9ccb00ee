"""What the hybrid score's lexical indexes cost to build on long documents: seconds and memory.

    python benchmarks/lexical_index.py                       # 1M and 10M tokens
    python benchmarks/lexical_index.py --lengths 128k 1M

The hybrid score (docs/method.md §5) builds a BM25 index of a document's chunks the first time a search
needs it (:mod:`qrag_core.lexical`): over all words for the all-words feature, or over the identifier words
only (those holding a digit) for the identifier term, which ordered documents use by default. For each
length, a document of consecutive novel sentences (one sentence = one chunk, as the scale benchmark; the
novels repeat beyond about 3M tokens) is indexed both ways, and each build is timed with its peak extra
resident memory (Linux ``VmHWM``, reset before each build) and the memory the built index keeps; the
two builds alternate for ``--repeats`` rounds, and the median seconds and the largest memory are reported. The
identifier index's scores equal the full index's for identifier words (tests/test_lexical.py).

Results go to ``benchmarks/results/lexical_index.json`` (one entry per length) and ``lexical_index.md``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from harness import RESULTS_DIR, ResultsStore, add_render_only_flag, length_order, markdown_table, provenance

from qrag_core.atomic import write_file
from qrag_core.cli import add_machine_note_flag, add_verbose_flag, positive_int, run_tool
from qrag_core.data.babilong import parse_length
from qrag_core.data.haystack import Haystack
from qrag_core.lexical import LexicalIndex, words

RESULTS = RESULTS_DIR / "lexical_index.json"
MARKDOWN = RESULTS_DIR / "lexical_index.md"
KINDS = {"identifier words": True, "all words": False}
"""The two indexes, by name: whether each keeps the identifier words only."""
LIBC = ctypes.CDLL(None)


def memory_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``), in kB."""
    status = Path("/proc/self/status").read_text()
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line: Linux is needed to measure memory")
    return int(match.group(1))


def document(haystack: Haystack, tokens: int) -> list[str]:
    """Consecutive novel sentences, from the first book on and around again, until ``tokens`` are reached."""
    chunks: list[str] = []
    total = 0
    while total < tokens:
        for sentences, counts in zip(haystack.sentences, haystack.counts, strict=True):
            for sentence, count in zip(sentences, counts, strict=True):
                if total >= tokens:
                    return chunks
                chunks.append(sentence)
                total += int(count)
    return chunks


def settle() -> None:
    """Free what is garbage and hand freed heap pages back to the system, so resident memory is what is held."""
    gc.collect()
    LIBC.malloc_trim(0)


def measure(chunks: list[str], identifiers_only: bool) -> dict[str, Any]:
    """Seconds, peak extra and kept memory (MB) of building one lexical index of ``chunks``."""
    settle()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    before = memory_kb("VmRSS")
    start = time.perf_counter()
    index = LexicalIndex(chunks, identifiers_only)
    seconds = time.perf_counter() - start
    peak = memory_kb("VmHWM") - before
    settle()
    kept = memory_kb("VmRSS") - before
    result = {"seconds": seconds, "peak_mb": peak / 1024, "kept_mb": kept / 1024, "vocabulary": len(index.vocabulary)}
    del index
    return result


def measure_alternately(chunks: list[str], repeats: int) -> dict[str, dict[str, Any]]:
    """Each kind of index built ``repeats`` times, the kinds alternating: median seconds, largest memory."""
    rounds = [{name: measure(chunks, only) for name, only in KINDS.items()} for _ in range(repeats)]
    return {
        name: {
            "seconds": statistics.median(r[name]["seconds"] for r in rounds),
            "peak_mb": max(r[name]["peak_mb"] for r in rounds),
            "kept_mb": max(r[name]["kept_mb"] for r in rounds),
            "vocabulary": rounds[0][name]["vocabulary"],
            "repeats": repeats,
        }
        for name in KINDS
    }


def run(lengths: list[str], repeats: int, note: str) -> None:
    haystack = Haystack.load()
    store = ResultsStore(RESULTS, lambda: {"lengths": {}})
    for length in lengths:
        chunks = document(haystack, parse_length(length))
        entry = {
            "chunks": len(chunks),
            "words": sum(len(words(chunk)) for chunk in chunks),
            "kinds": measure_alternately(chunks, repeats),
            **provenance(note),
        }
        with store.updating() as results:
            results["lengths"][length] = entry
        write_markdown(store.load())


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    out = [
        "Generated by `benchmarks/lexical_index.py` from `benchmarks/results/lexical_index.json`. Building the",
        "hybrid score's BM25 index of a document of consecutive novel sentences (one chunk each), once per",
        "document, the first time a search needs it: over all words (the all-words feature) or over the",
        "identifier words only (the identifier term of ordered documents, on by default). Words: as BM25",
        "counts them (runs of letters and digits, `qrag_core.lexical.words`). Peak: the most resident memory",
        "the build added; kept: the resident memory still added once the build's garbage is freed and the heap",
        "trimmed, so what the allocator keeps counts too (a few MB either way). Median seconds and largest",
        "memory of the builds, the two kinds alternating.",
        "",
    ]
    rows = []
    entries = sorted(results["lengths"].items(), key=lambda item: length_order(item[0]))
    for length, entry in entries:
        for name, kind in entry["kinds"].items():
            rows.append(
                [
                    length,
                    f"{entry['chunks']:,}",
                    f"{entry['words']:,}",
                    name,
                    f"{kind['vocabulary']:,}",
                    f"{kind['seconds']:.1f}",
                    f"{kind['peak_mb']:.0f}",
                    f"{kind['kept_mb']:.1f}",
                ]
            )
    header = ["length", "chunks", "words", "index of", "vocabulary", "build s", "peak MB", "kept MB"]
    out += markdown_table(header, rows)
    out.append("")
    out += [f"- {length}: {e['machine']}; commit {e['commit']}; `{e['command']}`" for length, e in entries]
    write_file(path, "\n".join(out) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--lengths", nargs="+", default=["1M", "10M"], help="document lengths in tokens, e.g. 128k 1M (default: 1M 10M)"
    )
    parser.add_argument(
        "--repeats", type=positive_int, default=3, help="builds of each index, alternating (default: %(default)s)"
    )
    add_machine_note_flag(parser)
    add_render_only_flag(parser)
    add_verbose_flag(parser)
    return parser


def run_or_render(args: argparse.Namespace) -> None:
    if args.render_only:
        write_markdown(ResultsStore(RESULTS, lambda: {"lengths": {}}).load())
    else:
        for length in args.lengths:
            parse_length(length)  # a bad length fails before the novels are read
        run(args.lengths, args.repeats, args.machine_note)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run_or_render, argv)


if __name__ == "__main__":
    sys.exit(main())
