"""The encoding-backend benchmark script: every backend timed on the same sentences, every index scored."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import load_script

pytestmark = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs qrag[onnx]")


def test_a_small_run_times_every_backend_and_scores_each_index(tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    script = load_script("benchmarks/encoding_speed.py")
    argv = ["--threads", "1", "--sentences", "24", "--rounds", "1", "--cells", "hotpotqa:3", "--out", str(tmp_path)]
    assert script.main([*argv, "--machine-note", "test"]) == 0
    result = json.loads((tmp_path / "encoding_speed.json").read_text())
    methods = result["throughput"]["methods"]
    assert list(methods) == ["sentence-transformers", "qrag torch", "qrag torch-bf16", "qrag onnx", "qrag onnx-int8"]
    assert methods["sentence-transformers"]["vs_sentence_transformers"] == 1.0
    assert methods["qrag onnx"]["cosine_to_torch_min"] > 0.9999
    assert 0.95 < methods["qrag torch-bf16"]["cosine_to_torch_min"] < 1.0, "bfloat16 is close to float32, not equal"
    (quality,) = result["quality"]
    assert quality["samples"] == 3 and list(quality["scores"]) == ["torch", "torch-bf16", "onnx-int8"]
    scores = quality["scores"]
    for backend, difference in quality["fact_em_difference"].items():
        assert difference == pytest.approx(scores[backend]["fact_em"] - scores["torch"]["fact_em"])
    text = (tmp_path / "encoding_speed.md").read_text()
    assert "| qrag torch-bf16 |" in text and "Fact EM difference against torch: torch-bf16 " in text
    assert "test" in text.split("Command:")[0], "the machine note is in the report"
