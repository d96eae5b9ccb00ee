"""``qrag-eval``: measure a retriever on a JSONL file (docs/data-format.md): fact EM / recall / F1.

    qrag-eval --data babilong_qa2_4k.jsonl                    # the default model, a table
    qrag-eval --data F --method dense --json                  # a baseline, one JSON object on stdout

Every row needs support labels (``support`` or ``supporting_facts``). Rows with a ``task`` field are
also scored per task; rows with ``values`` (RULER NIAH) get value recall. Logs and progress go to
stderr, so ``--json`` output can be piped.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from qrag_core.baselines import METHODS, make_method
from qrag_core.cli import (
    add_backend_flags,
    add_search_flags,
    add_verbose_flag,
    from_flags,
    positive_int,
    run_reporting_errors,
    setup_logging,
    use_backends,
)
from qrag_core.data.examples import read_jsonl
from qrag_core.embedding_cache import EmbeddingCache, shared_cache_path
from qrag_core.evaluation import DEFAULT_STEPS, TASK_STEPS, evaluate
from qrag_core.search_options import SearchOptions

logger = logging.getLogger(__name__)

SEARCH_FLAGS_SKIPPED = ("k", "document_id", "document_ids", "order")
"""Search options without a flag here: T is --steps (per task by default), each example is one document,
and the selection is scored as a set."""
SCORE_COLUMNS = ("fact_em", "fact_recall", "fact_precision", "fact_f1", "value_recall", "answer_accuracy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrag-eval",
        description="Evaluate multi-step retrieval (or a baseline) on a JSONL file with support labels.",
    )
    parser.add_argument(
        "--data", required=True, help="JSONL file of examples with support labels (format: docs/data-format.md)"
    )
    parser.add_argument(
        "--model",
        default=None,
        help="model name or path (default: the shipped default model; while none is shipped, the untrained "
        "base model). For dense and multistep-untrained, the base encoder of this model is used untrained.",
    )
    parser.add_argument(
        "--method",
        choices=METHODS,
        default="qrag",
        help="qrag: the model's multi-step search; dense: single-step top-T cosine with the untrained base "
        "encoder; bm25: top-T BM25; multistep-untrained: the search loop with untrained base encoders "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=f"T, chunks selected per question (default: {TASK_STEPS['hotpotqa']} for hotpotqa rows, "
        f"{TASK_STEPS['musique']} for musique rows, else {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--limit", type=positive_int, default=None, help="evaluate only the first N rows (default: all)"
    )
    parser.add_argument(
        "--cache",
        default=str(shared_cache_path()),
        help="shared embedding cache file (default: $QRAG_CACHE_DIR/embeddings.sqlite, i.e. %(default)s)",
    )
    parser.add_argument("--no-cache", action="store_true", help="encode every document afresh (default: use --cache)")
    add_backend_flags(parser, "scores then describe an index built the same way")
    parser.add_argument(
        "--json", action="store_true", help="print exactly one JSON object on stdout (default: a table)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and only warnings on stderr")
    add_search_flags(parser, skip=SEARCH_FLAGS_SKIPPED)
    add_verbose_flag(parser)
    return parser


def format_table(result: dict[str, Any]) -> str:
    """The result as a plain-text table: one row per task, then the overall row."""
    columns = [c for c in SCORE_COLUMNS if c in result]
    rows = [(task, scores) for task, scores in result.get("per_task", {}).items()]
    rows.append(("all", result))
    header = ["task", "n", *columns]
    lines = [f"method: {result['method']}   steps: {result['steps'] or 'per task'}   seconds: {result['seconds']:.1f}"]
    lines.append("  ".join(f"{h:>14}" for h in header))
    for task, scores in rows:
        cells = [f"{task:>14}", f"{scores['n']:>14}"] + [f"{scores.get(c, float('nan')):>14.3f}" for c in columns]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict[str, Any]:
    examples = read_jsonl(args.data, need_support=True)[: args.limit]
    cache = None if args.no_cache else EmbeddingCache(args.cache)
    method = make_method(args.method, args.model, cache, from_flags(SearchOptions, args))
    model = getattr(method, "model", None)
    if model is not None:
        use_backends(model, args)
    result = evaluate(
        method,
        examples,
        steps=args.steps,
        chunking=model.config.chunking if model is not None else None,
        tokenizer=model.action_encoder.tokenizer if model is not None else None,
        show_progress=not args.quiet,
    )
    result["data"] = str(args.data)
    result["model"] = args.model
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose, args.quiet)

    def command() -> None:
        result = run(args)
        print(json.dumps(result) if args.json else format_table(result))

    return run_reporting_errors("qrag-eval", command)


if __name__ == "__main__":
    sys.exit(main())
