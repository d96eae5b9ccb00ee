"""The files of a saved model: what ``QRAG.save_pretrained`` writes and ``QRAG.from_pretrained`` reads.

A model directory follows sentence-transformers: ``config.json`` (the :class:`~qrag_core.config.QRAGConfig`,
the format version, the training record and the fingerprints of the base weights it relies on), each
trained encoder as a transformers directory in safetensors with its tokenizer, the action head in
safetensors, and a ``README.md`` model card. A frozen action encoder is not written: it is the base
model, checked by fingerprint at load time. ``compact`` stores the state encoder as the float16 values of
only the tensors that differ from the base model. Every save is atomic (:mod:`qrag_core.atomic`).

(Not to be confused with :mod:`qrag_core.training.checkpoint`, the trainer's resumable checkpoints.)
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from safetensors.torch import load_file
from torch import nn

from qrag_core._version import __version__
from qrag_core.atomic import Layout, atomic_directory, save_tensors
from qrag_core.config import QRAGConfig
from qrag_core.encoders import TextEncoder
from qrag_core.errors import CheckpointError, DataFormatError, ModelNotFoundError
from qrag_core.model_names import resolve_model_path
from qrag_core.text_files import read_json_file
from qrag_core.validation import check_format_version

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
STATE_DIR = "state_encoder"
STATE_DELTA_FILE = "state_encoder_delta.safetensors"
ACTION_DIR = "action_encoder"
HEAD_FILE = "action_head.safetensors"
MODEL_CARD_FILE = "README.md"
FORMAT_VERSION = 1


def is_model_dir(path: str) -> bool:
    """Whether ``path`` holds a saved qrag model (CheckpointError if its config.json is not valid JSON)."""
    cfg = Path(path) / CONFIG_FILE
    if not cfg.is_file():
        return False
    try:
        saved = read_json_file(cfg)
    except (DataFormatError, OSError) as err:
        raise CheckpointError(f"{cfg} is not a valid JSON file: {err}") from err
    return isinstance(saved, dict) and "qrag" in saved


def _is_model_config(cfg: Path) -> bool:
    """Whether ``cfg`` is the config.json of a saved qrag model (an unreadable one is not)."""
    try:
        return is_model_dir(str(cfg.parent))
    except CheckpointError:
        return False


MODEL_LAYOUT = Layout(
    "model",
    (CONFIG_FILE,),
    (CONFIG_FILE, MODEL_CARD_FILE, STATE_DIR, STATE_DELTA_FILE, ACTION_DIR, HEAD_FILE),
    _is_model_config,
)
"""What :func:`write_model` writes: a save may replace only a directory like this."""


class ModelParts(NamedTuple):
    """What a model directory holds, in the order :class:`~qrag_core.model.QRAG` takes it."""

    config: QRAGConfig
    """The model's configuration."""
    state_encoder: TextEncoder
    """E_s, the state encoder."""
    action_encoder: TextEncoder
    """The action encoder (the base model when it was frozen)."""
    action_head: nn.Linear | None
    """The light action head h, when the configuration has one."""
    training_info: dict[str, Any]
    """What the trainer recorded about the run (empty for an untrained model)."""


def load_encoder(path: str, max_tokens: int, what: str) -> TextEncoder:
    """The encoder saved at ``path`` (a base model or a saved part); CheckpointError naming ``what`` if not."""
    try:
        return TextEncoder.from_path(path, max_tokens)
    except Exception as err:  # transformers and safetensors raise many types for bad directories
        raise CheckpointError(f"cannot load the {what} from {path}: {err}") from err


def _load_base_encoder(
    config: QRAGConfig, max_tokens: int, expected_fingerprint: str | None, cfg_path: Path, what: str
) -> TextEncoder:
    """The base model named in ``config`` reading ``max_tokens`` per piece, checked against the fingerprint
    recorded at save time."""
    try:
        base = resolve_model_path(config.base_model)
    except ModelNotFoundError as err:
        raise CheckpointError(f"{cfg_path}: its base model is not available: {err}") from err
    encoder = load_encoder(base, max_tokens, what)
    if expected_fingerprint and encoder.fingerprint() != expected_fingerprint:
        raise CheckpointError(
            f"{cfg_path}: the base model {config.base_model!r} found at {base} is not the one this model "
            "was trained with (weights fingerprint differs)"
        )
    return encoder


