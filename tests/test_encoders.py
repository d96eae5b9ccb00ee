"""The text encoders: state text assembly within the position limit, and embeddings."""

import copy
import importlib.util
import json
import logging
import os
import random
import socket
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertModel

from qrag_core.encoders import TextEncoder, fit_pieces
from qrag_core.index import DocumentIndex
from qrag_core.search import search
from tests.conftest import killed_writer

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
    index = DocumentIndex.build(tiny_model, [long_document(45)])
    assert len(index) == 45
    result = search(tiny_model, "which king owns the ship?", index, k=40)
    assert len(result.trace) == 40


@pytest.mark.slow
def test_forty_steps_over_64_token_chunks_real_model(real_model):
    index = DocumentIndex.build(real_model, [long_document(45, seed=1)])
    result = search(real_model, "which king owns the ship?", index, k=40)
    assert len({s.chunk_index for s in result.trace}) == 40


# ------------------------------------------------------------------ sentence-transformers equivalence
def save_tiny_st(directory, tokenizer, pooling="mean", prompts=None, dense=False, normalize=True, seed=0):
    """A tiny random BERT saved as a sentence-transformers directory with the given modules and prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Normalize, Pooling, Transformer

    torch.manual_seed(seed)
    hf = directory / "hf"
    bert = BertModel(
        BertConfig(
            vocab_size=tokenizer.vocab_size,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=512,
        )
    )
    bert.save_pretrained(hf)
    tokenizer.save_pretrained(hf)
    modules = [Transformer(str(hf), max_seq_length=128), Pooling(32, pooling)]
    if dense:
        modules.append(Dense(32, 32, activation_function=torch.nn.Tanh()))
    if normalize:
        modules.append(Normalize())
    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu")
    st.save(str(directory / "st"), create_model_card=False)
    return str(directory / "st")


def cosines(a, b):
    return torch.nn.functional.cosine_similarity(torch.as_tensor(a), torch.as_tensor(b), dim=-1)


TEXTS = ["Mary moved to the bathroom.", "John picked up the football there.", "a", "Where is the milk? " * 5]

ST_CASES = {
    "mean": {"pooling": "mean"},
    "cls": {"pooling": "cls"},
    "max_dense": {"pooling": "max", "dense": True, "normalize": False},
    "e5_prompts": {"pooling": "mean", "prompts": {"query": "query: ", "passage": "passage: "}},
    "instructor": {"pooling": "mean", "prompts": {"query": "Represent the question: "}, "include_prompt": False},
}


@pytest.mark.parametrize("case", sorted(ST_CASES))
def test_embeddings_equal_sentence_transformers(tmp_path, minilm_tokenizer, case):
    from sentence_transformers import SentenceTransformer

    options = dict(ST_CASES[case])
    include_prompt = options.pop("include_prompt", True)
    path = save_tiny_st(tmp_path, minilm_tokenizer, **options)
    st = SentenceTransformer(path, device="cpu")
    if not include_prompt:
        st.set_pooling_include_prompt(False)
        st.save(path, create_model_card=False)
        st = SentenceTransformer(path, device="cpu")
    encoder = TextEncoder.from_path(path)
    prompts = options.get("prompts") or {}
    chunks = encoder.encode(TEXTS)
    assert torch.all(cosines(chunks, st.encode(TEXTS, prompt=prompts.get("passage"))) > 0.9999)
    states = encoder.embed_states(TEXTS, [[]] * len(TEXTS)).detach()
    assert torch.all(cosines(states, st.encode(TEXTS, prompt=prompts.get("query"))) > 0.9999)
    if prompts:  # the prompts change the embedding, so the comparison above is not vacuous
        assert torch.all(cosines(chunks, st.encode(TEXTS)) < 0.9999) or torch.all(
            cosines(states, st.encode(TEXTS)) < 0.9999
        )


def test_plain_transformers_directory_is_mean_pooled_like_sentence_transformers(tmp_path, minilm_tokenizer):
    from sentence_transformers import SentenceTransformer

    path = save_tiny_st(tmp_path, minilm_tokenizer)
    hf = str(tmp_path / "hf")
    encoder = TextEncoder.from_path(hf)
    assert torch.all(cosines(encoder.encode(TEXTS), SentenceTransformer(hf, device="cpu").encode(TEXTS)) > 0.9999)
    assert encoder.fingerprint() == TextEncoder.from_path(path).fingerprint(), "same weights, same pipeline"


def test_pooling_and_prompts_change_the_fingerprint(tmp_path, minilm_tokenizer):
    mean = TextEncoder.from_path(save_tiny_st(tmp_path / "mean", minilm_tokenizer))
    cls = TextEncoder.from_path(save_tiny_st(tmp_path / "cls", minilm_tokenizer, pooling="cls"))
    e5 = TextEncoder.from_path(save_tiny_st(tmp_path / "e5", minilm_tokenizer, prompts={"query": "query: "}))
    assert len({mean.fingerprint(), cls.fingerprint(), e5.fingerprint()}) == 3


def test_saved_encoder_loads_back_with_its_pooling(tmp_path, minilm_tokenizer):
    encoder = TextEncoder.from_path(save_tiny_st(tmp_path, minilm_tokenizer, pooling="cls", prompts={"query": "q: "}))
    encoder.save(str(tmp_path / "copy"))
    again = TextEncoder.from_path(str(tmp_path / "copy"))
    assert torch.equal(again.encode(TEXTS), encoder.encode(TEXTS))
    assert again.fingerprint() == encoder.fingerprint()


def test_cut_chunks_are_logged_once_per_encoding(tiny_model, caplog):
    encoder = tiny_model.action_encoder
    with caplog.at_level("DEBUG", logger="qrag_core.encoders"):
        encoder.encode(["short one.", " ".join(WORDS * 10), " ".join(WORDS * 20)])
        encoder.encode(["short one."])
        encoder.encode([" ".join(WORDS * 10)])
    cut = [(r.levelname, r.getMessage()) for r in caplog.records if "were cut" in r.getMessage()]
    assert [level for level, _ in cut] == ["WARNING", "DEBUG"], "the first index warns, later ones log quietly"
    assert "2 of 3 chunks" in cut[0][1]


@pytest.mark.slow
def test_shipped_model_keeps_its_fingerprints(real_model):
    from qrag_core import QRAG

    shipped = QRAG.from_pretrained()
    assert shipped.action_encoder.fingerprint() == "daa204ee1ce3e63022dd7b05e9fc7dea"
    assert real_model.action_encoder.fingerprint() == "daa204ee1ce3e63022dd7b05e9fc7dea"


# ------------------------------------------------------------------ float16 (GPU) and bfloat16 backends
def test_fp16_backend_runs_the_transformer_in_float16_with_its_own_fingerprint(tiny_model, caplog):
    encoder = tiny_model.state_encoder
    reference, torch_fp = encoder.encode(TEXTS), encoder.fingerprint()
    dtypes = []
    linear = encoder.model.encoder.layer[0].intermediate.dense
    hook = linear.register_forward_hook(lambda module, inputs, out: dtypes.append(out.dtype))
    try:
        with caplog.at_level(logging.WARNING, logger="qrag_core.encoders"):
            encoder.use_backend("torch-fp16")
        assert "meant for GPUs" in caplog.text, "on a CPU the user is told float16 is slower there"
        half = encoder.encode(TEXTS)
        assert dtypes[-1] == torch.float16, "the transformer ran in float16"
        assert half.dtype == torch.float32 and torch.all(cosines(half, reference) > 0.999)
        assert not torch.equal(half, reference), "float16 rounding shows: this is not the float32 path"
        assert encoder.fingerprint() != torch_fp, "a float16 index is never mixed with a float32 one"
        dtypes.clear()
        assert encoder.embed(TEXTS).requires_grad and dtypes == [torch.float32], "training stays float32"
        encoder.use_backend("torch")
        assert encoder.fingerprint() == torch_fp and torch.equal(encoder.encode(TEXTS), reference)
    finally:
        hook.remove()
        encoder.use_backend("torch")


def test_bf16_backend_runs_a_bfloat16_copy_that_follows_the_weights(tiny_model, caplog, monkeypatch):
    from qrag_core import onnx_backend

    encoder = tiny_model.state_encoder
    reference, torch_fp = encoder.encode(TEXTS), encoder.fingerprint()
    tensors = len(encoder.state_dict())
    try:
        encoder.use_backend("torch-bf16")
        half = encoder.encode(TEXTS)
        assert half.dtype == torch.float32 and torch.all(cosines(half, reference) > 0.99)
        assert not torch.equal(half, reference), "bfloat16 rounding shows: this is not the float32 path"
        (shared,) = encoder._bfloat16.values()
        copy_ = shared.module
        assert copy.deepcopy(encoder)._bfloat16[encoder.device] is shared, "a deep copy shares it, not copies it"
        assert next(copy_.parameters()).dtype == torch.bfloat16
        assert encoder.fingerprint() not in (torch_fp, tiny_model.action_encoder.fingerprint())
        assert len(encoder.state_dict()) == tensors, "the copy is not a submodule: it is never saved"
        assert encoder.embed(TEXTS).requires_grad, "training stays float32 torch"
        with torch.no_grad():
            encoder.model.embeddings.word_embeddings.weight.mul_(-1.0)
        tiny_model.weights_changed()
        changed = encoder.encode(TEXTS)
        assert not torch.allclose(changed, half, atol=1e-2), "new weights, new bfloat16 copy"
        monkeypatch.setattr(onnx_backend, "cpu_has_bfloat16", lambda: False)
        with caplog.at_level(logging.WARNING, logger="qrag_core.encoders"):
            encoder.use_backend("torch-bf16")
        assert "no bfloat16 instructions" in caplog.text
    finally:
        encoder.use_backend("torch")


# ------------------------------------------------------------------ ONNX Runtime backends
onnx_needed = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="needs qrag[onnx]")


@onnx_needed
def test_onnx_backends_match_torch_and_have_their_own_fingerprint(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    encoder = tiny_model.state_encoder  # not frozen, so its training embeddings have gradients
    reference, torch_fp = encoder.encode(TEXTS), encoder.fingerprint()
    fingerprints = {torch_fp}
    for backend, floor in [("onnx", 0.99999), ("onnx-int8", 0.99)]:
        encoder.use_backend(backend)
        fast = encoder.encode(TEXTS)
        assert torch.all(cosines(fast, reference) > floor), backend
        assert encoder.embed(TEXTS).requires_grad, "training embeddings stay on torch"
        fingerprints.add(encoder.fingerprint())
    assert len(fingerprints) == 3
    assert len(list((tmp_path / "onnx").glob("*.onnx"))) == 2, "exported once per backend, into the cache"
    encoder.use_backend("torch")
    assert encoder.fingerprint() == torch_fp and torch.equal(encoder.encode(TEXTS), reference)


@onnx_needed
def test_search_with_the_onnx_state_encoder_selects_as_torch_does(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    index = DocumentIndex.build(tiny_model, [TEXTS])
    encoder = tiny_model.state_encoder
    weights = encoder.weights_fingerprint()

    def run() -> list[list[tuple[int, float]]]:
        return [
            [(s.chunk_index, s.q_value) for s in search(tiny_model, question, index, k=3, beam=beam).trace]
            for question in ("where is the milk?", "who went to the kitchen?")
            for beam in (1, 3)
        ]

    reference = run()
    encoder.use_backend("onnx")
    fast = run()
    assert [[i for i, _ in line] for line in fast] == [[i for i, _ in line] for line in reference]
    assert (
        max(abs(a - b) for x, y in zip(fast, reference, strict=True) for (_, a), (_, b) in zip(x, y, strict=True))
        < 1e-4
    )
    assert len(list((tmp_path / "onnx").glob("*-onnx.onnx"))) == 1, "the state encoder was exported and used"
    assert encoder.weights_fingerprint() == weights != encoder.fingerprint()
    assert tiny_model.state_vectors(["where is the milk?"], [[]]).requires_grad, "training states stay on torch"
    encoder.use_backend("torch")


@onnx_needed
def test_switching_backends_reuses_the_onnx_session_until_the_weights_change(tiny_model, tmp_path, monkeypatch):
    from qrag_core import encoders

    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    made = []
    real = encoders.OnnxRunner
    monkeypatch.setattr(encoders, "OnnxRunner", lambda *args, **kw: made.append(args[1]) or real(*args, **kw))
    encoder = tiny_model.state_encoder
    for backend in ("onnx", "torch", "onnx", "torch", "onnx"):
        encoder.use_backend(backend)
        encoder.encode(TEXTS)
    assert made == ["onnx"], "one session, made once"
    encoder.weights_changed()
    encoder.encode(TEXTS)
    assert made == ["onnx", "onnx"], "new weights, new session"
    encoder.use_backend("torch")


@onnx_needed
def test_an_index_of_another_backend_is_searched_with_its_own_vectors(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    tiny_model.action_encoder.use_backend("onnx-int8")
    index = DocumentIndex.build(tiny_model, [TEXTS])
    target = copy.deepcopy(tiny_model)  # e.g. the trainer's target network: shares the session
    assert target.action_encoder.fingerprint() == index.fingerprint
    expected = search(tiny_model, "where is the milk?", index, k=2)
    tiny_model.action_encoder.use_backend("torch")
    assert tiny_model.index_backend(index) == "onnx-int8"
    found = search(tiny_model, "where is the milk?", index, k=2)
    assert [c.chunk.index for c in found.chunks] == [c.chunk.index for c in expected.chunks]


@onnx_needed
def test_a_full_disk_during_the_onnx_export_is_a_storage_error_and_leaves_nothing(tiny_model, tmp_path, monkeypatch):
    import errno

    from qrag_core import onnx_backend
    from qrag_core.errors import StorageError

    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))

    def export_filling_the_disk(module, args, path, **kwargs):
        with open(path, "wb") as f:
            f.write(b"half a graph")
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(onnx_backend.torch.onnx, "export", export_filling_the_disk)
    with pytest.raises(StorageError, match=f"no space left on device at {tmp_path / 'onnx'}/.*-onnx.onnx"):
        tiny_model.action_encoder.use_backend("onnx")
        tiny_model.action_encoder.encode(TEXTS)  # the first encoding exports the model
    assert list((tmp_path / "onnx").iterdir()) == []


KILLED_EXPORT = """
import os, socket, sys, tempfile
work = tempfile.mkdtemp(dir=sys.argv[1], prefix=f".tmp-onnx-{socket.gethostname()}-{os.getpid()}-")
open(os.path.join(work, "model.onnx"), "wb").write(b"half a graph")
print(os.getpid(), flush=True)
os._exit(9)
"""


@onnx_needed
def test_an_export_removes_the_temporary_directory_a_killed_export_left(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "onnx"
    cache.mkdir()
    dead = killed_writer(KILLED_EXPORT, str(cache))
    host = socket.gethostname()
    (killed,) = cache.iterdir()
    assert killed.name.startswith(f".tmp-onnx-{host}-{dead}-") and (killed / "model.onnx").is_file()
    live = cache / f".tmp-onnx-{host}-{os.getpid()}-abcd1234"  # an export running now
    elsewhere = cache / f".tmp-onnx-other-host-{dead}-abcd1234"  # its process cannot be checked from here
    # named without a process id by older qrag versions: removed once nothing in them changed for a day
    abandoned, running, writing = (cache / f".tmp-onnx-{name}" for name in ("k1ll3d00", "runn1ng0", "wr1t1ng0"))
    for leftover in (live, elsewhere, abandoned, running, writing):
        leftover.mkdir()
        (leftover / "model.onnx").write_bytes(b"half a graph")
    two_days_ago = time.time() - 2 * 86400
    for old in (abandoned, abandoned / "model.onnx", writing):
        os.utime(old, (two_days_ago, two_days_ago))
    export, work = torch.onnx.export, []

    def export_recording_its_directory(module, args, path, **kwargs):
        work.append(Path(path).parent.name)
        return export(module, args, path, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", export_recording_its_directory)
    tiny_model.action_encoder.use_backend("onnx")
    tiny_model.action_encoder.encode(TEXTS)
    assert len(work) == 1 and work[0].startswith(f".tmp-onnx-{host}-{os.getpid()}-"), "named for a later clean-up"
    exported = [p.name for p in cache.glob("*.onnx")]
    assert len(exported) == 1
    kept = [live.name, elsewhere.name, running.name, writing.name]
    assert sorted(p.name for p in cache.iterdir()) == sorted([*exported, *kept])


def test_unknown_backend_is_refused(tiny_model):
    from qrag_core.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="unknown encoding backend"):
        tiny_model.action_encoder.use_backend("tensorrt")


@onnx_needed
def test_index_cli_builds_and_searches_with_the_int8_backend(tmp_path, monkeypatch, story, capsys):
    from qrag_core import QRAG
    from qrag_core.cli.index import main

    monkeypatch.setenv("QRAG_CACHE_DIR", str(tmp_path / "cache"))
    document = tmp_path / "story.txt"
    document.write_text(story, encoding="utf-8")
    model = ["--model", "all-MiniLM-L6-v2"]
    build = ["build", *model, "--backend", "onnx-int8", "--document", str(document), "--out", str(tmp_path / "index")]
    assert main(build) == 0
    assert DocumentIndex.load(tmp_path / "index").fingerprint == (
        QRAG.from_pretrained("all-MiniLM-L6-v2").action_encoder.fingerprint_for("onnx-int8")
    )
    capsys.readouterr()
    query = ["search", "--index", str(tmp_path / "index"), "--question", "Where is Mary?", "--steps", "2", "--json"]
    assert main([*query, *model]) == 0
    torch_states = json.loads(capsys.readouterr().out)
    assert main([*query, *model, "--state-backend", "onnx"]) == 0
    onnx_states = json.loads(capsys.readouterr().out)
    assert [c["chunk_index"] for c in onnx_states["evidence"]] == [c["chunk_index"] for c in torch_states["evidence"]]
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 2, "the state encoder's copy was exported"
