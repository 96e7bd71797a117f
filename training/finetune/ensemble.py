"""The encoder and the character n-gram model as one served model (issue 16, step 4).

Per category the ensemble logit is ``w_enc * encoder_logit + w_ngram * ngram_logit + bias``: a two-feature
logistic regression fit on the *fit* part of dev (``dev.jsonl``; never on ``holdout.jsonl`` or ``test.jsonl``),
then the usual calibration and thresholds (:func:`~shenhe.training.finetune.fit.judge`) on the blended dev logits
and the held-apart auto-block gate (:func:`~shenhe.training.finetune.fit.gate_on_heldout`), exactly as
``shenhe export`` treats a model of its own. :func:`compare` puts the encoder alone, the n-gram model alone and
the ensemble side by side; :func:`write_ensemble_bundle` writes a bundle that serves the ensemble
(``models/ngram.py``: numpy only, applied by the Predictor).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import (
    METRICS_FILE,
    MODEL_FILE,
    POLICY_FILE,
    TOKENIZER_FILE,
    CategoryBlend,
    NgramEnsemble,
    file_hashes,
    load_bundle,
    write_manifest,
)
from shenhe.models.ngram import NGRAM_FILE, NgramModel, blend_arrays, blend_logits
from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.models.windowing import max_over_windows, score_windows
from shenhe.training.finetune.calibrate import apply_calibration
from shenhe.training.finetune.dataset import Split
from shenhe.training.finetune.errors import ExportError
from shenhe.training.finetune.fit import Judged, gate_on_heldout, judge
from shenhe.training.finetune.thresholds import decisions, points_as_dicts, split_metrics

BLEND_C = 1.0  # the blend regression's inverse regularisation: 3 weights on thousands of dev rows
MIN_ENCODER_WEIGHT = 1e-6  # below: the blend would not commute with the max over windows (models/ngram.py)


@dataclass
class BlendFit:
    """Per category, the blend weights, or why the category keeps the encoder alone."""

    blend: dict[str, CategoryBlend]
    kept_encoder: dict[str, str] = field(default_factory=dict)  # slug -> reason

    def as_dict(self) -> dict[str, Any]:
        return {"blend": {k: v.model_dump() for k, v in self.blend.items()}, "encoder_alone": self.kept_encoder}


def fit_blend(encoder: np.ndarray, ngram: np.ndarray, labels: np.ndarray, trained: np.ndarray,
              ngram_categories: Sequence[str], c: float = BLEND_C) -> BlendFit:
    """A two-feature logistic regression per category on text-level dev logits ([n, 9] each)."""
    from sklearn.linear_model import LogisticRegression

    if not (np.isfinite(encoder).all() and np.isfinite(ngram).all()):
        raise ExportError("encoder or n-gram logits are not all finite")
    out = BlendFit({})
    for col, slug in enumerate(CATEGORY_SLUGS):
        if not trained[col]:
            continue
        if slug not in ngram_categories:
            out.kept_encoder[slug] = "the n-gram model is not trained on it"
            continue
        y = labels[:, col] > 0
        if y.all() or not y.any():
            out.kept_encoder[slug] = "dev has only one class"
            continue
        if np.ptp(ngram[:, col]) == 0:  # e.g. a constant predictor: the category had no positives in its training
            out.kept_encoder[slug] = "the n-gram model scores every dev text the same"
            continue
        x = np.stack([encoder[:, col], ngram[:, col]], axis=1).astype(np.float64)
        lr = LogisticRegression(C=c, max_iter=1000).fit(x, y.astype(int))
        w_enc, w_ng = (float(v) for v in lr.coef_[0])
        if w_enc < MIN_ENCODER_WEIGHT:
            out.kept_encoder[slug] = f"the blend gives the encoder weight {w_enc:.3g} (must be > 0)"
            continue
        out.blend[slug] = CategoryBlend(encoder=w_enc, ngram=w_ng, bias=float(lr.intercept_[0]))
    return out


def ensemble_logits(encoder: np.ndarray, ngram: np.ndarray, blend: Mapping[str, CategoryBlend]) -> np.ndarray:
    """Text-level ensemble logits, as the Predictor computes them (models/ngram.py: blend_logits)."""
    return blend_logits(encoder, ngram, blend_arrays(blend))


def encoder_logits(predictor: Any, normalized: Sequence[str], cache_dir: Path | None = None,
                   batch_size: int = 32) -> np.ndarray:
    """Raw text-level encoder logits [n, 9] (max over windows, as export computes them) of a
    :class:`~shenhe.models.predictor.Predictor`'s ONNX model, cached in ``cache_dir`` as ``.npy`` keyed by the
    model, the tokenizer, the windowing and the texts (so a rerun, or a rerun with another n-gram model, is cheap)."""
    path = None
    if cache_dir is not None:
        m = predictor.manifest
        h = hashlib.sha256(json.dumps([m.files.get(MODEL_FILE), m.files.get(TOKENIZER_FILE), m.max_length,
                                       m.window_stride, m.text_prefix]).encode())
        for t in normalized:
            h.update(t.encode("utf-8") + b"\x00")
        path = cache_dir / f"encoder-{h.hexdigest()[:20]}.npy"
        if path.is_file():
            cached = np.load(path, allow_pickle=False)
            if cached.shape == (len(normalized), len(CATEGORY_SLUGS)):
                return cached
    windows = predictor.windower.windows(list(normalized))
    raw = score_windows(windows, predictor.run_model, predictor.manifest.pad_token_id, batch_size,
                        len(CATEGORY_SLUGS))
    out, _ = max_over_windows(raw, windows, len(normalized))
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, out)
    return out


# -- judging ---------------------------------------------------------------------------------------------


@dataclass
class Scored:
    """One model's text-level logits on each split (``test`` perturbed copies under their kind)."""

    dev: np.ndarray
    test: np.ndarray
    holdout: np.ndarray | None = None
    perturbed: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Splits:
    dev: Split
    test: Split
    holdout: Split | None = None


