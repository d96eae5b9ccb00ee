"""Fit the weights of the hybrid search score Q + w·f + w_id·g on training data, then compare on the test sets.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/lexical_weight.py                 # the default model
    ... --model PATH --weights 0 0.1 0.3 --test-cells hotpotqa:100 babilong:4k:5           # a new model, quicker
    ... --model PATH --write-to PATH                  # also save the chosen weights into that model
    ... --write-to PATH --keep-lexical-weights        # save only the identifier weight
    ... --render-only                                 # rewrite the markdown from the JSON

The hybrid score (docs/method.md §5) adds w times a chunk's BM25 score against the state text (question +
chunks selected so far), scaled to [0, 1] per step, to Q. **Fitting** runs greedy search at every weight of
the grid on training-split questions only: the last 60 HotpotQA train questions (those the general recipe,
recipes/train_general_model.py, holds out of training), BabiLong QA1–QA5 train questions (data seed 8, the
recipe's evaluation samples) and RULER NIAH samples of the eight variants (data seed 8; the test samples use
seed 0), each at every length of ``--train-lengths`` (4k and 128k: at 4k the shipped models already find
every ordered-document answer by pure Q, so only the long documents tell the weights apart). One w is chosen
for each kind of document: for passage collections (HotpotQA) and for ordered documents (BabiLong, NIAH), the
w with the highest mean fact EM over that kind's sets (ties: the smaller w). The **identifier weight** (the
same feature over the state's words holding a digit, in ordered documents) is then fitted the same way on the
ordered documents' sets, at the model's own lexical weights. ``--write-to`` saves the three as a model's
``lexical_weight``, ``passage_lexical_weight`` and ``identifier_weight`` (``--keep-lexical-weights``: the
identifier weight only). **Comparing** then runs, on the same samples of each test cell (harness cells, seed
0), pure Q, the hybrid at the chosen weights, the model's own lexical weights plus the chosen identifier weight
(each at the best positive weight of its grid where 0 was chosen, to show what it would do), BM25 and dense
retrieval (:mod:`qrag_core.baselines`), through the one evaluation loop (:mod:`qrag_core.evaluation`) and the
shared embedding cache. The test sets never influence a weight.

Results go to ``benchmarks/results/lexical_weight.json`` (one entry per model) and
``benchmarks/results/lexical_weight.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from harness import (
    RESULTS_DIR,
    SUITES,
    Cell,
    ResultsStore,
    add_model_flag,
    add_render_only_flag,
    cell_argument,
    lazy_haystack,
    length_order,
    markdown_table,
    parse_cell,
    provenance,
)

from qrag_core.atomic import write_file
from qrag_core.baselines import BM25TopK, DenseTopK, QRAGSearch
from qrag_core.cli import (
    add_machine_note_flag,
    add_threads_flag,
    add_verbose_flag,
    finite_float,
    non_negative_int,
    run_tool,
)
from qrag_core.data.babilong import BABILONG_TASKS, STANDARD_LENGTHS, iter_babilong
from qrag_core.data.examples import Example
from qrag_core.data.hotpotqa import HELD_OUT, train_and_held_out
from qrag_core.data.ruler import NIAH_TASKS, iter_niah
from qrag_core.embedding_cache import EmbeddingCache, shared_cache
from qrag_core.errors import InvalidInputError
from qrag_core.evaluation import RetrievalMethod, evaluate
from qrag_core.model import QRAG
from qrag_core.model_files import CONFIG_FILE, is_model_dir
from qrag_core.search_options import SearchOptions

logger = logging.getLogger("lexical_weight")

RESULTS = RESULTS_DIR / "lexical_weight.json"
MARKDOWN = RESULTS_DIR / "lexical_weight.md"
STORE = ResultsStore(RESULTS, lambda: {"models": {}})
WEIGHTS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
"""The default grid of w and of the identifier weight."""
TRAIN_SEED = 8
"""Data seed of the BabiLong and NIAH training samples (the test cells use seed 0)."""
TRAIN_LENGTHS = ("4k", "128k")
"""The default document lengths of the BabiLong and NIAH training sets."""
TEST_CELLS = ("hotpotqa", "musique", "babilong:4k:5", "niah:4k:3")
"""The default test cells (harness notation)."""
METHODS = ("qrag", "qrag-hybrid", "qrag-identifier", "bm25", "dense")


def training_sets(
    hotpotqa: int, babilong: int, niah: int, lengths: Sequence[str] = TRAIN_LENGTHS
) -> dict[str, list[Example]]:
    """The training-split question sets w is fitted on (sizes per set, per task, per variant, BabiLong and NIAH
    at each of ``lengths``; a size of 0 leaves that set out)."""
    haystack = lazy_haystack()
    sets: dict[str, list[Example]] = {}
    if hotpotqa:
        sets["hotpotqa-train-heldout"] = train_and_held_out(hotpotqa)[1]
    for length in lengths:
        if babilong:
            sets[f"babilong-train/{length}"] = [
                e
                for task in BABILONG_TASKS
                for e in iter_babilong(task, "train", length, babilong, TRAIN_SEED, haystack())
            ]
        if niah:
            sets[f"niah-train/{length}"] = [
                e for task in NIAH_TASKS for e in iter_niah(task, length, niah, TRAIN_SEED, haystack())
            ]
    return sets


KINDS = ("passages", "documents")
"""The kinds of document with a weight of their own: passage collections and ordered documents."""


def set_kind(examples: list[Example]) -> str:
    """Which weight a training set fits: ``passages`` (a collection, positions off) or ``documents``."""
    return KINDS[bool(examples[0].ordered)]


def hybrid(
    model: QRAG,
    cache: EmbeddingCache,
    weight: float | None,
    passage_weight: float | None = None,
    name: str = "qrag-hybrid",
    identifier_weight: float = 0.0,
) -> QRAGSearch:
    """Greedy search with the hybrid score at ``weight`` (0: pure Q; None: the model's own lexical weights),
    ``passage_weight`` in passage collections (None: ``weight``) and ``identifier_weight``."""
    options = SearchOptions(
        beam=1, lexical_weight=weight, passage_lexical_weight=passage_weight, identifier_weight=identifier_weight
    )
    return QRAGSearch(model, cache, options, name=name)


def grid_point(method: QRAGSearch, weight: float, sets: dict[str, list[Example]]) -> dict[str, Any]:
    """Fact EM of ``method`` (searching at ``weight``) on every training set, their mean and the seconds."""
    scores = {name: evaluate(method, examples) for name, examples in sets.items()}
    point = {
        "weight": weight,
        "fact_em": {name: s["fact_em"] for name, s in scores.items()},
        "mean_fact_em": sum(s["fact_em"] for s in scores.values()) / len(scores),
        "seconds": sum(s["seconds"] for s in scores.values()),
    }
    logger.info("%s at %g: mean training fact EM %.4f", method.name, weight, point["mean_fact_em"])
    return point


def best_weight(grid: dict[str, dict[str, Any]], names: Sequence[str]) -> tuple[float, float]:
    """(chosen, compared) weight of a grid: the best mean fact EM over the sets ``names`` (ties: the smaller
    weight), and the best positive weight when 0 is chosen (the weight the test table shows)."""

    def score(g: dict[str, Any]) -> tuple[float, float]:
        return sum(g["fact_em"][name] for name in names) / len(names), -g["weight"]

    best = max(grid.values(), key=score)
    positive = [g for g in grid.values() if g["weight"] > 0]
    compared = best["weight"] if best["weight"] > 0 or not positive else max(positive, key=score)["weight"]
    return best["weight"], compared


def fit(model: QRAG, cache: EmbeddingCache, sets: dict[str, list[Example]], weights: list[float]) -> dict[str, Any]:
    """Fact EM of every weight on every training set, and the weight chosen for each kind of document."""
    grid = {str(weight): grid_point(hybrid(model, cache, weight), weight, sets) for weight in weights}
    kinds = {name: set_kind(examples) for name, examples in sets.items()}
    chosen, compared = {}, {}
    for kind in sorted(set(kinds.values())):
        chosen[kind], compared[kind] = best_weight(grid, [name for name, k in kinds.items() if k == kind])
    return {
        "sets": {name: len(examples) for name, examples in sets.items()},
        "kinds": kinds,
        "grid": grid,
        "chosen": chosen,
        "compared": compared,
    }


def fit_identifier(
    model: QRAG, cache: EmbeddingCache, sets: dict[str, list[Example]], weights: list[float]
) -> dict[str, Any]:
    """Fact EM of every identifier weight on the training sets of ordered documents (the term's only kind),
    searching at the model's own lexical weights, and the identifier weight chosen."""
    sets = {name: examples for name, examples in sets.items() if set_kind(examples) == "documents"}
    grid = {
        str(weight): grid_point(
            hybrid(model, cache, None, name="qrag-identifier", identifier_weight=weight), weight, sets
        )
        for weight in (weights if sets else [])  # no ordered documents to fit on: the term stays off
    }
    chosen, compared = best_weight(grid, list(sets)) if grid else (0.0, 0.0)
    return {
        "lexical_weights": {"documents": model.config.lexical_weight, "passages": model.config.passage_lexical_weight},
        "grid": grid,
        "chosen": chosen,
        "compared": compared,
    }


def kind_weights(weights: dict[str, float]) -> tuple[float, float | None]:
    """(lexical_weight, passage_lexical_weight) of weights chosen by kind (a kind not fitted: 0 / the other's)."""
    return weights.get("documents", 0.0), weights.get("passages")


def compare(
    model: QRAG, cache: EmbeddingCache, cells: list[Cell], weights: dict[str, float], identifier_weight: float
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every method of :data:`METHODS` on the same samples of each test cell: (cell, scores by method), a cell
    at a time."""
    base = QRAG.from_base(model.config.base_model).eval()
    methods: dict[str, RetrievalMethod] = {
        "qrag": hybrid(model, cache, 0.0, name="qrag"),
        "qrag-hybrid": hybrid(model, cache, *kind_weights(weights)),
        "qrag-identifier": hybrid(model, cache, None, name="qrag-identifier", identifier_weight=identifier_weight),
        "bm25": BM25TopK(),
        "dense": DenseTopK(base, cache),
    }
    haystack = lazy_haystack()
    for cell in cells:
        examples = cell.examples(haystack)
        scores = {name: evaluate(method, examples) for name, method in methods.items()}
        logger.info("%s: %s", cell.spec, ", ".join(f"{name} {s['fact_em']:.3f}" for name, s in scores.items()))
        yield cell.spec, scores


def write_weight(directory: Path, weights: dict[str, float] | None, identifier_weight: float | None = None) -> None:
    """Save the weights chosen by kind as the lexical_weight / passage_lexical_weight (None: keep the model's)
    and ``identifier_weight`` (None: keep) of the qrag model in ``directory`` through the library's atomic save:
    weights, training record and storage format (full or fp16 delta) as they were; the model card is
    regenerated."""
    if not is_model_dir(directory):
        raise InvalidInputError(f"--write-to {directory}: not a saved qrag model (no qrag {CONFIG_FILE})")
    meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))["qrag"]
    model = QRAG.from_pretrained(str(directory))
    if weights is not None:
        model.config.lexical_weight, model.config.passage_lexical_weight = kind_weights(weights)
    if identifier_weight is not None:
        model.config.identifier_weight = identifier_weight
    model.save_pretrained(directory, compact=meta.get("state_encoder", {}).get("format") == "fp16-delta")
    logger.info("wrote lexical weights %s, identifier weight %s into %s", weights, identifier_weight, directory)


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    if args.write_to is not None and not is_model_dir(args.write_to):
        raise InvalidInputError(f"--write-to {args.write_to}: not a saved qrag model (no qrag {CONFIG_FILE})")
    start = time.perf_counter()
    model = QRAG.from_pretrained(args.model).eval()
    cache = shared_cache()
    sets = training_sets(args.hotpotqa_train, args.babilong_train, args.niah_train, args.train_lengths)
    if not sets:
        raise InvalidInputError("no training set to fit on: give a positive size to at least one of them")
    fitted = fit(model, cache, sets, sorted(set(args.weights)))
    identifier = fit_identifier(model, cache, sets, sorted(set(args.identifier_weights)))
    entry: dict[str, Any] = {**fitted, "identifier": identifier, "test": {}}

    def save() -> None:  # after the fit and after every test cell: an interrupted run keeps what it measured
        entry.update(seconds=time.perf_counter() - start, **provenance(args.machine_note))
        with STORE.updating() as results:
            results["models"][args.model] = entry
            write_markdown(results)

    save()
    for cell, scores in compare(model, cache, args.test_cells, fitted["compared"], identifier["compared"]):
        entry["test"][cell] = scores
        save()
    print(f"chosen for {args.model}: lexical weights {fitted['chosen']}, identifier weight {identifier['chosen']}")
    if args.write_to is not None:
        write_weight(args.write_to, None if args.keep_lexical_weights else fitted["chosen"], identifier["chosen"])


def write_markdown(results: dict[str, Any], path: Path = MARKDOWN) -> None:
    out = [
        "# Hybrid lexical + Q score",
        "",
        "Generated by `benchmarks/lexical_weight.py` from `benchmarks/results/lexical_weight.json`. Greedy search",
        "ranks by Q + w·f, f the BM25 score of a chunk against the state text scaled to [0, 1] per step",
        "(docs/method.md §5). w is fitted on training-split questions only, one for passage collections and one",
        "for ordered documents (mean fact EM over that kind's sets); then the identifier weight (the same feature",
        "over the state's words holding a digit, in ordered documents), on their sets, at the model's own lexical",
        "weights. The test table runs pure Q (w = 0), the hybrid, the model's lexical weights plus the identifier",
        "term (`qrag-identifier`), BM25 and dense retrieval on the same samples. Fact EM; the tasks whose fact EM",
        "differs from pure Q are listed. The first method of a cell also encodes the chunks not yet in the shared",
        "embedding cache, which its seconds include.",
    ]
    for model, entry in results["models"].items():
        names = list(entry["sets"])
        out += ["", f"## {model}", "", "Fitting (training splits; questions: "]
        out[-1] += ", ".join(f"{name} {n}" for name, n in entry["sets"].items()) + "):"
        out += [""]
        chosen = entry["chosen"]
        rows = [
            [
                f"{g['weight']:g}" + "".join(f" (chosen: {kind})" for kind in KINDS if chosen.get(kind) == g["weight"]),
                *(f"{g['fact_em'][name]:.3f}" for name in names),
                f"**{g['mean_fact_em']:.4f}**",
                f"{g['seconds']:.0f}",
            ]
            for g in sorted(entry["grid"].values(), key=lambda g: g["weight"])
        ]
        out += markdown_table(["w", *names, "mean", "seconds"], rows)
        if "identifier" in entry:
            out += _identifier_fit(entry["identifier"])
        compared = entry["compared"]
        shown = ", ".join(
            f"{kind} w = {compared[kind]:g}" + ("" if compared[kind] == chosen[kind] else " (0 chosen: best positive)")
            for kind in KINDS
            if kind in compared
        )
        if "identifier" in entry:
            shown += f"; identifier weight {entry['identifier']['compared']:g}"
        out += ["", f"Test sets, hybrid at {shown}:", ""]
        rows = []
        for cell, methods in sorted(entry["test"].items(), key=lambda item: _cell_order(item[0])):
            first = next(iter(methods.values()))
            rows.append(
                [
                    cell,
                    str(first["n"]),
                    *(f"{methods[m]['fact_em']:.3f}" if m in methods else "—" for m in METHODS),
                    _changed_tasks(methods["qrag"], methods["qrag-hybrid"]),
                    _changed_tasks(methods["qrag"], methods.get("qrag-identifier")),
                    " / ".join(f"{methods[m]['seconds']:.0f}" for m in METHODS if m in methods),
                ]
            )
        header = ["cell", "n", *METHODS, "tasks that differ: hybrid", "identifier", "seconds (same order)"]
        out += markdown_table(header, rows)
        out += [
            "",
            f"- {entry['seconds']:.0f} s in all; {entry['machine']}; commit {entry['commit']}; `{entry['command']}`",
        ]
    write_file(path, "\n".join(out) + "\n")


def _identifier_fit(fitted: dict[str, Any]) -> list[str]:
    """The identifier weight's fitting table (training sets of ordered documents, at the model's own lexical
    weights)."""
    if not fitted["grid"]:
        return ["", "Identifier weight: not fitted (no training set of ordered documents)."]
    weights = fitted["lexical_weights"]
    names = list(next(iter(fitted["grid"].values()))["fact_em"])
    out = [
        "",
        f"Identifier weight, at the model's lexical weights (documents {weights['documents']:g}, passages "
        f"{weights['passages'] if weights['passages'] is not None else weights['documents']:g}):",
        "",
    ]
    rows = [
        [
            f"{g['weight']:g}" + (" (chosen)" if g["weight"] == fitted["chosen"] else ""),
            *(f"{g['fact_em'][name]:.3f}" for name in names),
            f"**{g['mean_fact_em']:.4f}**",
            f"{g['seconds']:.0f}",
        ]
        for g in sorted(fitted["grid"].values(), key=lambda g: g["weight"])
    ]
    return out + markdown_table(["identifier weight", *names, "mean", "seconds"], rows)


def _cell_order(spec: str) -> tuple[int, int]:
    """Sort key of a test cell: the harness's suite order, then length."""
    cell = parse_cell(spec)
    return SUITES.index(cell.suite), length_order(cell.length)


def _changed_tasks(pure: dict[str, Any], hybrid: dict[str, Any] | None) -> str:
    """``task pure → hybrid`` for every task whose fact EM differs (— when none does, the cell has one task or
    ``hybrid`` was not measured)."""
    tasks = pure.get("per_task", {}) if hybrid is not None and len(pure.get("per_task", {})) > 1 else {}
    changed = [
        f"{task} {scores['fact_em']:.2f} → {hybrid['per_task'][task]['fact_em']:.2f}"
        for task, scores in tasks.items()
        if scores["fact_em"] != hybrid["per_task"][task]["fact_em"]
    ]
    return ", ".join(changed) or "—"


def weight_argument(text: str) -> float:
    """argparse ``type`` of a weight: a finite number >= 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"a weight must be >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    add_model_flag(parser)
    for flag, what in (("--weights", "w"), ("--identifier-weights", "the identifier weight")):
        parser.add_argument(
            flag,
            nargs="+",
            type=weight_argument,
            default=list(WEIGHTS),
            help=f"the grid of {what} to fit over, each >= 0 (default: %(default)s)",
        )
    parser.add_argument(
        "--hotpotqa-train",
        type=non_negative_int,
        default=HELD_OUT,
        help="last HotpotQA train questions to fit on, those the general recipe holds out (0: none; default: "
        "%(default)s)",
    )
    parser.add_argument(
        "--babilong-train",
        type=non_negative_int,
        default=20,
        help="BabiLong train questions per task QA1-5 at each training length (0: none; default: 20)",
    )
    parser.add_argument(
        "--niah-train",
        type=non_negative_int,
        default=25,
        help="NIAH samples per variant, data seed 8, at each training length (0: none; default: 25)",
    )
    parser.add_argument(
        "--train-lengths",
        nargs="+",
        choices=STANDARD_LENGTHS,
        default=list(TRAIN_LENGTHS),
        help="document lengths of the BabiLong and NIAH training sets (default: " + " ".join(TRAIN_LENGTHS) + ")",
    )
    parser.add_argument(
        "--test-cells",
        nargs="+",
        type=cell_argument,
        default=[cell_argument(c) for c in TEST_CELLS],
        help="test cells, suite[:length][:n] as in run_baselines.py (default: " + " ".join(TEST_CELLS) + ")",
    )
    parser.add_argument(
        "--write-to",
        type=Path,
        default=None,
        help="a saved qrag model directory: save the chosen weights as its lexical_weight (ordered documents), "
        "passage_lexical_weight and identifier_weight (re-saved atomically in its own format; the model card is "
        "regenerated, so tables added to it by hand are not kept)",
    )
    parser.add_argument(
        "--keep-lexical-weights",
        action="store_true",
        help="with --write-to, save the identifier weight only and keep the model's lexical weights (e.g. when "
        "they were set by a release decision rather than by this fit)",
    )
    add_threads_flag(parser)
    add_machine_note_flag(parser, "what else ran on the machine, recorded with the numbers")
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
