"""The encoder + n-gram ensemble as one served model: the bundle, the Predictor's blend, the experiment script."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from shenhe.models.bundle import MANIFEST_FILE, BundleError, CategoryBlend, load_bundle, read_manifest
from shenhe.models.ngram import NGRAM_FILE, NgramModel
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.predictor import Predictor
from shenhe.models.windowing import max_over_windows
from shenhe.training.finetune.dataset import read_split
from shenhe.training.finetune.ensemble import (
    BlendFit,
    Scored,
    Splits,
    encoder_logits,
    ensemble_logits,
    fit_blend,
    judge_model,
    write_ensemble_bundle,
)
from shenhe.training.finetune.ngram import convert_tfidf_run

DATA = Path(__file__).parent / "data"
REPO = Path(__file__).resolve().parents[2]
LONG = "我们今天在公园散步，看到很多人在跳舞和下棋，气氛非常热闹。" * 8 + "你这个傻逼，滚回你老家去"
TEXTS = ["你这个傻逼，滚回你老家去", "今天天气不错，出去走走", "", "高薪兼职刷单，日结三百，加微信详聊", "  ", LONG,
         "这个主播又丑又蠢"]
# Hand-chosen weights (a tiny random encoder would make fitted ones arbitrary): the n-gram model dominates one
# category, a small share in another.
BLEND = {"insult_defamation": CategoryBlend(encoder=0.5, ngram=2.0, bias=-0.3),
         "other_illegal": CategoryBlend(encoder=1.2, ngram=0.4, bias=0.1)}


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shenhe.training.finetune.tfidf import TfidfArguments, train_tfidf

    out = tmp_path_factory.mktemp("tfidf") / "tfidf"
    train_tfidf(TfidfArguments(data=DATA, out=out, min_train_positives=2, min_df=1), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def ensemble_bundle(tiny_bundle: Path, tfidf_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    plain = Predictor(tiny_bundle, intra_op_threads=1)
    component = convert_tfidf_run(tfidf_run, max_features=200)
    dev, test = read_split(DATA / "dev.jsonl"), read_split(DATA / "test.jsonl")
    logits = {s.name: ensemble_logits(encoder_logits(plain, s.normalized), component.logits(s.normalized), BLEND)
              for s in (dev, test)}
    judged = judge_model(Scored(logits["dev"], logits["test"]), Splits(dev, test), plain.manifest.trained_mask,
                         "platt", load_policy())
    out = tmp_path_factory.mktemp("ens") / "tiny-ngram"
    return write_ensemble_bundle(tiny_bundle, out, component, BlendFit(dict(BLEND)), judged, dev)


def _hand_scores(plain: Predictor, ensemble: Predictor, texts: list[str]) -> np.ndarray:
    """What the ensemble must score: the plain bundle's raw encoder logits (max over windows), blended by the
    manifest's weights with the component's logits, through the ensemble's calibration; empty texts 0."""
    prepared = plain.prepare(texts)
    raw, _ = max_over_windows(plain.window_logits(prepared), prepared.windows, len(prepared.live))
    component = NgramModel.load(ensemble.bundle.dir / NGRAM_FILE)
    live_texts = [prepared.norms[i].text for i in prepared.live]
    ng = component.logits(live_texts)
    assert ensemble.manifest.ngram is not None
    out = np.zeros((len(texts), len(CATEGORY_SLUGS)))
    for c, slug in enumerate(CATEGORY_SLUGS):
        if slug not in ensemble.manifest.trained_categories:
            continue
        w = ensemble.manifest.ngram.blend.get(slug)
        z = raw[:, c] if w is None else w.encoder * raw[:, c] + w.ngram * ng[:, c] + w.bias
        out[prepared.live, c] = ensemble.manifest.calibration[slug].apply(z)
    return out


def test_ensemble_bundle_scores_the_hand_computed_blend(tiny_bundle: Path, ensemble_bundle: Path) -> None:
    plain = Predictor(tiny_bundle, intra_op_threads=1)
    ensemble = Predictor(ensemble_bundle, intra_op_threads=1)
    assert ensemble.ngram is not None and plain.ngram is None
    got = ensemble.score(TEXTS)
    np.testing.assert_allclose(got, _hand_scores(plain, ensemble, TEXTS), atol=1e-9, rtol=0)
    # The n-gram model changes the blended categories' scores (an encoder-alone category only moves with its
    # recalibration).
    c = CATEGORY_SLUGS.index("insult_defamation")
    assert np.max(np.abs(got[:, c] - plain.score(TEXTS)[:, c])) > 1e-2
    assert np.all(got[[2, 4]] == 0)  # empty and blank texts: no model call, 0 as before
    # predict() decides on the same scores, and a long text's reason points at a window inside it
    preds = ensemble.predict(TEXTS)
    for p, row in zip(preds, got, strict=True):
        assert [p.scores[s] for s in CATEGORY_SLUGS] == pytest.approx(row.tolist(), abs=1e-12)
    # The serving path (prepare -> batcher -> finish) blends too, also when Prepared was made without logits.
    prepared = ensemble.prepare(TEXTS)
    assert prepared.ngram is not None and prepared.ngram.shape == (len(prepared.live), len(CATEGORY_SLUGS))
    window_logits = ensemble.window_logits(prepared)
    bare = type(prepared)(prepared.norms, prepared.live, prepared.windows)
    for ready in (prepared, bare):
        scores, spans = ensemble.finish_scores(ready, window_logits)
        np.testing.assert_allclose(scores, got, atol=1e-12)
        start, end = spans[5][c]
        assert 0 <= start < end <= len(LONG)


