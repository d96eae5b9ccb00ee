"""Timing check: ``qrag-eval --json --method dense`` on a 100-row BabiLong 4k file.

    python benchmarks/time_eval.py            # limit: 180 s on the 2-core CPU

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

from run_baselines import results_store, write_markdown

from qrag_core.machine import machine_description

BIN = Path(sys.executable).parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="qa1", help="BabiLong task of the file (default: %(default)s)")
    parser.add_argument("--limit", type=float, default=180.0, help="seconds allowed (default: %(default)s)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / f"babilong_{args.task}_4k.jsonl"
        build = [str(BIN / "qrag-data"), "babilong", "--task", args.task, "--length", "4k", "--n", "100"]
        subprocess.run([*build, "--out", str(data)], check=True)
        command = [str(BIN / "qrag-eval"), "--data", str(data), "--method", "dense", "--json", "--quiet"]
        start = time.perf_counter()
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    result = json.loads(done.stdout)
    if result["n"] != 100:
        raise SystemExit(f"expected 100 rows, qrag-eval evaluated {result['n']}")
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
    return 0 if seconds <= args.limit else 1


if __name__ == "__main__":
    sys.exit(main())
