"""Sharded, resumable indexing of long documents."""

import pytest
import torch

from qrag_core.atomic import save_tensors
from qrag_core.errors import UnsafeOutputError
from qrag_core.index import DocumentIndex
from qrag_core.long_index import build_long_index


def test_sharded_index_equals_direct_index(tiny_model, story, tmp_path):
    document = " ".join([story] * 7)
    built = build_long_index(tiny_model, document, tmp_path / "idx", shard_size=9, show_progress=False)
    direct = DocumentIndex.build(tiny_model, document)
    assert [c.text for c in built.chunks] == [c.text for c in direct.chunks]
    assert torch.equal(built.content, direct.content)
    assert not (tmp_path / "idx.partial").exists()
    loaded = DocumentIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.content, built.content)


FIFTY_FACTS = " ".join(f"Fact number {i} is about item {i * 7}." for i in range(50))  # 5 shards of 10


def killed_after_two_shards(model, directory, monkeypatch) -> list[int]:
    """Build an index of FIFTY_FACTS that is killed as its third shard is encoded; then count what the
    model encodes (the returned list receives the size of every later encoding call)."""
    original = model.encode_chunks
    encoded: list[int] = []

    def dying_encode(texts, cache=None, **kw):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(len(texts))
        return original(texts, cache, **kw)

    monkeypatch.setattr(model, "encode_chunks", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        build_long_index(model, FIFTY_FACTS, directory, shard_size=10, show_progress=False)
    encoded.clear()
    monkeypatch.setattr(
        model,
        "encode_chunks",
        lambda texts, cache=None, **kw: (encoded.append(len(texts)), original(texts, cache, **kw))[1],
    )
    return encoded


def test_resume_after_a_kill_skips_finished_shards(tiny_model, tmp_path, monkeypatch):
    encoded = killed_after_two_shards(tiny_model, tmp_path / "idx", monkeypatch)
    assert len(list((tmp_path / "idx.partial").glob("shard-*.safetensors"))) == 2
    index = build_long_index(tiny_model, FIFTY_FACTS, tmp_path / "idx", shard_size=10, show_progress=False)
    assert sum(encoded) == len(index) - 20, "only the unfinished shards are encoded again"
    assert torch.equal(index.content, DocumentIndex.build(tiny_model, FIFTY_FACTS).content)


def test_a_truncated_manifest_or_shard_is_rebuilt_and_the_rest_reused(tiny_model, tmp_path, monkeypatch):
    """A kill while shard 2 was written leaves shards 0 and 1, a half-written temporary file, and (a
    disk problem) a truncated manifest and shard 1: only shard 1 and the unfinished ones are encoded."""
    encoded = killed_after_two_shards(tiny_model, tmp_path / "idx", monkeypatch)
    work = tmp_path / "idx.partial"
    manifest = (work / "manifest.json").read_bytes()
    (work / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    shard = (work / "shard-00001.safetensors").read_bytes()
    (work / "shard-00001.safetensors").write_bytes(shard[: len(shard) - 100])
    (work / ".tmp-shard-00002.safetensors-abcd1234").write_bytes(shard[:50])
    index = build_long_index(tiny_model, FIFTY_FACTS, tmp_path / "idx", shard_size=10, show_progress=False)
    assert sum(encoded) == 40, "shard 1 (damaged) and shards 2-4 (unfinished) are encoded, shard 0 is reused"
    assert torch.equal(index.content, DocumentIndex.build(tiny_model, FIFTY_FACTS).content)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]


def test_shards_of_another_document_are_not_reused(tiny_model, tmp_path):
    first = " ".join(f"Fact number {i} is about item {i * 7}." for i in range(20))
    second = " ".join(f"Fact number {i} is about item {i * 5}." for i in range(20))
    build_long_index(tiny_model, first, tmp_path / "a", shard_size=10, show_progress=False)
    (tmp_path / "a").rename(tmp_path / "b.partial")  # not a partial directory, and not qrag's partial work
    with pytest.raises(UnsafeOutputError, match="b.partial is not empty and is not a qrag partial index"):
        build_long_index(tiny_model, second, tmp_path / "b", shard_size=10, show_progress=False)
    work = tmp_path / "c.partial"
    work.mkdir()
    (work / "manifest.json").write_text("{}")
    for number in range(2):  # shards of the right shape, made for other work
        zeros = torch.zeros(10, tiny_model.action_encoder.dim, dtype=torch.float16)
        save_tensors({"content": zeros}, work / f"shard-{number:05d}.safetensors", {"work": "other"})
    index = build_long_index(tiny_model, second, tmp_path / "c", shard_size=10, show_progress=False)
    assert torch.equal(index.content, DocumentIndex.build(tiny_model, second).content)


def test_an_existing_index_is_replaced_only_if_asked(tiny_model, tmp_path):
    document = "Mary went to the garden. John took the milk."
    build_long_index(tiny_model, document, tmp_path / "idx", show_progress=False)
    with pytest.raises(UnsafeOutputError, match="already holds a qrag index"):
        build_long_index(tiny_model, document + " Bill slept.", tmp_path / "idx", overwrite=False, show_progress=False)
    assert len(DocumentIndex.load(tmp_path / "idx")) == 2
    (tmp_path / "book").mkdir()
    (tmp_path / "book" / "book.txt").write_text(document)
    with pytest.raises(UnsafeOutputError, match="refusing to replace"):
        build_long_index(tiny_model, document, tmp_path, protect=[tmp_path / "book" / "book.txt"], show_progress=False)


def test_the_fingerprint_of_an_unfinished_build_is_read_back(tiny_model, tmp_path, monkeypatch):
    from qrag_core.long_index import partial_fingerprint

    assert partial_fingerprint(tmp_path / "idx") is None, "nothing begun"
    killed_after_two_shards(tiny_model, tmp_path / "idx", monkeypatch)
    assert partial_fingerprint(tmp_path / "idx") == tiny_model.action_encoder.fingerprint()
    (tmp_path / "idx.partial" / "manifest.json").write_text("{")  # damaged: as if nothing had begun
    assert partial_fingerprint(tmp_path / "idx") is None
