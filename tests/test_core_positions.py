"""ρ_t (docs/method.md Eq. M3) against hand-computed values, and the rotary rotation (Eq. M2)."""

import math

import pytest
import torch

from qrag_core.positions import (
    absolute_positions,
    chunk_positions,
    relative_positions,
    rope_frequencies,
    rotary_scores,
    rotate,
)


def rho(n, selected, delta=10.0, ell=9.0, starts=None):
    sel = torch.tensor(selected, dtype=torch.long)
    doc_starts = None if starts is None else torch.tensor(starts)
    return relative_positions(n, sel, delta, ell, doc_starts).tolist()


def test_nothing_selected_is_ell_i_over_n():
    assert rho(4, []) == pytest.approx([0.0, 9 * 1 / 4, 9 * 2 / 4, 9 * 3 / 4])


def test_one_selection_splits_into_two_intervals():
    # selected 2 of 6: interval 0 = [0, 2), interval 1 = [2, 6)
    expected = [0.0, 9 * 1 / 2, 10.0, 10 + 9 * 1 / 4, 10 + 9 * 2 / 4, 10 + 9 * 3 / 4]
    assert rho(6, [2]) == pytest.approx(expected)


def test_first_and_last_chunk_selected():
    # selected 0 and 4 of 5: interval 0 empty, interval 1 = [0, 4), interval 2 = [4, 5)
    assert rho(5, [4, 0]) == pytest.approx([10.0, 10 + 9 / 4, 10 + 18 / 4, 10 + 27 / 4, 20.0])


def test_adjacent_selections():
    # selected 1 and 2 of 4: [0,1) j=0; [1,2) j=1; [2,4) j=2
    assert rho(4, [1, 2]) == pytest.approx([0.0, 10.0, 20.0, 20 + 9 / 2])


def test_several_selections_and_order_inside_intervals():
    n, selected = 20, [3, 7, 15]
    pos = rho(n, selected)
    boundaries = [0, 3, 7, 15, 20]
    for i in range(n):
        j = sum(1 for s in selected if s <= i)
        assert pos[i] == pytest.approx(j * 10 + 9 * (i - boundaries[j]) / (boundaries[j + 1] - boundaries[j]))
    assert pos == sorted(pos), "document order must be preserved"


def test_interval_identity():
    # every chunk's interval index is floor(rho / delta): "after the j-th selected fact"
    n, selected = 30, [4, 11, 12, 25]
    pos = rho(n, selected)
    for i in range(n):
        assert math.floor(pos[i] / 10) == sum(1 for s in selected if s <= i)
        assert pos[i] - 10 * math.floor(pos[i] / 10) < 9 + 1e-6


def test_real_valued_not_truncated():
    assert rho(3, [])[1] == pytest.approx(3.0) and rho(7, [])[1] == pytest.approx(9 / 7)


def test_positions_per_document():
    # two documents [0,4) and [4,10); selection 6 only affects the second
    pos = rho(10, [6], starts=[0, 4])
    assert pos[:4] == pytest.approx(rho(4, []))
    assert pos[4:] == pytest.approx(rho(6, [2]))


def test_modes():
    sel = torch.tensor([2])
    assert chunk_positions("none", 5, sel, 10, 9).tolist() == [0.0] * 5
    assert chunk_positions("absolute", 5, sel, 10, 9).tolist() == pytest.approx(absolute_positions(5, 9).tolist())
    with pytest.raises(ValueError, match="position mode"):
        chunk_positions("bogus", 5, sel, 10, 9)


def test_rotation_preserves_norm_and_zero_is_identity():
    torch.manual_seed(0)
    x = torch.randn(7, 16)
    freqs = rope_frequencies(16)
    rotated = rotate(x, torch.linspace(0, 50, 7), freqs)
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    assert torch.allclose(rotate(x, torch.zeros(7), freqs), x)


def test_rotation_equals_complex_phasor_multiplication():
    torch.manual_seed(1)
    x, p = torch.randn(5, 8), torch.rand(5) * 20
    freqs = rope_frequencies(8, theta=10000.0)
    assert freqs.tolist() == pytest.approx([10000 ** (-2 * k / 8) for k in range(4)])
    z = torch.complex(x[:, 0::2], x[:, 1::2]) * torch.polar(torch.ones(5, 4), p[:, None] * freqs)
    expected = torch.stack([z.real, z.imag], dim=-1).flatten(-2)
    assert torch.allclose(rotate(x, p, freqs), expected, atol=1e-5)


def test_rotary_scores_equal_dot_with_rotated_actions():
    torch.manual_seed(2)
    states, actions = torch.randn(3, 16), torch.randn(50, 16)
    positions = torch.rand(3, 50) * 30
    freqs = rope_frequencies(16, twin_heads=True)
    expected = torch.stack([rotate(actions, positions[b], freqs) @ states[b] for b in range(3)])
    got = rotary_scores(states, actions, positions, freqs, block_size=7)
    assert torch.allclose(got, expected, atol=1e-4)


def test_twin_heads_give_each_half_its_own_schedule():
    freqs = rope_frequencies(16, twin_heads=True)
    assert freqs[:4].tolist() == freqs[4:].tolist() == pytest.approx(rope_frequencies(8).tolist())
