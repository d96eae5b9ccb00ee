"""The interval form of ρ_t and the fast exact top-k used at retrieval time equal the dense definitions."""

import random

import pytest
import torch

from qrag_core import scoring
from qrag_core.positions import chunk_positions, position_intervals, rope_frequencies, rotary_scores


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
