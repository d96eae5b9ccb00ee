"""The general model's recipe (recipes/train_general_model.py): its data mixture, held-out split and stages."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qrag_core import QRAG
from qrag_core.data.examples import read_jsonl
from qrag_core.data.hotpotqa import iter_hotpotqa
from tests.conftest import load_script, make_tiny_model
from tests.test_data_builders import needs_data


@pytest.fixture(scope="module")
def recipe():
    return load_script("recipes/train_general_model.py")


def test_stages_are_two_warm_starts_then_optional_soft_q(recipe) -> None:
    argv = ["--warm-start-steps", "7", "--hard-distractor-steps", "5", "--rl-steps", "3"]
    args = recipe.build_parser().parse_args(argv)
    stages = recipe.recipe_stages(args)
    assert [s.name for s in stages] == ["warm_start", "hard_distractors", "soft_q"]
    assert [s.data for s in stages] == ["train.jsonl", "train_hard_distractors.jsonl", "train.jsonl"]
    warm, hard, soft = (recipe.stage_config(args, s) for s in stages)
    assert (warm.warm_start_steps, warm.warm_start_lr, warm.rl_steps) == (7, args.warm_start_lr, 0)
    assert (hard.warm_start_steps, hard.warm_start_lr, hard.rl_steps) == (5, args.hard_distractor_lr, 0)
    assert (soft.warm_start_steps, soft.rl_steps, soft.lr) == (0, 3, args.rl_lr)
    defaults = recipe.build_parser().parse_args([])
    assert [s.name for s in recipe.recipe_stages(defaults)] == ["warm_start"]


def test_distillation_weight_goes_to_both_warm_starts_only(recipe, capsys) -> None:
    argv = ["--distillation-weight", "2", "--hard-distractor-steps", "5", "--rl-steps", "3"]
    args = recipe.build_parser().parse_args(argv)
    warm, hard, soft = (recipe.stage_config(args, s) for s in recipe.recipe_stages(args))
    assert (warm.distillation_weight, hard.distillation_weight, soft.distillation_weight) == (2.0, 2.0, 0.0)
    assert warm.distillation_documents == "ordered"
    defaults = recipe.build_parser().parse_args([])
    assert recipe.stage_config(defaults, recipe.recipe_stages(defaults)[0]).distillation_weight == 0.0
    for bad in ("-1", "nan", "much"):
        with pytest.raises(SystemExit):
            recipe.build_parser().parse_args(["--distillation-weight", bad])
        assert "--distillation-weight" in capsys.readouterr().err


def test_replay_adds_changes_or_drops_babilong_entries_and_rejects_bad_ones(recipe, capsys) -> None:
    argv = ["--replay", "qa3:4k=300", "--replay", "qa1:1k=0", "--replay", "qa2:1024=5"]
    counts = recipe.replay_counts(recipe.build_parser().parse_args(argv))
    assert counts[("qa3", "4k")] == 300 and counts[("qa2", "1k")] == 5 and ("qa1", "1k") not in counts
    assert counts[("qa3", "1k")] == recipe.BABILONG_REPLAY[("qa3", "1k")]
    assert recipe.replay_counts(recipe.build_parser().parse_args([])) == recipe.BABILONG_REPLAY
    for bad in ("qa9:4k=3", "qa3:4kk=3", "qa3=3", "qa3:4k=-1", "qa3:4k=many"):
        with pytest.raises(SystemExit):
            recipe.build_parser().parse_args(["--replay", bad])
        assert f"bad replay {bad!r}" in capsys.readouterr().err


def test_a_base_start_gets_the_recipe_settings_and_a_saved_model_keeps_its_own(recipe, tmp_path: Path) -> None:
    base = recipe.start_model("all-MiniLM-L6-v2")
    assert base.config.base_model == "all-MiniLM-L6-v2" and base.config.freeze_state_embeddings
    base.set_max_state_tokens(128)
    base.config.freeze_state_embeddings = False
    base.save_pretrained(tmp_path / "saved")
    saved = recipe.start_model(str(tmp_path / "saved"))
    assert saved.config.max_state_tokens == 128 and not saved.config.freeze_state_embeddings
    assert recipe.START_CONFIG.max_state_tokens is None  # never changed by a start


def test_ship_records_every_stage_and_sets_the_search_weights(recipe, minilm_tokenizer, tmp_path: Path) -> None:
    argv = ["--work-dir", str(tmp_path / "work"), "--ship-to", str(tmp_path / "out"), "--hard-distractor-steps", "9"]
    argv += ["--replay", "qa3:4k=7"]
    args = recipe.build_parser().parse_args(argv)
    stages = recipe.recipe_stages(args)
    model = make_tiny_model(minilm_tokenizer)
    model.action_encoder.save(str(tmp_path / "tiny-base"))
    model.config.base_model = str(tmp_path / "tiny-base")
    for number, stage in enumerate(stages, 1):
        model.training_info = {"steps": 10 * number, "examples_seen": 80 * number, "seconds": 1.5 * number}
        model.save_pretrained(args.work_dir / stage.name / "model")
    recipe.ship(args.work_dir / stages[-1].name / "model", stages, args, ["--threads", "2"])
    shipped = QRAG.from_pretrained(str(tmp_path / "out"))
    assert {k: getattr(shipped.config, k) for k in recipe.SHIPPED_WEIGHTS} == recipe.SHIPPED_WEIGHTS
    assert shipped.config.chunking.sentence_splitter == "punkt"
    info = shipped.training_info
    assert list(info["stages"]) == ["warm_start", "hard_distractors"]
    assert info["stages"]["hard_distractors"]["steps"] == 20 and info["total_seconds"] == 4.5
    assert info["stages"]["hard_distractors"]["settings"]["warm_start_steps"] == args.hard_distractor_steps
    assert info["init_from"] == recipe.START_MODEL and info["script"].endswith("--threads 2")
    assert "hard distractors" in info["recipe"] and "807 official dev questions" in info["recipe"]
    assert "qa3 1k x400, qa4 1k x200, qa5 1k x300, qa3 4k x7 and RULER" in info["recipe"]


def test_ship_interpolates_with_another_model_and_records_it(recipe, minilm_tokenizer, tmp_path: Path, capsys) -> None:
    model = make_tiny_model(minilm_tokenizer)
    model.action_encoder.save(str(tmp_path / "tiny-base"))
    model.config.base_model = str(tmp_path / "tiny-base")
    model.training_info = {"recipe": "the other mixture", "script": "python recipes/other.py"}
    model.save_pretrained(tmp_path / "other")
    with torch.no_grad():
        model.action_head.bias.fill_(1.0)
    model.training_info = {"steps": 10, "examples_seen": 80, "seconds": 2.0}
    model.save_pretrained(tmp_path / "work" / "warm_start" / "model")
    argv = ["--work-dir", str(tmp_path / "work"), "--ship-to", str(tmp_path / "out")]
    argv += ["--interpolate-with", str(tmp_path / "other"), "--interpolation-weight", "0.25"]
    args = recipe.build_parser().parse_args(argv)
    recipe.ship(args.work_dir / "warm_start" / "model", recipe.recipe_stages(args), args, argv)
    shipped = QRAG.from_pretrained(str(tmp_path / "out"))  # the action fingerprint still matches the base
    assert torch.allclose(shipped.action_head.bias, torch.full_like(shipped.action_head.bias, 0.25))
    partner = shipped.training_info["interpolated_with"]
    assert partner == {
        "weight_of_this_run": 0.25,
        "model": str(tmp_path / "other"),
        "recipe": "the other mixture",
        "script": "python recipes/other.py",
    }
    assert "0.25 of this run's" in shipped.training_info["recipe"]
    with pytest.raises(SystemExit):
        recipe.build_parser().parse_args(["--interpolation-weight", "1.5"])
    assert "must be between 0 and 1" in capsys.readouterr().err


@pytest.mark.slow
@needs_data
def test_mixture_holds_collections_and_documents_and_no_test_or_held_out_question(
    recipe, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recipe, "BABILONG_REPLAY", {("qa1", "1k"): 2, ("qa2", "1k"): 2})
    monkeypatch.setattr(recipe, "NIAH_REPLAY_PER_TASK", 1)
    monkeypatch.setattr(recipe, "EVAL_BABILONG_PER_TASK", 1)
    monkeypatch.setattr(recipe, "HARD_DISTRACTORS", (1, 2, 10))
    train_file, (held_out_file, babilong_file) = recipe.build_data(tmp_path)
    train, held_out = read_jsonl(train_file, need_support=True), read_jsonl(held_out_file, need_support=True)
    hard = read_jsonl(tmp_path / "train_hard_distractors.jsonl", need_support=True)
    assert [ex.id for ex in hard[: len(train)]] == [ex.id for ex in train]
    added = hard[len(train) :]
    assert len(added) == 5 and all(ex.ordered and ex.extra["distractors"] == 2 for ex in added)

    def questions(examples):  # (task, bAbI question index): the same question at any length
        return {(ex.extra["task"], ex.id.rsplit("-", 1)[1]) for ex in examples}

    assert not questions(added) & questions(read_jsonl(babilong_file))  # no evaluation question trained on
    test_ids = {ex.id for ex in iter_hotpotqa(split="test")}
    hotpot = [ex for ex in train if ex.extra.get("task") == "hotpotqa"]
    assert len(held_out) == recipe.HOTPOTQA_VALIDATION
    assert len(hotpot) == recipe.OPEN_DOMAIN_REPEATS * (907 - recipe.HOTPOTQA_VALIDATION)
    assert not {ex.id for ex in hotpot} & (test_ids | {ex.id for ex in held_out})
    assert all(not ex.ordered for ex in train if ex.extra.get("task") in ("hotpotqa", "musique"))
    documents = [ex for ex in train if ex.extra.get("task") not in ("hotpotqa", "musique")]
    assert len(documents) == 4 + 8 and all(ex.ordered for ex in documents)
    assert all(ex.extra.get("split") == "train" for ex in read_jsonl(babilong_file) + held_out)
