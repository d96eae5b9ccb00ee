"""``qrag-data``: build the benchmark JSONL files (docs/data-format.md) and warm the shared embedding cache.

qrag-data warm-cache                       # encode every haystack sentence once per machine
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from tqdm.auto import tqdm

from qrag_core.cli import (
    add_verbose_flag,
    check_output_file,
    non_negative_int,
    positive_int,
    run_reporting_errors,
    setup_logging,
)
from qrag_core.data.babilong import DRAWS
from qrag_core.data.examples import write_jsonl
from qrag_core.embedding_cache import EmbeddingCache, shared_cache_path

logger = logging.getLogger(__name__)


def babilong(args: argparse.Namespace) -> None:
    """Write BabiLong samples of one or more tasks at one length."""
    from qrag_core.data.babilong import iter_babilong
    from qrag_core.data.haystack import Haystack

    haystack = Haystack.load()
    rows = (
        example
        for task in args.task
        for example in iter_babilong(
            task, args.split, args.length, args.n, args.seed, haystack, distractors=args.distractors, draw=args.draw
        )
    )
    count = write_jsonl(rows, args.out)
    logger.info("wrote %d BabiLong examples to %s", count, args.out)


def ruler(args: argparse.Namespace) -> None:
    """Write RULER samples (NIAH variants, HotpotQA QA) of one or more tasks at one length."""
    from qrag_core.data.haystack import Haystack
    from qrag_core.data.ruler import NIAH_TASKS, iter_niah
    from qrag_core.data.ruler_qa import QA_TASKS, iter_ruler_qa

    haystack = Haystack.load()
    tasks = list(NIAH_TASKS) if args.task == ["all"] else args.task
    rows = (
        example
        for task in tasks
        for example in (iter_ruler_qa if task in QA_TASKS else iter_niah)(
            task, args.length, args.n, args.seed, haystack
        )
    )
    count = write_jsonl(rows, args.out)
    logger.info("wrote %d NIAH examples to %s", count, args.out)


def hotpotqa(args: argparse.Namespace) -> None:
    """Write a split of the HotpotQA distractor data."""
    from qrag_core.data.hotpotqa import iter_hotpotqa

    count = write_jsonl(iter_hotpotqa(args.n, split=args.split), args.out)
    logger.info("wrote %d HotpotQA %s examples to %s", count, args.split, args.out)


def musique(args: argparse.Namespace) -> None:
    """Write a split of the MuSiQue-Ans data."""
    from qrag_core.data.musique import iter_musique

    count = write_jsonl(iter_musique(args.n, split=args.split), args.out)
    logger.info("wrote %d MuSiQue %s examples to %s", count, args.split, args.out)


def warm_cache(args: argparse.Namespace) -> None:
    """Encode every haystack sentence with the base model's action encoder into the shared cache."""
    from qrag_core.data.haystack import Haystack
    from qrag_core.data.ruler import NOISE_SENTENCES
    from qrag_core.model import QRAG

    haystack = Haystack.load()
    texts = list(dict.fromkeys([*NOISE_SENTENCES, *haystack.all_sentences()]))
    model = QRAG.from_base(args.base_model)
    cache = EmbeddingCache(args.cache)
    logger.info("%d distinct haystack sentences; encoding those not yet in %s", len(texts), args.cache)
    with tqdm(total=len(texts), desc="haystack sentences", unit="sent") as bar:
        for first in range(0, len(texts), args.batch):
            batch = texts[first : first + args.batch]
            model.encode_chunks(batch, cache)
            bar.update(len(batch))
    cache.close()


