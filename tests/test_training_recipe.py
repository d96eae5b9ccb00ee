"""The default model's recipe script (training/train_default_model.py): stages, qrag-finetune arguments, record."""

from __future__ import annotations

import shlex
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import load_script


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_script("training/train_default_model.py")


def stages_of(recipe: ModuleType, argv: list[str]) -> list:
    return recipe.recipe_stages(recipe.build_parser().parse_args(argv))


def test_default_recipe_is_one_warm_start_from_the_base(recipe: ModuleType) -> None:
    (stage,) = stages_of(recipe, [])
    assert (stage.name, stage.data_seed, stage.init_from, stage.distractors) == ("warm_start", 0, None, 0)
    assert stage.phase_flags == ["--warm-start-steps", "2400"] and stage.seconds is None


def test_optional_stages_chain_on_fresh_data(recipe: ModuleType) -> None:
    argv = ["--continue-steps", "10", "--distractors-steps", "20", "--distractors-per-document", "4"]
    argv += ["--mistakes-steps", "30", "--rl-steps", "40", "--rl-seconds", "60"]
    stages = stages_of(recipe, argv)
    names = [s.name for s in stages]
    assert names == ["warm_start", "warm_start_2", "warm_start_distractors", "warm_start_mistakes", "soft_q"]
    assert [s.init_from for s in stages] == [None, *names[:-1]]
    assert [s.data_key for s in stages] == [(0, 0), (1, 0), (2, 4), (3, 0), (3, 0)]
    assert "--warm-start-mistakes" in stages[3].phase_flags and stages[4].seconds == 60


def test_finetune_arguments_start_from_the_previous_stage(recipe: ModuleType, tmp_path: Path) -> None:
    args = recipe.build_parser().parse_args(["--work-dir", str(tmp_path), "--continue-steps", "5", "--resume"])
    first, second = recipe.recipe_stages(args)
    (tmp_path / "warm_start_2").mkdir()
    base = recipe.finetune_arguments(args, first, Path("train.jsonl"), [Path("eval.jsonl")])
    more = recipe.finetune_arguments(args, second, Path("train1.jsonl"), [])
    assert base[:6] == ["--data", "train.jsonl", "--eval-data", "eval.jsonl", "--out", str(tmp_path / "warm_start")]
    assert all(flag in base for flag in recipe.MODEL_FLAGS) and "--init-from" not in base
    assert more[more.index("--init-from") + 1] == str(tmp_path / "warm_start" / recipe.MODEL_DIR)
    assert more[more.index("--warm-start-lr") + 1] == "3e-05"
    assert "--resume" in more and "--resume" not in base  # only stages with a run folder resume
    assert "--max-train-seconds" not in more


def test_recorded_script_leaves_out_flags_that_only_reuse_work(recipe: ModuleType) -> None:
    argv = ["--skip-stages", "2", "--continue-steps", "5", "--resume", "--skip-stages=1", "--work-dir", "w x"]
    command = recipe.recorded_script(argv)
    assert shlex.split(command) == [
        "python", "training/train_default_model.py", "--continue-steps", "5", "--work-dir", "w x"
    ]  # fmt: skip
