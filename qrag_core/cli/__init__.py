"""Command-line tools: ``qrag-eval`` (evaluate retrieval on a JSONL file) and ``qrag-data`` (build benchmark data).

Every tool writes its results to stdout and its logs and progress bars to stderr. Every tool handles
errors the same way (:func:`run_reporting_errors`): a bad option gets argparse's ``prog: error:
message`` and exit status 2 before any work starts; bad input found later (a malformed data line,
a missing or undecodable file, a corrupt model) gets ``prog: error: message`` naming the file, line
and problem, and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from qrag_core.config import field_docs
from qrag_core.errors import QRAGError

INPUT_ERROR = 2
"""Exit status of a usage or input error (argparse's own for a bad option)."""
INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT), as shells report it."""

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


def run_reporting_errors(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command``; a QRAGError, OSError, UnicodeError or missing optional package becomes one line
    ``prog: error: message`` on stderr and exit status 2, Ctrl-C exit status 130."""
    try:
        return command() or 0
    except (QRAGError, OSError, UnicodeError, ImportError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return INPUT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def positive_int(text: str) -> int:
    """argparse ``type``: an integer ≥ 1."""
    value = _parse(int, text, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse ``type``: an integer ≥ 0."""
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def finite_float(text: str) -> float:
    """argparse ``type``: a finite number (not nan, inf or -inf)."""
    value = _parse(float, text, "a number")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _parse(kind: Callable[[str], int | float], text: str, what: str) -> int | float:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def _resolved(parser: argparse.ArgumentParser, flag: str, path: str | Path) -> Path:
    """``path`` made absolute (``~`` expanded); an argparse error when it cannot be."""
    try:
        return Path(path).expanduser().resolve()
    except (ValueError, RuntimeError, OSError) as err:  # a NUL byte, ~unknown-user, a symlink loop
        parser.error(f"{flag} {str(path)!r} is not a usable path: {err}")


def check_output_file(parser: argparse.ArgumentParser, flag: str, out: str | Path) -> None:
    """Refuse (argparse error) an output file name that is an existing directory (or no usable path)."""
    if _resolved(parser, flag, out).is_dir():
        parser.error(f"{flag} {out} is a directory; give a file name, e.g. {flag} {Path(out) / 'data.jsonl'}")


def _value_parser(annotation: Any) -> Callable[[str], Any]:
    """argparse ``type`` for a field annotation: int, float (finite), str, or one of them or None ("none")."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        parse = _value_parser(inner)

        def optional(text: str) -> Any:
            return None if text.lower() == "none" else parse(text)

        optional.__name__ = f"{inner.__name__} or none"
        return optional
    return finite_float if annotation is float else annotation


def add_dataclass_flags(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    cls: type,
    suppress_defaults: bool,
    skip: Sequence[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per dataclass field, its help the field's docstring plus the default.

    The flag is ``--field-name``, or the field's ``flag`` metadata where it has one; ``choices`` lists
    the values of the string fields that take only a few. With ``suppress_defaults``, a flag not
    given leaves no attribute (so a config keeps its own value).
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        shown = str(f.default).replace("%", "%%") if suppress_defaults else "%(default)s"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "help": f"{docs.get(f.name, '').replace('%', '%%')} (default: {shown})",
        }
        kwargs["default"] = argparse.SUPPRESS if suppress_defaults else f.default
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _value_parser(hints[f.name])
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if choices and f.name in choices:
                kwargs["choices"] = choices[f.name]
        group.add_argument(flag, **kwargs)
