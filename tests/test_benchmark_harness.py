"""The shared benchmark harness (benchmarks/harness.py): cell grammar, T per suite, the locked results store."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from pathlib import Path

import pytest

from qrag_core.errors import InvalidInputError
from tests.conftest import load_script


@pytest.fixture(scope="module")
def harness():
    return load_script("benchmarks/harness.py")


def test_cells_parse_with_the_suite_defaults(harness) -> None:
    assert harness.parse_cell("babilong:4k") == ("babilong", "4k", 100)
    assert harness.parse_cell("niah:4096") == ("niah", "4k", 100)
    assert harness.parse_cell("babilong:1M:all") == ("babilong", "1M", None)
    cell = harness.parse_cell("hotpotqa:20")
    assert (cell.key, cell.steps, cell.n) == ("hotpotqa", 2, 20)
    assert harness.parse_cell("babilong:32k:5").key == "babilong/32k"
    assert harness.parse_cell("babilong:32k:5").steps == 4
    cell = harness.parse_cell("qa_hotpotqa:32k:3")
    assert (cell.key, cell.steps, cell.n) == ("qa_hotpotqa/32k", 2, 3)
    examples = cell.examples(harness.lazy_haystack())
    assert len(examples) == 3 and not examples[0].ordered and examples[0].extra["task"] == "qa_hotpotqa"


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("squad", "unknown suite"),
        ("niah", "needs a length"),
        ("babilong:4k:5:6", "too many parts"),
        ("musique:five", "must be a number"),
        ("musique:0", "must be positive"),
        ("niah:4k:all", "give their number"),
        ("qa_hotpotqa:32k:all", "give their number"),
        ("qa_hotpotqa", "needs a length"),
    ],
)
def test_badly_written_cells_are_refused_with_the_problem(harness, spec: str, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        harness.parse_cell(spec)
    with pytest.raises(argparse.ArgumentTypeError, match=problem):  # a cell option: argparse's usage error
        harness.cell_argument(spec)


def _add_entries(path: str, first: int) -> None:
    store = load_script("benchmarks/harness.py").ResultsStore(Path(path), lambda: {"entries": {}})
    for i in range(first, first + 20):
        with store.updating() as results:
            results["entries"][str(i)] = i


def test_results_store_keeps_every_entry_of_concurrent_writers(harness, tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_add_entries, args=(str(path), first)) for first in (0, 100)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
        assert writer.exitcode == 0
    entries = json.loads(path.read_text())["entries"]
    assert sorted(map(int, entries)) == [*range(20), *range(100, 120)]
    assert harness.ResultsStore(path, dict).load()["entries"] == entries


def test_provenance_describes_the_machine_as_the_model_card_does(harness, monkeypatch) -> None:
    import torch

    from qrag_core import machine

    monkeypatch.setattr(machine, "cpu_model", lambda: "Test CPU 9000")
    monkeypatch.setattr(machine.os, "cpu_count", lambda: 7)
    threads = torch.get_num_threads()
    described = harness.provenance("other jobs running")["machine"]
    assert described == machine.machine_description("other jobs running")
    assert described.startswith("Test CPU 9000, 7 cores, ")
    assert f", {threads} torch thread(s), torch {torch.__version__}; other jobs running" in described
    assert ";" not in machine.machine_description()


def test_default_model_benchmark_measures_other_saved_models_next_to_the_default() -> None:
    script = load_script("benchmarks/default_model.py")
    args = script.build_parser().parse_args(["--also", "old-default", "/some/model", "--methods", "qrag", "dense"])
    assert list(script.build_methods(args)) == ["qrag", "old-default", "dense"]  # nothing is loaded yet
    names = ["bm25", "old-default", "qrag-babilong-minilm", "qrag", "qrag-stop"]
    assert sorted(names, key=script._method_key) == ["qrag", "qrag-stop", "old-default", "qrag-babilong-minilm", "bm25"]
