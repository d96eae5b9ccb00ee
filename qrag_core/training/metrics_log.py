"""The metrics log of a training run: a CSV file always, TensorBoard events when tensorboard is installed.

One row per optimiser step (plus a step-0 row holding the evaluation before training). On resume
the rows after the checkpoint (and a row a kill cut short) are dropped and written again, so a resumed
run's file ends with the same rows as an uninterrupted one (apart from the timing columns, which
measure this machine).
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qrag_core.atomic import write_file

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.csv"
TIMING_FIELDS = ("train_seconds", "train_cpu_seconds", "wall_seconds")


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return format(value, ".8g")
    return str(value)


class MetricsLog:
    """Appends metric rows to ``directory/metrics.csv`` (and TensorBoard) and keeps them in memory."""

    def __init__(self, fields: Sequence[str], directory: Path | None = None, resume_step: int | None = None) -> None:
        self.fields = list(fields)
        self.rows: list[dict[str, str]] = []
        self.path = directory / METRICS_FILE if directory is not None else None
        self._writer = None
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.is_file():
            kept = self._complete_rows(resume_step)
            if kept and list(kept[0]) != self.fields:
                logger.warning("%s has other columns than this run; rewriting it", self.path)
            self.rows = [{k: row.get(k, "") for k in self.fields} for row in kept]
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=self.fields)
        writer.writeheader()
        writer.writerows(self.rows)
        write_file(self.path, text.getvalue())  # atomic: a kill now never loses the kept rows
        self._writer = _tensorboard_writer(self.path.parent / "tensorboard", purge_step=resume_step)

    def _complete_rows(self, last_step: int) -> list[dict[str, str]]:
        """The rows of the existing file up to ``last_step``, without a row that a kill cut short."""
        assert self.path is not None
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        kept = []
        for row in rows:
            if None in row or None in row.values() or not row.get("step", "").isdigit():
                logger.warning("%s: dropping an incomplete row (the run was killed while writing it)", self.path)
                continue
            if int(row["step"]) <= last_step:
                kept.append(row)
        return kept

    def write(self, values: dict[str, Any]) -> None:
        unknown = set(values) - set(self.fields)
        if unknown:
            raise KeyError(f"metrics {sorted(unknown)} are not columns of the log")
        row = {k: _format(values.get(k)) for k in self.fields}
        self.rows.append(row)
        if self.path is None:
            return
        with open(self.path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=self.fields).writerow(row)
        if self._writer is not None:
            step = int(values["step"])
            for key, value in values.items():
                if key != "step" and isinstance(value, int | float) and not isinstance(value, bool):
                    self._writer.add_scalar(key, value, step)
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def _tensorboard_writer(directory: Path, purge_step: int | None):  # noqa: ANN202 - optional dependency
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        logger.info("tensorboard is not installed; metrics go to the CSV file only")
        return None
    return SummaryWriter(str(directory), purge_step=None if purge_step is None else purge_step + 1)
