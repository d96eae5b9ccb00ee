"""What every benchmark script shares: cells, their samples, provenance, the results store, tables, memory.

A **cell** is written ``suite[:length][:n]``: ``babilong`` (QA1–QA5 test samples of
``babilong/test_100_idxs.json``), ``babilong_other`` (the second BabiLong test draw: other bAbI test
questions at other haystack positions, seed 1), ``niah`` (the eight RULER variants), ``qa_hotpotqa``
(HotpotQA in a haystack), ``hotpotqa`` or ``musique`` (the first ``n`` questions of the shared subsets);
``n`` is the number of samples per task, ``all`` or left out for the suite's default
(:data:`DEFAULT_SAMPLES`). Samples are built deterministically (seed 0 unless the suite says otherwise),
so every method measured on a cell, in any run, sees the same samples. T, the chunks retrieved per
question, comes from :mod:`qrag_core.evaluation` (``TASK_STEPS``, ``DEFAULT_STEPS``).

Results live in JSON files written through :class:`ResultsStore`: every update re-reads the file under
an exclusive lock, merges, and replaces it atomically, so several benchmark runs may go at once.

The scripts (``run_baselines.py``, ``default_model.py``, ``time_eval.py``, …) import this module as
their sibling; they are thin front-ends over it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from qrag_core.data.babilong import BABILONG_TASKS, iter_babilong, length_label, parse_length
from qrag_core.data.examples import Example
from qrag_core.data.haystack import Haystack
from qrag_core.data.hotpotqa import iter_hotpotqa
from qrag_core.data.musique import iter_musique
from qrag_core.data.ruler import NIAH_TASKS, iter_niah
from qrag_core.data.ruler_qa import iter_ruler_qa
from qrag_core.errors import InvalidInputError, QRAGError
from qrag_core.evaluation import DEFAULT_STEPS, TASK_STEPS
from qrag_core.machine import machine_description
from qrag_core.model_names import DEFAULT_MODEL_NAME

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BABILONG_DRAWS = {"babilong": ("official", 0), "babilong_other": ("other", 1)}
"""The BabiLong suites: their test draw (:mod:`qrag_core.data.babilong`) and seed."""
BABILONG_OTHER_TITLE = (
    "BabiLong QA1–QA5, second test draw: other bAbI test questions, other haystack positions (seed 1)"
)
"""How tables name the ``babilong_other`` suite."""
SUITES = ("babilong", "babilong_other", "niah", "hotpotqa", "musique", "qa_hotpotqa")
LENGTH_SUITES = ("babilong", "babilong_other", "niah", "qa_hotpotqa")
"""Suites whose samples are built at a document length (a cell names it)."""
DEFAULT_SAMPLES: dict[str, int | None] = {
    "babilong": 100,
    "babilong_other": 100,
    "niah": 100,
    "hotpotqa": None,
    "musique": None,
    "qa_hotpotqa": 100,
}
"""Samples per task when a cell does not say (None: the whole shared subset)."""


class BenchmarkError(QRAGError):
    """A benchmark run that cannot go on (results measured differently, a step that failed); its script
    reports it as one line and exit status 2, as every tool does (:mod:`qrag_core.cli`)."""


class CellError(BenchmarkError, InvalidInputError):
    """A cell written wrongly."""


class Cell(NamedTuple):
    """One benchmark cell: a suite, a document length (BabiLong, NIAH, HotpotQA in a haystack) and samples per
    task."""

    suite: str
    length: str | None
    n: int | None
    """Samples per task; None: the whole subset."""

    @property
    def key(self) -> str:
        """``suite`` or ``suite/length``: how results name the cell."""
        return self.suite if self.length is None else f"{self.suite}/{self.length}"

    @property
    def spec(self) -> str:
        """The cell written out in full, ``suite[:length]:n`` (``all`` for the whole subset)."""
        return ":".join([self.suite, *([self.length] if self.length else []), "all" if self.n is None else str(self.n)])

    @property
    def steps(self) -> int:
        """T for this suite when a run does not set it."""
        return TASK_STEPS.get(self.suite, DEFAULT_STEPS)

    def examples(self, haystack: Callable[[], Haystack]) -> list[Example]:
        """The cell's samples, built deterministically; ``haystack`` loads the novels when they are needed."""
        if self.suite in BABILONG_DRAWS:
            draw, seed = BABILONG_DRAWS[self.suite]
            background = haystack() if parse_length(self.length or 0) > 0 else None
            return [
                e
                for task in BABILONG_TASKS
                for e in iter_babilong(task, "test", self.length, self.n, seed, background, draw=draw)
            ]
        if self.suite == "niah":
            return [e for task in NIAH_TASKS for e in iter_niah(task, self.length, self.n, 0, haystack())]
        if self.suite == "hotpotqa":
            return list(iter_hotpotqa(self.n))
        if self.suite == "qa_hotpotqa":
            return list(iter_ruler_qa("qa_hotpotqa", self.length or "", self.n or 297, 0, haystack=None))
        return list(iter_musique(self.n))


