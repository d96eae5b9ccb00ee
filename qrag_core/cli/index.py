"""``qrag-index``: build a persistent index of a (very) long document, and search it.

    qrag-index build --document book.txt --out book-index        # resumable: run again after a kill
    qrag-index build --document book.txt --out book-index --engine ray --workers 8   # on a Ray cluster
    qrag-index search --index book-index --question "Who found the letter?" --steps 4 --beam 2

Building encodes the document in shards (progress bar, float16 storage, see
:mod:`qrag_core.long_index`), here or on Ray workers (:mod:`qrag_core.ray_index`); searching reloads
the index in seconds without re-encoding. The search flags are generated from
:class:`qrag_core.search_options.SearchOptions` (their help is its field docstrings). Results go to
stdout, logs to stderr (``--verbose`` for debug logs); errors are handled as in every qrag tool
(:func:`qrag_core.cli.run_reporting_errors`: ``qrag-index: error: ...``, exit status 2).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qrag_core.cli import (
    DefaultsHelpFormatter,
    add_backend_flags,
    add_search_flags,
    add_verbose_flag,
    from_flags,
    non_negative_int,
    positive_int,
    run_reporting_errors,
    setup_logging,
    use_backends,
)
from qrag_core.config import DEFAULT_SENTENCE_SPLITTER, SENTENCE_SPLITTERS, ChunkingConfig
from qrag_core.embedding_cache import shared_cache
from qrag_core.errors import InvalidInputError, UnsafeOutputError
from qrag_core.index import DocumentIndex
from qrag_core.long_index import build_long_index, check_output, partial_fingerprint
from qrag_core.model import QRAG
from qrag_core.ray_index import RayShardEncoder
from qrag_core.search import search
from qrag_core.search_options import SearchOptions
from qrag_core.text_files import read_text_file

SEARCH_FLAGS_SKIPPED = ("document_ids",)
"""Search options without a flag (an index holds one document or a few; --document-id picks one)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qrag-index",
        description="Build a persistent index of a long document, or search one.",
        formatter_class=DefaultsHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--model", default=None, help="model name or path (default: the shipped default model)")
    add_verbose_flag(common)
    commands = parser.add_subparsers(dest="command", required=True)

    build = commands.add_parser(
        "build",
        help="chunk and encode a text file into an index directory (resumable)",
        formatter_class=DefaultsHelpFormatter,
        parents=[common],
    )
    add_backend_flags(
        build,
        "the index records it; searching reads its vectors whatever the backend, so any machine can search it",
        auto=True,
    )
    build.add_argument("--document", type=Path, required=True, help="UTF-8 text file to index")
    build.add_argument(
        "--out",
        type=Path,
        required=True,
        help="index directory to write: new, empty, or (with --overwrite) an earlier qrag index; "
        "any other directory is refused and left untouched",
    )
    build.add_argument("--overwrite", action="store_true", help="replace the qrag index already at --out")
    build.add_argument("--doc-id", default=None, help="document id stored with the chunks (default: the file name)")
    build.add_argument(
        "--chunking",
        choices=("sentences", "tokens"),
        default="sentences",
        help="one sentence per chunk, or windows of --max-tokens tokens",
    )
    build.add_argument(
        "--sentence-splitter",
        choices=SENTENCE_SPLITTERS,
        default=DEFAULT_SENTENCE_SPLITTER,
        help="sentence boundaries: punkt (NLTK Punkt, knows abbreviations such as 'Mr.'), pysbd (needs the pysbd "
        "extra) or regex (ends at . ! ?, as the benchmark haystacks)",
    )
    build.add_argument(
        "--max-tokens", type=positive_int, default=64, help="tokens per chunk window (longer sentences are split)"
    )
    build.add_argument(
        "--overlap-tokens", type=non_negative_int, default=0, help="tokens shared by consecutive windows"
    )
    build.add_argument(
        "--shard-size", type=positive_int, default=16384, help="chunks encoded and saved per resumable shard"
    )
    build.add_argument("--batch-size", type=positive_int, default=64, help="chunks per encoder batch")
    build.add_argument("--no-cache", action="store_true", help="do not reuse or fill the on-disk embedding cache")
    build.add_argument(
        "--engine",
        choices=("local", "ray"),
        default="local",
        help="encode here, or on a Ray cluster (RAY_ADDRESS, else a local one; needs qrag[distributed]; "
        "the embedding cache is not used)",
    )
    build.add_argument(
        "--workers", type=positive_int, default=2, help="--engine ray: encoder actors, one model each (GPU if any)"
    )
    build.add_argument(
        "--cpus-per-worker", type=positive_int, default=1, help="--engine ray: CPU threads of each encoder actor"
    )

    search = commands.add_parser(
        "search",
        help="multi-step retrieval over a saved index",
        formatter_class=DefaultsHelpFormatter,
        parents=[common],
    )
    add_backend_flags(search, None)
    search.add_argument("--index", type=Path, required=True, help="index directory written by 'build'")
    search.add_argument("--question", required=True, help="the question")
    add_search_flags(search, skip=SEARCH_FLAGS_SKIPPED)
    search.add_argument("--json", action="store_true", help="print one JSON object instead of the trace")
    return parser


