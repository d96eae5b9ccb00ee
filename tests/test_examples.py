"""Every script in examples/ runs offline on the default model, as a user would run it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from qrag_core.data.demo import load_demo_document
from qrag_integrations.openai import API_KEY_ENV, BASE_URL_ENV, MODEL_ENVS
from tests.test_answerer import ChatServer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
pytestmark = pytest.mark.slow


def run_example(name: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in (BASE_URL_ENV, API_KEY_ENV, *MODEL_ENVS)}
    clean.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **env)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=clean,
        cwd=EXAMPLES.parent,
    )
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return result


def evidence_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.lstrip().startswith("step ")]


@pytest.mark.parametrize("name", ["answer_with_openai.py", "langchain_chain.py", "llamaindex_query_engine.py"])
def test_example_runs_offline_and_explains_how_to_set_an_endpoint(name):
    output = run_example(name, "--k", "3").stdout
    assert "Question: Where is the milk?" in output
    assert len(evidence_lines(output)) == 3
    assert "No chat endpoint configured" in output and "OPENAI_BASE_URL" in output


def test_answerer_example_answers_through_an_endpoint():
    with ChatServer() as server:
        output = run_example("answer_with_openai.py", "--k", "2", **{BASE_URL_ENV: server.url}).stdout
    assert len(server.requests) == 1
    user = server.requests[0]["messages"][-1]["content"]
    assert "Question: Where is the milk?" in user
    first = next(line for line in user.splitlines() if line.startswith("[1] "))[4:]
    assert f"Answer from tiny-chat: From the passages: {first}" in output


def test_finetune_example_trains_saves_and_retrieves_with_the_new_model(tmp_path):
    output = run_example("finetune_custom_corpus.py", "--k", "3", "--out", str(tmp_path)).stdout
    assert "Trained 3 steps (6 episodes)" in output
    assert "eval: fact EM" in output
    assert (tmp_path / "model" / "config.json").is_file() and (tmp_path / "metrics.csv").is_file()
    assert len((tmp_path / "train.jsonl").read_text().splitlines()) == 4
    assert f"Fine-tuned model {tmp_path / 'model'}" in output
    assert len(evidence_lines(output)) == 3


@pytest.mark.parametrize("name", ["langchain_folder.py", "llamaindex_folder.py"])
def test_folder_example_indexes_saves_reloads_and_finds_both_facts(name, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "book.txt").write_text(load_demo_document().text, encoding="utf-8")
    (folder / "sub").mkdir()
    (folder / "sub" / "other.txt").write_text("The kettle is broken.\n\nAnna fixed the printer.\n", encoding="utf-8")
    store = tmp_path / "store"
    output = run_example(name, "--folder", str(folder), "--store", str(store), "--k", "4").stdout
    assert "Indexed 2 files" in output and "as 2 documents" in output
    assert store.is_dir() and any(store.iterdir())
    assert "Question: Where is the football?" in output
    evidence = evidence_lines(output)
    assert len(evidence) == 4
    for fact in load_demo_document().support:
        assert any(line.endswith(fact) and "book.txt" in line for line in evidence), fact
    assert "No chat endpoint configured" in output
