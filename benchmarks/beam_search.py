"""Beam search against greedy on training questions: how the beam's lines should be ranked.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/beam_search.py
    ... --widths 2 4 8 --babilong-32k 40          # more widths, more samples
    python benchmarks/beam_search.py --render-only

Beam search (docs/method.md §5) keeps the B best lines of picks. They are ranked by their estimated return
(``beam_score="return"``, the default) or by their summed Q (``beam_score="sum"``, the ranking of the
paper's "Plan Q-RAG"). This runs greedy search, then beam search at every width of ``--widths`` with each
ranking, through the one evaluation loop (:mod:`qrag_core.evaluation`) on the same training-split questions:

- BabiLong QA1–QA5 *train* questions at 4k tokens and QA2 / QA3 (two and three facts, the tasks where a line
  can go wrong early) at 32k, with data seed 8 (the lexical-weight fit's samples; the test cells use seed 0);
- the last 60 HotpotQA train-split questions, which the general recipe (recipes/train_general_model.py) holds
  out of training. The HotpotQA train split is the 100 official train questions plus official dev questions
  disjoint from the 297-question test subset.

T is the harness's: 4 for BabiLong, 2 for HotpotQA. The default ranking was chosen on these questions; no
test question is read. Results go to ``benchmarks/results/beam_search.json`` (one entry per model) and
``benchmarks/results/beam_search.md``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch
from harness import (
    RESULTS_DIR,
    ResultsStore,
    add_model_flag,
    add_render_only_flag,
    lazy_haystack,
    markdown_table,
    provenance,
)
from lexical_weight import TRAIN_SEED

from qrag_core.atomic import write_file
from qrag_core.baselines import QRAGSearch
from qrag_core.cli import (
    add_machine_note_flag,
    add_threads_flag,
    add_verbose_flag,
    non_negative_int,
    positive_int,
    run_tool,
)
from qrag_core.data.babilong import BABILONG_TASKS, iter_babilong, parse_length
from qrag_core.data.examples import Example
from qrag_core.data.hotpotqa import train_and_held_out
from qrag_core.embedding_cache import shared_cache
from qrag_core.evaluation import evaluate
from qrag_core.model import QRAG
from qrag_core.model_names import DEFAULT_MODEL_NAME
from qrag_core.search_options import BEAM_SCORES, SearchOptions

logger = logging.getLogger("beam_search")

RESULTS = RESULTS_DIR / "beam_search.json"
MARKDOWN = RESULTS_DIR / "beam_search.md"
STORE = ResultsStore(RESULTS, lambda: {"models": {}})
LONG_TASKS = ("qa2", "qa3")
"""The BabiLong tasks also measured at 32k tokens."""


def training_sets(babilong_4k: int, babilong_32k: int) -> dict[str, list[Example]]:
    """The training-split question sets, by name (``babilong_*``: samples per task; 0 leaves that set out)."""
    haystack = lazy_haystack()
    sets: dict[str, list[Example]] = {}
    for length, tasks, n in (("4k", BABILONG_TASKS, babilong_4k), ("32k", LONG_TASKS, babilong_32k)):
        for task in tasks if n else ():
            sets[f"babilong-train {task} {length}"] = list(
                iter_babilong(task, "train", length, n, TRAIN_SEED, haystack())
            )
    sets["hotpotqa-train-heldout"] = train_and_held_out()[1]
    return sets


def method_names(widths: list[int]) -> list[tuple[str, SearchOptions]]:
    """Greedy, then every width with every ranking: (name, options)."""
    methods = [("greedy", SearchOptions(beam=1))]
    return methods + [
        (f"B={width} {score}", SearchOptions(beam=width, beam_score=score)) for width in widths for score in BEAM_SCORES
    ]


def method_order(name: str) -> tuple[int, int]:
    """Greedy first, then by width, each width's rankings in :data:`BEAM_SCORES` order (the JSON sorts keys)."""
    if name == "greedy":
        return (1, 0)
    width, score = name.removeprefix("B=").split()
    return (int(width), BEAM_SCORES.index(score))


