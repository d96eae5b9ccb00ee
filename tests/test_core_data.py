"""Chunking (offsets, token windows) and the JSONL example format (docs/data-format.md)."""

import json

import pytest

from qrag_core import ChunkingConfig, chunk_text
from qrag_core.data import read_jsonl, write_jsonl
from qrag_core.data.examples import Example
from qrag_core.errors import DataFormatError, InvalidInputError


def test_sentence_chunks_keep_offsets(story):
    chunks = chunk_text(story)
    assert chunks[0].text == "Mary moved to the bathroom." and len(chunks) == 10
    for i, c in enumerate(chunks):
        assert c.index == i and story[c.start : c.end] == c.text


def test_token_windows_cover_the_text(minilm_tokenizer, story):
    chunks = chunk_text(story, ChunkingConfig(mode="tokens", max_tokens=16), minilm_tokenizer)
    assert len(chunks) > 3
    for c in chunks:
        assert story[c.start : c.end] == c.text
        assert len(minilm_tokenizer(c.text, add_special_tokens=False)["input_ids"]) <= 16
    assert chunks[0].start == 0 and chunks[-1].end == len(story.rstrip())


def test_overlong_sentence_is_split_with_a_tokenizer(minilm_tokenizer):
    text = "Short one. " + " ".join(["word"] * 300) + ". End."
    chunks = chunk_text(text, ChunkingConfig(max_tokens=64), minilm_tokenizer)
    assert max(len(minilm_tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in chunks) <= 64
    assert chunks[0].text == "Short one." and chunks[-1].text == "End."


def test_bad_overlap():
    with pytest.raises(InvalidInputError, match="overlap"):
        chunk_text("a b c.", ChunkingConfig(mode="tokens", max_tokens=4, overlap_tokens=4))


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_both_jsonl_forms_and_support(tmp_path, story):
    rows = [
        {
            "id": "x1",
            "question": "Where is Mary?",
            "answer": "kitchen",
            "document": story,
            "supporting_facts": ["Mary went back   to the kitchen."],
            "task": "qa1",
        },
        {"id": "x2", "question": "q?", "chunks": ["a.", "b.", "c."], "support": [2, 0]},
    ]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    first, second = read_jsonl(path, need_support=True)
    assert first.support_indices(first.to_chunks()) == [6] and first.extra == {"task": "qa1"}
    assert second.support_indices(second.to_chunks()) == [0, 2]
    write_jsonl([first, second], tmp_path / "copy.jsonl")
    assert [json.loads(x) for x in (tmp_path / "copy.jsonl").read_text().splitlines()] == rows


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"document": "x"}', "'question'"),
        ('{"question": "q"}', "exactly one of"),
        ('{"question": "q", "document": "x", "chunks": ["y"]}', "exactly one of"),
        ('{"question": "q", "document": "  "}', "'document'"),
        ('{"question": "q", "chunks": []}', "'chunks'"),
        ('{"question": "q", "chunks": ["a"], "support": [3]}', "outside"),
        ('{"question": "q", "chunks": ["a"], "support": "0"}', "'support'"),
        ('{"question": "q", "document": "x", "supporting_facts": "x"}', "'supporting_facts'"),
        ('{"question": "q", "document": "x", "answer": 3}', "'answer'"),
    ],
)
def test_malformed_lines_name_file_line_and_problem(tmp_path, line, problem):
    good = json.dumps({"question": "fine?", "document": "A fine document."})
    path = write_lines(tmp_path / "bad.jsonl", [good, "", line])
    with pytest.raises(DataFormatError, match=problem) as err:
        read_jsonl(path)
    assert err.value.line == 3 and err.value.path == str(path) and str(err.value).startswith(f"{path}:3:")


def test_training_needs_support(tmp_path):
    path = write_lines(tmp_path / "t.jsonl", [json.dumps({"question": "q", "document": "d."})])
    assert len(read_jsonl(path)) == 1
    with pytest.raises(DataFormatError, match="support labels"):
        read_jsonl(path, need_support=True)


def test_missing_fact_is_reported(story):
    example = Example(id="e", question="q", document=story, supporting_facts=["Nobody went to Mars."])
    with pytest.raises(InvalidInputError, match="not found"):
        example.support_indices(example.to_chunks())
