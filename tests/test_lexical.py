"""The hybrid search score Q + w·f: the lexical feature, its weight as a model setting and search option."""

import dataclasses
import json
import math
import time

import pytest
import torch

from qrag_core import QRAGConfig
from qrag_core.cli.index import build_parser
from qrag_core.config import field_docs
from qrag_core.data.examples import Example
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.index import DocumentIndex
from qrag_core.lexical import LexicalIndex, identifier_text, lexical_feature, lexical_index
from qrag_core.model import QRAG
from qrag_core.search import search
from qrag_core.search_options import SearchOptions
from qrag_core.vector_index import faiss_available
from tests.conftest import load_script, make_tiny_model

FILLER = [f"Sentence number {i} talks about {w}." for i, w in enumerate("apples rivers kings ships towers".split())]
RARE = "The vault code of Ostrava is 7f3a9c."
CHUNKS = [*FILLER[:3], RARE, *FILLER[3:], "Rain fell all night."]
QUESTION = "What is the vault code of Ostrava?"


@pytest.fixture()
def index(tiny_model):
    return DocumentIndex.build(tiny_model, [CHUNKS])


def test_bm25_scores_rank_the_chunk_sharing_rare_words_first():
    scores = LexicalIndex(CHUNKS).scores(QUESTION)
    assert int(scores.argmax()) == CHUNKS.index(RARE)
    assert float(scores[CHUNKS.index("Rain fell all night.")]) == 0.0
    assert torch.equal(LexicalIndex(CHUNKS).scores("zebra"), torch.zeros(len(CHUNKS)))


def test_the_feature_is_scaled_per_step_and_zero_at_selected_chunks(index):
    rare = CHUNKS.index(RARE)
    feature = lexical_feature(index, QUESTION, 0, len(CHUNKS), [])
    assert float(feature.max()) == pytest.approx(1.0) and int(feature.argmax()) == rare
    assert float(feature.min()) >= 0.0
    after = lexical_feature(index, QUESTION + " And the apples?", 0, len(CHUNKS), [rare])
    assert float(after[rare]) == 0.0 and int(after.argmax()) == CHUNKS.index(FILLER[0])
    assert float(after.max()) == pytest.approx(1.0), "the best chunk still available scores 1"
    assert torch.equal(lexical_feature(index, "zebra", 0, len(CHUNKS), []), torch.zeros(len(CHUNKS)))


def test_the_term_weights_are_built_once_per_index_and_kept_next_to_the_action_vectors(tiny_model, index):
    lexical = lexical_index(index)
    actions = tiny_model.index_action_vectors(index)
    assert lexical_index(index) is lexical, "the action vectors did not push the term weights out"
    assert tiny_model.index_action_vectors(index) is actions, "nor the term weights the action vectors"
    index.add(index.chunks[:1], index.content[:1], doc_id="more")
    assert lexical_index(index) is not lexical and lexical_index(index).size == len(CHUNKS) + 1


@pytest.mark.parametrize("beam", [1, 3])
@pytest.mark.parametrize("ordered", [True, False])
def test_a_large_weight_puts_the_rare_word_chunk_first(tiny_model, beam, ordered):
    index = DocumentIndex.build(tiny_model, [CHUNKS], ordered=ordered)
    result = search(tiny_model, QUESTION, index, k=2, beam=beam, lexical_weight=100.0, order="rank")
    texts = [s.chunk.text for s in result.chunks]
    assert texts[0] == RARE if beam == 1 else RARE in texts  # a beam may take it at either step
    picked = [s.chunk_index for s in result.trace]
    assert len(set(picked)) == 2, "a selected chunk is never picked again"
    assert max(s.q_value for s in result.trace) > 99, "the trace holds the hybrid score"


def test_weight_zero_is_exactly_todays_search(tiny_model, index):
    for beam in (1, 2):
        plain = search(tiny_model, QUESTION, index, k=4, beam=beam)
        zero = search(tiny_model, QUESTION, index, k=4, beam=beam, lexical_weight=0.0)
        assert [(s.chunk_index, s.q_value, s.position) for s in zero.trace] == [
            (s.chunk_index, s.q_value, s.position) for s in plain.trace
        ]


def test_the_hybrid_score_is_q_plus_the_weighted_feature(tiny_model, index):
    w = 0.3
    result = search(tiny_model, QUESTION, index, k=1, lexical_weight=w, alternatives=len(CHUNKS) - 1)
    with torch.no_grad():
        q = tiny_model.q_row(tiny_model.state_vectors([QUESTION], [[]])[0], tiny_model.index_action_vectors(index), [])
    hybrid = q + w * lexical_feature(index, QUESTION, 0, len(CHUNKS), [])
    step = result.trace[0]
    assert step.chunk_index == int(hybrid.argmax())
    got = {step.chunk_index: step.q_value, **dict(step.alternatives)}
    for i, value in got.items():
        assert value == pytest.approx(float(hybrid[i]), abs=1e-5)


