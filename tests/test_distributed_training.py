"""Data-parallel training: qrag-finetune under torchrun and accelerate launch (2 CPU processes, gloo) follows the
single-process run."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from qrag_core.cli.finetune import main
from qrag_core.config import QRAGConfig
from qrag_core.errors import InvalidInputError, QRAGError
from qrag_core.model import QRAG
from qrag_core.training import TrainingConfig, train
from qrag_core.training.distributed import Processes
from qrag_core.training.trainer import Trainer
from qrag_core.training.updates import boltzmann_choice
from tests.conftest import REPO, make_tiny_encoder
from tests.test_training import Crash, chain_examples

pytest.importorskip("accelerate")

SETTINGS = [
    *("--seed", "3", "--batch-size", "4", "--micro-batch-size", "1", "--max-steps", "2", "--value-head"),
    *("--warm-start-steps", "3", "--warm-start-mistakes", "0.5", "--warm-start-lr", "3e-3", "--warmup-steps", "1"),
    *("--rl-steps", "3", "--lr", "3e-3", "--eval-every", "0", "--checkpoint-every", "1"),
    *("--cache", "none", "--no-progress"),
]
"""Six steps (three of each phase) of batch 4 in micro-batches of 1, a checkpoint after every step."""


def test_boltzmann_choice_draws_what_numpy_choice_draws():
    weights_rng, draws, reference = np.random.default_rng(0), np.random.default_rng(5), np.random.default_rng(5)
    for _ in range(2000):
        weights = weights_rng.random(int(weights_rng.integers(1, 7))) ** 3
        expected = reference.choice(len(weights), p=weights / weights.sum())
        assert boltzmann_choice(weights, draws.random()) == expected


def cli_args(base: str, data: str, out: str) -> list[str]:
    return ["--base-model", base, "--data", data, "--out", out, *SETTINGS]


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    # On a machine without GPUs, Accelerate's multi-process launcher starts the processes on the CPU (gloo).
    "accelerate": [
        *(sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"),
        *("--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"),
    ],
}
"""The two launchers qrag-finetune runs under unchanged, each starting two processes on this machine."""


def torchrun(args: list[str], launcher: str = "torchrun") -> subprocess.CompletedProcess:
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    command = [*LAUNCHERS[launcher], "-m", "qrag_core.cli.finetune", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def weights(out) -> dict[str, torch.Tensor]:
    return QRAG.from_pretrained(str(out / "model"), device="cpu").state_dict()


def losses(out) -> list[float]:
    with open(out / "metrics.csv", newline="") as f:
        return [float(row["loss"]) for row in csv.DictReader(f)]


@pytest.fixture()
def tiny_cli_setup(minilm_tokenizer, tmp_path):
    """A saved tiny random base encoder (usable as --base-model) and a JSONL file of 16 two-fact chains."""
    make_tiny_encoder(minilm_tokenizer, seed=0).save(str(tmp_path / "base"))
    with open(tmp_path / "train.jsonl", "w") as f:
        for example in chain_examples(16, 3):
            row = {"id": example.id, "question": example.question, "chunks": example.chunks}
            f.write(json.dumps(row | {"support": example.support}) + "\n")
    return str(tmp_path / "base"), str(tmp_path / "train.jsonl")


def test_a_run_resumed_on_two_processes_follows_the_single_process_run(tiny_cli_setup, tmp_path, monkeypatch):
    """Killed after step 1 on one process, resumed under torchrun on two: the weights of the whole run."""
    base, data = tiny_cli_setup
    torch.set_num_threads(1)
    assert main(cli_args(base, data, str(tmp_path / "one"))) == 0
    real_step = Trainer.train_step

    def crash_at_step_1(self):
        if self.step == 1:
            raise Crash("killed")
        return real_step(self)

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_1)
    with pytest.raises(Crash):
        main(cli_args(base, data, str(tmp_path / "two")))
    monkeypatch.undo()

    two = torchrun([*cli_args(base, data, str(tmp_path / "two")), "--resume"])
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"steps": 6') == 1, "only the main process reports"
    assert '"processes": 2' in two.stdout
    single, double = weights(tmp_path / "one"), weights(tmp_path / "two")
    untrained = QRAG.from_base(base, device="cpu").state_dict()
    assert max((single[k] - untrained[k]).abs().max() for k in single) > 1e-3, "the run trains"
    gap = max((tensor - double[name]).abs().max().item() for name, tensor in single.items())
    print(f"largest weight difference of 2 processes vs 1: {gap:.2e}")
    assert gap < 1e-5
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)
    model_card = json.loads((tmp_path / "two" / "model" / "config.json").read_text())
    assert model_card["qrag"]["training"]["processes"] == 2


def test_accelerate_launch_on_two_processes_follows_the_single_process_run(tiny_cli_setup, tmp_path):
    """The same run from scratch under the real ``accelerate launch``: the weights of one process."""
    base, data = tiny_cli_setup
    torch.set_num_threads(1)
    assert main(cli_args(base, data, str(tmp_path / "one"))) == 0
    two = torchrun(cli_args(base, data, str(tmp_path / "two")), launcher="accelerate")
    assert two.returncode == 0, two.stderr[-3000:]
    assert '"processes": 2' in two.stdout
    single, double = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert max((tensor - double[name]).abs().max().item() for name, tensor in single.items()) < 1e-5
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-4)


def test_bf16_mixed_precision_trains_on_cpu_and_fp16_needs_a_gpu(tiny_cli_setup, tmp_path, monkeypatch):
    base, data = tiny_cli_setup
    config = TrainingConfig(warm_start_steps=1, rl_steps=1, batch_size=2, lr=1e-3, warm_start_lr=1e-3, eval_every=0)
    model = QRAG.from_base(base, QRAGConfig(max_steps=2), device="cpu")
    before = model.action_head.weight.detach().clone()
    train(model, chain_examples(4, 0), dataclasses.replace(config, mixed_precision="bf16"), show_progress=False)
    assert torch.isfinite(model.action_head.weight).all()
    assert not torch.equal(model.action_head.weight, before)
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInputError, match="fp16"):
            train(model, chain_examples(4, 0), dataclasses.replace(config, mixed_precision="fp16"))
    monkeypatch.setitem(sys.modules, "accelerate", None)  # as without the distributed extra
    with pytest.raises(QRAGError, match=r"qrag\[distributed\]"):
        Processes.from_environment("bf16")
    assert type(Processes.from_environment("no")) is Processes, "one plain process needs no extra package"
