"""The interval form of ρ_t and the fast exact top-k used at retrieval time equal the dense definitions,
and the model's one Q entry point gives search and training the same Q."""

import random

import pytest
import torch

from qrag_core import QRAGConfig, scoring
from qrag_core.index import DocumentIndex
from qrag_core.positions import chunk_positions, position_intervals, rope_frequencies, rotary_scores
from tests.conftest import make_tiny_model


def random_case(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 3000)
    docs = sorted(rng.sample(range(1, n), rng.randint(0, 4)))
    selected = rng.sample(range(n), rng.randint(0, min(6, n)))
    return n, ([0, *docs] if docs else None), selected


@pytest.mark.parametrize("mode", ["relative", "absolute", "none"])
@pytest.mark.parametrize("seed", range(15))
def test_intervals_equal_dense_positions(mode, seed):
    n, doc_starts, selected = random_case(seed)
    starts = None if doc_starts is None else torch.tensor(doc_starts)
    dense = chunk_positions(mode, n, torch.tensor(selected, dtype=torch.long), 10.0, 9.0, starts)
    intervals = position_intervals(mode, n, selected, 10.0, 9.0, doc_starts)
    assert torch.allclose(intervals.dense(n), dense, atol=1e-5)


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", [1, 5])
def test_fast_top_k_is_exact(monkeypatch, seed, k):
    monkeypatch.setattr(scoring, "EXACT_INTERVAL", 16)  # force the block path on small inputs
    n, doc_starts, selected = random_case(seed)
    torch.manual_seed(seed)
    # correlated vectors, as real embeddings are, so many scores are close together
    actions = torch.nn.functional.normalize(torch.randn(n, 32) * 0.3 + torch.randn(32), dim=-1)
    state = torch.nn.functional.normalize(torch.randn(32) * 0.3 + actions.mean(0), dim=0)
    freqs = rope_frequencies(32)
    intervals = position_intervals("relative", n, selected, 10.0, 9.0, doc_starts)
    brute = rotary_scores(state[None], actions, intervals.dense(n)[None], freqs)[0]
    brute[selected] = float("-inf")
    expected_q, expected_i = brute.topk(min(k, n - len(selected)))
    got_q, got_i = scoring.top_k(state, actions, intervals, freqs, k, selected, step=9.0 / 64)
    assert got_i.tolist() == expected_i.tolist()
    assert torch.allclose(got_q, expected_q, atol=1e-5)


@pytest.mark.parametrize("ordered", [True, False])
@pytest.mark.parametrize("mode", ["relative", "absolute", "none"])
def test_search_and_training_score_one_q_function(minilm_tokenizer, mode, ordered):
    """QRAG.top_k (search), QRAG.q_row (the training's dense row) and QRAG.q_taken (the soft-Q loss) agree."""
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(position_mode=mode))
    texts = [f"Sentence {i} about the {word}." for i, word in enumerate("ship king wolf bell tower mask drum".split())]
    index = DocumentIndex.build(model, [texts], ordered=ordered)
    selected = [1, 4]
    with torch.inference_mode():
        actions = model.index_action_vectors(index)
        state = model.state_vectors(["where is the king?"], [[texts[i] for i in selected]])[0]
        row = model.q_row(state, actions, selected, ordered)
        values, chosen, positions = model.top_k(state, actions, selected, 3, ordered=[ordered])
        taken = model.q_taken(
            state.expand(3, -1), actions[chosen], [(len(texts), selected, i) for i in chosen.tolist()], [ordered] * 3
        )
    assert torch.isinf(row[selected]).all() and not set(chosen.tolist()) & set(selected)
    assert chosen.tolist() == row.topk(3).indices.tolist()
    assert torch.allclose(values, row[chosen], atol=1e-5) and torch.allclose(taken, values, atol=1e-5)
    assert bool((positions == 0).all()) == (not ordered or mode == "none")
