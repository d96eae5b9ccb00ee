"""Trains and ships the general default model ``qrag-minilm``: real multi-hop text and long documents in one model.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python recipes/train_general_model.py

It continues from ``qrag-babilong-minilm`` (itself reproduced by ``recipes/train_default_model.py``), which
is excellent on BabiLong and NIAH but loses to plain dense retrieval on real multi-hop questions, with a
warm start (and optionally soft Q-learning, docs/method.md §4) on a mixture of

- **passage collections** (positions off, docs/method.md §3): the HotpotQA ``train`` split (100 official
  train questions plus 807 official *dev* questions disjoint from the 297 test questions, see
  :mod:`qrag_core.data.hotpotqa`; every report on this model says so) and the 100 MuSiQue train
  questions, each :data:`OPEN_DOMAIN_REPEATS` times, minus :data:`HOTPOTQA_VALIDATION`
  (``--hotpotqa-held-out``) HotpotQA questions held out for the periodic evaluation;
- **ordered documents** (ρ_t) to keep what the starting model knows: BabiLong QA1–QA5 training questions
  at 1k tokens (:data:`BABILONG_REPLAY`, changed by ``--replay``) and RULER NIAH samples of all eight
  variants, with data seeds the starting model never saw.

Optional: a second warm start (``--hard-distractor-steps``) from the first on the same mixture plus BabiLong
QA1–QA5 training questions at 1k tokens that also hold hard distractors (novel sentences mentioning the
question's words, :data:`HARD_DISTRACTORS`); longer state pieces than chunks (``--max-state-tokens``: the state
then sees a whole HotpotQA paragraph, 125 tokens on average, while chunks keep their embeddings and index); and
a base encoder as the start (``--start-model all-MiniLM-L6-v2``, with :data:`START_CONFIG`). Together they make
the version-2 candidate of benchmarks/training.md (HotpotQA up, BabiLong QA3 down; not shipped). Last, the
shipped weights can be interpolated with another model's (``--interpolate-with``, WiSE-FT:
:mod:`qrag_core.training.interpolation`), e.g. a run of this recipe on another mixture.

The periodic evaluation uses only training-split data: the held-out HotpotQA train questions and BabiLong
*train* questions at 4k tokens. No test question is read. Each stage resumes after a kill (``--resume``);
the model is saved with ``save_pretrained(compact=True)`` into ``qrag_core/models/qrag-minilm``, chunking
users' texts with the library's sentence splitter (Punkt; the training data comes as ready-made chunks) and
searching with the hybrid-score weights :data:`SHIPPED_WEIGHTS`.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import shlex
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from train_default_model import (  # the sibling recipe (scripts run from recipes/)
    add_evaluation_arguments,
    stage_config,
    stage_records,
    train_on_files,
)

from qrag_core.cli import (
    add_machine_note_flag,
    add_verbose_flag,
    non_negative_float,
    positive_int,
    run_tool,
    unit_fraction,
)
from qrag_core.config import DEFAULT_SENTENCE_SPLITTER, QRAGConfig
from qrag_core.data.babilong import BABILONG_TASKS, iter_babilong, length_label
from qrag_core.data.examples import Example, write_jsonl
from qrag_core.data.haystack import Haystack
from qrag_core.data.hotpotqa import HELD_OUT, train_and_held_out
from qrag_core.data.musique import iter_musique
from qrag_core.data.ruler import NIAH_TASKS, iter_niah
from qrag_core.errors import InvalidInputError
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.model_files import is_model_dir
from qrag_core.model_names import SHIPPED_MODELS_DIR, resolve_model_path
from qrag_core.training.checkpoint import MODEL_DIR
from qrag_core.training.interpolation import interpolate_weights

logger = logging.getLogger("train_general_model")

GENERAL_MODEL_NAME = "qrag-minilm"
START_MODEL = "qrag-babilong-minilm"
"""What the recipe trains from: a saved qrag model or a base encoder (name or directory)."""
START_CONFIG = QRAGConfig(freeze_state_embeddings=True)
"""The model settings when starting from a base encoder (a saved model keeps its own)."""
OPEN_DOMAIN_REPEATS = 2
"""How often each HotpotQA and MuSiQue training question appears in the training file."""
HOTPOTQA_VALIDATION = HELD_OUT
"""HotpotQA train-split questions (the last ones) held out of training for the periodic evaluation."""
BABILONG_REPLAY: dict[tuple[str, str], int] = {
    ("qa1", "1k"): 200,
    ("qa2", "1k"): 400,
    ("qa3", "1k"): 400,
    ("qa4", "1k"): 200,
    ("qa5", "1k"): 300,
}
"""(task, length) → BabiLong training questions replayed so the starting model's skills stay."""
NIAH_REPLAY_PER_TASK = 40
"""RULER NIAH training samples (1k tokens) per variant."""
DATA_SEED = 7
"""Seed of the replayed BabiLong/NIAH samples (the starting model's recipe used seeds 0–3)."""
EVAL_BABILONG_PER_TASK = 10
"""BabiLong *train* questions per task at 4k tokens in the periodic evaluation."""
SHIPPED_WEIGHTS = {"lexical_weight": 0.0, "passage_lexical_weight": 0.3, "identifier_weight": 0.1}
"""The hybrid-score weights the shipped model searches with (docs/method.md §5), those
``benchmarks/lexical_weight.py`` fitted on training-split questions for the previous version; ordered documents
keep w = 0 (the all-words term lowered BabiLong there)."""
HARD_DISTRACTORS = (300, 6, DATA_SEED + 3)
"""BabiLong QA1–QA5 1k training questions of the second stage: per task, hard distractors per question, data
seed (not the evaluation's DATA_SEED + 1, whose first questions would be among them)."""