def parse_cell(spec: str) -> Cell:
    """``suite[:length][:n]`` → :class:`Cell`; a wrongly written cell is a :class:`CellError`."""
    suite, *rest = spec.split(":")
    if suite not in SUITES:
        raise CellError(f"unknown suite in cell {spec!r}; use one of {', '.join(SUITES)}")
    length = None
    if suite in LENGTH_SUITES:
        if not rest:
            raise CellError(f"cell {spec!r}: {suite} needs a length, e.g. {suite}:4k")
        length = length_label(rest.pop(0))
    if len(rest) > 1:
        raise CellError(f"cell {spec!r} has too many parts; write suite[:length][:n]")
    if not rest:
        return Cell(suite, length, DEFAULT_SAMPLES[suite])
    if rest[0] == "all":
        if suite in ("niah", "qa_hotpotqa"):
            raise CellError(f"cell {spec!r}: {suite} samples are generated, so give their number, e.g. {suite}:4k:50")
        return Cell(suite, length, None)
    try:
        n = int(rest[0])
    except ValueError:
        raise CellError(f"cell {spec!r}: samples per task must be a number or 'all', got {rest[0]!r}") from None
    if n <= 0:
        raise CellError(f"cell {spec!r}: samples per task must be positive")
    return Cell(suite, length, n)


def cell_argument(spec: str) -> Cell:
    """argparse ``type`` of a cell option: a wrongly written cell is a usage error before any work starts."""
    try:
        return parse_cell(spec)
    except CellError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_render_only_flag(
    parser: argparse.ArgumentParser, help: str = "only rewrite the markdown from the JSON"
) -> None:
    """``--render-only``: measure nothing, only write the report again from the results stored so far."""
    parser.add_argument("--render-only", action="store_true", help=help)


def add_model_flag(parser: argparse.ArgumentParser) -> None:
    """``--model``: the model measured, a name or a directory (default: the shipped default model)."""
    parser.add_argument("--model", default=DEFAULT_MODEL_NAME, help="model name or path (default: %(default)s)")


def lazy_haystack() -> Callable[[], Haystack]:
    """A loader of the haystack novels that reads them on first use only (open-domain cells need none)."""
    loaded: list[Haystack] = []

    def load() -> Haystack:
        if not loaded:
            loaded.append(Haystack.load())
        return loaded[0]

    return load


# ============================================================================================ provenance
def git_commit() -> str:
    """The short commit of the working tree the benchmark runs from ("unknown" outside git)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def provenance(note: str = "") -> dict[str, str]:
    """Where and how a measurement was made: ``machine`` (with ``note``), ``command``, ``commit``, ``finished``."""
    return {
        "machine": machine_description(note),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        "commit": git_commit(),
        "finished": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


# ============================================================================================ results
class ResultsStore:
    """A JSON results file that several benchmark processes update at once without losing entries."""

    def __init__(self, path: Path, empty: Callable[[], dict[str, Any]]) -> None:
        self.path = Path(path)
        self.empty = empty
        """Makes the content of a results file that does not exist yet."""

    def load(self) -> dict[str, Any]:
        if self.path.is_file():
            return json.loads(self.path.read_text(encoding="utf-8"))
        return self.empty()

    @contextlib.contextmanager
    def updating(self) -> Iterator[dict[str, Any]]:
        """Yields the file's current content under an exclusive lock and writes it back (atomically) after."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            results = self.load()
            yield results
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(results, indent=1, sort_keys=True), encoding="utf-8")
            os.replace(tmp, self.path)


# ============================================================================================ memory
def memory_kb(field: str) -> int:
    """A memory figure of this process from /proc/self/status (``VmRSS``, ``VmHWM``), in kB."""
    status = Path("/proc/self/status").read_text(encoding="ascii")
    match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"/proc/self/status has no {field} line: Linux is needed to measure memory")
    return int(match.group(1))


def reset_peak_rss() -> None:
    """Make the peak resident memory of this process (Linux ``VmHWM``) its current resident memory."""
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")


# ============================================================================================ tables
def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def length_order(length: str | None) -> int:
    """Sort key of a length label (cells without a length first)."""
    return parse_length(length) if length else 0
