"""Scale benchmark: indexing throughput, query latency, peak memory and reload time.

    python benchmarks/scale.py --lengths 1M 10M

1. Encoding throughput of qrag's content encoder against plain ``SentenceTransformer.encode`` on the
   same haystack sentences, same batch size and truncation, measured alternately in one run.
2. For each length: a document of consecutive novel sentences (one sentence = one chunk, as BabiLong)
   is indexed by the model with the ``--backend`` of its content encoder (default: the shipped default
   model on torch; content embeddings come from the shared embedding cache when present, so the cost
   reported is that of this run: with an empty cache, ``QRAG_CACHE_DIR`` set to a new folder, it is a cold
   index; the novels repeat beyond about 3M tokens, and a repeated sentence is encoded once), saved, reloaded;
   then greedy (T=4) and beam-4 queries are timed, split into state encoding and scoring, for each
   number of threads and each state-encoder backend (torch, or the ONNX Runtime copy of the
   fine-tuned state encoder), alternating backends round by round so they share the machine's noise.
   As the floor of one scoring step, a plain matrix-vector product over the same cached vectors (no
   rotation, so not Q) is timed.
3. Peak resident memory (ru_maxrss) of the whole process.

Writes benchmarks/results/scale.json and scale.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from qrag_core.atomic import write_file
from qrag_core.cli import add_verbose_flag, positive_int, run_tool
from qrag_core.data.babilong import parse_length
from qrag_core.data.haystack import Haystack, fill_to_budget
from qrag_core.embedding_cache import EmbeddingCache, shared_cache
from qrag_core.index import DocumentIndex
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.model_names import DEFAULT_MODEL_NAME, base_minilm_path
from qrag_core.onnx_backend import BACKENDS
from qrag_core.search import search

QUESTIONS = [
    "Where is the football?",
    "Where was Mary before the kitchen?",
    "What did John drop?",
    "Who gave the apple to Fred?",
    "Where is the milk?",
]
RESULTS = Path(__file__).parent / "results"


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def encoding_throughput(model: QRAG, sentences: list[str], batch_size: int) -> dict:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(base_minilm_path(), device="cpu")
    st.max_seq_length = model.config.max_chunk_tokens
    ours, theirs = [], []
    for _ in range(2):  # alternate to share the machine's noise fairly
        theirs.append(best_of(1, lambda: st.encode(sentences, batch_size=batch_size)))
        ours.append(best_of(1, lambda: model.encode_chunks(sentences, None, batch_size=batch_size)))
    return {
        "chunks": len(sentences),
        "batch_size": batch_size,
        "qrag_chunks_per_s": len(sentences) / min(ours),
        "sentence_transformers_chunks_per_s": len(sentences) / min(theirs),
        "ratio": min(theirs) / min(ours),
    }


def build_document(haystack: Haystack, tokens: int, seed: int) -> tuple[list[str], int]:
    return fill_to_budget(haystack.stream(random.Random(seed)), tokens, int(tokens * 0.01))


def time_queries(model: QRAG, index: DocumentIndex, beam: int, backends: list[str], rounds: int) -> dict:
    """Latency of a T=4 search with each state backend: mean and median over ``rounds`` × the questions,
    and the share of it spent encoding states; backends alternate round by round."""
    encode_time = dict.fromkeys(backends, 0.0)
    latencies: dict[str, list[float]] = {backend: [] for backend in backends}
    original = model.search_state_vectors
    current = backends[0]

    def timed_state_vectors(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        encode_time[current] += time.perf_counter() - start
        return out

    model.search_state_vectors = timed_state_vectors  # type: ignore[method-assign]
    for round_number in range(rounds + 1):  # round 0 warms up (action vectors cached, ONNX session made)
        for current in backends:
            model.state_encoder.use_backend(current)
            if round_number == 0:
                search(model, QUESTIONS[0], index, k=4, beam=beam)
                encode_time[current] = 0.0
                continue
            for question in QUESTIONS:
                start = time.perf_counter()
                search(model, question, index, k=4, beam=beam)
                latencies[current].append(time.perf_counter() - start)
    del model.search_state_vectors
    model.state_encoder.use_backend("torch")
    return {
        backend: {
            "mean_s": statistics.mean(times),
            "median_s": statistics.median(times),
            "max_s": max(times),
            "state_encoding_share": encode_time[backend] / sum(times),
        }
        for backend, times in latencies.items()
    }


def matvec_floor(index: DocumentIndex, model: QRAG) -> float:
    """One pass over the cached action vectors (a matrix-vector product, no rotation): the floor of a step."""
    vectors = model.index_action_vectors(index)
    query = vectors[0].clone()
    return best_of(3, lambda: vectors @ query)


def run_length(
    model: QRAG, haystack: Haystack, label: str, cache: EmbeddingCache, workdir: Path, args: argparse.Namespace
) -> dict:
    texts, tokens = build_document(haystack, parse_length(label), seed=0)
    model.action_encoder.use_backend(args.backend)
    start = time.perf_counter()
    index = DocumentIndex.build(model, [texts], cache=cache, show_progress=True)
    index_s = time.perf_counter() - start
    start = time.perf_counter()
    index.save(workdir / label)
    save_s = time.perf_counter() - start
    start = time.perf_counter()
    index = DocumentIndex.load(workdir / label)
    reload_s = time.perf_counter() - start
    row = {
        "length": label,
        "tokens": tokens,
        "chunks": len(index),
        "distinct_chunks": len(set(texts)),
        "backend": args.backend,
        "index_s": index_s,
        "save_s": save_s,
        "reload_s": reload_s,
        "latency": [],
        "matvec_floor_s": matvec_floor(index, model),
        "peak_rss_gb": peak_rss_gb(),
    }
    for threads in args.threads:
        torch.set_num_threads(threads)
        row["latency"].append(
            {
                "threads": threads,
                "greedy_T4": time_queries(model, index, 1, args.state_backends, args.rounds),
                "beam4_T4": time_queries(model, index, 4, args.state_backends, args.rounds),
            }
        )
    row["peak_rss_gb"] = peak_rss_gb()
    model.action_encoder.use_backend("torch")  # the index is searched with the backend that built it, until here
    shutil.rmtree(workdir / label)
    return row


def markdown(report: dict) -> str:
    enc = report["encoding"]
    lines = [
        f"Machine: {report['machine']}. Model: {report['model']}. Command: `{report['command']}`. "
        f"Wall time {report['wall_s']:.0f} s.",
        "",
        f"Encoding {enc['chunks']} haystack sentences, batch {enc['batch_size']}: "
        f"qrag {enc['qrag_chunks_per_s']:.1f} chunks/s, "
        f"SentenceTransformer.encode {enc['sentence_transformers_chunks_per_s']:.1f} chunks/s, "
        f"ratio **{enc['ratio']:.2f}** (goal ≥ 0.95).",
        "",
        "| length | tokens | chunks (distinct) | index backend | index s | reload s | one matvec (floor of a step) s "
        "| peak RSS GB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["lengths"]:
        distinct = f" ({r['distinct_chunks']:,})" if "distinct_chunks" in r else ""
        lines.append(
            f"| {r['length']} | {r['tokens']:,} | {r['chunks']:,}{distinct} | {r.get('backend', 'torch')} "
            f"| {r['index_s']:.1f} | {r['reload_s']:.2f} | {r['matvec_floor_s']:.4f} | {r['peak_rss_gb']:.2f} |"
        )
    lines += [
        "",
        f"Query latency, T = 4 steps, {len(QUESTIONS)} questions × {report['rounds']} rounds per cell (mean, "
        "median in brackets; state encoding's share of the mean):",
        "",
        "| length | threads | state encoder | greedy s | state enc. share | beam 4 s | state enc. share |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["lengths"]:
        for cell in r["latency"]:
            for backend, g in cell["greedy_T4"].items():
                b = cell["beam4_T4"][backend]
                lines.append(
                    f"| {r['length']} | {cell['threads']} | {backend} | {g['mean_s']:.3f} ({g['median_s']:.3f}) "
                    f"| {g['state_encoding_share']:.0%} | {b['mean_s']:.3f} ({b['median_s']:.3f}) "
                    f"| {b['state_encoding_share']:.0%} |"
                )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--lengths", nargs="+", default=["1M", "10M"], help="document lengths in tokens (default: 1M 10M)"
    )
    parser.add_argument(
        "--encode-sample", type=positive_int, default=1024, help="sentences for the throughput comparison"
    )
    parser.add_argument("--batch-size", type=positive_int, default=64, help="encoding batch size for both encoders")
    parser.add_argument("--model", default=None, help="model name or path (default: the shipped default model)")
    parser.add_argument(
        "--threads", nargs="+", type=positive_int, default=[1, 2], help="torch/ONNX threads to time queries with"
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="torch",
        help="what computes the content embeddings of the index (default: %(default)s)",
    )
    parser.add_argument(
        "--state-backends",
        nargs="+",
        choices=BACKENDS,
        default=["torch", "onnx"],
        help="state-encoder backends to time queries with (the ONNX ones need qrag[onnx])",
    )
    parser.add_argument("--rounds", type=positive_int, default=3, help="timed rounds over the questions per cell")
    parser.add_argument("--out", type=Path, default=RESULTS / "scale.json", help="JSON output (markdown beside it)")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    started = time.perf_counter()
    model = QRAG.from_pretrained(args.model).eval()
    haystack = Haystack.load()
    sample = list(haystack.sentences[0][1000 : 1000 + args.encode_sample])
    report = {
        "machine": machine_description(f"load average {os.getloadavg()[0]:.1f} at start"),
        "command": "python " + " ".join(sys.argv),
        "model": args.model or DEFAULT_MODEL_NAME,
        "rounds": args.rounds,
        "encoding": encoding_throughput(model, sample, args.batch_size),
        "lengths": [],
    }
    cache = shared_cache()
    with tempfile.TemporaryDirectory() as tmp:
        for label in args.lengths:
            report["lengths"].append(run_length(model, haystack, label, cache, Path(tmp), args))
            print(json.dumps(report["lengths"][-1]), file=sys.stderr)
    report["wall_s"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_file(args.out, json.dumps(report, indent=2))
    write_file(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
