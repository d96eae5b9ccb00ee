"""Command-line tools: ``qrag-eval`` (evaluate retrieval on a JSONL file) and ``qrag-data`` (build benchmark data).

Every tool writes its results to stdout and its logs and progress bars to stderr.
"""

from __future__ import annotations

import logging
import sys

CHATTY_LOGGERS = ("bm25s",)
"""Third-party loggers that log every call at DEBUG level (bm25s forces its level on import)."""


class _QuietThirdParty(logging.Filter):
    """Drops records below WARNING from :data:`CHATTY_LOGGERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.name.split(".")[0] not in CHATTY_LOGGERS


def setup_logging(verbose: bool = False) -> None:
    """Log to stderr: INFO by default; DEBUG, third-party chatter included, with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietThirdParty())
