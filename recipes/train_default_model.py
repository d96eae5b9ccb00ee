"""Reproduces the shipped BabiLong model ``qrag-babilong-minilm`` (the earlier default): data, stages, compact copy.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python recipes/train_default_model.py

Three stages, each printed before it runs:

1. **data** — a training mixture of short documents (the builders of ``qrag_core.data``): BabiLong QA1–QA5
   training questions (bAbI en-10k train split; QA3 from the 1k train file plus en-valid-10k, see
   :mod:`qrag_core.data.babi`) at 1k tokens, plus QA2/QA3 stories alone (0k), plus RULER NIAH samples of all
   eight variants at 1k tokens (seed 1, so they differ from the seed-0 benchmark samples). Long-context
   ability is left to ρ_t (docs/method.md, Eq. M3): no training document is longer than 1k tokens. Small evaluation sets
   (BabiLong test samples and NIAH samples at 4k tokens) are written for the periodic evaluation.
2. **train** — one :func:`qrag_core.training.train` run per stage, each with its own
   :class:`~qrag_core.training.TrainingConfig` (printed before it runs and recorded in the card), from
   all-MiniLM-L6-v2 with relative positions, the action transformer frozen (action head trained) and the
   state encoder's word embeddings frozen: the supervised warm start (run dir ``WORK_DIR/warm_start``), then
   optional further warm starts, each from the previous stage on training data of the next seed
   (``--continue-steps``: ``WORK_DIR/warm_start_2``; ``--distractors-steps``, on BabiLong documents that also
   hold hard distractors, novel sentences mentioning the question's words: ``WORK_DIR/warm_start_distractors``;
   ``--mistakes-steps``, also training from the states after
   the model's own top wrong pick: ``WORK_DIR/warm_start_mistakes``), then, with ``--rl-steps`` > 0, soft
   Q-learning from the last of them (docs/method.md §4; ``WORK_DIR/soft_q``).
3. **ship** — the trained model is saved with ``save_pretrained(compact=True)`` (the state encoder as fp16
   values of the tensors that differ from the base) into ``qrag_core/models/qrag-babilong-minilm``, its card
   recording the recipe, the command and the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from qrag_core.cli import add_machine_note_flag, add_threads_flag, add_verbose_flag, run_tool
from qrag_core.config import QRAGConfig
from qrag_core.data.babilong import BABILONG_TASKS, iter_babilong
from qrag_core.data.examples import Example, read_jsonl, write_jsonl
from qrag_core.data.haystack import Haystack
from qrag_core.data.ruler import NIAH_TASKS, iter_niah
from qrag_core.embedding_cache import shared_cache
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.model_names import BABILONG_MODEL_NAME, SHIPPED_MODELS_DIR
from qrag_core.training import TrainingConfig, train
from qrag_core.training.checkpoint import CHECKPOINT_DIR, MODEL_DIR

logger = logging.getLogger("train_default_model")

BABILONG_TRAIN_MIX: dict[tuple[str, str], int] = {
    ("qa1", "1k"): 1000,
    ("qa2", "1k"): 2000,
    ("qa2", "0k"): 500,
    ("qa3", "1k"): 1500,
    ("qa3", "0k"): 500,
    ("qa4", "1k"): 1000,
    ("qa5", "1k"): 1500,
}
"""(task, length) → training questions; the two- and three-fact tasks get most of them."""
NIAH_TRAIN_PER_TASK = 150
"""RULER NIAH training samples per variant (1k tokens, seed NIAH_TRAIN_SEED)."""
NIAH_TRAIN_SEED = 1
"""Seed of the first stage's NIAH training samples (the benchmarks use seed 0); stage k uses NIAH_TRAIN_SEED + k."""
TRAIN_LENGTH_NIAH = "1k"
EVAL_LENGTH = "4k"
EVAL_BABILONG_PER_TASK = 10
"""BabiLong test samples per task in the periodic evaluation (the first of the 100 test samples)."""
EVAL_NIAH_PER_TASK = 5
"""NIAH samples per variant in the periodic evaluation (seed 0, 4k tokens)."""
MODEL_SETTINGS: dict[str, Any] = {
    "base_model": "all-MiniLM-L6-v2",
    "position_mode": "relative",
    "freeze_state_embeddings": True,
}
"""QRAGConfig settings of the shipped model (the other fields keep their defaults)."""


