"""Bad input gets a clear error naming the setting, or the file and line, and the problem; nothing is silent.

Each test here failed before its fix: NaN/inf or mistyped settings trained or crashed deep inside,
empty or boolean support labels were accepted, undecodable files raised raw UnicodeDecodeError
tracebacks, and option mistakes in the CLIs and the Python API ended in tracebacks.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from qrag_core import QRAG, QRAGConfig
from qrag_core.baselines import BM25TopK
from qrag_core.chunking import chunks_from_texts
from qrag_core.cli.data import main as data_main
from qrag_core.cli.evaluate import main as eval_main
from qrag_core.cli.finetune import main as finetune_main
from qrag_core.cli.index import main as index_main
from qrag_core.config import ChunkingConfig
from qrag_core.data.babi import parse_babi_file
from qrag_core.data.examples import Example, read_jsonl, write_jsonl
from qrag_core.embedding_cache import EmbeddingCache
from qrag_core.errors import (
    CheckpointError,
    DataFormatError,
    InvalidInputError,
    ModelNotFoundError,
    UnsafeOutputError,
)
from qrag_core.evaluation import evaluate
from qrag_core.index import DocumentIndex
from qrag_core.long_index import check_output
from qrag_core.metrics import fact_scores, resolve_support
from qrag_core.model_names import resolve_model_path
from qrag_core.retriever import Retriever, saved_options
from qrag_core.search import search
from qrag_core.search_options import SearchOptions
from qrag_core.sources import Piece
from qrag_core.training import TrainingConfig

# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "name",
    [
        "warm_start_lr",
        "warm_start_temperature",
        "warm_start_mistakes",
        "lr",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "max_grad_norm",
        "alpha",
        "gamma",
        "lam",
        "tau",
        "value_head_lr",
        "max_train_seconds",
    ],
)
def test_every_float_training_setting_must_be_finite(name: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=name):
        TrainingConfig(**{name: value}).validate()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"rl_steps": "3"}, "rl_steps"),
        ({"value_head": 1}, "value_head"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**40}, "seed"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"adam_eps": 0.0}, "adam_eps"),
        ({"max_train_seconds": -1.0}, "max_train_seconds"),
    ],
)
def test_training_settings_of_the_wrong_type_or_range_are_named(changes: dict, name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        TrainingConfig(**changes).validate()


def test_the_default_settings_are_valid() -> None:
    TrainingConfig().validate()
    QRAGConfig().validate()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"delta": math.nan}, "delta"),
        ({"ell": math.inf}, "ell"),
        ({"rope_theta": math.nan}, "rope_theta"),
        ({"stop_threshold": math.nan}, "stop_threshold"),
        ({"stop_threshold": -math.inf}, "stop_threshold"),
        ({"max_steps": "4"}, "max_steps"),
        ({"beam_width": 1.5}, "beam_width"),
        ({"normalize": "yes"}, "normalize"),
        ({"delta": 0.0}, "delta"),
        ({"chunking": ChunkingConfig(mode="words")}, "chunking.mode"),
        ({"chunking": ChunkingConfig(max_tokens=8.0)}, "chunking.max_tokens"),
    ],
)
def test_model_settings_must_be_finite_and_typed(changes: dict, name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        QRAGConfig(**changes).validate()


def test_a_saved_config_with_bad_values_is_a_checkpoint_error() -> None:
    data = QRAGConfig().to_dict() | {"delta": "ten"}
    with pytest.raises(CheckpointError, match="delta"):
        QRAGConfig.from_dict(data)
    with pytest.raises(CheckpointError, match="overlap"):
        QRAGConfig.from_dict(QRAGConfig().to_dict() | {"chunking": {"overlap": 3}})
    with pytest.raises(CheckpointError, match="JSON object"):
        QRAGConfig.from_dict([1, 2])  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ data files
def write_rows(path: Path, *rows: object) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


GOOD_ROW = {"question": "Where is Mary?", "document": "Mary moved to the bathroom. John left."}


def test_undecodable_jsonl_line_names_file_line_and_byte_offset(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps(GOOD_ROW).encode() + b"\n"
    path.write_bytes(good + b'{"question": "caf\xe9?", "document": "x"}\n')
    with pytest.raises(DataFormatError, match=r"not valid UTF-8: byte 0xe9 at byte offset") as err:
        read_jsonl(path)
    assert (err.value.path, err.value.line) == (str(path), 2)
    assert f"byte offset {len(good) + 17}" in str(err.value)


def test_lone_surrogate_in_jsonl_is_rejected_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n" + '{"question": "q \\ud800", "chunks": ["a"]}\n')
    with pytest.raises(DataFormatError, match="lone surrogate") as err:
        read_jsonl(path)
    assert err.value.line == 2


def test_a_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD_ROW).encode() + b"\n")
    assert read_jsonl(path)[0].question == "Where is Mary?"


@pytest.mark.parametrize("facts", [[""], ["   "], ["Mary moved to the bathroom.", "\n\t"]])
def test_empty_or_blank_supporting_facts_are_rejected(tmp_path: Path, facts: list[str]) -> None:
    path = write_rows(tmp_path / "f.jsonl", GOOD_ROW | {"supporting_facts": facts})
    with pytest.raises(DataFormatError, match="empty or blank") as err:
        read_jsonl(path)
    assert err.value.line == 1


@pytest.mark.parametrize("support", [[True], [0, False], [1.0]])
def test_support_indices_must_be_integers_not_booleans(tmp_path: Path, support: list) -> None:
    path = write_rows(tmp_path / "s.jsonl", {"question": "q?", "chunks": ["a.", "b."], "support": support})
    with pytest.raises(DataFormatError, match="integer chunk indices"):
        read_jsonl(path)


def test_values_must_be_a_list_of_strings(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "v.jsonl", {"question": "q?", "chunks": ["a."], "support": [0], "values": 7})
    with pytest.raises(DataFormatError, match="'values'"):
        read_jsonl(path)


def test_supporting_fact_not_found_names_file_and_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_rows(
        tmp_path / "m.jsonl",
        GOOD_ROW | {"supporting_facts": ["John left."]},
        GOOD_ROW | {"id": "two", "supporting_facts": ["Nobody went to Mars."]},
    )
    example = read_jsonl(path)[1]
    with pytest.raises(DataFormatError, match="not found") as err:
        example.support_indices(example.to_chunks())
    assert (err.value.path, err.value.line) == (str(path), 2) and "example two" in str(err.value)
    assert eval_main(["--data", str(path), "--method", "bm25", "--no-cache"]) == 2
    assert f"{path}:2: example two: supporting fact not found" in capsys.readouterr().err


REPEATED = "Mary moved to the bathroom. The cat slept. Mary moved to the bathroom. John left."


def test_a_repeated_fact_is_found_by_any_one_copy() -> None:
    example = Example(id="r", question="Where did Mary move?", document=REPEATED, supporting_facts=[REPEATED[:27]])
    chunks = example.to_chunks()
    assert example.support_alternatives(chunks) == [[frozenset({0}), frozenset({2})]]
    assert example.support_indices(chunks) == [0, 2]  # every chunk of every copy
    for one_copy in ([0], [2], [2, 3]):
        assert fact_scores(one_copy, resolve_support(one_copy, example.support_alternatives(chunks))).em == 1.0
    assert fact_scores([1], resolve_support([1], example.support_alternatives(chunks))).recall == 0.0
    result = evaluate(BM25TopK(), [example], steps=1)
    assert result["fact_em"] == 1.0 and result["fact_precision"] == 1.0


def test_a_fact_spanning_chunks_is_found_by_any_complete_copy() -> None:
    fact = "Mary went home. She slept."
    document = f"{fact} It rained. {fact}"
    example = Example(id="s", question="q?", document=document, supporting_facts=[fact])
    assert example.support_alternatives(example.to_chunks()) == [[frozenset({0, 1}), frozenset({3, 4})]]
    scattered = Example(
        id="t", question="q?", document="Mary went home. It rained. She slept.", supporting_facts=[fact]
    )
    assert scattered.support_alternatives(scattered.to_chunks()) == [[frozenset({0, 2})]]


def test_resolve_support_prefers_the_best_covered_copy() -> None:
    facts = [[frozenset({0, 1}), frozenset({5})], [frozenset({3})]]
    assert resolve_support([5, 3], facts) == {5, 3}
    assert resolve_support([1], facts) == {0, 1, 3}
    assert resolve_support([], facts) == {0, 1, 3}
    with pytest.raises(ValueError, match="occurrence"):
        resolve_support([1], [[]])


def test_undecodable_babi_file_names_line_and_offset(tmp_path: Path) -> None:
    path = tmp_path / "qa1_single-supporting-fact_test.txt"
    path.write_bytes(b"1 Mary moved to the bathroom.\n2 Where is Mary? \tbathroom\t1\n1 Jo\xffhn left.\n")
    with pytest.raises(DataFormatError, match="byte offset 63") as err:
        parse_babi_file(path)
    assert err.value.line == 3


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("\u00b2 Mary moved.\n", "numeric ID"),
        ("1 Mary moved.\n2 Where? \tbathroom\t\n", "name no earlier fact"),
    ],
)
def test_malformed_babi_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "b.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError, match=problem):
        parse_babi_file(path)


def test_undecodable_model_config_is_a_checkpoint_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_bytes(b'{"qrag": "\xff"}')
    with pytest.raises(CheckpointError, match=r"config.json:1: not valid UTF-8: byte 0xff at byte offset 10"):
        QRAG.from_pretrained(str(tmp_path))


def test_undecodable_index_files_are_checkpoint_errors(tmp_path: Path) -> None:
    index = DocumentIndex("fingerprint", 4)
    index.add(chunks_from_texts(["First chunk.", "Second chunk."], doc_id="d"), torch.zeros(2, 4))
    index.save(tmp_path / "idx")
    chunks = tmp_path / "idx" / "chunks.jsonl"
    chunks.write_bytes(chunks.read_bytes().replace(b"Second", b"Sec\x80nd"))
    with pytest.raises(CheckpointError, match=r"chunks.jsonl:2: not valid UTF-8"):
        DocumentIndex.load(tmp_path / "idx")
    (tmp_path / "idx" / "index.json").write_bytes(b"\xfe\xff")
    with pytest.raises(CheckpointError, match=r"index.json:1: not valid UTF-8"):
        DocumentIndex.load(tmp_path / "idx")


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ('{"text": 5, "index": 1}', "field 'text' must be a JSON string, got 5"),
        ('{"text": "b", "index": 1, "start": -3}', "field 'start' must be an integer >= 0, got -3"),
        ('{"text": "b", "index": true}', "field 'index' must be an integer >= 0, got True"),
        ('{"text": "b", "index": 1, "metadata": []}', "field 'metadata' must be a JSON object"),
        ('{"text": "b", "index": 1, "colour": "red"}', r"unknown fields \['colour'\]"),
        ('{"index": 1}', r"missing fields \['text'\]"),
        ('["b", 1]', "expected a JSON object, got list"),
    ],
)
def test_saved_chunks_with_bad_fields_are_checkpoint_errors(tmp_path: Path, row: str, problem: str) -> None:
    index = DocumentIndex("fingerprint", 4)
    index.add(chunks_from_texts(["First chunk.", "Second chunk."], doc_id="d"), torch.zeros(2, 4))
    index.save(tmp_path / "idx")
    chunks = tmp_path / "idx" / "chunks.jsonl"
    first = chunks.read_text(encoding="utf-8").splitlines()[0]
    chunks.write_text(f"{first}\n{row}\n", encoding="utf-8")
    with pytest.raises(CheckpointError, match=rf"chunks.jsonl:2: {problem}"):
        DocumentIndex.load(tmp_path / "idx")


@pytest.mark.parametrize("version", ['"1"', "1.5", "-1", "null", "[1]"])
def test_non_integer_format_versions_are_checkpoint_errors(tmp_path: Path, version: str) -> None:
    problem = "format_version must be an integer >= 0"
    (tmp_path / "config.json").write_text(f'{{"qrag": {{"config": {{}}, "format_version": {version}}}}}')
    with pytest.raises(CheckpointError, match=rf"config.json is corrupt: {problem}"):
        QRAG.from_pretrained(str(tmp_path))
    index = DocumentIndex("fingerprint", 4)
    index.add(chunks_from_texts(["First chunk."], doc_id="d"), torch.zeros(1, 4))
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta | {"format_version": json.loads(version)}))
    with pytest.raises(CheckpointError, match=rf"index.json is corrupt: {problem}"):
        DocumentIndex.load(tmp_path / "idx")
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "qrag_retriever.json").write_text(f'{{"format_version": {version}}}')
    with pytest.raises(CheckpointError, match=rf"qrag_retriever.json is corrupt: {problem}"):
        saved_options(tmp_path / "store")


def test_newer_format_versions_ask_for_an_upgrade(tmp_path: Path) -> None:
    index = DocumentIndex("fingerprint", 4)
    index.add(chunks_from_texts(["First chunk."], doc_id="d"), torch.zeros(1, 4))
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    (tmp_path / "idx" / "index.json").write_text(json.dumps(meta | {"format_version": 99}))
    with pytest.raises(CheckpointError, match="index.json: format 99 is newer than this qrag"):
        DocumentIndex.load(tmp_path / "idx")


# ------------------------------------------------------------------------------------------------ command lines
def usage_error(main: Callable[[list[str]], int], argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """argparse's error: exit status 2 and ``prog: error: message`` on stderr; returns the message."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and ": error: " in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--warm-start-lr", "nan", "--warm-start-lr: must be a finite number, got 'nan'"),
        ("--lr", "inf", "--lr: must be a finite number"),
        ("--delta", "nan", "--delta: must be a finite number"),
        ("--gamma", "1.5", "gamma must lie in [0, 1]"),
        ("--ell", "0", "ell must be positive"),
        ("--threads", "0", "--threads: must be a positive integer, got '0'"),
        ("--seed", "-3", "seed must lie in"),
    ],
)
def test_finetune_rejects_bad_values_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, message: str
) -> None:
    data = write_rows(tmp_path / "t.jsonl", GOOD_ROW | {"supporting_facts": ["John left."]})
    err = usage_error(finetune_main, ["--data", str(data), "--out", str(tmp_path / "o"), flag, value], capsys)
    assert message in err and not (tmp_path / "o").exists()


