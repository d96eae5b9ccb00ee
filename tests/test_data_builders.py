"""Dataset builders: bAbI parsing, haystack cleaning, BabiLong samples."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import numpy as np
import pytest

from qrag_core.data import paths
from qrag_core.data.babi import babi_files, parse_babi_file
from qrag_core.data.babilong import babilong_test_indices, build_babilong, iter_babilong, length_label, parse_length
from qrag_core.data.examples import Example, read_jsonl, write_jsonl
from qrag_core.data.haystack import (
    Haystack,
    book_paragraphs,
    count_tokens,
    fill_to_budget,
    scatter_in_order,
    strip_gutenberg,
)
from qrag_core.errors import DataFormatError, InvalidInputError


def _has_data() -> bool:
    try:
        paths.data_dir()
    except paths.DataNotFoundError:
        return False
    return True


needs_data = pytest.mark.skipif(not _has_data(), reason="the shared benchmark data directory is not available")


@pytest.fixture(scope="module")
def haystack() -> Haystack:
    return Haystack.load()


# ----------------------------------------------------------------------------- paths
def test_data_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    assert paths.data_dir() == tmp_path
    with pytest.raises(paths.DataNotFoundError, match="babi"):
        paths.data_file("babi")
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "missing"))
    with pytest.raises(paths.DataNotFoundError, match="QRAG_DATA_DIR"):
        paths.data_dir()


# ----------------------------------------------------------------------------- bAbI
def test_parse_babi_keeps_story_and_maps_support(tmp_path: Path) -> None:
    path = tmp_path / "qa9_x_test.txt"
    path.write_text(
        "1 Mary went to the kitchen.\n2 John went to the garden.\n3 Where is Mary? \tkitchen\t1\n"
        "4 Mary moved to the office.\n5 Where is Mary?\toffice\t4\n1 Bill went home.\n2 Where is Bill?\thome\t1\n"
    )
    samples = parse_babi_file(path)
    assert len(samples) == 3
    first, second, third = samples
    assert first.story == ("Mary went to the kitchen.", "John went to the garden.")
    assert (first.question, first.answer, first.support) == ("Where is Mary?", "kitchen", (0,))
    # The earlier question line is not part of the story; fact 4 is the story's third statement.
    assert second.story[-1] == "Mary moved to the office." and second.support == (2,)
    assert third.story == ("Bill went home.",) and third.source == "qa9_x_test.txt:7"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("1 A.\n3 B.\n", "does not follow"),
        ("x A.\n", "numeric ID"),
        ("1 A.\n2 Where?\tA\t5\n", "name no earlier fact"),
        ("1 A.\n2 Where?\tA\n", "question<TAB>answer"),
    ],
)
def test_parse_babi_rejects_malformed_lines(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(text)
    with pytest.raises(DataFormatError, match=problem) as err:
        parse_babi_file(path)
    assert str(path) in str(err.value)


@needs_data
def test_qa3_train_uses_1k_train_plus_valid_10k() -> None:
    names = [p.name for p in babi_files("qa3", "train")]
    assert names == ["qa3_three-supporting-facts_train.txt", "qa3_valid.txt"]
    assert "en-10k" in str(babi_files("qa2", "train")[0])
    with pytest.raises(InvalidInputError, match="qa21"):
        babi_files("qa21", "test")


# ----------------------------------------------------------------------------- haystack
def test_strip_gutenberg_and_join_wrapped_lines() -> None:
    raw = (
        "Header\r\n***START OF THE BOOK***\r\nIt was a dark\r\nnight.  Rain fell.\r\n\r\n"
        "Next para.\r\n*** END OF IT\r\nLicence"
    )
    body = strip_gutenberg(raw)
    assert "Header" not in body and "Licence" not in body
    assert book_paragraphs(body) == ["It was a dark night. Rain fell.", "Next para."]
    with pytest.raises(FileNotFoundError, match="markers"):
        strip_gutenberg("no markers here", "x.txt")


def test_fill_to_budget_never_exceeds_and_stops_within_tolerance() -> None:
    stream = iter([("a", 5), ("b", 50), ("c", 3), ("d", 1), ("e", 9)] * 10)
    taken, total = fill_to_budget(stream, budget=10, tolerance=1)
    assert taken == ["a", "c", "d"] and total == 9
    assert fill_to_budget(iter([]), budget=0, tolerance=0) == ([], 0)


def test_scatter_in_order_keeps_both_orders() -> None:
    background = [f"n{i}" for i in range(20)]
    items = ["f0", "f1", "f2", "f3"]
    merged, positions = scatter_in_order(background, items, random.Random(3))
    assert [merged[p] for p in positions] == items
    assert positions == sorted(positions)
    assert [m for m in merged if m.startswith("n")] == background


@needs_data
def test_haystack_sentences_are_clean(haystack: Haystack) -> None:
    assert len(haystack.names) == 6
    for book in haystack.sentences:
        text = " ".join(book)
        assert "Project Gutenberg-tm" not in text and "START OF" not in text and "\n" not in text
    assert all(len(c) == len(s) for c, s in zip(haystack.counts, haystack.sentences, strict=True))


# ----------------------------------------------------------------------------- BabiLong
def test_length_labels() -> None:
    assert parse_length("4k") == 4096 and parse_length("1M") == 1024 * 1024 and parse_length(300) == 300
    assert length_label(4096) == "4k" and length_label("10M") == "10M" and length_label(0) == "0k"
    with pytest.raises(InvalidInputError, match="bad length"):
        parse_length("4 kilo")


@needs_data
@pytest.mark.parametrize(("task", "length"), [("qa1", "1k"), ("qa3", "1k"), ("qa2", "4k"), ("qa5", "16k")])
def test_babilong_facts_in_order_and_length_within_2_percent(haystack: Haystack, task: str, length: str) -> None:
    from qrag_core.data.babi import babi_samples

    examples = build_babilong(task, "test", length, n=4, seed=1, haystack=haystack)
    samples = babi_samples(task, "test")
    assert [e.id for e in examples] == [f"babilong-{task}-test-{length}-{i}" for i in babilong_test_indices(task)[:4]]
    for example, index in zip(examples, babilong_test_indices(task)[:4], strict=True):
        sample = samples[index]
        # The story is a subsequence of the chunks, in order.
        it = iter(example.chunks)
        assert all(any(chunk == fact for chunk in it) for fact in sample.story)
        assert sorted(example.chunks[i] for i in example.support) == sorted({sample.story[i] for i in sample.support})
        assert example.answer == sample.answer and example.question == sample.question
        assert example.extra["task"] == task and example.extra["length"] == length
        tokens = sum(count_tokens(example.chunks))
        assert example.extra["tokens"] == tokens
        assert 0.98 * parse_length(length) <= tokens <= parse_length(length)


@needs_data
def test_babilong_support_indices_are_exactly_the_facts(haystack: Haystack) -> None:
    example = build_babilong("qa2", "test", "1k", n=1, seed=0, haystack=haystack)[0]
    from qrag_core.data.babi import babi_samples

    sample = babi_samples("qa2", "test")[babilong_test_indices("qa2")[0]]
    # Map each story statement to its chunk position by walking the chunks in order.
    positions, cursor = [], 0
    for fact in sample.story:
        while example.chunks[cursor] != fact:
            cursor += 1
        positions.append(cursor)
        cursor += 1
    assert example.support == sorted({positions[i] for i in sample.support})


@needs_data
def test_babilong_same_seed_same_file(tmp_path: Path, haystack: Haystack) -> None:
    a, b, c = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "c.jsonl"
    write_jsonl(iter_babilong("qa1", "train", "1k", n=3, seed=7, haystack=haystack), a)
    write_jsonl(iter_babilong("qa1", "train", "1k", n=3, seed=7, haystack=haystack), b)
    write_jsonl(iter_babilong("qa1", "train", "1k", n=3, seed=8, haystack=haystack), c)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = read_jsonl(a, need_support=True)
    assert len(rows) == 3 and all(r.extra["split"] == "train" for r in rows)


@needs_data
def test_babilong_hard_distractors_mention_the_topic(haystack: Haystack) -> None:
    import re

    from qrag_core.data.babi import babi_samples
    from qrag_core.data.babilong import topic_words

    plain = build_babilong("qa2", "train", "1k", n=3, seed=0, haystack=haystack)
    hard = build_babilong("qa2", "train", "1k", n=3, seed=0, haystack=haystack, distractors=6)
    samples = {s.source: s for s in babi_samples("qa2", "train")}
    for easy, example in zip(plain, hard, strict=True):
        sample = samples[example.extra["source"]]
        words = topic_words(sample)
        assert all(w not in {"where", "is", "the"} for w in words)
        story = set(sample.story)
        mentioning = re.compile(r"\b(" + "|".join(words) + r")\b", re.IGNORECASE)

        def topical(chunks: list[str], story: set[str] = story, pattern: re.Pattern[str] = mentioning) -> int:
            return sum(1 for c in chunks if c not in story and pattern.search(c))

        assert topical(example.chunks) >= 6 > topical(easy.chunks)
        # The facts and their support indices are as without distractors, and the length stays in bounds.
        assert [example.chunks[i] for i in example.support] == [easy.chunks[i] for i in easy.support]
        assert example.extra["distractors"] == 6 and "distractors" not in easy.extra
        assert example.extra["tokens"] == sum(count_tokens(example.chunks))
        assert 0.98 * 1024 <= example.extra["tokens"] <= 1024
    with pytest.raises(InvalidInputError, match="distractors"):
        build_babilong("qa2", "train", "1k", n=1, haystack=haystack, distractors=-1)


@needs_data
def test_babilong_0k_is_the_story_alone() -> None:
    example = build_babilong("qa4", "test", "0k", n=1)[0]
    assert len(example.chunks) == 2 and example.extra["length"] == "0k"


@needs_data
def test_babilong_1m_sample_streams_to_length(haystack: Haystack) -> None:
    example = next(iter_babilong("qa1", "test", "1M", n=1, seed=0, haystack=haystack))
    target = parse_length("1M")
    assert 0.99 * target <= example.extra["tokens"] <= target
    assert len(example.chunks) > 40_000


@needs_data
def test_babilong_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="split"):
        build_babilong("qa1", "dev", "1k")
    with pytest.raises(InvalidInputError, match="no test samples"):
        build_babilong("qa6", "test", "0k")
    with pytest.raises(InvalidInputError, match="n must be positive"):
        build_babilong("qa1", "test", "0k", n=0)


# Official test samples as main built them before the other draw existed: (task, length, seed) → per sample
# (id, start of the first chunk, support, chunk count, sha256 prefix of the whole sample). Embedding caches and
# measured results depend on these samples, so they must never change.
OFFICIAL_PINS = {
    ("qa1", "1k", 0): [
        (
            "babilong-qa1-test-1k-1",
            "I don't believe he would have gone away, if Blucher had not ",
            [3],
            46,
            "b69cbf534b466c65",
        ),
        ("babilong-qa1-test-1k-4", '"Do you want to see?', [72], 87, "5bb8478b8fadbd00"),
    ],
    ("qa3", "4k", 0): [
        (
            "babilong-qa3-test-4k-15",
            "While this sort of a dog with a human face was mounting guar",
            [244, 248, 252],
            254,
            "d635af1ddf88364c",
        ),
        ("babilong-qa3-test-4k-37", "Sandra travelled to the kitchen.", [239, 241, 247], 253, "bc705dba5e6431c4"),
    ],
    ("qa5", "1k", 1): [
        ("babilong-qa5-test-1k-3", "Fred picked up the football there.", [54], 55, "12de18450b81bb89"),
        ("babilong-qa5-test-1k-13", "To hold my peace was very easy, however.", [43], 60, "46f6fdf9efb057e9"),
    ],
}


def _digest(example: Example) -> str:
    fields = [example.id, example.question, example.chunks, example.support, example.answer, example.extra]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@needs_data
@pytest.mark.parametrize(("task", "length", "seed"), list(OFFICIAL_PINS))
def test_babilong_official_draw_is_unchanged(haystack: Haystack, task: str, length: str, seed: int) -> None:
    examples = build_babilong(task, "test", length, n=2, seed=seed, haystack=haystack)
    assert examples == build_babilong(task, "test", length, n=2, seed=seed, haystack=haystack, draw="official")
    got = [(e.id, e.chunks[0][:60], e.support, len(e.chunks), _digest(e)) for e in examples]
    assert got == OFFICIAL_PINS[(task, length, seed)]
    assert all("draw" not in e.extra for e in examples)


@needs_data
def test_babilong_other_draw_avoids_the_official_questions(haystack: Haystack) -> None:
    from qrag_core.data.babi import babi_samples

    for task in ("qa1", "qa3"):
        official = set(babilong_test_indices(task))
        indices = [int(e.id.rsplit("-", 1)[1]) for e in build_babilong(task, "test", "0k", draw="other")]
        # Every other test question once, none of the 100, in a shuffled (not file) order.
        assert sorted(indices) == sorted(set(range(len(babi_samples(task, "test")))) - official)
        assert indices != sorted(indices)
    examples = build_babilong("qa2", "test", "1k", n=3, seed=1, haystack=haystack, draw="other")
    assert all(e.id.startswith("babilong-qa2-test-other-1k-") and e.extra["draw"] == "other" for e in examples)
    assert all(e.extra["split"] == "test" and e.extra["tokens"] <= 1024 for e in examples)


@needs_data
def test_babilong_other_draw_is_deterministic_and_seeded(haystack: Haystack) -> None:
    def draw(seed: int) -> list[Example]:
        return build_babilong("qa1", "test", "1k", n=3, seed=seed, haystack=haystack, draw="other")

    first = draw(1)
    assert first == draw(1)
    assert [e.id for e in first] != [e.id for e in draw(2)]
    # A longer draw starts with the shorter one.
    assert build_babilong("qa1", "test", "1k", n=5, seed=1, haystack=haystack, draw="other")[:3] == first


@needs_data
def test_babilong_other_draw_places_a_question_elsewhere_in_the_haystack(
    haystack: Haystack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asked to draw an official question, the other draw would still put it at other haystack positions."""
    import qrag_core.data.babilong as babilong

    official = build_babilong("qa1", "test", "1k", n=2, seed=0, haystack=haystack)
    indices = [int(e.id.rsplit("-", 1)[1]) for e in official]
    monkeypatch.setattr(babilong, "_question_indices", lambda *args: indices)
    other = build_babilong("qa1", "test", "1k", n=2, seed=0, haystack=haystack, draw="other")
    assert [e.id.replace("-other", "") for e in other] == [e.id for e in official]
    for a, b in zip(official, other, strict=True):
        assert a.question == b.question and a.chunks != b.chunks


