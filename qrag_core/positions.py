"""Relative positional mapping ρ_t (docs/method.md Eq. M3) and the rotary rotation of content embeddings (Eq. M2).

ρ_t gives every chunk a real-valued position that says which selected facts it comes after.
With i_1 < … < i_k the indices of the chunks selected so far, b_0 = 0, b_j = i_j and b_{k+1} = N,
a chunk i with b_j ≤ i < b_{j+1} is placed at

    ρ_t(i) = j·δ + ℓ·(i − b_j) / (b_{j+1} − b_j)

so interval j means "after the j-th selected fact" and the fraction keeps document order inside it.
The action embedding of chunk i is its content embedding e_i rotated at that position: dimension
pairs (x_2k, x_2k+1) turn by the angle ρ_t(i)·θ^(-2k/d). Q(s, c_i) = ⟨E_s(s), R(ρ_t(i)) e_i⟩.

Everything here is vectorised over chunks (no Python loop over N), and an index holding several
documents gets positions per document. A document marked unordered (a collection of independent
passages, e.g. HotpotQA's paragraphs) has every position at 0: R(0) is the identity, so there Q is the
plain inner product ⟨E_s(s), e_i⟩.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from qrag_core.errors import InvalidInputError


def relative_positions(
    num_chunks: int,
    selected: torch.Tensor,
    delta: float = 10.0,
    ell: float = 9.0,
    doc_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """ρ_t(i) for every chunk i, given the (global) indices of the chunks selected so far.

    ``doc_starts`` holds the first global index of each document of a multi-document index (sorted,
    starting at 0); positions are then computed inside each document from its own selections.
    """
    device = selected.device
    index = torch.arange(num_chunks, device=device)
    sel = torch.sort(selected.to(device=device, dtype=torch.long)).values
    if doc_starts is None:
        doc_start = torch.zeros(num_chunks, dtype=torch.long, device=device)
        doc_end = torch.full((num_chunks,), num_chunks, dtype=torch.long, device=device)
    else:
        starts = doc_starts.to(device=device, dtype=torch.long)
        ends = torch.cat([starts[1:], torch.tensor([num_chunks], device=device)])
        doc_of = torch.searchsorted(starts, index, right=True) - 1
        doc_start, doc_end = starts[doc_of], ends[doc_of]
    # j = number of selections in this chunk's document at or before it.
    upto = torch.searchsorted(sel, index, right=True)
    before_doc = torch.searchsorted(sel, doc_start, right=False)
    j = upto - before_doc
    padded = torch.cat([sel, torch.tensor([num_chunks], device=device)])
    left = torch.where(j > 0, padded[(upto - 1).clamp(min=0)], doc_start)
    nxt = padded[upto]
    right = torch.where(nxt < doc_end, nxt, doc_end)
    frac = (index - left).to(torch.float32) / (right - left).to(torch.float32)
    return j.to(torch.float32) * delta + ell * frac


def absolute_positions(
    num_chunks: int, ell: float = 9.0, doc_starts: torch.Tensor | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """ℓ·i/N inside each document: ρ_0 of the relative mapping, fixed for the whole episode."""
    return relative_positions(num_chunks, torch.empty(0, dtype=torch.long, device=device), 1.0, ell, doc_starts)


def chunk_positions(
    mode: str,
    num_chunks: int,
    selected: torch.Tensor,
    delta: float,
    ell: float,
    doc_starts: torch.Tensor | None = None,
) -> torch.Tensor:
    """Positions of every chunk for the given position mode (`relative`, `absolute` or `none`)."""
    if mode == "relative":
        return relative_positions(num_chunks, selected, delta, ell, doc_starts)
    if mode == "absolute":
        return absolute_positions(num_chunks, ell, doc_starts, device=selected.device)
    if mode == "none":
        return torch.zeros(num_chunks, device=selected.device)
    raise InvalidInputError(f"unknown position mode {mode!r}; use 'relative', 'absolute' or 'none'")


@dataclass
class PositionIntervals:
    """ρ as a piecewise-linear function of the chunk index: ρ(i) = offset + slope·(i − start) on [start, end).

    Inside one interval between selected chunks ρ_t is linear, so a whole document's positions are
    described by k+1 intervals per document; fast scoring never needs a per-chunk position array.
    """

    starts: torch.Tensor
    """First chunk (global index) of each non-empty interval, ascending."""
    ends: torch.Tensor
    """One past the last chunk of each interval."""
    offsets: torch.Tensor
    """ρ of the interval's first chunk (j·δ for interval j)."""
    slopes: torch.Tensor
    """Increase of ρ per chunk inside the interval (ℓ divided by the interval's length)."""

    def as_list(self) -> list[tuple[int, int, float, float]]:
        return list(
            zip(self.starts.tolist(), self.ends.tolist(), self.offsets.tolist(), self.slopes.tolist(), strict=True)
        )

    def at(self, index: torch.Tensor) -> torch.Tensor:
        """ρ of the chunks at the given global indices."""
        which = torch.searchsorted(self.starts, index, right=True) - 1
        return self.offsets[which] + self.slopes[which] * (index - self.starts[which]).float()

    def dense(self, num_chunks: int) -> torch.Tensor:
        """ρ of every chunk (for training and tests; retrieval uses the intervals directly)."""
        return self.at(torch.arange(num_chunks, device=self.starts.device))


