"""The training-split check script: the same questions for every model, interpolated models, its report."""

from __future__ import annotations

import json

import pytest
import torch

from qrag_core import QRAGConfig
from qrag_core.data.examples import Example, write_jsonl
from tests.conftest import load_script, make_tiny_model

CHUNKS = [f"Room {i} holds the {thing}." for i, thing in enumerate(["lamp", "map", "key", "drum", "mask", "bell"])]


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/training_split_check.py")


@pytest.fixture()
def models(minilm_tokenizer, tmp_path):
    """A start model and a fine-tune of it (another state encoder, the same action transformer), saved."""
    config = QRAGConfig(freeze_action_encoder=False)  # saved whole: a tiny action transformer has no base
    start = make_tiny_model(minilm_tokenizer, config)
    start.save_pretrained(tmp_path / "start")
    tuned = make_tiny_model(minilm_tokenizer, config)
    with torch.no_grad():
        for p in tuned.state_encoder.parameters():
            p.add_(0.1 * torch.randn_like(p))
    tuned.weights_changed()
    tuned.save_pretrained(tmp_path / "tuned")
    return tmp_path / "start", tmp_path / "tuned"


def test_the_untrained_set_leaves_out_the_questions_of_the_training_files(script, tmp_path):
    held = [
        Example(id=f"babilong-qa3-train-{length}-{q}", question="?", chunks=["a."], support=[0])
        for length, q in [("1k", 7), ("4k", 9)]
    ]
    other = Example(id="hotpotqa-3", question="?", chunks=["a."], support=[0], ordered=False)
    write_jsonl([*held, other], tmp_path / "train.jsonl")
    assert script.trained_questions([tmp_path / "train.jsonl"]) == {"7", "9"}
    assert script.question_key("babilong-qa3-train-32k-1537") == "1537"


def test_an_interpolated_model_at_weight_0_is_the_start(script, models):
    start, tuned = models
    name, spec = script.interpolated_spec(f"start-again={start},{tuned},0")
    assert (name, spec) == ("start-again", (str(start), str(tuned), 0.0))
    model, reference = script.load_model(spec), script.load_model(str(start))
    for (name, p), q in zip(model.state_dict().items(), reference.state_dict().values(), strict=True):
        assert torch.allclose(p.float(), q.float(), atol=1e-3), name


def test_a_run_checks_every_model_on_the_same_questions_and_reports_them(script, models, tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    start, tuned = models
    documents = [
        Example(id=f"d{i}", question=f"where is the {t}?", chunks=CHUNKS, support=[i, 5])
        for i, t in [(1, "map"), (2, "key")]
    ]
    passages = [Example(id="p0", question="which room holds the drum?", chunks=CHUNKS, support=[3], ordered=False)]
    monkeypatch.setattr(script, "check_sets", lambda files: {"qa3_4k": documents, "hotpotqa_held_out": passages})
    monkeypatch.setattr(script, "RESULTS", tmp_path / "r.json")
    monkeypatch.setattr(script, "MARKDOWN", tmp_path / "r.md")
    argv = ["--model", f"start={start}", "--interpolated", f"half={start},{tuned},0.5", "--passage-weights", "0.3"]
    assert script.main([*argv, "--threads", "1", "--machine-note", "test"]) == 0
    results = json.loads((tmp_path / "r.json").read_text())["models"]
    assert set(results) == {"start", "half"}
    assert results["half"]["interpolated"] and not results["start"]["interpolated"]
    for entry in results.values():
        assert {k: v["n"] for k, v in entry.items() if isinstance(v, dict) and "n" in v} == {
            "qa3_4k": 2,
            "hotpotqa_held_out_w0": 1,
            "hotpotqa_held_out_w0.3": 1,
        }
    text = (tmp_path / "r.md").read_text()
    assert "| model | qa3_4k (n = 2) | hotpotqa_held_out_w0 (n = 1) | hotpotqa_held_out_w0.3 (n = 1) |" in text
    assert "| start |" in text and "| half |" in text and "test" in text
    assert text.count(" | 1 |") == 2 and "\n1. `" in text and "\n2. `" not in text, "both rows come from one run"


@pytest.mark.parametrize(
    "argv",
    [["--model", "no-name"], ["--interpolated", "x=a,b"], ["--interpolated", "x=a,b,1.5"], []],
)
def test_bad_model_specs_are_refused_before_anything_runs(script, argv, capsys):
    if argv:
        with pytest.raises(SystemExit):
            script.main(argv)
    else:
        assert script.main(argv) != 0
    assert "error" in capsys.readouterr().err
