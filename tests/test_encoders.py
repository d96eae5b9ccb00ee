"""The text encoders: state text assembly within the position limit, and embeddings."""

import random

import pytest

from qrag_core.encoders import fit_pieces

WORDS = "apple river king ship tower wolf lamp cake road bell star coin rope mask drum".split()


def long_document(chunks: int, seed: int = 0) -> str:
    """Sentences of 64 word-piece tokens each: every chunk has the full 64 tokens."""
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(WORDS) for _ in range(63)) + "." for _ in range(chunks))


def test_fit_pieces_leaves_states_that_fit_unchanged():
    pieces = [[1, 2, 3], [4, 5], [6]]
    assert fit_pieces(pieces, budget=9, piece_cost=1) == pieces
    assert fit_pieces(pieces, budget=6, piece_cost=0) == pieces


def test_fit_pieces_cuts_long_pieces_equally_and_keeps_short_ones():
    question, short, long_a, long_b = [1] * 5, [2] * 3, [3] * 40, [4] * 50
    fitted = fit_pieces([question, short, long_a, long_b], budget=44, piece_cost=1)
    # 4 separators leave 40 tokens: the question (5) and the short chunk (3) stay whole, 16 + 16 for the rest.
    assert fitted == [question, short, [3] * 16, [4] * 16]
    assert sum(len(p) + 1 for p in fitted) <= 44


def test_fit_pieces_drops_the_earliest_chunks_when_one_token_each_does_not_fit():
    pieces = [[9, 9]] + [[i, i] for i in range(10)]
    fitted = fit_pieces(pieces, budget=8, piece_cost=1)  # 4 pieces of one token each
    assert fitted == [[9], [7], [8], [9]]
    with pytest.raises(ValueError):
        fit_pieces(pieces, budget=1, piece_cost=1)


def test_fit_pieces_is_a_pure_function_of_the_ids():
    pieces = [[5] * 30] + [[i] * (10 + i) for i in range(20)]
    assert fit_pieces(pieces, 120, 1) == fit_pieces([list(p) for p in pieces], 120, 1)


def test_short_state_text_is_the_plain_concatenation(tiny_model):
    encoder = tiny_model.state_encoder
    tok = encoder.tokenizer
    ids = encoder.state_ids("where is mary?", ["mary went home.", "john left."])
    pieces = [tok("where is mary?", add_special_tokens=False)["input_ids"]]
    pieces += [tok(t, add_special_tokens=False)["input_ids"] for t in ["mary went home.", "john left."]]
    assert ids == pieces[0] + [tok.sep_token_id] + pieces[1] + [tok.sep_token_id] + pieces[2]


def test_long_state_text_stays_within_the_position_limit(tiny_model):
    encoder = tiny_model.state_encoder
    chunks = [" ".join(WORDS * 6)] * 40
    ids = encoder.state_ids("where is the king?", chunks)
    assert len(ids) + 2 <= encoder.max_positions == 512
    assert ids.count(encoder.tokenizer.sep_token_id) == 40, "every chunk keeps a piece"
    assert encoder.embed_states(["where is the king?"], [chunks]).shape == (1, encoder.dim)


def test_forty_steps_over_64_token_chunks_tiny_model(tiny_model):
    index = tiny_model.index_documents([long_document(45)])
    assert len(index) == 45
    result = tiny_model.search("which king owns the ship?", index, steps=40)
    assert len(result.trace) == 40


@pytest.mark.slow
def test_forty_steps_over_64_token_chunks_real_model(real_model):
    index = real_model.index_documents([long_document(45, seed=1)])
    result = real_model.search("which king owns the ship?", index, steps=40)
    assert len({s.chunk_index for s in result.trace}) == 40
