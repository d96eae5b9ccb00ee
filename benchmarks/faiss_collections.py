"""Passage collections: faiss (flat, IVF, IVF-SQ8, IVF-PQ, HNSW) against the exact torch scorer, latency and recall@k.

    OMP_NUM_THREADS=2 python benchmarks/faiss_collections.py --sizes 1M
    OMP_NUM_THREADS=2 python benchmarks/faiss_collections.py --sizes 10M --queries 20 --kinds flat ivf-sq8 ivf-pq
    python benchmarks/faiss_collections.py --render-only

Where every position is 0 (a passage collection, docs/method.md §5) one search step is a top-k by inner
product over fixed action vectors. This measures that step as qrag runs it: the torch scorer
(:meth:`QRAG.top_k <qrag_core.model.QRAG.top_k>` without a faiss index, i.e. :func:`qrag_core.scoring.top_k`
over one interval at ρ = 0) against :class:`qrag_core.vector_index.PassageIndex` of each kind, with the same
chunks already selected and excluded. The vectors are **synthetic** unit vectors (d = 384, MiniLM's size):
passages around random topic centres, each query a noisy copy of one passage (seeded, so every run sees the
same data); encoding a million real passages on this machine would take hours and measures the encoder,
not the search. Reported per scorer: build time, mean latency per query, recall@k against the torch scorer's
top-k, the largest |ΔQ| on the chunks both return, and peak RSS.

The scorers run one after the other, each holding only what it needs, so a 10M collection fits on a 24 GB machine:
the torch scorer gets the whole collection in float32 (what qrag's action vectors are), answers every
query, keeps its top-k and the IVF training sample (:func:`qrag_core.vector_index.training_rows`) and frees
the vectors; each faiss index is then built with :meth:`PassageIndex.from_blocks
<qrag_core.vector_index.PassageIndex.from_blocks>` from the same seeded vectors generated again block by
block (the build of ``PassageIndex(vectors, kind)``, without the whole tensor; the time spent generating is
not counted). Peak RSS is measured per scorer (Linux: ``VmHWM``, reset before each through
``/proc/self/clear_refs``).

Results go to ``benchmarks/results/faiss_collections.json`` (one entry per size) and ``faiss_collections.md``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from harness import (
    RESULTS_DIR,
    ResultsStore,
    add_render_only_flag,
    markdown_table,
    memory_kb,
    provenance,
    reset_peak_rss,
)
from tqdm import tqdm

from qrag_core.atomic import write_file
from qrag_core.cli import add_machine_note_flag, add_verbose_flag, positive_int, run_tool
from qrag_core.config import QRAGConfig
from qrag_core.data.babilong import length_label, parse_length
from qrag_core.positions import position_intervals, rope_frequencies
from qrag_core.scoring import top_k
from qrag_core.vector_index import IVF_KINDS, VECTOR_INDEXES, PassageIndex, pq_codes, training_rows

logger = logging.getLogger("faiss_collections")

RESULTS = RESULTS_DIR / "faiss_collections.json"
MARKDOWN = RESULTS_DIR / "faiss_collections.md"
DIM = 384
"""Vector size of the synthetic collection (all-MiniLM-L6-v2's)."""
TOPICS = 4096
"""Topic centres the synthetic passages scatter around."""
PASSAGE_NOISE = 1.0
"""Norm of a passage's random offset from its (unit) topic centre, before normalising."""
QUERY_NOISE = 0.5
"""Norm of a query's random offset from the (unit) passage it copies, before normalising."""
BLOCK = 65536
"""Passages generated at a time."""
TEN_MILLION_NOTE = (
    "10M passages (10 × 2^20): the exact reference is the torch scorer itself, over the whole collection in float32 "
    "(15.0 GiB of vectors). Each faiss index was built from the same vectors generated again block by block, after "
    "the torch scorer's had been freed, so its peak RSS is its own (the index, a 0.3 GiB training sample and "
    "faiss's growing lists). A flat or ivf index is a second float32 copy, and qrag keeps its float32 action "
    "vectors next to any faiss index, so only ivf-sq8 (3.8 GiB of codes and ids) and ivf-pq (0.55 GiB) fit beside "
    "them on a 24 GB machine; only those two were run at 10M (a first attempt with flat alone ran out of memory as "
    "its storage grew block by block, which a flat index now reserves once)."
)
"""What the results say about the 10M entry."""
HNSW_NOTE = (
    "HNSW at 1M passages: building the index (M = 32, efConstruction 64) had not finished after 11 minutes on this "
    "shared machine (about one core free) and was stopped; HNSW is measured on the smaller collection only."
)
"""What the results say while 1M has been measured without HNSW."""


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def noise(rows: int, norm: float, generator: torch.Generator) -> torch.Tensor:
    """Random directions of length about ``norm``."""
    return torch.randn(rows, DIM, generator=generator) * (norm / math.sqrt(DIM))


def passage_blocks(n: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """The n unit passage vectors around TOPICS centres, BLOCK rows at a time, from a ``generator`` seeded by the
    caller (the same vectors for the same seed); when they are all out, it stands where the queries are drawn."""
    centres = unit(torch.randn(TOPICS, DIM, generator=generator))
    for first in tqdm(range(0, n, BLOCK), desc="synthetic passages", unit="block"):
        rows = min(BLOCK, n - first)
        topic = torch.randint(TOPICS, (rows,), generator=generator)
        yield unit(centres[topic] + noise(rows, PASSAGE_NOISE, generator))


def synthetic_collection(n: int, queries: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, DIM) unit passage vectors around TOPICS centres, and ``queries`` unit vectors near random passages."""
    generator = torch.Generator().manual_seed(seed)
    passages = torch.empty(n, DIM)
    for first, block in zip(range(0, n, BLOCK), passage_blocks(n, generator), strict=True):
        passages[first : first + len(block)] = block
    picked = torch.randint(n, (queries,), generator=generator)
    return passages, unit(passages[picked] + noise(queries, QUERY_NOISE, generator))


class Stopwatch:
    """Seconds spent inside an iterator (generating blocks), to leave out of the time of what consumes it."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def timed(self, blocks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        start = time.perf_counter()
        for block in blocks:
            self.seconds += time.perf_counter() - start
            yield block
            start = time.perf_counter()


def peak_rss_gb() -> float:
    """Peak RSS of this process since :func:`~harness.reset_peak_rss` (Linux ``VmHWM``), in GiB."""
    return memory_kb("VmHWM") / 1024**2


def storage(kind: str) -> str:
    """How a scorer stores a vector."""
    return {"ivf-sq8": "int8 (SQ8)", "ivf-pq": f"PQ {pq_codes(DIM)} B"}.get(kind, "fp32")


def torch_top_k(vectors: torch.Tensor, query: torch.Tensor, selected: list[int], k: int) -> tuple[list[int], list]:
    """What ``QRAG.top_k`` computes for a passage collection without a faiss index."""
    config = QRAGConfig()
    intervals = position_intervals(
        config.position_mode, len(vectors), selected, config.delta, config.ell, ordered=[False]
    )
    values, indices = top_k(query, vectors, intervals, rope_frequencies(DIM), k, selected)
    return indices.tolist(), values.tolist()


def measure_size(
    n: int,
    kinds: list[str],
    queries: int,
    k: int,
    selected_count: int,
    machine_note: str = "",
    save: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Every scorer over one synthetic collection of ``n`` passages, one after the other (module docstring);
    ``save``, when given, gets the entry so far after each scorer (a run stopped later keeps those)."""

    def entry() -> dict[str, Any]:
        return {
            "passages": n,
            "dim": DIM,
            "queries": queries,
            "k": k,
            "selected": selected_count,
            "threads": torch.get_num_threads(),
            "scorers": dict(rows),
            **provenance(machine_note),
        }

    reset_peak_rss()
    vectors, query_vectors = synthetic_collection(n, queries)
    training = vectors[training_rows(n)] if set(kinds) & set(IVF_KINDS) else None
    # The chunks a search has already taken by step selected_count + 1: the torch scorer's best ones.
    selections = [torch_top_k(vectors, q, [], selected_count)[0] for q in query_vectors]
    start = time.perf_counter()
    exact = [torch_top_k(vectors, q, sel, k) for q, sel in zip(query_vectors, selections, strict=True)]
    torch_s = (time.perf_counter() - start) / queries
    rows = {
        "torch": {
            "storage": "fp32",
            "build_s": 0.0,
            "latency_s": torch_s,
            "recall": 1.0,
            "max_abs_dq": 0.0,
            "peak_rss_gb": peak_rss_gb(),
        }
    }
    logger.info("torch: %s", rows["torch"])
    if save is not None:
        save(entry())
    del vectors
    gc.collect()
    for kind in kinds:
        reset_peak_rss()
        generation = Stopwatch()
        blocks = generation.timed(passage_blocks(n, torch.Generator().manual_seed(0)))
        start = time.perf_counter()
        index = PassageIndex.from_blocks(kind, n, blocks, training if kind in IVF_KINDS else None)
        build_s = time.perf_counter() - start - generation.seconds
        found, worst = 0, 0.0
        start = time.perf_counter()
        answers = [index.search(q, k, sel) for q, sel in zip(query_vectors, selections, strict=True)]
        latency_s = (time.perf_counter() - start) / queries
        for (values, ids), (want_ids, want_values) in zip(answers, exact, strict=True):
            truth = dict(zip(want_ids, want_values, strict=True))
            shared = [(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True) if i in truth]
            found += len(shared)
            worst = max([worst, *(abs(v - truth[i]) for i, v in shared)])
        rows[kind] = {
            "storage": storage(kind),
            "build_s": build_s,
            "latency_s": latency_s,
            "recall": found / (k * queries),
            "max_abs_dq": worst,
            "peak_rss_gb": peak_rss_gb(),
        }
        logger.info("%s: %s", kind, rows[kind])
        if save is not None:
            save(entry())
        del index
        gc.collect()
    return entry()


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    out = [
        "# Passage collections: faiss against the torch scorer",
        "",
        "Generated by `benchmarks/faiss_collections.py` from `benchmarks/results/faiss_collections.json`. One search",
        "step over a passage collection (positions off, so Q is an inner product): the top-k of Q with the chunks",
        "already selected excluded, by qrag's exact torch scorer and by a faiss index of each kind",
        "(`qrag_core/vector_index.py`: flat = `IndexFlatIP`, exact; ivf = `IndexIVFFlat`, √N lists, 32 probed;",
        "ivf-sq8 = `IndexIVFScalarQuantizer`, the same lists with 8-bit codes, d + 8 bytes per vector; ivf-pq =",
        f"`IndexIVFPQ`, {pq_codes(DIM)} codes of 8 bits; hnsw = `IndexHNSWFlat`, M = 32, efSearch 128).",
        f"**Synthetic** unit vectors, d = {DIM}: passages scattered around {TOPICS} random topic centres, each query",
        "a noisy copy of one passage. Recall@k: share of the torch scorer's top-k that the index returns; |ΔQ|:",
        "largest difference of Q on the chunks both return (the compressed kinds estimate Q from their codes).",
        "The scorers run one after the other, each holding only its own vectors or index; peak RSS is per scorer",
        "(the process, reset before each), except in entries measured before it was (one peak for the whole run,",
        "shown above the table).",
    ]
    for label, r in sorted(results["sizes"].items(), key=lambda item: parse_length(item[0])):
        out += [
            "",
            f"## {label} passages",
            "",
            f"{r['passages']:,} passages, d = {r['dim']}, {r['queries']} queries, k = {r['k']}, "
            f"{r['selected']} chunks selected and excluded, {r['threads']} threads"
            + (f"; peak RSS of the whole run {r['peak_rss_gb']:.1f} GiB." if "peak_rss_gb" in r else "."),
            "",
        ]
        rows = [
            [
                name,
                s["storage"],
                f"{s['build_s']:.1f}",
                f"{s['latency_s'] * 1000:.2f}",
                f"{s['recall']:.3f}",
                f"{s['max_abs_dq']:.1e}",
                f"{s['peak_rss_gb']:.1f}" if "peak_rss_gb" in s else "–",
            ]
            for name, s in sorted(r["scorers"].items(), key=lambda item: VECTOR_INDEXES.index(item[0]))
        ]
        headers = ["scorer", "storage", "build s", "ms / query", f"recall@{r['k']}", "max abs dQ", "peak RSS GiB"]
        out += markdown_table(headers, rows)
        out += ["", f"{r['machine']}; commit {r['commit']}; finished {r['finished']}; `{r['command']}`"]
    if "hnsw" not in results["sizes"].get("1M", {}).get("scorers", {"hnsw": None}):
        out += ["", HNSW_NOTE]
    if "10M" in results["sizes"]:
        out += ["", TEN_MILLION_NOTE]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, "\n".join(out).rstrip() + "\n")


def store() -> ResultsStore:
    return ResultsStore(RESULTS, lambda: {"sizes": {}})


def run(args: argparse.Namespace) -> None:
    if not args.render_only:
        for size in args.sizes:

            def save(entry: dict[str, Any], label: str = length_label(size)) -> None:
                with store().updating() as results:
                    results["sizes"][label] = entry

            measure_size(parse_length(size), args.kinds, args.queries, args.k, args.selected, args.machine_note, save)
    write_markdown(store().load())
    print(MARKDOWN.read_text(encoding="utf-8"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["1M"], help="collection sizes in passages (default: 1M)")
    parser.add_argument(
        "--kinds", nargs="+", choices=VECTOR_INDEXES[1:], default=list(VECTOR_INDEXES[1:]), help="faiss indexes"
    )
    parser.add_argument("--queries", type=positive_int, default=50, help="queries per size (default: %(default)s)")
    parser.add_argument("--k", type=positive_int, default=10, help="top-k per query (default: %(default)s)")
    parser.add_argument(
        "--selected", type=positive_int, default=3, help="chunks already selected, excluded (default: %(default)s)"
    )
    add_machine_note_flag(parser)
    add_render_only_flag(parser)
    add_verbose_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
