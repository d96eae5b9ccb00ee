"""qrag-index: build a persistent index of a document file and search it (real shipped model)."""

import json

import pytest

from qrag_core.cli.index import SEARCH_FLAGS_SKIPPED, build_parser, main
from qrag_core.config import field_docs
from qrag_core.index import DocumentIndex
from qrag_core.search_options import SearchOptions


@pytest.mark.slow
def test_build_then_search_with_the_default_model(tmp_path, story, capsys, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    (tmp_path / "story.txt").write_text(story)
    assert (
        main(["build", "--document", str(tmp_path / "story.txt"), "--out", str(tmp_path / "idx"), "--shard-size", "4"])
        == 0
    )
    assert "indexed 10 chunks" in capsys.readouterr().out
    assert DocumentIndex.load(tmp_path / "idx").doc_ids == ["story.txt"]
    assert (
        main(["search", "--index", str(tmp_path / "idx"), "--question", "Where is Mary?", "--steps", "2", "--json"])
        == 0
    )
    out = json.loads(capsys.readouterr().out)
    assert [e["step"] for e in sorted(out["evidence"], key=lambda e: e["step"])] == [1, 2]
    assert any("Mary" in e["text"] for e in out["evidence"])
    assert main(["search", "--index", str(tmp_path / "idx"), "--question", "Where is Mary?"]) == 0
    assert "step 1" in capsys.readouterr().out


def test_errors_are_reported_not_raised(tmp_path, capsys):
    assert main(["search", "--index", str(tmp_path / "missing"), "--question", "q", "--model", "minilm"]) == 2
    assert "index.json is missing" in capsys.readouterr().err
    (tmp_path / "empty.txt").write_text("   \n")
    assert (
        main(["build", "--document", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "i"), "--model", "minilm"])
        == 2
    )
    assert "empty" in capsys.readouterr().err


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = capsys.readouterr().out
    for flag in ("--document", "--out", "--chunking", "--max-tokens", "--shard-size", "--batch-size", "--no-cache"):
        assert flag in text
    flat = " ".join(text.split())
    assert "(default: 64)" in flat and "(default: sentences)" in flat, "real defaults are shown"
    assert "(default: None)" not in flat and "(default: False)" not in flat, "not where the help says what none is"
    assert "(default: the shipped default model) (default" not in flat, "a default the help names is not repeated"


def exit_status(argv: list[str]) -> int:
    """What the command returns, or the status of the argparse error it exits with."""
    try:
        return main(argv)
    except SystemExit as exit_info:
        return exit_info.code


def test_build_never_deletes_the_book_or_other_files_in_out(tmp_path, story, capsys, monkeypatch):
    """--out holding the book (or any file qrag did not write) is refused, with or without --overwrite;
    an earlier qrag index is replaced only with --overwrite."""
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    book = shelf / "book.txt"
    book.write_text(story)
    (shelf / "notes.txt").write_text("mine")
    for out in (shelf, tmp_path):
        for extra in ([], ["--overwrite"]):
            argv = ["build", "--document", str(book), "--out", str(out), "--model", "minilm", *extra]
            assert exit_status(argv) == 2
            assert str(out) in capsys.readouterr().err
            assert book.read_text() == story and (shelf / "notes.txt").read_text() == "mine"
    other_book = tmp_path / "other.txt"  # the book elsewhere: the user's files in --out are still refused
    other_book.write_text(story)
    argv = ["build", "--document", str(other_book), "--out", str(shelf), "--model", "minilm", "--overwrite"]
    assert exit_status(argv) == 2
    assert "is not empty and is not a qrag index" in capsys.readouterr().err
    assert sorted(p.name for p in shelf.iterdir()) == ["book.txt", "notes.txt"]

    out = tmp_path / "idx"
    argv = ["build", "--document", str(book), "--out", str(out), "--model", "minilm", "--shard-size", "4"]
    assert main(argv) == 0
    capsys.readouterr()
    assert exit_status(argv) == 2  # refused before the model loads
    assert "already holds a qrag index" in capsys.readouterr().err
    assert main([*argv, "--overwrite"]) == 0
    assert DocumentIndex.load(out).doc_ids == ["book.txt"]


def test_the_search_flags_are_the_search_options(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["search", "--help"])
    # argparse wraps the help at the terminal's width, also after a hyphen ("ivf-" / "sq8"): undo both
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    docs = field_docs(SearchOptions)
    flagged = [name for name in SearchOptions.names() if name not in SEARCH_FLAGS_SKIPPED]
    for name in flagged:
        assert docs[name].replace("- ", "-") in text
    args = build_parser().parse_args(
        ["search", "--index", "i", "--question", "q", "--steps", "3", "--beam", "2", "--order", "rank"]
    )
    assert (args.k, args.beam, args.expand_k, args.order) == (3, 2, None, "rank")
    assert "--steps" in text and "--expand-k" in text and "--document-id" in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["--order", "score"], "invalid choice: 'score'"),
    ],
)
def test_bad_search_flags_are_refused_before_anything_loads(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "--index", str(tmp_path / "missing"), "--question", "q", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "amx, onnx_runtime, bfloat16, expected",
    [
        (True, True, True, "torch-bf16"),
        (False, True, True, "onnx-int8"),
        (False, True, False, "onnx-int8"),
        (False, False, True, "torch-bf16"),
        (False, False, False, "torch"),
    ],
)
def test_the_default_index_backend_follows_the_cpu(monkeypatch, amx, onnx_runtime, bfloat16, expected):
    import torch

    from qrag_core import onnx_backend

    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(onnx_backend, "onnx_runtime_installed", lambda: onnx_runtime)
    monkeypatch.setattr(onnx_backend, "cpu_has_bfloat16", lambda: bfloat16)
    assert onnx_backend.default_index_backend(torch.device("cpu")) == expected
    assert onnx_backend.default_index_backend(torch.device("cuda")) == "torch"


@pytest.mark.parametrize("has_amx, expected", [(True, "torch-bf16"), (False, "torch")])
def test_a_build_uses_the_fastest_backend_and_any_machine_and_loader_reads_the_index(
    tmp_path, story, capsys, monkeypatch, has_amx, expected
):
    from qrag_core import QRAG, onnx_backend
    from qrag_core.retriever import Retriever

    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: has_amx)
    monkeypatch.setattr(onnx_backend, "onnx_runtime_installed", lambda: False)
    monkeypatch.setattr(onnx_backend, "cpu_has_bfloat16", lambda: has_amx)
    (tmp_path / "story.txt").write_text(story)
    assert main(["build", "--document", str(tmp_path / "story.txt"), "--out", str(tmp_path / "idx")]) == 0
    built = DocumentIndex.load(tmp_path / "idx").fingerprint
    assert built == QRAG.from_pretrained().action_encoder.fingerprint_for(expected), "auto is the default"
    monkeypatch.setattr(onnx_backend, "cpu_has_amx", lambda: not has_amx)  # searched on another machine
    monkeypatch.setattr(onnx_backend, "cpu_has_bfloat16", lambda: not has_amx)
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "--question", "Where is Mary?", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["evidence"], "the index's vectors are read whatever the machine"
    retriever = Retriever.load(tmp_path / "idx")  # the library's default loader, on a float32 model
    assert retriever.model.action_encoder.backend == "torch" and retriever.search("Where is Mary?").chunks
