"""`shenhe promote`: the no-worse gate, the atomic swap and the audit record."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from shenhe.cli import app
from shenhe.eval.data import read_eval_file
from shenhe.eval.perturb import perturb_texts
from shenhe.eval.promote import PromotionRule, judge, judge_block_precision, swap_in
from shenhe.models.bundle import BundleError, load_bundle
from shenhe.models.policy import CATEGORY_SLUGS

RUMOR = CATEGORY_SLUGS.index("rumor")
INSULT = CATEGORY_SLUGS.index("insult_defamation")
HAND8 = Path(__file__).with_name("fixtures") / "hand8.jsonl"
runner = CliRunner()






def test_a_worse_candidate_is_refused_with_the_reasons(synthetic: tuple, scored) -> None:
    y, good, noisy = synthetic
    ok, reasons, checks = judge(y, scored(noisy, "cand"), scored(good, "cur"), PromotionRule(n_bootstrap=200))
    assert not ok
    assert any(r.startswith("macro-F1 ") for r in reasons)
    assert any("average precision on rumor" in r for r in reasons)
    assert checks["per_category"]["rumor"]["verdict"] == "other"
    assert checks["per_category"]["insult_defamation"]["verdict"] == "no significant difference"


def test_a_better_or_equal_candidate_is_promoted(synthetic: tuple, scored) -> None:
    y, good, noisy = synthetic
    assert judge(y, scored(good, "cand"), scored(noisy, "cur"), PromotionRule(n_bootstrap=200))[0]
    ok, reasons, checks = judge(y, scored(good, "cand"), scored(good, "cur"), PromotionRule(n_bootstrap=200))
    assert ok and reasons == [] and checks["macro_f1"]["diff"] == 0.0


def test_tolerance_and_category_switch_relax_the_gate(synthetic: tuple, scored) -> None:
    y, good, noisy = synthetic
    cand, cur = scored(noisy, "cand"), scored(good, "cur")
    gap = judge(y, cand, cur, PromotionRule(n_bootstrap=200))[2]["macro_f1"]
    loose = PromotionRule(macro_f1_tolerance=-gap["diff"] + 1e-9, forbid_category_regressions=False,
                          forbid_more_harmful_passed=False, n_bootstrap=200)
    assert judge(y, cand, cur, loose)[0]
    # Without the harmful-passed switch the noisy model is still refused: it misses more rumors.
    ok, reasons, _ = judge(y, cand, cur, PromotionRule(macro_f1_tolerance=1.0, forbid_category_regressions=False,
                                                       n_bootstrap=200))
    assert not ok and reasons[0].startswith("lets more harmful texts pass")


def test_more_harmful_passed_only_by_a_stricter_operating_point_is_not_a_worse_model(synthetic: tuple,
                                                                                      scored) -> None:
    """Halving every score is the same model at stricter thresholds: it passes more harmful texts and flags
    fewer harmless ones. Scaled back to the current bundle's harmless flag rate it passes exactly the same
    texts, so the gate does not refuse it for the harmful texts it passes (macro-F1 at 0.5 drops: tolerated)."""
    y, good, noisy = synthetic
    rule = PromotionRule(macro_f1_tolerance=1.0, n_bootstrap=200)
    ok, reasons, checks = judge(y, scored(good * 0.5, "stricter"), scored(good, "cur"), rule)
    assert checks["passed_harmful"]["better"] == "other"  # at its own thresholds it lets more harm pass
    matched = checks["passed_harmful_matched"]
    assert matched["diff"] == pytest.approx(0.0) and matched["better"] != "other"
    assert matched["scale"] == pytest.approx(0.5, abs=0.1)
    assert ok and reasons == []
    # a model that ranks worse still passes more harm at the matched rate, and is refused for it
    ok, reasons, checks = judge(y, scored(noisy, "cand"), scored(good, "cur"),
                                PromotionRule(macro_f1_tolerance=1.0, forbid_category_regressions=False,
                                              n_bootstrap=200))
    assert not ok and checks["passed_harmful_matched"]["better"] == "other"
    assert "at the current bundle's harmless flag rate" in reasons[0]


def test_a_set_without_positives_cannot_judge(synthetic: tuple, scored) -> None:
    _, good, _ = synthetic
    from shenhe.eval.errors import EvalDataError

    with pytest.raises(EvalDataError, match="no positive labels"):
        judge(np.zeros_like(good, dtype=bool), scored(good, "a"), scored(good, "b"), PromotionRule(n_bootstrap=200))


def test_swap_keeps_the_previous_bundle_and_refuses_a_corrupted_one(tiny_bundle: Path, tmp_path: Path) -> None:
    target = tmp_path / "serving"
    shutil.copytree(tiny_bundle, target)
    (target / "marker").write_text("old")
    swap_in(tiny_bundle, target)
    assert not (target / "marker").exists() and (tmp_path / "serving.previous" / "marker").read_text() == "old"
    load_bundle(target)

    broken = tmp_path / "broken"
    shutil.copytree(tiny_bundle, broken)
    (broken / "model.onnx").write_bytes((broken / "model.onnx").read_bytes()[:-10])
    before = sorted(p.name for p in target.iterdir())
    with pytest.raises(BundleError):
        swap_in(broken, target)
    assert sorted(p.name for p in target.iterdir()) == before  # the serving bundle is untouched
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".serving")] == []  # no staging left


def test_cli_promotes_an_equal_bundle_and_records_it(tiny_bundle: Path, tmp_path: Path) -> None:
    target, cand, record = tmp_path / "default", tmp_path / "cand", tmp_path / "promotions.jsonl"
    shutil.copytree(tiny_bundle, target)
    shutil.copytree(tiny_bundle, cand)
    res = runner.invoke(app, ["promote", str(cand), "--target", str(target), "--data", str(HAND8),
                              "--record", str(record), "--bootstrap", "100", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    assert f"promoted: {cand} -> {target}" in res.stdout
    assert (tmp_path / "default.previous").is_dir()
    entry = json.loads(record.read_text(encoding="utf-8").splitlines()[-1])
    assert entry["promoted"] is True and entry["data"]["n"] == 8 and entry["checks"]["macro_f1"]["diff"] == 0.0
    # one file: the per-file list holds exactly the top-level numbers; no perturbation check unless asked
    assert [s["data"] for s in entry["sets"]] == [entry["data"]] and entry["sets"][0]["checks"] == entry["checks"]
    assert entry["perturbation"] is None and entry["rule"]["perturb_kinds"] == []


def test_cli_refuses_a_worse_bundle_and_leaves_the_target(tiny_bundle: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, scored) -> None:
    """The scores are stubbed (a random tiny model has no reliable 'worse'); loading, judging, the exit
    code, the message and the untouched target are real."""
    import shenhe.eval.promote as promote_mod
    from shenhe.eval.data import read_eval_file

    y = read_eval_file(HAND8).y_true
    perfect = y.astype(float)
    monkeypatch.setattr(promote_mod, "score_texts", lambda predictor, texts, **kw: scored(
        perfect if predictor == "current" else 1.0 - perfect, str(predictor)))
    monkeypatch.setattr(promote_mod, "load_predictor",
                        lambda path, policy, threads: "current" if Path(path).name == "default" else "candidate")
    target, cand, record = tmp_path / "default", tmp_path / "cand", tmp_path / "p.jsonl"
    shutil.copytree(tiny_bundle, target)
    shutil.copytree(tiny_bundle, cand)
    stamp = (target / "bundle.json").stat().st_mtime_ns
    res = runner.invoke(app, ["promote", str(cand), "--target", str(target), "--data", str(HAND8),
                              "--record", str(record), "--bootstrap", "100", "--quiet"])
    assert res.exit_code == 1
    assert res.stdout.strip().splitlines()[-1].startswith("not promoted: macro-F1 0.0000 < current 1.0000")
    assert (target / "bundle.json").stat().st_mtime_ns == stamp and not (tmp_path / "default.previous").exists()
    assert json.loads(record.read_text(encoding="utf-8"))["promoted"] is False


def test_cli_errors_are_one_line(tiny_bundle: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["promote", str(tiny_bundle), "--target", str(tiny_bundle), "--data", str(HAND8)])
    assert res.exit_code == 2 and "same directory" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["promote", str(tmp_path / "nope"), "--data", str(HAND8)])
    assert res.exit_code == 2 and "not a directory" in res.output


def _second_file(tmp_path: Path) -> Path:
    """hand8's rows with other texts (a suffix), as a second file of the fixed set."""
    rows = [json.loads(line) for line in HAND8.read_text(encoding="utf-8").splitlines()]
    path = tmp_path / "second.jsonl"
    path.write_text("".join(json.dumps({**r, "id": r["id"] + "b", "text": r["text"] + "（转）"}, ensure_ascii=False)
                            + "\n" for r in rows), encoding="utf-8")
    return path


