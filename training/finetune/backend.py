"""ONNX export of encoder + head, INT8 dynamic quantisation, and the parity checks between them.

The exported graph takes ``input_ids`` and ``attention_mask`` (int64, dynamic batch and sequence axes)
and returns ``logits`` (float32 [batch, 9]): exactly what ``models.predictor`` feeds and reads.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.windowing import Window, WindowTokenizer, max_over_windows, pad_batch, score_windows
from shenhe.training.finetune.model import MultiLabelClassifier

OPSET = 17
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["logits"]


def export_onnx(model: MultiLabelClassifier, path: Path, pad_token_id: int, opset: int = OPSET) -> None:
    """TorchScript-based export (``dynamo=False``; matches torch to ~1e-7 on this architecture)."""
    model = model.eval().cpu()
    ids = torch.full((2, 8), pad_token_id, dtype=torch.long)
    ids[:, :6] = torch.arange(3, 9)  # any in-vocabulary ids; shapes are dynamic
    mask = (ids != pad_token_id).long()
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about python conditions on static shapes
        torch.onnx.export(
            model, (ids, mask), str(path),
            input_names=INPUT_NAMES, output_names=OUTPUT_NAMES,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "logits": {0: "batch"}},
            opset_version=opset, do_constant_folding=True, dynamo=False,
        )


# Quantisation schemes, fastest first on this CPU (bench/speed.py measures them). `shenhe export` takes the
# fastest scheme whose *quality* (with its own calibration and thresholds) holds against fp32; agreement with
# fp32 decisions is reported, not gated, because the fp32 model is never served.
# - "dynamic": int8 per-channel weights with int8 activations quantised per tensor at run time
#   (MatMulInteger); gains from batching. Every encoder Linear is SmoothQuant-scaled first
#   (training/finetune/smooth.py), which per-tensor activation ranges need to keep quality.
# - "dynamic-ffn3", "dynamic-ffn6": as "dynamic", except the FFN-out MatMuls of the 3 (6) layers whose
#   per-tensor activation quantisation errs most (:func:`ffn_out_sensitivity`, measured on dev windows)
#   stay weight-only int8 (MatMulNBits). A weight-only MatMul costs ~4x a dynamic one per FLOP here, so each
#   such layer costs a few percent of speed; the GELU outliers that hurt "dynamic" sit in a few layers.
# - "dynamic-mixed": the same for the attention and first FFN MatMuls; the second FFN MatMul (its input is
#   the GELU output, whose outlier channels per-tensor ranges handle worst) weight-only int8 with per-block
#   int8 activations (MatMulNBits) in every layer.
# - "weight-only": every MatMul int8 in blocks of 32 (MatMulNBits) with int8 ("int8 compute") or fp32
#   activations; about fp32 ONNX speed and no gain from batching.
# - "fp32": the unquantised graph.
# The embedding table is int8 per row in every quantised scheme. onnxruntime's transformer fusions
# (Attention, SkipLayerNormalization, BiasGelu) measured slower with dynamic INT8 on this CPU (287 vs 333
# texts/s at batch 32 on short texts), so they are not applied.
QUANT_SCHEMES: dict[str, str] = {
    "dynamic": "int8 dynamic (SmoothQuant-scaled; per-channel weights, per-tensor activations at run time)",
    "dynamic-ffn3": "int8 dynamic (SmoothQuant-scaled), except FFN-out in the 3 most quantisation-sensitive layers: "
                    "int8 weight-only (MatMulNBits, blocks of 32)",
    "dynamic-ffn6": "int8 dynamic (SmoothQuant-scaled), except FFN-out in the 6 most quantisation-sensitive layers: "
                    "int8 weight-only (MatMulNBits, blocks of 32)",
    "dynamic-mixed": "int8 dynamic for attention and FFN-in (Q/K/V and FFN-in SmoothQuant-scaled), int8 "
                     "weight-only (MatMulNBits, blocks of 32) for FFN-out",
    "weight-only": "int8 weight-only, blocks of 32 (MatMulNBits, int8 compute)",
    "weight-only-fp32": "int8 weight-only, blocks of 32 (MatMulNBits, fp32 compute)",
    "fp32": "fp32 (not quantised)",
}


@dataclass(frozen=True)
class Smoothing:
    """Which encoder Linears a scheme SmoothQuant-scales before quantising (training/finetune/smooth.py)."""

    skip: tuple[str, ...] = ()  # module-path fragments left unscaled
    alpha_ffn_out: float | None = None  # migration strength for FFN-out (default: the common 0.5)


# dynamic-mixed as shipped in 2026.12.01.1: Q/K/V and FFN-in scaled; ".output.dense" leaves both output
# projections (attention-out and FFN-out) unscaled. None: not smoothed.
SMOOTHING: dict[str, Smoothing | None] = {
    "dynamic": Smoothing(alpha_ffn_out=0.7), "dynamic-ffn3": Smoothing(alpha_ffn_out=0.7),
    "dynamic-ffn6": Smoothing(alpha_ffn_out=0.7), "dynamic-mixed": Smoothing(skip=(".output.dense",)),
    "weight-only": None, "weight-only-fp32": None, "fp32": None,
}
WEIGHT_ONLY_BLOCK = 32
# Partial schemes: how many FFN-out MatMuls (the most sensitive first) stay weight-only.
WEIGHT_ONLY_FFN_OUT: dict[str, int] = {"dynamic-ffn3": 3, "dynamic-ffn6": 6}


def ffn_out_matmuls(model_path: Path) -> list[str]:
    """Names of the second FFN MatMul of every layer (``.../layer.N/output/dense/...``)."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    return [n.name for n in graph.node if n.op_type == "MatMul" and "/output/dense/" in n.name
            and "/attention/" not in n.name]


