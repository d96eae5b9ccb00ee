"""Sharded, resumable indexing of long documents."""

import pytest
import torch

from qrag_core.index import DocumentIndex
from qrag_core.long_index import build_long_index


def test_sharded_index_equals_direct_index(tiny_model, story, tmp_path):
    document = " ".join([story] * 7)
    built = build_long_index(tiny_model, document, tmp_path / "idx", shard_size=9, show_progress=False)
    direct = tiny_model.index_documents(document)
    assert [c.text for c in built.chunks] == [c.text for c in direct.chunks]
    assert torch.equal(built.content, direct.content)
    assert not (tmp_path / "idx.partial").exists()
    loaded = DocumentIndex.load(tmp_path / "idx")
    assert torch.equal(loaded.content, built.content)


def test_resume_after_a_kill_skips_finished_shards(tiny_model, tmp_path, monkeypatch):
    document = " ".join(f"Fact number {i} is about item {i * 7}." for i in range(50))  # 5 shards of 10
    encoded = []
    original = tiny_model.encode_chunks

    def dying_encode(texts, cache=None, **kw):
        if len(encoded) == 2:
            raise KeyboardInterrupt
        encoded.append(len(texts))
        return original(texts, cache, **kw)

    monkeypatch.setattr(tiny_model, "encode_chunks", dying_encode)
    with pytest.raises(KeyboardInterrupt):
        build_long_index(tiny_model, document, tmp_path / "idx", shard_size=10, show_progress=False)
    assert len(list((tmp_path / "idx.partial").glob("shard-*.safetensors"))) == 2
    encoded.clear()
    monkeypatch.setattr(
        tiny_model,
        "encode_chunks",
        lambda texts, cache=None, **kw: (encoded.append(len(texts)), original(texts, cache, **kw))[1],
    )
    index = build_long_index(tiny_model, document, tmp_path / "idx", shard_size=10, show_progress=False)
    assert sum(encoded) == len(index) - 20, "only the unfinished shards are encoded again"
    assert torch.equal(index.content, tiny_model.index_documents(document).content)