def test_the_model_setting_is_the_default_and_the_option_overrides_it(tiny_model, index):
    tiny_model.config.lexical_weight = 100.0
    assert search(tiny_model, QUESTION, index, k=1).chunks[0].chunk.text == RARE
    plain = search(tiny_model, QUESTION, index, k=1, lexical_weight=0.0)
    tiny_model.config.lexical_weight = 0.0
    assert plain.trace[0].chunk_index == search(tiny_model, QUESTION, index, k=1).trace[0].chunk_index


@pytest.mark.skipif(not faiss_available(), reason="needs faiss")
def test_a_faiss_passage_index_falls_back_to_the_exact_scorer(tiny_model):
    index = DocumentIndex.build(tiny_model, [CHUNKS], ordered=False)
    exact = search(tiny_model, QUESTION, index, k=3, lexical_weight=0.5, vector_index="torch")
    for kind in ("flat", "hnsw"):
        got = search(tiny_model, QUESTION, index, k=3, lexical_weight=0.5, vector_index=kind)
        assert [s.chunk_index for s in got.trace] == [s.chunk_index for s in exact.trace]


@pytest.mark.parametrize("name", ["lexical_weight", "identifier_weight"])
@pytest.mark.parametrize("value", [-0.1, math.nan, math.inf, "0.5", True])
def test_bad_weights_are_refused(name, value):
    with pytest.raises(InvalidInputError, match=name):
        SearchOptions(**{name: value})
    with pytest.raises(InvalidInputError, match=name):
        QRAGConfig(**{name: value}).validate()


def test_identifier_words_are_the_words_holding_a_digit():
    assert identifier_text("Room 12B, code 7f3a9c-0de1: ask Mary on 3 May 2021.") == "12b 7f3a9c 0de1 3 2021"
    assert identifier_text("Where is Mary? In the kitchen.") == ""


# The name and the vault words point at one chunk, the ticket number at another.
NAMED = ["Ostrava keeps the vault of Ostrava; the vault code is secret.", "Ticket 4411 was filed on Monday.", *FILLER]
NAMED_QUESTION = "Which vault code of Ostrava is on ticket 4411?"


def test_the_identifier_term_matches_only_words_holding_a_digit(tiny_model):
    index = DocumentIndex.build(tiny_model, [NAMED])
    by_words = search(tiny_model, NAMED_QUESTION, index, k=1, lexical_weight=100.0)
    by_ids = search(tiny_model, NAMED_QUESTION, index, k=1, identifier_weight=100.0)
    assert (by_words.trace[0].chunk_index, by_ids.trace[0].chunk_index) == (0, 1)
    everything = len(NAMED) - 1
    q_only = search(tiny_model, NAMED_QUESTION, index, k=3, alternatives=everything)
    zero = search(tiny_model, NAMED_QUESTION, index, k=3, alternatives=everything, identifier_weight=0.0)
    assert zero.trace == q_only.trace, "weight 0 is exactly the plain search"
    no_ids = search(tiny_model, QUESTION, index, k=3, alternatives=everything, identifier_weight=100.0)
    assert no_ids.trace == search(tiny_model, QUESTION, index, k=3, alternatives=everything).trace, (
        "a question without identifiers is not changed"
    )


def test_states_without_identifiers_never_build_the_lexical_index(tiny_model):
    story = ["Mary went to the kitchen.", "John took the apple there.", "Sandra moved to the garden.", "Ships sail."]
    index = DocumentIndex.build(tiny_model, [story])
    search(tiny_model, "Where is the apple?", index, k=4, identifier_weight=1.0)
    assert not [key for key in index._derived if key[0].startswith("lexical")], "no identifier word, no index"
    search(tiny_model, "Where was the apple on day 3?", index, k=1, identifier_weight=1.0)
    assert [key[0] for key in index._derived if key[0].startswith("lexical")] == ["lexical-identifiers"], (
        "an identifier word builds the identifier words' index only"
    )


