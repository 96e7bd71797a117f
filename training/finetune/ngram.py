"""A TF-IDF baseline run (``shenhe train --arch tfidf``) -> the numpy n-gram component a bundle can carry.

The run's ``model.joblib`` (scikit-learn) becomes :class:`shenhe.models.ngram.NgramModel`: the vocabulary
sorted, idf, the one-vs-rest logistic regressions' weights (float16) and intercepts. ``max_features`` keeps
the n-grams with the largest weight in any category, so the component stays a few MB (the whole bundle must
stay under 40 MB). Capping drops n-grams from the L2 norm too, so a capped component's logits differ a little
from the run's: the ensemble's blend and calibration are fit on the component's own logits, never the run's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.baseline import BaselineError, read_tfidf_model
from shenhe.models.ngram import NgramModel
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.finetune.errors import ExportError


def read_tfidf_run(run: Path) -> dict[str, Any]:
    """The run's joblib model (``vectorizer``, ``classifier``, ``trained``) after checking it is a finished TF-IDF run."""
    try:
        return read_tfidf_model(run)
    except BaselineError as e:
        raise ExportError(str(e)) from None


def _linear_weights(classifier: Any, n_features: int, n_categories: int) -> tuple[np.ndarray, np.ndarray]:
    """coef [features, categories] and intercepts of a fitted one-vs-rest classifier. A category whose training
    labels were constant has a constant predictor: no weights, its constant as the intercept."""
    estimators = list(classifier.estimators_)
    if len(estimators) != n_categories:
        raise ExportError(f"the classifier has {len(estimators)} estimators for {n_categories} trained categories")
    coef = np.zeros((n_features, n_categories), dtype=np.float64)
    intercept = np.zeros(n_categories, dtype=np.float64)
    zero = np.zeros((1, n_features), dtype=np.float64)
    for k, est in enumerate(estimators):
        if hasattr(est, "coef_"):
            coef[:, k] = np.asarray(est.coef_, dtype=np.float64).ravel()
        intercept[k] = float(np.ravel(est.decision_function(zero))[0])  # the decision at x = 0
    return coef, intercept


def _check_vectorizer(vec: Any) -> None:
    """Only what models/ngram.py reproduces: char n-grams, idf, L2 norm, no custom preprocessing."""
    wrong = {name: getattr(vec, name, None) for name, want in
             (("analyzer", "char"), ("norm", "l2"), ("use_idf", True), ("binary", False)) if getattr(vec, name, None) != want}
    wrong |= {name: getattr(vec, name) for name in ("preprocessor", "strip_accents", "tokenizer")
              if getattr(vec, name, None) is not None}
    if wrong:
        raise ExportError("the n-gram component reproduces char TF-IDF with idf and L2 norm only; this vectoriser "
                          f"has {', '.join(f'{k}={v!r}' for k, v in wrong.items())}")


def component_from_model(model: dict[str, Any], max_features: int | None = None, half: bool = True,
                         source: str = "") -> NgramModel:
    """The numpy component of a fitted ``{"vectorizer", "classifier", "trained"}`` model (see tfidf.py)."""
    vec = model["vectorizer"]
    _check_vectorizer(vec)
    trained = [s for s in model["trained"] if s in CATEGORY_SLUGS]
    vocab = vec.get_feature_names_out()
    idf = np.asarray(vec.idf_, dtype=np.float64)
    coef, intercept = _linear_weights(model["classifier"], len(vocab), len(trained))
    keep = np.arange(len(vocab))
    if max_features is not None and max_features < len(vocab):
        importance = np.abs(coef).max(axis=1)
        keep = np.argsort(-importance, kind="stable")[:max_features]
    order = keep[np.argsort(vocab[keep], kind="stable")]  # sorted n-grams compress better
    lo, hi = vec.ngram_range
    meta = {"source": source, "features_total": len(vocab), "features_kept": len(order)}
    return NgramModel([str(g) for g in vocab[order]], idf[order].astype(np.float32),
                      coef[order].astype(np.float16 if half else np.float32), intercept, trained, (lo, hi),
                      lowercase=bool(vec.lowercase), sublinear_tf=bool(vec.sublinear_tf), meta=meta)


def convert_tfidf_run(run: Path, max_features: int | None = None, half: bool = True) -> NgramModel:
    """The component of a ``shenhe train --arch tfidf`` run."""
    return component_from_model(read_tfidf_run(run), max_features, half, source=run.name)
