"""Tests of the soft-Q trainer (qrag_core.training): the math by hand, learning, resume, data errors."""

from __future__ import annotations

import csv
import dataclasses
import errno
import json
import math
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file
from torch import nn

from qrag_core.config import QRAGConfig
from qrag_core.data.examples import Example
from qrag_core.encoders import TextEncoder
from qrag_core.errors import CheckpointError, InvalidInputError, StorageError, TrainingError
from qrag_core.model import QRAG
from qrag_core.model_names import base_minilm_path
from qrag_core.training import TrainingConfig, checkpoint, train, updates
from qrag_core.training.distributed import Processes
from qrag_core.training.metrics_log import TIMING_FIELDS
from qrag_core.training.trainer import Trainer, example_schedule, phase_learning_rate
from qrag_core.training.updates import (
    Distillation,
    Episode,
    ValueCalibration,
    lambda_returns,
    polyak_update,
    prepare_documents,
    soft_value,
    softmax_kl,
    step_reward,
)
from tests.conftest import REPO, age

PERSONS = "john mary sandra daniel bill fred julie emily jeff tom anna lucy".split()
ITEMS = "apple football milk ball box key book pen".split()
PLACES = "kitchen garden office bathroom bedroom hallway park school".split()


def chain_examples(n: int, seed: int, distractors: int = 4) -> list[Example]:
    """Two-fact chains: "P took the ITEM." then "P is in the PLACE." for "where is the ITEM?".

    The location fact names only the person, so it can be found only once the first fact is in the
    state; each distractor person either took another item or is somewhere else.
    """
    rng = random.Random(seed)
    examples = []
    for i in range(n):
        persons = rng.sample(PERSONS, 1 + 2 * distractors)
        items = rng.sample(ITEMS, 1 + distractors)
        places = rng.sample(PLACES, 1 + distractors)
        facts = [(f"{persons[0]} took the {items[0]}.", True), (f"{persons[0]} is in the {places[0]}.", True)]
        facts += [(f"{persons[1 + j]} took the {items[1 + j]}.", False) for j in range(distractors)]
        facts += [(f"{persons[1 + distractors + j]} is in the {places[1 + j]}.", False) for j in range(distractors)]
        rng.shuffle(facts)
        examples.append(
            Example(
                id=f"chain-{seed}-{i}",
                question=f"where is the {items[0]}?",
                chunks=[text for text, _ in facts],
                support=[k for k, (_, is_support) in enumerate(facts) if is_support],
            )
        )
    return examples


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, especially when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory) -> str:
    """A saved random 1-layer, 32-d BERT with the MiniLM tokenizer, usable as --base-model."""
    torch.manual_seed(0)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_minilm_path())
    config = transformers.BertConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        vocab_size=tokenizer.vocab_size,
    )
    path = tmp_path_factory.mktemp("tiny-base")
    TextEncoder(transformers.BertModel(config), tokenizer).save(str(path))
    return str(path)


def tiny_model(base: str, **settings) -> QRAG:
    return QRAG.from_base(base, QRAGConfig(max_steps=2, **settings), device="cpu")


def quick_config(**overrides) -> TrainingConfig:
    values = dict(
        warm_start_steps=4,
        rl_steps=8,
        batch_size=4,
        lr=1e-3,
        warm_start_lr=1e-3,
        warmup_steps=2,
        eval_every=3,
        checkpoint_every=0,
    )
    return TrainingConfig(**(values | overrides))


# ------------------------------------------------------------------------------------------------ math by hand
def test_lambda_returns_by_hand():
    rewards = torch.tensor([0.0, 0.0, 1.0])
    next_values = torch.tensor([0.5, 0.8])  # V'(s_1), V'(s_2)
    got = lambda_returns(rewards, next_values, gamma=0.9, lam=0.5)
    g2 = 1.0
    g1 = 0.0 + 0.9 * (0.5 * 0.8 + 0.5 * g2)
    g0 = 0.0 + 0.9 * (0.5 * 0.5 + 0.5 * g1)
    assert torch.allclose(got, torch.tensor([g0, g1, g2]))
    assert math.isclose(g0, 0.5895, abs_tol=1e-9)


def test_lambda_returns_early_end_and_bootstrapping():
    # An episode that ended after one step (support found): G_0 = r_0, nothing is bootstrapped.
    assert lambda_returns(torch.tensor([1.0]), torch.empty(0), 0.99, 0.65).tolist() == [1.0]
    # λ = 0: one-step soft TD targets r_t + γ·V'(s_{t+1}); the last step keeps its own reward.
    got = lambda_returns(torch.tensor([0.0, 0.25, 0.5]), torch.tensor([0.7, 0.2]), gamma=0.5, lam=0.0)
    assert torch.allclose(got, torch.tensor([0.35, 0.35, 0.5]))
    # λ = 1: discounted Monte-Carlo returns, the values are ignored.
    got = lambda_returns(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([9.0, 9.0]), gamma=0.5, lam=1.0)
    assert torch.allclose(got, torch.tensor([1.5, 1.0, 2.0]))
    with pytest.raises(InvalidInputError):
        lambda_returns(torch.tensor([0.0, 1.0]), torch.tensor([0.1, 0.2]), 0.9, 0.5)


