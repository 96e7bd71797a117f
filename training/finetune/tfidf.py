"""`shenhe train --arch tfidf`: character n-gram TF-IDF + one-vs-rest logistic regression baseline.

Same data, same normalisation, same calibration, thresholds and metrics as the BERT model, so the two
are compared on equal terms. The run directory holds ``model.joblib`` (vectoriser + classifiers),
``calibration.json``, ``policy.yaml``, ``metrics.json`` and ``run.json``; ``models.baseline`` scores with it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.training.finetune.dataset import read_splits, subsample
from shenhe.training.finetune.fit import judge
from shenhe.training.finetune.thresholds import (
    points_as_dicts,
)

MODEL_FILE = "model.joblib"


@dataclass
class TfidfArguments:
    data: Path
    out: Path
    ngram_min: int = 1
    ngram_max: int = 3
    max_features: int = 300_000
    min_df: int = 2
    C: float = 4.0  # inverse regularisation of each logistic regression
    class_weight: str | None = "balanced"
    min_train_positives: int = 20  # same rule as the BERT trainer: fewer -> untrained
    max_train_samples: int | None = None
    max_per_source: int | None = None
    rare_category_rows: int = 5000
    seed: int = 42
    calibration: str = "platt"


def decision_logits(model: dict[str, Any], normalized: list[str]) -> np.ndarray:
    """Raw decision values [n, 9] (0 for untrained categories)."""
    x = model["vectorizer"].transform(normalized)
    out = np.zeros((len(normalized), len(CATEGORY_SLUGS)), dtype=np.float64)
    cols = [CATEGORY_SLUGS.index(s) for s in model["trained"]]
    dec = model["classifier"].decision_function(x)
    out[:, cols] = dec.reshape(len(normalized), len(cols))
    return out


def train_tfidf(args: TfidfArguments, log: Any = print) -> dict[str, Any]:
    import joblib
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    args.out.mkdir(parents=True, exist_ok=True)
    splits = read_splits(args.data)
    full = splits["train"]
    train = subsample(full, args.max_train_samples, args.max_per_source, args.rare_category_rows, args.seed)
    trained = full.labels.sum(axis=0) >= max(1, args.min_train_positives)
    trained_slugs = [s for s, t in zip(CATEGORY_SLUGS, trained, strict=True) if t]
    t0 = time.perf_counter()
    log(f"normalising {len(train)} train rows")
    x_text = train.normalized
    vec = TfidfVectorizer(analyzer="char", ngram_range=(args.ngram_min, args.ngram_max), min_df=args.min_df,
                          max_features=args.max_features, sublinear_tf=True, dtype=np.float32)
    x = vec.fit_transform(x_text)
    log(f"vectorised: {x.shape[1]} features; fitting {len(trained_slugs)} logistic regressions")
    clf = OneVsRestClassifier(LogisticRegression(C=args.C, class_weight=args.class_weight, solver="liblinear",
                                                 max_iter=1000, random_state=args.seed))
    clf.fit(x, train.labels[:, trained].astype(int))
    fit_seconds = time.perf_counter() - t0
    model = {"vectorizer": vec, "classifier": clf, "trained": trained_slugs}
    joblib.dump(model, args.out / MODEL_FILE, compress=3)

    dev, test = splits["dev"], splits.get("test")
    judged = judge(decision_logits(model, dev.normalized),
                   decision_logits(model, test.normalized) if test is not None else None,
                   dev, test, trained, args.calibration, load_policy())
    calibration, points = judged.calibration, judged.points
    metrics: dict[str, Any] = {"model": "tfidf", "dev": judged.dev_metrics}
    if judged.test_metrics is not None:
        metrics["test"] = judged.test_metrics
    metrics["operating_points"] = points_as_dicts(points)
    (args.out / "calibration.json").write_text(
        json.dumps({k: v.model_dump() for k, v in calibration.items()}, indent=2) + "\n", encoding="utf-8")
    (args.out / "policy.yaml").write_text(judged.policy.to_yaml(), encoding="utf-8")
    (args.out / "metrics.json").write_text(json.dumps(metrics, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    info = {
        "arch": "tfidf", "status": "done",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(args).items()},
        "train_rows": len(train), "features": int(x.shape[1]), "fit_seconds": round(fit_seconds, 1),
        "trained_categories": trained_slugs,
        "dev_macro_f1": metrics["dev"]["macro_f1"], "test_macro_f1": metrics.get("test", {}).get("macro_f1"),
    }
    (args.out / "run.json").write_text(json.dumps(info, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return info
