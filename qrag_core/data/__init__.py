"""Datasets: the JSONL example format of SPEC §4 and builders for the benchmark suites."""

from qrag_core.data.examples import Example, iter_jsonl, read_jsonl, write_jsonl

__all__ = ["Example", "iter_jsonl", "read_jsonl", "write_jsonl"]