def test_soft_value_by_hand():
    q = torch.tensor([1.0, 1.0, float("-inf")])  # the third chunk is already selected
    assert math.isclose(soft_value(q, 0.5).item(), 1.0 + 0.5 * math.log(2), rel_tol=1e-6)
    # A small α approaches the hard max; a large α adds the log of the number of options.
    q = torch.tensor([0.2, 0.9, -0.3])
    assert math.isclose(soft_value(q, 1e-3).item(), 0.9, abs_tol=1e-4)
    expected = 10 * math.log(sum(math.exp(v / 10) for v in [0.2, 0.9, -0.3]))
    assert math.isclose(soft_value(q, 10.0).item(), expected, rel_tol=1e-6)
    batch = soft_value(torch.tensor([[0.0, 0.0], [1.0, float("-inf")]]), 1.0)
    assert torch.allclose(batch, torch.tensor([math.log(2), 1.0]))


def test_polyak_update_mixes_trainable_parameters_only():
    torch.manual_seed(0)
    online, target = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1)), nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 1))
    online[1].requires_grad_(False)
    before = [p.detach().clone() for p in target.parameters()]
    polyak_update(target, online, tau=0.25)
    for (name, new), old, p_online in zip(target.named_parameters(), before, online.parameters(), strict=True):
        if name.startswith("0."):
            assert torch.allclose(new, 0.25 * p_online + 0.75 * old)
        else:
            assert torch.equal(new, old)
    with pytest.raises(CheckpointError):
        polyak_update(nn.Sequential(nn.Linear(3, 1), nn.Linear(3, 3)), online, 0.5)


def test_value_calibration_is_a_state_value_plus_a_positive_scale_and_keeps_the_ranking():
    calibration = ValueCalibration(2)
    with torch.no_grad():
        calibration.value.weight.copy_(torch.tensor([[1.0, -2.0]]))
        calibration.value.bias.fill_(0.5)
        calibration.log_scale.fill_(math.log(3.0))
    states = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    q = torch.tensor([[0.1, 0.4, -0.2], [0.3, -0.1, 0.2]])
    got = calibration(states, q)
    assert torch.allclose(got, torch.tensor([[1.8, 2.7, 0.9], [-0.6, -1.8, -0.9]]))
    assert torch.equal(got.argsort(dim=1), q.argsort(dim=1))
    assert torch.allclose(calibration(states, q[:, 0]), got[:, 0])


def test_learning_rate_schedule_warms_up_then_decays_to_almost_zero():
    lrs = [phase_learning_rate(s, 10, 1.0, 4) for s in range(10)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4:] == pytest.approx([1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6])
    assert min(lrs) > 0  # α_t = α_0·lr_t/lr_0 never reaches zero
    assert phase_learning_rate(0, 5, 2.0, 0) == 2.0


def test_rewards():
    assert step_reward("sparse", 2, 1, 2, 3) == 1.0
    assert step_reward("sparse", 2, 0, 1, 1) == 0.0
    assert step_reward("sparse", 2, 2, 2, 4) == 0.0  # only the step that completes the support pays
    assert step_reward("step_penalty", 2, 1, 2, 2) == 1.0
    assert step_reward("step_penalty", 2, 1, 2, 4) == 0.75
    assert step_reward("per_fact", 4, 1, 2, 2) == 0.25
    assert step_reward("per_fact", 4, 2, 2, 3) == 0.0
    with pytest.raises(InvalidInputError):
        step_reward("dense", 2, 1, 2, 2)


def test_example_schedule_is_seeded_shuffled_epochs():
    schedule = example_schedule(5, 4, 3, seed=1)
    assert schedule.shape == (4, 3)
    flat = schedule.ravel().tolist()
    assert sorted(flat[:5]) == list(range(5)) and sorted(flat[5:10]) == list(range(5))
    assert (example_schedule(5, 4, 3, seed=1) == schedule).all()
    assert (example_schedule(5, 4, 3, seed=2) != schedule).any()


def test_config_validation_names_the_setting():
    with pytest.raises(InvalidInputError, match="micro_batch_size"):
        TrainingConfig(batch_size=8, micro_batch_size=3).validate()
    with pytest.raises(InvalidInputError, match="reward"):
        TrainingConfig(reward="dense").validate()
    with pytest.raises(InvalidInputError, match="nothing to train"):
        TrainingConfig(warm_start_steps=0, rl_steps=0).validate()


