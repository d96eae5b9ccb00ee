"""Compare candidate models on training-split data only, to choose one before any test set is read.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=2 python benchmarks/training_split_check.py \\
        --model shipped=qrag-minilm --model v3=runs/v3/qrag-minilm-v3
    ... --interpolated v4=runs/a/model,runs/v3/model,0.7      # START + 0.7 x (TUNED - START), never saved
    ... --qa3-1k-untrained runs/v3/data/train.jsonl           # + QA3 train questions at 1k no listed file holds
    ... --render-only                                         # rewrite the markdown from the JSON

BabiLong QA3 is the task the general recipe (recipes/train_general_model.py) loses first, and HotpotQA the one
it is trained for, so the check measures fact EM (greedy search) on:

- **QA3 train questions** at 4k (100) and 32k (30) tokens, data seed :data:`DATA_SEED` (no recipe trains with
  it), T = 4, the model's own search settings;
- optionally (``--qa3-1k-untrained FILE...``) **every QA3 train question at 1k tokens whose question none of the
  given training files holds** (same seed): a larger set of questions the models never saw;
- the **held-out HotpotQA train questions** (the last 60 of the train split, which the general recipe holds
  out of training; :func:`qrag_core.data.hotpotqa.train_and_held_out`), T = 2, by pure Q and at each hybrid
  weight of ``--passage-weights``.

Every model sees the same samples, through the shared embedding cache. Results go to
``benchmarks/results/training_split_check.json`` (one entry per model name, replaced when measured again) and
``benchmarks/results/training_split_check.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from harness import RESULTS_DIR, ResultsStore, add_render_only_flag, lazy_haystack, markdown_table, provenance

from qrag_core.atomic import write_file
from qrag_core.baselines import QRAGSearch
from qrag_core.cli import add_machine_note_flag, add_threads_flag, add_verbose_flag, run_tool, unit_fraction
from qrag_core.data.babilong import iter_babilong
from qrag_core.data.examples import Example, read_jsonl
from qrag_core.data.hotpotqa import train_and_held_out
from qrag_core.embedding_cache import shared_cache
from qrag_core.errors import InvalidInputError
from qrag_core.evaluation import evaluate
from qrag_core.model import QRAG
from qrag_core.search_options import SearchOptions
from qrag_core.training.interpolation import interpolate_weights

logger = logging.getLogger("training_split_check")

RESULTS = RESULTS_DIR / "training_split_check.json"
MARKDOWN = RESULTS_DIR / "training_split_check.md"
DATA_SEED = 12
"""Data seed of the QA3 check questions (the recipes' replay and evaluation samples use other seeds)."""
QA3_SAMPLES = {"4k": 100, "32k": 30}
"""QA3 train questions per length."""
QA3_STEPS, HOTPOTQA_STEPS = 4, 2
"""T of the QA3 and HotpotQA searches."""


# ============================================================================================ the sets
def question_key(example_id: str) -> str:
    """The bAbI question an example id names: BabiLong ids end in the question's index at every length."""
    return example_id.rsplit("-", 1)[-1]


def trained_questions(files: Sequence[Path]) -> set[str]:
    """The QA3 questions held by training files (JSONL of examples)."""
    return {question_key(e.id) for path in files for e in read_jsonl(path) if e.id.startswith("babilong-qa3-")}


def check_sets(untrained_from: Sequence[Path] | None) -> dict[str, list[Example]]:
    """The QA3 sets by name (``qa3_4k``, ``qa3_32k``, ``qa3_1k_untrained``) and ``hotpotqa_held_out``."""
    haystack = lazy_haystack()
    sets = {
        f"qa3_{length}": list(iter_babilong("qa3", "train", length, n, DATA_SEED, haystack()))
        for length, n in QA3_SAMPLES.items()
    }
    if untrained_from:
        trained = trained_questions(untrained_from)
        every = iter_babilong("qa3", "train", "1k", None, DATA_SEED, haystack())
        sets["qa3_1k_untrained"] = [e for e in every if question_key(e.id) not in trained]
        if not sets["qa3_1k_untrained"]:
            raise InvalidInputError(f"the training files {[str(p) for p in untrained_from]} hold every QA3 question")
    sets["hotpotqa_held_out"] = train_and_held_out()[1]
    return sets


# ============================================================================================ the models
Interpolation = tuple[str, str, float]
"""START, TUNED and W of START + W x (TUNED - START)."""


def model_spec(text: str) -> tuple[str, str]:
    """argparse ``type`` of ``--model``: NAME=MODEL (a model name or directory) as (NAME, MODEL)."""
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"must be NAME=MODEL, got {text!r}")
    return name, path


def interpolated_spec(text: str) -> tuple[str, Interpolation]:
    """argparse ``type`` of ``--interpolated``: NAME=START,TUNED,W as (NAME, (START, TUNED, W))."""
    name, path = model_spec(text)
    parts = path.split(",")
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f"must be NAME=START,TUNED,W, got {text!r}")
    return name, (parts[0], parts[1], unit_fraction(parts[2]))


def load_model(spec: str | Interpolation) -> QRAG:
    """A model by name or directory, or START + W x (TUNED - START) for an :data:`Interpolation`."""
    if isinstance(spec, str):
        return QRAG.from_pretrained(spec)
    start, tuned, weight = spec
    return interpolate_weights(QRAG.from_pretrained(start), QRAG.from_pretrained(tuned), weight)