def test_finetune_reports_undecodable_data_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    data = tmp_path / "t.jsonl"
    data.write_bytes(b'{"question": "\xff"}\n')
    assert finetune_main(["--data", str(data), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qrag-finetune: error: {data}:1: not valid UTF-8") and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "-1"], "--steps: must be a positive integer"),
        (["--beam", "two"], "--beam: must be an integer, got 'two'"),
        (["--stop-threshold", "nan"], "--stop-threshold: must be a finite number"),
        (["--limit", "0"], "--limit: must be a positive integer"),
    ],
)
def test_eval_rejects_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str):
    assert message in usage_error(eval_main, ["--data", str(tmp_path / "d.jsonl"), *argv], capsys)


def test_index_build_refuses_dangerous_or_wrong_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    book = tmp_path / "book.txt"
    book.write_text("Mary moved to the bathroom. John left.")
    monkeypatch.chdir(tmp_path)
    build = ["build", "--document", str(book), "--model", "minilm", "--out"]
    assert "is the current directory" in usage_error(index_main, [*build, "."], capsys)
    assert "holds the current directory" in usage_error(index_main, [*build, ".."], capsys)
    assert "holds the current directory" in usage_error(index_main, [*build, "/"], capsys)
    assert "is your home directory" in usage_error(index_main, [*build, "~"], capsys)
    assert "is the input" in usage_error(index_main, [*build, str(book)], capsys)
    monkeypatch.chdir(Path.home())
    assert "holds the input" in usage_error(index_main, [*build, str(tmp_path)], capsys)
    (tmp_path / "notes.txt").write_text("mine")
    assert "is a file" in usage_error(index_main, [*build, str(tmp_path / "notes.txt")], capsys)
    assert "overlap_tokens" in usage_error(index_main, [*build, "idx", "--overlap-tokens", "64"], capsys)
    assert book.read_text() == "Mary moved to the bathroom. John left."