def judge_model(scored: Scored, splits: Splits, trained: np.ndarray, method: str, base_policy: Policy,
                version_tag: str | None = None) -> Judged:
    """Calibration and thresholds fit on dev; auto-block gated on the held-apart rows when there are any."""
    judged = judge(scored.dev, scored.test, splits.dev, splits.test, trained, method, base_policy, version_tag)
    if splits.holdout is not None and scored.holdout is not None:
        judged = gate_on_heldout(judged, scored.holdout, splits.holdout, splits.dev, splits.test, base_policy,
                                 version_tag)
    return judged


def _flag_accuracy(probs: np.ndarray, labels: np.ndarray, policy: Policy, trained: np.ndarray) -> float:
    """Share of texts the model-only decision gets right as harmful (review or block) vs harmless (pass)."""
    flagged = decisions(probs, policy, trained) > 0
    return float(np.mean(flagged == labels.any(axis=1)))


def _harmless_share(probs: np.ndarray, labels: np.ndarray, policy: Policy, trained: np.ndarray) -> dict[str, Any]:
    """Of the texts with no label: the share sent to review, and the share blocked (model-only decisions)."""
    harmless = ~labels.any(axis=1)
    d = decisions(probs, policy, trained)[harmless]
    n = int(harmless.sum())
    return {"harmless": n, "review": round(float(np.mean(d == 1)), 4) if n else None,
            "block": round(float(np.mean(d == 2)), 4) if n else None}


def model_report(judged: Judged, scored: Scored, splits: Splits, trained: np.ndarray) -> dict[str, Any]:
    """What decides whether the ensemble is kept: test macro-F1, per-category F1 and AP, held-apart per-source
    block precision, the harmless review share, and the accuracy lost under perturbations."""
    assert judged.test_metrics is not None and judged.test_probs is not None
    per = judged.test_metrics["per_category"]
    out: dict[str, Any] = {
        "dev_macro_f1": judged.dev_metrics["macro_f1"],
        "test_macro_f1": judged.test_metrics["macro_f1"],
        "test_per_category": {s: {"support": per[s]["support"], "f1": per[s]["f1"]["f1"],
                                  "ap": judged.ap.get("test", {}).get(s), "auto_block": p.auto_block}
                              for s, p in zip(CATEGORY_SLUGS, judged.points, strict=True) if per[s]["trained"]},
        "harmless": {"test": _harmless_share(judged.test_probs, splits.test.labels, judged.policy, trained)},
        "block_gate": judged.block_gate,
    }
    if splits.holdout is not None and scored.holdout is not None:
        held = apply_calibration(scored.holdout, judged.calibration)
        out["harmless"]["holdout"] = _harmless_share(held, splits.holdout.labels, judged.policy, trained)
    clean_acc = _flag_accuracy(judged.test_probs, splits.test.labels, judged.policy, trained)
    out["perturbations"] = {"clean": {"flag_accuracy": round(clean_acc, 4),
                                      "macro_f1": judged.test_metrics["macro_f1"]}}
    for kind, logits in scored.perturbed.items():
        probs = apply_calibration(logits, judged.calibration)
        acc = _flag_accuracy(probs, splits.test.labels, judged.policy, trained)
        f1 = split_metrics(probs, splits.test.labels, judged.points)["macro_f1"]
        out["perturbations"][kind] = {"flag_accuracy": round(acc, 4), "flag_accuracy_drop": round(clean_acc - acc, 4),
                                      "macro_f1": f1, "macro_f1_drop": round(judged.test_metrics["macro_f1"] - f1, 4)}
    return out