def test_ensemble_manifest_card_and_metrics(ensemble_bundle: Path, tiny_bundle: Path) -> None:
    bundle = load_bundle(ensemble_bundle)
    m = bundle.manifest
    assert m.ngram is not None and m.ngram.file == NGRAM_FILE and set(m.ngram.blend) == set(BLEND)
    assert m.ngram.features == 200 and NGRAM_FILE in m.files
    assert m.version == load_bundle(tiny_bundle).manifest.version + "+ngram"
    metrics = json.loads((ensemble_bundle / "metrics.json").read_text(encoding="utf-8"))
    assert metrics["ensemble"]["ngram"]["features_kept"] == 200
    assert metrics["ensemble"]["blend"]["insult_defamation"]["ngram"] == 2.0
    assert metrics["ensemble"]["ngram"]["size_bytes"] == (ensemble_bundle / NGRAM_FILE).stat().st_size
    card = (ensemble_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Ensemble with a character n-gram model" in card and "| insult_defamation | 0.500 | 2.000 | -0.300 |" in card
    assert "Ensemble with a character n-gram model" not in (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")


def test_bundle_without_component_is_unchanged(tiny_bundle: Path) -> None:
    """No ``ngram`` section: no component, no blend, scores are the calibrated encoder maximum as before."""
    raw_manifest = json.loads((tiny_bundle / MANIFEST_FILE).read_text(encoding="utf-8"))
    assert "ngram" not in raw_manifest or raw_manifest["ngram"] is None
    p = Predictor(tiny_bundle, intra_op_threads=1)
    assert p.ngram is None and p.bundle.ngram_path is None
    prepared = p.prepare(TEXTS)
    assert prepared.ngram is None
    raw, _ = max_over_windows(p.window_logits(prepared), prepared.windows, len(prepared.live))
    want = np.zeros((len(TEXTS), len(CATEGORY_SLUGS)))
    for c, slug in enumerate(CATEGORY_SLUGS):
        if slug in p.manifest.trained_categories:
            want[prepared.live, c] = p.manifest.calibration[slug].apply(raw[:, c])
    np.testing.assert_allclose(p.score(TEXTS), want, atol=1e-12)


def _edited(src: Path, dst: Path, edit: dict) -> Path:
    shutil.copytree(src, dst)
    data = json.loads((dst / MANIFEST_FILE).read_text(encoding="utf-8"))
    data["ngram"] = {**data["ngram"], **edit}
    (dst / MANIFEST_FILE).write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return dst


@pytest.mark.parametrize(("edit", "message"), [
    ({"blend": {"insult_defamation": {"encoder": 0.0, "ngram": 1.0}}}, "greater than 0"),
    ({"blend": {"constitution": {"encoder": 1.0, "ngram": 1.0}}}, "does not score"),
    ({"file": "../ngram.npz"}, "file name inside the bundle"),
    ({"file": "other.npz"}, "has no hash"),
])
def test_bad_ngram_sections_are_refused(ensemble_bundle: Path, tmp_path: Path, edit: dict, message: str) -> None:
    bad = _edited(ensemble_bundle, tmp_path / "bad", edit)
    with pytest.raises(BundleError, match=message):
        read_manifest(bad)


def test_replaced_component_is_refused(ensemble_bundle: Path, tmp_path: Path) -> None:
    copy = tmp_path / "b"
    shutil.copytree(ensemble_bundle, copy)
    component = NgramModel.load(copy / NGRAM_FILE)
    NgramModel(component.vocabulary, component.idf, component.coef * 2, component.intercept, component.categories,
               component.ngram_range).save(copy / NGRAM_FILE)
    with pytest.raises(BundleError, match="ngram.npz does not match its hash"):
        load_bundle(copy)


def test_serving_an_ensemble_loads_no_training_library(ensemble_bundle: Path) -> None:
    script = f"""
import sys
from shenhe.models.predictor import Predictor
p = Predictor({str(ensemble_bundle)!r}, intra_op_threads=1)
assert p.ngram is not None
print(p.predict(["你这个傻逼，滚回你老家去"])[0].decision)
print("HEAVY", sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy", "joblib", "torch")))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_fit_blend_weighs_the_informative_model() -> None:
    rng = np.random.default_rng(0)
    n = 400
    labels = np.zeros((n, len(CATEGORY_SLUGS)), dtype=np.float32)
    c, d = CATEGORY_SLUGS.index("insult_defamation"), CATEGORY_SLUGS.index("rumor")
    labels[: n // 2, c] = 1
    labels[::2, d] = 1
    y = labels[:, c] * 2 - 1
    encoder = rng.normal(size=labels.shape) + 0.3 * y[:, None]  # weakly informative
    ngram = rng.normal(size=labels.shape) + 2.0 * y[:, None]  # strongly informative for insult only
    trained = np.zeros(len(CATEGORY_SLUGS), dtype=bool)
    e = CATEGORY_SLUGS.index("ethnic_hatred")
    trained[[c, d, e, CATEGORY_SLUGS.index("other_illegal")]] = True
    labels[::3, e] = 1
    ngram[:, e] = -1.5  # what a constant predictor (no positives in the n-gram model's training) gives
    cats = ("insult_defamation", "rumor", "ethnic_hatred")
    fit = fit_blend(encoder, ngram, labels, trained, cats)
    w = fit.blend["insult_defamation"]
    assert w.ngram > 2 * w.encoder > 0
    assert fit.kept_encoder == {"ethnic_hatred": "the n-gram model scores every dev text the same",
                                "other_illegal": "the n-gram model is not trained on it"}
    # rumor: the encoder carries no signal there, so the fit gives it no positive weight: the encoder alone
    # stays (the blend must keep w_enc > 0 to commute with the max over windows).
    encoder[:, d] = -(labels[:, d] * 2 - 1) + rng.normal(size=n)
    fit = fit_blend(encoder, ngram, labels, trained, cats)
    assert "rumor" not in fit.blend and "must be > 0" in fit.kept_encoder["rumor"]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ensemble_eval", REPO / "scripts" / "ensemble_eval.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_experiment_script_compares_and_writes_a_bundle(tiny_bundle: Path, tfidf_run: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for name in ("dev", "test"):
        shutil.copy(DATA / f"{name}.jsonl", data / f"{name}.jsonl")
    # a held-apart split for the gate and its report: the test rows, each text a little longer
    rows = [json.loads(line) for line in (DATA / "test.jsonl").read_text(encoding="utf-8").splitlines()]
    (data / "holdout.jsonl").write_text("".join(json.dumps({**r, "text": r["text"] + "！"}, ensure_ascii=False) + "\n"
                                                for r in rows), encoding="utf-8")
    cache = tmp_path / "cache"
    args = ["--bundle", str(tiny_bundle), "--tfidf", str(tfidf_run), "--data", str(data), "--cache", str(cache),
            "--max-features", "300", "--name", "tiny-ens", "--version", "0.0.2", "--out", str(tmp_path / "bundle"),
            "--threads", "1"]
    assert _script().main(args) == 0
    printed = capsys.readouterr().out
    assert "**test macro-F1**" in printed and "homophones: flag accuracy drop" in printed
    report = json.loads((cache / "report.json").read_text(encoding="utf-8"))
    assert set(report["models"]) == {"encoder", "ngram", "ensemble"}
    assert report["rows"] == {"dev": 25, "test": 25, "holdout": 25, "test+homophones": 25, "test+emoji": 25}
    assert report["component"]["features"] == 300
    for r in report["models"].values():
        assert 0 <= r["test_macro_f1"] <= 1
        assert set(r["perturbations"]) == {"clean", "homophones", "emoji"}
        assert set(r["harmless"]) == {"test", "holdout"}
    encoder_cache = sorted(cache.glob("encoder-*.npy"))
    assert len(encoder_cache) == 5  # dev, test, holdout and two perturbed tests
    # the encoder's numbers match its own logits judged directly
    plain = Predictor(tiny_bundle, intra_op_threads=1)
    dev = read_split(data / "dev.jsonl")
    np.testing.assert_allclose(encoder_logits(plain, dev.normalized, cache), encoder_logits(plain, dev.normalized))
    written = Predictor(tmp_path / "bundle", intra_op_threads=1)
    assert written.manifest.ngram is not None and written.manifest.ngram.fit == {"split": "dev", "texts": 25}
    assert (written.info.name, written.info.version) == ("tiny-ens", "0.0.2")  # the shipping identity, as given
    assert written.score([normalize_text(TEXTS[0])]).shape == (1, len(CATEGORY_SLUGS))
    # A rerun reads the cached encoder logits (same files, none added).
    stamps = {p: p.stat().st_mtime_ns for p in encoder_cache}
    assert _script().main([*args[:-4], "--threads", "1"]) == 0
    assert {p: p.stat().st_mtime_ns for p in sorted(cache.glob("encoder-*.npy"))} == stamps