# ------------------------------------------------------------------------------------------------ the networks
def test_q_learning_loss_trains_state_encoder_and_action_head(tiny_base):
    model = tiny_model(tiny_base)
    trainer = Trainer(model, chain_examples(8, 0), quick_config(warm_start_steps=0), show_progress=False)
    trainer.encode_training_documents()
    trainer.start_phase("soft_q")
    docs = trainer.documents[:4]
    episodes = [Episode(d, actions=sorted(d.support), rewards=[0.0, 1.0]) for d in docs]
    returns = updates.episode_returns(trainer.target, episodes, 0.05, trainer.config.gamma, trainer.config.lam)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        loss = updates.q_learning_loss(trainer.online, episodes, returns, num_transitions=8)
        loss.backward()
        assert model.action_head.weight.grad.abs().sum() > 0
        assert model.state_encoder.model.embeddings.word_embeddings.weight.grad.abs().sum() > 0
        optimizer.step()
        losses.append(loss.item())
    assert all(p.grad is None for p in model.action_encoder.parameters())  # frozen
    assert losses[-1] < 0.2 * losses[0]


def test_warm_start_mistakes_add_the_state_after_the_top_wrong_pick(tiny_base, monkeypatch):
    model = tiny_model(tiny_base)
    trainer = Trainer(model, chain_examples(8, 0), quick_config(warm_start_mistakes=1.0), show_progress=False)
    trainer.encode_training_documents()
    seen = []
    real = updates.supervised_loss

    def record(model, docs, prefixes, temperature, distillation=None):
        seen.append(list(prefixes))
        return real(model, docs, prefixes, temperature, distillation)

    monkeypatch.setattr(updates, "supervised_loss", record)
    docs, c = trainer.documents[:4], trainer.config
    draws = updates.warm_start_draws(docs, c.warm_start_mistakes, trainer.rng)
    updates.warm_start_loss(model, docs, draws, len(docs), c.warm_start_temperature)
    gold, with_mistake = seen
    assert len(with_mistake) == 4
    for doc, prefix, extended in zip(docs, gold, with_mistake, strict=True):
        (wrong,) = set(extended) - set(prefix)
        assert wrong not in doc.support and set(prefix) <= doc.support
        with torch.no_grad():
            state = model.state_vectors([doc.question], [doc.state_texts(prefix)])[0]
            q = model.q_row(state, model.action_vectors(doc.content.float()), prefix)
        q[sorted(doc.support)] = float("-inf")
        assert wrong == int(q.argmax())


@pytest.mark.parametrize("mistakes", [0.0, 0.5])
def test_micro_batches_accumulate_the_same_gradient(tiny_base, mistakes):
    weights = []
    for micro in (None, 2):
        model = tiny_model(tiny_base)
        config = quick_config(
            warm_start_steps=1, rl_steps=1, micro_batch_size=micro, eval_every=0, warm_start_mistakes=mistakes
        )
        train(model, chain_examples(8, 0), config, show_progress=False)
        weights.append(model.action_head.weight.detach().clone())
    assert torch.allclose(weights[0], weights[1], atol=1e-5)


# ------------------------------------------------------------------------------------------------ learning
def test_warm_start_then_soft_q_learns_two_fact_chains(tiny_base):
    """Near-chance fact EM before training, clearly above after; the soft-Q phase adds to the warm start."""
    model = tiny_model(tiny_base)
    config = TrainingConfig(
        warm_start_steps=400,
        warm_start_lr=3e-3,
        rl_steps=300,
        lr=1e-3,
        eval_every=100,
        checkpoint_every=0,
    )
    result = train(model, chain_examples(400, 1), config, chain_examples(60, 2), show_progress=False)
    em = {int(row["step"]): float(row["eval_eval_fact_em"]) for row in result.rows if row["eval_eval_fact_em"]}
    # chance: both support chunks among 2 picks out of 10 is 1/45
    assert em[0] <= 0.1
    assert em[700] >= 0.6
    assert em[700] >= em[400] + 0.1, em
    assert result.evaluation["eval"]["fact_em"] == pytest.approx(em[700])


# ------------------------------------------------------------------------------------------------ resume
class Crash(RuntimeError):
    pass


def metric_rows(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in csv.DictReader(f)]


def train_until_killed(tiny_base, data, held_out, config, out, kill_step: int, **options) -> None:
    """Train into ``out`` and die (like a kill) as the step numbered ``kill_step`` (0-based) begins;
    ``options`` go to :func:`train`."""
    real_step = Trainer.train_step

    def crash(self):
        if self.step == kill_step:
            raise Crash("killed")
        return real_step(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "train_step", crash)
        with pytest.raises(Crash):
            train(tiny_model(tiny_base), data, config, held_out, out_dir=out, show_progress=False, **options)