def _chunking(args: argparse.Namespace) -> ChunkingConfig:
    return ChunkingConfig(
        mode=args.chunking,
        max_tokens=args.max_tokens,
        overlap_tokens=args.overlap_tokens,
        sentence_splitter=args.sentence_splitter,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, checked before any work: a bad option, or a build ``--out`` that the library
    would refuse (:func:`qrag_core.long_index.check_output`: the current, home or root directory, one
    holding the document, a file, a user's directory) is an argparse error (exit status 2)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "build":
        try:
            check_output(args.out, args.overwrite, protect=[args.document])
        except UnsafeOutputError as err:
            parser.error(f"--out: {err}")
        try:
            _chunking(args).validate()
        except InvalidInputError as err:
            parser.error(str(err))
    else:
        try:
            from_flags(SearchOptions, args)
        except InvalidInputError as err:
            parser.error(str(err))
    return args


def _load_model(args: argparse.Namespace, partial_fingerprint: str | None = None) -> QRAG:
    """The model of ``--model`` on the backends of the flags; ``partial_fingerprint``: that of the unfinished
    build resumed (what ``--backend auto`` follows)."""
    model = QRAG.from_pretrained(args.model).eval()
    use_backends(model, args, partial_fingerprint)
    return model


def run_build(args: argparse.Namespace) -> int:
    document = read_text_file(args.document)
    model = _load_model(args, partial_fingerprint(args.out))  # a resumed build keeps the backend it began with
    chunking = _chunking(args)
    on_ray = args.engine == "ray"
    cache = None if args.no_cache or on_ray else shared_cache()
    encode_shards = (
        RayShardEncoder(model.action_encoder, args.workers, args.batch_size, cpus_per_worker=args.cpus_per_worker)
        if on_ray
        else None
    )
    start = time.perf_counter()
    index = build_long_index(
        model,
        document,
        args.out,
        doc_id=args.doc_id or args.document.name,
        chunking=chunking,
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        cache=cache,
        overwrite=args.overwrite,
        protect=[args.document],
        encode_shards=encode_shards,
    )
    print(f"indexed {len(index)} chunks into {args.out} in {time.perf_counter() - start:.1f}s")
    return 0


def run_search(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    index = DocumentIndex.load(args.index)
    load_s = time.perf_counter() - start
    model = _load_model(args)
    start = time.perf_counter()
    result = search(model, args.question, index, from_flags(SearchOptions, args))
    search_s = time.perf_counter() - start
    if args.json:
        evidence = [
            {
                "chunk_index": s.chunk.index,
                "doc_id": s.chunk.doc_id,
                "step": s.step,
                "q_value": s.q_value,
                "position": s.position,
                "start": s.chunk.start,
                "end": s.chunk.end,
                "text": s.chunk.text,
            }
            for s in result.chunks
        ]
        print(
            json.dumps(
                {
                    "question": args.question,
                    "evidence": evidence,
                    "load_s": load_s,
                    "search_s": search_s,
                }
            )
        )
    else:
        print(result.format())
        print(f"\nloaded {len(index)} chunks in {load_s:.2f}s, searched in {search_s:.2f}s")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    return run_reporting_errors("qrag-index", lambda: (run_build if args.command == "build" else run_search)(args))


if __name__ == "__main__":
    sys.exit(main())
