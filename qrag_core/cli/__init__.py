"""What every command-line tool of the repository shares: logging, error reporting, exit statuses, option types.

The tools are the ``qrag-*`` commands (``qrag-data``, ``qrag-demo``, ``qrag-eval``, ``qrag-finetune``,
``qrag-index``; the modules of this package) and the scripts of ``benchmarks/`` and ``recipes/``. Each
writes its results to stdout and its logs and progress bars to stderr (:func:`setup_logging`;
``--verbose`` adds debug logging, :func:`add_verbose_flag`), explains every option in ``--help``, and
ends with one of these exit statuses (:func:`run_reporting_errors`):

- 0 (:data:`OK`): done;
- 1 (:data:`CHECK_FAILED`): done, but a check the tool makes failed (``benchmarks/time_eval.py`` over
  its time limit);
- 2 (:data:`INPUT_ERROR`): a bad option, reported by argparse as ``prog: error: message`` before any
  work starts; or bad input found later (a malformed data line, a missing or undecodable file, a
  corrupt model: any :class:`~qrag_core.errors.QRAGError`), reported as one line ``prog: error:
  message`` naming the file, line and problem, never a traceback;
- 130 (:data:`INTERRUPTED`): stopped with Ctrl-C.

:func:`run_tool` is a whole ``main`` that does all of this for a parser and a function of its options.

Options share their checked types (:func:`positive_int`, :func:`finite_float`, …) and the flags of a
config dataclass are generated from its field docstrings (:func:`add_dataclass_flags`), the search
flags of ``qrag-demo`` and ``qrag-index search`` from :class:`~qrag_core.search_options.SearchOptions`
(:func:`add_search_flags`, read back by :func:`from_flags`); the encoding backends of ``qrag-index`` and
``qrag-eval`` come from :func:`add_backend_flags` and :func:`use_backends`.
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
from typing import TYPE_CHECKING, Any, TypeVar

from qrag_core.config import field_docs
from qrag_core.errors import QRAGError
from qrag_core.onnx_backend import BACKENDS, default_index_backend
from qrag_core.search_options import CHOICES, SearchOptions
from qrag_core.vector_index import VECTOR_INDEXES

if TYPE_CHECKING:
    from qrag_core.model import QRAG

logger = logging.getLogger(__name__)
T = TypeVar("T")

OK = 0
"""Exit status of a tool that did what was asked."""
CHECK_FAILED = 1
"""Exit status of a tool that finished but whose own check failed (e.g. a timing over its limit)."""
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


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: …)" to a flag's help only where it says something: not when the help already names
    its default, nor for a default of None or False (a required flag, a switch, "not given")."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action) or text


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Log to stderr: INFO by default; only warnings with ``quiet``; DEBUG, third-party chatter included,
    with ``verbose``."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose:
        for handler in logging.getLogger().handlers:
            handler.addFilter(_QuietThirdParty())


def add_verbose_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--verbose``, the same in every tool: debug logging for :func:`setup_logging`."""
    parser.add_argument(
        "--verbose", action="store_true", help="debug logging on stderr, third-party libraries' too (default: info)"
    )


def add_threads_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: int | None = 1) -> None:
    """``--threads``: torch's CPU threads, for ``torch.set_num_threads`` (``default`` None: torch's choice)."""
    shown = "torch's choice" if default is None else default
    parser.add_argument("--threads", type=positive_int, default=default, help=f"torch CPU threads (default: {shown})")


def add_machine_note_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    help: str = "recorded with the machine, e.g. other jobs running",
) -> None:
    """``--machine-note``: free text (e.g. other jobs running) that
    :func:`qrag_core.machine.machine_description` adds to the machine recorded with measured numbers."""
    parser.add_argument("--machine-note", default="", help=help)


def run_reporting_errors(prog: str, command: Callable[[], int | None]) -> int:
    """Run ``command`` and return its exit status (None: :data:`OK`); a QRAGError, OSError, UnicodeError
    or missing optional package becomes one line ``prog: error: message`` on stderr and
    :data:`INPUT_ERROR`, Ctrl-C :data:`INTERRUPTED`."""
    try:
        return command() or OK
    except (QRAGError, OSError, UnicodeError, ImportError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return INPUT_ERROR
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return INTERRUPTED


def run_tool(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], int | None],
    argv: Sequence[str] | None = None,
    quiet: bool = False,
) -> int:
    """A tool's whole ``main``: parse ``argv`` (None: the command line), log as ``--verbose`` says
    (only warnings with ``quiet``), and ``run`` the parsed options, reporting errors as
    :func:`run_reporting_errors` does under the parser's ``prog``."""
    args = parser.parse_args(argv)
    setup_logging(args.verbose, quiet)
    return run_reporting_errors(parser.prog, lambda: run(args))


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


def non_negative_float(text: str) -> float:
    """argparse ``type``: a finite number ≥ 0."""
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """argparse ``type``: a number between 0 and 1."""
    value = finite_float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text!r}")
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


