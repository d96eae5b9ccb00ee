"""``qrag-demo``: the shipped document, the BabiLong path, one-line errors, and the installed wheel."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qrag_core.cli import demo
from qrag_core.cli.demo import main
from qrag_core.data.demo import load_demo_document
from qrag_core.data.paths import DATA_DIR_ENV

REPO = Path(__file__).resolve().parents[1]


def test_the_shipped_document_is_small_attributed_and_holds_its_facts():
    demo = load_demo_document()
    assert (REPO / "qrag_core/demo_data/demo_document.json").stat().st_size < 100_000
    assert len(demo.support) == 2 and all(fact in demo.text for fact in demo.support)
    assert demo.answer == "kitchen" and demo.question == "Where is the football?"
    notice = (REPO / "qrag_core/demo_data/NOTICE.txt").read_text()
    assert "Creative Commons Attribution 3.0" in notice and "public domain" in notice


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--task", "qa2"], "benchmark data"),
        (["--model", "/no/such/model"], "/no/such/model"),
    ],
)
def test_errors_are_one_line_and_exit_2(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qrag-demo: error: ") and message in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["--beam", "0"], "argument --beam: must be a positive integer, got '0'"),
        (["--beam", "two"], "argument --beam: must be an integer, got 'two'"),
        (["--sample", "-1"], "argument --sample: must be an integer >= 0, got '-1'"),
    ],
)
def test_bad_options_are_usage_errors_before_anything_loads(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(demo, "run", lambda args: pytest.fail("the demo ran with a bad option"))
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == f"qrag-demo: error: {message}"


@pytest.mark.parametrize(
    ("raised", "status", "message"),
    [
        (KeyboardInterrupt(), 130, "qrag-demo: interrupted"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), 2, "qrag-demo: error: 'utf-8' codec"),
    ],
)
def test_interrupts_and_decoding_errors_are_one_line(raised, status, message, monkeypatch, capsys):
    def fail(args):
        raise raised

    monkeypatch.setattr(demo, "run", fail)
    assert main([]) == status
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err


@pytest.mark.slow
def test_demo_on_the_shipped_document_finds_both_facts(capsys):
    assert main(["--steps", "4"]) == 0
    out = capsys.readouterr().out
    assert "Document: the shipped demo document" in out
    assert "Q: Where is the football?" in out and out.count("  step ") == 4
    assert "Support facts found: 2/2" in out


@pytest.mark.slow
def test_wheel_installed_in_a_fresh_venv_runs_the_demo_without_repository_or_data(tmp_path):
    """Build the wheel, install it with the constraints file into a new venv, run qrag-demo from elsewhere."""
    source = tmp_path / "src"
    junk = shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "runs", "out", "*.egg-info", "__pycache__", ".*cache"
    )
    shutil.copytree(REPO, source, ignore=junk)
    started = time.perf_counter()
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            tmp_path / "dist",
            source,
        ]
    )
    wheel = next((tmp_path / "dist").glob("qrag-*.whl"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv])
    pip = [venv / "bin" / "python", "-m", "pip", "install", "-q", "-c", REPO / "constraints.txt"]
    run([*pip, "torch==2.13.0"])
    run([*pip, wheel])
    installed = time.perf_counter()
    elsewhere = tmp_path / "home"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in (DATA_DIR_ENV, "PYTHONPATH")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", QRAG_CACHE_DIR=str(tmp_path / "cache"))
    result = run([venv / "bin" / "qrag-demo"], cwd=elsewhere, env=env)
    assert "Support facts found: 2/2" in result.stdout, result.stdout
    failed = run([venv / "bin" / "qrag-demo", "--task", "qa2"], cwd=elsewhere, env=env, check=False)
    assert failed.returncode == 2 and failed.stderr.startswith("qrag-demo: error: "), failed.stderr
    assert "Traceback" not in failed.stderr
    print(
        f"wheel built and installed in {installed - started:.0f}s, demo ran in {time.perf_counter() - installed:.0f}s"
    )


def run(command: list, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """Run a command; without ``env``, in this environment minus PYTHONPATH (which would put the checkout,
    with its egg-info, in front of what a fresh venv has installed)."""
    kwargs.setdefault("env", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=1200, **kwargs)
    if check:
        assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_demo_script_runs_pip_only_when_the_install_inputs_change(tmp_path):
    """scripts/demo.sh with a stand-in .venv whose python logs each call: pip runs once per change."""
    for name in ("scripts/demo.sh", "pyproject.toml", "constraints.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    log = tmp_path / "calls.log"
    (bin_dir / "python").write_text(f'#!/bin/sh\necho "python $*" >> {log}\n')
    (bin_dir / "qrag-demo").write_text(f'#!/bin/sh\necho "qrag-demo $*" >> {log}\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)

    def pip_calls() -> list[str]:
        log.unlink(missing_ok=True)
        run(["bash", tmp_path / "scripts" / "demo.sh", "--steps", "2"])
        calls = log.read_text().splitlines()
        assert calls[-1] == "qrag-demo --steps 2"
        return [call for call in calls if " pip install " in call]

    first = pip_calls()
    assert len(first) == 2 and "torch==2.13.0" in first[0] and first[1].endswith("-e .")
    assert all("-c constraints.txt" in call for call in first)
    assert pip_calls() == [], "nothing changed: no pip"
    (tmp_path / "constraints.txt").write_text((REPO / "constraints.txt").read_text() + "numpy<3\n")
    assert len(pip_calls()) == 2, "the constraints changed: pip again"