@dataclass
class Stage:
    """One training run of the recipe."""

    name: str
    """Its run folder under WORK_DIR."""
    phase: dict[str, Any]
    """Its TrainingConfig settings on top of the recipe's common ones."""
    data: str = "train.jsonl"
    """Its training file in WORK_DIR/data."""
    seconds: float | None = None
    """Its training time limit (none)."""


def replay_spec(spec: str) -> tuple[tuple[str, str], int]:
    """``TASK:LENGTH=N`` (e.g. ``qa3:4k=300``) as a BABILONG_REPLAY entry, the length as its label (``4096`` is
    ``4k``, so both name one entry); argparse's error for a bad one."""
    try:
        where, n = spec.split("=")
        task, length = where.split(":")
        length = length_label(length)
        count = int(n)
    except (ValueError, InvalidInputError):
        raise argparse.ArgumentTypeError(f"bad replay {spec!r}: use TASK:LENGTH=N, e.g. qa3:4k=300") from None
    if task not in BABILONG_TASKS or count < 0:
        raise argparse.ArgumentTypeError(f"bad replay {spec!r}: task one of {', '.join(BABILONG_TASKS)}, N >= 0")
    return (task, length), count


def replay_counts(args: argparse.Namespace) -> dict[tuple[str, str], int]:
    """BABILONG_REPLAY with the ``--replay`` entries added or changed (a count of 0 drops one)."""
    counts = BABILONG_REPLAY | dict(args.replay)
    return {key: n for key, n in counts.items() if n}


def training_examples(
    haystack: Haystack,
    held_out: int = HOTPOTQA_VALIDATION,
    replay: dict[tuple[str, str], int] | None = None,
) -> Iterator[Example]:
    """The training mixture (see the module docstring), passage collections first; the trainer shuffles.

    ``replay``: (task, length) → BabiLong training questions (None: BABILONG_REPLAY)."""
    hotpot = train_and_held_out(held_out)[0]
    musique = list(iter_musique(split="train"))
    for _ in range(OPEN_DOMAIN_REPEATS):
        yield from hotpot
        yield from musique
    for (task, length), n in (BABILONG_REPLAY if replay is None else replay).items():
        yield from iter_babilong(task, "train", length, n, seed=DATA_SEED, haystack=haystack)
    for task in NIAH_TASKS:
        yield from iter_niah(task, "1k", NIAH_REPLAY_PER_TASK, DATA_SEED, haystack)


