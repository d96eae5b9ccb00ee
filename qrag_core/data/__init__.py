"""Datasets: the JSONL example format of SPEC §4 and builders for the benchmark suites (SPEC §5)."""

from qrag_core.data.babilong import build_babilong, iter_babilong
from qrag_core.data.examples import Example, iter_jsonl, read_jsonl, write_jsonl
from qrag_core.data.paths import data_dir

__all__ = ["Example", "build_babilong", "data_dir", "iter_babilong", "iter_jsonl", "read_jsonl", "write_jsonl"]
