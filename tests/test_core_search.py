"""Greedy and beam search on a tiny random model and on the real MiniLM."""

import inspect

import pytest

from qrag_core import QRAGConfig
from qrag_core.errors import InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.retriever import Retriever
from qrag_core.search import RETURN_DISCOUNT, _Beam, _child_score, search
from qrag_core.search_options import SearchOptions
from qrag_core.vector_index import default_kind
from tests.conftest import make_tiny_model

SENTENCES = [
    f"Sentence number {i} talks about {w}."
    for i, w in enumerate(
        "apples rivers kings ships towers wolves lamps cakes roads bells stars coins ropes masks drums".split()
    )
]


@pytest.fixture()
def index(tiny_model):
    return DocumentIndex.build(tiny_model, [SENTENCES])


def test_greedy_never_selects_a_chunk_twice(tiny_model, index):
    result = search(tiny_model, "what about ships and wolves?", index, k=10)
    chosen = [s.chunk_index for s in result.trace]
    assert len(chosen) == len(set(chosen)) == 10
    assert [s.chunk.index for s in result.chunks] == sorted(chosen), "evidence comes in document order"


def test_trace_records_q_position_and_steps(tiny_model, index):
    result = search(tiny_model, "kings", index, k=3)
    assert [s.step for s in result.trace] == [1, 2, 3]
    first = result.trace[0]
    assert first.position == pytest.approx(9 * first.chunk_index / len(SENTENCES))
    assert all(a[0] != first.chunk_index for a in first.alternatives)
    assert result.trace[0].q_value >= max(q for _, q in first.alternatives)
    assert "step 1" in result.format()


@pytest.mark.parametrize("mode", ["relative", "absolute", "none"])
def test_beam_width_one_equals_greedy(minilm_tokenizer, mode):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(position_mode=mode))
    index = DocumentIndex.build(model, [SENTENCES])
    greedy = search(model, "towers and bells", index, k=4)
    beam = search(model, "towers and bells", index, k=4, beam=1)
    assert [s.chunk_index for s in beam.trace] == [s.chunk_index for s in greedy.trace]
    assert beam.total_q == pytest.approx(greedy.total_q) and beam.score == pytest.approx(greedy.score)


def test_a_greedy_line_scores_its_telescoped_return_or_its_summed_q(tiny_model, index):
    result = search(tiny_model, "apples", index, k=3)
    q = [s.q_value for s in result.trace]
    assert result.score == pytest.approx(q[0] + (1 - RETURN_DISCOUNT) * sum(q[1:]), abs=1e-6)
    summed = search(tiny_model, "apples", index, k=3, beam_score="sum")
    assert summed.score == pytest.approx(summed.total_q, abs=1e-6)


def test_the_return_does_not_reward_a_line_for_putting_off_its_find():
    """A sum counts the reward the model expects once per step: a line that finds the last fact at once
    (then Q ≈ 0: nothing left to find) loses to one that wanders first. The estimated return does not."""
    root = _Beam((), 0.0, [], True)

    def line(picks: list[tuple[float, float]], beam_score: str) -> float:
        beam = root
        for q, best in picks:
            beam = _Beam((), _child_score(beam, q, best, beam_score), [*beam.steps, None], False)
        return beam.score

    finds_at_once = [(0.9, 0.9), (0.0, 0.02), (0.0, 0.01)]  # the find, then nothing left to find
    wanders = [(0.85, 0.9), (0.85, 0.86), (0.2, 0.88)]  # a filler, another, then a poor last pick
    assert line(wanders, "sum") > line(finds_at_once, "sum")
    assert line(finds_at_once, "return") > line(wanders, "return")


@pytest.mark.parametrize("beam_score", ["return", "sum"])
@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("width", [2, 3])
def test_beam_never_scores_lower_than_greedy(minilm_tokenizer, seed, width, beam_score):
    model = make_tiny_model(minilm_tokenizer, seed=seed)
    index = DocumentIndex.build(model, [SENTENCES])
    question = f"question {seed} about masks and drums"
    greedy = search(model, question, index, k=4, beam_score=beam_score)
    beam = search(model, question, index, k=4, beam=width, expand_k=width + 1, beam_score=beam_score)
    assert beam.score >= greedy.score - 1e-6


def test_stop_threshold_stops_early_but_returns_at_least_one(tiny_model, index):
    result = search(tiny_model, "apples", index, k=5, stop_threshold=10.0)
    assert len(result.chunks) == 1 and result.stopped_early


def test_more_steps_than_chunks_returns_all_with_warning(tiny_model):
    index = DocumentIndex.build(tiny_model, [SENTENCES[:3]])
    with pytest.warns(UserWarning, match="only 3 chunks") as caught:
        result = search(tiny_model, "anything", index, k=8)
    assert sorted(s.chunk.index for s in result.chunks) == [0, 1, 2]
    assert caught[0].filename == __file__, "the warning names the caller's line, not one inside qrag or torch"


