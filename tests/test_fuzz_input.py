"""Fuzz tests (hypothesis): random JSONL lines and random command lines never end in a traceback.

The command lines are those of qrag-finetune, qrag-eval, qrag-index and qrag-data.

Every failure must be a :class:`QRAGError` (for the JSONL reader) or, for a command line, argparse's
usage error (exit status 2 with ``prog: error: message``) or the tool's own ``prog: error: message``
with exit status 2. The runs are small (tens of examples, no model loaded) so they take seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qrag_core.baselines import BM25TopK
from qrag_core.cli import data as data_cli
from qrag_core.cli import evaluate as eval_cli
from qrag_core.cli import finetune as finetune_cli
from qrag_core.cli import index as index_cli
from qrag_core.config import QRAGConfig
from qrag_core.data.examples import read_jsonl
from qrag_core.errors import QRAGError
from qrag_core.evaluation import evaluate
from qrag_core.metrics import fact_scores, resolve_support

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])

# Text with the characters that break naive readers: surrogates, NUL, control and non-ASCII characters.
awkward_text = st.text(
    alphabet=st.one_of(
        st.characters(codec=None, exclude_categories=()),
        st.sampled_from(["\ud800", "\udfff", "\x00", "\n", "\t", " ", ".", "é", "\u2028"]),
    ),
    max_size=24,
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | awkward_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(awkward_text, inner, max_size=4),
    max_leaves=8,
)
rows = st.fixed_dictionaries(
    {},
    optional={
        key: json_values | awkward_text | st.lists(awkward_text, max_size=4) | st.lists(st.integers(-2, 5), max_size=4)
        for key in ("id", "question", "answer", "document", "chunks", "support", "supporting_facts", "values")
    },
)
sentences = st.lists(awkward_text.map(lambda t: t.strip(" .") + "."), min_size=1, max_size=5)


@st.composite
def near_valid_rows(draw: st.DrawFn) -> dict[str, Any]:
    """Rows that are valid or nearly so: a document of sentences whose facts are (mostly) some of them."""
    story = draw(sentences)
    facts = draw(st.lists(st.sampled_from(story) | awkward_text, min_size=1, max_size=3))
    row: dict[str, Any] = {"question": draw(awkward_text), "id": draw(awkward_text)}
    if draw(st.booleans()):
        row |= {
            "document": " ".join(story + draw(st.lists(st.sampled_from(story), max_size=3))),
            "supporting_facts": facts,
        }
    else:
        row |= {"chunks": story, "support": draw(st.lists(st.integers(-1, len(story)), min_size=1, max_size=3))}
    if draw(st.booleans()):
        row["values"] = draw(st.lists(awkward_text, max_size=2))
    return row


lines = st.one_of(
    near_valid_rows().map(lambda r: json.dumps(r).encode()),
    st.binary(max_size=40),
    json_values.map(lambda v: json.dumps(v).encode()),
    rows.map(lambda r: json.dumps(r).encode()),
    rows.map(lambda r: json.dumps(r, ensure_ascii=False).encode("utf-8", "surrogatepass")),
)


@FUZZ
@given(st.lists(lines, min_size=1, max_size=4), st.booleans())
def test_jsonl_reader_raises_only_qrag_errors(content: list[bytes], need_support: bool) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "fuzz.jsonl"
        path.write_bytes(b"\n".join(content) + b"\n")
        try:
            examples = read_jsonl(path, need_support=need_support)
            for example in examples:
                chunks = example.to_chunks()
                if example.has_support:
                    facts = example.support_alternatives(chunks)
                    fact_scores([0], resolve_support([0], facts))
                    result = evaluate(BM25TopK(), [example], steps=2)
                    assert 0.0 <= result["fact_em"] <= result["fact_recall"] <= 1.0
        except QRAGError:
            pass


def flag_arity(parser: argparse.ArgumentParser) -> dict[str, int]:
    """Every option string of a parser except --help, with how many values it takes (0 or 1)."""
    return {o: int(a.nargs != 0) for a in parser._actions for o in a.option_strings if o not in ("-h", "--help")}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """The sub-command parsers of a tool (``build``, ``search``, ...)."""
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


values = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1", "2", "0.5", "1e309", "none", "None", "true", "", "qa1"]),
    st.sampled_from([".", "..", "/", "~", "~no-such-user/x", "a\x00b", "/etc", "/dev/null", "4k", "tokens"]),
    st.integers(-(10**12), 10**12).map(str),
    st.floats().map(str),
    st.text(max_size=6),
)


def command_lines(flags: dict[str, int]) -> st.SearchStrategy[list[str]]:
    """Random argv: real flags in random order, each with a random value where it takes one (and,
    now and then, a missing or extra value)."""
    arity = st.sampled_from(sorted(flags)).flatmap(
        lambda f: st.tuples(st.just(f), st.lists(values, min_size=flags[f], max_size=flags[f]))
    )
    sloppy = st.tuples(st.sampled_from(sorted(flags)), st.lists(values, max_size=1))
    pair = st.one_of(arity, arity, arity, sloppy).map(lambda p: [p[0], *p[1]])
    return st.lists(pair, max_size=6).map(lambda pairs: [token for p in pairs for token in p])


def assert_clean_exit(call: Callable[[], object]) -> object:
    """``call``'s result, or None when it exited with argparse's status 2 after ``prog: error: message``."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            result = call()
        except SystemExit as exit_info:
            assert exit_info.code == 2, stderr.getvalue()
            assert ": error: " in stderr.getvalue() and "Traceback" not in stderr.getvalue()
            return None
    if isinstance(result, int) and result != 0:
        assert result == 2 and ": error: " in stderr.getvalue(), stderr.getvalue()
    return result


