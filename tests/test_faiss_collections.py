"""faiss search of passage collections (positions off) against the exact torch scorer, on a tiny random model."""

import sys

import pytest
import torch

from qrag_core import vector_index
from qrag_core.errors import InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.search import search
from qrag_core.search_options import SearchOptions
from tests.conftest import load_script

pytest.importorskip("faiss")

WORDS = "apples rivers kings ships towers wolves maps bells coins lamps".split()
PASSAGES = [f"Passage {i} tells of {a} and {b}." for i, (a, b) in enumerate((a, b) for a in WORDS for b in WORDS)]
QUESTIONS = ["towers and kings", "where are the wolves", "coins, lamps and maps"]


@pytest.fixture()
def collection(tiny_model) -> DocumentIndex:
    return DocumentIndex.build(tiny_model, [PASSAGES], ordered=False)


def states(model, questions=QUESTIONS) -> torch.Tensor:
    with torch.inference_mode():
        return model.state_vectors(list(questions), [[] for _ in questions])


def trace(result) -> list[tuple[int, float]]:
    return [(s.chunk_index, s.q_value) for s in result.trace]


def assert_same_chunks_and_q(got, want) -> None:
    assert [i for i, _ in got] == [i for i, _ in want]
    assert [q for _, q in got] == pytest.approx([q for _, q in want], abs=1e-5)


def test_flat_index_gives_the_chunks_and_q_of_the_exact_scorer_never_a_selected_one(tiny_model, collection):
    actions = tiny_model.index_action_vectors(collection)
    flat = tiny_model.passage_index(collection, "flat")
    assert flat is not None and flat.kind == "flat"
    for state in states(tiny_model):
        exact_q, exact_i, _ = tiny_model.top_k(state, actions, [], 10, ordered=[False])
        selected = exact_i[:3].tolist() + [int(exact_i[7])]
        want_q, want_i, _ = tiny_model.top_k(state, actions, selected, 8, ordered=[False])
        got_q, got_i, positions = tiny_model.top_k(state, actions, selected, 8, ordered=[False], passages=flat)
        assert got_i.tolist() == want_i.tolist()
        assert not set(got_i.tolist()) & set(selected)
        assert got_q.tolist() == pytest.approx(want_q.tolist(), abs=1e-5)
        assert positions.tolist() == [0.0] * 8


@pytest.mark.parametrize("beam", [1, 3])
def test_search_with_faiss_flat_equals_search_with_the_torch_scorer(tiny_model, collection, beam):
    for question in QUESTIONS:
        exact = search(tiny_model, question, collection, k=4, beam=beam, vector_index="torch")
        flat = search(tiny_model, question, collection, k=4, beam=beam, vector_index="flat")
        assert_same_chunks_and_q(trace(flat), trace(exact))
        assert [a for s in flat.trace for a, _ in s.alternatives] == [a for s in exact.trace for a, _ in s.alternatives]


@pytest.mark.parametrize(("kind", "q_error"), [("ivf", 1e-5), ("hnsw", 1e-5), ("ivf-sq8", 1e-2)])
def test_approximate_indexes_return_q_of_unselected_chunks_and_find_the_top(tiny_model, collection, kind, q_error):
    actions = tiny_model.index_action_vectors(collection)
    approx = tiny_model.passage_index(collection, kind)
    hits = total = 0
    for state in states(tiny_model):
        selected = tiny_model.top_k(state, actions, [], 2, ordered=[False])[1].tolist()
        want_q, want_i, _ = tiny_model.top_k(state, actions, selected, 10, ordered=[False])
        got_q, got_i, _ = tiny_model.top_k(state, actions, selected, 10, ordered=[False], passages=approx)
        assert len(got_i) == 10 and not set(got_i.tolist()) & set(selected)
        assert got_q.tolist() == pytest.approx((actions[got_i] @ state).tolist(), abs=q_error)  # sq8: from codes
        hits, total = hits + len(set(got_i.tolist()) & set(want_i.tolist())), total + 10
    assert hits / total >= 0.9  # 100 passages: the IVF kinds probe every list, hnsw finds nearly all


