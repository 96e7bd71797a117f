"""report.html and the optional metrics.json sections (compare, baseline, robustness)."""

from __future__ import annotations

import json
import re

from shenhe.eval.data import read_eval_file
from shenhe.eval.report import ReportInputs, render_report
from shenhe.eval.run import EvalResult
from shenhe.eval.scoring import from_predictions

IMG = re.compile(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"')


def test_files_written_and_json_round_trips(full_report: EvalResult) -> None:
    m = json.loads(full_report.metrics_path.read_text(encoding="utf-8"))
    assert m == full_report.metrics
    for key in ("n", "binary", "decisions", "per_category", "macro_f1", "calibration", "by_source", "by_length",
                "bundle", "data", "compare", "baseline", "robustness", "operating_curve", "confusion", "worst_errors"):
        assert key in m, key
    assert m["bundle"]["name"] == "fake" and len(m["data"]["sha256"]) == 64


def test_report_is_self_contained_with_plots(full_report: EvalResult) -> None:
    html = full_report.report_path.read_text(encoding="utf-8")
    # PR, reliability, operating, histogram, confusion, robustness, disguise, block precision per source
    assert len(IMG.findall(html)) == 8
    assert not re.search(r"""(src|href)=["'](?!data:)""", html)  # nothing fetched from anywhere
    assert "http://" not in html and "https://" not in html
    assert html.index("Summary: what happens if we ship this") < html.index("Per category")
    # worst errors show the real texts
    assert "谣言止于智者" in html and "明天下午本市将发生八级地震" in html


def test_compare_shows_both_and_difference(full_report: EvalResult) -> None:
    m = full_report.metrics
    c = m["compare"]
    assert c["this"]["name"] == "fake" and c["other"]["name"] == "keywords" and c["other"]["path"] == "other"
    recall = c["metrics"]["binary.recall"]
    assert recall["this"] == m["binary"]["recall"]
    assert recall["diff"] == recall["this"] - recall["other"]
    assert recall["ci"][0] <= recall["diff"] <= recall["ci"][1]
    assert set(c["per_category_verdict"]) >= {"rumor", "insult_defamation"}
    assert "by_length.<=20.binary.f1" in c["metrics"] and "by_source.news.binary.recall" in c["metrics"]
    assert c["metrics"]["by_source.news.decisions.review"]["this"] == m["by_source"]["news"]["review"]
    html = full_report.report_path.read_text(encoding="utf-8")
    assert "keywords 0.9" in html and "Δ this − other" in html


def test_baseline_next_to_bundle(full_report: EvalResult) -> None:
    b = full_report.metrics["baseline"]
    assert b["name"] == "tfidf:fake" and b["threshold"] == 0.5
    # baseline = hand8 scores x 0.8: top scores .76 .56 .68 .24 .04 .48 .736 .44 -> TP h0 h1 h2, FP h6
    assert b["binary"]["recall"] == 3 / 5 and b["binary"]["precision"] == 3 / 4
    assert "baseline tfidf:fake" in full_report.report_path.read_text(encoding="utf-8")


def test_robustness_section(full_report: EvalResult) -> None:
    r = full_report.metrics["robustness"]
    assert set(r["perturbations"]) == {"spaces", "symbols", "zero_width", "full_width", "traditional", "homophones",
                                       "emoji", "split"}
    assert r["n"] == 8 and r["support"]["rumor"] == 3
    # The fake scores listed texts from a table; any changed text falls back to keywords, so the
    # normalised kinds still change the score here. What must hold: drop = clean - perturbed.
    for p in r["perturbations"].values():
        if p["binary_recall"] is not None:
            assert abs(p["binary_recall_drop"] - (r["clean"]["binary_recall"] - p["binary_recall"])) < 1e-12
    assert full_report.metrics["compare_robustness"]["perturbations"]["spaces"]["changed_share"] == 1.0


def test_prevalence_and_reviewers_in_summary(full_report: EvalResult) -> None:
    html = full_report.report_path.read_text(encoding="utf-8")
    prev = full_report.metrics["decisions"]["at_prevalence"]
    per_day = round(prev["review"] * 100_000)
    assert f"about {per_day} items/day" in html
    assert "reviewer(s)" in html


def test_user_text_is_escaped(tmp_path, fake_predictor_cls, monkeypatch) -> None:
    import shenhe.eval.report
    from shenhe.eval.evaluate import evaluate

    # this test is about escaping: skip drawing the figures
    monkeypatch.setattr(shenhe.eval.report, "_figures", lambda inp: dict.fromkeys(
        ("pr", "reliability", "operating", "histogram", "confusion"), "AAAA"))

    p = tmp_path / "xss.jsonl"
    p.write_text('{"text": "<script>alert(1)</script>傻逼脑残", "labels": []}\n'
                 '{"text": "正常的一句话", "labels": ["rumor"]}\n', encoding="utf-8")
    data = read_eval_file(p)
    fake = fake_predictor_cls()
    run = from_predictions(fake.predict(data.texts), fake.policy)
    m = evaluate(data, run)
    html = render_report(ReportInputs(data=data, this=run, metrics=m, policy=fake.policy))
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_block_precision_review_share_and_disguise_tables(full_report: EvalResult) -> None:
    m = full_report.metrics
    html = full_report.report_path.read_text(encoding="utf-8")
    ins = m["block_precision"]["per_category"]["insult_defamation"]
    # hand8 insult scores .95 .70 0 0 .05 .60 0 .55 at block threshold 0.9: only h0 (weibo, insult) is blocked
    assert ins["(all)"]["blocked"] == 1 and ins["(all)"]["correct"] == 1
    assert ins["by_source"]["weibo"]["blocked"] == 1 and ins["by_source"]["weibo"]["ci"][1] == 1.0
    assert ins["holds"] is None  # no source has 30 positives in 8 texts
    assert m["harmless_review"]["overall"]["harmless"] == 3
    assert "Block precision per source" in html and "Harmless texts sent to review" in html
    assert "harmless flagged: emoji" in html and "blocked harmful: split" in html
    assert set(m["robustness"]["clean"]["by_source"]) == {"weibo", "news"}
