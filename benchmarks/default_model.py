"""The shipped default model side by side with the baselines and the paper.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 .venv/bin/python benchmarks/default_model.py \\
        --cells babilong:1k:20 babilong:4k:20 babilong:32k:20 niah:4k:10 hotpotqa:100 musique:100
    ... --cells babilong_other:32k:100                       # the second BabiLong test draw (seed 1)
    ... --full-checkpoint runs/default_model/run/model --cells babilong:4k:20   # fp16-compact vs full precision
    ... --render-only                                                          # rewrite the markdown

A cell is ``suite[:length][:n]`` (``n`` samples per task): ``babilong`` (QA1–QA5 test samples of
``babilong/test_100_idxs.json``, seed 0), ``babilong_other`` (the second BabiLong test draw: other bAbI
test questions at other haystack positions, seed 1; its own table, shown once measured), ``niah`` (the
eight RULER variants, seed 0), ``qa_hotpotqa`` (HotpotQA in a haystack), ``hotpotqa`` or ``musique``
(the first ``n`` questions of the shared subsets). In one run, on the same samples, every cell
measures the shipped default model (``qrag``: greedy search) next to the previous default model
``qrag-babilong-minilm`` (trained on BabiLong and NIAH only) and the three baselines of
:mod:`qrag_core.baselines` (``dense``, ``bm25``, ``multistep-untrained``), plus ``qrag-full`` (the
full-precision checkpoint the shipped fp16 delta was made from) when ``--full-checkpoint`` is given.
T is the evaluation loop's default (:mod:`qrag_core.evaluation`): 4 for BabiLong and NIAH, 2 for
HotpotQA, 4 for MuSiQue; ``--steps`` sets T for every cell of a run (recorded as ``cell@T<steps>``, e.g. T = 3
for QA3's three facts). ``--stop-threshold`` adds ``qrag-stop`` (the search stops when the best Q falls
below the threshold), which is how the paper reports fact F1.

Results accumulate in ``benchmarks/results/default_model.json`` (one entry per cell and method, with
scores, per-task scores, sample counts, wall time, machine and command), merged under a file lock so that
several runs may go at once; pairs already measured are skipped unless ``--force``.
``benchmarks/default_model.md`` is rewritten from the JSON after every pair, and ``--update-card`` copies
its tables into the shipped model's card.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import (
    BABILONG_OTHER_TITLE,
    ROOT,
    Cell,
    ResultsStore,
    add_render_only_flag,
    cell_argument,
    lazy_haystack,
    length_order,
    markdown_table,
)

from qrag_core.atomic import write_file
from qrag_core.baselines import BM25TopK, DenseTopK, QRAGSearch
from qrag_core.cli import add_machine_note_flag, add_threads_flag, add_verbose_flag, positive_int, run_tool
from qrag_core.data.babilong import BABILONG_TASKS
from qrag_core.data.haystack import Haystack
from qrag_core.data.ruler import NIAH_TASKS
from qrag_core.embedding_cache import shared_cache
from qrag_core.evaluation import DEFAULT_STEPS, TASK_STEPS, RetrievalMethod, evaluate
from qrag_core.machine import machine_description
from qrag_core.model import QRAG
from qrag_core.model_names import BABILONG_MODEL_NAME, DEFAULT_MODEL_NAME, SHIPPED_MODELS_DIR
from qrag_core.search_options import SearchOptions

logger = logging.getLogger("default_model_benchmark")

RESULTS = ROOT / "benchmarks" / "results" / "default_model.json"
MARKDOWN = ROOT / "benchmarks" / "default_model.md"
GREEDY = SearchOptions(beam=1)
"""The search of every Q-RAG row of the table (beam 1: greedy)."""
PREVIOUS_MODEL = BABILONG_MODEL_NAME
"""The previous default model, measured next to the current one (method name = its name)."""
METHOD_ORDER = (
    "qrag",
    "qrag-stop",
    "qrag-full",
    PREVIOUS_MODEL,
    f"{PREVIOUS_MODEL}-full",
    "dense",
    "bm25",
    "multistep-untrained",
)
PAPER = {
    "babilong": "answer accuracy (not fact EM), QA1–5 average ≈ 0.97 at 1k falling to ≈ 0.95 at 10M; "
    "QA3 support-fact F1 97.8 (1k) → 96.5 (1M)",
    "niah": "value recall, average of the variants: 100 at 4k–128k, 99.7 at 1M",
    "hotpotqa": "fact F1 / EM 0.93 / 0.89 (trained on HotpotQA)",
    "musique": "fact F1 / EM 0.71 / 0.55 (out of distribution)",
}
"""Published Q-RAG numbers (arXiv 2511.07328), one model per task trained on an A100 for up to 12 h."""


# ============================================================================================ methods
def build_methods(args: argparse.Namespace) -> dict[str, Callable[[], RetrievalMethod]]:
    """Method name → a factory (models are loaded once, on first use)."""
    cache = shared_cache()
    loaded: dict[str, QRAG] = {}

    def model(key: str, load: Callable[[], QRAG]) -> QRAG:
        if key not in loaded:
            loaded[key] = load().eval()
        return loaded[key]

    def shipped() -> QRAG:
        return model("qrag", lambda: QRAG.from_pretrained(args.model))

    def base() -> QRAG:
        return model("base", lambda: QRAG.from_base(shipped().config.base_model))

    methods: dict[str, Callable[[], RetrievalMethod]] = {
        "qrag": lambda: QRAGSearch(shipped(), cache, GREEDY),
        "dense": lambda: DenseTopK(base(), cache),
        "bm25": lambda: BM25TopK(),
        "multistep-untrained": lambda: QRAGSearch(base(), cache, GREEDY, name="multistep-untrained"),
    }
    if args.stop_threshold is not None:
        stopping = SearchOptions(beam=1, stop_threshold=args.stop_threshold)
        methods["qrag-stop"] = lambda: QRAGSearch(shipped(), cache, stopping, name="qrag-stop")
    if args.model != PREVIOUS_MODEL:
        methods[PREVIOUS_MODEL] = lambda: QRAGSearch(
            model("previous", lambda: QRAG.from_pretrained(PREVIOUS_MODEL)), cache, GREEDY, name=PREVIOUS_MODEL
        )
    for name, path in args.also:
        methods[name] = lambda name=name, path=path: QRAGSearch(
            model(name, lambda: QRAG.from_pretrained(path)), cache, GREEDY, name=name
        )
    if args.full_checkpoint is not None:
        methods["qrag-full"] = lambda: QRAGSearch(
            model("full", lambda: QRAG.from_pretrained(args.full_checkpoint)), cache, GREEDY, name="qrag-full"
        )
    order = list(METHOD_ORDER[:3]) + [name for name, _ in args.also] + list(METHOD_ORDER[3:])
    wanted = set(args.methods) | {name for name, _ in args.also}
    return {name: methods[name] for name in order if name in methods and name in wanted}


# ============================================================================================ results
STORE = ResultsStore(RESULTS, lambda: {"entries": {}})


def save_results(new_entries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Merge ``new_entries`` into the results file (several invocations may run at once), rewrite the
    markdown, and return all results."""
    with STORE.updating() as results:
        results["entries"].update(new_entries)
    write_file(MARKDOWN, render(results))
    return results


