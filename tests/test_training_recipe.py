"""The default model's recipe script (recipes/train_default_model.py): stages, their TrainingConfig, record."""

from __future__ import annotations

import inspect
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from qrag_core import QRAGConfig
from qrag_core.training import train
from tests.conftest import load_script, make_tiny_model


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    return load_script("recipes/train_default_model.py")


def stages_of(recipe: ModuleType, argv: list[str]) -> list:
    return recipe.recipe_stages(recipe.build_parser().parse_args(argv))


def test_default_recipe_is_one_warm_start_from_the_base(recipe: ModuleType) -> None:
    (stage,) = stages_of(recipe, [])
    assert (stage.name, stage.data_seed, stage.init_from, stage.distractors) == ("warm_start", 0, None, 0)
    assert stage.phase == {"warm_start_steps": 2400} and stage.seconds is None


def test_optional_stages_chain_on_fresh_data(recipe: ModuleType) -> None:
    argv = ["--continue-steps", "10", "--distractors-steps", "20", "--distractors-per-document", "4"]
    argv += ["--mistakes-steps", "30", "--rl-steps", "40", "--rl-seconds", "60"]
    stages = stages_of(recipe, argv)
    names = [s.name for s in stages]
    assert names == ["warm_start", "warm_start_2", "warm_start_distractors", "warm_start_mistakes", "soft_q"]
    assert [s.init_from for s in stages] == [None, *names[:-1]]
    assert [s.data_key for s in stages] == [(0, 0), (1, 0), (2, 4), (3, 0), (3, 0)]
    assert "warm_start_mistakes" in stages[3].phase and stages[4].seconds == 60


def test_stage_config_is_the_common_settings_then_the_phase(recipe: ModuleType) -> None:
    args = recipe.build_parser().parse_args(["--continue-steps", "5", "--rl-steps", "7", "--batch-size", "4"])
    first, second, soft_q = recipe.recipe_stages(args)
    base = recipe.stage_config(args, first)
    assert (base.warm_start_steps, base.rl_steps, base.batch_size, base.episode_steps) == (2400, 0, 4, 5)
    assert base.checkpoint_every == base.eval_every == 400 and base.max_train_seconds is None
    more = recipe.stage_config(args, second)
    assert (more.warm_start_steps, more.warm_start_lr) == (5, 3e-5)
    rl = recipe.stage_config(args, soft_q)
    assert (rl.warm_start_steps, rl.rl_steps, rl.lr, rl.episode_steps) == (0, 7, 1e-5, None)
    assert recipe.changed_settings(rl)["rl_steps"] == 7 and "adam_eps" not in recipe.changed_settings(rl)


def test_a_stage_trains_from_the_previous_stage_and_resumes_only_with_a_checkpoint(
    recipe: ModuleType, minilm_tokenizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tiny_model = make_tiny_model(minilm_tokenizer, QRAGConfig(freeze_action_encoder=False))  # saved whole
    args = recipe.build_parser().parse_args(["--work-dir", str(tmp_path), "--continue-steps", "5", "--resume"])
    _, second = recipe.recipe_stages(args)
    tiny_model.save_pretrained(tmp_path / "warm_start" / recipe.MODEL_DIR)
    data = tmp_path / "train.jsonl"
    data.write_text('{"question": "q?", "chunks": ["a.", "b."], "support": [1]}\n')
    calls = []

    def record(*positional, **kw):
        inspect.signature(train).bind(*positional, **kw)  # the real train() takes these arguments
        calls.append((positional[0], kw))

    monkeypatch.setattr(recipe, "train", record)
    recipe.run_stage(args, second, data, [data])
    model, options = calls[0]
    assert model.state_encoder.fingerprint() == tiny_model.state_encoder.fingerprint()
    assert options["out_dir"] == tmp_path / "warm_start_2"
    assert options["data_info"]["init_from"] == str(tmp_path / "warm_start" / recipe.MODEL_DIR)
    assert (options["resume"], options["overwrite"]) == (False, True)  # no checkpoint yet: the stage starts over
    (tmp_path / "warm_start_2" / recipe.CHECKPOINT_DIR).mkdir(parents=True)
    recipe.run_stage(args, second, data, [data])
    assert (calls[1][1]["resume"], calls[1][1]["overwrite"]) == (True, False)


def test_recorded_script_leaves_out_flags_that_only_reuse_work(recipe: ModuleType) -> None:
    argv = ["--skip-stages", "2", "--continue-steps", "5", "--resume", "--skip-stages=1", "--work-dir", "w x"]
    command = recipe.recorded_script(argv)
    assert shlex.split(command) == [
        "python", "recipes/train_default_model.py", "--continue-steps", "5", "--work-dir", "w x"
    ]  # fmt: skip
