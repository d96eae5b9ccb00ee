"""Model persistence (from_pretrained / save_pretrained), name resolution and input errors."""

import json

import pytest
import torch

from qrag_core import QRAG, ChunkingConfig, QRAGConfig
from qrag_core.errors import CheckpointError, InvalidInputError, ModelNotFoundError
from qrag_core.index import DocumentIndex
from qrag_core.model_names import resolve_model_path
from qrag_core.search import search
from tests.conftest import make_tiny_model

QUESTION = "Where did John go?"


def all_q_values(model, index, selected=(2, 5)):
    with torch.inference_mode():
        states = model.state_vectors([QUESTION], [[index.chunks[i].text for i in selected]])
        actions = model.index_action_vectors(index)
        return model.q_row(states[0], actions, list(selected))


@pytest.mark.parametrize("freeze", [True, False])
def test_save_then_load_gives_identical_q_values(minilm_tokenizer, tmp_path, story, freeze, monkeypatch):
    config = QRAGConfig(freeze_action_encoder=freeze, twin_heads=True, position_mode="relative", delta=20, ell=18)
    model = make_tiny_model(minilm_tokenizer, config)
    with torch.no_grad():
        model.action_head.weight.add_(0.01 * torch.randn_like(model.action_head.weight))
    model.training_info = {"steps": 3, "data": "unit-test"}
    model.state_encoder.save(str(tmp_path / "tiny-base"))
    model.config.base_model = str(tmp_path / "tiny-base")
    if freeze:  # the frozen action encoder is reloaded from the base model: make them the same weights
        model.action_encoder.model.load_state_dict(model.state_encoder.model.state_dict())
        model.weights_changed()
    index = DocumentIndex.build(model, story)
    before = all_q_values(model, index)
    model.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "README.md").read_text().count("unit-test") == 1
    assert (tmp_path / "saved" / "state_encoder" / "model.safetensors").is_file()
    assert (tmp_path / "saved" / "action_encoder").exists() is not freeze
    loaded = QRAG.from_pretrained(str(tmp_path / "saved"))
    assert loaded.config == model.config and loaded.training_info == model.training_info
    after = all_q_values(loaded, DocumentIndex.build(loaded, story))
    assert torch.allclose(before, after, atol=1e-6)


def test_unknown_name_lists_available_names():
    with pytest.raises(ModelNotFoundError, match="all-MiniLM-L6-v2"):
        resolve_model_path("no-such-model-anywhere")
    with pytest.raises(ModelNotFoundError):
        QRAG.from_pretrained("/definitely/not/here")


def save_tiny(minilm_tokenizer, tmp_path):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))
    model.save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_corrupt_config_names_the_file(minilm_tokenizer, tmp_path):
    path = save_tiny(minilm_tokenizer, tmp_path)
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        QRAG.from_pretrained(str(path))


def test_unknown_config_key_is_reported(minilm_tokenizer, tmp_path):
    path = save_tiny(minilm_tokenizer, tmp_path)
    meta = json.loads((path / "config.json").read_text())
    meta["qrag"]["config"]["warp_drive"] = True
    (path / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="warp_drive"):
        QRAG.from_pretrained(str(path))


def test_missing_weights_name_the_file(minilm_tokenizer, tmp_path):
    path = save_tiny(minilm_tokenizer, tmp_path)
    (path / "action_head.safetensors").unlink()
    with pytest.raises(CheckpointError, match="action_head.safetensors"):
        QRAG.from_pretrained(str(path))


