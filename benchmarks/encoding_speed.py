"""Indexing speed of the encoding backends, and the retrieval quality of the index each one builds.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/encoding_speed.py --threads 2 --cells babilong:4k:20 hotpotqa

In one run, on the same haystack sentences, with the same threads, batch size and truncation
(a chunk's first ``max_chunk_tokens`` tokens), measured alternately ``--rounds`` times (best round kept):

1. ``sentence-transformers``: plain ``SentenceTransformer.encode`` of the base model, float32 torch;
2. ``qrag torch``: the default model's action encoder on torch (what an index is built with by default);
3. ``qrag torch-bf16``: a bfloat16 copy of that encoder (fast on CPUs with AMX or AVX-512 BF16);
4. ``qrag onnx`` and ``qrag onnx-int8``: the same encoder exported to ONNX Runtime, float32 and int8
   dynamic quantisation (the export, once per model, is timed separately);

reporting chunks/s, the ratio to plain sentence-transformers, and the cosine of each backend's vectors
to the torch ones. Then the default model is evaluated (greedy search, fact EM) on each quality cell
with its index built by each of :data:`QUALITY_BACKENDS`: the model is scored on the same embeddings
it would see in an index of that backend. Content embeddings of the torch run come from the shared
embedding cache when present (every other backend has its own fingerprint, so its own cache entries).

Writes benchmarks/results/encoding_speed.json and encoding_speed.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from harness import RESULTS_DIR, Cell, cell_argument, git_commit, lazy_haystack, markdown_table

from qrag_core.atomic import write_file
from qrag_core.baselines import QRAGSearch
from qrag_core.cli import add_machine_note_flag, add_verbose_flag, positive_int, run_tool
from qrag_core.data.haystack import Haystack
from qrag_core.embedding_cache import shared_cache
from qrag_core.evaluation import evaluate
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.model_names import DEFAULT_MODEL_NAME, base_minilm_path
from qrag_core.search_options import SearchOptions

logger = logging.getLogger("encoding_speed_benchmark")
BACKENDS = ("torch-bf16", "onnx", "onnx-int8")
"""The fast backends timed against torch."""
QUALITY_BACKENDS = ("torch", "torch-bf16", "onnx-int8")
"""The backends whose indexes are scored on the quality cells (torch first: the others are compared to it)."""


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def throughput(model: QRAG, sentences: list[str], batch_size: int, rounds: int) -> dict:
    """Chunks/s of plain sentence-transformers and of each qrag backend, alternated over ``rounds``."""
    from sentence_transformers import SentenceTransformer

    encoder = model.action_encoder
    st = SentenceTransformer(base_minilm_path(), device="cpu")
    st.max_seq_length = encoder.chunk_token_limit() + 2  # the same truncation: [CLS] + 64 tokens + [SEP]
    reference = encoder.encode(sentences[:256])
    export = {}
    for backend in BACKENDS:  # export (or load the cached export) before timing
        encoder.use_backend(backend)
        export[backend] = timed(lambda: encoder.encode(sentences[:8]))
    methods: dict[str, Callable[[], object]] = {
        "sentence-transformers": lambda: st.encode(sentences, batch_size=batch_size),
    }
    for backend in ("torch", *BACKENDS):

        def run(backend: str = backend) -> None:
            encoder.use_backend(backend)
            encoder.encode(sentences, batch_size=batch_size)

        methods[f"qrag {backend}"] = run
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            seconds[name].append(timed(fn))
            logger.info("%s: %.1f chunks/s", name, len(sentences) / seconds[name][-1])
    base = min(seconds["sentence-transformers"])
    rows = {}
    for name, times in seconds.items():
        rows[name] = {"chunks_per_s": len(sentences) / min(times), "vs_sentence_transformers": base / min(times)}
    for backend in BACKENDS:
        encoder.use_backend(backend)
        cos = torch.nn.functional.cosine_similarity(encoder.encode(sentences[:256]), reference, dim=-1)
        rows[f"qrag {backend}"].update(
            cosine_to_torch_min=float(cos.min()),
            cosine_to_torch_mean=float(cos.mean()),
            export_or_load_seconds=export[backend],
        )
    encoder.use_backend("torch")
    return {"chunks": len(sentences), "batch_size": batch_size, "rounds": rounds, "methods": rows}


def quality(model: QRAG, cell: Cell) -> dict:
    """Fact EM of greedy search on ``cell`` with the index built by each of QUALITY_BACKENDS."""
    examples = cell.examples(lazy_haystack())
    cache = shared_cache()
    scores = {}
    for backend in QUALITY_BACKENDS:
        model.action_encoder.use_backend(backend)
        start = time.perf_counter()
        result = evaluate(QRAGSearch(model, cache, SearchOptions(beam=1)), examples)
        scores[backend] = {
            "fact_em": result["fact_em"],
            "fact_f1": result["fact_f1"],
            "per_task_fact_em": {task: row["fact_em"] for task, row in _groups(result).items()},
            "seconds": time.perf_counter() - start,
        }
    model.action_encoder.use_backend("torch")
    return {
        "cell": cell.spec,
        "samples": len(examples),
        "scores": scores,
        "fact_em_difference": {b: scores[b]["fact_em"] - scores["torch"]["fact_em"] for b in QUALITY_BACKENDS[1:]},
    }


def _groups(result: dict) -> dict:
    """The per-task scores of an evaluation, or its per-question-type ones where the samples share one task."""
    tasks = result.get("per_task", {})
    return result["per_type"] if len(tasks) <= 1 and "per_type" in result else tasks


def render(result: dict) -> str:
    speed = result["throughput"]
    lines = [
        "# Encoding speed and index quality per backend",
        "",
        f"Machine: {result['machine']}. Command: `{result['command']}` (commit {result['commit']}).",
        "",
        f"{speed['chunks']} haystack sentences, batch {speed['batch_size']}, best of {speed['rounds']} "
        "alternated rounds, same threads and truncation for every method.",
        "",
    ]
    rows = []
    for name, row in speed["methods"].items():
        cosine = (
            f"{row['cosine_to_torch_min']:.4f} / {row['cosine_to_torch_mean']:.4f}"
            if "cosine_to_torch_min" in row
            else "–"
        )
        rows.append([name, f"{row['chunks_per_s']:.0f}", f"{row['vs_sentence_transformers']:.2f}×", cosine])
    lines += markdown_table(["method", "chunks/s", "vs plain ST", "cosine to torch (min / mean)"], rows)
    for q in result["quality"]:
        lines += ["", f"{result['model']}, greedy search, {q['cell']} ({q['samples']} samples):", ""]
        tasks = sorted(q["scores"]["torch"]["per_task_fact_em"])
        rows = [
            [backend, f"{s['fact_em']:.3f}", *(f"{s['per_task_fact_em'][t]:.2f}" for t in tasks), f"{s['seconds']:.0f}"]
            for backend, s in q["scores"].items()
        ]
        lines += markdown_table(["index built with", "fact EM", *tasks, "seconds"], rows)
        differences = ", ".join(f"{b} {d:+.3f}" for b, d in q["fact_em_difference"].items())
        lines += ["", f"Fact EM difference against torch: {differences}."]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--threads", type=positive_int, default=os.cpu_count(), help="torch and ONNX Runtime threads (default: all)"
    )
    parser.add_argument(
        "--sentences", type=positive_int, default=1024, help="haystack sentences for the throughput test"
    )
    parser.add_argument(
        "--batch-size", type=positive_int, default=64, help="sentences per encoding batch (default: %(default)s)"
    )
    parser.add_argument(
        "--rounds",
        type=positive_int,
        default=2,
        help="timed passes per backend; the best counts (default: %(default)s)",
    )
    parser.add_argument(
        "--cells",
        nargs="+",
        type=cell_argument,
        default=[cell_argument("babilong:4k:20")],
        help="the quality cells, suite[:length][:n] (default: babilong:4k:20)",
    )
    add_machine_note_flag(parser, "added to the machine description (e.g. other load)")
    parser.add_argument(
        "--out",
        type=Path,
        default=RESULTS_DIR,
        help="directory for encoding_speed.json and encoding_speed.md (default: %(default)s)",
    )
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace, argv: list[str]) -> None:
    torch.set_num_threads(args.threads)
    model = QRAG.from_pretrained().eval()
    sentences = list(Haystack.load().sentences[0][1000 : 1000 + args.sentences])
    result = {
        "machine": machine_description(args.machine_note),
        "commit": git_commit(),
        "command": shlex.join(["python", "benchmarks/encoding_speed.py", *argv]),
        "throughput": throughput(model, sentences, args.batch_size, args.rounds),
        "model": DEFAULT_MODEL_NAME,
        "quality": [quality(model, cell) for cell in args.cells],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_file(args.out / "encoding_speed.json", json.dumps(result, indent=2) + "\n")
    write_file(args.out / "encoding_speed.md", render(result))
    print(render(result))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
