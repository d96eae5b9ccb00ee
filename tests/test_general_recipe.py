"""The general model's recipe (recipes/train_general_model.py): its data mixture, held-out split and stages."""

from __future__ import annotations

from pathlib import Path

import pytest

from qrag_core.data.examples import read_jsonl
from qrag_core.data.hotpotqa import iter_hotpotqa
from tests.conftest import load_script
from tests.test_data_builders import needs_data


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/train_general_model.py")


def test_stages_are_a_warm_start_then_optional_soft_q(recipe) -> None:
    args = recipe.build_parser().parse_args(["--warm-start-steps", "7", "--rl-steps", "3"])
    stages = recipe.recipe_stages(args)
    assert [s.name for s in stages] == ["warm_start", "soft_q"]
    warm, soft = (recipe.stage_config(args, s) for s in stages)
    assert (warm.warm_start_steps, warm.rl_steps) == (7, 0)
    assert (soft.warm_start_steps, soft.rl_steps, soft.lr) == (0, 3, args.rl_lr)
    assert [s.name for s in recipe.recipe_stages(recipe.build_parser().parse_args([]))] == ["warm_start"]


@pytest.mark.slow
@needs_data
def test_mixture_holds_collections_and_documents_and_no_test_or_held_out_question(
    recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipe, "BABILONG_REPLAY", {("qa1", "1k"): 2, ("qa2", "1k"): 2})
    monkeypatch.setattr(recipe, "NIAH_REPLAY_PER_TASK", 1)
    monkeypatch.setattr(recipe, "EVAL_BABILONG_PER_TASK", 1)
    train_file, (held_out_file, babilong_file) = recipe.build_data(tmp_path)
    train, held_out = read_jsonl(train_file, need_support=True), read_jsonl(held_out_file, need_support=True)
    test_ids = {ex.id for ex in iter_hotpotqa(split="test")}
    hotpot = [ex for ex in train if ex.extra.get("task") == "hotpotqa"]
    assert len(held_out) == recipe.HOTPOTQA_VALIDATION
    assert len(hotpot) == recipe.OPEN_DOMAIN_REPEATS * (907 - recipe.HOTPOTQA_VALIDATION)
    assert not {ex.id for ex in hotpot} & (test_ids | {ex.id for ex in held_out})
    assert all(not ex.ordered for ex in train if ex.extra.get("task") in ("hotpotqa", "musique"))
    documents = [ex for ex in train if ex.extra.get("task") not in ("hotpotqa", "musique")]
    assert len(documents) == 4 + 8 and all(ex.ordered for ex in documents)
    assert all(ex.extra.get("split") == "train" for ex in read_jsonl(babilong_file) + held_out)