def test_truncated_head_names_the_file(minilm_tokenizer, tmp_path):
    path = save_tiny(minilm_tokenizer, tmp_path)
    data = (path / "action_head.safetensors").read_bytes()
    (path / "action_head.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="action_head.safetensors"):
        QRAG.from_pretrained(str(path))


def test_mismatched_head_shape_is_reported(minilm_tokenizer, tmp_path):
    from safetensors.torch import save_file

    path = save_tiny(minilm_tokenizer, tmp_path)
    save_file({"weight": torch.zeros(8, 8), "bias": torch.zeros(8)}, str(path / "action_head.safetensors"))
    with pytest.raises(CheckpointError, match="size mismatch|shape"):
        QRAG.from_pretrained(str(path))


def test_corrupt_encoder_weights_are_reported(minilm_tokenizer, tmp_path):
    path = save_tiny(minilm_tokenizer, tmp_path)
    (path / "state_encoder" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="state encoder"):
        QRAG.from_pretrained(str(path))


@pytest.mark.parametrize("document", ["", "   \n ", None, 17])
def test_bad_documents(tiny_model, document):
    with pytest.raises(InvalidInputError, match="empty|must be a string"):
        DocumentIndex.build(tiny_model, document)


def test_bad_chunk_size(tiny_model, story):
    with pytest.raises(InvalidInputError, match="chunk size"):
        DocumentIndex.build(tiny_model, story, chunking=ChunkingConfig(mode="tokens", max_tokens=0))


def test_index_persistence_round_trip(tiny_model, story, tmp_path):
    index = DocumentIndex.build(
        tiny_model, [story, "Another short document. It has two sentences."], doc_ids=["s", "t"]
    )
    index.save(tmp_path / "idx")
    loaded = DocumentIndex.load(tmp_path / "idx")
    assert loaded.doc_ids == ["s", "t"] and [c.text for c in loaded.chunks] == [c.text for c in index.chunks]
    assert torch.equal(loaded.content, index.content)
    a = search(tiny_model, "Where is Mary?", index, k=3)
    b = search(tiny_model, "Where is Mary?", loaded, k=3)
    assert [s.chunk_index for s in a.trace] == [s.chunk_index for s in b.trace]
    (tmp_path / "idx" / "embeddings.safetensors").write_bytes(b"oops")
    with pytest.raises(CheckpointError, match="embeddings.safetensors"):
        DocumentIndex.load(tmp_path / "idx")


def test_embeddings_are_computed_once_per_text(tiny_model, tmp_path):
    from qrag_core.embedding_cache import EmbeddingCache

    calls = []
    original = tiny_model.action_encoder.encode

    def counting(texts, **kw):
        calls.append(len(texts))
        return original(texts, **kw)

    tiny_model.action_encoder.encode = counting
    cache = EmbeddingCache(tmp_path / "cache.sqlite")
    first = tiny_model.encode_chunks(["a b", "c d", "a b"], cache)
    second = tiny_model.encode_chunks(["c d", "e f"], EmbeddingCache(tmp_path / "cache.sqlite"))
    assert calls == [2, 1]
    assert torch.equal(first[0], first[2]) and torch.equal(first[1], second[0])


@pytest.mark.slow
def test_real_minilm_round_trip(real_model, tmp_path, story):
    assert real_model.config.base_model == "all-MiniLM-L6-v2"  # the name, not this machine's path to it
    real_model.save_pretrained(tmp_path / "real")
    loaded = QRAG.from_pretrained(str(tmp_path / "real"))
    index = DocumentIndex.build(real_model, story)
    assert torch.allclose(all_q_values(real_model, index), all_q_values(loaded, index), atol=1e-5)


def test_compact_save_keeps_only_changed_tensors_in_fp16(minilm_tokenizer, tmp_path, story):
    from safetensors.torch import load_file

    model = make_tiny_model(minilm_tokenizer)
    model.state_encoder.save(str(tmp_path / "base"))
    model.config.base_model = str(tmp_path / "base")
    model.action_encoder.model.load_state_dict(model.state_encoder.model.state_dict())
    with torch.no_grad():  # "fine-tune" one layer of the state encoder
        model.state_encoder.model.encoder.layer[0].output.dense.weight.mul_(1.1)
    model.weights_changed()
    index = DocumentIndex.build(model, story)
    before = all_q_values(model, index)
    model.save_pretrained(tmp_path / "compact", compact=True)
    assert not (tmp_path / "compact" / "state_encoder").exists()
    delta = load_file(str(tmp_path / "compact" / "state_encoder_delta.safetensors"))
    assert list(delta) == ["encoder.layer.0.output.dense.weight"] and delta[next(iter(delta))].dtype == torch.float16
    loaded = QRAG.from_pretrained(str(tmp_path / "compact"))
    assert torch.allclose(all_q_values(loaded, DocumentIndex.build(loaded, story)), before, atol=2e-3)
    with torch.no_grad():  # a different base model than the one saved against is refused
        model.state_encoder.model.embeddings.word_embeddings.weight.add_(1.0)
    model.state_encoder.save(str(tmp_path / "base"))
    with pytest.raises(CheckpointError, match="fingerprint"):
        QRAG.from_pretrained(str(tmp_path / "compact"))


@pytest.mark.parametrize("freeze", [True, False])
def test_state_word_embeddings_can_be_frozen(minilm_tokenizer, freeze):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_state_embeddings=freeze))
    assert model.state_encoder.model.get_input_embeddings().weight.requires_grad is not freeze
    assert model.state_encoder.model.encoder.layer[0].output.dense.weight.requires_grad
    assert not any(p.requires_grad for p in model.action_encoder.parameters())


