"""Start a fine-tuning run from weights that were already fine-tuned (``shenhe train --init-from``).

Retraining on reviewer labels should continue from the model that serves, not from the raw encoder.
``--init-from`` takes one of:

- a run directory (``runs/NAME``) or its ``model/`` folder: the exact torch weights ``save_model`` wrote;
- a bundle directory (``models/default``): the weights are read back from ``model.onnx``. INT8 tensors are
  dequantised; where the base encoder's tensor is consistent with a quantised one (it rounds to the very
  same integers), the base tensor is taken instead, because then it is the exact original of a tensor
  that training kept frozen (embeddings and frozen bottom layers on CPU).

The tokenizer of the source must be the base encoder's (same vocabulary), or ids would mean other pieces.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shenhe.models.bundle import MANIFEST_FILE, MODEL_FILE, TOKENIZER_FILE
from shenhe.models.windowing import Window, pad_batch
from shenhe.training.finetune.errors import TrainError
from shenhe.training.finetune.model import (
    CLASSIFIER_FILE,
    ENCODER_DIR,
    HEAD_FILE,
    MultiLabelClassifier,
    encoder_layers,
    keep_layers,
)

log = logging.getLogger(__name__)

@dataclass
class WarmStartReport:
    """What was loaded from where (written into run.json)."""

    source: str
    kind: str  # "model" | "bundle"
    model: str | None = None  # bundle only: "<name> <version>" from its bundle.json
    tensors: int = 0
    exact_from_base: list[str] = field(default_factory=list)  # bundle only: quantised tensors taken from the base
    dequantized: list[str] = field(default_factory=list)  # bundle only: tensors read back from INT8
    max_abs_logit_diff: float | None = None  # bundle only: recovered torch vs the bundle's ONNX on probe texts

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "kind": self.kind, "model": self.model, "tensors": self.tensors,
                "exact_from_base": len(self.exact_from_base), "dequantized": len(self.dequantized),
                "max_abs_logit_diff": self.max_abs_logit_diff}


def resolve(path: Path) -> tuple[str, Path]:
    """("model" | "bundle", directory) for a run dir, a model dir or a bundle dir."""
    path = Path(path).expanduser()
    if (path / MANIFEST_FILE).is_file() and (path / MODEL_FILE).is_file():
        return "bundle", path
    for candidate in (path, path / "model"):
        if (candidate / CLASSIFIER_FILE).is_file() and (candidate / HEAD_FILE).is_file():
            return "model", candidate
    raise TrainError(f"--init-from {path}: not a run, a model folder (classifier.json + head.safetensors) "
                     f"or a bundle (bundle.json + model.onnx)")


def _same_vocabulary(tokenizer: Any, tokenizer_json: Path, source: Path) -> None:
    from tokenizers import Tokenizer

    theirs = Tokenizer.from_file(str(tokenizer_json)).get_vocab()
    ours = tokenizer.backend_tokenizer.get_vocab()
    if theirs != ours:
        raise TrainError(f"--init-from {source}: its tokenizer ({len(theirs)} pieces) is not the base encoder's "
                         f"({len(ours)} pieces); use the --base it was trained from")


def init_from(model: MultiLabelClassifier, tokenizer: Any, source: Path,
              probe: list[Window] | None = None) -> WarmStartReport:
    """Overwrite ``model``'s encoder and head with the weights in ``source`` (see module doc)."""
    kind, directory = resolve(source)
    if kind == "model":
        return _from_model_dir(model, tokenizer, directory)
    return _from_bundle(model, tokenizer, directory, probe or [])