def read_model(path: Path) -> ModelParts:
    """The parts of the model saved in ``path``; CheckpointError naming the file that is missing or corrupt."""
    cfg_path = path / CONFIG_FILE
    try:
        saved = read_json_file(cfg_path)
        config = QRAGConfig.from_dict(saved["qrag"]["config"])
        meta = saved["qrag"]
    except (DataFormatError, KeyError, TypeError) as err:
        raise CheckpointError(f"{cfg_path} is corrupt: {err}") from err
    check_format_version(meta, FORMAT_VERSION, cfg_path)
    compact = meta.get("state_encoder", {}).get("format") == "fp16-delta"
    for needed in (
        [STATE_DELTA_FILE if compact else STATE_DIR]
        + ([HEAD_FILE] if config.action_head else [])
        + ([] if config.freeze_action_encoder else [ACTION_DIR])
    ):
        if not (path / needed).exists():
            raise CheckpointError(f"{path / needed} is missing; the model directory is incomplete")
    if compact:
        base_fingerprint = meta["state_encoder"].get("base_fingerprint")
        state = _load_base_encoder(config, config.state_piece_tokens, base_fingerprint, cfg_path, "state encoder")
        _apply_delta(state, path / STATE_DELTA_FILE)
    else:
        state = load_encoder(str(path / STATE_DIR), config.state_piece_tokens, "state encoder")
    if config.freeze_action_encoder:
        action_fingerprint = meta.get("action_fingerprint")
        action = _load_base_encoder(
            config, config.max_chunk_tokens, action_fingerprint, cfg_path, "frozen action encoder"
        )
    else:
        action = load_encoder(str(path / ACTION_DIR), config.max_chunk_tokens, "action encoder")
    head = None
    if config.action_head:
        head = nn.Linear(state.dim, action.dim)
        try:
            tensors = load_file(str(path / HEAD_FILE))
            head.load_state_dict(tensors)
        except Exception as err:  # safetensors and load_state_dict raise several types
            raise CheckpointError(f"{path / HEAD_FILE} cannot be loaded: {err}") from err
    return ModelParts(config, state, action, head, meta.get("training") or {})


def write_model(model: QRAG, directory: str | os.PathLike[str], compact: bool, overwrite: bool) -> None:
    """Write ``model`` to ``directory`` atomically (what :meth:`qrag_core.model.QRAG.save_pretrained` does)."""
    with atomic_directory(directory, MODEL_LAYOUT, overwrite) as tmp:
        state_meta: dict[str, Any] = {"format": "full"}
        if compact:
            state_meta = _write_state_delta(model, tmp / STATE_DELTA_FILE)
        else:
            model.state_encoder.save(str(tmp / STATE_DIR))
        if not model.config.freeze_action_encoder:
            model.action_encoder.save(str(tmp / ACTION_DIR))
        if model.action_head is not None:
            save_tensors(model.action_head.state_dict(), tmp / HEAD_FILE)
        meta = {
            "qrag": {
                "format_version": FORMAT_VERSION,
                "qrag_version": __version__,
                "config": model.config.to_dict(),
                "action_fingerprint": model.action_encoder.fingerprint()
                if model.config.freeze_action_encoder
                else None,
                "state_encoder": state_meta,
                "training": model.training_info,
            }
        }
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        write_model_card(tmp / MODEL_CARD_FILE, model.config, model.training_info)


def _write_state_delta(model: QRAG, file: Path) -> dict[str, Any]:
    base = load_encoder(resolve_model_path(model.config.base_model), model.config.state_piece_tokens, "base model")
    base_weights = base.model.state_dict()
    changed = {
        name: tensor.detach().to("cpu", torch.float16).contiguous()
        for name, tensor in model.state_encoder.model.state_dict().items()
        if name not in base_weights or not torch.equal(tensor.cpu(), base_weights[name])
    }
    save_tensors(changed, file)
    logger.info("compact state encoder: %d of %d tensors differ from the base", len(changed), len(base_weights))
    return {"format": "fp16-delta", "base_fingerprint": base.fingerprint(), "changed_tensors": len(changed)}


def _apply_delta(encoder: TextEncoder, file: Path) -> None:
    try:
        tensors = load_file(str(file))
    except Exception as err:  # safetensors raises several types for truncated or foreign files
        raise CheckpointError(f"{file} cannot be read: {err}") from err
    own = encoder.model.state_dict()
    wrong = [n for n, t in tensors.items() if n not in own or own[n].shape != t.shape]
    if wrong:
        raise CheckpointError(f"{file}: tensors {wrong[:5]} do not fit the base model's architecture")
    encoder.model.load_state_dict({n: t.to(own[n].dtype) for n, t in tensors.items()}, strict=False)
    encoder.weights_changed()


def _table(rows: dict[str, Any]) -> str:
    lines = ["| key | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)


def write_model_card(path: Path, config: QRAGConfig, training: dict[str, Any]) -> None:
    """The ``README.md`` model card, in the sentence-transformers style: usage, configuration, training record."""
    trained = bool(training)
    sections = [
        "---",
        "library_name: qrag",
        f"base_model: {config.base_model}",
        "tags: [retrieval, multi-step-retrieval, q-rag, soft-q-learning, long-context]",
        "---",
        "",
        "# Q-RAG multi-step retriever",
        "",
        "A pair of embedders (state and action) for multi-step retrieval over long documents, following "
        '"Q-RAG: Long Context Multi-step Retrieval via Value-based Embedder Training" (arXiv 2511.07328). '
        + ("Fine-tuned with qrag's trainer." if trained else "**Not fine-tuned**: both encoders are the base model."),
        "",
        "## Usage",
        "",
        "```python",
        "from qrag_core import Retriever",
        'retriever = Retriever.from_pretrained("path/to/this/directory")',
        "retriever.add_texts([long_text])",
        'result = retriever.search("Where is Mary?")',
        "print(result.format())",
        "```",
        "",
        "## Configuration",
        "",
        _table({k: v for k, v in config.to_dict().items() if k != "chunking"} | {"chunking": config.chunking}),
    ]
    if trained:
        sections += ["", "## Training", "", _table({k: v for k, v in training.items() if k != "evaluation"})]
        if training.get("evaluation"):
            sections += ["", "## Last evaluation", "", _table(training["evaluation"])]
    path.write_text("\n".join(sections) + "\n", encoding="utf-8")
