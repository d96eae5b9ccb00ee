"""``qrag-finetune``: fine-tune a Q-RAG model on labelled JSONL data (docs/method.md §4, docs/data-format.md).

    qrag-finetune --data train.jsonl --eval-data test.jsonl --out runs/my-model
    qrag-finetune --data train.jsonl --out runs/my-model --resume      # after an interruption
    qrag-finetune --data train.jsonl --out runs/my-model --overwrite   # start that run over
    torchrun --nproc_per_node 2 -m qrag_core.cli.finetune --data train.jsonl --out runs/my-model   # 2 processes

Every training hyperparameter has a flag generated from :class:`qrag_core.training.TrainingConfig`
(its help is the field's docstring), and so do the model settings of :class:`qrag_core.config.QRAGConfig`
used when starting from a base encoder. The run writes ``OUT/metrics.csv`` (and TensorBoard events when
tensorboard is installed), ``OUT/checkpoint`` (atomic, resumable) and the final model ``OUT/model``,
loadable with ``QRAG.from_pretrained("OUT/model")``. Other files in OUT are left alone; an earlier run's
files there are replaced only with ``--overwrite``, files no qrag run wrote never are. Under ``torchrun``
or ``accelerate launch`` the run is data-parallel (:mod:`qrag_core.training.distributed`); the main
process evaluates and writes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from qrag_core.cli import add_dataclass_flags, add_threads_flag, add_verbose_flag, run_reporting_errors, setup_logging
from qrag_core.config import POSITION_MODES, QRAGConfig
from qrag_core.data.examples import read_jsonl
from qrag_core.embedding_cache import EmbeddingCache, shared_cache_path
from qrag_core.errors import InvalidInputError, QRAGError
from qrag_core.model import QRAG
from qrag_core.training import TrainingConfig, train
from qrag_core.training.checkpoint import MODEL_DIR, check_run_dir
from qrag_core.training.config import MIXED_PRECISION, REWARDS
from qrag_core.training.distributed import Processes

logger = logging.getLogger(__name__)

CHOICES = {"reward": REWARDS, "position_mode": POSITION_MODES, "mixed_precision": MIXED_PRECISION}
"""String settings that only take a few values."""
MODEL_FIELDS_SKIPPED = ("base_model", "chunking")
"""QRAGConfig fields without a model flag (--base-model has its own; chunking keeps its defaults)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrag-finetune",
        description="Fine-tune the Q-RAG embedders on JSONL examples with support labels (docs/data-format.md): a "
        "supervised warm start, then soft Q-learning (docs/method.md §4). Writes OUT/metrics.csv, OUT/checkpoint "
        "and the final model OUT/model (load it with QRAG.from_pretrained).",
    )
    run = parser.add_argument_group("data and output")
    run.add_argument("--data", required=True, help="training JSONL; every row needs support labels")
    run.add_argument(
        "--eval-data",
        action="append",
        default=[],
        metavar="EVAL.jsonl",
        help="evaluation JSONL (repeatable); its scores are named after the file name",
    )
    run.add_argument(
        "--out",
        required=True,
        help="output directory: metrics, checkpoint and the final model (other files in it are left alone)",
    )
    again = run.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true", help="continue the interrupted run whose checkpoint is in OUT")
    again.add_argument(
        "--overwrite",
        action="store_true",
        help="start over in an OUT that holds an earlier qrag run, replacing its metrics, checkpoint and model",
    )
    start = run.add_mutually_exclusive_group()
    start.add_argument(
        "--base-model",
        default=None,
        help="start untrained from this encoder name or directory (default: all-MiniLM-L6-v2)",
    )
    start.add_argument("--init-from", default=None, help="start from this saved qrag model (continue its training)")
    run.add_argument(
        "--cache",
        default=str(shared_cache_path()),
        help="shared embedding cache file of content embeddings; 'none' keeps them in memory (default: %(default)s)",
    )
    add_threads_flag(run, default=None)
    run.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_verbose_flag(run)
    model = parser.add_argument_group(
        "model settings", "Used when starting from --base-model; a model given with --init-from keeps its own."
    )
    add_dataclass_flags(model, QRAGConfig, suppress_defaults=True, skip=MODEL_FIELDS_SKIPPED, choices=CHOICES)
    training = parser.add_argument_group("training hyperparameters")
    add_dataclass_flags(training, TrainingConfig, suppress_defaults=False, choices=CHOICES)
    return parser