def _value_parser(annotation: Any, positive: bool = False) -> Callable[[str], Any]:
    """argparse ``type`` for a field annotation: int (``positive``: ≥ 1), float (finite), str, or one of them
    or None ("none")."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (inner,) = [a for a in typing.get_args(annotation) if a is not type(None)]
        parse = _value_parser(inner, positive)

        def optional(text: str) -> Any:
            return None if text.lower() == "none" else parse(text)

        optional.__name__ = f"{inner.__name__} or none"
        return optional
    if annotation is int and positive:
        return positive_int
    return finite_float if annotation is float else annotation


def add_dataclass_flags(
    group: argparse._ArgumentGroup | argparse.ArgumentParser,
    cls: type,
    suppress_defaults: bool,
    skip: Sequence[str] = (),
    choices: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per dataclass field, its help the field's docstring plus the default.

    The flag is ``--field-name``, or the field's ``flag`` metadata where it has one; an integer field
    with ``positive`` metadata takes only integers ≥ 1; ``choices`` lists the values of the string
    fields that take only a few. With ``suppress_defaults``, a flag not given leaves no attribute (so
    a config keeps its own value).
    """
    docs, hints = field_docs(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        shown = str(f.default).replace("%", "%%") if suppress_defaults else "%(default)s"
        text = docs.get(f.name, "").replace("%", "%%")
        # a None default is explained by the field's docstring ("none: …"), not by "(default: None)"
        kwargs: dict[str, Any] = {"dest": f.name, "help": text if f.default is None else f"{text} (default: {shown})"}
        kwargs["default"] = argparse.SUPPRESS if suppress_defaults else f.default
        if hints[f.name] is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _value_parser(hints[f.name], f.metadata.get("positive", False))
            kwargs["metavar"] = flag.lstrip("-").replace("-", "_").upper()
            if choices and f.name in choices:
                kwargs["choices"] = choices[f.name]
        group.add_argument(flag, **kwargs)


def add_search_flags(parser: argparse.ArgumentParser, skip: Sequence[str] = ()) -> None:
    """A group of flags for the :class:`~qrag_core.search_options.SearchOptions` (``--steps``, ``--beam``, …),
    read back with ``from_flags(SearchOptions, args)``; an option not given takes the model's default."""
    group = parser.add_argument_group("search options")
    add_dataclass_flags(
        group,
        SearchOptions,
        suppress_defaults=False,
        skip=skip,
        choices={**CHOICES, "vector_index": VECTOR_INDEXES},
    )


def from_flags(cls: type[T], args: argparse.Namespace) -> T:
    """The dataclass ``cls`` made from the flags :func:`add_dataclass_flags` added (those given or defaulted)."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)})


AUTO_BACKEND = "auto"
"""``--backend`` of the index tool's build (its default): :func:`~qrag_core.onnx_backend.default_index_backend`
for a new index, the backend it was begun with for a resumed one."""


def add_backend_flags(parser: argparse.ArgumentParser, chunk_note: str | None, auto: bool = False) -> None:
    """``--backend`` (what computes the chunk embeddings; ``chunk_note`` says what that means for the tool; None:
    no such flag, for a tool that only reads stored chunk vectors) and ``--state-backend`` (what computes the
    states at search time), applied by :func:`use_backends`. ``auto``: offer :data:`AUTO_BACKEND`, the default."""
    if chunk_note is not None:
        note = (
            f"; {AUTO_BACKEND}: the fastest within 0.01 fact EM of float32 on this CPU, i.e. torch-bf16 with AMX, else "
            "onnx-int8 where ONNX Runtime is installed, else torch-bf16 with AVX-512 BF16, else torch (a resumed "
            "build keeps the backend it began with)"
            if auto
            else ""
        )
        parser.add_argument(
            "--backend",
            choices=(AUTO_BACKEND, *BACKENDS) if auto else BACKENDS,
            default=AUTO_BACKEND if auto else "torch",
            help=f"what computes the chunk embeddings: torch; torch-fp16 (float16, for CUDA GPUs); torch-bf16 "
            f"(bfloat16, fastest on CPUs with AMX or AVX-512 BF16); or ONNX Runtime float32 / int8 (faster on other "
            f"CPUs, needs qrag[onnx]){note}; {chunk_note}",
        )
    parser.add_argument(
        "--state-backend",
        choices=BACKENDS,
        default="torch",
        help="what computes the state embeddings (question + chunks found) at each search step: torch, or an "
        "ONNX Runtime copy of the state encoder (float32: the same selections, faster on CPU; int8: faster "
        "still, selections may differ), torch-bf16 on a CPU with AMX or AVX-512 BF16, or torch-fp16 on a CUDA GPU",
    )


def use_backends(model: QRAG, args: argparse.Namespace, partial_fingerprint: str | None = None) -> None:
    """Set the encoders of ``model`` to the backends :func:`add_backend_flags` parsed into ``args`` (a tool without
    ``--backend`` leaves the action encoder's).

    :data:`AUTO_BACKEND` resolves to the backend whose vectors have ``partial_fingerprint`` (an unfinished build
    being resumed), or, for a new index, to :func:`~qrag_core.onnx_backend.default_index_backend` (the fastest
    backend within 0.01 fact EM of float32 on this kind of CPU)."""
    backend = getattr(args, "backend", None)
    if backend == AUTO_BACKEND:
        encoder = model.action_encoder
        resumed = None if partial_fingerprint is None else encoder.backend_of(partial_fingerprint)
        backend = resumed or default_index_backend(encoder.device)
        logger.info("encoding backend: %s", backend)
    if backend is not None:
        model.action_encoder.use_backend(backend)
    model.state_encoder.use_backend(args.state_backend)