def test_index_build_refuses_what_the_library_refuses_before_loading_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(QRAG, "from_pretrained", _no_model_needed)
    book = tmp_path / "book.txt"
    book.write_text("Mary moved to the bathroom. John left.")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("three years of work")
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "index.json").write_text("{}")
    for out, overwrite in ((mine, []), (tmp_path / "old", []), (tmp_path, []), (book, ["--overwrite"])):
        with pytest.raises(UnsafeOutputError) as library:
            check_output(out, overwrite=bool(overwrite), protect=[book])
        argv = ["build", "--document", str(book), "--out", str(out), *overwrite]
        assert f"qrag-index: error: --out: {library.value}\n" in usage_error(index_main, argv, capsys)
    assert (mine / "thesis.tex").read_text() == "three years of work"


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", b"plain start, then \xc3\x28 bad"])
def test_index_build_of_a_binary_document_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, content: bytes
) -> None:
    monkeypatch.setattr(QRAG, "from_pretrained", _no_model_needed)
    document = tmp_path / "image.png"
    document.write_bytes(content)
    assert index_main(["build", "--document", str(document), "--out", str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"qrag-index: error: {document}:") and "byte offset" in err and "Traceback" not in err


def _no_model_needed(*args: object, **kwargs: object) -> QRAG:
    raise AssertionError("the document must be checked before the model is loaded")


def test_qrag_data_out_must_be_a_file_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["babilong", "--task", "qa1", "--length", "1k", "--out", str(tmp_path)]
    assert "is a directory; give a file name" in usage_error(data_main, argv, capsys)
    assert "--n: must be a positive integer" in usage_error(data_main, [*argv[:-1], "x.jsonl", "--n", "0"], capsys)
    with pytest.raises(InvalidInputError, match="is a directory"):
        write_jsonl([Example(id="a", question="q?", chunks=["a."])], tmp_path)


def test_an_unusable_cache_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="embedding cache"):
        EmbeddingCache(tmp_path)