def _eval_sets(paths: Sequence[str]) -> dict[str, list]:
    sets: dict[str, list] = {}
    for path in paths:
        name = Path(path).stem
        while name in sets:
            name += "_"
        sets[name] = read_jsonl(path, need_support=True)
    return sets


def _model(args: argparse.Namespace, settings: dict[str, Any], device: torch.device | None) -> QRAG:
    where = None if device is None else str(device)
    if args.init_from is not None:
        if settings:
            raise QRAGError(
                f"model settings {sorted(settings)} only apply with --base-model; "
                f"{args.init_from} keeps the settings it was trained with"
            )
        return QRAG.from_pretrained(args.init_from, device=where)
    return QRAG.from_base(args.base_model, QRAGConfig(**settings), device=where)


def model_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The QRAGConfig settings given on the command line (only those given)."""
    names = {f.name for f in dataclasses.fields(QRAGConfig)} - set(MODEL_FIELDS_SKIPPED)
    return {k: v for k, v in vars(args).items() if k in names}


def training_config(args: argparse.Namespace) -> TrainingConfig:
    """The validated training hyperparameters of the command line."""
    names = {f.name for f in dataclasses.fields(TrainingConfig)}
    return TrainingConfig(**{k: v for k, v in vars(args).items() if k in names}).validate()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any work starts: an option of the wrong type or out of range,
    or an inconsistent setting, is an argparse error (``qrag-finetune: error: ...``, exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        training_config(args)
        QRAGConfig(**model_settings(args)).validate()
    except InvalidInputError as err:
        parser.error(str(err))
    return args


def run(args: argparse.Namespace) -> dict[str, Any] | None:
    settings = model_settings(args)
    config = training_config(args)
    processes = Processes.from_environment(config.mixed_precision)
    out = Path(args.out)
    if not args.resume:
        inputs = [args.data, *args.eval_data, *(a for a in (args.init_from, args.base_model) if a)]
        check_run_dir(out, args.overwrite, inputs)  # before loading anything; the trainer checks again
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    examples = read_jsonl(args.data, need_support=True)
    eval_sets = _eval_sets(args.eval_data)
    model = _model(args, settings, processes.device)
    cache = EmbeddingCache(None if args.cache.lower() == "none" else args.cache)
    data_info = {"data": str(args.data), "eval_data": list(args.eval_data)}
    data_info |= {"init_from": args.init_from} if args.init_from else {"base_model": model.config.base_model}
    try:
        result = train(
            model,
            examples,
            config,
            eval_sets,
            out_dir=out,
            resume=args.resume,
            overwrite=args.overwrite,
            cache=cache,
            show_progress=not args.no_progress,
            data_info=data_info,
            processes=processes,
        )
    finally:
        cache.close()
    if not processes.is_main:
        return None
    return {
        "model": str(out / MODEL_DIR),
        "metrics": str(out / "metrics.csv"),
        "steps": result.steps,
        "processes": processes.world_size,
        "examples_seen": result.examples,
        "train_seconds": round(result.train_seconds, 1),
        "evaluation": result.evaluation,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)

    def report() -> None:
        summary = run(args)
        if summary is not None:  # the main process of a multi-process run reports for all
            print(json.dumps(summary, indent=2))

    return run_reporting_errors("qrag-finetune", report)


if __name__ == "__main__":
    sys.exit(main())