def test_the_identifier_index_scores_identifier_words_as_the_full_index_does():
    texts = [*NAMED, "Flight LX318 left gate B12 at 0740 on 3 May.", "Gate 12 is closed; flight 318 is late."]
    full, identifiers = LexicalIndex(texts), LexicalIndex(texts, identifiers_only=True)
    assert set(identifiers.vocabulary) == {"0", "1", "2", "3", "4", "4411", "lx318", "b12", "0740", "12", "318"}
    for question in (NAMED_QUESTION, "Did LX318 leave from B12 at 0740?", "Is gate 12 open?"):
        query = identifier_text(question)
        assert torch.allclose(identifiers.scores(query), full.scores(query)) and identifiers.scores(query).any()


def test_the_identifier_term_leaves_passage_collections_to_the_passage_weight(tiny_model):
    index = DocumentIndex.build(tiny_model, [NAMED, NAMED], doc_ids=["story", "passages"], ordered=[True, False])
    everything = 2 * len(NAMED) - 1
    plain = search(tiny_model, NAMED_QUESTION, index, k=1, document_id="passages", alternatives=everything)
    by_ids = search(
        tiny_model, NAMED_QUESTION, index, k=1, document_id="passages", alternatives=everything, identifier_weight=100.0
    )
    assert by_ids.trace == plain.trace
    both = search(tiny_model, NAMED_QUESTION, index, k=1, identifier_weight=100.0)
    first = both.chunks[0].chunk
    assert (first.doc_id, first.text) == ("story", NAMED[1]), "the story's ticket chunk, not the collection's"


def test_the_identifier_term_adds_its_weighted_feature_to_the_hybrid_score(tiny_model):
    index = DocumentIndex.build(tiny_model, [NAMED])
    w, w_id, n = 0.2, 0.3, len(NAMED)
    tiny_model.config.identifier_weight = w_id  # the model's setting is the default
    result = search(tiny_model, NAMED_QUESTION, index, k=1, lexical_weight=w, alternatives=n - 1)
    tiny_model.config.identifier_weight = 0.0
    with torch.no_grad():
        q = tiny_model.q_row(
            tiny_model.state_vectors([NAMED_QUESTION], [[]])[0], tiny_model.index_action_vectors(index), []
        )
    expected = q + w * lexical_feature(index, NAMED_QUESTION, 0, n, [])
    expected += w_id * lexical_feature(index, identifier_text(NAMED_QUESTION), 0, n, [])
    step = result.trace[0]
    assert step.chunk_index == int(expected.argmax())
    for i, value in {step.chunk_index: step.q_value, **dict(step.alternatives)}.items():
        assert value == pytest.approx(float(expected[i]), abs=1e-5)


def test_a_config_saved_before_the_setting_loads_with_weight_zero(minilm_tokenizer, tmp_path):
    data = QRAGConfig().to_dict()
    del data["lexical_weight"], data["identifier_weight"]
    assert (QRAGConfig.from_dict(data).lexical_weight, QRAGConfig.from_dict(data).identifier_weight) == (0.0, 0.0)
    with pytest.raises(CheckpointError, match="lexical_weight"):
        QRAGConfig.from_dict({**data, "lexical_weight": -1})
    make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False)).save_pretrained(tmp_path / "model")
    config_file = tmp_path / "model" / "config.json"
    saved = json.loads(config_file.read_text())
    saved["qrag"]["config"].pop("lexical_weight")
    config_file.write_text(json.dumps(saved))
    assert QRAG.from_pretrained(str(tmp_path / "model")).config.lexical_weight == 0.0


@pytest.mark.parametrize("name", ["lexical_weight", "identifier_weight"])
def test_the_option_reaches_the_cli_and_the_adapters(capsys, name):
    from qrag_integrations.langchain import QRAGRetriever

    doc = field_docs(SearchOptions)[name]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["search", "--help"])
    assert doc in " ".join(capsys.readouterr().out.split())
    flag = "--" + name.replace("_", "-")
    args = build_parser().parse_args(["search", "--index", "i", "--question", "q", flag, "0.2"])
    assert getattr(args, name) == 0.2
    assert QRAGRetriever.model_fields[name].description == doc


def test_a_step_stays_fast_on_fifty_thousand_chunks():
    texts = [f"chunk {i} mentions item{i % 997} and token{i % 31} in passing" for i in range(50_000)]
    lexical = LexicalIndex(texts)
    start = time.perf_counter()
    for _ in range(10):
        lexical.scores("which chunk mentions item42 and token7? " * 4)
    assert (time.perf_counter() - start) / 10 < 0.05


@pytest.fixture(scope="module")
def script():
    return load_script("benchmarks/lexical_weight.py")