def position_intervals(
    mode: str,
    num_chunks: int,
    selected: list[int],
    delta: float,
    ell: float,
    doc_starts: list[int] | None = None,
    device: torch.device | None = None,
    ordered: Sequence[bool] | None = None,
) -> PositionIntervals:
    """The intervals of ρ_t (``relative``), of ℓ·i/N (``absolute``) or of 0 (``none``), per document.

    ``ordered`` has one flag per document (default: all ordered); an unordered one is a single interval at 0.
    """
    if mode not in ("relative", "absolute", "none"):
        raise InvalidInputError(f"unknown position mode {mode!r}; use 'relative', 'absolute' or 'none'")
    starts = list(doc_starts) if doc_starts else [0]
    ends = [*starts[1:], num_chunks]
    chosen = sorted(selected) if mode == "relative" else []
    flags = list(ordered) if ordered is not None else [True] * len(starts)
    if len(flags) != len(starts):
        raise InvalidInputError(f"{len(flags)} ordered flags for {len(starts)} documents")
    rows: list[tuple[int, int, float, float]] = []
    cursor = 0
    for doc_start, doc_end, doc_ordered in zip(starts, ends, flags, strict=True):
        while cursor < len(chosen) and chosen[cursor] < doc_start:
            cursor += 1
        inside = []
        while cursor < len(chosen) and chosen[cursor] < doc_end:
            inside.append(chosen[cursor])
            cursor += 1
        if not doc_ordered:
            rows.append((doc_start, doc_end, 0.0, 0.0))
            continue
        bounds = [doc_start, *inside, doc_end]
        for j in range(len(bounds) - 1):
            left, right = bounds[j], bounds[j + 1]
            if right > left:
                slope = 0.0 if mode == "none" else ell / (right - left)
                rows.append((left, right, j * delta, slope))
    columns = list(zip(*rows, strict=True))
    return PositionIntervals(
        torch.tensor(columns[0], dtype=torch.long, device=device),
        torch.tensor(columns[1], dtype=torch.long, device=device),
        torch.tensor(columns[2], dtype=torch.float32, device=device),
        torch.tensor(columns[3], dtype=torch.float32, device=device),
    )


def rope_frequencies(dim: int, theta: float = 10000.0, twin_heads: bool = False) -> torch.Tensor:
    """Angular frequency θ^(-2k/d) of each dimension pair; twin heads give each half its own schedule."""
    if dim % 2 or (twin_heads and dim % 4):
        raise InvalidInputError(f"embedding size {dim} cannot be split into rotation pairs (twin={twin_heads})")
    if twin_heads:
        half = rope_frequencies(dim // 2, theta)
        return torch.cat([half, half])
    return theta ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)


def rotate(x: torch.Tensor, positions: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """R(p)·x: rotate each pair (x_2k, x_2k+1) of ``x[..., d]`` by ``positions[...]·freqs[k]``."""
    angles = positions.unsqueeze(-1).float() * freqs.to(positions.device)
    cos, sin = torch.cos(angles), torch.sin(angles)
    even, odd = x[..., 0::2].float(), x[..., 1::2].float()
    out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def rotary_scores(
    states: torch.Tensor,
    actions: torch.Tensor,
    positions: torch.Tensor,
    freqs: torch.Tensor,
    block_size: int = 32768,
) -> torch.Tensor:
    """Q[b, i] = ⟨states[b], R(positions[b, i]) actions[i]⟩, computed in blocks of chunks.

    ``states`` is (B, d), ``actions`` (N, d), ``positions`` (B, N) or (N,) when shared by all states.
    Rotated action vectors are never stored for the whole document: memory stays O(B·block·d).
    """
    if positions.dim() == 1:
        positions = positions.unsqueeze(0)
    freqs = freqs.to(states.device)
    s_even, s_odd = states[:, 0::2].float(), states[:, 1::2].float()
    blocks = []
    for first in range(0, actions.shape[0], block_size):
        block = actions[first : first + block_size].float()
        a_even, a_odd = block[:, 0::2], block[:, 1::2]
        angles = positions[:, first : first + block_size, None].float() * freqs
        cos, sin = torch.cos(angles), torch.sin(angles)
        rot_even = a_even * cos - a_odd * sin
        rot_odd = a_even * sin + a_odd * cos
        blocks.append((rot_even * s_even[:, None]).sum(-1) + (rot_odd * s_odd[:, None]).sum(-1))
    return torch.cat(blocks, dim=1)