def run_cell(
    parsed: Cell,
    args: argparse.Namespace,
    factories: dict[str, Callable[[], RetrievalMethod]],
    haystack: Callable[[], Haystack],
) -> None:
    """Measure every method of ``factories`` not yet in the results on one cell, saving after each."""
    suite, length, n = parsed
    cell = parsed.key + (f"@T{args.steps}" if args.steps else "")
    measured = STORE.load()["entries"]
    todo = [m for m in factories if args.force or f"{cell}|{m}" not in measured]
    if not todo:
        logger.info("%s: every method already measured (use --force to measure again)", cell)
        return
    examples = parsed.examples(haystack)
    command = "python benchmarks/default_model.py " + shlex.join(sys.argv[1:])
    for name in todo:
        method = factories[name]()
        logger.info("%s: %s on %d examples", cell, name, len(examples))
        scores = evaluate(method, examples, steps=args.steps, show_progress=not args.quiet)
        model = getattr(method, "model", None)
        if model is not None:  # which weights and hybrid weights were measured (the model may change later)
            scores["state_encoder_fingerprint"] = model.state_encoder.fingerprint()
            scores["lexical_weights"] = {
                "documents": model.config.lexical_weight,
                "passages": model.config.passage_lexical_weight,
                "identifiers": model.config.identifier_weight,
            }
        scores |= {
            "cell": cell,
            "suite": suite,
            "length": length,
            "per_task_n": n,
            "machine": machine_description(args.machine_note),
            "command": command,
            "date": dt.datetime.now().isoformat(timespec="seconds"),
        }
        save_results({f"{cell}|{name}": scores})
        logger.info("%s %s: fact EM %.3f, seconds %.0f", cell, name, scores["fact_em"], scores["seconds"])


# ============================================================================================ markdown
def _length_key(entry: dict[str, Any]) -> int:
    return length_order(entry.get("length"))


def _method_key(name: str) -> int:
    """Table order: the qrag rows, other models measured with ``--also`` (after them), then the baselines."""
    if name in METHOD_ORDER:
        return METHOD_ORDER.index(name) + (name not in METHOD_ORDER[:3]) * len(METHOD_ORDER)
    return len(METHOD_ORDER)


