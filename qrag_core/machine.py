"""This machine in one line of words, as a model card and every benchmark result record it.

A measurement is only comparable with the machine it was made on, so the shipped model's card
(``recipes/train_default_model.py``) and every benchmark script (``benchmarks/harness.py``) describe
the machine with :func:`machine_description`: CPU model, cores, GPU, torch threads and torch version.
"""

from __future__ import annotations

import contextlib
import os
import platform

import torch


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_description(note: str = "") -> str:
    """CPU model, cores, GPU, torch threads and torch version, then ``note`` (e.g. other jobs running)."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    described = (
        f"{cpu_model()}, {os.cpu_count()} cores, {gpu}, {torch.get_num_threads()} torch thread(s), "
        f"torch {torch.__version__}"
    )
    return f"{described}; {note}" if note else described
