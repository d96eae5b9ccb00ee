"""Indexing on a local Ray cluster of 2 workers: the same sharded, resumable float16 index as the local build."""

from __future__ import annotations

import sys

import pytest
import torch

from qrag_core.cli.index import main
from qrag_core.errors import QRAGError
from qrag_core.index import DocumentIndex
from qrag_core.long_index import build_long_index
from qrag_core.ray_index import RayShardEncoder, build_long_index_on_ray, encoder_files, load_encoder_files
from tests.test_core_long_index import FIFTY_FACTS, killed_after_two_shards

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray of 2 CPUs for the module, with a small object store (the machine is shared)."""
    ray.init(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def assert_same_index(got: DocumentIndex, expected: DocumentIndex) -> None:
    assert [c.text for c in got.chunks] == [c.text for c in expected.chunks]
    assert [(c.start, c.end) for c in got.chunks] == [(c.start, c.end) for c in expected.chunks]
    assert got.fingerprint == expected.fingerprint
    assert got.content.dtype == expected.content.dtype == torch.float16
    # float16 rounding of the same float32 values, batched with other padding: at most one step apart
    step = expected.content.float().abs().clamp(min=2**-14) * 2**-10
    assert ((got.content.float() - expected.content.float()).abs() <= step).all()


def test_encoder_files_rebuild_the_same_encoder(tiny_model):
    encoder = tiny_model.action_encoder
    rebuilt = load_encoder_files(encoder_files(encoder), encoder.max_tokens, encoder.fingerprint())
    texts = ["Mary went to the kitchen.", "The football is in the garden, said John."]
    assert torch.equal(rebuilt.encode(texts), encoder.encode(texts))
    with pytest.raises(Exception, match="fingerprint"):
        load_encoder_files(encoder_files(encoder), encoder.max_tokens, "0" * 32)


@pytest.mark.slow  # about 15 s on a quiet 2-core machine: Ray starts 2 actors that each load the encoder
def test_ray_build_via_the_cli_finishes_partial_work_into_the_local_index(tiny_model, tmp_path, local_ray, monkeypatch):
    """A local build killed after 2 of 5 shards, finished by ``qrag-index build --engine ray --workers 2``."""
    tiny_model.action_encoder.save(str(tmp_path / "encoder"))  # an encoder directory loads as an untrained model
    (tmp_path / "doc.txt").write_text(FIFTY_FACTS)
    local = build_long_index(tiny_model, FIFTY_FACTS, tmp_path / "local", "doc.txt", shard_size=10, show_progress=False)
    killed_after_two_shards(tiny_model, tmp_path / "idx", monkeypatch)
    sent = []
    real_call = RayShardEncoder.__call__

    def recording_call(self, shards):
        sent.extend(number for number, _ in shards)
        return real_call(self, shards)

    monkeypatch.setattr(RayShardEncoder, "__call__", recording_call)
    args = ["build", "--document", str(tmp_path / "doc.txt"), "--out", str(tmp_path / "idx")]
    args += ["--model", str(tmp_path / "encoder"), "--shard-size", "10", "--engine", "ray", "--workers", "2"]
    assert main(args) == 0
    assert sent == [2, 3, 4], "the finished shards are not encoded again"
    assert not (tmp_path / "idx.partial").exists()
    assert_same_index(DocumentIndex.load(tmp_path / "idx"), local)


def test_without_ray_the_extra_is_named(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(QRAGError, match=r"qrag\[distributed\]"):
        build_long_index_on_ray(tiny_model, FIFTY_FACTS, tmp_path / "idx", workers=2, show_progress=False)


def test_encoder_files_keep_the_inference_backend(tiny_model, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    encoder = tiny_model.action_encoder
    encoder.use_backend("onnx")
    rebuilt = load_encoder_files(encoder_files(encoder), encoder.max_tokens, encoder.fingerprint(), encoder.backend)
    assert rebuilt.backend == "onnx"
    texts = ["Mary went to the kitchen.", "The football is in the garden, said John."]
    assert torch.equal(rebuilt.encode(texts), encoder.encode(texts))