@dataclass
class Stage:
    """One training run of the recipe."""

    name: str
    """Its run folder under WORK_DIR."""
    data_seed: int
    """Seed of its training file: which training questions, and where their facts lie in which haystack."""
    init_from: str | None
    """The stage whose model it starts from (None: the base encoder with MODEL_SETTINGS)."""
    phase: dict[str, Any] = field(default_factory=dict)
    """TrainingConfig settings of its phase (steps, learning rate, ...) on top of the recipe's common ones."""
    seconds: float | None = None
    """Its training time limit."""
    distractors: int = 0
    """Hard distractors per BabiLong training document (qrag_core.data.babilong.make_sample)."""

    @property
    def data_key(self) -> tuple[int, int]:
        """Which training file it reads: (data seed, distractors)."""
        return self.data_seed, self.distractors


def training_examples(haystack: Haystack, seed: int, distractors: int) -> Iterator[Example]:
    for (task, length), n in BABILONG_TRAIN_MIX.items():
        yield from iter_babilong(task, "train", length, n, seed=seed, haystack=haystack, distractors=distractors)
    for task in NIAH_TASKS:
        yield from iter_niah(task, TRAIN_LENGTH_NIAH, NIAH_TRAIN_PER_TASK, NIAH_TRAIN_SEED + seed, haystack)


def build_data(data_dir: Path, keys: Sequence[tuple[int, int]]) -> tuple[dict[tuple[int, int], Path], list[Path]]:
    """Write one training file per (seed, distractors) and the evaluation files (each skipped when it exists)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    train_files = {
        (seed, hard): data_dir / (f"train_seed{seed}" + (f"_distractors{hard}" if hard else "") + ".jsonl")
        for seed, hard in keys
    }
    eval_files = {
        data_dir / f"babilong_{EVAL_LENGTH}.jsonl": lambda h: (
            ex
            for task in BABILONG_TASKS
            for ex in iter_babilong(task, "test", EVAL_LENGTH, EVAL_BABILONG_PER_TASK, haystack=h)
        ),
        data_dir / f"niah_{EVAL_LENGTH}.jsonl": lambda h: (
            ex for task in NIAH_TASKS for ex in iter_niah(task, EVAL_LENGTH, EVAL_NIAH_PER_TASK, haystack=h)
        ),
    }
    todo = [p for p in [*train_files.values(), *eval_files] if not p.is_file()]
    if todo:
        haystack = Haystack.load()
        for (seed, hard), path in train_files.items():
            if path in todo:
                count = write_jsonl(training_examples(haystack, seed, hard), path)
                logger.info("wrote %d training examples to %s", count, path)
        for path, make in eval_files.items():
            if path in todo:
                logger.info("wrote %d evaluation examples to %s", write_jsonl(make(haystack), path), path)
    return train_files, list(eval_files)


def recipe_stages(args: argparse.Namespace) -> list[Stage]:
    """The warm start from the base encoder, optional further warm starts on fresh data, optional soft-Q."""
    stages = [Stage("warm_start", 0, None, {"warm_start_steps": args.warm_start_steps}, args.warm_start_seconds)]
    if args.continue_steps > 0:
        phase = {"warm_start_steps": args.continue_steps, "warm_start_lr": args.continue_lr}
        stages.append(Stage("warm_start_2", 1, "warm_start", phase, args.continue_seconds))
    if args.distractors_steps > 0:
        phase = {"warm_start_steps": args.distractors_steps, "warm_start_lr": args.distractors_lr}
        data_seed = stages[-1].data_seed + 1
        stages.append(
            Stage(
                "warm_start_distractors",
                data_seed,
                stages[-1].name,
                phase,
                args.distractors_seconds,
                args.distractors_per_document,
            )
        )
    if args.mistakes_steps > 0:
        phase = {
            "warm_start_steps": args.mistakes_steps,
            "warm_start_lr": args.mistakes_lr,
            "warm_start_mistakes": args.mistakes_fraction,
        }
        data_seed = stages[-1].data_seed + 1
        stages.append(Stage("warm_start_mistakes", data_seed, stages[-1].name, phase, args.mistakes_seconds))
    if args.rl_steps > 0:
        # T = the example's support size (episode_steps None), as in the QA2/QA3 soft-Q runs.
        phase = {"warm_start_steps": 0, "rl_steps": args.rl_steps, "lr": args.rl_lr, "episode_steps": None}
        stages.append(Stage("soft_q", stages[-1].data_seed, stages[-1].name, phase, args.rl_seconds))
    return stages


def stage_config(args: argparse.Namespace, stage: Stage) -> TrainingConfig:
    """The training hyperparameters of one stage: the recipe's common settings, then its phase's."""
    common: dict[str, Any] = {
        "rl_steps": 0,
        "batch_size": args.batch_size,
        "episode_steps": args.episode_steps,
        "eval_steps": args.eval_steps,
        "eval_every": args.eval_every,
        "checkpoint_every": args.eval_every,
        "seed": args.seed,
        "max_train_seconds": stage.seconds,
    }
    return TrainingConfig(**(common | stage.phase)).validate()


def changed_settings(config: TrainingConfig) -> dict[str, Any]:
    """The settings of ``config`` that differ from TrainingConfig's defaults (what a stage chose)."""
    default = TrainingConfig()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def run_stage(args: argparse.Namespace, stage: Stage, train_file: Path, eval_files: Sequence[Path]) -> None:
    """Train one stage into WORK_DIR/<stage name>, resuming its interrupted run with ``--resume``."""
    out = args.work_dir / stage.name
    config = stage_config(args, stage)
    if stage.init_from is None:
        model = QRAG.from_base(config=QRAGConfig(**MODEL_SETTINGS))
        data_info = {"base_model": MODEL_SETTINGS["base_model"]}
    else:
        init_from = args.work_dir / stage.init_from / MODEL_DIR
        model = QRAG.from_pretrained(str(init_from))
        data_info = {"init_from": str(init_from)}
    logger.info("stage %s: %s", stage.name, changed_settings(config))
    train_on_files(model, config, train_file, eval_files, out, args.resume, data_info)