def compare(models: Mapping[str, Scored], splits: Splits, trained: np.ndarray, method: str,
            base_policy: Policy, version_tag: str | None = None) -> tuple[dict[str, Judged], dict[str, Any]]:
    """Each model judged the same way (its own calibration and thresholds on dev), and its report."""
    judged = {name: judge_model(s, splits, trained, method, base_policy, version_tag) for name, s in models.items()}
    return judged, {name: model_report(judged[name], models[name], splits, trained) for name in models}


# -- the bundle ------------------------------------------------------------------------------------------


def ngram_speed(component: NgramModel, texts: Sequence[str]) -> dict[str, Any]:
    """Texts per second of the n-gram scorer alone (one thread, numpy), on up to 2,000 texts."""
    sample = list(texts[:2000])
    if not sample:
        return {}
    t0 = time.perf_counter()
    component.logits(sample)
    return {"texts_per_second": round(len(sample) / max(time.perf_counter() - t0, 1e-9), 1),
            "texts_measured": len(sample)}


def write_ensemble_bundle(source: Path, out: Path, component: NgramModel, fit: BlendFit, judged: Judged,
                          fit_split: Split, report: Mapping[str, Any] | None = None, name: str | None = None,
                          version: str | None = None) -> Path:
    """``source``'s encoder (model.onnx, tokenizer.json) with ``component`` blended in: the blend, calibration,
    policy and metrics of ``judged`` (fit on the blended dev logits), a new card, every hash; loaded back as
    the Predictor loads it, then moved into place."""
    from shenhe.models.predictor import Predictor
    from shenhe.training.finetune.export import _publish, _staging
    from shenhe.training.finetune.model_card import write_bundle_card

    src = load_bundle(source)
    if judged.test_metrics is None:
        raise ExportError("the ensemble needs test metrics (a data directory with test.jsonl)")
    trained = set(src.manifest.trained_categories)
    if set(judged.calibration) != trained:
        raise ExportError(f"{source}: the judged calibration covers other categories than the bundle's")
    name = name or out.name
    version = version or f"{src.manifest.version}+ngram"
    metrics: dict[str, Any] = json.loads((source / METRICS_FILE).read_text(encoding="utf-8"))
    metrics["model"] = {**metrics.get("model", {}), "name": name, "version": version}
    metrics["dev"], metrics["test"] = judged.dev_metrics, judged.test_metrics
    metrics["operating_points"] = points_as_dicts(judged.points)
    metrics["fit"] = {**metrics.get("fit", {}), "split": fit_split.name, "texts": len(fit_split),
                      "sources": fit_split.source_counts()}
    metrics.pop("block_gate", None)
    if judged.block_gate is not None:
        metrics["block_gate"] = judged.block_gate
    metrics["ensemble"] = {
        "encoder_from": {"name": src.manifest.name, "version": src.manifest.version,
                         "model_sha256": src.manifest.files[MODEL_FILE]},
        "ngram": {**component.meta, "ngram_range": list(component.ngram_range), "categories": list(component.categories)},
        "fit": {"split": fit_split.name, "texts": len(fit_split), "method": "logistic regression on (encoder, n-gram) "
                "logits per category", "C": BLEND_C},
        **fit.as_dict(),
        "ngram_speed": ngram_speed(component, fit_split.normalized),
        "comparison": dict(report or {}),
    }
    with _staging(out) as stage:
        for f in (MODEL_FILE, TOKENIZER_FILE):
            shutil.copy2(source / f, stage / f)
        component.save(stage / NGRAM_FILE)
        metrics["ensemble"]["ngram"]["size_bytes"] = (stage / NGRAM_FILE).stat().st_size
        (stage / POLICY_FILE).write_text(
            "# Thresholds chosen on dev for the encoder + n-gram ensemble (see metrics.json: operating_points).\n"
            + judged.policy.to_yaml(), encoding="utf-8")
        (stage / METRICS_FILE).write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        manifest = src.manifest.model_copy(update={
            "name": name, "version": version, "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "calibration": judged.calibration,
            "ngram": NgramEnsemble(blend=fit.blend, source=str(component.meta.get("source", "")),
                                   features=component.n_features,
                                   fit={"split": fit_split.name, "texts": len(fit_split)}),
            "files": file_hashes(stage, (MODEL_FILE, TOKENIZER_FILE, NGRAM_FILE, POLICY_FILE, METRICS_FILE)),
            "metrics": {**src.manifest.metrics, "dev_macro_f1": judged.dev_metrics["macro_f1"],
                        "test_macro_f1": judged.test_metrics["macro_f1"]},
        })
        # model_copy skips validation: validate the new manifest as a load would.
        write_manifest(stage, type(manifest).model_validate(manifest.model_dump()))
        write_bundle_card(stage)  # renders the card, adds its hash, verifies every file
        Predictor(stage, intra_op_threads=1)  # and the component loads as serving will load it
        _publish(stage, out)
    return out
