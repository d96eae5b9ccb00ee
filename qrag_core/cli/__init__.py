"""Command-line tools: ``qrag-eval`` (evaluate retrieval on a JSONL file) and ``qrag-data`` (build benchmark data).

Every tool writes its results to stdout and its logs and progress bars to stderr.
"""

from __future__ import annotations

import logging
import sys

CHATTY_LOGGERS = ("bm25s",)
"""Third-party loggers that log every call at DEBUG level; kept at WARNING unless ``verbose``."""


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
