"""A finished-run folder rebuilt from a bundle, so `shenhe export` can re-export a shipped model.

A bundle keeps only its INT8 ONNX model; the torch weights of the run that made it may be long gone (runs
live on the machine that trained them). To export the same model again (another quantisation scheme,
graph optimisations, a new policy), the weights are read back from ``model.onnx`` by
:func:`training.finetune.warm_start.init_from` (INT8 tensors dequantised; never-trained tensors taken
exactly from the base encoder) and saved as a run's ``model/``. The fp32 reference of such an export is
therefore the dequantised model, not the original fp32 weights; ``run.json`` says so (``recovered_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shenhe.models.bundle import load_bundle
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.windowing import WindowTokenizer
from shenhe.training.finetune.errors import ExportError

PROBE_TEXTS = (
    "今天天气很好，我们下午去公园散步吧。",
    "你这个傻逼，滚出去",
    "听说明天要地震了，大家快跑",
    "加微信领取免费福利，日赚三千",
    "河南人也好，东北人也好，地域黑真的没意思。",
    "这家餐厅的服务态度太差了，再也不来了。",
)


def recover_run(bundle_dir: Path, base: str, data: Path, out: Path) -> Path:
    """Write ``out/run.json`` and ``out/model/`` with the weights of the bundle in ``bundle_dir``."""
    from shenhe.training.finetune.model import MultiLabelClassifier, load_base, save_model
    from shenhe.training.finetune.warm_start import init_from

    bundle = load_bundle(bundle_dir)
    manifest = bundle.manifest
    encoder, tokenizer, prefix = load_base(base)
    if prefix != manifest.text_prefix:
        raise ExportError(f"--base {base}: its text prefix {prefix!r} differs from the bundle's "
                          f"{manifest.text_prefix!r}; use the encoder the bundle was trained from")
    model = MultiLabelClassifier(encoder)
    windower = WindowTokenizer(tokenizer.backend_tokenizer, manifest.max_length, manifest.window_stride,
                               manifest.pad_token_id, text_prefix=prefix)
    # The probe measures how far the recovered torch model is from the bundle's own ONNX model.
    report = init_from(model, tokenizer, bundle_dir, windower.first_windows(list(PROBE_TEXTS)))
    model.eval()
    save_model(model, tokenizer, out / "model", extra={"text_prefix": prefix, "recovered_from": str(bundle_dir)})
    metrics: dict[str, Any] = bundle.metrics()
    training = dict(metrics.get("training") or {})
    used_rows: dict[str, dict[str, int]] = {}
    for source in manifest.data_sources:
        for split, rows in source.rows.items():
            used_rows.setdefault(split, {})[source.name] = rows
    methods = {manifest.calibration[s].method for s in manifest.trained_categories}
    info = {
        "arch": "bert",
        "status": "done",
        "recovered_from": {"bundle": str(bundle_dir), "name": manifest.name, "version": manifest.version,
                           "warm_start": report.to_dict()},
        "args": {"base": base, "data": str(data), "max_length": manifest.max_length,
                 "window_stride": manifest.window_stride, "calibration": methods.pop() if len(methods) == 1 else "platt"},
        "summary": {**training, "trained_categories": [s for s in CATEGORY_SLUGS if s in manifest.trained_categories],
                    "sources": used_rows},
        "state": {"global_step": training.get("steps"), "stop_reason": training.get("stop_reason")},
        **{k: training.get(k) for k in ("train_samples_per_second", "dev_macro_f1", "test_macro_f1")},
    }
    (out / "run.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return out