def train_on_files(
    model: QRAG,
    config: TrainingConfig,
    train_file: Path,
    eval_files: Sequence[Path],
    out: Path,
    resume: bool,
    data_info: dict[str, Any],
) -> None:
    """One :func:`train` run on JSONL files into ``out``, through the shared embedding cache.

    With ``resume`` it continues the run in ``out`` (one killed before its first checkpoint starts over).
    """
    resuming = resume and (out / CHECKPOINT_DIR).is_dir()
    if resuming:
        logger.info("resuming the run in %s", out)
    cache = shared_cache()
    try:
        train(
            model,
            read_jsonl(train_file, need_support=True),
            config,
            {path.stem: read_jsonl(path, need_support=True) for path in eval_files},
            out_dir=out,
            resume=resuming,
            overwrite=resume and not resuming,
            cache=cache,
            show_progress=False,
            data_info=data_info | {"data": str(train_file), "eval_data": [str(p) for p in eval_files]},
        )
    finally:
        cache.close()


REUSE_FLAGS = {"--resume": 0, "--skip-stages": 1}
"""Flags that only reuse earlier work (flag → how many values follow it); the recorded script leaves them out."""


def recorded_script(argv: Sequence[str]) -> str:
    """The command that reproduces a run from scratch: this script with ``argv`` minus :data:`REUSE_FLAGS`."""
    kept: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        flag = arg.split("=", 1)[0]
        if flag in REUSE_FLAGS:
            skip = 0 if "=" in arg else REUSE_FLAGS[flag]
            continue
        kept.append(arg)
    return "python recipes/train_default_model.py " + shlex.join(kept)


