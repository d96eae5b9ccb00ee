"""Training checkpoints without pickle, and the output directory of a training run.

A checkpoint is a directory (written atomically, :mod:`qrag_core.atomic`) holding

- ``model/``: the online model, as :meth:`QRAG.save_pretrained` writes it;
- ``trainer_state.safetensors``: every other tensor: the optimiser's moment estimates and step counts,
  the target networks' trainable parameters, the value calibration and the torch RNG state (uint8);
- ``trainer_state.json``: everything else: step, timers, settings, the last evaluation, the phase the
  saved optimiser belongs to, the optimiser's parameter groups and non-tensor state, the fp16 loss
  scaler's scale and growth tracker, and the trainer's, numpy's and Python's RNG states as lists.

Neither format can run code when read, so a planted file can at worst fail to load. Checkpoints of
older qrag versions (``trainer_state.pt``, a pickle) are refused, never unpickled.

A run directory ``OUT`` holds ``qrag_run.json`` (what started the run), ``metrics.csv``,
``tensorboard/``, ``checkpoint/`` and ``model/``; other files in it are left alone. A new run refuses to
start where an earlier run's files are unless asked to overwrite them, and never overwrites files
that a qrag run did not write.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from qrag_core._version import __version__
from qrag_core.atomic import (
    Layout,
    atomic_directory,
    check_replaceable,
    recover,
    refuse_guarded,
    resolved,
    save_tensors,
    write_file,
)
from qrag_core.errors import CheckpointError, UnsafeOutputError
from qrag_core.model import QRAG
from qrag_core.model_files import MODEL_LAYOUT
from qrag_core.training.metrics_log import METRICS_FILE

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
RUN_FILE = "qrag_run.json"
TENSORBOARD_DIR = "tensorboard"
STATE_FILE = "trainer_state.json"
TENSORS_FILE = "trainer_state.safetensors"
LEGACY_STATE_FILE = "trainer_state.pt"
"""The pickle file of checkpoints written by earlier qrag versions; recognised only to refuse it."""
CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_LAYOUT = Layout(
    "training checkpoint", (STATE_FILE, LEGACY_STATE_FILE), (STATE_FILE, TENSORS_FILE, MODEL_DIR, LEGACY_STATE_FILE)
)
"""What :func:`write_checkpoint` writes (a checkpoint of an older qrag may be replaced too)."""
RUN_ENTRIES = (RUN_FILE, METRICS_FILE, TENSORBOARD_DIR, CHECKPOINT_DIR, MODEL_DIR)
"""What a training run writes into its output directory."""


# ------------------------------------------------------------------------------------------------ checkpoints
def write_checkpoint(directory: Path, model: QRAG, state: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]):
    """Replace the checkpoint at ``directory`` by ``model``, ``state`` (JSON) and ``tensors`` (safetensors)."""
    with atomic_directory(directory, CHECKPOINT_LAYOUT) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        save_tensors(tensors, tmp / TENSORS_FILE)
        (tmp / STATE_FILE).write_text(json.dumps({"format_version": CHECKPOINT_FORMAT_VERSION, **state}))


def recover_checkpoint(directory: Path) -> None:
    """Finish or undo a checkpoint write that was killed (one process only, before any reads it)."""
    recover(directory)
    legacy_aside = directory.with_name(directory.name + ".old")  # left by earlier qrag versions after a kill
    if directory.is_dir() and legacy_aside.is_dir() and CHECKPOINT_LAYOUT.is_own(legacy_aside):
        logger.info("removing %s, a stale copy left by an older qrag", legacy_aside)
        shutil.rmtree(legacy_aside)


def read_checkpoint(directory: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The JSON state and the tensors of the checkpoint at ``directory``; nothing in it can run code."""
    if (directory / LEGACY_STATE_FILE).is_file() and not (directory / STATE_FILE).is_file():
        raise CheckpointError(
            f"{directory / LEGACY_STATE_FILE} is a checkpoint of an older qrag in pickle format, which qrag never "
            "loads (a pickle can run any code); start the run again with --overwrite (overwrite=True)"
        )
    if not (directory / STATE_FILE).is_file():
        raise CheckpointError(f"no checkpoint to resume from in {directory.parent}")
    try:
        state = json.loads((directory / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{directory / STATE_FILE} cannot be read: {err}") from err
    if not isinstance(state, dict) or state.get("format_version", 0) > CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{directory / STATE_FILE} is not a checkpoint this qrag can read")
    try:
        tensors = load_file(str(directory / TENSORS_FILE))
    except Exception as err:  # safetensors raises several types for truncated, foreign or missing files
        raise CheckpointError(f"{directory / TENSORS_FILE} cannot be read: {err}") from err
    return state, tensors


def with_prefix(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix.``, without it."""
    start = len(prefix) + 1
    return {name[start:]: t for name, t in tensors.items() if name.startswith(prefix + ".")}


def prefixed(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``tensors`` named ``prefix.name``."""
    return {f"{prefix}.{name}": t for name, t in tensors.items()}


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """An optimiser's state dict split into JSON (parameter groups, non-tensor state) and tensors."""
    saved = optimizer.state_dict()
    values: dict[str, dict[str, Any]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for index, entries in saved["state"].items():
        values[str(index)], entry_tensors = split_tensors(entries, f"optimizer.{index}")
        tensors |= entry_tensors
    return {"param_groups": saved["param_groups"], "state": values}, tensors


def split_tensors(entries: Mapping[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """``entries`` split into its other values (for JSON) and its tensors, named ``prefix.key``."""
    values = {key: value for key, value in entries.items() if not isinstance(value, torch.Tensor)}
    tensors = {f"{prefix}.{key}": value for key, value in entries.items() if isinstance(value, torch.Tensor)}
    return values, tensors


def restore_optimizer(
    optimizer: torch.optim.Optimizer, saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]
) -> None:
    """Load what :func:`optimizer_state` split back into ``optimizer``."""
    state: dict[int, dict[str, Any]] = {int(index): dict(entries) for index, entries in saved["state"].items()}
    for name, tensor in with_prefix(tensors, "optimizer").items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = tensor
    optimizer.load_state_dict({"param_groups": saved["param_groups"], "state": state})


def scaler_state(scaler: torch.amp.GradScaler) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A mixed-precision loss scaler's state (scale, growth tracker, factors) split into JSON and tensors,
    so that an fp16 run resumes with the loss scale it had, not the initial one."""
    return split_tensors(scaler.state_dict(), "scaler")


def restore_scaler(scaler: torch.amp.GradScaler, saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]):
    """Load what :func:`scaler_state` split back into ``scaler``."""
    scaler.load_state_dict({**saved, **with_prefix(tensors, "scaler")})


def rng_state(trainer_rng: np.random.Generator) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The trainer's, numpy's and Python's RNG states as JSON, and torch's as a uint8 tensor."""
    name, keys, position, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    values = {
        "trainer": trainer_rng.bit_generator.state,
        "numpy": [name, keys.tolist(), position, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    return values, {"rng.torch": torch.get_rng_state()}


def restore_rng(trainer_rng: np.random.Generator, saved: Mapping[str, Any], tensors: Mapping[str, torch.Tensor]):
    """Set every RNG to the state :func:`rng_state` recorded."""
    trainer_rng.bit_generator.state = saved["trainer"]
    name, keys, position, has_gauss, cached = saved["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
    version, internal, gauss = saved["python"]
    random.setstate((version, tuple(internal), gauss))
    torch.set_rng_state(tensors["rng.torch"])


def restore_module(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], what: str, strict: bool) -> None:
    """Load saved parameters into ``module``; a name it does not have (or, if ``strict``, lacks) is an error."""
    if not tensors:
        raise CheckpointError(f"the checkpoint holds no {what}, but the run needs one at this step")
    result = module.load_state_dict(tensors, strict=False)
    if result.unexpected_keys or (strict and result.missing_keys):
        raise CheckpointError(
            f"the checkpoint's {what} does not fit the model: unexpected {result.unexpected_keys[:3]}, "
            f"missing {result.missing_keys[:3] if strict else []}"
        )


# ------------------------------------------------------------------------------------------------ run directory
def check_run_dir(out: Path, overwrite: bool, inputs: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Raise UnsafeOutputError unless a new run may start in ``out``; returns the earlier run's entries there.

    Allowed: no entry a run writes exists yet (other files are left alone), or ``overwrite`` and they
    are an earlier qrag run's (``qrag_run.json`` or a checkpoint, and a qrag ``model/``/``checkpoint/``)
    none of which is or holds one of the run's ``inputs`` (e.g. ``--init-from OUT/model``).
    """
    existing = [name for name in RUN_ENTRIES if (out / name).exists()]
    if not existing:
        return []
    is_run = (out / RUN_FILE).is_file() or CHECKPOINT_LAYOUT.is_own(out / CHECKPOINT_DIR)
    if not is_run:
        raise UnsafeOutputError(
            f"{out} already holds {', '.join(existing)}, but not from a qrag training run; they were left "
            "untouched: choose another output directory"
        )
    if not overwrite:
        resume = "pass --resume to continue it, " if (out / CHECKPOINT_DIR).exists() else ""
        raise UnsafeOutputError(
            f"{out} already holds a training run ({', '.join(existing)}); {resume}pass --overwrite "
            "(overwrite=True) to start it over, or choose another output directory"
        )
    for name in existing:
        refuse_guarded(resolved(out / name), inputs)
    for name, layout in ((MODEL_DIR, MODEL_LAYOUT), (CHECKPOINT_DIR, CHECKPOINT_LAYOUT)):
        check_replaceable(out / name, layout)  # a directory that is not qrag's own is never removed
    return existing


def start_run_dir(out: Path, overwrite: bool, info: Mapping[str, Any]) -> None:
    """Make ``out`` ready for a new run (removing an earlier run's entries if ``overwrite``), record ``info``."""
    for name in (CHECKPOINT_DIR, MODEL_DIR):
        recover(out / name)  # finish what a save killed in an earlier run left half done
    for name in check_run_dir(out, overwrite):
        logger.warning("removing %s of the earlier run (overwrite)", out / name)
        if (out / name).is_dir() and not (out / name).is_symlink():
            shutil.rmtree(out / name)
        else:
            (out / name).unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_file(out / RUN_FILE, json.dumps({"qrag_version": __version__, **info}, indent=2))