def _dynamic_quantization_error(x: np.ndarray) -> np.ndarray:
    """``x`` after onnxruntime's run-time activation quantisation (DynamicQuantizeLinear: uint8, one scale
    and zero point for the whole tensor, the range always containing 0), dequantised."""
    lo, hi = min(0.0, float(x.min())), max(0.0, float(x.max()))
    scale = (hi - lo) / 255 or 1.0
    zero = float(np.clip(np.round(-lo / scale), 0, 255))
    return (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale


def ffn_out_sensitivity(model_path: Path, windows: Sequence[Window], pad_token_id: int,
                        batch_size: int = 32) -> list[tuple[str, float]]:
    """FFN-out MatMuls ranked by how much dynamic INT8 disturbs them, worst first, with the relative squared
    error ``sum|x~ W~ - x W|^2 / sum|x W|^2`` of each one's output over ``windows`` (its real inputs ``x`` from
    the fp32 model, ``x~`` quantised per tensor as at run time, ``W~`` per output channel as
    ``quantize_dynamic`` does). Batches are padded as the predictor pads them: the padding is in the range too."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    names = ffn_out_matmuls(model_path)
    model = onnx.load(str(model_path))
    nodes = {n.name: n for n in model.graph.node}
    weights = {i.name: i for i in model.graph.initializer}
    inputs = [nodes[n].input[0] for n in names]
    exact = [numpy_helper.to_array(weights[nodes[n].input[1]]).astype(np.float64) for n in names]
    steps = [np.abs(w).max(axis=0, keepdims=True) / 127 for w in exact]  # per output channel, symmetric
    steps = [np.where(st > 0, st, 1.0) for st in steps]
    quantized = [np.round(w / st) * st for w, st in zip(exact, steps, strict=True)]
    for x in inputs:
        model.graph.output.append(onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 0
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    err = np.zeros(len(names))
    total = np.zeros(len(names))
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
    for k in range(0, len(order), batch_size):
        ids, mask = pad_batch([windows[i] for i in order[k:k + batch_size]], pad_token_id)
        for j, x in enumerate(session.run(inputs, {"input_ids": ids, "attention_mask": mask})):
            flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
            y = flat @ exact[j]
            err[j] += float(((_dynamic_quantization_error(flat) @ quantized[j] - y) ** 2).sum())
            total[j] += float((y ** 2).sum())
    ranked = sorted(zip(names, (err / np.maximum(total, 1e-30)).tolist(), strict=True), key=lambda t: -t[1])
    return [(n, float(e)) for n, e in ranked]


def _quiet_root(level: int) -> int:
    import logging

    root = logging.getLogger()
    old = root.level
    root.setLevel(level)
    for name in ("onnxruntime.quantization.matmul_nbits_quantizer", "onnxruntime.quantization"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return old


@contextlib.contextmanager
def _scratch_cwd() -> Iterator[None]:
    """Run inside a throw-away working directory: onnxruntime's symbolic shape inference drops
    ``sym_shape_infer_temp.onnx`` (+ external data) into the current directory when it gives up."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="shenhe-quant-") as tmp:
        os.chdir(tmp)
        try:
            yield
        finally:
            os.chdir(old)


def quantize_int8(fp32_path: Path, int8_path: Path, scheme: str = "dynamic",
                  ffn_out_ranking: Sequence[str] | None = None) -> None:
    """Quantise an fp32 ONNX model with one of :data:`QUANT_SCHEMES`. The partial schemes
    (:data:`WEIGHT_ONLY_FFN_OUT`) need ``ffn_out_ranking``: FFN-out MatMul names, most sensitive first
    (:func:`ffn_out_sensitivity`)."""
    fp32_path, int8_path = Path(fp32_path).resolve(), Path(int8_path).resolve()
    if scheme in WEIGHT_ONLY_FFN_OUT and ffn_out_ranking is None:
        raise ValueError(f"scheme {scheme!r} needs the FFN-out sensitivity ranking (ffn_out_sensitivity)")
    with _scratch_cwd():
        _quantize_int8(fp32_path, int8_path, scheme, ffn_out_ranking)


def _quantize_int8(fp32_path: Path, int8_path: Path, scheme: str, ffn_out_ranking: Sequence[str] | None) -> None:
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if scheme not in QUANT_SCHEMES:
        raise ValueError(f"unknown quantisation scheme {scheme!r}; expected one of {', '.join(QUANT_SCHEMES)}")
    if scheme == "fp32":
        import shutil

        shutil.copyfile(fp32_path, int8_path)
        return
    # onnxruntime logs a generic "consider pre-processing" hint on the root logger; measured here,
    # pre-processing (quant_pre_process) changed neither size nor INT8-vs-fp32 agreement for this graph.
    old = _quiet_root(logging.ERROR)
    try:
        if scheme == "dynamic":
            quantize_dynamic(str(fp32_path), str(int8_path), per_channel=True, weight_type=QuantType.QInt8)
            return
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )

        config = DefaultWeightOnlyQuantConfig(block_size=WEIGHT_ONLY_BLOCK, is_symmetric=True, bits=8,
                                              accuracy_level=1 if scheme == "weight-only-fp32" else 4)
        exclude: list[str] = []
        mixed = scheme == "dynamic-mixed" or scheme in WEIGHT_ONLY_FFN_OUT
        if mixed:  # weight-only for (some of) the FFN-out MatMuls only; the rest dynamic below
            ffn_out = set(ffn_out_matmuls(fp32_path) if scheme == "dynamic-mixed"
                          else list(ffn_out_ranking or ())[: WEIGHT_ONLY_FFN_OUT[scheme]])
            exclude = [n.name for n in onnx.load(str(fp32_path)).graph.node
                       if n.op_type == "MatMul" and n.name not in ffn_out]
        quantizer = MatMulNBitsQuantizer(onnx.load(str(fp32_path)), algo_config=config, nodes_to_exclude=exclude)
        quantizer.process()
        mid = int8_path.with_name(int8_path.stem + ".matmul-nbits.onnx")
        quantizer.model.save_model_to_file(str(mid), use_external_data_format=False)
        # The embedding table: int8 per row (a lookup, so weight-only as well); dynamic-mixed: also the
        # remaining MatMuls, dynamic.
        ops = ["Gather", "MatMul"] if mixed else ["Gather"]
        try:
            quantize_dynamic(str(mid), str(int8_path), per_channel=True, weight_type=QuantType.QInt8,
                             op_types_to_quantize=ops)
        finally:
            mid.unlink(missing_ok=True)
    finally:
        logging.getLogger().setLevel(old)