def _steps(entry: dict[str, Any]) -> int:
    """T the entry was measured with (the evaluation loop's per-task default when the run set none)."""
    return entry["steps"] or TASK_STEPS.get(entry["suite"], DEFAULT_STEPS)


def _sorted_entries(results: dict[str, Any], suite: str) -> list[dict[str, Any]]:
    entries = [e for e in results["entries"].values() if e["suite"] == suite]
    return sorted(entries, key=lambda e: (_length_key(e), _steps(e), _method_key(e["method"])))


def _task_counts(entry: dict[str, Any]) -> str:
    """Samples per task: one number, or the range when a builder skipped some (stories longer than the length)."""
    counts = sorted({scores["n"] for scores in entry.get("per_task", {}).values()}) or [entry["n"]]
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"


def _cell_value(entry: dict[str, Any], task: str, metric: str) -> str:
    scores = entry.get("per_task", {}).get(task)
    return "–" if scores is None or metric not in scores else f"{scores[metric]:.2f}"


def _per_task_table(results: dict[str, Any], suite: str, tasks: tuple[str, ...], metric: str, extra: str | None) -> str:
    header = ["length", "T", "method", "n per task", *tasks, "average"]
    if extra:
        header.append(extra)
    header.append("seconds")
    rows = []
    for e in _sorted_entries(results, suite):
        row = [e["length"], str(_steps(e)), e["method"], _task_counts(e), *(_cell_value(e, t, metric) for t in tasks)]
        row.append(f"**{e[metric]:.3f}**" if e["method"].startswith("qrag") else f"{e[metric]:.3f}")
        if extra == "QA3 fact F1":
            row.append(_cell_value(e, "qa3", "fact_f1"))
        row.append(f"{e['seconds']:.0f}")
        rows.append(row)
    return "\n".join(markdown_table(header, rows))


def _second_babilong_draw(results: dict[str, Any]) -> list[str]:
    """The section of the ``babilong_other`` suite (none until it is measured)."""
    if not _sorted_entries(results, "babilong_other"):
        return []
    return [
        f"### {BABILONG_OTHER_TITLE}: fact EM",
        "",
        "An independent check of the table above: per task, test questions outside babilong/test_100_idxs.json "
        "(`qrag-data babilong --draw other --seed 1`), so neither the questions nor their haystack text are "
        "those of the official draw.",
        "",
        _per_task_table(results, "babilong_other", BABILONG_TASKS, "fact_em", "QA3 fact F1"),
        "",
    ]


def _open_domain_table(results: dict[str, Any]) -> str:
    header = ["set", "method", "n", "T", "fact EM", "fact F1", "fact recall", "by type: EM / F1 / recall (n)"]
    header.append("seconds")
    rows = []
    for suite in ("hotpotqa", "musique", "qa_hotpotqa"):
        for e in _sorted_entries(results, suite):
            row = [suite if e["length"] is None else f"{suite} {e['length']}", e["method"], str(e["n"]), str(_steps(e))]
            row += [f"{e[k]:.3f}" for k in ("fact_em", "fact_f1", "fact_recall")]
            by_type = [
                f"{name} {s['fact_em']:.3f} / {s['fact_f1']:.3f} / {s['fact_recall']:.3f} ({s['n']})"
                for name, s in e.get("per_type", {}).items()
            ]
            rows.append([*row, "; ".join(by_type) or "–", f"{e['seconds']:.0f}"])
    return "\n".join(markdown_table(header, rows))


def _compact_table(results: dict[str, Any]) -> str | None:
    entries = results["entries"]
    pairs = [
        (key.split("|")[0], compact, entries[key], entries.get(key.removesuffix("-full")))
        for compact in ("qrag", PREVIOUS_MODEL)
        for key in entries
        if key.endswith(f"|{compact}-full")
    ]
    pairs = [(cell, name, full, compact) for cell, name, full, compact in pairs if compact is not None]
    if not pairs:
        return None
    header = ["model", "cell", "n", "metric", "fp16 compact (shipped)", "full precision", "difference"]
    rows = []
    for cell, name, full, compact in sorted(pairs, key=lambda p: (p[1], p[0])):
        metric = "value_recall" if "value_recall" in full else "fact_em"
        diff = compact[metric] - full[metric]
        model = DEFAULT_MODEL_NAME if name == "qrag" else name
        row = [model, cell, str(full["n"]), metric, f"{compact[metric]:.3f}", f"{full[metric]:.3f}", f"{diff:+.3f}"]
        rows.append(row)
    return "\n".join(markdown_table(header, rows))


