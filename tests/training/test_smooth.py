"""SmoothQuant scaling before dynamic INT8: the same function in fp32, a narrower activation range per tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shenhe.models.normalize import normalize_text
from shenhe.models.windowing import WindowTokenizer, pad_batch

TEXTS = ["你这个傻逼，滚回你老家去", "今天天气不错，出去走走", "高薪兼职刷单，日结三百，加微信详聊", "好"]


def test_smoothed_linear_is_the_same_function() -> None:
    from shenhe.training.finetune.smooth import SmoothedLinear

    torch.manual_seed(0)
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(5, 16) * torch.linspace(0.1, 30, 16)  # one input channel far larger than the others
    scale = torch.rand(16) * 5 + 0.1
    smoothed = SmoothedLinear(linear, scale)
    torch.testing.assert_close(smoothed(x), linear(x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(smoothed.linear.weight, linear.weight)


def test_smoothing_a_model_keeps_its_outputs_and_evens_out_the_inputs(tiny_run: Path) -> None:
    from shenhe.training.finetune.model import load_model
    from shenhe.training.finetune.smooth import SmoothedLinear, smooth_for_int8

    model, tok, meta = load_model(tiny_run / "model", attn_implementation="eager")
    windower = WindowTokenizer(tok.backend_tokenizer, 48, 8, tok.pad_token_id, meta["text_prefix"])
    windows = windower.windows([normalize_text(t) for t in TEXTS])
    ids, mask = pad_batch(windows, tok.pad_token_id)
    with torch.inference_mode():
        before = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    n = smooth_for_int8(model, windows, tok.pad_token_id, skip=(".output.dense",))
    smoothed = [m for m in model.modules() if isinstance(m, SmoothedLinear)]
    assert n == len(smoothed) > 0
    assert all(".output.dense" not in name or ".attention." in name
               for name, m in model.named_modules() if isinstance(m, SmoothedLinear))
    with torch.inference_mode():
        after = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)


def test_partial_scheme_keeps_the_ffn_out_with_outlier_inputs_weight_only(tiny_run: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensitivity ranking finds the layer whose GELU output has an outlier channel (what per-tensor
    activation quantisation handles worst), and a partial scheme keeps exactly the top-ranked FFN-out weight-only."""
    import onnx

    from shenhe.training.finetune import backend
    from shenhe.training.finetune.backend import (
        export_onnx,
        ffn_out_matmuls,
        ffn_out_sensitivity,
        quantize_int8,
    )
    from shenhe.training.finetune.model import load_model

    model, tok, meta = load_model(tiny_run / "model")
    layers = model.encoder.encoder.layer
    assert len(layers) >= 2
    with torch.no_grad():  # one FFN channel of the last layer fires 40x stronger: an outlier in its GELU output
        layers[-1].intermediate.dense.weight[3] *= 40.0
        layers[-1].intermediate.dense.bias[3] = 20.0
    src = tmp_path / "fp32.onnx"
    export_onnx(model, src, pad_token_id=tok.pad_token_id)
    windower = WindowTokenizer(tok.backend_tokenizer, 48, 8, tok.pad_token_id, meta["text_prefix"])
    windows = windower.windows([normalize_text(t) for t in TEXTS])

    ranked = ffn_out_sensitivity(src, windows, tok.pad_token_id, batch_size=2)
    assert sorted(name for name, _ in ranked) == sorted(ffn_out_matmuls(src))
    assert f"layer.{len(layers) - 1}/" in ranked[0][0]
    assert ranked[0][1] > 2 * ranked[-1][1] > 0

    with pytest.raises(ValueError, match="ranking"):
        quantize_int8(src, tmp_path / "no-ranking.onnx", "dynamic-ffn3")
    # The tiny model has 2 layers: keep 1 weight-only. The most sensitive is the last layer, so taking the
    # ranking's head (not the graph's first FFN-out) is what puts it there.
    monkeypatch.setitem(backend.WEIGHT_ONLY_FFN_OUT, "dynamic-ffn3", 1)
    out = tmp_path / "partial.onnx"
    quantize_int8(src, out, "dynamic-ffn3", [name for name, _ in ranked])
    graph = onnx.load(str(out)).graph
    (weight_only,) = [n.name for n in graph.node if n.op_type == "MatMulNBits"]
    assert f"layer.{len(layers) - 1}/output/dense/" in weight_only, weight_only
    dynamic = [n.name for n in graph.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert any("layer.0/output/dense/" in name for name in dynamic), dynamic  # the other FFN-out: dynamic