def ort_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_window_logits(session: Any, windower: WindowTokenizer, normalized: list[str], batch_size: int = 64,
                       progress: bool = False, desc: str = "onnx") -> tuple[np.ndarray, np.ndarray]:
    """(text-level max logits [n, 9], window logits) for normalised texts."""
    windows = windower.windows(normalized)
    bar: Any = None
    if progress:
        from functools import partial

        from tqdm import tqdm

        bar = partial(tqdm, desc=desc, unit="batch", leave=False)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run(OUTPUT_NAMES, {"input_ids": ids, "attention_mask": mask})[0]

    out = score_windows(windows, run, windower.pad_token_id, batch_size, len(CATEGORY_SLUGS), bar)
    best, _ = max_over_windows(out, windows, len(normalized))
    return best.astype(np.float32), out


@torch.inference_mode()
def torch_window_logits(model: MultiLabelClassifier, windower: WindowTokenizer, normalized: list[str],
                        batch_size: int = 64) -> np.ndarray:
    """Window logits in the same window order as :func:`onnx_window_logits` (padded identically)."""
    model = model.eval().cpu()

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()

    return score_windows(windower.windows(normalized), run, windower.pad_token_id, batch_size, len(CATEGORY_SLUGS))


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, dtype=np.float64), -60, 60)))


def max_prob_diff(a_logits: np.ndarray, b_logits: np.ndarray) -> float:
    """max |sigmoid(a) - sigmoid(b)| over all windows and categories."""
    return float(np.max(np.abs(sigmoid(a_logits) - sigmoid(b_logits)))) if a_logits.size else 0.0
