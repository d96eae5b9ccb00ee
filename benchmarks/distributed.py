"""Scaling-out benchmark: data-parallel training (1 vs 2 processes) and indexing on Ray (local vs 2 workers).

    python benchmarks/distributed.py                     # about 8 minutes on 2 busy CPU cores
    python benchmarks/distributed.py --chunks 5000 --train-seconds 40

1. Training throughput: ``qrag-finetune`` on BabiLong QA2 (0k, train split) from all-MiniLM-L6-v2,
   the same seed, data and global batch, run directly (1 process with 1 thread, then with all cores)
   and under ``torchrun`` (2 processes sharing the cores, gloo on CPU), each for at most
   ``--train-seconds`` of training: 3 warm-start steps, then soft-Q steps (rollouts, target values and
   the update). Episodes per second = steps × batch / the run's own training seconds (start-up, data
   loading and the final save not counted), and again from step 1 on (without the first step and the
   content embeddings of the training documents).
2. Indexing throughput: one document of haystack sentences (one sentence = one chunk) built with
   ``build_long_index`` here and on a local Ray with ``--workers`` encoder actors (one CPU thread each),
   neither using the embedding cache; the Ray time includes the actors' start-up (each loads the
   model), and Ray's own start is timed apart. A 64-sentence build on Ray measures that start-up; the
   per-worker rate, chunks / (Ray time − start-up) / workers, projects N machines of W workers:
   N × W × rate (the shards are independent; the driver only collects and writes them).

Writes benchmarks/results/distributed.json and distributed.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from harness import RESULTS_DIR, BenchmarkError, git_commit, markdown_table

from qrag_core.atomic import write_file
from qrag_core.cli import add_verbose_flag, positive_int, run_tool
from qrag_core.data.babilong import iter_babilong
from qrag_core.data.examples import write_jsonl
from qrag_core.data.haystack import Haystack, fill_to_budget
from qrag_core.long_index import build_long_index
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.ray_index import RayShardEncoder

WARM_START_STEPS = 3
"""The first steps of each training run; the rest are soft-Q steps (rollouts, target values, the update)."""
TOKENS_PER_CHUNK = 24
"""Roughly the tokens of one haystack sentence: the token budget that gives about ``--chunks`` chunks."""


def finetune(data: Path, out: Path, processes: int, threads: int, steps: int, batch: int, seconds: float) -> dict:
    """Run qrag-finetune (under torchrun when ``processes`` > 1, ``threads`` CPU threads each) for at
    most ``seconds`` of training."""
    args = ["--data", str(data), "--out", str(out), "--cache", "none", "--no-progress", "--batch-size", str(batch)]
    args += ["--warm-start-steps", str(WARM_START_STEPS), "--rl-steps", str(steps - WARM_START_STEPS)]
    args += ["--eval-every", "0"]
    args += ["--checkpoint-every", "0", "--warmup-steps", "1", "--max-train-seconds", str(seconds)]
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(
        [*launcher, "-m", "qrag_core.cli.finetune", *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise BenchmarkError(f"qrag-finetune with {processes} process(es) failed:\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.index("{") :])
    with open(out / "metrics.csv", newline="") as f:
        clock = [float(row["train_seconds"]) for row in csv.DictReader(f)]
    return {
        "processes": processes,
        "threads_per_process": threads,
        "steps": summary["steps"],
        "batch": batch,
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(time.perf_counter() - started, 1),
        "episodes_per_second": round(summary["examples_seen"] / summary["train_seconds"], 3),
        "steady_episodes_per_second": round((len(clock) - 1) * batch / (clock[-1] - clock[0]), 3),
    }


def training(workdir: Path, steps: int, batch: int, examples: int, seconds: float) -> list[dict]:
    data = workdir / "qa2.jsonl"
    write_jsonl(iter_babilong("qa2", "train", "0k", n=examples), data)
    cores = os.cpu_count() or 1
    runs = [(1, 1), (1, cores), (2, max(1, cores // 2))]  # processes, threads: one core, then all cores
    return [finetune(data, workdir / f"run-{p}x{t}", p, t, steps, batch, seconds) for p, t in runs]


def indexing(workdir: Path, chunks: int, workers: int) -> dict:
    import ray

    haystack = Haystack.load()
    sentences, tokens = fill_to_budget(haystack.stream(random.Random(0)), chunks * TOKENS_PER_CHUNK, 200)
    document = " ".join(sentences)
    model = QRAG.from_pretrained("all-MiniLM-L6-v2", device="cpu").eval()
    torch.set_num_threads(os.cpu_count() or 1)
    started = time.perf_counter()
    local = build_long_index(model, document, workdir / "local", shard_size=1024, show_progress=False)
    local_s = time.perf_counter() - started

    started = time.perf_counter()
    ray.init(num_cpus=workers, object_store_memory=512 * 1024**2, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - started
    try:
        encode = RayShardEncoder(model.action_encoder, workers, cpus_per_worker=1)
        started = time.perf_counter()  # the actors' start-up: a build of the first 64 sentences
        small = " ".join(sentences[:64])
        build_long_index(model, small, workdir / "small", shard_size=1024, show_progress=False, encode_shards=encode)
        startup_s = time.perf_counter() - started
        started = time.perf_counter()
        on_ray = build_long_index(
            model, document, workdir / "ray", shard_size=1024, show_progress=False, encode_shards=encode
        )
        ray_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    gap = (on_ray.content.float() - local.content.float()).abs().max().item()
    same_chunks = [c.text for c in on_ray.chunks] == [c.text for c in local.chunks]
    per_worker = len(local) / max(ray_s - startup_s, 1e-9) / workers
    return {
        "chunks": len(local),
        "tokens": tokens,
        "workers": workers,
        "local_seconds": round(local_s, 1),
        "local_chunks_per_second": round(len(local) / local_s, 1),
        "ray_start_seconds": round(ray_init_s, 1),
        "actor_startup_seconds": round(startup_s, 1),
        "ray_seconds": round(ray_s, 1),
        "ray_chunks_per_second": round(len(local) / ray_s, 1),
        "ray_chunks_per_second_per_worker": round(per_worker, 1),
        "same_chunks": same_chunks,
        "largest_embedding_difference": gap,
        "projection_chunks_per_second": {
            f"{machines} machines x {workers} workers": round(per_worker * machines * workers)
            for machines in (1, 4, 16, 64)
        },
    }


def markdown(report: dict) -> str:
    lines = ["# Scaling out: data-parallel training and indexing on Ray", "", f"Machine: {report['machine']}."]
    lines += [f"Commit {report['commit']}; command: `{report['command']}`.", ""]
    train_rows = [
        [
            f"{r['processes']} × {r['threads_per_process']} thread(s)",
            str(r["steps"]),
            str(r["batch"]),
            f"{r['train_seconds']:.1f}",
            f"{r['episodes_per_second']:.2f}",
            f"{r['steady_episodes_per_second']:.2f}",
        ]
        for r in report["training"]
    ]
    header = ["processes", "steps", "global batch", "training s", "episodes/s", "episodes/s after step 1"]
    lines += markdown_table(header, train_rows)
    ix = report["indexing"]
    lines += ["", f"Indexing {ix['chunks']} chunks ({ix['tokens']} tokens), all-MiniLM-L6-v2, no embedding cache:", ""]
    lines += markdown_table(
        ["engine", "seconds", "chunks/s"],
        [
            ["local (1 process, all cores)", f"{ix['local_seconds']:.1f}", f"{ix['local_chunks_per_second']:.1f}"],
            [
                f"Ray, {ix['workers']} workers × 1 thread (+{ix['ray_start_seconds']:.1f} s Ray start; "
                f"{ix['actor_startup_seconds']:.1f} s actor start-up included)",
                f"{ix['ray_seconds']:.1f}",
                f"{ix['ray_chunks_per_second']:.1f}",
            ],
        ],
    )
    lines += [
        "",
        f"Same chunks: {ix['same_chunks']}; largest embedding difference {ix['largest_embedding_difference']:.2g}.",
    ]
    lines += ["", f"Projection from {ix['ray_chunks_per_second_per_worker']:.1f} chunks/s per worker:", ""]
    lines += markdown_table(
        ["cluster", "chunks/s"], [[k, str(v)] for k, v in ix["projection_chunks_per_second"].items()]
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--train-steps",
        type=positive_int,
        default=40,
        help=f"scheduled optimiser steps per training run ({WARM_START_STEPS} warm start, then soft Q)",
    )
    parser.add_argument(
        "--train-seconds", type=float, default=40.0, help="each training run stops after this many training seconds"
    )
    parser.add_argument("--batch", type=positive_int, default=8, help="global batch (episodes per step)")
    parser.add_argument("--train-examples", type=positive_int, default=64, help="BabiLong QA2 training examples")
    parser.add_argument(
        "--chunks", type=positive_int, default=5000, help="about this many chunks in the indexed document"
    )
    parser.add_argument("--workers", type=positive_int, default=2, help="Ray encoder actors")
    parser.add_argument("--note", default="", help="said with the machine (e.g. other jobs running)")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with tempfile.TemporaryDirectory(prefix="qrag-distributed-") as tmp:
        report = {
            "machine": machine_description(args.note),
            "commit": git_commit(),
            "command": "python benchmarks/distributed.py " + " ".join(sys.argv[1:]),
            "training": training(Path(tmp), args.train_steps, args.batch, args.train_examples, args.train_seconds),
            "indexing": indexing(Path(tmp), args.chunks, args.workers),
        }
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    write_file(RESULTS_DIR / "distributed.json", json.dumps(report, indent=1) + "\n")
    write_file(RESULTS_DIR / "distributed.md", markdown(report))
    print(markdown(report))


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