def assert_same_run(whole, resumed) -> None:
    """The same metrics rows (timings aside) and bitwise the same final model."""
    assert metric_rows(resumed / "metrics.csv") == metric_rows(whole / "metrics.csv")
    a, b = QRAG.from_pretrained(str(whole / "model")), QRAG.from_pretrained(str(resumed / "model"))
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


@pytest.mark.parametrize("value_head", [False, True])
def test_resume_after_a_crash_gives_the_same_metrics_rows(tiny_base, tmp_path, value_head):
    data, held_out = chain_examples(24, 3), chain_examples(6, 4)
    config = quick_config(checkpoint_every=6, rl_steps=10, value_head=value_head)
    whole = tmp_path / "whole"
    train(tiny_model(tiny_base), data, config, held_out, out_dir=whole, show_progress=False)

    crashed = tmp_path / "crashed"
    train_until_killed(tiny_base, data, held_out, config, crashed, kill_step=9)
    assert len(metric_rows(crashed / "metrics.csv")) == 10  # step 0 .. 9, the last checkpoint was at 6
    result = train(tiny_model(tiny_base), data, config, held_out, out_dir=crashed, resume=True, show_progress=False)

    assert result.steps == config.total_steps
    assert_same_run(whole, crashed)


@pytest.mark.parametrize(("value_head", "kill_steps"), [(False, (4, 7)), (True, (3, 4, 5, 7, 9))])
def test_resume_after_a_kill_at_every_phase_boundary_is_bitwise_the_uninterrupted_run(
    tiny_base, tmp_path, value_head, kill_steps
):
    """Warm start = steps 0-3, soft Q = 4-9, a checkpoint every 2 steps: killed in the warm start, at the
    first soft-Q step (its checkpoint at step 4 holds the warm start's optimiser and no target network),
    just after it, in the soft-Q phase and at the last step."""
    data, held_out = chain_examples(16, 3), chain_examples(4, 4)
    config = quick_config(warm_start_steps=4, rl_steps=6, checkpoint_every=2, value_head=value_head)
    whole = tmp_path / "whole"
    train(tiny_model(tiny_base), data, config, held_out, out_dir=whole, show_progress=False)
    for kill_step in kill_steps:
        out = tmp_path / f"killed-at-{kill_step}"
        train_until_killed(tiny_base, data, held_out, config, out, kill_step)
        result = train(tiny_model(tiny_base), data, config, held_out, out_dir=out, resume=True, show_progress=False)
        assert result.steps == config.total_steps, kill_step
        assert_same_run(whole, out)


class LossScaledProcesses(Processes):
    """One process that scales the loss as fp16 mixed precision does, with a CPU loss scaler whose scale
    doubles every 2 steps (so the scale at a checkpoint differs from the initial one)."""

    def __init__(self) -> None:
        self._scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=2)

    @property
    def scaler(self) -> torch.amp.GradScaler:
        return self._scaler

    def backward(self, loss: torch.Tensor) -> None:
        self._scaler.scale(loss).backward()

    def optimizer_step(self, optimizer: torch.optim.Optimizer, max_grad_norm: float) -> torch.Tensor:
        self._scaler.unscale_(optimizer)
        params = [p for group in optimizer.param_groups for p in group["params"]]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        self._scaler.step(optimizer)
        self._scaler.update()
        return grad_norm


def test_resume_restores_the_mixed_precision_loss_scale(tiny_base, tmp_path):
    data, held_out = chain_examples(16, 3), chain_examples(4, 4)
    config = quick_config(warm_start_steps=3, rl_steps=4, checkpoint_every=3)
    whole, whole_processes = tmp_path / "whole", LossScaledProcesses()
    train(tiny_model(tiny_base), data, config, held_out, out_dir=whole, show_progress=False, processes=whole_processes)
    crashed = tmp_path / "crashed"
    train_until_killed(tiny_base, data, held_out, config, crashed, kill_step=5, processes=LossScaledProcesses())
    saved = json.loads((crashed / "checkpoint" / "trainer_state.json").read_text())["scaler"]
    assert saved["scale"] == 2.0**5 and saved["_growth_tracker"] == 1  # after 3 steps: doubled once, then 1 more
    resumed = LossScaledProcesses()
    options = {"resume": True, "show_progress": False, "processes": resumed}
    train(tiny_model(tiny_base), data, config, held_out, out_dir=crashed, **options)
    assert resumed.scaler.state_dict() == whole_processes.scaler.state_dict()
    assert resumed.scaler.get_scale() == 2.0**7  # 7 steps: doubled at steps 2, 4 and 6
    assert_same_run(whole, crashed)


