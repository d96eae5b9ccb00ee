"""Command-line tools: ``qrag-eval`` (evaluate retrieval on a JSONL file) and ``qrag-data`` (build benchmark data).

Every tool writes its results to stdout and its logs and progress bars to stderr.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default, DEBUG with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