def _from_model_dir(model: MultiLabelClassifier, tokenizer: Any, directory: Path) -> WarmStartReport:
    from safetensors.torch import load_file

    meta = json.loads((directory / CLASSIFIER_FILE).read_text(encoding="utf-8"))
    if meta.get("pooling", "mean") != model.pooling:
        raise TrainError(f"--init-from {directory}: pooling {meta.get('pooling')!r} differs from {model.pooling!r}")
    _same_vocabulary(tokenizer, directory / ENCODER_DIR / "tokenizer.json", directory)
    encoder_state: dict[str, torch.Tensor] = {}
    for file in sorted((directory / ENCODER_DIR).glob("*.safetensors")):
        encoder_state.update(load_file(str(file)))
    head = load_file(str(directory / HEAD_FILE))
    _fit_layers(model, encoder_state, r"^encoder\.layer\.(\d+)\.", directory)
    missing, _unexpected = model.encoder.load_state_dict(encoder_state, strict=False)
    missing = [k for k in missing if "position_ids" not in k and not k.startswith("pooler.")]
    if missing:
        raise TrainError(f"--init-from {directory}: encoder weights missing {missing[:3]} (a different architecture?)")
    try:
        model.head.load_state_dict(head)
    except RuntimeError as e:
        raise TrainError(f"--init-from {directory}: head does not fit this model: {str(e).splitlines()[0]}") from None
    return WarmStartReport(source=str(directory), kind="model", tensors=len(encoder_state) + len(head))


def _fit_layers(model: MultiLabelClassifier, names: Any, pattern: str, source: Path) -> None:
    """A distilled student (``shenhe distill``) has fewer encoder layers than its base encoder: keep that many
    of the model's layers (the source's weights replace them) so its weights fit."""
    found = {int(m.group(1)) for name in names if (m := re.match(pattern, name))}
    layers = encoder_layers(model.encoder)
    if not found or layers is None or len(layers) == max(found) + 1:
        return
    stored = max(found) + 1
    if stored > len(layers):
        raise TrainError(f"--init-from {source}: {stored} encoder layers, the base encoder {len(layers)}")
    keep_layers(model, list(range(stored)))
    log.info("%s has %d encoder layers (a distilled student): the model keeps %d of the base's %d",
             source, stored, stored, len(layers))


# -- bundles -----------------------------------------------------------------------------------------

