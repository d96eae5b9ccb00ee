"""Tests of ``qrag-finetune``: --help, a tiny end-to-end run, resume, data errors, and a real MiniLM run."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil

import pytest

from qrag_core.cli.finetune import build_parser, main
from qrag_core.data.examples import Example, write_jsonl
from qrag_core.index import DocumentIndex
from qrag_core.model import QRAG
from qrag_core.search import search
from qrag_core.training import TrainingConfig
from tests import test_training

one_thread = test_training.one_thread  # the shared fixtures: one torch thread, a tiny random base model
tiny_base = test_training.tiny_base

STORY = [
    "Mary picked up the apple there.",
    "John went to the garden.",
    "Mary travelled to the office.",
    "Sandra journeyed to the kitchen.",
    "Daniel moved to the hallway.",
    "John picked up the football there.",
]


def babi_like(n: int) -> list[Example]:
    """Two-fact questions over a short story: where the carried object is."""
    examples = []
    for i in range(n):
        shift = i % len(STORY)
        chunks = STORY[shift:] + STORY[:shift]
        support = [chunks.index(STORY[0]), chunks.index(STORY[2])]
        examples.append(Example(id=f"s{i}", question="Where is the apple?", chunks=chunks, support=support))
    return examples


@pytest.fixture()
def data(tmp_path):
    train, held_out = tmp_path / "train.jsonl", tmp_path / "held_out.jsonl"
    write_jsonl(babi_like(12), train)
    write_jsonl(babi_like(3), held_out)
    return train, held_out


def test_help_documents_every_hyperparameter(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for f in dataclasses.fields(TrainingConfig):
        assert f"--{f.name.replace('_', '-')}" in text
        if f.default is None:  # the field's docstring says what "none" means instead
            assert "(default: None)" not in text
        else:
            assert f"(default: {f.default})" in text
    for flag in (
        "--data",
        "--eval-data",
        "--out",
        "--base-model",
        "--init-from",
        "--resume",
        "--freeze-action-encoder",
    ):
        assert flag in text
    assert "Polyak rate" in text and "Temperature of the warm-start softmax" in text


def test_flags_reach_the_training_config():
    args = build_parser().parse_args(
        ["--data", "x", "--out", "y", "--lam", "0.5", "--top-k", "none", "--reward", "per_fact", "--no-normalize"]
    )
    assert args.lam == 0.5 and args.top_k is None and args.reward == "per_fact" and args.normalize is False
    assert not hasattr(build_parser().parse_args(["--data", "x", "--out", "y"]), "normalize")  # model keeps its own
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "x", "--out", "y", "--reward", "dense"])


def run_cli(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_tiny_end_to_end_run_and_resume(tiny_base, data, tmp_path, capsys):
    train, held_out = data
    out = tmp_path / "run"
    argv = [
        "--data", train, "--eval-data", held_out, "--out", out, "--base-model", tiny_base, "--cache", "none",
        "--max-steps", "2", "--warm-start-steps", "3", "--rl-steps", "3", "--batch-size", "4", "--eval-every", "2",
        "--checkpoint-every", "2", "--no-progress",
    ]  # fmt: skip
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    summary = json.loads(stdout)
    assert summary["steps"] == 6 and summary["examples_seen"] == 24
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(7))
    assert rows[0]["eval_held_out_fact_em"] != "" and rows[-1]["eval_held_out_fact_em"] != ""
    model = QRAG.from_pretrained(str(out / "model"))
    info = model.training_info
    assert info["data"] == str(train) and info["steps"] == 6 and info["seconds"] >= 0
    assert info["evaluation"]["held_out_fact_em"] == summary["evaluation"]["held_out"]["fact_em"]
    assert "held_out_fact_em" in (out / "model" / "README.md").read_text()

    code, _, stderr = run_cli(argv, capsys)  # the same --out again without --resume
    assert code == 2 and "--resume" in stderr
    code, stdout, stderr = run_cli([*argv, "--resume"], capsys)  # a finished run resumes to its end at once
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 6

    code, _, stderr = run_cli(
        ["--data", train, "--out", tmp_path / "again", "--init-from", out / "model", "--position-mode", "none"], capsys
    )
    assert code == 2 and "only apply with --base-model" in stderr


def test_an_out_with_an_earlier_run_or_a_users_files_is_never_overwritten(tiny_base, data, tmp_path, capsys):
    train, _ = data
    flags = ["--base-model", tiny_base, "--cache", "none", "--warm-start-steps", "2", "--rl-steps", "0"]
    flags += ["--batch-size", "4", "--no-progress"]
    mine = tmp_path / "mine"  # a user's metrics and model, not written by qrag
    (mine / "model").mkdir(parents=True)
    (mine / "model" / "weights.bin").write_bytes(b"mine")
    (mine / "metrics.csv").write_text("epoch,accuracy\n1,0.9\n")
    for extra in ([], ["--overwrite"]):
        code, _, stderr = run_cli(["--data", train, "--out", mine, *flags, *extra], capsys)
        assert code == 2 and "not from a qrag training run" in stderr
        assert (mine / "metrics.csv").read_text() == "epoch,accuracy\n1,0.9\n"
        assert (mine / "model" / "weights.bin").read_bytes() == b"mine"
        assert sorted(p.name for p in mine.iterdir()) == ["metrics.csv", "model"]

    out = tmp_path / "run"  # an earlier qrag run whose checkpoint was deleted to save space
    assert run_cli(["--data", train, "--out", out, *flags], capsys)[0] == 0
    shutil.rmtree(out / "checkpoint")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    code, _, stderr = run_cli(["--data", train, "--out", out, *flags, "--warm-start-steps", "3"], capsys)
    assert code == 2 and "already holds a training run" in stderr and "--overwrite" in stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    code, stdout, stderr = run_cli(
        ["--data", train, "--out", out, *flags, "--warm-start-steps", "3", "--overwrite"], capsys
    )
    assert code == 0, stderr
    assert json.loads(stdout)["steps"] == 3
    assert QRAG.from_pretrained(str(out / "model")).training_info["steps"] == 3
    code, _, stderr = run_cli(["--data", train, "--out", out, "--init-from", out / "model", "--overwrite"], capsys)
    assert code == 2 and f"refusing to replace {out / 'model'}" in stderr, "--overwrite never removes an input"
    assert QRAG.from_pretrained(str(out / "model")).training_info["steps"] == 3
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--data", "x", "--out", "y", "--resume", "--overwrite"])


def test_training_rows_without_support_are_errors_naming_the_line(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    rows = [babi_like(1)[0].to_json(), {"question": "Where is Mary?", "chunks": ["Mary left.", "John slept."]}]
    bad.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, _, stderr = run_cli(["--data", bad, "--out", tmp_path / "o"], capsys)
    assert code == 2
    assert f"{bad}:2:" in stderr and "support labels" in stderr
    bad.write_text('{"question": "q", "chunks": ["a."], "support": [0]}\n{not json\n')
    code, _, stderr = run_cli(["--data", bad, "--out", tmp_path / "o"], capsys)
    assert code == 2 and f"{bad}:2: invalid JSON" in stderr
    code, _, stderr = run_cli(["--data", tmp_path / "missing.jsonl", "--out", tmp_path / "o"], capsys)
    assert code == 2 and "does not exist" in stderr


@pytest.mark.slow
def test_minilm_end_to_end(data, tmp_path, capsys):
    """The real base model: two warm-start and two soft-Q steps, then the saved model retrieves."""
    train, held_out = data
    out = tmp_path / "minilm"
    argv = [
        "--data", train, "--eval-data", held_out, "--out", out, "--cache", "none", "--warm-start-steps", "2",
        "--rl-steps", "2", "--batch-size", "2", "--eval-every", "0", "--no-progress",
    ]  # fmt: skip
    code, stdout, stderr = run_cli(argv, capsys)
    assert code == 0, stderr
    model = QRAG.from_pretrained(str(out / "model"))
    assert model.config.freeze_action_encoder and model.training_info["steps"] == 4
    result = search(model, "Where is the apple?", DocumentIndex.build(model, [STORY]), k=2)
    assert len(result.chunks) == 2