def test_longer_chunk_limit_embeds_more_text_and_survives_save(minilm_tokenizer, tmp_path):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))
    long_text = " ".join(f"word{i}" for i in range(200))
    before, old_fingerprint = model.encode_chunks([long_text]), model.action_encoder.fingerprint()
    with pytest.raises(InvalidInputError, match="max_chunk_tokens"):
        model.set_max_chunk_tokens(0)
    model.set_max_chunk_tokens(160)
    assert model.config.max_chunk_tokens == 160
    assert model.action_encoder.fingerprint() != old_fingerprint  # an index made under 64 tokens no longer matches
    after = model.encode_chunks([long_text])
    assert not torch.allclose(before, after)
    assert len(model.state_encoder.state_ids("q?", [long_text])) > 160
    model.state_encoder.save(str(tmp_path / "tiny-base"))
    model.config.base_model = str(tmp_path / "tiny-base")
    model.save_pretrained(tmp_path / "m")
    loaded = QRAG.from_pretrained(str(tmp_path / "m"))
    assert loaded.config.max_chunk_tokens == 160
    assert torch.allclose(loaded.encode_chunks([long_text]), after, atol=1e-6)


@pytest.mark.parametrize("compact", [False, True])
def test_longer_state_pieces_keep_the_chunk_embeddings_and_survive_save(minilm_tokenizer, tmp_path, compact):
    model = make_tiny_model(minilm_tokenizer, QRAGConfig())
    long_text = " ".join(f"word{i}" for i in range(200))
    chunks, fingerprint = model.encode_chunks([long_text]), model.action_encoder.fingerprint()
    state_tokens = len(model.state_encoder.state_ids("q?", [long_text]))
    with pytest.raises(InvalidInputError, match="max_state_tokens"):
        model.set_max_state_tokens(0)
    model.set_max_state_tokens(160)
    assert (model.config.max_state_tokens, model.config.max_chunk_tokens) == (160, 64)
    assert model.action_encoder.fingerprint() == fingerprint  # indexes and cached content embeddings still match
    assert torch.equal(model.encode_chunks([long_text]), chunks)
    assert len(model.state_encoder.state_ids("q?", [long_text])) > 160 > state_tokens
    model.set_max_chunk_tokens(32)
    assert (model.state_encoder.max_tokens, model.action_encoder.max_tokens) == (160, 32)
    model.set_max_chunk_tokens(64)
    states = model.state_encoder.encode_states(["q?"], [[long_text]])
    model.action_encoder.save(str(tmp_path / "tiny-base"))  # the frozen action encoder is the base
    model.config.base_model = str(tmp_path / "tiny-base")
    model.save_pretrained(tmp_path / "m", compact=compact)
    loaded = QRAG.from_pretrained(str(tmp_path / "m"))
    assert (loaded.state_encoder.max_tokens, loaded.action_encoder.max_tokens) == (160, 64)
    assert loaded.action_encoder.fingerprint() == fingerprint
    assert torch.allclose(loaded.state_encoder.encode_states(["q?"], [[long_text]]), states, atol=1e-3)
    loaded.set_max_state_tokens(None)  # back to the chunk limit
    assert loaded.state_encoder.max_tokens == 64 and loaded.config.state_piece_tokens == 64