# ------------------------------------------------------------------------------------------------ Python API
def test_doc_ids_and_metadatas_must_match_the_documents(tiny_model: QRAG) -> None:
    documents = ["Mary left. John slept.", "Sandra ran."]
    with pytest.raises(InvalidInputError, match="doc_ids must be a list with one entry per document: 2, got 1"):
        DocumentIndex.build(tiny_model, documents, doc_ids=["a"])
    with pytest.raises(InvalidInputError, match="metadatas must be a list with one entry per document: 2, got 1"):
        DocumentIndex.build(tiny_model, documents, metadatas=[{"page": 1}])
    with pytest.raises(InvalidInputError, match="doc_ids must be a list"):
        DocumentIndex.build(tiny_model, documents, doc_ids="ab")
    with pytest.raises(InvalidInputError, match="doc_id must be a non-empty string"):
        DocumentIndex.build(tiny_model, documents, doc_ids=["a", 2])
    with pytest.raises(InvalidInputError, match="must be a dict"):
        DocumentIndex.build(tiny_model, documents, metadatas=[{"page": 1}, "page 2"])
    index = DocumentIndex.build(tiny_model, documents, doc_ids=["a", "b"], metadatas=[{"page": 1}, None])
    assert index.doc_ids == ["a", "b"] and index.chunks[0].metadata == {"page": 1}


