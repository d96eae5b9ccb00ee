"""Every command-line tool follows the same conventions (qrag_core.cli): ``--help`` explains every option,
``--verbose`` means debug logging, a bad option exits 2 before any work, bad input later is one line
``prog: error: message`` and exit 2, and the shell recipes do the same."""

from __future__ import annotations

import argparse
import importlib
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from qrag_core.cli import CHECK_FAILED, INPUT_ERROR, OK
from tests.conftest import REPO, load_script

QRAG_COMMANDS = ("data", "demo", "evaluate", "finetune", "index")
"""The qrag-* commands, held to every convention."""
SCRIPTS = tuple(
    sorted(
        str(path.relative_to(REPO))
        for folder in ("benchmarks", "recipes")
        for path in (REPO / folder).glob("*.py")
        if path.name != "harness.py"
    )
)
SHELL_RECIPES = tuple(sorted(path.name for path in (REPO / "recipes").glob("*.sh")))


def tool(name: str) -> ModuleType:
    return load_script(name) if name.endswith(".py") else importlib.import_module(f"qrag_core.cli.{name}")


def parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """``parser`` and its subcommands' parsers."""
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += parsers(sub)
    return found


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for p in parsers(parser) for a in p._actions if not isinstance(a, argparse._SubParsersAction)]


def test_the_exit_statuses_are_the_documented_ones() -> None:
    assert (OK, CHECK_FAILED, INPUT_ERROR) == (0, 1, 2)


@pytest.mark.parametrize("name", [*QRAG_COMMANDS, *SCRIPTS])
def test_help_explains_every_option(name: str) -> None:
    parser = tool(name).build_parser()
    unexplained = [a.option_strings or [a.dest] for a in options(parser) if not (a.help and a.help.strip())]
    assert not unexplained, f"{name}: options without help: {unexplained}"
    assert parser.description, f"{name}: --help says nothing about what the tool does"


@pytest.mark.parametrize("name", [*QRAG_COMMANDS, *SCRIPTS])
def test_verbose_is_debug_logging_everywhere(name: str) -> None:
    helps = {a.help for a in options(tool(name).build_parser()) if "--verbose" in a.option_strings}
    assert helps == {"debug logging on stderr, third-party libraries' too (default: info)"}, name


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_bad_option_is_a_usage_error_naming_the_script(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tool(name).main(["--no-such-option"])
    assert exit_info.value.code == INPUT_ERROR
    assert f"{Path(name).name}: error: " in capsys.readouterr().err


def test_a_badly_written_cell_is_refused_before_any_work(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        tool("benchmarks/default_model.py").main(["--cells", "babilong:4k", "niah"])
    assert exit_info.value.code == INPUT_ERROR
    assert "default_model.py: error: argument --cells: cell 'niah': niah needs a length" in capsys.readouterr().err


def test_bad_input_found_later_is_one_line_and_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("step,phase\n", encoding="utf-8")
    code = tool("recipes/learning_curves.py").main(["--run", f"r={run}", "--out", str(tmp_path / "curves")])
    err = capsys.readouterr().err
    assert code == INPUT_ERROR
    assert err == f"learning_curves.py: error: {run / 'metrics.csv'} holds no rows\n"
    code = tool("recipes/learning_curves.py").main(["--run", f"r={tmp_path / 'missing'}", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == INPUT_ERROR and err.startswith("learning_curves.py: error: ") and err.count("\n") == 1


@pytest.mark.parametrize("name", SHELL_RECIPES)
def test_shell_recipes_explain_themselves_and_refuse_wrong_arguments(name: str) -> None:
    script = REPO / "recipes" / name
    shown = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=30)
    assert shown.returncode == OK and shown.stdout.startswith("Reproduces ") and "set -euo" not in shown.stdout
    # babilong.sh needs a task and a run name, the others take no arguments: one argument is wrong for all
    wrong = subprocess.run(["bash", str(script), "qa2"], capture_output=True, text=True, timeout=30)
    assert wrong.returncode == INPUT_ERROR and wrong.stderr.startswith(f"{name}: error: "), wrong.stderr
    assert wrong.stderr.count("\n") == 1 and not wrong.stdout