def test_leftovers_of_killed_checkpoint_writes_never_block_resume(tiny_base, tmp_path):
    """A kill between the two renames of a checkpoint write (only the previous copy, moved aside, is left),
    orphan temporary directories and a stale old copy: resume restores or removes them all."""
    data, held_out = chain_examples(16, 3), chain_examples(4, 4)
    config = quick_config(warm_start_steps=4, rl_steps=4, checkpoint_every=2)
    whole = tmp_path / "whole"
    train(tiny_model(tiny_base), data, config, held_out, out_dir=whole, show_progress=False)
    out = tmp_path / "killed"
    train_until_killed(tiny_base, data, held_out, config, out, kill_step=5)
    (out / "checkpoint").rename(out / ".tmp-checkpoint.old")  # killed between the two renames
    for orphan in (".tmp-checkpoint-abcd1234", ".tmp-model-x1y2z3w4"):
        (out / orphan / "model").mkdir(parents=True)
        (out / orphan / "model" / "weights.bin").write_bytes(b"\0" * 100_000)
        age(out / orphan, 2 * 24 * 3600)  # named as older qrag versions named them: removed once idle for a day
    (out / "checkpoint.old").mkdir()  # what earlier qrag versions left after a kill: it blocked every save
    (out / "checkpoint.old" / "trainer_state.pt").write_bytes(b"stale")
    with open(out / "metrics.csv", "a") as f:
        f.write("1")  # a row that a kill cut short after its first character

    train(tiny_model(tiny_base), data, config, held_out, out_dir=out, resume=True, show_progress=False)
    assert_same_run(whole, out)
    assert sorted(p.name for p in out.iterdir() if p.name != "tensorboard") == [
        "checkpoint",
        "metrics.csv",
        "model",
        "qrag_run.json",
    ]
    # a stale copy moved aside beside a complete checkpoint is removed, not restored
    shutil.copytree(out / "checkpoint", out / ".tmp-checkpoint.old")
    train(tiny_model(tiny_base), data, config, held_out, out_dir=out, resume=True, show_progress=False)
    assert not (out / ".tmp-checkpoint.old").exists()