@dataclasses.dataclass
class _Page:
    number: int


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        (datetime.datetime(2024, 5, 1), "key 'when' holds an object of type datetime,"),
        ({"draft", "final"}, "key 'when' holds an object of type set,"),
        ({"nested": [object()]}, "key 'when' holds an object of type object inside it"),
        ({("a", 1): "x"}, "key 'when' cannot be written"),
    ],
)
def test_metadata_that_cannot_be_saved_is_refused_where_it_enters(
    tiny_model: QRAG, tmp_path: Path, value: object, problem: str
) -> None:
    metadata = {"source": "story.txt", "when": value}
    wanted = f"{problem}.*cannot be saved as JSON; convert it to a str, number"
    with pytest.raises(InvalidInputError, match=rf"document 'story'.*{wanted}"):
        DocumentIndex.build(tiny_model, ["Mary left."], doc_ids=["story"], metadatas=[metadata])
    with pytest.raises(InvalidInputError, match=rf"document 'story', chunk 1: {wanted}"):
        index = DocumentIndex(tiny_model.action_encoder.fingerprint(), tiny_model.action_encoder.dim)
        chunks = chunks_from_texts(["Mary left.", "John slept."], doc_id="story")
        chunks[1].metadata = metadata
        index.add(chunks, torch.zeros(2, index.dim), doc_id="story")
    retriever = Retriever(tiny_model, cache=None)
    with pytest.raises(InvalidInputError, match=rf"document 1 \(id 'story'\): {wanted}"):
        retriever.add_texts(["Sandra ran.", "Mary left."], metadatas=[None, metadata], ids=["other", "story"])
    assert retriever.doc_ids == []
    with pytest.raises(InvalidInputError, match=rf"document 0, split 1: {wanted}"):
        retriever.add_sources([[Piece("Mary left.", 0), Piece("John slept.", 11, metadata)]])


