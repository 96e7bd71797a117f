"""Export: fp32 ONNX reproduces torch; a quantised model ships only when its quality holds against fp32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shenhe.models.bundle import load_bundle
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.windowing import WindowTokenizer

TEXTS = [
    "你这个傻逼，滚回你老家去", "今天天气不错，出去走走", "好", "高薪兼职刷单，日结三百，加微信详聊",
    "我们今天在公园散步，看到很多人在跳舞和下棋，气氛非常热闹。" * 8 + "喝盐水可以预防病毒感染，转给家人",
]


@pytest.fixture(scope="module")
def exported(tiny_run: Path, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    import torch

    from shenhe.training.finetune.backend import export_onnx, ort_session
    from shenhe.training.finetune.model import load_model

    torch.set_num_threads(1)
    model, tok, meta = load_model(tiny_run / "model", attn_implementation="eager")
    path = tmp_path_factory.mktemp("onnx") / "fp32.onnx"
    export_onnx(model, path, pad_token_id=tok.pad_token_id)
    windower = WindowTokenizer(tok.backend_tokenizer, 48, 8, tok.pad_token_id, meta["text_prefix"])
    return model, ort_session(path, threads=1), windower


def test_fp32_onnx_matches_torch(exported) -> None:  # type: ignore[no-untyped-def]
    from shenhe.training.finetune.backend import max_prob_diff, onnx_window_logits, torch_window_logits

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


def test_int8_is_judged_by_its_own_quality_against_fp32(tiny_bundle: Path, exported) -> None:  # type: ignore[no-untyped-def]
    from shenhe.training.finetune.backend import onnx_window_logits, ort_session
    from shenhe.training.finetune.calibrate import apply_calibration
    from shenhe.training.finetune.dataset import read_split
    from shenhe.training.finetune.quality import MAX_DROP

    _, fp32, windower = exported
    b = load_bundle(tiny_bundle)
    dev = read_split(Path(__file__).parent / "data" / "dev.jsonl")
    p32 = apply_calibration(onnx_window_logits(fp32, windower, dev.normalized)[0], b.manifest.calibration)
    p8 = apply_calibration(onnx_window_logits(ort_session(b.model_path, threads=1), windower, dev.normalized)[0],
                           b.manifest.calibration)
    assert np.max(np.abs(p32 - p8)) < 0.1  # the INT8 graph computes the same model
    par = json.loads((tiny_bundle / "metrics.json").read_text(encoding="utf-8"))["parity"]
    quality = par["quality"]
    assert set(quality) == {"dev", "test"} and "macro_f1" in quality["dev"]
    assert any(k.startswith("ap_") for k in quality["dev"])  # per-category average precision is compared
    worst = max(d for per in quality.values() for d in per.values())
    assert par["passed"] == (worst <= MAX_DROP and par["fp32_vs_torch_max_abs_prob_diff"] <= 1e-4)
    assert 0.0 <= par["int8_vs_fp32_decision_agreement"] <= 1.0  # reported, not gated
    assert par["fp32_reference"]["dev_macro_f1"] == pytest.approx(par["fp32_macro_f1_dev"])


def test_metrics_record_parity_and_both_splits(tiny_bundle: Path) -> None:
    m = json.loads((tiny_bundle / "metrics.json").read_text(encoding="utf-8"))
    par = m["parity"]
    assert par["fp32_vs_torch_max_abs_prob_diff"] <= 1e-4
    assert par["scheme"] == "dynamic" and par["quantization"].startswith("int8 dynamic")
    for split in ("dev", "test"):
        per = m[split]["per_category"]
        assert per["constitution"] == {"trained": False, "support": 0}
        assert per["insult_defamation"]["trained"] is True
        assert 0.0 <= m[split]["macro_f1"] <= 1.0
    assert m["speed"]["texts_per_second_batch32"] > 0


def test_quality_gate_flags_each_drop_over_half_a_point() -> None:
    from shenhe.training.finetune.fit import Judged
    from shenhe.training.finetune.quality import quality_drops, quality_failures

    def judged(f1: float, ap: float) -> Judged:
        return Judged(calibration={}, points=[], policy=None, dev_probs=np.zeros((1, 9)),  # type: ignore[arg-type]
                      dev_metrics={"macro_f1": f1}, test_metrics={"macro_f1": f1},
                      ap={"dev": {"rumor": ap, "obscene_violent": 0.9}, "test": {"rumor": ap, "obscene_violent": 0.9}})

    drops = quality_drops(judged(0.80, 0.70), judged(0.797, 0.69))
    assert drops["dev"] == {"macro_f1": 0.003, "ap_rumor": 0.01, "ap_obscene_violent": 0.0}
    failures = quality_failures(drops)
    assert len(failures) == 2 and all("average precision of rumor drops 1.00 points" in f for f in failures)
    assert quality_failures(quality_drops(judged(0.80, 0.70), judged(0.796, 0.696))) == []
    assert quality_failures(quality_drops(judged(0.80, 0.70), judged(0.79, 0.70)))[0].startswith("dev macro_f1")


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

    from shenhe.models.bundle import load_bundle, read_manifest
    from shenhe.training.finetune.model_card import render_model_card

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
    from shenhe.training.finetune.backend import max_prob_diff, onnx_window_logits, ort_session, quantize_int8

    model, fp32, windower = exported
    src = tmp_path / "fp32.onnx"
    from shenhe.training.finetune.backend import export_onnx

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
    from shenhe.models.predictor import Predictor
    from shenhe.training.finetune.export import ExportOptions, export_bundle

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


def test_auto_ships_the_fastest_scheme_whose_quality_holds(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.backend import QUANT_SCHEMES
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    out = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "auto", name="tiny", version="0.0.1", threads=1,
                                      show_progress=False, allow_parity_failure=True))
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    attempts = m["parity"]["attempts"]
    assert [a["scheme"] for a in attempts] == list(QUANT_SCHEMES)[: len(attempts)]  # fastest first
    assert attempts[-1]["passed"] and all(not a["passed"] for a in attempts[:-1])
    assert all(a["failures"] for a in attempts[:-1])
    assert m["parity"]["scheme"] == attempts[-1]["scheme"]
    assert load_bundle(out).manifest.quantization == attempts[-1]["quantization"]


def test_a_bundle_re_exports_from_its_own_weights(tiny_bundle: Path, tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.models.predictor import Predictor
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    base = json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))["args"]["base"]
    out = export_bundle(ExportOptions(run=tiny_bundle, base=base, out=tmp_path / "again", name="tiny", version="0.0.2",
                                      data=Path(__file__).parent / "data", threads=1, show_progress=False,
                                      allow_parity_failure=True, quantization="weight-only-fp32"))
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert "recovered from the INT8 bundle tiny 0.0.1" in m["parity"]["fp32_reference"]["note"]
    texts = ["你这个傻逼，滚回你老家去", "今天天气不错，出去走走"]
    before = Predictor(tiny_bundle, intra_op_threads=1).score(texts)
    after = Predictor(out, intra_op_threads=1).score(texts)
    assert np.max(np.abs(before - after)) < 0.1  # the same model, quantised anew and recalibrated


def test_re_exporting_a_bundle_needs_its_base(tiny_bundle: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.errors import ExportError
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    with pytest.raises(ExportError, match="needs --base"):
        export_bundle(ExportOptions(run=tiny_bundle, out=tmp_path / "x", show_progress=False))


def test_quantiser_scratch_files_stay_out_of_the_callers_directory(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from shenhe.training.finetune.backend import _scratch_cwd

    monkeypatch.chdir(tmp_path)
    with _scratch_cwd():
        scratch = Path.cwd()
        Path("sym_shape_infer_temp.onnx").write_bytes(b"x")  # what onnxruntime does when shape inference gives up
    assert Path.cwd() == tmp_path and scratch != tmp_path
    assert not scratch.exists() and list(tmp_path.iterdir()) == []


def test_thresholds_are_fit_on_dev_and_holdout_only_gates_blocking(tiny_run: Path, tmp_path: Path) -> None:
    """Calibration and thresholds come from dev alone: with a holdout.jsonl beside dev.jsonl they are the same
    as without it; the held-apart rows can only turn a category's auto-block off (per-source precision),
    and the bundle says what it fit on and what the gate measured."""
    import shutil

    from shenhe.training.finetune.export import ExportOptions, export_bundle

    src = Path(json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))["args"]["data"])
    data = tmp_path / "data"
    shutil.copytree(src, data)
    # held-apart rows: the dev rows again, all from one source, so every category with enough positives is checked
    rows = [json.loads(line) for line in (data / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip()]
    (data / "holdout.jsonl").write_text("".join(json.dumps({**r, "source": "heldsrc"}, ensure_ascii=False) + "\n"
                                                for r in rows), encoding="utf-8")
    opts = {"name": "t", "version": "1", "threads": 1, "data": data, "show_progress": False,
            "allow_parity_failure": True}
    with_holdout = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "b1", **opts))  # type: ignore[arg-type]
    (data / "holdout.jsonl").unlink()
    without = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / "b2", **opts))  # type: ignore[arg-type]
    m1 = json.loads((with_holdout / "metrics.json").read_text(encoding="utf-8"))
    m2 = json.loads((without / "metrics.json").read_text(encoding="utf-8"))
    def calibration(bundle: Path) -> object:
        return json.loads((bundle / "bundle.json").read_text(encoding="utf-8"))["calibration"]

    assert calibration(with_holdout) == calibration(without)
    gate = m1["block_gate"]["categories"]
    for p1, p2 in zip(m1["operating_points"], m2["operating_points"], strict=True):
        assert (p1["block_threshold"], p1["review_threshold"]) == (p2["block_threshold"], p2["review_threshold"])
        if p1["auto_block"] != p2["auto_block"]:  # only ever switched off, and only by a failing source
            assert p2["auto_block"] and not p1["auto_block"] and gate[p1["slug"]]["auto_block"] is False
    assert m1["block_gate"]["texts"] == len(rows) and "block_gate" not in m2
    assert m1["fit"]["split"] == "dev" and m1["fit"]["held_apart_file"].endswith("holdout.jsonl")
    assert m2["fit"]["held_apart_file"] is None
    dev_rows = sum(1 for line in (data / "dev.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
    assert m1["fit"]["texts"] == dev_rows
