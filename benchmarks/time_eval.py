"""Timing check: ``qrag-eval --json --method dense`` on a 100-row BabiLong 4k file.

    python benchmarks/time_eval.py            # limit: 180 s on the 2-core CPU; exit status 1 when slower

Builds the file with ``qrag-data`` (not timed), runs ``qrag-eval`` as a user would (a fresh process,
the shared embedding cache as left by ``qrag-data warm-cache``), times it, checks the JSON it
prints, and records the result under ``timings`` in ``benchmarks/results/baselines.json``, from
which BENCHMARKS.md is re-rendered.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import BenchmarkError
from run_baselines import results_store, write_markdown

from qrag_core.cli import CHECK_FAILED, OK, add_verbose_flag, finite_float, run_tool
from qrag_core.data.babilong import BABILONG_TASKS
from qrag_core.machine import machine_description

BIN = Path(sys.executable).parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default="qa1", choices=BABILONG_TASKS, help="BabiLong task of the file (default: %(default)s)"
    )
    parser.add_argument(
        "--limit",
        type=finite_float,
        default=180.0,
        help=f"seconds allowed; slower exits with status {CHECK_FAILED} (default: %(default)s)",
    )
    add_verbose_flag(parser)
    return parser


def run_qrag_command(command: list[str], capture: bool) -> subprocess.CompletedProcess:
    """Run one qrag command; a failure is a :class:`BenchmarkError` with the end of what it said."""
    done = subprocess.run(command, capture_output=capture, text=True, check=False)
    if done.returncode != 0:
        said = f":\n{done.stderr[-3000:]}" if capture else " (its error is above)"
        raise BenchmarkError(f"{Path(command[0]).name} exited with status {done.returncode}{said}")
    return done


def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"babilong_{args.task}_4k.jsonl"
        build = [str(BIN / "qrag-data"), "babilong", "--task", args.task, "--length", "4k", "--n", "100"]
        run_qrag_command([*build, "--out", str(data)], capture=False)
        command = [str(BIN / "qrag-eval"), "--data", str(data), "--method", "dense", "--json", "--quiet"]
        start = time.perf_counter()
        done = run_qrag_command(command, capture=True)
        seconds = time.perf_counter() - start
    result = json.loads(done.stdout)
    if result["n"] != 100:
        raise BenchmarkError(f"expected 100 rows, qrag-eval evaluated {result['n']}")
    shown = f"qrag-eval --data babilong_{args.task}_4k.jsonl --method dense --json --quiet"
    check = {
        "what": f"qrag-eval dense, 100 BabiLong {args.task} 4k rows (fact recall {result['fact_recall']:.2f})",
        "seconds": seconds,
        "limit_seconds": args.limit,
        "machine": machine_description(),
        "command": shown,
    }
    with results_store().updating() as results:
        results["timings"] = [t for t in results.get("timings", []) if t["command"] != shown] + [check]
    write_markdown(results)
    print(json.dumps(check))
    return OK if seconds <= args.limit else CHECK_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