def hard_distractor_examples(
    haystack: Haystack,
    held_out: int = HOTPOTQA_VALIDATION,
    replay: dict[tuple[str, str], int] | None = None,
) -> Iterator[Example]:
    """The second stage's data: the mixture, then BabiLong 1k questions with hard distractors."""
    yield from training_examples(haystack, held_out, replay)
    n, distractors, seed = HARD_DISTRACTORS
    for task in BABILONG_TASKS:
        yield from iter_babilong(task, "train", "1k", n, seed=seed, haystack=haystack, distractors=distractors)


def build_data(
    data_dir: Path,
    held_out: int = HOTPOTQA_VALIDATION,
    hard_distractors: bool = True,
    replay: dict[tuple[str, str], int] | None = None,
) -> tuple[Path, list[Path]]:
    """Write the training files of the stages (the hard-distractor stage's if asked) and the two evaluation
    files, each skipped when it exists; returns the first stage's training file and the evaluation files.
    ``replay`` as in :func:`training_examples`."""
    data_dir.mkdir(parents=True, exist_ok=True)
    train_file = data_dir / "train.jsonl"
    hard_file = data_dir / "train_hard_distractors.jsonl"
    hotpot_eval = data_dir / "hotpotqa_heldout.jsonl"
    babilong_eval = data_dir / "babilong_train_4k.jsonl"
    if not hotpot_eval.is_file():
        questions = train_and_held_out(held_out)[1]
        logger.info("wrote %d held-out HotpotQA questions to %s", write_jsonl(questions, hotpot_eval), hotpot_eval)
    files = [(train_file, training_examples)]
    if hard_distractors:
        files.append((hard_file, hard_distractor_examples))
    if not all(file.is_file() for file, _ in files) or not babilong_eval.is_file():
        haystack = Haystack.load()
        for file, examples in files:
            if not file.is_file():
                written = write_jsonl(examples(haystack, held_out, replay), file)
                logger.info("wrote %d training examples to %s", written, file)
        if not babilong_eval.is_file():
            rows = (
                ex
                for task in BABILONG_TASKS
                for ex in iter_babilong(
                    task, "train", "4k", EVAL_BABILONG_PER_TASK, seed=DATA_SEED + 1, haystack=haystack
                )
            )
            logger.info("wrote %d evaluation examples to %s", write_jsonl(rows, babilong_eval), babilong_eval)
    return train_file, [hotpot_eval, babilong_eval]


def recipe_stages(args: argparse.Namespace) -> list[Stage]:
    """The warm start from START_MODEL, then the optional hard-distractor warm start and soft Q-learning
    (the warm starts with the distillation term of ``--distillation-weight``)."""
    distill = {"distillation_weight": args.distillation_weight} if args.distillation_weight else {}
    stages = [
        Stage("warm_start", {"warm_start_steps": args.warm_start_steps, "warm_start_lr": args.warm_start_lr} | distill)
    ]
    if args.hard_distractor_steps:
        phase = {"warm_start_steps": args.hard_distractor_steps, "warm_start_lr": args.hard_distractor_lr} | distill
        stages.append(Stage("hard_distractors", phase, data="train_hard_distractors.jsonl"))
    if args.rl_steps:
        stages.append(Stage("soft_q", {"warm_start_steps": 0, "rl_steps": args.rl_steps, "lr": args.rl_lr}))
    return stages


def start_model(start: str) -> QRAG:
    """The model at ``start``: a saved qrag model as saved, a base encoder with START_CONFIG."""
    if is_model_dir(resolve_model_path(start)):
        return QRAG.from_pretrained(start)
    return QRAG.from_base(start, dataclasses.replace(START_CONFIG))