def test_the_fit_chooses_the_weight_with_the_best_training_score(script, tiny_model):
    examples = [Example(id="v", question=QUESTION, chunks=CHUNKS, support=[CHUNKS.index(RARE)])]
    passages = [dataclasses.replace(examples[0], id="p", ordered=False)]
    fitted = script.fit(tiny_model, None, {"vault": examples, "vault-passages": passages}, [0.0, 100.0])
    assert fitted["grid"]["100.0"]["fact_em"] == {"vault": 1.0, "vault-passages": 1.0}
    assert fitted["kinds"] == {"vault": "documents", "vault-passages": "passages"}
    for kind, name in (("documents", "vault"), ("passages", "vault-passages")):
        best = max(fitted["grid"].values(), key=lambda g, name=name: (g["fact_em"][name], -g["weight"]))
        assert fitted["chosen"][kind] == best["weight"]
        assert fitted["compared"][kind] == 100.0, "the hybrid row shows a positive weight even when 0 wins"
    assert script.kind_weights({"documents": 0.0, "passages": 0.3}) == (0.0, 0.3)
    assert script.kind_weights({"passages": 0.3}) == (0.0, 0.3)


def test_the_identifier_fit_runs_at_the_models_own_lexical_weights(script, tiny_model):
    examples = [Example(id="t", question=NAMED_QUESTION, chunks=NAMED, support=[1])]
    chunks = examples[0].to_chunks()
    tiny_model.config.lexical_weight = 100.0  # alone, it picks chunk 0: only the identifier term can win
    try:
        fitted = script.fit_identifier(tiny_model, None, {"ticket": examples}, [0.0, 1000.0])
        first = {
            w: script.hybrid(tiny_model, None, None, identifier_weight=w).select(NAMED_QUESTION, chunks, 1)
            for w in (0.0, 1000.0)
        }
    finally:
        tiny_model.config.lexical_weight = 0.0
    assert first == {0.0: [0], 1000.0: [1]}
    assert {g["weight"] for g in fitted["grid"].values()} == {0.0, 1000.0}
    best = max(fitted["grid"].values(), key=lambda g: (g["mean_fact_em"], -g["weight"]))
    assert fitted["chosen"] == best["weight"] and fitted["compared"] == 1000.0
    assert fitted["lexical_weights"] == {"documents": 100.0, "passages": None}


def test_write_to_saves_only_the_weight_and_refuses_other_directories(script, minilm_tokenizer, tmp_path):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))
    model.save_pretrained(tmp_path / "model")
    script.write_weight(tmp_path / "model", {"documents": 0.0, "passages": 0.2})
    loaded = QRAG.from_pretrained(str(tmp_path / "model"))
    assert (loaded.config.lexical_weight, loaded.config.passage_lexical_weight) == (0.0, 0.2)
    script.write_weight(tmp_path / "model", None, identifier_weight=0.1)  # --keep-lexical-weights
    loaded = QRAG.from_pretrained(str(tmp_path / "model"))
    assert (loaded.config.lexical_weight, loaded.config.passage_lexical_weight) == (0.0, 0.2)
    assert loaded.config.identifier_weight == 0.1
    assert loaded.state_encoder.fingerprint() == model.state_encoder.fingerprint()
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not a saved qrag model"):
        script.write_weight(tmp_path / "other", {"passages": 0.2})
    assert script.main(["--write-to", str(tmp_path / "other"), "--weights", "0"]) == 2
    with pytest.raises(SystemExit) as refused:
        script.main(["--weights", "-1"])
    assert refused.value.code == 2
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_the_hybrid_finds_a_uuid_with_the_real_model(real_model):
    key = "3f2c9a1e-7b4d-4e0a-9c55-1d2e8f6a0b7c"
    chunks = [f"The special magic number for item {i} is {1000 + 37 * i}." for i in range(40)]
    chunks[23] = f"The special magic uuid for {key} is 5e8b1c2d."
    index = DocumentIndex.build(real_model, [chunks])
    for weights in ({"lexical_weight": 1.0}, {"identifier_weight": 1.0}):
        result = search(real_model, f"What is the special magic uuid for {key}?", index, k=1, **weights)
        assert result.chunks[0].chunk.index == 23, weights
    plain = search(real_model, "What is the magic number for item 5?", index, k=2)
    zero = search(real_model, "What is the magic number for item 5?", index, k=2, lexical_weight=0.0)
    assert [s.chunk_index for s in plain.trace] == [s.chunk_index for s in zero.trace]