def render(results: dict[str, Any]) -> str:
    entries = list(results["entries"].values())
    machines = sorted({e["machine"] for e in entries})
    commands = sorted({e["command"] for e in entries})
    out = [
        f"## The default model `{DEFAULT_MODEL_NAME}`",
        "",
        "Generated by `benchmarks/default_model.py` from `benchmarks/results/default_model.json`. "
        "Every method of a row group ran on the same samples (seed 0; seed 1 for the second BabiLong draw); "
        "the baselines and the qrag rows may come "
        "from different invocations (listed below; each entry of the JSON records its command, and qrag entries "
        "the fingerprint of the weights measured). `n per task` is "
        "the sample count per task, `seconds` the wall time of the method on the whole cell (all tasks); the "
        "first method measured on a cell also pays for encoding the chunks not yet in the shared embedding cache "
        "(e.g. the unique needles of NIAH's needle haystacks).",
        "",
        "Machines: " + "; ".join(machines or ["–"]),
        "",
        "Commands:",
        "",
        *[f"    {c}" for c in commands],
        "",
        "### BabiLong QA1–QA5: fact EM",
        "",
        f"Paper: {PAPER['babilong']}.",
        "",
        _per_task_table(results, "babilong", BABILONG_TASKS, "fact_em", "QA3 fact F1"),
        "",
        *_second_babilong_draw(results),
        "### RULER NIAH: value recall",
        "",
        f"Paper: {PAPER['niah']}.",
        "",
        _per_task_table(results, "niah", tuple(NIAH_TASKS), "value_recall", None),
        "",
        "### HotpotQA and MuSiQue subsets, and HotpotQA in a haystack",
        "",
        f"Paper: HotpotQA {PAPER['hotpotqa']}; MuSiQue {PAPER['musique']}. `{DEFAULT_MODEL_NAME}` was trained on "
        "the HotpotQA train split of this repository, 100 official train questions plus 807 official *dev* "
        "questions that are disjoint from the 297 test questions (the official train set is not available "
        "offline), and on the 100 MuSiQue train questions; `qrag-babilong-minilm` saw neither (zero-shot). "
        "`qa_hotpotqa 32k`: each test question's gold paragraphs hidden among paragraphs of the other test "
        "questions up to 32k tokens (RULER's qa_2, `qrag-data ruler --task qa_hotpotqa`).",
        "",
        _open_domain_table(results),
    ]
    compact = _compact_table(results)
    if compact:
        out += ["", "### fp16 compact delta vs full-precision checkpoint", "", compact]
    return "\n".join(out) + "\n"


CARD_SECTION = "## Evaluation (benchmarks/default_model.py)"


def update_card(results: dict[str, Any], card: Path) -> None:
    """Replace the evaluation section of the shipped model's card with the current tables."""
    text = card.read_text(encoding="utf-8")
    kept = text.split(CARD_SECTION)[0].rstrip()
    tables = render(results).split("\n", 1)[1].replace("\n### ", "\n#### ")
    write_file(card, f"{kept}\n\n{CARD_SECTION}\n{tables}")


# ============================================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n")[0])
    parser.add_argument(
        "--cells", nargs="*", type=cell_argument, default=[], help="cells suite[:length][:n] to measure (default: none)"
    )
    parser.add_argument(
        "--methods",
        nargs="*",
        default=list(METHOD_ORDER),
        help="methods to measure (default: all that apply: %(default)s)",
    )
    parser.add_argument(
        "--model", default=DEFAULT_MODEL_NAME, help="the model measured as qrag (default: %(default)s, shipped)"
    )
    parser.add_argument(
        "--also",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "PATH"),
        help="measure the saved model at PATH too, as method NAME (e.g. the previous version of the default "
        "model); repeatable",
    )
    parser.add_argument(
        "--full-checkpoint", default=None, help="full-precision checkpoint to compare as qrag-full (default: none)"
    )
    parser.add_argument(
        "--stop-threshold", type=float, default=None, help="add qrag-stop with this Q threshold (default: none)"
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="T for every cell of this run, recorded as cell@T<steps> (default: the evaluation loop's per-task T)",
    )
    parser.add_argument("--force", action="store_true", help="measure pairs already in the results again")
    add_render_only_flag(parser, "measure nothing, only rewrite the markdown")
    parser.add_argument(
        "--update-card",
        action="store_true",
        help=f"at the end, write the tables into the card {SHIPPED_MODELS_DIR.name}/{DEFAULT_MODEL_NAME}/README.md",
    )
    add_threads_flag(parser)
    add_machine_note_flag(parser)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    haystack = lazy_haystack()
    factories = build_methods(args)
    for cell in [] if args.render_only else args.cells:
        run_cell(cell, args, factories, haystack)
    results = save_results({})
    if args.update_card:
        update_card(results, SHIPPED_MODELS_DIR / DEFAULT_MODEL_NAME / "README.md")


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