def test_checkpoints_hold_no_pickle_and_a_planted_pickle_never_runs(tiny_base, tmp_path):
    class Payload:
        def __reduce__(self):
            return (Path.touch, (tmp_path / "pwned",))

    data = chain_examples(8, 3)
    out = tmp_path / "run"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "trainer_state.pt").write_bytes(pickle.dumps({"step": Payload()}))
    with pytest.raises(CheckpointError, match="pickle format, which qrag never loads"):
        train(tiny_model(tiny_base), data, quick_config(), out_dir=out, resume=True, show_progress=False)
    assert not (tmp_path / "pwned").exists()

    train(tiny_model(tiny_base), data, quick_config(rl_steps=2), out_dir=out, overwrite=True, show_progress=False)
    checkpoint = sorted(p.name for p in (out / "checkpoint").iterdir())
    assert checkpoint == ["model", "trainer_state.json", "trainer_state.safetensors"]
    state = json.loads((out / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 6 and state["phase"] == "soft_q" and len(state["rng"]["python"][1]) == 625
    tensors = load_file(str(out / "checkpoint" / "trainer_state.safetensors"))
    assert tensors["rng.torch"].dtype == torch.uint8 and any(k.startswith("optimizer.") for k in tensors)
    (out / "checkpoint" / "trainer_state.safetensors").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(CheckpointError, match="trainer_state.safetensors cannot be read"):
        train(tiny_model(tiny_base), data, quick_config(rl_steps=2), out_dir=out, resume=True, show_progress=False)
    assert not (tmp_path / "pwned").exists()


def test_no_module_of_the_library_can_unpickle():
    sources = {p: p.read_text(encoding="utf-8") for p in (REPO / "qrag_core").rglob("*.py")}
    sources |= {p: p.read_text(encoding="utf-8") for p in (REPO / "qrag_integrations").rglob("*.py")}
    for path, text in sources.items():
        for needle in ("torch.load", "import pickle", "pickle.load", "weights_only", "allow_pickle=True", "dill"):
            assert needle not in text, f"{path} uses {needle}"


def test_a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tiny_base, tmp_path):
    data = chain_examples(8, 3)
    config = quick_config(warm_start_steps=8, rl_steps=2, checkpoint_every=2, eval_every=0)
    real_loss, calls = updates.warm_start_loss, []

    def nan_at_step_6(*args):
        calls.append(1)  # one call per step: no micro-batches
        loss = real_loss(*args)
        return loss * float("nan") if len(calls) == 6 else loss

    model = tiny_model(tiny_base)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(updates, "warm_start_loss", nan_at_step_6)
        with pytest.raises(TrainingError, match=r"diverged at step 6 \(warm_start\): loss nan.*checkpoint \(step 4\)"):
            train(model, data, config, out_dir=tmp_path, show_progress=False)
    assert all(torch.isfinite(p).all() for p in model.parameters()), "the NaN update never reached the weights"
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 4
    assert not (tmp_path / "model").exists()
    assert [int(r["step"]) for r in metric_rows(tmp_path / "metrics.csv")] == [1, 2, 3, 4, 5]
    result = train(tiny_model(tiny_base), data, config, out_dir=tmp_path, resume=True, show_progress=False)
    assert result.steps == 10


def test_an_update_that_makes_the_weights_non_finite_is_never_saved(tiny_base, tmp_path):
    """An infinite gradient with a finite loss: the step is taken (no mixed-precision scaler skips it)."""
    real_step = Processes.optimizer_step
    calls = []

    def poisoned_third_step(self, optimizer, max_grad_norm):
        calls.append(1)
        norm = real_step(self, optimizer, max_grad_norm)
        if len(calls) != 3:
            return norm
        with torch.no_grad():
            optimizer.param_groups[0]["params"][0].fill_(float("inf"))
        return torch.tensor(float("inf"))

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Processes, "optimizer_step", poisoned_third_step)
        with pytest.raises(TrainingError, match=r"step 3 .*made the weights non-finite.*checkpoint \(step 2\)"):
            train(tiny_model(tiny_base), chain_examples(8, 3), quick_config(checkpoint_every=2), out_dir=tmp_path)
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    assert not (tmp_path / "model").exists()
    saved = QRAG.from_pretrained(str(tmp_path / "checkpoint" / "model"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one(tiny_base, tmp_path):
    data = chain_examples(8, 3)
    config = quick_config(checkpoint_every=2, eval_every=0)
    real_save = checkpoint.save_tensors

    def disk_full_at_step_4(tensors, path, metadata=None):
        if json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(tensors, path, metadata)

    with pytest.MonkeyPatch.context() as patch:
        train_until_killed(tiny_base, data, None, config, tmp_path, kill_step=3)  # one checkpoint, at step 2
        patch.setattr(checkpoint, "save_tensors", disk_full_at_step_4)
        with pytest.raises(StorageError, match=f"no space left on device at {tmp_path / 'checkpoint'}"):
            train(tiny_model(tiny_base), data, config, out_dir=tmp_path, resume=True, show_progress=False)
    assert json.loads((tmp_path / "checkpoint" / "trainer_state.json").read_text())["step"] == 2
    assert not list(tmp_path.glob(".tmp-*")), "the temporary copy is removed"
    result = train(tiny_model(tiny_base), data, config, out_dir=tmp_path, resume=True, show_progress=False)
    assert result.steps == config.total_steps


def test_resume_refuses_other_settings_and_missing_checkpoints(tiny_base, tmp_path):
    data = chain_examples(8, 3)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(tiny_model(tiny_base), data, quick_config(), out_dir=tmp_path, resume=True, show_progress=False)
    train(tiny_model(tiny_base), data, quick_config(rl_steps=2), out_dir=tmp_path, show_progress=False)
    with pytest.raises(CheckpointError, match="lr"):
        train(
            tiny_model(tiny_base),
            data,
            quick_config(rl_steps=2, lr=0.5),
            out_dir=tmp_path,
            resume=True,
            show_progress=False,
        )


# ------------------------------------------------------------------------------------------------ distillation
def test_softmax_kl_by_hand_skips_selected_chunks():
    teacher = torch.tensor([0.0, math.log(3.0), float("-inf")])
    student = torch.tensor([0.0, 0.0, float("-inf")])
    # p = (1/4, 3/4), q = (1/2, 1/2): KL = 1/4·log(1/2) + 3/4·log(3/2)
    assert softmax_kl(teacher, student).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5))
    assert softmax_kl(teacher, teacher).item() == pytest.approx(0.0, abs=1e-7)


def mean_kl(start: QRAG, model: QRAG, examples: list[Example], temperature: float) -> float:
    """Mean KL(start ‖ model) of the warm-start softmax at the empty state of ``examples``."""
    docs = prepare_documents(model, examples)
    prefixes = [[] for _ in docs]
    with torch.no_grad():
        start_q = Distillation(start, 1.0, "all").teacher_q(docs, prefixes)
        model_q = Distillation(model, 1.0, "all").teacher_q(docs, prefixes)
    return sum(softmax_kl(start_q[b] / temperature, model_q[b] / temperature).item() for b in start_q) / len(docs)


