"""End to end on a real exported bundle (tests/conftest.py's tiny_bundle: onnxruntime, real tokenizer).

The tiny model's scores are random-ish, so these tests assert behaviour that must hold for any
model: the decisions in metrics.json are the Predictor's, the vectorised rule reproduces them,
a bundle compared with itself differs by exactly 0, and the report embeds every plot."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from shenhe.cli import app
from shenhe.eval.data import read_eval_file
from shenhe.models.bundle import load_bundle
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.predictor import Predictor

HAND8 = Path(__file__).with_name("fixtures") / "hand8.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def tiny_report(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("tiny-eval")
    # An operator policy where insult words route to review, so the term path is exercised too.
    policy = yaml.safe_load((tiny_bundle / "policy.yaml").read_text(encoding="utf-8"))
    for cat in policy["categories"]:
        if cat["slug"] == "insult_defamation":
            cat["term_action"] = "review"
    policy_path = root / "policy.yaml"
    policy_path.write_text(yaml.safe_dump(policy, allow_unicode=True), encoding="utf-8")
    out = root / "out"
    res = runner.invoke(app, [
        "eval", "--bundle", str(tiny_bundle), "--data", str(HAND8), "--out", str(out), "--policy", str(policy_path),
        "--compare", str(tiny_bundle), "--perturb", "--perturb-kinds", "spaces,homophones", "--bootstrap", "100",
        "--threads", "1", "--quiet",
    ])
    assert res.exit_code == 0, res.output
    return out, tiny_bundle, policy_path


def test_metrics_follow_the_predictor(tiny_report: tuple[Path, Path, Path]) -> None:
    out, bundle, policy_path = tiny_report
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    manifest = load_bundle(bundle).manifest
    assert (m["bundle"]["name"], m["bundle"]["version"]) == (manifest.name, manifest.version)
    assert m["n"] == 8 and m["data"]["sha256"] == read_eval_file(HAND8).sha256

    predictor = Predictor(bundle, policy=policy_path, intra_op_threads=1)
    preds = predictor.predict(read_eval_file(HAND8).texts)
    counts = {d: sum(p.decision == d for p in preds) for d in ("pass", "review", "block")}
    assert m["decisions"]["counts"] == counts
    # texts h0 (傻逼) and h1 (脑残) hit review words: at least review
    assert preds[0].decision in ("review", "block") and preds[1].decision in ("review", "block")
    assert m["decisions"]["rule_agreement"] == 1.0
    for slug in CATEGORY_SLUGS:
        assert m["per_category"][slug]["trained"] == (slug in manifest.trained_categories
                                                       and predictor.policy.category(slug).trained)


def test_self_compare_is_zero(tiny_report: tuple[Path, Path, Path]) -> None:
    m = json.loads((tiny_report[0] / "metrics.json").read_text(encoding="utf-8"))
    diffs = [v["diff"] for v in m["compare"]["metrics"].values() if v["diff"] is not None]
    assert diffs and all(d == 0 for d in diffs)
    assert set(m["robustness"]["perturbations"]) == {"spaces", "homophones"}


def test_report_embeds_all_plots(tiny_report: tuple[Path, Path, Path]) -> None:
    html = (tiny_report[0] / "report.html").read_text(encoding="utf-8")
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)) == 8  # + harmless flag rate under disguise, block precision per source
