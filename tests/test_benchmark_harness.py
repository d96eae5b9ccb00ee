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


def test_the_second_babilong_draw_is_a_length_suite_of_other_questions(harness) -> None:
    from qrag_core.data.babilong import BABILONG_TASKS, babilong_test_indices, iter_babilong

    cell = harness.parse_cell("babilong_other:32k:10")
    assert cell == ("babilong_other", "32k", 10) and cell.key == "babilong_other/32k" and cell.steps == 4
    assert harness.parse_cell("babilong_other:32k") == ("babilong_other", "32k", 100)
    with pytest.raises(InvalidInputError, match="needs a length"):
        harness.parse_cell("babilong_other")
    haystack = harness.lazy_haystack()
    examples = harness.parse_cell("babilong_other:1k:2").examples(haystack)
    expected = [e for t in BABILONG_TASKS for e in iter_babilong(t, "test", "1k", 2, 1, haystack(), draw="other")]
    assert examples == expected and len(examples) == 2 * len(BABILONG_TASKS)
    for example in examples:
        task = example.extra["task"]
        assert example.id.startswith(f"babilong-{task}-test-other-1k-") and example.extra["draw"] == "other"
        assert int(example.id.rsplit("-", 1)[1]) not in babilong_test_indices(task)


def _baselines_cell(suite: str, length: str, fact_em: float) -> dict:
    scores = {"n": 2, "fact_recall": fact_em, "fact_f1": fact_em, "fact_em": fact_em}
    result = {
        **scores,
        "n": 10,
        "per_task": {task: scores for task in ("qa1", "qa2", "qa3", "qa4", "qa5")},
        "seconds": 3.0,
        "build_seconds": 1.0,
        "samples_per_task": 2,
        "machine": "Test CPU",
        "command": f"benchmarks/run_baselines.py --cells {suite}:{length}:2",
        "commit": "abc1234",
    }
    return {"suite": suite, "length": length, "samples_per_task": 2, "methods": {"dense": result}}


def test_run_baselines_renders_the_second_babilong_draw_in_its_own_tables(harness, tmp_path: Path) -> None:
    script = load_script("benchmarks/run_baselines.py")
    title = "## BabiLong QA1–QA5, second test draw: other bAbI test questions, other haystack positions (seed 1)"
    official = {"babilong/1k": _baselines_cell("babilong", "1k", 0.25)}
    out = tmp_path / "BENCHMARKS.md"
    script.write_markdown({"cells": official}, out)
    # At a line start: the appended default-model section has a "###" heading of the same title once measured.
    assert "## BabiLong QA1–QA5: fact EM" in out.read_text() and f"\n{title}" not in out.read_text()

    both = {**official, "babilong_other/1k": _baselines_cell("babilong_other", "1k", 0.75)}
    script.write_markdown({"cells": both}, out)
    text = out.read_text()
    official_part, other_part = text.split(f"{title}: fact recall@T", 1)
    assert f"{title}: fact EM (all support facts retrieved)" in other_part
    assert "0.750" in other_part.split("## RULER")[0] and "0.750" not in official_part
    assert "0.250" in official_part and "0.250" not in other_part.split("BabiLong second-draw columns")[0]
    assert "--cells babilong_other:1k:2" in other_part


def _default_model_entry(suite: str, method: str, fact_em: float) -> dict:
    scores = {"n": 2, "fact_em": fact_em, "fact_f1": fact_em}
    return {
        "suite": suite,
        "length": "32k",
        "method": method,
        "steps": None,
        "n": 10,
        "fact_em": fact_em,
        "per_task": {task: scores for task in ("qa1", "qa2", "qa3", "qa4", "qa5")},
        "seconds": 5.0,
        "machine": "Test CPU",
        "command": f"python benchmarks/default_model.py --cells {suite}:32k:2",
    }


def test_default_model_renders_the_second_babilong_draw_once_measured() -> None:
    script = load_script("benchmarks/default_model.py")
    title = "### BabiLong QA1–QA5, second test draw: other bAbI test questions, other haystack positions (seed 1)"
    results = {"entries": {"babilong/32k|qrag": _default_model_entry("babilong", "qrag", 0.25)}}
    assert "### BabiLong QA1–QA5: fact EM" in script.render(results) and title not in script.render(results)

    results["entries"]["babilong_other/32k|qrag"] = _default_model_entry("babilong_other", "qrag", 0.75)
    results["entries"]["babilong_other/32k|dense"] = _default_model_entry("babilong_other", "dense", 0.5)
    official, other = script.render(results).split(f"{title}: fact EM", 1)
    other = other.split("### RULER NIAH")[0]
    assert "**0.250**" in official and "0.750" not in official
    assert "**0.750**" in other and "| 32k | 4 | dense | 2 | 0.50 |" in other and "0.250" not in other