def test_distillation_keeps_the_start_ranking_on_the_documents_it_covers(tiny_base):
    """Distilled on the documents it trains on, a model stays far closer to the start model than one trained
    without; distilled on the kind of document it never sees (collections), it trains exactly as without."""
    start = tiny_model(tiny_base)
    documents = chain_examples(32, 5)
    config = quick_config(warm_start_steps=40, rl_steps=0, warm_start_lr=3e-3, eval_every=0)
    trained = {}
    for beta, kind in ((0.0, "ordered"), (10.0, "ordered"), (10.0, "collections")):
        model = tiny_model(tiny_base)
        settings = dataclasses.replace(config, distillation_weight=beta, distillation_documents=kind)
        train(model, documents, settings, show_progress=False)
        trained[beta, kind] = model
    temperature = config.warm_start_temperature
    drift = {key: mean_kl(start, model, documents[:16], temperature) for key, model in trained.items()}
    assert drift[10.0, "ordered"] < 0.1 * drift[0.0, "ordered"], drift
    for p, q in zip(trained[0.0, "ordered"].parameters(), trained[10.0, "collections"].parameters(), strict=True):
        assert torch.equal(p, q)


def test_distillation_covers_the_chosen_kind_of_document(tiny_base):
    model = tiny_model(tiny_base)
    passage = dataclasses.replace(chain_examples(1, 1)[0], ordered=False)
    ordered, passages = prepare_documents(model, [*chain_examples(1, 0), passage])
    covered = {
        kind: [Distillation(model, 1.0, kind).covers(d) for d in (ordered, passages)]
        for kind in ("ordered", "collections", "all")
    }
    assert covered == {"ordered": [True, False], "collections": [False, True], "all": [True, True]}
    with pytest.raises(InvalidInputError, match="distillation_documents"):
        quick_config(distillation_documents="some").validate()
    with pytest.raises(InvalidInputError, match="distillation_weight"):
        quick_config(distillation_weight=-1.0).validate()
    with pytest.raises(InvalidInputError, match="warm_start_steps is 0"):
        quick_config(distillation_weight=1.0, warm_start_steps=0).validate()


def test_resume_distils_from_the_start_model_not_the_checkpoint(tiny_base, tmp_path):
    """Killed mid warm start and resumed, a distilled run is bitwise the uninterrupted one: the teacher is
    the model the run was started with, not the weights of the checkpoint it resumes from."""
    data, held_out = chain_examples(24, 3), chain_examples(6, 4)
    config = quick_config(warm_start_steps=10, rl_steps=0, checkpoint_every=3, distillation_weight=2.0)
    whole = tmp_path / "whole"
    train(tiny_model(tiny_base), data, config, held_out, out_dir=whole, show_progress=False)
    killed = tmp_path / "killed"
    train_until_killed(tiny_base, data, held_out, config, killed, kill_step=7)
    train(tiny_model(tiny_base), data, config, held_out, out_dir=killed, resume=True, show_progress=False)
    assert_same_run(whole, killed)


# ------------------------------------------------------------------------------------------------ options
def test_full_action_encoder_training_updates_it_and_its_target(tiny_base, tmp_path):
    model = tiny_model(tiny_base, freeze_action_encoder=False)
    before = [p.detach().clone() for p in model.action_encoder.parameters()]
    result = train(model, chain_examples(8, 5), quick_config(rl_steps=3), out_dir=tmp_path, show_progress=False)
    assert result.steps == 7
    changed = [not torch.equal(b, p) for b, p in zip(before, model.action_encoder.parameters(), strict=True)]
    assert any(changed)
    target = load_file(str(tmp_path / "checkpoint" / "trainer_state.safetensors"))
    assert any(k.startswith("target.action_encoder.") for k in target)
    reloaded = QRAG.from_pretrained(str(tmp_path / "model"))
    assert not reloaded.config.freeze_action_encoder
    assert reloaded.training_info["action_encoder"] == "trained"


@pytest.mark.parametrize("reward", ["step_penalty", "per_fact"])
def test_reward_options_and_top_k_none_run(tiny_base, reward):
    result = train(
        tiny_model(tiny_base),
        chain_examples(8, 6),
        quick_config(warm_start_steps=0, rl_steps=2, reward=reward, top_k=None),
        show_progress=False,
    )
    assert [row["phase"] for row in result.rows] == ["soft_q", "soft_q"]
    assert all(float(row["rollout_return"]) >= 0 for row in result.rows)


def test_time_limit_stops_with_an_evaluation(tiny_base, tmp_path):
    result = train(
        tiny_model(tiny_base),
        chain_examples(8, 6),
        quick_config(max_train_seconds=0.0, eval_every=0),
        chain_examples(4, 7),
        out_dir=tmp_path,
        show_progress=False,
    )
    assert result.steps == 1
    assert result.rows[-1]["eval_eval_fact_em"] != ""
    assert QRAG.from_pretrained(str(tmp_path / "model")).training_info["steps"] == 1


