"""The evaluation loop, the baselines and the qrag-eval CLI."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from qrag_core.baselines import BM25TopK, DenseTopK, QRAGSearch, make_method
from qrag_core.chunking import Chunk
from qrag_core.cli import from_flags
from qrag_core.cli.evaluate import build_parser as eval_parser
from qrag_core.cli.evaluate import main as eval_main
from qrag_core.data.examples import Example
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import InvalidInputError
from qrag_core.evaluation import evaluate, steps_for
from qrag_core.index import DocumentIndex
from qrag_core.search import search
from qrag_core.search_options import SearchOptions
from tests.conftest import load_script, make_tiny_encoder
from tests.test_data_builders import needs_data

CHUNKS = [
    "Mary moved to the bathroom.",
    "The zebra ate grass by the river.",
    "John went to the hallway.",
    "It had rained all night.",
    "Mary went back to the kitchen.",
    "The clock struck nine.",
]


class FixedSelection:
    """A method that always selects the same chunk indices (to check the loop's arithmetic)."""

    name = "fixed"

    def __init__(self, indices: list[int]) -> None:
        self.indices = indices
        self.calls: list[int] = []

    def select(self, question: str, chunks: Sequence[Chunk], steps: int, ordered: bool = True) -> list[int]:
        self.calls.append(steps)
        return self.indices[:steps]


def _example(i: int, support: list[int], task: str | None = "qa1", **extra: object) -> Example:
    fields = {"task": task, **extra} if task else dict(extra)
    return Example(id=f"e{i}", question="Where is Mary?", chunks=list(CHUNKS), support=support, extra=fields)


def test_evaluate_aggregates_overall_and_per_task() -> None:
    examples = [_example(0, [0, 4]), _example(1, [2]), _example(2, [4], task="qa2")]
    result = evaluate(FixedSelection([0, 4]), examples, steps=2)
    assert result["n"] == 3
    assert result["fact_em"] == pytest.approx(2 / 3)
    assert result["fact_recall"] == pytest.approx(2 / 3)
    # F1 per example: 1, 0, 2/3.
    assert result["fact_f1"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert result["per_task"]["qa1"] == {
        "n": 2,
        "fact_em": 0.5,
        "fact_recall": 0.5,
        "fact_precision": 0.5,
        "fact_f1": 0.5,
    }
    assert result["per_task"]["qa2"]["fact_f1"] == pytest.approx(2 / 3)
    assert result["seconds"] >= 0 and result["method"] == "fixed"


def test_evaluate_breaks_scores_down_by_question_type() -> None:
    examples = [
        _example(0, [0, 4], task="hotpotqa", type="bridge"),
        _example(1, [2], task="hotpotqa", type="bridge"),
        _example(2, [4], task="musique", hops="3hop"),
        _example(3, [0], task="hotpotqa"),  # names no type: counted overall only
    ]
    result = evaluate(FixedSelection([0, 4]), examples, steps=2)
    assert result["n"] == 4 and set(result["per_type"]) == {"bridge", "3hop"}
    assert result["per_type"]["bridge"]["n"] == 2 and result["per_type"]["bridge"]["fact_em"] == 0.5
    assert result["per_type"]["3hop"]["fact_em"] == 1.0
    assert "per_type" not in evaluate(FixedSelection([0]), [_example(0, [0])], steps=1)


def test_steps_default_by_task_and_capped_by_chunk_count() -> None:
    assert steps_for(_example(0, [0], task="hotpotqa"), None) == 2
    assert steps_for(_example(0, [0], task="musique"), None) == 4
    assert steps_for(_example(0, [0], task="qa3"), None) == 4
    assert steps_for(_example(0, [0], task="hotpotqa"), 3) == 3
    method = FixedSelection([0, 1])
    short = Example(id="s", question="q?", chunks=["a.", "b."], support=[1])
    evaluate(method, [short], steps=5)
    assert method.calls == [2]


def test_evaluate_value_recall_reader_and_document_form() -> None:
    document = " ".join(CHUNKS)
    example = Example(
        id="d",
        question="Where is Mary?",
        document=document,
        answer="kitchen",
        supporting_facts=["Mary went back to the kitchen."],
        extra={"task": "qa1", "values": ["kitchen", "garden"]},
    )
    seen: list[list[str]] = []

    def reader(question: str, texts: Sequence[str]) -> str:
        seen.append(list(texts))
        return "The kitchen."

    result = evaluate(FixedSelection([4, 0]), [example], steps=2, reader=reader)
    assert result["fact_em"] == 1.0
    assert result["value_recall"] == 0.5
    assert result["answer_accuracy"] == 1.0
    assert seen == [[CHUNKS[0], CHUNKS[4]]]  # the reader sees the chunks in document order


def test_evaluate_rejects_examples_without_support_and_empty_input() -> None:
    with pytest.raises(InvalidInputError, match="no support"):
        evaluate(FixedSelection([0]), [Example(id="x", question="q?", chunks=["a."])])
    with pytest.raises(InvalidInputError, match="no examples"):
        evaluate(FixedSelection([0]), [])


def test_dense_baseline_ranks_identical_text_first_and_uses_cache(tiny_model) -> None:
    cache = EmbeddingCache()
    dense = DenseTopK(tiny_model, cache)
    example = Example(id="z", question=CHUNKS[3], chunks=list(CHUNKS), support=[3])
    result = evaluate(dense, [example], steps=1)
    assert result["fact_em"] == 1.0
    assert len(cache.get_many(tiny_model.action_encoder.fingerprint(), CHUNKS)) == len(CHUNKS)


def test_bm25_baseline_finds_the_rare_word() -> None:
    example = Example(id="b", question="What did the zebra eat?", chunks=list(CHUNKS), support=[1])
    assert evaluate(BM25TopK(), [example], steps=1)["fact_em"] == 1.0
    assert len(BM25TopK().select("zebra", [Chunk(t, i) for i, t in enumerate(CHUNKS)], 3)) == 3


def test_qrag_search_method_restores_training_mode(tiny_model) -> None:
    tiny_model.train()
    method = QRAGSearch(tiny_model, EmbeddingCache())
    result = evaluate(method, [_example(0, [0, 4])], steps=3)
    assert result["n"] == 1 and 0.0 <= result["fact_f1"] <= 1.0
    assert tiny_model.training


def test_the_search_flags_reach_the_qrag_method(tiny_model) -> None:
    args = eval_parser().parse_args(["--data", "d.jsonl", "--steps", "2", "--beam", "3", "--expand-k", "4"])
    options = from_flags(SearchOptions, args)
    assert options == SearchOptions(beam=3, expand_k=4) and args.steps == 2, "T stays the evaluation's"
    method = make_method("qrag", tiny_model, None, options)
    assert isinstance(method, QRAGSearch) and method.options == options
    chunks = [Chunk(t, i) for i, t in enumerate(CHUNKS)]
    wide = search(tiny_model, "zebra", DocumentIndex.build(tiny_model, [chunks]), options, k=2)
    assert method.select("zebra", chunks, 2) == [s.chunk.index for s in wide.chunks]


def test_make_method_rejects_unknown_names() -> None:
    with pytest.raises(InvalidInputError, match="unknown method"):
        make_method("tfidf")
    assert make_method("bm25").name == "bm25"


# ----------------------------------------------------------------------------- qrag-eval CLI
def _write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


ROWS = [
    {"id": "a", "question": "Where is the zebra?", "chunks": CHUNKS, "support": [1], "task": "qa1"},
    {"id": "b", "question": "Where is Mary?", "chunks": CHUNKS, "support": [0, 4], "task": "qa2"},
    {"id": "c", "question": "Where is John?", "document": " ".join(CHUNKS), "supporting_facts": [CHUNKS[2]]},
]


@pytest.fixture()
def tiny_base_dir(tmp_path: Path, minilm_tokenizer) -> Path:
    """A tiny random encoder saved as a plain transformers directory (a base model for every method)."""
    directory = tmp_path / "tiny-base"
    make_tiny_encoder(minilm_tokenizer, seed=3).save(str(directory))
    return directory


def test_eval_malformed_line_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text(json.dumps(ROWS[0]) + "\n" + '{"question": "q?", "chunks": ["a."], "support": [3]}\n')
    assert eval_main(["--data", str(data), "--method", "bm25", "--json"]) != 0
    captured = capsys.readouterr()
    assert f"{data}:2:" in captured.err and "support" in captured.err
    assert captured.out == ""
    data.write_text("{not json\n")
    assert eval_main(["--data", str(data), "--method", "bm25"]) != 0
    assert f"{data}:1: invalid JSON" in capsys.readouterr().err


def test_eval_rows_without_support_are_rejected(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_rows(tmp_path / "nosupport.jsonl", [{"question": "q?", "chunks": ["a.", "b."]}])
    assert eval_main(["--data", str(data), "--method", "bm25"]) == 2
    assert f"{data}:1: training needs support labels" in capsys.readouterr().err


@pytest.mark.parametrize("method", ["qrag", "dense", "bm25", "multistep-untrained"])
def test_eval_json_schema_for_each_method(
    tmp_path: Path, tiny_base_dir: Path, method: str, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _write_rows(tmp_path / "small.jsonl", ROWS)
    args = ["--data", str(data), "--method", method, "--json", "--steps", "2", "--model", str(tiny_base_dir)]
    assert eval_main([*args, "--cache", str(tmp_path / "cache.sqlite"), "--quiet"]) == 0
    out = capsys.readouterr().out
    result = json.loads(out)  # exactly one JSON object: anything else on stdout fails to parse
    assert out.strip().count("\n") == 0
    assert {"n", "fact_em", "fact_recall", "fact_f1", "seconds", "per_task"} <= result.keys()
    assert result["n"] == 3 and result["method"] == method
    assert set(result["per_task"]) == {"qa1", "qa2"} and result["per_task"]["qa1"]["n"] == 1
    assert all(0.0 <= result[k] <= 1.0 for k in ("fact_em", "fact_recall", "fact_f1"))


def test_eval_table_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = _write_rows(tmp_path / "small.jsonl", ROWS)
    assert eval_main(["--data", str(data), "--method", "bm25", "--limit", "2", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("method: bm25") and "fact_f1" in lines[1]
    assert lines[-1].split()[:2] == ["all", "2"]
    with pytest.raises(SystemExit) as exit_info:  # a bad option is argparse's usage error
        eval_main(["--data", str(data), "--method", "bm25", "--steps", "0"])
    assert exit_info.value.code == 2 and "--steps: must be a positive integer" in capsys.readouterr().err
    assert eval_main(["--data", str(tmp_path / "missing.jsonl"), "--method", "bm25"]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.slow
@needs_data
def test_eval_default_model_end_to_end_on_babilong(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real MiniLM, no --model (the default model), on BabiLong samples written by qrag-data."""
    from qrag_core.cli.data import main as data_main

    data = tmp_path / "qa1_1k.jsonl"
    assert data_main(["babilong", "--task", "qa1", "--length", "1k", "--n", "3", "--out", str(data)]) == 0
    args = ["--data", str(data), "--json", "--quiet", "--cache", str(tmp_path / "cache.sqlite")]
    assert eval_main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 3 and result["method"] == "qrag" and set(result["per_task"]) == {"qa1"}
    assert eval_main([*args, "--method", "dense"]) == 0
    dense = json.loads(capsys.readouterr().out)
    # One support fact among ~60 sentences: the base encoder finds it within its top 4 at least once.
    assert dense["fact_recall"] > 0.0


# ----------------------------------------------------------------------------- benchmarks/run_baselines.py
def _load_benchmark_script():
    return load_script("benchmarks/run_baselines.py")


def test_benchmark_cells_parse() -> None:
    script = _load_benchmark_script()
    assert script.build_parser().parse_args(["--cells", "babilong:4k"]).cells == [("babilong", "4k", 100)]
    script = load_script("benchmarks/harness.py")  # the one parse_cell every script uses
    assert script.parse_cell("babilong:4k") == ("babilong", "4k", 100)
    assert script.parse_cell("niah:32768:10") == ("niah", "32k", 10)
    assert script.parse_cell("hotpotqa") == ("hotpotqa", None, None)
    assert script.parse_cell("musique:20") == ("musique", None, 20)
    with pytest.raises(InvalidInputError, match="needs a length"):
        script.parse_cell("babilong")
    with pytest.raises(InvalidInputError, match="unknown suite"):
        script.parse_cell("squad")


@needs_data
def test_benchmark_script_writes_json_and_tables(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = _load_benchmark_script()
    results, markdown = tmp_path / "r.json", tmp_path / "B.md"
    paths = ["--results", str(results), "--markdown", str(markdown)]
    assert script.main(["--cells", "musique:3", "babilong:0k:2", "--methods", "bm25", *paths]) == 0
    stored = json.loads(results.read_text())
    assert stored["cells"]["musique"]["methods"]["bm25"]["n"] == 3
    assert stored["cells"]["babilong/0k"]["methods"]["bm25"]["n"] == 10  # 2 per task, 5 tasks
    text = markdown.read_text()
    assert "| musique | bm25 | 3 | 4 |" in text and "| **all** | bm25 |" in text and "0k (n=2)" in text
    capsys.readouterr()
    assert script.main(["--cells", "musique:4", "--methods", "bm25", *paths]) == 2
    assert capsys.readouterr().err.startswith("run_baselines.py: error: musique was measured with 3 samples per task")
