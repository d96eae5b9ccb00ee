"""Weight-space interpolation of a tuned model with its start."""

from __future__ import annotations

import copy

import pytest
import torch

from qrag_core.config import QRAGConfig
from qrag_core.errors import InvalidInputError
from qrag_core.model import QRAG
from qrag_core.training.interpolation import interpolate_weights
from tests.conftest import make_tiny_encoder, make_tiny_model

QUESTIONS = ["Where is Mary?"]
SELECTIONS = [["Mary moved to the bathroom."]]


@pytest.fixture()
def start_and_tuned(minilm_tokenizer):
    start = make_tiny_model(minilm_tokenizer)
    with torch.no_grad():  # negative zeros, which a careless interpolation turns into +0.0
        next(start.action_encoder.parameters()).view(-1)[:8] = -0.0
    tuned = copy.deepcopy(start)
    torch.manual_seed(5)
    with torch.no_grad():
        for parameter in tuned.parameters():
            if parameter.requires_grad:
                parameter.add_(0.1 * torch.randn_like(parameter))
    tuned.weights_changed()
    return start, tuned


def state(model) -> torch.Tensor:
    with torch.no_grad():
        return model.state_vectors(QUESTIONS, SELECTIONS)


def test_the_ends_are_the_start_and_the_tuned_model(start_and_tuned):
    start, tuned = start_and_tuned
    tuned_state = state(tuned)
    assert not torch.allclose(state(start), tuned_state)
    assert torch.allclose(state(interpolate_weights(start, copy.deepcopy(tuned), 1.0)), tuned_state)
    assert torch.allclose(state(interpolate_weights(start, copy.deepcopy(tuned), 0.0)), state(start), atol=1e-6)


def test_weights_are_the_weighted_mean_and_the_action_transformer_is_untouched(start_and_tuned):
    start, tuned = start_and_tuned
    before = {name: value.clone() for name, value in tuned.state_dict().items()}
    fingerprint = tuned.action_encoder.fingerprint()
    merged = interpolate_weights(start, tuned, 0.25)
    assert merged is tuned
    for name, value in merged.state_dict().items():
        expected = start.state_dict()[name] + 0.25 * (before[name] - start.state_dict()[name])
        assert torch.allclose(value, expected, atol=1e-6), name
    assert merged.action_encoder.fingerprint() == fingerprint
    assert not torch.allclose(state(merged), state(start))


def test_models_of_another_action_transformer_are_refused(minilm_tokenizer, start_and_tuned):
    start, _ = start_and_tuned
    other = make_tiny_model(minilm_tokenizer, seed=3)
    with pytest.raises(InvalidInputError, match="different action transformers"):
        interpolate_weights(start, other, 0.5)


@pytest.mark.parametrize("weight", [-0.1, 1.5, float("nan"), "0.5"])
def test_a_weight_outside_zero_to_one_is_refused(start_and_tuned, weight):
    start, tuned = start_and_tuned
    with pytest.raises(InvalidInputError, match="between 0 and 1"):
        interpolate_weights(start, tuned, weight)


def test_models_of_another_architecture_are_refused_and_left_unchanged(minilm_tokenizer, start_and_tuned):
    start, tuned = start_and_tuned
    before = {name: value.clone() for name, value in tuned.state_dict().items()}
    headless = make_tiny_model(minilm_tokenizer, QRAGConfig(action_head=False))
    headless.action_encoder.model.load_state_dict(start.action_encoder.model.state_dict())  # the same transformer
    headless.weights_changed()
    with pytest.raises(InvalidInputError, match="differ in architecture"):
        interpolate_weights(headless, tuned, 0.5)
    assert all(torch.equal(value, before[name]) for name, value in tuned.state_dict().items())


def test_tensors_of_another_shape_are_refused_before_any_weight_changes(minilm_tokenizer, start_and_tuned):
    start, tuned = start_and_tuned
    before = {name: value.clone() for name, value in tuned.state_dict().items()}
    # the tiny model's state encoder with a narrower feed-forward layer: the same tensors, some of another shape
    narrower = make_tiny_encoder(minilm_tokenizer, seed=0, intermediate=48)
    other = QRAG(start.config, narrower, start.action_encoder)
    with pytest.raises(InvalidInputError, match="has shape"):
        interpolate_weights(other, tuned, 0.5)
    assert all(torch.equal(value, before[name]) for name, value in tuned.state_dict().items())