def set_order(name: str) -> tuple[int, int, str]:
    """BabiLong sets by length, then task; HotpotQA last."""
    if not name.startswith("babilong"):
        return (1, 0, name)
    _, task, length = name.split()
    return (0, parse_length(length), task)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model = QRAG.from_pretrained(args.model).eval()
    cache = shared_cache()
    sets = training_sets(args.babilong_4k, args.babilong_32k)
    entry: dict[str, Any] = {"sets": {name: len(examples) for name, examples in sets.items()}, "scores": {}}
    for name, examples in sets.items():
        for method, options in method_names(args.widths):
            scores = evaluate(QRAGSearch(model, cache, options, name=method), examples)
            entry["scores"].setdefault(name, {})[method] = {
                key: scores[key] for key in ("fact_em", "fact_recall", "seconds")
            }
            logger.info("%s, %s: fact EM %.3f", name, method, scores["fact_em"])
        entry.update(seconds=time.perf_counter() - start, **provenance(args.machine_note))
        with STORE.updating() as results:  # after every set: an interrupted run keeps what it measured
            results["models"][args.model] = entry
            write_markdown(results, MARKDOWN)


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    out = [
        "# Beam search against greedy: ranking lines by estimated return or by summed Q",
        "",
        "Generated by `benchmarks/beam_search.py` from `benchmarks/results/beam_search.json`. Fact EM (recall in",
        "brackets) of greedy search and of beam search of width B, its lines ranked by their estimated return",
        "(`return`, the default: Q of the first pick, then each later pick's Q minus γ times the best Q of the state",
        "it was picked in) or by summed Q (`sum`, the paper's Plan Q-RAG), on the same training-split questions:",
        "BabiLong train questions (data seed 8; T = 4) and the 60 HotpotQA train-split questions the general",
        "recipe holds out (T = 2; that split is the 100 official train questions plus official dev questions",
        "disjoint from the 297-question test subset). No test question was read.",
    ]
    for model, entry in sorted(results["models"].items(), key=lambda item: item[0] != DEFAULT_MODEL_NAME):
        methods = sorted({m for by_method in entry["scores"].values() for m in by_method}, key=method_order)
        rows = []
        for name, by_method in sorted(entry["scores"].items(), key=lambda item: set_order(item[0])):
            best = max(s["fact_em"] for s in by_method.values())
            cells = []
            for method in methods:
                s = by_method.get(method)
                if s is None:
                    cells.append("—")
                    continue
                value = f"{s['fact_em']:.3f} ({s['fact_recall']:.3f})"
                cells.append(f"**{value}**" if s["fact_em"] == best else value)
            rows.append([f"{name} ({entry['sets'][name]})", *cells])
        out += ["", f"## {model}", "", *markdown_table(["questions (n)", *methods], rows)]
        out += [
            "",
            f"- {entry['seconds']:.0f} s in all; {entry['machine']}; commit {entry['commit']}; `{entry['command']}`",
        ]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, "\n".join(out) + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    add_model_flag(parser)
    parser.add_argument(
        "--widths", nargs="+", type=positive_int, default=[2, 4], help="beam widths B measured (default: 2 4)"
    )
    parser.add_argument(
        "--babilong-4k",
        type=non_negative_int,
        default=10,
        help="BabiLong train questions per task at 4k tokens, QA1-QA5 (0: none; default: %(default)s)",
    )
    parser.add_argument(
        "--babilong-32k",
        type=non_negative_int,
        default=40,
        help="BabiLong train questions per task at 32k tokens, QA2 and QA3 (0: none; default: %(default)s)",
    )
    add_threads_flag(parser)
    add_machine_note_flag(parser)
    add_render_only_flag(parser)
    add_verbose_flag(parser)
    return parser


def run_or_render(args: argparse.Namespace) -> None:
    if args.render_only:
        write_markdown(STORE.load())
    else:
        run(args)


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run_or_render, argv)


if __name__ == "__main__":
    sys.exit(main())