def test_metadata_that_saves_today_is_still_accepted(tiny_model: QRAG, tmp_path: Path) -> None:
    metadata = {"page": 3, "tags": ("a", "b"), "score": math.nan, 7: "int key", "where": _Page(2), "nested": {"x": [1]}}
    retriever = Retriever(tiny_model, cache=None)
    retriever.add_texts(["Mary left. John slept."], metadatas=[metadata], ids=["story"])
    retriever.save(tmp_path / "saved")
    saved = Retriever.load(tmp_path / "saved", model=tiny_model, cache=None).index.chunks[0].metadata
    assert saved["tags"] == ["a", "b"] and saved["where"] == {"number": 2} and saved["7"] == "int key"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"k": "2"}, "k must be a positive integer or None, got '2'"),
        ({"k": True}, "k must be a positive integer"),
        ({"beam": 1.0}, "beam must be a positive integer"),
        ({"expand_k": 0}, "expand_k must be a positive integer"),
        ({"stop_threshold": "0.5"}, "stop_threshold must be a finite number"),
        ({"stop_threshold": math.nan}, "stop_threshold must be a finite number"),
        ({"document_id": 0}, "document_id must be a string"),
        ({"alternatives": -1}, "alternatives must be an integer >= 0"),
    ],
)
def test_search_options_are_checked(tiny_model: QRAG, options: dict, message: str) -> None:
    index = DocumentIndex.build(tiny_model, "Mary left. John slept. Sandra ran.")
    with pytest.raises(InvalidInputError, match=message):
        search(tiny_model, "Where is Mary?", index, **options)


def test_retrieval_options_must_be_finite() -> None:
    with pytest.raises(InvalidInputError, match="stop_threshold must be a finite number"):
        SearchOptions(stop_threshold=math.inf)


def test_text_with_a_lone_surrogate_is_rejected(tiny_model: QRAG) -> None:
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        DocumentIndex.build(tiny_model, "Mary left. \ud800 John slept.")


@pytest.mark.parametrize("path", ["/etc", "EMPTY"])
def test_a_directory_that_is_no_model_says_so_and_what_was_expected(tmp_path: Path, path: str) -> None:
    folder = str(tmp_path) if path == "EMPTY" else path
    with pytest.raises(ModelNotFoundError, match="is not a model directory") as err:
        QRAG.from_pretrained(folder)
    message = str(err.value)
    assert '"qrag" entry' in message and "model.safetensors" in message and "tokenizer.json" in message
    assert "sentencepiece" not in message


def test_a_question_with_undecodable_command_line_bytes_is_rejected(tiny_model: QRAG) -> None:
    index = DocumentIndex.build(tiny_model, "Mary left. John slept.")
    with pytest.raises(InvalidInputError, match="the question holds a lone surrogate"):
        search(tiny_model, "Where is \udcff Mary?", index)  # how Python passes the byte 0xff of an argv


def test_paths_of_unknown_users_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    build = ["build", "--document", str(tmp_path / "book.txt"), "--out", "~no-such-user/idx"]
    assert "is not a usable path" in usage_error(index_main, build, capsys)
    with pytest.raises(ModelNotFoundError, match="no model named"):
        resolve_model_path("~no-such-user/model")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"document": "Mary left. John slept.", "supporting_facts": [" "]}, "not a non-blank string"),
        ({"chunks": ["Mary left.", "John slept."], "support": [True]}, "not integers"),
    ],
)
def test_examples_built_in_python_get_the_same_support_checks(fields: dict, message: str) -> None:
    example = Example(id="py", question="Where is Mary?", **fields)
    with pytest.raises(InvalidInputError, match=message):
        example.support_indices(example.to_chunks())


def test_evaluate_checks_its_step_count() -> None:
    example = Example(id="e", question="Where is Mary?", chunks=["Mary left.", "John slept."], support=[0])
    with pytest.raises(InvalidInputError, match="steps must be a positive integer or None, got '2'"):
        evaluate(BM25TopK(), [example], steps="2")  # type: ignore[arg-type]


def test_model_paths_may_be_path_objects() -> None:
    assert resolve_model_path(Path(resolve_model_path("minilm"))) == resolve_model_path("minilm")


def test_bm25_on_chunks_without_any_word_returns_the_first_chunks() -> None:
    assert BM25TopK().select("Where?", chunks_from_texts([".", "the .", "!"]), 2) == [0, 1]  # was bm25s ValueError


def test_an_encoder_directory_with_an_undecodable_config_names_file_and_offset(tmp_path: Path) -> None:
    for name in ("model.safetensors", "tokenizer.json"):
        (tmp_path / name).write_text("{}")
    (tmp_path / "config.json").write_bytes(b'{"model_type": "bert", "x": "\xc3"}')
    with pytest.raises(CheckpointError, match=r"config.json:1: not valid UTF-8: byte 0xc3 at byte offset 29"):
        QRAG.from_pretrained(str(tmp_path))