# ============================================================================================ measuring
def measure(model: QRAG, sets: dict[str, list[Example]], passage_weights: Sequence[float]) -> dict[str, Any]:
    """Fact EM of ``model`` on every set: ``{set: {"fact_em", "n"}}``, the HotpotQA set per hybrid weight."""
    cache, row = shared_cache(), {}
    try:
        for name, examples in sets.items():
            if name == "hotpotqa_held_out":
                steps = HOTPOTQA_STEPS
                runs = {f"{name}_w{w:g}": SearchOptions(passage_lexical_weight=w) for w in [0.0, *passage_weights]}
            else:
                steps, runs = QA3_STEPS, {name: SearchOptions()}
            for key, options in runs.items():
                scores = evaluate(QRAGSearch(model, cache, options), examples, steps)
                row[key] = {"fact_em": round(scores["fact_em"], 4), "n": scores["n"]}
                logger.info("%s: fact EM %.3f (n = %d, %.0f s)", key, scores["fact_em"], scores["n"], scores["seconds"])
    finally:
        cache.close()
    return row


def run(args: argparse.Namespace) -> None:
    candidates: list[tuple[str, str | Interpolation]] = [*args.model, *args.interpolated]
    names = [name for name, _ in candidates]
    if len(set(names)) != len(names):
        raise InvalidInputError(f"every model needs its own name, got {names}")
    sets = check_sets(args.qa3_1k_untrained)
    store = ResultsStore(RESULTS, lambda: {"models": {}})
    for name, spec in candidates:
        described = spec if isinstance(spec, str) else "{},{},{:g}".format(*spec)
        logger.info("model %s: %s", name, described)
        entry = {"model": described, "interpolated": not isinstance(spec, str)}
        entry |= measure(load_model(spec), sets, args.passage_weights)
        entry["provenance"] = provenance(args.machine_note)
        if args.qa3_1k_untrained:
            entry["untrained_excludes"] = [str(p) for p in args.qa3_1k_untrained]
        with store.updating() as results:
            results["models"][name] = entry
    write_markdown(store.load())


# ============================================================================================ the report
def write_markdown(results: dict[str, Any], path: Path | None = None) -> None:
    """The table of every model measured (one row each), the sets as columns, into ``path`` (None: MARKDOWN)."""
    models = results["models"]
    qa3_order = [f"qa3_{length}" for length in QA3_SAMPLES] + ["qa3_1k_untrained"]
    columns = sorted(
        {k for entry in models.values() for k, v in entry.items() if isinstance(v, dict) and "n" in v},
        key=lambda k: (qa3_order.index(k), "") if k in qa3_order else (len(qa3_order), k),
    )
    runs = sorted({(m["provenance"]["command"], m["provenance"]["machine"]) for m in models.values()})
    run_of = {
        name: 1 + runs.index((m["provenance"]["command"], m["provenance"]["machine"])) for name, m in models.items()
    }
    header = ["model", *(f"{c} (n = {next(m[c]['n'] for m in models.values() if c in m)})" for c in columns), "run"]
    rows = [
        [name, *(f"{m[c]['fact_em']:.3f}" if c in m else "–" for c in columns), str(run_of[name])]
        for name, m in models.items()
    ]
    lines = [
        "# Training-split check of candidate models",
        "",
        "Fact EM by greedy search on training-split data only (no test question): BabiLong QA3 train questions "
        f"(data seed {DATA_SEED}, T = {QA3_STEPS}; `qa3_1k_untrained`: every QA3 train question at 1k that the "
        "listed training files do not hold) and the 60 HotpotQA train-split questions the general recipe holds out "
        f"(T = {HOTPOTQA_STEPS}; `_wW`: hybrid weight W in passage collections, `_w0` pure Q). HotpotQA training "
        "in these runs used the 100 official train questions plus 807 official dev questions disjoint from the "
        "297-question test subset. Written by `benchmarks/training_split_check.py`.",
        "",
        *markdown_table(header, rows),
        "",
        "Runs (the `run` column):",
        "",
        *(f"{i}. `{command}` on {machine}" for i, (command, machine) in enumerate(runs, 1)),
        "",
    ]
    write_file(path or MARKDOWN, "\n".join(lines))


# ============================================================================================ the CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model",
        type=model_spec,
        action="append",
        default=[],
        metavar="NAME=MODEL",
        help="a model to check (name or directory), under NAME in the results (repeatable)",
    )
    parser.add_argument(
        "--interpolated",
        type=interpolated_spec,
        action="append",
        default=[],
        metavar="NAME=START,TUNED,W",
        help="check START + W x (TUNED - START) (weight interpolation, with TUNED's settings; repeatable)",
    )
    parser.add_argument(
        "--passage-weights",
        type=float,
        nargs="*",
        default=[0.3],
        metavar="W",
        help="hybrid weights of the HotpotQA runs besides pure Q (default: 0.3)",
    )
    parser.add_argument(
        "--qa3-1k-untrained",
        type=Path,
        nargs="+",
        default=None,
        metavar="FILE",
        help="also check every QA3 train question at 1k that none of these training files (JSONL) holds",
    )
    add_threads_flag(parser, default=2)
    add_machine_note_flag(parser, "free text recorded with the machine")
    add_render_only_flag(parser)
    add_verbose_flag(parser)
    return parser


def run_or_render(args: argparse.Namespace) -> None:
    if args.render_only:
        write_markdown(ResultsStore(RESULTS, lambda: {"models": {}}).load())
        return
    if not args.model and not args.interpolated:
        raise InvalidInputError("name at least one --model or --interpolated")
    torch.set_num_threads(args.threads)
    run(args)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run_or_render, argv)


if __name__ == "__main__":
    sys.exit(main())