def stage_records(stages: Sequence[Any], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per stage of a recipe (trained into ``args.work_dir``): its steps, examples seen, seconds and the
    settings it chose, as the card records them."""
    done = {}
    for stage in stages:
        info = QRAG.from_pretrained(str(args.work_dir / stage.name / MODEL_DIR)).training_info
        done[stage.name] = {k: info[k] for k in ("steps", "examples_seen", "seconds")}
        done[stage.name]["settings"] = changed_settings(stage_config(args, stage))
    return done


def ship(stages: Sequence[Stage], target: Path, args: argparse.Namespace, script_argv: Sequence[str]) -> None:
    """Save the trained model compactly into the package, recording how it was made."""
    model = QRAG.from_pretrained(str(args.work_dir / stages[-1].name / MODEL_DIR))
    done = stage_records(stages, args)
    model.training_info |= {
        "name": BABILONG_MODEL_NAME,
        "recipe": (
            "BabiLong "
            + ", ".join(f"{task} {length} x{n}" for (task, length), n in BABILONG_TRAIN_MIX.items())
            + f"; RULER NIAH all 8 variants {TRAIN_LENGTH_NIAH} x{NIAH_TRAIN_PER_TASK}; per stage, data seed "
            + ", ".join(
                f"{stage.name}: {stage.data_seed}"
                + (f" with {stage.distractors} hard distractors per BabiLong document" if stage.distractors else "")
                for stage in stages
            )
            + f" (NIAH seed + {NIAH_TRAIN_SEED})"
        ),
        "stages": done,
        "total_seconds": round(sum(d["seconds"] for d in done.values()), 1),
        "script": recorded_script(script_argv),
        "hardware": machine_description(args.machine_note),
    }
    model.save_pretrained(target, compact=True)
    size = sum(p.stat().st_size for p in target.iterdir())
    logger.info("shipped %s (%.1f MB)", target, size / 1e6)


def add_stage_arguments(parser: argparse.ArgumentParser, name: str, lr: float, what: str) -> None:
    """``--NAME-steps`` (0 skips the stage), ``--NAME-lr`` and ``--NAME-seconds`` of an optional stage."""
    parser.add_argument(
        f"--{name}-steps", type=int, default=0, help=f"optimiser steps of {what}; 0 skips it (default: 0)"
    )
    parser.add_argument(f"--{name}-lr", type=float, default=lr, help=f"its peak learning rate (default: {lr:g})")
    parser.add_argument(f"--{name}-seconds", type=float, default=None, help="its time limit (default: none)")


def add_evaluation_arguments(parser: argparse.ArgumentParser, eval_steps: int, eval_every: int) -> None:
    """``--eval-steps``, ``--eval-every`` (their defaults per recipe), ``--seed`` and ``--threads``, which
    both training recipes take."""
    parser.add_argument(
        "--eval-steps", type=int, default=eval_steps, help=f"T of the periodic evaluation (default: {eval_steps})"
    )
    parser.add_argument(
        "--eval-every", type=int, default=eval_every, help=f"evaluate, checkpoint every N steps (default: {eval_every})"
    )
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    add_threads_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name,
        description="Build the training mixture, train the stages and ship the compact default model.",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=Path("runs/default_model"), help="data and run folder (default: %(default)s)"
    )
    parser.add_argument(
        "--ship-to",
        type=Path,
        default=SHIPPED_MODELS_DIR / BABILONG_MODEL_NAME,
        help="where the compact model is written; 'none' skips shipping (default: the package's models folder)",
    )
    parser.add_argument("--warm-start-steps", type=int, default=2400, help="warm-start optimiser steps (default: 2400)")
    add_stage_arguments(parser, "continue", 3e-5, "a second warm start from the first, on training data of seed 1")
    add_stage_arguments(
        parser,
        "distractors",
        3e-5,
        "a further warm start from the previous stage, on fresh training data whose BabiLong documents also hold "
        "hard distractors (novel sentences that mention the question's words)",
    )
    parser.add_argument(
        "--distractors-per-document",
        type=int,
        default=6,
        help="its hard distractors per BabiLong training document (default: 6)",
    )
    add_stage_arguments(
        parser,
        "mistakes",
        3e-5,
        "a further warm start from the previous stage, on fresh training data, that also trains from the states "
        "after the model's own top wrong pick (TrainingConfig.warm_start_mistakes)",
    )
    parser.add_argument(
        "--mistakes-fraction",
        type=float,
        default=0.5,
        help="its fraction of examples trained from a mistake state as well (default: 0.5)",
    )
    add_stage_arguments(parser, "rl", 1e-5, "soft Q-learning after the warm start(s)")
    parser.add_argument("--warm-start-seconds", type=float, default=None, help="warm-start time limit (default: none)")
    parser.add_argument("--batch-size", type=int, default=16, help="episodes per optimiser step (default: 16)")
    parser.add_argument(
        "--episode-steps",
        type=int,
        default=5,
        help="T of a warm-start episode; soft-Q episodes take the support size (default: 5)",
    )
    add_evaluation_arguments(parser, eval_steps=4, eval_every=400)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted stages in WORK_DIR (a stage without a checkpoint yet starts over)",
    )
    parser.add_argument(
        "--skip-stages",
        type=int,
        default=0,
        help="reuse the models of the first N stages, already trained in WORK_DIR (default: 0)",
    )
    add_machine_note_flag(parser, "free text recorded in the card's hardware line, e.g. other jobs running")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    torch.set_num_threads(args.threads)
    stages = recipe_stages(args)
    train_files, eval_files = build_data(args.work_dir / "data", sorted({stage.data_key for stage in stages}))
    for number, stage in enumerate(stages):
        if number < args.skip_stages:
            logger.info("reusing the finished stage %s in %s", stage.name, args.work_dir / stage.name)
            continue
        run_stage(args, stage, train_files[stage.data_key], eval_files)
    if str(args.ship_to).lower() != "none":
        ship(stages, args.ship_to, args, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