def run_stage(args: argparse.Namespace, stage: Stage, start: str, eval_files: Sequence[Path]) -> Path:
    """Train one stage from the model at ``start`` into WORK_DIR/<stage>; returns its model directory."""
    out = args.work_dir / stage.name
    logger.info("stage %s from %s", stage.name, start)
    model = start_model(start)
    if args.max_chunk_tokens is not None and args.max_chunk_tokens != model.config.max_chunk_tokens:
        logger.info("chunks: %d tokens instead of %d", args.max_chunk_tokens, model.config.max_chunk_tokens)
        model.set_max_chunk_tokens(args.max_chunk_tokens)
    if args.max_state_tokens is not None and args.max_state_tokens != model.config.state_piece_tokens:
        logger.info("state pieces: %d tokens instead of %d", args.max_state_tokens, model.config.state_piece_tokens)
        model.set_max_state_tokens(args.max_state_tokens)
    train_file = args.work_dir / "data" / stage.data
    train_on_files(model, stage_config(args, stage), train_file, eval_files, out, args.resume, {"init_from": start})
    return out / MODEL_DIR


def ship(model_dir: Path, stages: Sequence[Stage], args: argparse.Namespace, argv: Sequence[str]) -> None:
    """Save the trained model compactly into ``--ship-to``, recording its data, stages and machine."""
    model = QRAG.from_pretrained(str(model_dir))
    partner: dict[str, Any] = {}
    if args.interpolate_with is not None:
        logger.info("weights: %s + %g x (trained - it)", args.interpolate_with, args.interpolation_weight)
        other = QRAG.from_pretrained(args.interpolate_with)
        interpolate_weights(other, model, args.interpolation_weight)
        partner = {
            "interpolated_with": {
                "weight_of_this_run": args.interpolation_weight,
                "model": args.interpolate_with,
                **{key: other.training_info[key] for key in ("recipe", "script") if key in other.training_info},
            }
        }
    # Training documents come as ready-made chunks; users' texts get the library's sentence splitter.
    model.config.chunking = dataclasses.replace(model.config.chunking, sentence_splitter=DEFAULT_SENTENCE_SPLITTER)
    for setting, weight in SHIPPED_WEIGHTS.items():
        setattr(model.config, setting, weight)
    done = stage_records(stages, args)
    model.training_info |= {
        "name": GENERAL_MODEL_NAME,
        "init_from": args.start_model,
        "recipe": (
            f"from {args.start_model}"
            + (f", state pieces of {args.max_state_tokens} tokens" if args.max_state_tokens else "")
            + f": HotpotQA train split x{OPEN_DOMAIN_REPEATS} (100 official train questions "
            "+ 807 official dev questions disjoint from the 297-question test subset, minus "
            f"{args.hotpotqa_held_out} held out), MuSiQue 100 train questions x{OPEN_DOMAIN_REPEATS}, as passage "
            "collections (positions off); BabiLong "
            + ", ".join(f"{task} {length} x{n}" for (task, length), n in replay_counts(args).items())
            + f" and RULER NIAH 8 variants 1k x{NIAH_REPLAY_PER_TASK} (data seed {DATA_SEED}) with ρ_t"
            + (
                f"; then BabiLong qa1-qa5 1k x{HARD_DISTRACTORS[0]} with {HARD_DISTRACTORS[1]} hard distractors "
                f"(data seed {HARD_DISTRACTORS[2]}) added"
                if args.hard_distractor_steps
                else ""
            )
            + (
                f"; weights interpolated, {args.interpolation_weight:g} of this run's and the rest of another "
                "model's (interpolated_with)"
                if args.interpolate_with is not None
                else ""
            )
        ),
        "stages": done,
        "total_seconds": round(sum(record["seconds"] for record in done.values()), 1),
        "script": shlex.join(["python", "recipes/train_general_model.py", *(a for a in argv if a != "--resume")]),
        "hardware": machine_description(args.machine_note),
    } | partner
    model.save_pretrained(args.ship_to, compact=True)
    size = sum(p.stat().st_size for p in Path(args.ship_to).iterdir())
    logger.info("shipped %s (%.1f MB)", args.ship_to, size / 1e6)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=Path("runs/general_model"), help="data and run folder")
    parser.add_argument(
        "--start-model",
        default=START_MODEL,
        help="what to train from: a base encoder or a saved qrag model, a name or a directory (%(default)s)",
    )
    parser.add_argument(
        "--ship-to",
        type=Path,
        default=SHIPPED_MODELS_DIR / GENERAL_MODEL_NAME,
        help="where the compact model is written; 'none' skips shipping (default: the package's models folder)",
    )
    parser.add_argument(
        "--max-chunk-tokens",
        type=positive_int,
        default=None,
        help="tokens embedded per chunk (default: the start model's, 64 for the base; another limit gives the "
        "model indexes of its own)",
    )
    parser.add_argument(
        "--max-state-tokens",
        type=positive_int,
        default=None,
        help="tokens read of each state piece: the question and each chunk found (default: the start model's; "
        "HotpotQA paragraphs average 125)",
    )
    parser.add_argument(
        "--hotpotqa-held-out",
        type=positive_int,
        default=HOTPOTQA_VALIDATION,
        help="last HotpotQA train-split questions held out of training for the periodic evaluation "
        "(default: %(default)s; a work dir keeps the data it was made with)",
    )
    parser.add_argument("--warm-start-steps", type=int, default=700, help="warm-start optimiser steps (default: 700)")
    parser.add_argument("--warm-start-lr", type=float, default=3e-5, help="its peak learning rate (default: 3e-5)")
    parser.add_argument(
        "--hard-distractor-steps",
        type=int,
        default=0,
        help="steps of a second warm start, with hard-distractor BabiLong documents; 0 skips it (default: 0)",
    )
    parser.add_argument("--hard-distractor-lr", type=float, default=3e-5, help="its peak learning rate (default: 3e-5)")
    parser.add_argument(
        "--distillation-weight",
        type=non_negative_float,
        default=0.0,
        metavar="BETA",
        help="the warm starts also match the softmax of the model they start from on the ordered documents "
        "(BabiLong, NIAH), with weight BETA (docs/method.md, M4'), to keep its ranking there; 0: off (default: 0)",
    )
    parser.add_argument("--rl-steps", type=int, default=0, help="soft-Q steps after the warm start; 0 skips them")
    parser.add_argument("--rl-lr", type=float, default=1e-5, help="soft-Q peak learning rate (default: 1e-5)")
    parser.add_argument("--batch-size", type=int, default=8, help="episodes per optimiser step (default: 8)")
    parser.add_argument("--episode-steps", type=int, default=4, help="T of a warm-start episode (default: 4)")
    parser.add_argument(
        "--replay",
        type=replay_spec,
        action="append",
        default=[],
        metavar="TASK:LENGTH=N",
        help="add or change a BabiLong replay of the mixture, e.g. qa3:4k=300 (repeatable; N = 0 drops one; the "
        "data seed draws the same questions at every length; "
        "default: " + ", ".join(f"{t}:{length}={n}" for (t, length), n in BABILONG_REPLAY.items()) + ")",
    )
    parser.add_argument(
        "--interpolate-with",
        default=None,
        metavar="MODEL",
        help="ship the weights MODEL + W x (trained - MODEL) instead of the trained ones (weight interpolation, "
        "WiSE-FT; W is --interpolation-weight): MODEL is a saved qrag model with the start's action transformer, "
        "e.g. the start or another run of this recipe (default: ship the trained weights)",
    )
    parser.add_argument(
        "--interpolation-weight",
        type=unit_fraction,
        default=0.5,
        metavar="W",
        help="the trained model's share in --interpolate-with, between 0 and 1 (default: %(default)s)",
    )
    add_evaluation_arguments(parser, eval_steps=2, eval_every=100)
    parser.add_argument("--resume", action="store_true", help="continue the interrupted stages in WORK_DIR")
    add_machine_note_flag(parser, "free text recorded in the card's hardware line")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace, argv: Sequence[str]) -> None:
    torch.set_num_threads(args.threads)
    data_dir = args.work_dir / "data"
    eval_files = build_data(data_dir, args.hotpotqa_held_out, args.hard_distractor_steps > 0, replay_counts(args))[1]
    stages = recipe_stages(args)
    start = args.start_model
    for stage in stages:
        start = str(run_stage(args, stage, start, eval_files))
    if str(args.ship_to).lower() != "none":
        ship(Path(start), stages, args, argv)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    return run_tool(build_parser(), lambda args: run(args, argv), argv)


if __name__ == "__main__":
    sys.exit(main())
