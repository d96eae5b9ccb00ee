"""The beam-search benchmark script: every method on the same questions, and its report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qrag_core import QRAGConfig
from qrag_core.data.examples import Example
from tests.conftest import load_script, make_tiny_model

CHUNKS = [f"Room {i} holds the {thing}." for i, thing in enumerate(["lamp", "map", "key", "drum", "mask", "bell"])]


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/beam_search.py")


def test_greedy_then_every_width_with_every_ranking(script):
    names = [(name, options.beam, options.beam_score) for name, options in script.method_names([2, 4])]
    assert names == [
        ("greedy", 1, None),
        ("B=2 return", 2, "return"),
        ("B=2 sum", 2, "sum"),
        ("B=4 return", 4, "return"),
        ("B=4 sum", 4, "sum"),
    ]


def test_a_run_scores_every_method_on_the_same_questions_and_reports_them(
    script, minilm_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False)).save_pretrained(tmp_path / "model")
    examples = [
        Example(id=f"e{i}", question=f"where is the {t}?", chunks=CHUNKS, support=[i, 5]) for i, t in [(2, "key")]
    ]
    monkeypatch.setattr(script, "training_sets", lambda b4, b32: {"toy": examples, "toy-again": examples})
    monkeypatch.setattr(script, "STORE", script.ResultsStore(tmp_path / "r.json", lambda: {"models": {}}))
    monkeypatch.setattr(script, "MARKDOWN", tmp_path / "r.md")
    assert script.main(["--model", str(tmp_path / "model"), "--widths", "2", "--machine-note", "test"]) == 0
    entry = json.loads((tmp_path / "r.json").read_text())["models"][str(tmp_path / "model")]
    assert entry["sets"] == {"toy": 1, "toy-again": 1}
    assert set(entry["scores"]["toy"]) == {"greedy", "B=2 return", "B=2 sum"}
    assert entry["scores"]["toy"] == {
        m: {**s, "seconds": entry["scores"]["toy"][m]["seconds"]} for m, s in entry["scores"]["toy-again"].items()
    }, "the same questions give the same scores"
    text = (tmp_path / "r.md").read_text()
    assert "| questions (n) | greedy | B=2 return | B=2 sum |" in text and "| toy (1) |" in text
    assert "test" in text and "No test question was read" in text


def test_the_report_marks_the_best_method_of_each_set(script, tmp_path: Path):
    def s(em: float) -> dict:
        return {"fact_em": em, "fact_recall": em, "seconds": 1.0}

    qa3, hotpotqa = "babilong-train qa3 32k", "hotpotqa-train-heldout"
    scores = {"B=4 sum": s(0.775), "B=10 return": s(0.9), "B=4 return": s(0.975), "greedy": s(0.975)}
    entry = {"sets": {hotpotqa: 60, qa3: 40}, "scores": {hotpotqa: {"greedy": s(0.75)}, qa3: scores}}
    entry |= {"seconds": 3.0, "machine": "m", "commit": "c", "command": "x"}
    script.write_markdown({"models": {"another": entry, "qrag-minilm": entry}}, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| questions (n) | greedy | B=4 return | B=4 sum | B=10 return |" in text, "columns in a fixed order"
    assert (
        "| babilong-train qa3 32k (40) | **0.975 (0.975)** | **0.975 (0.975)** | 0.775 (0.775) | 0.900 (0.900) |"
        in text
    )
    assert "| hotpotqa-train-heldout (60) | **0.750 (0.750)** | — | — | — |" in text
    assert text.index(qa3) < text.index(hotpotqa), "BabiLong first, HotpotQA last"
    assert text.index("## qrag-minilm") < text.index("## another"), "the default model first"
