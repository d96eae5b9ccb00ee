"""The faiss passage indexes on synthetic vectors: recall of the compressed kinds against the exact top-k,
building from blocks without a whole float32 copy, and the parameters they refuse."""

import pytest
import torch

from qrag_core import vector_index
from qrag_core.errors import InvalidInputError
from qrag_core.vector_index import PassageIndex, training_rows

pytest.importorskip("faiss")

DIM = 64


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


@pytest.fixture(scope="module")
def collection() -> tuple[torch.Tensor, torch.Tensor]:
    """5000 unit vectors around 50 topic centres, and 20 queries near some of them."""
    generator = torch.Generator().manual_seed(1)
    centres = unit(torch.randn(50, DIM, generator=generator))
    topic = torch.randint(50, (5000,), generator=generator)
    passages = unit(centres[topic] + 0.1 * torch.randn(5000, DIM, generator=generator))
    queries = unit(passages[:20] + 0.06 * torch.randn(20, DIM, generator=generator))
    return passages, queries


def recall_and_q_error(index: PassageIndex, passages: torch.Tensor, queries: torch.Tensor) -> tuple[float, float]:
    """Share of the exact top-10 (the 3 best excluded) the index returns, and its largest |ΔQ|."""
    hits, worst = 0, 0.0
    for query in queries:
        exact = (passages @ query).topk(13).indices.tolist()
        values, ids = index.search(query, 10, exclude=exact[:3])
        assert len(ids) == 10 and not set(ids.tolist()) & set(exact[:3])
        hits += len(set(ids.tolist()) & set(exact[3:]))
        worst = max(worst, float((values - passages[ids] @ query).abs().max()))
    return hits / (10 * len(queries)), worst


@pytest.mark.parametrize(("kind", "min_recall", "max_q_error"), [("ivf-sq8", 0.95, 5e-3), ("ivf-pq", 0.4, 0.3)])
def test_compressed_indexes_find_the_exact_top_k_with_q_estimated_from_codes(collection, kind, min_recall, max_q_error):
    passages, queries = collection
    index = PassageIndex(passages, kind)
    assert index.index.ntotal == len(passages) and index.index.nprobe == vector_index.IVF_NPROBE
    recall, q_error = recall_and_q_error(index, passages, queries)
    assert recall >= min_recall
    assert 0.0 < q_error <= max_q_error  # an estimate from 8-bit codes: close to Q, never exactly it


def test_sq8_codes_take_a_byte_per_dimension_and_pq_one_per_eight(collection):
    passages, _ = collection
    assert PassageIndex(passages, "ivf-sq8").index.code_size == DIM
    assert PassageIndex(passages, "ivf-pq").index.code_size == DIM // 8
    assert vector_index.pq_codes(384) == 48 and vector_index.pq_codes(100) == 10 and vector_index.pq_codes(7) == 1


@pytest.mark.parametrize("kind", ["ivf", "ivf-sq8", "ivf-pq", "flat"])
def test_an_index_built_from_float16_blocks_equals_the_whole_tensor_one_and_converts_block_by_block(
    collection, kind, monkeypatch
):
    passages, queries = collection
    half = passages.half()
    whole = PassageIndex(half, kind)
    converted: list[int] = []
    to_float32 = vector_index._float32
    monkeypatch.setattr(vector_index, "_float32", lambda block: converted.append(len(block)) or to_float32(block))
    rows = training_rows(len(half))
    training = half[rows] if kind != "flat" else None
    blocks = PassageIndex.from_blocks(kind, len(half), half.split(700), training)
    assert max(converted) <= max(700, len(rows)), "never the whole collection in float32 at once"
    assert sum(converted) == len(half) + (len(rows) if training is not None else 0)
    for query in queries:
        got, want = blocks.search(query, 10), whole.search(query, 10)
        assert got[1].tolist() == want[1].tolist() and got[0].tolist() == want[0].tolist()


def test_training_rows_are_a_fixed_sample_of_64_per_list_or_everything():
    assert training_rows(1000).tolist() == list(range(1000))  # 25 lists x 64 > 1000
    rows = training_rows(1_000_000)
    assert len(rows) == 1000 * vector_index.IVF_TRAIN_PER_LIST and rows.tolist() == sorted(set(rows.tolist()))
    assert torch.equal(rows, training_rows(1_000_000))


def test_bad_parameters_are_refused(collection):
    passages, _ = collection
    with pytest.raises(InvalidInputError, match="ivf-pq index needs at least 256 passages"):
        PassageIndex(passages[:200], "ivf-pq")
    with pytest.raises(InvalidInputError, match="one of"):
        PassageIndex(passages, "ivf-sq4")
    with pytest.raises(InvalidInputError, match="at least one passage"):
        PassageIndex(passages[:0], "ivf-sq8")
    with pytest.raises(InvalidInputError, match="needs training vectors"):
        PassageIndex.from_blocks("ivf-sq8", len(passages), passages.split(1000))
    with pytest.raises(InvalidInputError, match="training vectors must be"):
        PassageIndex.from_blocks("ivf-sq8", len(passages), passages.split(1000), passages[:500, :10])
    with pytest.raises(InvalidInputError, match="of 6000 passages was given 5000"):
        PassageIndex.from_blocks("ivf-sq8", 6000, passages.split(1000), passages[:500])
    with pytest.raises(InvalidInputError, match=r"must be \(rows, 64\)"):
        PassageIndex.from_blocks("flat", 5001, [passages, torch.zeros(1, 3)])
