"""SmoothQuant scaling before dynamic INT8: the same function in fp32, a narrower activation range per tensor."""

from __future__ import annotations

from pathlib import Path

import numpy as np
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
