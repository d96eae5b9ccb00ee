"""Shared fixtures: a tiny random BERT Q-RAG model (fast) and the real shipped MiniLM (end to end)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertModel

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Retrievers use the shared on-disk embedding cache by default; tests get their own, empty one.
os.environ["QRAG_CACHE_DIR"] = tempfile.mkdtemp(prefix="qrag-test-cache-")

from qrag_core import QRAG, QRAGConfig  # noqa: E402
from qrag_core.encoders import TextEncoder  # noqa: E402
from qrag_core.model_names import base_minilm_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def killed_writer(code: str, *args: str) -> int:
    """Run Python ``code`` (which ends by killing itself with ``os._exit(9)`` mid-write) in a new process;
    its process id, now of no running process."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 9, done.stderr
    return int(done.stdout)


def load_script(relative_path: str) -> ModuleType:
    """Import a script of the repository (``benchmarks/…``, ``recipes/…``) as a module, by its path.

    Its folder goes on ``sys.path`` as when the script runs, so that it finds its sibling modules.
    """
    path = REPO / relative_path
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def minilm_tokenizer():
    return AutoTokenizer.from_pretrained(base_minilm_path())


def make_tiny_encoder(
    tokenizer, seed: int, hidden: int = 32, max_tokens: int = 64, intermediate: int = 64
) -> TextEncoder:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=intermediate,
        max_position_embeddings=512,
    )
    return TextEncoder(BertModel(config).eval(), tokenizer, max_tokens)


def make_tiny_model(tokenizer, config: QRAGConfig | None = None, seed: int = 0) -> QRAG:
    config = config or QRAGConfig()
    return QRAG(config, make_tiny_encoder(tokenizer, seed), make_tiny_encoder(tokenizer, seed + 1)).eval()


@pytest.fixture()
def tiny_model(minilm_tokenizer) -> QRAG:
    return make_tiny_model(minilm_tokenizer)


@pytest.fixture(scope="session")
def real_model() -> QRAG:
    return QRAG.from_pretrained("all-MiniLM-L6-v2").eval()


STORY = (
    "Mary moved to the bathroom. The morning was cold and the streets were empty. "
    "John went to the hallway. A dog barked somewhere far away. Daniel travelled to the office. "
    "The clock on the wall struck nine. Mary went back to the kitchen. Sandra journeyed to the garden. "
    "It had rained all night. John picked up the football there."
)


@pytest.fixture()
def story() -> str:
    return STORY


def age(path: Path, seconds: float) -> None:
    """Make ``path`` and everything under it look last changed ``seconds`` ago."""
    then = time.time() - seconds
    for each in [path, *path.rglob("*")]:
        os.utime(each, (then, then))