# ------------------------------------------------------------------------------------------------ data errors
def test_examples_without_support_or_with_unknown_facts_are_errors(tiny_base):
    model = tiny_model(tiny_base)
    unlabelled = Example(id="q7", question="where?", chunks=["a.", "b."])
    with pytest.raises(InvalidInputError, match="q7.*no support labels"):
        train(model, [*chain_examples(2, 0), unlabelled], quick_config(), show_progress=False)
    missing = Example(id="q8", question="where?", document="Mary went home.", supporting_facts=["John left."])
    with pytest.raises(InvalidInputError, match="q8.*not found"):
        train(model, [missing], quick_config(), show_progress=False)
    with pytest.raises(InvalidInputError, match="evaluation"):
        train(model, chain_examples(2, 0), quick_config(), [unlabelled], show_progress=False)
    with pytest.raises(InvalidInputError, match="no examples"):
        train(model, [], quick_config(), show_progress=False)


# ------------------------------------------------------------------------------------------------ repeated facts
def repeated_fact_example() -> Example:
    """Fact A occurs in chunks 0 and 2, fact B in chunk 3: {0, 3} or {2, 3} finds all the support."""
    chunks = ["mary took the apple.", "bill is in the park.", "mary took the apple.", "mary is in the kitchen."]
    return Example(
        id="repeated",
        question="where is the apple?",
        chunks=[*chunks, "tom took the milk."],
        supporting_facts=["mary took the apple.", "mary is in the kitchen."],
    )


@pytest.mark.parametrize(("reward", "rewards"), [("per_fact", [0.5, 0.5]), ("sparse", [0.0, 1.0])])
def test_an_episode_finds_a_repeated_fact_at_any_copy_and_is_paid_per_fact(tiny_base, monkeypatch, reward, rewards):
    """A policy that prefers chunk 2, then 3, then 0 has found everything after two steps."""
    config = quick_config(batch_size=1, episode_steps=4, reward=reward)
    trainer = Trainer(tiny_model(tiny_base), [repeated_fact_example()], config, show_progress=False)
    (doc,) = trainer.documents
    preference = torch.tensor([1.0, -5.0, 3.0, 2.0, -5.0]) * 50

    def fixed_q(self, state, actions, selected, ordered=True):
        return preference.index_fill(0, torch.as_tensor(list(selected), dtype=torch.long), float("-inf"))

    monkeypatch.setattr(QRAG, "q_row", fixed_q)
    (episode,) = updates.rollout(trainer.online, [doc], 0.05, config, trainer.rng)
    assert episode.actions == [2, 3]
    assert episode.rewards == rewards
    assert episode.found_all
    assert Episode(doc, actions=[0, 3]).found_all and not Episode(doc, actions=[0, 2]).found_all
    assert doc.horizon(None) == 2  # the fewest chunks that find both facts


def test_the_warm_start_takes_one_copy_per_found_fact_and_aims_at_every_copy_of_the_others(tiny_base):
    model = tiny_model(tiny_base)
    trainer = Trainer(model, [repeated_fact_example()] * 4, quick_config(), show_progress=False)
    trainer.encode_training_documents()
    draws = updates.warm_start_draws(trainer.documents * 50, trainer.config.warm_start_mistakes, trainer.rng)
    prefixes = {tuple(prefix) for prefix, _ in draws}
    assert prefixes == {(), (0,), (2,), (3,)}  # never both copies of fact A; never all facts
    doc = trainer.documents[0]
    for prefix, targets in [([], [0, 2, 3]), ([2], [3]), ([3], [0, 2])]:
        loss, _ = updates.supervised_loss(model, [doc], [prefix], trainer.config.warm_start_temperature)
        with torch.no_grad():
            state = model.state_vectors([doc.question], [doc.state_texts(prefix)])[0]
            logits = model.q_row(state, model.action_vectors(doc.content.float()), prefix)
            logits = logits / trainer.config.warm_start_temperature
        expected = torch.logsumexp(logits, 0) - torch.logsumexp(logits[targets], 0)
        assert loss.item() == pytest.approx(expected.item(), rel=1e-5), prefix


def test_the_support_form_and_facts_that_occur_once_train_bitwise_alike(tiny_base):
    """One occurrence per fact: the same draws, rewards and weights whichever form labels the support."""
    by_index = chain_examples(8, 5)
    by_text = [
        Example(e.id, e.question, chunks=e.chunks, supporting_facts=[e.chunks[i] for i in e.support]) for e in by_index
    ]
    runs = []
    for examples in (by_index, by_text):
        model = tiny_model(tiny_base)
        result = train(model, examples, quick_config(warm_start_mistakes=0.5, eval_every=0), show_progress=False)
        runs.append(([{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in result.rows], model))
    assert runs[0][0] == runs[1][0]
    for p, q in zip(runs[0][1].state_dict().values(), runs[1][1].state_dict().values(), strict=True):
        assert torch.equal(p, q)
