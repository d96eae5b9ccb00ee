"""The scale benchmark script: a document indexed with the chosen backend, reloaded and queried."""

from __future__ import annotations

import json

from tests.conftest import load_script


def test_a_small_run_indexes_with_the_chosen_backend_and_times_every_state_backend(tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    script = load_script("benchmarks/scale.py")
    out = tmp_path / "scale.json"
    argv = ["--lengths", "2k", "--encode-sample", "16", "--threads", "1", "--rounds", "1", "--out", str(out)]
    assert script.main([*argv, "--backend", "torch-bf16", "--state-backends", "torch", "torch-bf16"]) == 0
    (row,) = json.loads(out.read_text())["lengths"]
    assert row["backend"] == "torch-bf16" and 0 < row["distinct_chunks"] <= row["chunks"]
    assert set(row["latency"][0]["greedy_T4"]) == {"torch", "torch-bf16"}
    text = out.with_suffix(".md").read_text()
    assert f"| 2k | {row['tokens']:,} | {row['chunks']:,} ({row['distinct_chunks']:,}) | torch-bf16 |" in text
    assert "| 2k | 1 | torch-bf16 |" in text
