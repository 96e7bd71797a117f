"""Export parity: fp32 ONNX reproduces torch; the shipped INT8 model keeps fp32's decisions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.bundle import load_bundle
from models.normalize import normalize_text
from models.policy import CATEGORY_SLUGS
from models.windowing import WindowTokenizer

TEXTS = [
    "你这个傻逼，滚回你老家去", "今天天气不错，出去走走", "好", "高薪兼职刷单，日结三百，加微信详聊",
    "我们今天在公园散步，看到很多人在跳舞和下棋，气氛非常热闹。" * 8 + "喝盐水可以预防病毒感染，转给家人",
]


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import torch

    from training.finetune.backend import export_onnx, ort_session
    from training.finetune.model import load_model

    torch.set_num_threads(1)
    model, tok, meta = load_model(tiny_run / "model", attn_implementation="eager")
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(model, path, pad_token_id=tok.pad_token_id)
    windower = WindowTokenizer(tok.backend_tokenizer, 48, 8, tok.pad_token_id, meta["text_prefix"])
    return model, ort_session(path, threads=1), windower


def test_fp32_onnx_matches_torch(exported) -> None:  # type: ignore[no-untyped-def]
    from training.finetune.backend import max_prob_diff, onnx_window_logits, torch_window_logits

    model, session, windower = exported
    norm = [normalize_text(t) for t in TEXTS]
    # Mixed lengths in one batch: padding and dynamic axes are exercised.
    ref = torch_window_logits(model, windower, norm, batch_size=8)
    _, got = onnx_window_logits(session, windower, norm, batch_size=8)
    assert got.shape == ref.shape and got.shape[1] == len(CATEGORY_SLUGS) and got.shape[0] > len(TEXTS)
    assert max_prob_diff(ref, got) <= 1e-4
    # A batch size the graph was not traced with, and a single token text.
    _, single = onnx_window_logits(session, windower, norm[:1], batch_size=1)
    assert max_prob_diff(ref[:1], single[:1]) <= 1e-4


def test_int8_keeps_fp32_decisions(tiny_bundle: Path, exported) -> None:  # type: ignore[no-untyped-def]
    from training.finetune.backend import onnx_window_logits, ort_session
    from training.finetune.calibrate import apply_calibration
    from training.finetune.dataset import read_split
    from training.finetune.thresholds import decisions

    _, fp32, windower = exported
    b = load_bundle(tiny_bundle)
    int8 = ort_session(b.model_path, threads=1)
    dev = read_split(Path(__file__).parent / "data" / "dev.jsonl")
    trained = b.manifest.trained_mask
    p32 = apply_calibration(onnx_window_logits(fp32, windower, dev.normalized)[0], b.manifest.calibration)
    p8 = apply_calibration(onnx_window_logits(int8, windower, dev.normalized)[0], b.manifest.calibration)
    agree = np.mean(decisions(p32, b.policy, trained) == decisions(p8, b.policy, trained))
    assert agree >= 0.99
    assert np.max(np.abs(p32 - p8)) < 0.05


def test_metrics_record_parity_and_both_splits(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / "metrics.json").read_text(encoding="utf-8"))
    par = m["parity"]
    assert par["fp32_vs_torch_max_abs_prob_diff"] <= 1e-4
    assert par["int8_vs_fp32_decision_agreement"] >= 0.99
    assert par["int8_macro_f1_drop"] <= 0.01
    assert par["passed"] is True
    for split in ("dev", "test"):
        per = m[split]["per_category"]
        assert per["constitution"] == {"trained": False, "support": 0}
        assert per["insult_defamation"]["trained"] is True
        assert 0.0 <= m[split]["macro_f1"] <= 1.0
    assert m["speed"]["texts_per_second_batch32"] > 0


def test_policy_thresholds_come_from_dev(tiny_bundle: Path) -> None:
    b = load_bundle(tiny_bundle)
    points = {p["slug"]: p for p in json.loads((tiny_bundle / "metrics.json").read_text())["operating_points"]}
    for cat in b.policy.categories:
        p = points[cat.slug]
        assert cat.trained == (cat.slug in b.manifest.trained_categories) == p["trained"]
        if cat.trained:
            assert cat.review_threshold == pytest.approx(p["review_threshold"])
            assert cat.auto_block == p["auto_block"]
            if not cat.auto_block:
                assert "never auto-blocks" in p["note"] or "no dev positives" in p["note"]
    assert "+tiny.0.0.1" in b.policy.version


def test_model_card_names_data_metrics_and_limits(tiny_bundle: Path) -> None:
    card = (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    for heading in ("## Intended use", "## Categories and operating thresholds", "## Data and licences",
                    "## Results", "### test per category", "## Limitations", "### Export checks"):
        assert heading in card
    assert "| fixture |" in card and "| fixture_b |" in card
    assert "constitution | no |" in card  # untrained category listed as such
    assert "{{" not in card and "{%" not in card
