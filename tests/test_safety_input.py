"""Bad input gets a clear error naming the setting, or the file and line, and the problem; nothing is silent.

Each test here failed before its fix: NaN/inf or mistyped settings trained or crashed deep inside,
empty or boolean support labels were accepted, undecodable files raised raw UnicodeDecodeError
tracebacks, and option mistakes in the CLIs and the Python API ended in tracebacks.
"""

from __future__ import annotations

import math

import pytest

from qrag_core import QRAGConfig
from qrag_core.config import ChunkingConfig
from qrag_core.errors import CheckpointError, InvalidInputError
from qrag_core.training import TrainingConfig

# ------------------------------------------------------------------------------------------------ settings


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "name",
    [
        "warm_start_lr",
        "warm_start_temperature",
        "warm_start_mistakes",
        "lr",
        "weight_decay",
        "adam_beta1",
        "adam_beta2",
        "adam_eps",
        "max_grad_norm",
        "alpha",
        "gamma",
        "lam",
        "tau",
        "value_head_lr",
        "max_train_seconds",
    ],
)
def test_every_float_training_setting_must_be_finite(name: str, value: float) -> None:
    with pytest.raises(InvalidInputError, match=name):
        TrainingConfig(**{name: value}).validate()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"batch_size": 2.5}, "batch_size"),
        ({"batch_size": True}, "batch_size"),
        ({"rl_steps": "3"}, "rl_steps"),
        ({"value_head": 1}, "value_head"),
        ({"micro_batch_size": 0}, "micro_batch_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**40}, "seed"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"adam_eps": 0.0}, "adam_eps"),
        ({"max_train_seconds": -1.0}, "max_train_seconds"),
    ],
)
def test_training_settings_of_the_wrong_type_or_range_are_named(changes: dict, name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        TrainingConfig(**changes).validate()


def test_the_default_settings_are_valid() -> None:
    TrainingConfig().validate()
    QRAGConfig().validate()


@pytest.mark.parametrize(
    ("changes", "name"),
    [
        ({"delta": math.nan}, "delta"),
        ({"ell": math.inf}, "ell"),
        ({"rope_theta": math.nan}, "rope_theta"),
        ({"stop_threshold": math.nan}, "stop_threshold"),
        ({"stop_threshold": -math.inf}, "stop_threshold"),
        ({"max_steps": "4"}, "max_steps"),
        ({"beam_width": 1.5}, "beam_width"),
        ({"normalize": "yes"}, "normalize"),
        ({"delta": 0.0}, "delta"),
        ({"chunking": ChunkingConfig(mode="words")}, "chunking.mode"),
        ({"chunking": ChunkingConfig(max_tokens=8.0)}, "chunking.max_tokens"),
    ],
)
def test_model_settings_must_be_finite_and_typed(changes: dict, name: str) -> None:
    with pytest.raises(InvalidInputError, match=name):
        QRAGConfig(**changes).validate()


def test_a_saved_config_with_bad_values_is_a_checkpoint_error() -> None:
    data = QRAGConfig().to_dict() | {"delta": "ten"}
    with pytest.raises(CheckpointError, match="delta"):
        QRAGConfig.from_dict(data)
    with pytest.raises(CheckpointError, match="overlap"):
        QRAGConfig.from_dict(QRAGConfig().to_dict() | {"chunking": {"overlap": 3}})
    with pytest.raises(CheckpointError, match="JSON object"):
        QRAGConfig.from_dict([1, 2])  # type: ignore[arg-type]