def _dequantize_nbits(b: np.ndarray, scales: np.ndarray, zero_points: np.ndarray | None, k: int, n: int,
                      bits: int, block_size: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits weights -> (W as [N, K] like nn.Linear.weight, per-element half step of the quantiser)."""
    if bits != 8:
        raise TrainError(f"MatMulNBits with {bits} bits is not supported (8 only)")
    n_blocks = (k + block_size - 1) // block_size
    q = b.reshape(n, n_blocks, block_size).astype(np.float32)
    s = scales.reshape(n, n_blocks, 1).astype(np.float32)
    zp = (np.full((n, n_blocks, 1), 128.0, dtype=np.float32) if zero_points is None
          else zero_points.reshape(n, -1)[:, :n_blocks].reshape(n, n_blocks, 1).astype(np.float32))
    w = ((q - zp) * s).reshape(n, n_blocks * block_size)[:, :k]
    half = np.broadcast_to(np.abs(s) / 2.0, q.shape).reshape(n, n_blocks * block_size)[:, :k]
    return w, half


def _dequantize_table(q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """QuantizeLinear-style 2-D tensor (per-tensor, per-row or per-column) -> (fp32 value, half step)."""
    zp = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 1 and scale.size == q.shape[0] and q.ndim == 2 and scale.size != q.shape[1]:
        scale, zp = scale.reshape(-1, 1), zp.reshape(-1, 1)  # per row (axis 0)
    value = (q.astype(np.float32) - zp) * scale  # per tensor, or per column (axis 1) by broadcasting
    half = np.broadcast_to(np.abs(scale) / 2.0, q.shape).astype(np.float32)
    return value, half


def _param_for_output(output: str, suffix: str) -> str | None:
    """'/encoder/encoder/layer.3/attention/self/query/MatMul_output_0' -> 'encoder.encoder.layer.3...query.weight'."""
    if not output.startswith("/") or not output.endswith(suffix):
        return None
    return output[1:-len(suffix)].replace("/", ".") + ".weight"


def _bundle_tensors(onnx_path: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(parameter name -> fp32 value, parameter name -> quantisation half-step) read back from the graph.

    Handles what export writes: fp32 initializers named like the parameters (biases, norms); MatMul weights
    as fp32 ('<param>_Transposed' or anonymous), weight-only INT8 (MatMulNBits) or dynamic INT8
    (MatMulInteger); quantised embedding tables ('<param>_quantized' + '_scale' / '_zero_point'); and the
    fused graph of the "dynamic" scheme: QAttention (Q, K, V packed in one [K, 3N] weight, layer from the
    node's output name) and QEmbedLayerNormalization (embedding tables and their LayerNorm, each int8)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(onnx_path)).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    values: dict[str, np.ndarray] = {}
    half_steps: dict[str, np.ndarray] = {}
    for name, arr in inits.items():
        if arr.dtype == np.float32 and not name.endswith(("_scale", "_scales", "_zero_point")):
            values[name] = arr

    def weight_param(init_name: str, output: str, suffix: str) -> str | None:
        if init_name.endswith("_Transposed"):  # the head: export names it after the parameter
            return init_name[: -len("_Transposed")]
        return _param_for_output(output, suffix)

    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        ins = list(node.input)
        if node.op_type == "MatMulNBits":
            param = weight_param(ins[1].removesuffix("_Q8").removesuffix("_Q4"), node.output[0], "/MatMul_output_0")
            if param is None:
                continue
            zp = inits.get(ins[3]) if len(ins) > 3 and ins[3] else None
            values[param], half_steps[param] = _dequantize_nbits(
                inits[ins[1]], inits[ins[2]], zp, int(attrs["K"]), int(attrs["N"]), int(attrs["bits"]),
                int(attrs["block_size"]))
        elif node.op_type == "MatMulInteger" and ins[1] in inits:
            stem = ins[1].removesuffix("_quantized")
            param = weight_param(stem, node.output[0], "/MatMul_output_0_output_quantized")
            if param is None or stem + "_scale" not in inits:
                continue
            w, half = _dequantize_table(inits[ins[1]], inits[stem + "_scale"], inits.get(stem + "_zero_point"))
            values[param], half_steps[param] = w.T, half.T  # stored [K, N]; nn.Linear wants [N, K]
        elif node.op_type == "MatMul" and ins[1] in inits:
            param = weight_param(ins[1], node.output[0], "/MatMul_output_0")
            if param is not None:
                values[param] = inits[ins[1]].T
        elif node.op_type == "QAttention":  # fused Q/K/V: weight [K, 3N] int8, bias [3N] fp32
            layer = re.search(r"/layer\.(\d+)/", node.output[0])
            if layer is None or ins[1] not in inits:
                continue
            w, half = _dequantize_table(inits[ins[1]], inits[ins[4]], inits.get(ins[7]) if len(ins) > 7 else None)
            prefix = f"encoder.encoder.layer.{layer.group(1)}.attention.self."
            parts = np.split(w, 3, axis=1)
            halves = np.split(half, 3, axis=1)
            biases = np.split(inits[ins[2]], 3)
            for part, part_half, bias, name in zip(parts, halves, biases, ("query", "key", "value"), strict=True):
                values[prefix + name + ".weight"], half_steps[prefix + name + ".weight"] = part.T, part_half.T
                values[prefix + name + ".bias"] = bias
        elif node.op_type == "QEmbedLayerNormalization":  # fused embeddings + LayerNorm, each table int8
            for name in ins[2:7]:
                param = name.removesuffix("_quantized")
                if name in inits and param + "_scale" in inits:
                    values[param], half_steps[param] = _dequantize_table(inits[name], inits[param + "_scale"],
                                                                         inits.get(param + "_zero_point"))
        elif node.op_type == "Gather" and ins[0] in inits and ins[0].endswith("_quantized"):
            param = ins[0].removesuffix("_quantized")
            if param + "_scale" in inits:
                values[param], half_steps[param] = _dequantize_table(inits[ins[0]], inits[param + "_scale"],
                                                                     inits.get(param + "_zero_point"))
    _unsmooth(values, half_steps, inits)
    return values, half_steps


def _unsmooth(values: dict[str, np.ndarray], half_steps: dict[str, np.ndarray], inits: dict[str, np.ndarray]) -> None:
    """Undo export's SmoothQuant scaling (training/finetune/smooth.py): ``<m>.linear.weight`` holds W * s and
    ``<m>.inv_scale`` 1/s; the model's ``<m>.weight`` is their product (column by column)."""
    for key in [k for k in values if k.endswith(".linear.weight")]:
        module = key.removesuffix(".linear.weight")
        inv = inits.get(module + ".inv_scale")
        if inv is None:
            continue
        values[module + ".weight"] = values.pop(key) * inv[None, :]
        if key in half_steps:
            half_steps[module + ".weight"] = half_steps.pop(key) * np.abs(inv)[None, :]
        if module + ".linear.bias" in values:
            values[module + ".bias"] = values.pop(module + ".linear.bias")


def _from_bundle(model: MultiLabelClassifier, tokenizer: Any, directory: Path,
                 probe: list[Window]) -> WarmStartReport:
    bundle = json.loads((directory / MANIFEST_FILE).read_text(encoding="utf-8"))
    _same_vocabulary(tokenizer, directory / TOKENIZER_FILE, directory)
    values, half_steps = _bundle_tensors(directory / MODEL_FILE)
    report = WarmStartReport(source=str(directory), kind="bundle",
                             model=f"{bundle.get('name', '?')} {bundle.get('version', '?')}")
    _fit_layers(model, values, r"^encoder\.encoder\.layer\.(\d+)\.", directory)
    own = model.state_dict()
    wanted = [k for k in own if "position_ids" not in k and not k.startswith("encoder.pooler.")]
    missing = [k for k in wanted if k not in values]
    if missing:
        raise TrainError(f"--init-from {directory}: model.onnx has no weights for {missing[:3]} "
                         f"({len(missing)} in all; a different architecture than --base?)")
    new_state: dict[str, torch.Tensor] = {}
    for key in wanted:
        value = values[key]
        base = own[key].detach().cpu().numpy()
        if value.shape != base.shape:
            raise TrainError(f"--init-from {directory}: {key} has shape {value.shape}, the model {base.shape}")
        if key in half_steps:
            # Base rounds to the same integers: the tensor never trained, so the base value is exact.
            if np.all(np.abs(base - value) <= half_steps[key] * 1.001 + 1e-7):
                report.exact_from_base.append(key)
                value = base
            else:
                report.dequantized.append(key)
        new_state[key] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy
    model.load_state_dict(new_state, strict=False)
    report.tensors = len(new_state)
    if probe:
        report.max_abs_logit_diff = _probe(model, directory / MODEL_FILE, probe, int(bundle.get("pad_token_id", 0)))
    log.info("warm start from bundle %s: %d tensors (%d exact from the base, %d dequantised); "
             "max |Δlogit| vs its ONNX on %d probe texts: %s", directory, report.tensors, len(report.exact_from_base),
             len(report.dequantized), len(probe), report.max_abs_logit_diff)
    return report


def _probe(model: MultiLabelClassifier, onnx_path: Path, windows: list[Window], pad_id: int) -> float:
    """Largest |logit difference| between the recovered torch model and the bundle's ONNX on these windows."""
    import onnxruntime as ort

    input_ids, mask = pad_batch(windows, pad_id)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    onnx_logits = session.run(["logits"], {"input_ids": input_ids, "attention_mask": mask})[0]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(input_ids).to(device), torch.from_numpy(mask).to(device)).cpu().numpy()
    model.train(was_training)
    return float(np.max(np.abs(torch_logits - onnx_logits)))