def test_faiss_index_is_built_once_per_weights_and_index(tiny_model, collection, monkeypatch):
    built = []
    original = vector_index.PassageIndex.__init__

    def counting(self, vectors, kind):
        built.append((kind, len(vectors)))
        original(self, vectors, kind)

    monkeypatch.setattr(vector_index.PassageIndex, "__init__", counting)
    for question in QUESTIONS:
        search(tiny_model, question, collection, k=3, vector_index="flat")
    assert built == [("flat", len(PASSAGES))]
    first = tiny_model.passage_index(collection, "flat")
    tiny_model.weights_changed()
    assert tiny_model.passage_index(collection, "flat") is not first
    collection.add(collection.chunks[:2], collection.content[:2], doc_id="more", ordered=False)
    search(tiny_model, QUESTIONS[0], collection, k=2, vector_index="flat")
    assert built[-1] == ("flat", len(PASSAGES) + 2)
    search(tiny_model, QUESTIONS[0], collection, k=2, document_id="more", vector_index="flat")
    assert built[-1] == ("flat", 2)  # a search of one document gets an index of its range


def test_documents_with_positions_keep_the_exact_rotary_scorer(tiny_model, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("no faiss index may be built for ordered documents")

    ordered = DocumentIndex.build(tiny_model, [PASSAGES[:40], PASSAGES[40:]], ordered=[True, False])
    exact = [trace(search(tiny_model, q, ordered, k=3, vector_index="torch")) for q in QUESTIONS]
    monkeypatch.setattr(vector_index.PassageIndex, "__init__", refuse)
    for question, want in zip(QUESTIONS, exact, strict=True):
        assert_same_chunks_and_q(trace(search(tiny_model, question, ordered, k=3, vector_index="hnsw")), want)
    # ... unless only the passage collection of a mixed index is searched
    monkeypatch.undo()
    alone = search(tiny_model, QUESTIONS[0], ordered, k=3, document_id="1", vector_index="flat")
    assert all(s.position == 0.0 for s in alone.trace)


def test_without_faiss_the_torch_scorer_serves_and_only_approximate_indexes_are_refused(
    tiny_model, collection, monkeypatch
):
    exact = [trace(search(tiny_model, q, collection, k=3, vector_index="torch")) for q in QUESTIONS]
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now fails, as when it is not installed
    assert SearchOptions().resolve(tiny_model.config).vector_index == "torch"
    assert tiny_model.passage_index(collection, "flat") is None
    for question, want in zip(QUESTIONS, exact, strict=True):
        assert_same_chunks_and_q(trace(search(tiny_model, question, collection, k=3)), want)
        assert_same_chunks_and_q(trace(search(tiny_model, question, collection, k=3, vector_index="flat")), want)
    for kind in vector_index.APPROXIMATE:
        with pytest.raises(InvalidInputError, match=r"needs faiss.*qrag\[faiss\]"):
            SearchOptions(vector_index=kind)
    with pytest.raises(InvalidInputError, match="vector_index must be one of"):
        SearchOptions(vector_index="annoy")


def test_default_is_the_torch_scorer_on_a_cpu_and_faiss_flat_where_faiss_sees_a_gpu(tiny_model, monkeypatch):
    monkeypatch.setattr(vector_index, "faiss_gpus", lambda: 0)
    assert SearchOptions().resolve(tiny_model.config).vector_index == "torch"
    monkeypatch.setattr(vector_index, "faiss_gpus", lambda: 1)
    assert SearchOptions().resolve(tiny_model.config).vector_index == "flat"


def test_benchmark_measures_flat_as_exact_and_writes_its_table(tmp_path, monkeypatch):
    bench = load_script("benchmarks/faiss_collections.py")
    monkeypatch.setattr(bench, "TOPICS", 16)
    report = bench.measure_size(3000, ["flat", "ivf", "ivf-sq8"], queries=4, k=5, selected_count=2)
    flat, ivf, sq8 = (report["scorers"][kind] for kind in ("flat", "ivf", "ivf-sq8"))
    assert flat["recall"] == 1.0 and flat["max_abs_dq"] < 1e-5
    assert 0.0 < ivf["recall"] <= 1.0 and ivf["max_abs_dq"] < 1e-5
    assert 0.0 < sq8["recall"] <= 1.0 and 0.0 < sq8["max_abs_dq"] < 1e-2 and sq8["storage"] == "int8 (SQ8)"
    assert all(s["peak_rss_gb"] > 0.05 for s in report["scorers"].values())  # each scorer's own peak
    bench.write_markdown({"sizes": {"3000": report}}, tmp_path / "f.md")
    text = (tmp_path / "f.md").read_text()
    assert "| flat | fp32 |" in text and "| 1.000 |" in text and "peak RSS GiB" in text
    assert "10M passages (10 × 2^20)" not in text
    bench.write_markdown({"sizes": {"10M": report}}, tmp_path / "f.md")
    assert "10M passages (10 × 2^20)" in (tmp_path / "f.md").read_text()


def test_benchmark_blocks_are_the_same_vectors_every_time_and_their_time_is_left_out():
    bench = load_script("benchmarks/faiss_collections.py")
    whole, _ = bench.synthetic_collection(70_000, 2)
    watch = bench.Stopwatch()
    blocks = list(watch.timed(bench.passage_blocks(70_000, torch.Generator().manual_seed(0))))
    assert [len(b) for b in blocks] == [bench.BLOCK, 70_000 - bench.BLOCK]
    assert torch.equal(torch.cat(blocks), whole) and watch.seconds > 0.0


@pytest.fixture()
def three_collections(tiny_model) -> DocumentIndex:
    return DocumentIndex.build(
        tiny_model, [PASSAGES[:40], PASSAGES[40:70], PASSAGES[70:]], ["a", "b", "c"], ordered=False
    )


def count_builds(monkeypatch) -> dict[str, int]:
    """How often restricted indexes, action vectors and faiss indexes are built from now on."""
    counts = {"copied documents": 0, "faiss indexes": 0}
    add_from, passage_init = DocumentIndex.add_from, vector_index.PassageIndex.__init__

    def copying(self, other, doc_id):
        counts["copied documents"] += 1
        add_from(self, other, doc_id)

    def building(self, vectors, kind):
        counts["faiss indexes"] += 1
        passage_init(self, vectors, kind)

    monkeypatch.setattr(DocumentIndex, "add_from", copying)
    monkeypatch.setattr(vector_index.PassageIndex, "__init__", building)
    return counts


def only(index: DocumentIndex, doc_ids: list[str]) -> DocumentIndex:
    """A new index of these documents of ``index``, in the order given."""
    fresh = DocumentIndex(index.fingerprint, index.dim)
    for doc_id in doc_ids:
        fresh.add_from(index, doc_id)
    return fresh


def test_a_repeated_restricted_search_reuses_its_index_and_faiss_index(tiny_model, three_collections, monkeypatch):
    want = [
        trace(search(tiny_model, q, only(three_collections, ["a", "c"]), k=3, vector_index="flat")) for q in QUESTIONS
    ]
    counts = count_builds(monkeypatch)
    first = trace(
        search(tiny_model, QUESTIONS[0], three_collections, k=3, document_ids=["c", "a"], vector_index="flat")
    )
    assert counts == {"copied documents": 2, "faiss indexes": 1}
    got = [
        trace(search(tiny_model, q, three_collections, k=3, document_ids=["a", "c"], vector_index="flat"))
        for q in QUESTIONS
    ]
    assert counts == {"copied documents": 2, "faiss indexes": 1}, "the same documents: nothing rebuilt"
    assert got[0] == first
    for g, w in zip(got, want, strict=True):
        assert_same_chunks_and_q(g, w)


def test_adding_or_replacing_a_document_renews_the_restricted_index(tiny_model, three_collections, monkeypatch):
    search(tiny_model, QUESTIONS[0], three_collections, k=3, document_ids=["a", "c"], vector_index="flat")
    counts = count_builds(monkeypatch)
    three_collections.remove("a")
    new = [f"New passage {i} on towers and kings." for i in range(5)]
    three_collections.add_from(DocumentIndex.build(tiny_model, [new], ["a"], ordered=False), "a")
    counts["copied documents"] = 0
    result = search(tiny_model, QUESTIONS[0], three_collections, k=3, document_ids=["a", "c"], vector_index="flat")
    assert counts == {"copied documents": 2, "faiss indexes": 1}
    want = search(tiny_model, QUESTIONS[0], only(three_collections, ["c", "a"]), k=3, vector_index="flat")
    assert_same_chunks_and_q(trace(result), trace(want))
    everything = search(tiny_model, QUESTIONS[1], three_collections, k=35, document_ids=["a", "c"], vector_index="flat")
    assert sorted(s.chunk.text for s in everything.chunks) == sorted(new + PASSAGES[70:])
    three_collections.add_from(DocumentIndex.build(tiny_model, [PASSAGES[:3]], ["d"], ordered=False), "d")
    counts["copied documents"] = 0
    search(tiny_model, QUESTIONS[0], three_collections, k=3, document_ids=["a", "c"], vector_index="flat")
    assert counts == {"copied documents": 2, "faiss indexes": 3}, "an added document renews it too"