def test_the_markdown_lists_the_tasks_the_hybrid_changes(script, tmp_path):
    def scores(qa2: float) -> dict:
        per_task = {"qa1": {"fact_em": 1.0}, "qa2": {"fact_em": qa2}}
        return {"n": 2, "fact_em": (1 + qa2) / 2, "seconds": 1.0, "per_task": per_task}

    grid = {str(w): {"weight": w, "fact_em": {"s": em}, "mean_fact_em": em, "seconds": 1.0} for w, em in [(0, 0.5)]}
    entry = {"sets": {"s": 4}, "grid": grid, "chosen": {"documents": 0}, "compared": {"documents": 0.2}}
    identifier_grid = {str(w): {**grid["0"], "weight": w, "mean_fact_em": em} for w, em in [(0, 0.5), (0.3, 0.75)]}
    weights = {"documents": 0.0, "passages": 0.3}
    entry["identifier"] = {"lexical_weights": weights, "grid": identifier_grid, "chosen": 0.3, "compared": 0.3}
    entry["seconds"] = 9.0
    entry |= {"machine": "m", "commit": "c", "command": "x"}
    cells = {
        "niah:4k:2": {m: scores(1.0) for m in script.METHODS},
        "babilong:4k:2": {m: scores(0.5) for m in script.METHODS},
    }
    cells["babilong:4k:2"]["qrag-hybrid"] = scores(1.0)
    script.write_markdown({"models": {"m": {**entry, "test": cells}}}, tmp_path / "r.md")
    text = (tmp_path / "r.md").read_text()
    assert "| 0 (chosen: documents) | 0.500 | **0.5000** | 1 |" in text
    assert "hybrid at documents w = 0.2 (0 chosen: best positive); identifier weight 0.3" in text
    assert "at the model's lexical weights (documents 0, passages 0.3)" in text
    assert "| 0.3 (chosen) | 0.500 | **0.7500** | 1 |" in text
    assert "| babilong:4k:2 | 2 | 0.750 | 1.000 | 0.750 | 0.750 | 0.750 | qa2 0.50 → 1.00 | — |" in text
    assert text.index("babilong:4k:2") < text.index("niah:4k:2"), "cells in the harness's suite order"


def test_passage_collections_and_ordered_documents_have_their_own_weights(tiny_model):
    config = QRAGConfig(lexical_weight=0.2, passage_lexical_weight=0.5)
    assert SearchOptions().resolve(config).passage_lexical_weight == 0.5
    assert SearchOptions(lexical_weight=0.0).resolve(config).passage_lexical_weight == 0.0  # overrides both
    resolved = SearchOptions(passage_lexical_weight=0.3).resolve(config)
    assert (resolved.lexical_weight, resolved.passage_lexical_weight) == (0.2, 0.3)
    with pytest.raises(InvalidInputError, match="passage_lexical_weight"):
        SearchOptions(passage_lexical_weight=-1.0)
    with pytest.raises(InvalidInputError, match="passage_lexical_weight"):
        QRAGConfig(passage_lexical_weight=-1.0).validate()

    # One index: a story (ordered) and a collection of the same chunks. A large passage weight moves
    # the collection's ranking to the word-matching chunk; the story keeps the pure-Q ranking.
    index = DocumentIndex.build(tiny_model, [CHUNKS, CHUNKS], doc_ids=["story", "passages"], ordered=[True, False])
    for doc_id, flag in (("story", True), ("passages", False)):
        plain = search(tiny_model, QUESTION, index, k=1, document_id=doc_id, lexical_weight=0.0)
        hybrid = search(tiny_model, QUESTION, index, k=1, document_id=doc_id, passage_lexical_weight=100.0)
        if flag:
            assert hybrid.trace == plain.trace
        else:
            assert plain.chunks[0].chunk.text != RARE and hybrid.chunks[0].chunk.text == RARE
    both = search(tiny_model, QUESTION, index, k=2, passage_lexical_weight=100.0, order="rank")
    first = both.chunks[0].chunk
    assert (first.doc_id, first.text) == ("passages", RARE)


def test_ordered_training_sets_are_built_at_every_training_length(script):
    sets = script.training_sets(hotpotqa=0, babilong=1, niah=1, lengths=["1k", "4k"])
    assert list(sets) == ["babilong-train/1k", "niah-train/1k", "babilong-train/4k", "niah-train/4k"]
    assert [len(examples) for examples in sets.values()] == [5, 8, 5, 8]
    assert {script.set_kind(examples) for examples in sets.values()} == {"documents"}
    short, long = sets["babilong-train/1k"][0], sets["babilong-train/4k"][0]
    assert len(" ".join(long.chunks)) > 2 * len(" ".join(short.chunks))
    assert script.build_parser().parse_args([]).train_lengths == ["4k", "128k"]
    with pytest.raises(SystemExit):
        script.build_parser().parse_args(["--train-lengths", "5k"])