def _stub_scores(monkeypatch: pytest.MonkeyPatch, scored, truth: dict[str, np.ndarray], worse_on: set[str]) -> None:
    """Both bundles score every text perfectly from ``truth``, except that the candidate gets the texts in
    ``worse_on`` exactly wrong (harmful: every category 0, harmless: every category 1). Loading, judging,
    printing and recording are real."""
    import shenhe.eval.promote as promote_mod

    def fake_score(predictor: str, texts: list[str], **kw: object):
        perfect = np.array([truth[t] for t in texts], dtype=float)
        opposite = np.broadcast_to(1.0 - perfect.max(axis=1, keepdims=True), perfect.shape)
        wrong = np.array([predictor == "candidate" and t in worse_on for t in texts])
        return scored(np.where(wrong[:, None], opposite, perfect), predictor)

    monkeypatch.setattr(promote_mod, "score_texts", fake_score)
    monkeypatch.setattr(promote_mod, "load_predictor",
                        lambda path, policy, threads: "current" if Path(path).name == "default" else "candidate")


def _bundles(tiny_bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    target, cand = tmp_path / "default", tmp_path / "cand"
    shutil.copytree(tiny_bundle, target)
    shutil.copytree(tiny_bundle, cand)
    return target, cand


def test_cli_refuses_a_candidate_worse_only_on_the_second_file(tiny_bundle: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch, scored) -> None:
    second = _second_file(tmp_path)
    sets = [read_eval_file(HAND8), read_eval_file(second)]
    truth = {t: y for es in sets for t, y in zip(es.texts, es.y_true, strict=True)}
    _stub_scores(monkeypatch, scored, truth, worse_on=set(sets[1].texts))
    target, cand = _bundles(tiny_bundle, tmp_path)
    record = tmp_path / "p.jsonl"
    res = runner.invoke(app, ["promote", str(cand), "--target", str(target), "--data", str(HAND8),
                              "--data", str(second), "--record", str(record), "--bootstrap", "100", "--quiet"])
    assert res.exit_code == 1, res.output
    last = res.stdout.strip().splitlines()[-1]
    assert last.startswith(f"not promoted: {second}: macro-F1 0.0000 < current 1.0000")
    assert str(HAND8) not in last  # no worse on the first file: no reason names it
    assert not (tmp_path / "default.previous").exists()
    entry = json.loads(record.read_text(encoding="utf-8"))
    assert [(s["data"]["path"], s["promote"]) for s in entry["sets"]] == [(str(HAND8), True), (str(second), False)]
    assert entry["data"]["path"] == str(HAND8) and entry["checks"]["macro_f1"]["diff"] == 0.0  # one-file fields
    # the same candidate judged on the first file alone passes
    res = runner.invoke(app, ["promote", str(cand), "--target", str(target), "--data", str(HAND8), "--dry-run",
                              "--record", str(record), "--bootstrap", "100", "--quiet"])
    assert res.exit_code == 0 and "would promote" in res.stdout


def test_cli_refuses_a_candidate_worse_on_perturbed_copies(tiny_bundle: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch, scored) -> None:
    plain = read_eval_file(HAND8)
    copies = perturb_texts(plain.texts, "homophones", seed=0)  # 8 rows < the sample: all, in file order
    assert sum(a != b for a, b in zip(copies, plain.texts, strict=True)) == 8
    truth = dict(zip(plain.texts + copies, np.concatenate([plain.y_true, plain.y_true]), strict=True))
    _stub_scores(monkeypatch, scored, truth, worse_on=set(copies))
    target, cand = _bundles(tiny_bundle, tmp_path)
    args = ["promote", str(cand), "--target", str(target), "--data", str(HAND8), "--record",
            str(tmp_path / "p.jsonl"), "--bootstrap", "200", "--quiet", "--dry-run"]
    assert runner.invoke(app, args).exit_code == 0  # on the plain texts the two are identical
    res = runner.invoke(app, [*args, "--perturb", "homophones"])
    assert res.exit_code == 1, res.output
    assert res.stdout.strip().splitlines()[-1] == (
        "not promoted: homophones copies: harmful-vs-not accuracy 0.00% < current 100.00%; "
        "homophones copies: flags more harmless texts (100.00% vs 0.00%)")
    entry = json.loads((tmp_path / "p.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    acc = entry["perturbation"]["kinds"]["homophones"]["flag_accuracy"]
    assert acc["plain"] == {"candidate": 1.0, "current": 1.0} and acc["perturbed"]["better"] == "other"
    assert entry["sets"][0]["promote"] is True and entry["rule"]["perturb_kinds"] == ["homophones"]


def test_cli_two_files_and_perturbations_on_a_real_bundle(tiny_bundle: Path, tmp_path: Path) -> None:
    """End to end with the tiny bundle: both files and both kinds of copies scored; equal bundles pass."""
    target, cand = _bundles(tiny_bundle, tmp_path)
    record = tmp_path / "p.jsonl"
    res = runner.invoke(app, ["promote", str(cand), "--target", str(target), "--data", str(HAND8),
                              "--data", str(_second_file(tmp_path)), "--perturb", "homophones,emoji",
                              "--perturb-sample", "6", "--record", str(record), "--bootstrap", "100",
                              "--threads", "1", "--quiet", "--dry-run"])
    assert res.exit_code == 0, res.output
    entry = json.loads(record.read_text(encoding="utf-8"))
    assert [s["data"]["n"] for s in entry["sets"]] == [8, 8]
    p = entry["perturbation"]
    assert p["n"] == 6 and p["population"] == 8 and list(p["kinds"]) == ["homophones", "emoji"]
    assert all(0 < k["changed_share"] <= 1 and k["flag_accuracy"]["perturbed"]["diff"] == 0.0
               for k in p["kinds"].values())


def test_cli_rejects_unknown_perturbations_and_repeated_files(tiny_bundle: Path, tmp_path: Path) -> None:
    target, cand = _bundles(tiny_bundle, tmp_path)
    base = ["promote", str(cand), "--target", str(target), "--data", str(HAND8)]
    res = runner.invoke(app, [*base, "--perturb", "homophones,leet"])
    assert res.exit_code == 2 and "unknown perturbation 'leet'" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*base, "--data", str(HAND8)])
    assert res.exit_code == 2 and "given twice" in res.output


def test_block_precision_is_compared_per_source_with_enough_positives(scored) -> None:
    """Sources a and b have 40 insult positives each, c only 10; the candidate also blocks 30 harmless texts
    of b. Only b shows a significant drop, c is not judged, and the drop refuses only when asked to."""
    sizes = {"a": 100, "b": 100, "c": 40}
    sources = [name for name, n in sizes.items() for _ in range(n)]
    y = np.zeros((len(sources), 9), dtype=bool)
    start = 0
    for name, n in sizes.items():
        y[start : start + (10 if name == "c" else 40), INSULT] = True
        start += n
    cur = np.where(y, 0.95, 0.1)
    cand = cur.copy()
    cand[[i for i, s in enumerate(sources) if s == "b"][40:70], INSULT] = 0.95
    reasons, rows = judge_block_precision(y, sources, scored(cand, "cand"), scored(cur, "cur"),
                                          PromotionRule(n_bootstrap=200))
    cells = {(r["category"], r["source"]): r for r in rows}
    assert set(cells) == {("insult_defamation", "a"), ("insult_defamation", "b")} and reasons == []
    assert cells["insult_defamation", "a"]["better"] == "no significant difference"
    b = cells["insult_defamation", "b"]
    assert b["this"] == pytest.approx(40 / 70) and b["other"] == 1.0 and b["better"] == "other"
    assert b["blocked"] == {"candidate": 70, "current": 40} and b["positives"] == 40
    reasons, _ = judge_block_precision(y, sources, scored(cand, "cand"), scored(cur, "cur"),
                                       PromotionRule(n_bootstrap=200, forbid_block_precision_regressions=True))
    assert reasons == ["lower block precision for insult_defamation on source b (57.14% vs 100.00%)"]
