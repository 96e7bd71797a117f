"""--baseline with a real TF-IDF run (`shenhe train --arch tfidf` on the small training fixture)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import shenhe.eval.report
import shenhe.eval.run
from shenhe.cli import app

ROOT = Path(__file__).resolve().parents[2]
HAND8 = Path(__file__).with_name("fixtures") / "hand8.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("tfidf") / "run"
    res = runner.invoke(app, ["train", "--arch", "tfidf", "--data", str(ROOT / "tests" / "training" / "data"),
                              "--out", str(out), "--min-train-positives", "2", "--quiet"])
    assert res.exit_code == 0, res.output
    return out


def test_baseline_numbers_next_to_bundle(tfidf_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         hand8, hand8_array, fake_predictor_cls) -> None:
    from shenhe.models.baseline import load_baseline

    table = dict(zip(hand8.texts, hand8_array, strict=True))
    monkeypatch.setattr(shenhe.eval.run, "_default_factory", lambda *a: fake_predictor_cls(table))
    monkeypatch.setattr(shenhe.eval.report, "_figures", lambda inp: dict.fromkeys(
        ("pr", "reliability", "operating", "histogram", "confusion"), "AAAA"))
    res = runner.invoke(app, ["eval", "--data", str(HAND8), "--out", str(tmp_path), "--baseline", str(tfidf_run),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    b = m["baseline"]
    assert b["name"] == f"tfidf:{tfidf_run.name}" and b["run_dir"] == str(tfidf_run)
    # the numbers are the baseline's own scores at 0.5
    scores = load_baseline(tfidf_run).score(hand8.texts)
    harmful = hand8.y_true.any(axis=1)
    pred = scores.max(axis=1) >= 0.5
    assert b["binary"]["predicted_harmful"] == int(pred.sum())
    assert b["binary"]["accuracy"] == pytest.approx(float((pred == harmful).mean()))
    assert set(b["per_category"]["rumor"]) == {"precision", "recall", "f1", "roc_auc", "average_precision", "ece"}
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert f"baseline tfidf:{tfidf_run.name}" in html
