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
    assert "Weight averaging" not in card  # the tiny run did not average


def test_model_card_states_weight_averaging(tiny_bundle: Path) -> None:
    import json

    from models.bundle import load_bundle, read_manifest
    from training.finetune.model_card import render_model_card

    metrics = json.loads((tiny_bundle / "metrics.json").read_text(encoding="utf-8"))
    metrics["training"]["averaging"] = {"snapshot_steps": [1400, 1600, 2743], "used": True, "dev_eval_macro_f1": 0.93,
                                        "best_checkpoint_macro_f1": 0.92, "best_checkpoint_step": 2400}
    manifest = read_manifest(tiny_bundle)
    card = render_model_card(manifest, load_bundle(tiny_bundle).policy, metrics, manifest.data_sources)
    assert "average of 3 snapshots (steps 1400–2743)" in card
    assert "0.93 macro-F1 vs 0.92 for the best single checkpoint (step 2400)" in card
    metrics["training"]["averaging"]["used"] = False  # the best checkpoint stayed: nothing to say
    assert "Weight averaging" not in render_model_card(manifest, load_bundle(tiny_bundle).policy, metrics,
                                                       manifest.data_sources)


@pytest.mark.parametrize("scheme", ["weight-only", "weight-only-fp32"])
def test_weight_only_int8_is_close_to_fp32_and_batch_independent(exported, tmp_path: Path, scheme: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from training.finetune.backend import max_prob_diff, onnx_window_logits, ort_session, quantize_int8

    model, fp32, windower = exported
    src = tmp_path / "fp32.onnx"
    from training.finetune.backend import export_onnx

    export_onnx(model, src, pad_token_id=windower.pad_token_id)
    out = tmp_path / f"{scheme}.onnx"
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    quantize_int8(Path("..") / src.name, Path("..") / out.name, scheme)  # relative to the caller's cwd
    # The quantiser's scratch files (sym_shape_infer_temp.onnx, *.data) never land in the caller's directory.
    assert Path.cwd() == cwd and list(cwd.iterdir()) == []
    assert out.stat().st_size < src.stat().st_size
    q = ort_session(out, threads=1)
    norm = [normalize_text(t) for t in TEXTS]
    _, ref = onnx_window_logits(fp32, windower, norm, batch_size=8)
    _, got = onnx_window_logits(q, windower, norm, batch_size=8)
    assert max_prob_diff(ref, got) < 0.01
    # No activation ranges shared across a batch: a text scores the same alone or with neighbours.
    _, alone = onnx_window_logits(q, windower, norm[:1], batch_size=1)
    assert np.allclose(alone[0], got[0], atol=1e-5)


def test_export_can_force_a_scheme(tiny_run: Path, tmp_path: Path) -> None:
    from models.predictor import Predictor
    from training.finetune.export import ExportOptions, export_bundle

    out = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "wo", name="tiny-wo", version="0.0.1", threads=1,
                                      show_progress=False, allow_parity_failure=True, quantization="weight-only"))
    b = load_bundle(out)
    assert "weight-only" in b.manifest.quantization
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert [a["scheme"] for a in m["parity"]["attempts"]] == ["weight-only"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["MODEL_CARD.md", "bundle.json", "metrics.json", "model.onnx", "policy.yaml", "tokenizer.json"])
    (pred,) = Predictor(out, intra_op_threads=1).predict(["你这个傻逼，滚回你老家去"])
    assert pred.model.name == "tiny-wo"


def test_auto_ships_the_fastest_scheme_that_passes(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / "metrics.json").read_text(encoding="utf-8"))
    attempts = m["parity"]["attempts"]
    assert attempts[-1]["passed"] and all(not a["passed"] for a in attempts[:-1])
    assert m["parity"]["scheme"] == attempts[-1]["scheme"]
    assert load_bundle(tiny_bundle).manifest.quantization == attempts[-1]["quantization"]


def test_quantiser_scratch_files_stay_out_of_the_callers_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from training.finetune.backend import _scratch_cwd

    monkeypatch.chdir(tmp_path)
    with _scratch_cwd():
        scratch = Path.cwd()
        Path("sym_shape_infer_temp.onnx").write_bytes(b"x")  # what onnxruntime does when shape inference gives up
    assert Path.cwd() == tmp_path and scratch != tmp_path
    assert not scratch.exists() and list(tmp_path.iterdir()) == []


def test_thresholds_are_fit_on_dev_only_never_on_holdout(tiny_run: Path, tmp_path: Path) -> None:
    """A holdout.jsonl next to dev.jsonl is never read: an export with one that cannot even be parsed
    gives the same thresholds and calibration as without it, and the bundle says what it fit on."""
    import shutil

    from training.finetune.export import ExportOptions, export_bundle

    src = Path(json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))["args"]["data"])
    data = tmp_path / "data"
    shutil.copytree(src, data)
    (data / "holdout.jsonl").write_text("this is not JSON\n", encoding="utf-8")
    with_holdout = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "b1", name="t", version="1", threads=1,
                                               data=data, show_progress=False, allow_parity_failure=True))
    (data / "holdout.jsonl").unlink()
    without = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "b2", name="t", version="1", threads=1,
                                          data=data, show_progress=False, allow_parity_failure=True))
    m1 = json.loads((with_holdout / "metrics.json").read_text(encoding="utf-8"))
    m2 = json.loads((without / "metrics.json").read_text(encoding="utf-8"))
    assert m1["operating_points"] == m2["operating_points"]
    assert m1["fit"]["split"] == "dev" and m1["fit"]["held_apart_file"].endswith("holdout.jsonl")
    assert m2["fit"]["held_apart_file"] is None
    dev_rows = sum(1 for line in (data / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    assert m1["fit"]["texts"] == dev_rows