def test_babilong_draw_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidInputError, match="unknown draw"):
        build_babilong("qa1", "test", "0k", draw="second")
    with pytest.raises(InvalidInputError, match="train split has a single draw"):
        build_babilong("qa1", "train", "0k", draw="other")


# ----------------------------------------------------------------------------- qrag-data CLI
@needs_data
def test_qrag_data_babilong_writes_the_same_file_for_the_same_seed(tmp_path: Path) -> None:
    from qrag_core.cli.data import main as data_main

    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    for out in (a, b):
        args = ["babilong", "--task", "qa1", "qa2", "--length", "1k", "--split", "test", "--n", "2", "--out", str(out)]
        assert data_main(args) == 0
    assert a.read_bytes() == b.read_bytes()
    rows = read_jsonl(a, need_support=True)
    assert [r.extra["task"] for r in rows] == ["qa1", "qa1", "qa2", "qa2"]


@needs_data
def test_qrag_data_babilong_other_draw(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qrag_core.cli.data import main as data_main

    out = tmp_path / "other.jsonl"
    args = ["babilong", "--task", "qa1", "--length", "0k", "--n", "3", "--draw", "other", "--seed", "1"]
    assert data_main([*args, "--out", str(out)]) == 0
    rows = read_jsonl(out, need_support=True)
    assert [r.id for r in rows] == [e.id for e in build_babilong("qa1", "test", "0k", n=3, seed=1, draw="other")]
    assert all(r.extra["draw"] == "other" for r in rows)
    with pytest.raises(SystemExit) as exit_info:
        data_main(
            ["babilong", "--task", "qa1", "--length", "0k", "--split", "train", "--draw", "other", "--out", str(out)]
        )
    assert exit_info.value.code == 2
    assert "--draw other needs --split test" in capsys.readouterr().err


def test_qrag_data_reports_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from qrag_core.cli.data import main as data_main

    assert data_main(["babilong", "--task", "qa99", "--length", "1k", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "qa99" in capsys.readouterr().err
    assert data_main(["babilong", "--task", "qa1", "--length", "lots", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert "bad length" in capsys.readouterr().err


# ----------------------------------------------------------------------------- RULER NIAH
NIAH_VALUE_COUNTS = {
    "niah_single_1": 1,
    "niah_single_2": 1,
    "niah_single_3": 1,
    "niah_multikey_1": 1,
    "niah_multikey_2": 1,
    "niah_multikey_3": 1,
    "niah_multivalue": 4,
    "niah_multiquery": 4,
}


@needs_data
@pytest.mark.parametrize("task", sorted(NIAH_VALUE_COUNTS))
def test_niah_needles_support_values_and_length(haystack: Haystack, task: str) -> None:
    from qrag_core.data.ruler import NIAH_TASKS, NOISE_SENTENCES, build_niah

    examples = build_niah(task, "4k", n=2, seed=5, haystack=haystack)
    assert [e.id for e in examples] == [f"ruler-{task}-4k-0", f"ruler-{task}-4k-1"]
    novel = {s for book in haystack.sentences for s in book}
    for example in examples:
        values = example.extra["values"]
        assert len(values) == NIAH_VALUE_COUNTS[task] == len(example.support)
        support_text = [example.chunks[i] for i in example.support]
        assert all(t.startswith("One of the special magic ") for t in support_text)
        assert sorted(v for v in values if any(v in t for t in support_text)) == sorted(values)
        assert example.question.startswith(f"What are all the special magic {NIAH_TASKS[task].values} for ")
        others = [c for i, c in enumerate(example.chunks) if i not in set(example.support)]
        assert not any(v in c for v in values for c in others)  # a value is only in its needle
        kind = NIAH_TASKS[task].haystack
        needles = [c for c in others if c.startswith("One of the special magic ")]
        if kind == "noise":
            assert set(others) <= set(NOISE_SENTENCES)
        elif kind == "needle":
            assert needles == others and len(needles) > 10
        else:
            assert len(needles) == (3 if task == "niah_multikey_1" else 0)
            assert sum(c in novel for c in others) == len(others) - len(needles)
        tokens = sum(count_tokens(example.chunks))
        assert example.extra["tokens"] == tokens and 0.98 * 4096 <= tokens <= 4096


@needs_data
def test_niah_same_seed_same_samples_and_bad_task(haystack: Haystack) -> None:
    from qrag_core.data.ruler import build_niah

    first = build_niah("niah_multiquery", "1k", n=2, seed=3, haystack=haystack)
    again = build_niah("niah_multiquery", "1k", n=2, seed=3, haystack=haystack)
    other = build_niah("niah_multiquery", "1k", n=2, seed=4, haystack=haystack)
    assert [e.to_json() for e in first] == [e.to_json() for e in again]
    assert [e.to_json() for e in first] != [e.to_json() for e in other]
    with pytest.raises(InvalidInputError, match="unknown NIAH task"):
        build_niah("niah_single_9", "4k", haystack=haystack)


# ----------------------------------------------------------------------------- HotpotQA, MuSiQue
@needs_data
def test_hotpotqa_paragraph_chunks_and_support_titles() -> None:
    from qrag_core.data.hotpotqa import HOTPOTQA_FILE, build_hotpotqa

    examples = build_hotpotqa()
    records = json.loads(paths.data_file(*HOTPOTQA_FILE).read_text())
    assert len(examples) == len(records) == 297
    for example, record in zip(examples, records, strict=True):
        gold = {title for title, _ in record["supporting_facts"]}
        assert len(example.chunks) == len(record["context"])
        assert {record["context"][i][0] for i in example.support} == gold
        assert all(example.chunks[i].startswith(record["context"][i][0] + ": ") for i in example.support)
        assert example.extra["task"] == "hotpotqa" and example.answer == record["answer"]
    assert len(build_hotpotqa(n=5)) == 5


@needs_data
def test_musique_support_from_labels() -> None:
    from qrag_core.data.musique import build_musique

    examples = build_musique()
    assert len(examples) == 200
    assert all(len(e.chunks) == 20 and 2 <= len(e.support) <= 4 for e in examples)
    assert {e.extra["hops"] for e in examples} >= {"2hop", "3hop1", "4hop1"}


@needs_data
def test_hotpotqa_train_split_is_disjoint_from_test_and_labelled() -> None:
    from qrag_core.data.hotpotqa import HOTPOTQA_SPLITS, build_hotpotqa

    train, test = build_hotpotqa(split="train"), build_hotpotqa(split="test")
    assert (len(train), len(test)) == (907, 297)
    assert not {e.id for e in train} & {e.id for e in test}
    assert len({e.id for e in train}) == 907
    assert [e.extra["official_split"] for e in train] == ["train"] * 100 + ["dev"] * 807
    assert {e.extra["split"] for e in train} == {"train"} and {e.extra["split"] for e in test} == {"test"}
    assert {e.extra["official_split"] for e in test} == {"dev"}
    records = [
        record
        for folder, name, _ in HOTPOTQA_SPLITS["train"]
        for record in json.loads(paths.data_file(folder, name).read_text())
    ]
    for example, record in zip(train, records, strict=True):
        gold = {title for title, _ in record["supporting_facts"]}
        assert example.id == record["_id"] and {record["context"][i][0] for i in example.support} == gold
    # n counts across the split's two files
    assert [e.extra["official_split"] for e in build_hotpotqa(n=102, split="train")[-3:]] == ["train", "dev", "dev"]
    with pytest.raises(InvalidInputError, match="unknown HotpotQA split"):
        build_hotpotqa(split="dev")


@needs_data
def test_musique_train_split_is_disjoint_from_dev() -> None:
    from qrag_core.data.musique import MUSIQUE_SPLITS, build_musique

    train, dev = build_musique(split="train"), build_musique()
    assert (len(train), len(dev)) == (100, 200)
    assert not {e.id for e in train} & {e.id for e in dev}
    assert {e.extra["split"] for e in train} == {"train"} and {e.extra["split"] for e in dev} == {"dev"}
    lines = paths.data_file(*MUSIQUE_SPLITS["train"]).read_text().splitlines()
    for example, line in zip(train, lines, strict=True):
        record = json.loads(line)
        assert [i for i, p in enumerate(record["paragraphs"]) if p["is_supporting"]] == example.support
        assert 2 <= len(example.support) <= 4 and len(example.chunks) == 20
    with pytest.raises(InvalidInputError, match="unknown MuSiQue split"):
        build_musique(split="test")


def test_musique_malformed_line_names_file_and_line(tmp_path: Path) -> None:
    from qrag_core.data.musique import build_musique

    good = {
        "id": "2hop__1_2",
        "question": "q?",
        "answer": "a",
        "paragraphs": [{"title": "T", "paragraph_text": "text", "is_supporting": True}],
    }
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "x"}) + "\n")
    with pytest.raises(DataFormatError, match=r"m\.jsonl:2: not a MuSiQue record"):
        build_musique(path=path)
    assert build_musique(n=1, path=path)[0].support == [0]


def test_hotpotqa_malformed_record_is_named(tmp_path: Path) -> None:
    from qrag_core.data.hotpotqa import build_hotpotqa

    path = tmp_path / "h.json"
    path.write_text(json.dumps([{"_id": "a", "question": "q"}]))
    with pytest.raises(DataFormatError, match=r"record 0"):
        build_hotpotqa(path=path)


@needs_data
def test_qrag_data_ruler_hotpotqa_musique_commands(tmp_path: Path) -> None:
    from qrag_core.cli.data import main as data_main

    niah = tmp_path / "niah.jsonl"
    assert data_main(["ruler", "--task", "all", "--length", "1k", "--n", "1", "--out", str(niah)]) == 0
    assert len(read_jsonl(niah, need_support=True)) == 8
    for name in ("hotpotqa", "musique"):
        out = tmp_path / f"{name}.jsonl"
        assert data_main([name, "--n", "3", "--out", str(out)]) == 0
        rows = read_jsonl(out, need_support=True)
        assert [r.extra["task"] for r in rows] == [name] * 3
    for name, split in (("hotpotqa", "train"), ("musique", "train"), ("hotpotqa", "test"), ("musique", "dev")):
        out = tmp_path / f"{name}-{split}.jsonl"
        assert data_main([name, "--split", split, "--n", "2", "--out", str(out)]) == 0
        assert [r.extra["split"] for r in read_jsonl(out, need_support=True)] == [split] * 2


def test_haystack_token_counts_are_cached_under_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, minilm_tokenizer
) -> None:
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    book = tmp_path / "novel.txt"
    body = "Mary went to the garden. John slept.\n\nThe end came soon."
    book.write_text(f"*** START OF THE BOOK ***\n{body}\n*** END OF THE BOOK ***\n", encoding="utf-8")
    haystack = Haystack.load(minilm_tokenizer, books=[book])
    (cached,) = (tmp_path / "cache" / "haystack-token-counts").iterdir()
    assert cached.name.startswith("novel-") and list(np.load(cached)) == list(haystack.counts[0])
    assert list(haystack.counts[0]) == count_tokens(haystack.sentences[0], minilm_tokenizer)


def test_the_held_out_hotpotqa_questions_are_the_last_of_the_train_split() -> None:
    from qrag_core.data.hotpotqa import HELD_OUT, iter_hotpotqa, train_and_held_out

    trained, held_out = train_and_held_out()
    assert len(held_out) == HELD_OUT
    assert [e.id for e in trained + held_out] == [e.id for e in iter_hotpotqa(split="train")]
    assert {e.id for e in train_and_held_out(150)[1]} > {e.id for e in held_out}
    with pytest.raises(InvalidInputError):
        train_and_held_out(0)