def test_the_too_many_steps_warning_names_the_line_that_called_the_retriever(tiny_model):
    retriever = Retriever(tiny_model, cache=None)
    retriever.add_texts([" ".join(SENTENCES[:3])])
    with pytest.warns(UserWarning, match="only 3 chunks") as caught:
        retriever.search("anything", k=8)
    assert (caught[0].filename, caught[0].lineno) == (__file__, inspect.currentframe().f_lineno - 1)


def test_search_restricted_to_one_document(tiny_model):
    index = DocumentIndex.build(tiny_model, [SENTENCES[:8], SENTENCES[8:]], doc_ids=["a", "b"])
    result = search(tiny_model, "stars", index, k=3, document_id="b")
    assert {s.chunk.doc_id for s in result.chunks} == {"b"}
    everywhere = search(tiny_model, "stars", index, k=len(SENTENCES))
    assert {s.chunk.doc_id for s in everywhere.chunks} == {"a", "b"}
    assert [(s.chunk.doc_id, s.chunk.index) for s in everywhere.chunks] == sorted(
        (s.chunk.doc_id, s.chunk.index) for s in everywhere.chunks
    )
    with pytest.raises(InvalidInputError, match="no document 'c'"):
        search(tiny_model, "stars", index, document_id="c")


def test_search_restricted_to_several_documents_names_the_unknown_ones(tiny_model):
    index = DocumentIndex.build(tiny_model, [SENTENCES[:5], SENTENCES[5:10], SENTENCES[10:]], doc_ids=["a", "b", "c"])
    result = search(tiny_model, "stars", index, k=4, document_ids=["c", "a"])
    assert {s.chunk.doc_id for s in result.chunks} <= {"a", "c"} and len(result.chunks) == 4
    with pytest.raises(InvalidInputError, match=r"no document\(s\) \['zzz'\]"):
        search(tiny_model, "stars", index, document_ids=["a", "zzz"])


def test_options_left_out_take_the_models_defaults(minilm_tokenizer):
    config = QRAGConfig(max_steps=3, beam_width=2, stop_threshold=0.25, lexical_weight=0.1, identifier_weight=0.2)
    resolved = {"order": "document", "vector_index": default_kind(), "lexical_weight": 0.1, "beam_score": "return"}
    resolved["passage_lexical_weight"] = 0.1  # the model sets no separate one
    resolved["identifier_weight"] = 0.2
    assert SearchOptions().resolve(config) == SearchOptions(k=3, beam=2, expand_k=2, stop_threshold=0.25, **resolved)
    assert SearchOptions(k=5, expand_k=4).resolve(config) == SearchOptions(
        k=5, beam=2, expand_k=4, stop_threshold=0.25, **resolved
    )
    model = make_tiny_model(minilm_tokenizer, config=QRAGConfig(max_steps=3))
    default = search(model, "kings", DocumentIndex.build(model, [SENTENCES]))
    assert len(default.trace) == 3


def test_an_options_object_and_keywords_are_the_same_search(tiny_model, index):
    given = search(tiny_model, "ships", index, SearchOptions(k=3, beam=2, order="rank"))
    assert [s.step for s in given.chunks] == [1, 2, 3], "rank order: the order of selection"
    overridden = search(tiny_model, "ships", index, SearchOptions(k=1, beam=2), k=3, order="rank")
    assert [(s.chunk.index, s.q_value) for s in overridden.chunks] == [(s.chunk.index, s.q_value) for s in given.chunks]


@pytest.mark.parametrize(
    ("question", "options", "message"),
    [
        ("", {}, "empty"),
        ("   ", {}, "empty"),
        (42, {}, "must be a string"),
        ("ok", {"k": 0}, "positive"),
        ("ok", {"beam": 0}, "positive"),
        ("ok", {"beam_score": "mean"}, "beam_score must be one of"),
    ],
)
def test_bad_search_inputs(tiny_model, index, question, options, message):
    with pytest.raises(InvalidInputError, match=message):
        search(tiny_model, question, index, **options)


def test_index_from_another_encoder_is_refused(minilm_tokenizer, index):
    other = make_tiny_model(minilm_tokenizer, seed=7)
    with pytest.raises(InvalidInputError, match="different action encoder"):
        search(other, "apples", index)


@pytest.mark.slow
def test_real_minilm_multi_step_finds_both_facts(real_model, story):
    index = DocumentIndex.build(real_model, story)
    result = search(real_model, "Where is Mary?", index, k=2)
    texts = " ".join(result.texts)
    assert "Mary moved to the bathroom." in texts and "Mary went back to the kitchen." in texts
    beam = search(real_model, "Where is Mary?", index, k=2, beam=3)
    assert beam.score >= result.score - 1e-6
