"""Datasets: the JSONL example format (docs/data-format.md) and builders for the benchmark suites."""

from qrag_core.data.babilong import build_babilong, iter_babilong
from qrag_core.data.examples import Example, iter_jsonl, read_jsonl, write_jsonl
from qrag_core.data.hotpotqa import build_hotpotqa, iter_hotpotqa
from qrag_core.data.musique import build_musique, iter_musique
from qrag_core.data.paths import data_dir
from qrag_core.data.ruler import NIAH_TASKS, build_niah, iter_niah

__all__ = [
    "NIAH_TASKS",
    "Example",
    "build_babilong",
    "build_hotpotqa",
    "build_musique",
    "build_niah",
    "data_dir",
    "iter_babilong",
    "iter_hotpotqa",
    "iter_jsonl",
    "iter_musique",
    "iter_niah",
    "read_jsonl",
    "write_jsonl",
]