@FUZZ
@given(command_lines(flag_arity(finetune_cli.build_parser())), st.booleans())
def test_finetune_command_line_parsing_never_crashes(argv: list[str], with_required: bool) -> None:
    prefix = ["--data", "train.jsonl", "--out", "run"] if with_required else []
    args = assert_clean_exit(lambda: finetune_cli.parse_args([*prefix, *argv]))
    if args is not None:  # accepted: then every setting is usable (finite, in range)
        config = finetune_cli.training_config(args)
        assert all(math.isfinite(v) for v in vars(config).values() if isinstance(v, float))
        QRAGConfig(**finetune_cli.model_settings(args)).validate()


@FUZZ
@given(command_lines(flag_arity(eval_cli.build_parser())), st.booleans())
def test_eval_command_line_parsing_never_crashes(argv: list[str], with_required: bool) -> None:
    prefix = ["--data", "test.jsonl"] if with_required else []
    assert_clean_exit(lambda: eval_cli.build_parser().parse_args([*prefix, *argv]))


def sub_command_lines(parser: argparse.ArgumentParser) -> st.SearchStrategy[list[str]]:
    """A random sub-command followed by a random command line of its flags."""
    commands = subcommands(parser)
    return st.sampled_from(sorted(commands)).flatmap(
        lambda name: command_lines(flag_arity(commands[name])).map(lambda argv: [name, *argv])
    )


@FUZZ
@given(sub_command_lines(index_cli.build_parser()))
def test_index_command_line_parsing_never_crashes(argv: list[str]) -> None:
    assert_clean_exit(lambda: index_cli.parse_args(argv))


@FUZZ
@given(sub_command_lines(data_cli.build_parser()))
def test_data_command_line_parsing_never_crashes(argv: list[str]) -> None:
    assert_clean_exit(lambda: data_cli.parse_args(argv))


RUN_FLAGS = {"--steps": 1, "--beam": 1, "--stop-threshold": 1, "--limit": 1, "--json": 0, "--quiet": 0}


@FUZZ
@given(command_lines(RUN_FLAGS))
def test_eval_runs_end_to_end_with_random_search_options(argv: list[str]) -> None:
    """qrag-eval with BM25 (no model) on a real file, with random search options: a result or a clean error."""
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "d.jsonl"
        row = {"question": "Where is Mary?", "chunks": ["Mary left.", "John slept.", "Mary is in the garden."]}
        data.write_text(json.dumps(row | {"support": [2], "values": ["garden"]}) + "\n")
        assert_clean_exit(lambda: eval_cli.main(["--data", str(data), "--method", "bm25", "--no-cache", *argv]))
