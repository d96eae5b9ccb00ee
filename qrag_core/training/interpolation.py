"""Weight-space interpolation of a fine-tuned model with the model it started from, or with another
fine-tune of that start.

Fine-tuning on new data (real multi-hop passages) moves a model away from what its start knew (BabiLong's
temporal QA3). The interpolated model, θ = θ_start + α (θ_tuned − θ_start), keeps more of both than either
end in many fine-tuning settings (WiSE-FT: Wortsman et al., "Robust fine-tuning of zero-shot models", CVPR
2022). ``α = 1`` is the tuned model, ``α = 0`` the start. The two models must share the frozen action
transformer (one index serves both, and so the interpolated one too) and the same architecture.
"""

from __future__ import annotations

import math

import torch

from qrag_core.errors import InvalidInputError
from qrag_core.model import QRAG
from qrag_core.validation import is_number


def interpolate_weights(start: QRAG, tuned: QRAG, weight: float) -> QRAG:
    """Set ``tuned``'s weights to ``start + weight · (tuned − start)`` in place and return it.

    ``tuned`` keeps its own settings (state piece length, search defaults). InvalidInputError when ``weight``
    is outside [0, 1] or the models differ in action transformer or architecture.
    """
    if not (is_number(weight) and math.isfinite(weight) and 0.0 <= weight <= 1.0):
        raise InvalidInputError(f"interpolation weight must be between 0 and 1, got {weight!r}")
    if start.action_encoder.weights_fingerprint() != tuned.action_encoder.weights_fingerprint():
        raise InvalidInputError(
            "the models have different action transformers (not fine-tuned from one base with it frozen): "
            "their weights cannot be interpolated"
        )
    start_weights, tuned_weights = start.state_dict(), tuned.state_dict()
    if start_weights.keys() != tuned_weights.keys():
        differ = sorted(start_weights.keys() ^ tuned_weights.keys())
        raise InvalidInputError(f"the models differ in architecture (tensors {', '.join(differ[:3])} ...)")
    for name, value in tuned_weights.items():  # all checked before any weight changes
        if start_weights[name].shape != value.shape:
            raise InvalidInputError(
                f"tensor {name} has shape {tuple(start_weights[name].shape)} in one model, {tuple(value.shape)} "
                "in the other"
            )
    with torch.no_grad():
        for name, value in tuned_weights.items():
            origin = start_weights[name].to(value)
            # Equal tensors (the frozen action transformer) stay bit for bit: lerp would turn -0.0 into 0.0
            # and so change the fingerprint that ties indexes to the action transformer.
            if value.is_floating_point() and not torch.equal(origin, value):
                value.copy_(torch.lerp(origin, value, weight))
    tuned.weights_changed()
    return tuned
