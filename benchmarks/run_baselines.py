"""Retrieval methods side by side on the benchmarks (BabiLong, RULER NIAH, HotpotQA, MuSiQue), written to BENCHMARKS.md.

    python benchmarks/run_baselines.py --cells babilong:1k babilong:4k niah:4k hotpotqa musique
    python benchmarks/run_baselines.py --cells babilong_other:32k                      # the second BabiLong draw
    python benchmarks/run_baselines.py --methods qrag --model PATH --cells babilong:4k   # add a model's rows
    python benchmarks/run_baselines.py --render-only                                   # rewrite BENCHMARKS.md

A cell is ``suite[:length][:n]``: ``babilong`` (QA1–5 test samples of babilong/test_100_idxs.json),
``babilong_other`` (the second BabiLong test draw: other bAbI test questions at other haystack positions,
seed 1), ``niah`` (the eight RULER variants), ``qa_hotpotqa`` (HotpotQA in a haystack), ``hotpotqa`` or
``musique``; ``n`` is the samples per task (defaults below). Every method of a cell runs on the same
samples, built deterministically (seed 0 unless the suite says otherwise), through the one evaluation
loop of ``qrag_core.evaluation`` with the shared embedding cache.

Results accumulate in ``benchmarks/results/baselines.json``, one entry per (cell, method) with its
scores, sample count, wall time, machine and command; pairs already there are skipped unless
``--force``, so an interrupted run resumes and a later run adds new methods (a trained model's
``qrag`` rows) next to the baselines. BENCHMARKS.md is regenerated from the JSON after every pair.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from harness import (
    BABILONG_OTHER_TITLE,
    DEFAULT_SAMPLES,
    LENGTH_SUITES,
    ROOT,
    BenchmarkError,
    Cell,
    ResultsStore,
    add_render_only_flag,
    cell_argument,
    length_order,
    markdown_table,
    provenance,
)

from qrag_core.atomic import write_file
from qrag_core.baselines import BASELINES, METHODS, base_model_of, make_method
from qrag_core.cli import add_verbose_flag, run_tool
from qrag_core.data.babilong import BABILONG_TASKS
from qrag_core.data.haystack import Haystack
from qrag_core.data.ruler import NIAH_TASKS
from qrag_core.embedding_cache import shared_cache
from qrag_core.evaluation import RetrievalMethod, evaluate

logger = logging.getLogger("run_baselines")

RESULTS = ROOT / "benchmarks" / "results" / "baselines.json"
MARKDOWN = ROOT / "BENCHMARKS.md"
GOALS = ROOT / "benchmarks" / "goals.md"
"""Hand-written summary of the goals met and missed, shown at the top of BENCHMARKS.md."""
SECTIONS = (
    ("The shipped default model", "benchmarks/default_model.md"),
    ("A question over a novel", "benchmarks/results/novel_trace.md"),
    ("Training: learning curves and comparisons", "benchmarks/training.md"),
    ("Scale: 1M and 10M tokens on 2 CPU cores", "benchmarks/results/scale.md"),
    ("Scale: the same on the AVX2 AMD EPYC (an earlier run)", "benchmarks/results/scale_amd_epyc.md"),
    ("Scale: the same on an AMD EPYC with AVX-512 VNNI and BF16 (Zen 4)", "benchmarks/results/scale_amd_zen4.md"),
    ("Passage collections: faiss against the torch scorer", "benchmarks/results/faiss_collections.md"),
    ("Scaling out: data-parallel training and indexing on Ray", "benchmarks/distributed.md"),
    ("Encoding backends: indexing speed and index quality on this CPU", "benchmarks/encoding.md"),
    (
        "Encoding backends on an AMD EPYC with AVX-512 VNNI and BF16 (Zen 4)",
        "benchmarks/results/encoding_speed_amd_zen4.md",
    ),
    ("Encoding backends on the same AMD EPYC: long documents", "benchmarks/results/encoding_speed_amd_zen4_long.md"),
    ("Passage length: what truncating paragraph chunks costs", "benchmarks/results/passage_length.md"),
    ("Sentence splitting", "benchmarks/results/sentence_splitting.md"),
    ("Stopping by Q-value", "benchmarks/results/stopping.md"),
    ("Beam search against greedy", "benchmarks/results/beam_search.md"),
    ("Training-split check of candidate models", "benchmarks/results/training_split_check.md"),
    ("Hybrid lexical + Q score", "benchmarks/results/lexical_weight.md"),
    ("Lexical indexes: build cost on long documents", "benchmarks/results/lexical_index.md"),
)
"""Sections written by other benchmark scripts, appended to BENCHMARKS.md at every render."""


# ============================================================================================ running
def load_results(path: Path = RESULTS) -> dict[str, Any]:
    return results_store(path).load()


def results_store(path: Path = RESULTS) -> ResultsStore:
    return ResultsStore(path, lambda: {"cells": {}})


def build_methods(names: list[str], model: str | None) -> dict[str, RetrievalMethod]:
    """The methods by name; the baselines on the base encoder share one loaded untrained model."""
    cache = shared_cache()
    base = base_model_of(model) if {"dense", "multistep-untrained"} & set(names) else None
    return {name: make_method(name, model, cache, base=base) for name in names}


def run_cell(
    results: dict[str, Any],
    parsed: Cell,
    methods: list[str],
    model: str | None,
    force: bool,
    haystack: Haystack | None,
    paths: tuple[Path, Path] = (RESULTS, MARKDOWN),
) -> None:
    """Measure the methods of one cell not yet in ``results``; save JSON and markdown (``paths``) after each."""
    suite, length, n = parsed
    key = parsed.key
    cell = results["cells"].setdefault(key, {"suite": suite, "length": length, "methods": {}, "samples_per_task": n})
    if cell.get("samples_per_task") != n:
        if not force:
            raise BenchmarkError(
                f"{key} was measured with {cell.get('samples_per_task')} samples per task, not {n}: methods of a "
                "cell must share their samples; ask for the same n, or add --force to measure every method again"
            )
        cell.update(methods={}, samples_per_task=n)
    todo = [m for m in methods if force or m not in cell["methods"]]
    if not todo:
        logger.info("%s: every method already measured (use --force to measure again)", key)
        return
    start = time.perf_counter()
    examples = parsed.examples(lambda: haystack)
    build_seconds = time.perf_counter() - start
    logger.info("%s: %d samples built in %.0f s", key, len(examples), build_seconds)
    loaded = build_methods(todo, model)
    for name, method in loaded.items():
        result = evaluate(method, examples, show_progress=True)
        result.update(
            {
                "model": model if name == "qrag" else None,
                "samples_per_task": n,
                "build_seconds": build_seconds,
                **provenance(),
            }
        )
        # Merge into the file as it is now: other runs (other cells or methods, timing checks) may have written to it.
        with results_store(paths[0]).updating() as latest:
            stored = latest["cells"].get(key)
            if stored is None or stored.get("samples_per_task") != n:
                stored = latest["cells"][key] = {"suite": suite, "length": length, "samples_per_task": n, "methods": {}}
            stored["methods"][name] = result
        write_markdown(latest, paths[1])
        logger.info(
            "%s %s: fact_f1 %.3f recall %.3f in %.0f s",
            key,
            name,
            result["fact_f1"],
            result["fact_recall"],
            result["seconds"],
        )


# ============================================================================================ markdown
def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def _task_score(result: dict[str, Any], task: str | None, metric: str) -> float | None:
    scores = result if task is None else result.get("per_task", {}).get(task)
    return None if scores is None else scores.get(metric)


def _method_order(cells: list[dict[str, Any]]) -> list[str]:
    present = {m for cell in cells for m in cell["methods"]}
    return [m for m in (*METHODS,) if m in present] + sorted(present - set(METHODS))


def _lengths(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(cells, key=lambda c: length_order(c["length"]))


def _provenance(cells: list[dict[str, Any]]) -> list[str]:
    """Sample counts, wall time, machine and command of each cell of a table."""
    lines = []
    for cell in cells:
        runs = cell["methods"].values()
        times = ", ".join(f"{name} {result['seconds']:.0f} s" for name, result in cell["methods"].items())
        commands = "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in runs))
        machines = "; ".join(dict.fromkeys(r["machine"] for r in runs))
        commits = ", ".join(dict.fromkeys(r["commit"] for r in runs))
        first = next(iter(runs))
        per_task = f"{first['samples_per_task']} per task" if first["samples_per_task"] else "the whole subset"
        lines.append(
            f"- **{cell['length'] or cell['suite']}**: {first['n']} samples ({per_task}); evaluation wall time "
            f"{times} (+{first['build_seconds']:.0f} s building samples); {machines}; commit {commits}; {commands}"
        )
    return lines


def _length_table(cells: list[dict[str, Any]], tasks: list[str], metric: str) -> list[str]:
    header = ["task", "method", *(f"{c['length']} (n={_n_per_task(c)})" for c in cells)]
    rows = []
    for task in [*tasks, None]:
        for method in _method_order(cells):
            values = []
            for cell in cells:
                result = cell["methods"].get(method)
                values.append(_fmt(None if result is None else _task_score(result, task, metric)))
            rows.append([task or "**all**", method, *values])
    return markdown_table(header, rows)


def _n_per_task(cell: dict[str, Any]) -> str:
    counts = {scores["n"] for result in cell["methods"].values() for scores in result.get("per_task", {}).values()}
    return str(counts.pop()) if len(counts) == 1 else "/".join(str(c) for c in sorted(counts))


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    cells = results["cells"]
    niah = _lengths([c for c in cells.values() if c["suite"] == "niah" and c["methods"]])
    open_domain = [cells[k] for k in ("hotpotqa", "musique") if k in cells and cells[k]["methods"]]
    out = [
        "# Benchmarks",
        "",
        "Generated by `benchmarks/run_baselines.py` from `benchmarks/results/baselines.json` (do not edit by hand;",
        "re-render with `python benchmarks/run_baselines.py --render-only`). Every method of a column runs on the",
        "same samples (seed 0; seed 1 for the second BabiLong draw) through `qrag_core.evaluation`. Methods:",
        "`dense` = single-step top-T cosine with the untrained all-MiniLM-L6-v2; `bm25` = top-T BM25 (bm25s);",
        "`multistep-untrained` = the Q-RAG search loop with untrained base encoders; `qrag` = a trained model's",
        "search (rows added with `--methods qrag --model`).",
        "T = 4 chunks for BabiLong and NIAH, 2 for HotpotQA, 4 for MuSiQue. Lengths count base-tokenizer tokens",
        "(k = 1024). Samples are built from the offline stand-ins of `../shared/data` (novels instead of PG19 and",
        "the Paul Graham essays, dev subsets of HotpotQA / MuSiQue), so absolute numbers are not comparable to",
        "published ones. `n` in a column header is the samples per task; below each table, per column: samples,",
        "wall time per method on this machine, and the command that produced it. Wall times include encoding the",
        "chunks not yet in the shared embedding cache (haystack sentences are pre-encoded by `qrag-data warm-cache`;",
        "needles, bAbI facts and paragraphs are encoded by the first method that meets them, usually `dense`).",
        "",
    ]
    if GOALS.is_file():  # the summary of the goals comes first; its figures come from the sections below
        out += [GOALS.read_text(encoding="utf-8").strip(), ""]
    for suite, name, columns in (
        ("babilong", "BabiLong QA1–QA5", "BabiLong columns"),
        ("babilong_other", BABILONG_OTHER_TITLE, "BabiLong second-draw columns"),
    ):
        babilong = _lengths([c for c in cells.values() if c["suite"] == suite and c["methods"]])
        if not babilong:
            continue
        for metric, title in (
            ("fact_recall", "fact recall@T"),
            ("fact_f1", "fact F1"),
            ("fact_em", "fact EM (all support facts retrieved)"),
        ):
            out += [f"## {name}: {title}", "", *_length_table(babilong, list(BABILONG_TASKS), metric), ""]
        out += [f"{columns}:", "", *_provenance(babilong), ""]
    if niah:
        out += [
            "## RULER NIAH: value recall (fraction of the asked needle values in the T selected chunks)",
            "",
            *_length_table(niah, list(NIAH_TASKS), "value_recall"),
            "",
            "NIAH columns:",
            "",
            *_provenance(niah),
            "",
        ]
    if open_domain:
        out += ["## HotpotQA (distractor) and MuSiQue-Ans: support paragraphs", ""]
        rows = [
            [cell["suite"], method, str(r["n"]), str(Cell(cell["suite"], None, None).steps)]
            + [_fmt(r[metric]) for metric in ("fact_em", "fact_recall", "fact_f1")]
            for cell in open_domain
            for method, r in ((m, cell["methods"][m]) for m in _method_order([cell]))
        ]
        out += markdown_table(["dataset", "method", "n", "T", "fact EM", "fact recall", "fact F1"], rows)
        out += ["", *_provenance(open_domain), ""]
    if results.get("timings"):
        out += [
            "## Timing checks",
            "",
            "Measured by `python benchmarks/time_eval.py` (a fresh `qrag-eval` process; the haystack already in the",
            "shared embedding cache via `qrag-data warm-cache`).",
            "",
        ]
        rows = [
            [c["what"], f"{c['seconds']:.1f}", str(c["limit_seconds"]), c["machine"], f"`{c['command']}`"]
            for c in results["timings"]
        ]
        out += [*markdown_table(["check", "seconds", "limit", "machine", "command"], rows), ""]
    for title, section in SECTIONS:
        if (ROOT / section).is_file():
            text = (ROOT / section).read_text().strip()
            if text.startswith("# "):  # a results page of its own: its title becomes the section's heading
                text = text.split("\n", 1)[1].strip().replace("\n## ", "\n### ")
            heading = [] if text.startswith("## ") else [f"## {title}", ""]
            out += [*heading, f"(from `{section}`)", "", text, ""]
    write_file(path, "\n".join(out).rstrip() + "\n")


# ============================================================================================ main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name, description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--cells",
        nargs="*",
        type=cell_argument,
        default=[],
        help="cells to measure, in order: suite[:length][:n], e.g. babilong:4k niah:32k:10 hotpotqa\n"
        f"(default n per task, None = the whole subset: {DEFAULT_SAMPLES})",
    )
    parser.add_argument(
        "--methods", nargs="+", choices=METHODS, default=list(BASELINES), help="methods (default: %(default)s)"
    )
    parser.add_argument("--model", default=None, help="model for the qrag method (default: the default model)")
    parser.add_argument("--force", action="store_true", help="measure (cell, method) pairs already in the JSON again")
    add_render_only_flag(parser, "only rewrite BENCHMARKS.md from the JSON")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results JSON (default: %(default)s)")
    parser.add_argument("--markdown", type=Path, default=MARKDOWN, help="markdown to write (default: %(default)s)")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    paths = (args.results, args.markdown)
    if not args.render_only:
        haystack = Haystack.load() if any(cell.suite in LENGTH_SUITES for cell in args.cells) else None
        for cell in args.cells:
            run_cell(load_results(args.results), cell, args.methods, args.model, args.force, haystack, paths)
    write_markdown(load_results(args.results), args.markdown)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
