"""Fast inference of a frozen transformer: an exported ONNX copy run by ONNX Runtime (optionally int8) on a
CPU, torch in bfloat16 on a CPU with bfloat16 matrix units, or torch in float16 on a GPU.

The action encoder of Q-RAG is frozen by default, so the content embeddings of an index can come
from an exported copy of its transformer instead of torch. ``onnx`` runs the float32 graph with
ONNX Runtime's graph optimisations; ``onnx-int8`` quantises the weights of its matrix products to
int8 (dynamic quantisation: activations are quantised per batch at run time, no calibration).
The exported files are cached under ``<cache dir>/onnx`` by the weights' fingerprint, written
atomically, so each model is exported once. The pooling stays in torch (see ``encoders``).

The ONNX backends need the ``onnx`` extra (``pip install qrag[onnx]``: onnxruntime and onnx). The torch
backends need nothing more:

- ``torch-fp16`` runs the transformer under float16 autocast (the pooling stays in float32): about twice as
  fast as float32 on a CUDA GPU, but slower than float32 on a CPU, which has no fast float16 matrix products;
- ``torch-bf16`` runs a bfloat16 copy of the transformer (weights cast once; the pooling stays in float32):
  on a CPU with AMX (Intel Sapphire Rapids and later) it is the fastest backend at float32's fact EM; with
  AVX-512 bfloat16 instructions but no AMX (AMD Zen 4) it is faster than float32 but slower than ``onnx-int8``
  (benchmarks/encoding.md); without either it is slower than float32, and says so.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from qrag_core.atomic import atomic_file, owned_prefix, remove_stale, remove_unnamed
from qrag_core.errors import InvalidInputError

logger = logging.getLogger(__name__)

BACKENDS = ("torch", "torch-fp16", "torch-bf16", "onnx", "onnx-int8")
"""``torch``: the model itself; ``torch-fp16``: the model under float16 autocast (for GPUs); ``torch-bf16``: a
bfloat16 copy of the model (for CPUs with bfloat16 units); ``onnx``: ONNX Runtime float32; ``onnx-int8``: ONNX Runtime,
int8 weights."""
ONNX_BACKENDS = ("onnx", "onnx-int8")
"""The backends that run an exported copy in ONNX Runtime."""
QUANTISATION = "dynamic-qint8-per-channel"
"""How ``onnx-int8`` quantises (recorded in the fingerprint of what it encodes)."""
EXPORT_PREFIX = ".tmp-onnx-"
"""Start of the name of an export's temporary directory, beside the exported file."""


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise InvalidInputError(f"unknown encoding backend {backend!r}; use one of {', '.join(BACKENDS)}")
    if backend in ONNX_BACKENDS and not onnx_runtime_installed():
        raise InvalidInputError(f"the {backend!r} backend needs ONNX Runtime: pip install 'qrag[onnx]'")
    return backend


def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 BF16 or AMX), which make ``torch-bf16`` fast."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tile units (Intel Sapphire Rapids and later), where ``torch-bf16`` is fastest
    (False with a torch too old to tell)."""
    supported = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(supported()) if supported is not None else False


def onnx_runtime_installed() -> bool:
    """Whether ONNX Runtime (the ``onnx`` extra) can be imported, so the ONNX backends can run."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def default_index_backend(device: torch.device) -> str:
    """What ``auto`` builds indexes with: the fastest backend measured on this kind of CPU whose fact EM stays
    within 0.01 of float32 torch (benchmarks/encoding.md).

    ``torch-bf16`` on a CPU with AMX (3.2× plain sentence-transformers, the same fact EM); elsewhere ``onnx-int8``
    where ONNX Runtime is installed (3.2× on an AMD EPYC with AVX-512 VNNI, 1.8× on one with AVX2 only; fact EM
    0.003–0.010 lower), else ``torch-bf16`` on a CPU with AVX-512 BF16 (2.4×), else float32 ``torch``; on a GPU,
    ``torch``.
    """
    if device.type != "cpu":
        return "torch"
    if cpu_has_amx():
        return "torch-bf16"
    if onnx_runtime_installed():
        return "onnx-int8"
    return "torch-bf16" if cpu_has_bfloat16() else "torch"


def backend_description(backend: str) -> str:
    """What decides the numbers a backend produces, for fingerprints: the backend and its quantisation."""
    return f"{backend}:{QUANTISATION}" if backend == "onnx-int8" else backend


class _HiddenStates(nn.Module):
    """The transformer with positional inputs and the last hidden state as its only output (for export)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def _export(model: nn.Module, target: Path, quantise: bool) -> None:
    """Export ``model`` to ONNX at ``target`` (int8-quantised if asked), atomically (a full disk is a
    StorageError naming ``target``, and no temporary file is left).

    The export is written in a temporary directory named with this process's id; those of exports whose
    process was killed (each a half-written model) are removed first, and so are those older qrag versions
    named without a process id once nothing in them has changed for a day (such a version may be
    exporting into the shared cache right now).
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, EXPORT_PREFIX)
    remove_unnamed(target.parent, EXPORT_PREFIX)
    with (
        atomic_file(target) as out,
        tempfile.TemporaryDirectory(dir=target.parent, prefix=owned_prefix(EXPORT_PREFIX)) as tmp,
    ):
        plain = Path(tmp) / "model.onnx"
        ids = torch.ones((2, 8), dtype=torch.long)
        mask = torch.ones((2, 8), dtype=torch.long)
        mask[1, 5:] = 0  # traced with padding, so the graph keeps the attention mask
        axes = {0: "batch", 1: "tokens"}
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer notes on shape-dependent Python branches (the mask path is kept)
            torch.onnx.export(
                _HiddenStates(model).eval(),
                (ids, mask),
                str(plain),
                input_names=["input_ids", "attention_mask"],
                output_names=["hidden"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
                opset_version=17,
                dynamo=False,
            )
        if quantise:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantised = Path(tmp) / "model-int8.onnx"
            quantize_dynamic(str(plain), str(quantised), weight_type=QuantType.QInt8, per_channel=True)
            plain = quantised
        os.replace(plain, out)


class OnnxRunner:
    """An ONNX Runtime session of one exported transformer; maps (ids, mask) to last hidden states."""

    def __init__(self, model: nn.Module, backend: str, key: str, cache_dir: Path, spin: bool = True) -> None:
        """``spin``: let idle threads busy-wait for the next run (faster bulk encoding); off where runs
        alternate with torch work, as the state encodings of a search do, whose cores spinning would take."""
        import onnxruntime as ort

        path = cache_dir / "onnx" / f"{key}-{backend}.onnx"
        if not path.is_file():
            logger.info("exporting the encoder to %s (once per model)", path)
            was_training = model.training
            _export(model.eval(), path, quantise=backend == "onnx-int8")
            model.train(was_training)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.path = path

    def __deepcopy__(self, memo: dict) -> OnnxRunner:
        return self  # a read-only session: copies of a model (e.g. a target network) share it

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        feeds = {"input_ids": input_ids.cpu().numpy(), "attention_mask": attention_mask.cpu().numpy()}
        (hidden,) = self.session.run(None, feeds)
        return torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32))
