"""Learning curves of qrag-finetune runs: fact EM against training time and examples seen.

Reads the ``metrics.csv`` of one or more runs and writes, under a common prefix,
``PREFIX.csv`` (every evaluation row of every run), ``PREFIX.md`` (the same as a Markdown table)
and ``PREFIX.png`` (fact EM against training minutes and against examples seen, one line per run
and evaluation set)::

    python recipes/learning_curves.py --run "warm start + soft-Q=runs/qa2" \\
        --run "warm start only=runs/qa2_ws" --out benchmarks/results/training_qa2 --title "BabiLong QA2"
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Sequence
from pathlib import Path

from qrag_core.atomic import write_file
from qrag_core.cli import add_verbose_flag, run_tool
from qrag_core.errors import InvalidInputError

COLUMNS = [
    "run",
    "eval_set",
    "step",
    "phase",
    "examples",
    "train_minutes",
    "train_cpu_minutes",
    "wall_minutes",
    "fact_em",
    "fact_recall",
]
"""Long format: one row per run, evaluated step and evaluation set (train_cpu_minutes is blank in old runs)."""


def evaluation_rows(name: str, metrics_csv: Path) -> list[dict[str, object]]:
    """One row per (evaluated step, evaluation set) of a run's metrics file."""
    with open(metrics_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise InvalidInputError(f"{metrics_csv} holds no rows")
    sets = [
        key[len("eval_") : -len("_fact_em")] for key in rows[0] if key.startswith("eval_") and key.endswith("_fact_em")
    ]
    out = []
    for row in rows:
        for eval_set in sets:
            em = row[f"eval_{eval_set}_fact_em"]
            if em == "":
                continue
            out.append(
                {
                    "run": name,
                    "eval_set": eval_set,
                    "step": int(row["step"]),
                    "phase": row["phase"],
                    "examples": int(row["examples"]),
                    "train_minutes": round(float(row["train_seconds"]) / 60, 2),
                    "train_cpu_minutes": round(float(row["train_cpu_seconds"]) / 60, 2)
                    if row.get("train_cpu_seconds")
                    else "",
                    "wall_minutes": round(float(row["wall_seconds"]) / 60, 2),
                    "fact_em": float(em),
                    "fact_recall": float(row[f"eval_{eval_set}_fact_recall"]),
                }
            )
    return out


def markdown_table(rows: list[dict[str, object]], title: str) -> str:
    """Wide table: one line per run and evaluated step, fact EM (recall) of each evaluation set side by side."""
    sets = list(dict.fromkeys(str(r["eval_set"]) for r in rows))
    head = [
        "run",
        "step",
        "phase",
        "examples",
        "train min (wall)",
        "train min (CPU)",
        *[f"{s} EM (recall)" for s in sets],
    ]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    points = dict.fromkeys((r["run"], r["step"]) for r in rows)
    for run, step in points:
        at = {r["eval_set"]: r for r in rows if r["run"] == run and r["step"] == step}
        first = next(iter(at.values()))
        cells = [run, step, first["phase"], first["examples"], first["train_minutes"], first["train_cpu_minutes"]]
        cells += [f"{at[s]['fact_em']:.2f} ({at[s]['fact_recall']:.3f})" if s in at else "" for s in sets]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_outputs(rows: list[dict[str, object]], prefix: Path, title: str) -> None:
    prefix.parent.mkdir(parents=True, exist_ok=True)
    with open(prefix.with_suffix(".csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    write_file(prefix.with_suffix(".md"), markdown_table(rows, title))

    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    figure, (by_time, by_examples) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    for run, eval_set in dict.fromkeys((r["run"], r["eval_set"]) for r in rows):
        part = [r for r in rows if r["run"] == run and r["eval_set"] == eval_set]
        style = {
            "color": f"C{runs.index(run)}",
            "linestyle": ("-", "--", ":", "-.")[sets.index(eval_set) % 4],
            "marker": "o",
            "label": f"{run} — {eval_set}",
        }
        by_time.plot([r["train_minutes"] for r in part], [r["fact_em"] for r in part], **style)
        by_examples.plot([r["examples"] for r in part], [r["fact_em"] for r in part], **style)
    by_time.set_xlabel("training time (minutes, 2-core CPU shared with other jobs)")
    by_examples.set_xlabel("training examples seen (episodes)")
    by_time.set_ylabel("fact EM (greedy, T = 4)")
    for axis in (by_time, by_examples):
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    by_examples.legend(fontsize=7, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(prefix.with_suffix(".png"), dpi=110)
    plt.close(figure)


def run_argument(text: str) -> tuple[str, Path]:
    """argparse ``type`` of ``--run NAME=DIR``: the run's name and output directory."""
    name, sep, directory = text.rpartition("=")
    if not sep or not name or not directory:
        raise argparse.ArgumentTypeError(f"needs NAME=DIR, got {text!r}")
    return name, Path(directory)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=Path(__file__).name, description="Learning curves (fact EM vs time and examples) of training runs."
    )
    parser.add_argument(
        "--run",
        action="append",
        required=True,
        type=run_argument,
        metavar="NAME=DIR",
        help="a run's name and output directory (the one holding metrics.csv); repeat for each run",
    )
    parser.add_argument("--out", required=True, help="output prefix; writes PREFIX.csv, PREFIX.md and PREFIX.png")
    parser.add_argument("--title", default="qrag-finetune learning curves", help="plot and table title")
    add_verbose_flag(parser)
    return parser


def run(args: argparse.Namespace) -> None:
    rows = [row for name, directory in args.run for row in evaluation_rows(name, directory / "metrics.csv")]
    write_outputs(rows, Path(args.out), args.title)
    print(Path(args.out).with_suffix(".md").read_text())


def main(argv: Sequence[str] | None = None) -> int:
    return run_tool(build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
