"""SmoothQuant-style scaling so that dynamic INT8 keeps the fp32 model's quality.

Dynamic INT8 quantises each MatMul's input with one range per tensor (onnxruntime's DynamicQuantizeLinear),
so a few input channels with large values (common after LayerNorm and GELU in BERT models) waste the 8 bits
of every other channel. Each encoder Linear ``y = x W^T + b`` becomes ``y = (x * 1/s) (W * s)^T + b`` with a
per-input-channel ``s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha)`` measured on calibration windows: the same
function in fp32, with the activation range spread into the weights, which are quantised per channel.

The scaling is an explicit element-wise Mul before each MatMul (BERT's LayerNorm outputs also feed the
residual path, so folding 1/s into them would change the model). It costs little next to the MatMul.
Reference: Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for LLMs" (2023).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from shenhe.models.windowing import Window, pad_batch

DEFAULT_ALPHA = 0.5


class SmoothedLinear(nn.Module):
    """``linear`` with its input scaled by ``1/s`` and its weight's input columns by ``s`` (same function)."""

    inv_scale: torch.Tensor  # a registered buffer

    def __init__(self, linear: nn.Linear, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("inv_scale", (1.0 / scale).to(linear.weight.dtype))
        self.linear = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(linear.weight * scale[None, :])
            if linear.bias is not None:
                self.linear.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x * self.inv_scale)


def _encoder_linears(model: nn.Module, skip: Sequence[str] = ()) -> list[tuple[nn.Module, str, nn.Linear]]:
    """(parent, attribute, Linear) of every Linear inside the encoder's transformer layers, except those whose
    module path contains one of ``skip``."""
    out = []
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            path = _path_of(model, child)
            if isinstance(child, nn.Linear) and ".layer." in path and not any(k in path for k in skip):
                out.append((parent, name, child))
    return out


def _path_of(model: nn.Module, module: nn.Module) -> str:
    for name, m in model.named_modules():
        if m is module:
            return "." + name
    return ""


@torch.inference_mode()
def is_ffn_out(path: str) -> bool:
    """The second FFN Linear of a layer (``...layer.N.output.dense``; not ``attention.output.dense``)."""
    return re.search(r"\.layer\.\d+\.output\.dense$", path) is not None


def smooth_for_int8(model: nn.Module, windows: Sequence[Window], pad_token_id: int, alpha: float = DEFAULT_ALPHA,
                    batch_size: int = 32, skip: Sequence[str] = (), alpha_ffn_out: float | None = None) -> int:
    """Replace the encoder layers' Linears by :class:`SmoothedLinear` calibrated on ``windows``; returns how many.

    ``alpha_ffn_out`` (default ``alpha``) is the migration strength for the FFN-out Linears, whose input (the
    GELU output) has the strongest outlier channels."""
    model.eval()
    targets = _encoder_linears(model, skip)
    paths = {id(linear): _path_of(model, linear) for _p, _n, linear in targets}
    maxima: dict[int, torch.Tensor] = {}
    hooks = []
    for _parent, _name, linear in targets:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], key: int = id(linear)) -> None:
            (x,) = args
            m = x.detach().abs().reshape(-1, x.shape[-1]).amax(dim=0)
            maxima[key] = m if key not in maxima else torch.maximum(maxima[key], m)
        hooks.append(linear.register_forward_pre_hook(hook))
    try:
        order = sorted(range(len(windows)), key=lambda i: len(windows[i].ids))
        for k in range(0, len(order), batch_size):
            ids, mask = pad_batch([windows[i] for i in order[k:k + batch_size]], pad_token_id)
            model(torch.from_numpy(ids), torch.from_numpy(mask))
    finally:
        for h in hooks:
            h.remove()
    for parent, name, linear in targets:
        act = maxima[id(linear)].clamp(min=1e-5)
        weight = linear.weight.detach().abs().amax(dim=0).clamp(min=1e-5)
        a = alpha_ffn_out if alpha_ffn_out is not None and is_ffn_out(paths[id(linear)]) else alpha
        scale = (act.pow(a) / weight.pow(1.0 - a)).clamp(min=1e-5)
        setattr(parent, name, SmoothedLinear(linear, scale))
    return len(targets)


def calibration_windows(windows: Sequence[Window], n: int = 512, seed: int = 0) -> list[Window]:
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(windows), size=min(n, len(windows)), replace=False)
    return [windows[i] for i in sorted(idx)]
