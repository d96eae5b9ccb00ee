"""qrag-index: build a persistent index of a document file and search it (real shipped model)."""

import json

import pytest

from qrag_core.cli.index import main
from qrag_core.index import DocumentIndex


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
