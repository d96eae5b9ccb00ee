"""Train the English Punkt sentence-boundary model qrag ships, on public-domain novels.

    OMP_NUM_THREADS=1 python recipes/train_punkt.py            # writes qrag_core/punkt_english/

Punkt (Kiss & Strunk 2006, as implemented by NLTK) learns abbreviations, collocations, frequent
sentence starters and the case statistics of words without labels. NLTK's own pretrained English
model is a separate download (only llama-index-core carries a copy offline), so qrag trains its own on
five of the six Project Gutenberg novels of the shared haystack data (public domain in the USA), and
holds out Pride and Prejudice (``1342-0.txt``), on which ``benchmarks/sentence_splitting.py`` measures
it. The parameters are written as NLTK's ``punkt_tab`` plain-text files (no pickle), which
:mod:`qrag_core.chunking` reads.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from nltk.tokenize.punkt import PunktTrainer

from qrag_core.chunking import SHIPPED_PUNKT_DIR
from qrag_core.cli import add_verbose_flag, run_tool
from qrag_core.data.haystack import haystack_books, strip_gutenberg

logger = logging.getLogger("train_punkt")

HELD_OUT = "1342-0.txt"
"""Pride and Prejudice, kept out of training to measure the model on."""


def write_params(params: object, out: Path) -> None:
    """Punkt parameters as the four ``punkt_tab`` files (one entry a line, tab-separated fields, sorted)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "abbrev_types.txt").write_text("".join(f"{a}\n" for a in sorted(params.abbrev_types)), encoding="utf-8")
    (out / "sent_starters.txt").write_text("".join(f"{s}\n" for s in sorted(params.sent_starters)), encoding="utf-8")
    (out / "collocations.tab").write_text(
        "".join(f"{a}\t{b}\n" for a, b in sorted(params.collocations)), encoding="utf-8"
    )
    (out / "ortho_context.tab").write_text(
        "".join(f"{word}\t{flags}\n" for word, flags in sorted(params.ortho_context.items())), encoding="utf-8"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=Path(__file__).name, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_PUNKT_DIR, help="directory to write (default: %(default)s)")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    trainer = PunktTrainer()
    start = time.perf_counter()
    books = [book for book in haystack_books() if book.name != HELD_OUT]
    for book in books:
        logger.info("training on %s", book.name)
        trainer.train(strip_gutenberg(book.read_text(encoding="utf-8-sig"), book.name), finalize=False)
    trainer.finalize_training()
    params = trainer.get_params()
    write_params(params, args.out)
    logger.info(
        "%d abbreviations, %d collocations, %d sentence starters, %d words with case statistics from %s in %.0f s; "
        "wrote %s",
        len(params.abbrev_types),
        len(params.collocations),
        len(params.sent_starters),
        len(params.ortho_context),
        ", ".join(b.name for b in books),
        time.perf_counter() - start,
        args.out,
    )


def main(argv: list[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