def add_common(command: argparse.ArgumentParser) -> None:
    """The --seed and --out options every builder takes."""
    command.add_argument(
        "--seed", type=non_negative_int, default=0, help="random seed; same seed, same file (default: 0)"
    )
    command.add_argument("--out", required=True, help="JSONL file to write (parent folders are created)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrag-data",
        description="Build benchmark data (BabiLong, RULER, HotpotQA, MuSiQue) from the shared data directory "
        "($QRAG_DATA_DIR) and warm the shared embedding cache.",
    )
    add_verbose_flag(parser)
    commands = parser.add_subparsers(dest="command", required=True)

    babi = commands.add_parser(
        "babilong",
        help="BabiLong QA1-5: bAbI facts hidden in haystack novel sentences",
        description="BabiLong samples: the bAbI story of each question scattered, in order, among consecutive "
        "sentences of a random novel, up to the target length in base-tokenizer tokens.",
    )
    babi.add_argument(
        "--task", nargs="+", required=True, help="one or more bAbI tasks, e.g. qa1 qa2 (BabiLong uses qa1..qa5)"
    )
    babi.add_argument(
        "--length",
        required=True,
        help="target tokens: 0k (story only), 1k, 4k, 16k, 32k, 128k, 1M, 10M (k = 1024, M = 1024k) or a number",
    )
    babi.add_argument(
        "--split", choices=("train", "test"), default="test", help="bAbI split to draw from (default: %(default)s)"
    )
    babi.add_argument(
        "--draw",
        choices=DRAWS,
        default="official",
        help="test questions to draw (--split test only): official = the 100 per task of "
        "babilong/test_100_idxs.json, in file order; other = a second, independent test draw: the task's other "
        "test questions (never one of the 100) in an order picked by --seed, at other haystack positions, with ids "
        "babilong-<task>-test-other-<length>-<index> (default: %(default)s)",
    )
    babi.add_argument(
        "--n",
        type=positive_int,
        default=None,
        help="samples per task (default: all; the official test draw has the 100 of babilong/test_100_idxs.json)",
    )
    babi.add_argument(
        "--distractors",
        type=non_negative_int,
        default=0,
        help="per sample, this many hard distractors: novel sentences that mention a word of the question or "
        "of a supporting fact, for training retrievers that must beat them in long documents (default: 0)",
    )
    add_common(babi)
    babi.set_defaults(run=babilong)

    niah = commands.add_parser(
        "ruler",
        help="RULER needle-in-a-haystack variants (noise / essay / needle haystacks) and HotpotQA in a haystack",
        description="RULER NIAH samples: 'One of the special magic ... for KEY is: VALUE.' needles hidden at random "
        "depths of a haystack, in one-sentence chunks, with the asked values for value recall. RULER QA "
        "(qa_hotpotqa): each HotpotQA test question with its gold paragraphs hidden at random places among its "
        "own distractor paragraphs and those of the other test questions (novel sentences fill beyond them), "
        "one paragraph per chunk.",
    )
    niah.add_argument(
        "--task",
        nargs="+",
        required=True,
        help="variants: niah_single_1..3, niah_multikey_1..3, niah_multivalue, niah_multiquery, 'all' (the eight "
        "NIAH variants), or qa_hotpotqa",
    )
    niah.add_argument("--length", required=True, help="target tokens: 4k, 32k, 128k, 1M (k = 1024) or a number")
    niah.add_argument(
        "--n",
        type=positive_int,
        default=100,
        help="samples per variant; for qa_hotpotqa the first N of the 297 test questions (default: %(default)s)",
    )
    add_common(niah)
    niah.set_defaults(run=ruler)

    for name, run, what, splits, default, split_help in (
        (
            "hotpotqa",
            hotpotqa,
            "HotpotQA distractor setting (10 paragraphs per question)",
            ("train", "test"),
            "test",
            "test: the 297-question subset of the official dev set; train: 907 questions, the 100 of "
            "hotpot_train_v1.1_subset.json plus 807 official dev questions (hotpot_dev_distractor_v1_trainpool.json) "
            "disjoint from the test questions, since the official train file is not available offline",
        ),
        (
            "musique",
            musique,
            "MuSiQue-Ans (20 paragraphs per question)",
            ("train", "dev"),
            "dev",
            "dev: the 200-question subset of the official dev set; train: 100 official train questions",
        ),
    ):
        command = commands.add_parser(
            name,
            help=what,
            description=f"{what}: one paragraph per chunk, support from the dataset's labels, in file order.",
        )
        command.add_argument("--split", choices=splits, default=default, help=f"{split_help} (default: %(default)s)")
        command.add_argument("--n", type=positive_int, default=None, help="the first N questions (default: all)")
        command.add_argument("--out", required=True, help="JSONL file to write (parent folders are created)")
        command.set_defaults(run=run)

    warm = commands.add_parser(
        "warm-cache",
        help="encode all haystack sentences into the shared embedding cache (once per machine)",
        description="Encode every sentence of the haystack novels with the base encoder and store the "
        "embeddings in the shared cache, so benchmark samples only encode their new sentences.",
    )
    warm.add_argument(
        "--base-model", default=None, help="base encoder name or path (default: all-MiniLM-L6-v2, the shipped base)"
    )
    warm.add_argument(
        "--cache",
        default=str(shared_cache_path()),
        help="embedding cache file (default: $QRAG_CACHE_DIR/embeddings.sqlite, i.e. %(default)s)",
    )
    warm.add_argument(
        "--batch", type=positive_int, default=1024, help="sentences encoded and stored per step (default: 1024)"
    )
    warm.set_defaults(run=warm_cache)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any work: a bad option, or an ``--out`` that is a directory, is an
    argparse error (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "out", None) is not None:
        check_output_file(parser, "--out", args.out)
    if getattr(args, "draw", "official") != "official" and args.split != "test":
        parser.error(f"--draw {args.draw} needs --split test: the {args.split} split has a single draw")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_reporting_errors("qrag-data", lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
