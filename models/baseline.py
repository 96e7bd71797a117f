"""Score texts with a TF-IDF baseline run (``shenhe train --arch tfidf``), for side-by-side evaluation.

scikit-learn is imported only when a baseline is loaded (it is not a serving dependency)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import CategoryCalibration
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS

MODEL_FILE = "model.joblib"


class BaselineError(ValueError):
    """A baseline run directory that cannot be used; one-line message."""


@dataclass
class BaselineScorer:
    name: str
    run_dir: Path
    _model: dict[str, Any]
    calibration: dict[str, CategoryCalibration]

    @property
    def trained_categories(self) -> tuple[str, ...]:
        return tuple(self._model["trained"])

    def logits(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        norm = [normalize_text(t) for t in texts]
        out = np.zeros((len(norm), len(CATEGORY_SLUGS)), dtype=np.float64)
        if not norm:
            return out
        cols = [CATEGORY_SLUGS.index(s) for s in self._model["trained"]]
        dec = self._model["classifier"].decision_function(self._model["vectorizer"].transform(norm))
        out[:, cols] = np.asarray(dec).reshape(len(norm), len(cols))
        return out

    def score(self, texts: list[str] | tuple[str, ...]) -> np.ndarray:
        """Calibrated probabilities [n, 9] in Article 9 order; untrained categories are 0."""
        raw = self.logits(texts)
        out = np.zeros_like(raw)
        for c, slug in enumerate(CATEGORY_SLUGS):
            if slug in self.calibration:
                out[:, c] = self.calibration[slug].apply(raw[:, c])
        return out


def read_tfidf_model(run: Path) -> dict[str, Any]:
    """A finished TF-IDF run's joblib model (``vectorizer``, ``classifier``, ``trained``), after checking the run."""
    info_path, model_path = run / "run.json", run / MODEL_FILE
    if not info_path.is_file() or not model_path.is_file():
        raise BaselineError(f"{run}: not a TF-IDF run (needs run.json and {MODEL_FILE}; see shenhe train --arch tfidf)")
    info = json.loads(info_path.read_text(encoding="utf-8"))
    if info.get("arch") != "tfidf":
        raise BaselineError(f"{run}: a {info.get('arch')!r} run, not a TF-IDF baseline")
    import joblib  # comes with scikit-learn

    model: dict[str, Any] = joblib.load(model_path)
    return model


def load_baseline(run_dir: str | Path) -> BaselineScorer:
    run = Path(run_dir)
    model = read_tfidf_model(run)
    cal_path = run / "calibration.json"
    calibration = {}
    if cal_path.is_file():
        calibration = {k: CategoryCalibration.model_validate(v)
                       for k, v in json.loads(cal_path.read_text(encoding="utf-8")).items()}
    return BaselineScorer(name=f"tfidf:{run.name}", run_dir=run, _model=model, calibration=calibration)
