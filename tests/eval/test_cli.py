"""`shenhe eval` on the command line (stand-in predictor; tests/eval/test_tiny_bundle.py runs a real bundle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import shenhe.eval.report
import shenhe.eval.run
from shenhe.cli import app

HAND8 = Path(__file__).with_name("fixtures") / "hand8.jsonl"
runner = CliRunner()


@pytest.fixture
def fake_models(monkeypatch: pytest.MonkeyPatch, hand8, hand8_array, fake_predictor_cls):
    table = dict(zip(hand8.texts, hand8_array, strict=True))
    made: list[tuple] = []

    def factory(bundle, policy, threads):
        made.append((bundle, policy, threads))
        return fake_predictor_cls(table)

    monkeypatch.setattr(shenhe.eval.run, "_default_factory", factory)
    # drawing is covered by test_report / test_tiny_bundle; here only the command's plumbing
    monkeypatch.setattr(shenhe.eval.report, "_figures", lambda inp: dict.fromkeys(
        ("pr", "reliability", "operating", "histogram", "confusion", "robustness"), "AAAA"))
    return made


def test_eval_writes_both_files(tmp_path: Path, fake_models: list) -> None:
    out = tmp_path / "reports" / "x"
    res = runner.invoke(app, ["eval", "--bundle", "b", "--data", str(HAND8), "--out", str(out), "--quiet",
                              "--threads", "1"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["n"] == 8 and m["binary"]["f1"] == pytest.approx(8 / 11)
    assert (out / "report.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert str(out / "metrics.json") in res.output and str(out / "report.html") in res.output
    assert fake_models == [(Path("b"), None, 1)]


def test_limit_samples_texts(tmp_path: Path, fake_models: list) -> None:
    res = runner.invoke(app, ["eval", "--data", str(HAND8), "--out", str(tmp_path), "--quiet", "--limit", "5"])
    assert res.exit_code == 0, res.output
    m = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))
    assert m["n"] == 5 and m["data"]["population"] == 8 and m["data"]["sampled"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prevalence", "1.5"], "--prevalence must be between 0 and 1"),
        (["--perturb", "--perturb-kinds", "spaces,leetspeak"], "unknown perturbation 'leetspeak'"),
        (["--bootstrap", "10"], "--bootstrap must be at least 100"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path: Path, fake_models: list, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["eval", "--data", str(HAND8), "--out", str(tmp_path / "o"), *args])
    assert res.exit_code == 2
    assert message in res.output and "Traceback" not in res.output
    assert not fake_models  # failed before loading any model


def test_empty_file_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    res = runner.invoke(app, ["eval", "--data", str(empty), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "empty file, no examples to evaluate" in res.output


def test_missing_bundle_is_one_line_error(tmp_path: Path) -> None:
    res = runner.invoke(app, ["eval", "--bundle", str(tmp_path / "nope"), "--data", str(HAND8),
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and len(res.output.strip().splitlines()) == 1


def test_missing_baseline_is_one_line_error(tmp_path: Path, fake_models: list) -> None:
    res = runner.invoke(app, ["eval", "--data", str(HAND8), "--out", str(tmp_path / "o"), "--quiet",
                              "--baseline", str(tmp_path / "no-run")])
    assert res.exit_code == 2, res.output
    assert "--baseline" in res.output and "not a TF-IDF run" in res.output


def test_json_has_no_nan(tmp_path: Path, fake_models: list) -> None:
    runner.invoke(app, ["eval", "--data", str(HAND8), "--out", str(tmp_path), "--quiet"])
    text = (tmp_path / "metrics.json").read_text(encoding="utf-8")
    assert "NaN" not in text and "Infinity" not in text
    assert np.isfinite(json.loads(text)["macro_f1"])
