"""Where the offline benchmark data lives (``../shared/data`` by default, configurable).

The data is never copied into the repository. :func:`data_dir` finds it, in this order:

1. ``$QRAG_DATA_DIR`` when set;
2. ``<repository>/../shared/data``, the repository found from this package's location;
3. ``./../shared/data`` relative to the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from qrag_core.errors import QRAGError

DATA_DIR_ENV = "QRAG_DATA_DIR"


class DataNotFoundError(QRAGError, FileNotFoundError):
    """The benchmark data directory, or a file expected inside it, does not exist."""


def _candidates() -> list[Path]:
    repo = Path(__file__).resolve().parents[2]
    return [repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"]


def data_dir() -> Path:
    """The benchmark data directory; DataNotFoundError saying where it looked when there is none."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise DataNotFoundError(f"${DATA_DIR_ENV} is {configured!r}, which is not a directory")
        return path
    for path in _candidates():
        if path.is_dir():
            return path
    looked = ", ".join(str(p) for p in _candidates())
    raise DataNotFoundError(
        f"benchmark data not found (looked in {looked}); set ${DATA_DIR_ENV} to the shared data directory"
    )


def data_file(*parts: str) -> Path:
    """A file or directory inside the data directory, which must exist."""
    path = data_dir().joinpath(*parts)
    if not path.exists():
        raise DataNotFoundError(f"{path} does not exist; is {DATA_DIR_ENV} pointing at the full shared data?")
    return path
