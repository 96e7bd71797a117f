"""Score an evaluation set with a bundle's Predictor (decisions come from the Predictor itself)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from shenhe.models.bundle import MODEL_FILE
from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.models.types import ModelInfo, Prediction

from .metrics import DECISION_CODES, Thresholds

PREDICT_CHUNK = 256  # texts per predict() call: one progress-bar step


class PredictorLike(Protocol):
    """What evaluation needs from ``models.predictor.Predictor``."""

    info: ModelInfo
    policy: Policy

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]: ...


@dataclass(frozen=True)
class Scored:
    """One model's output on one evaluation set."""

    name: str
    version: str
    policy_name: str
    policy_version: str
    scores: np.ndarray  # (n, 9) calibrated probabilities, Article 9 order
    decisions: np.ndarray  # (n,) int8: 0 pass, 1 review, 2 block
    term_review: np.ndarray  # (n,) bool: a `term_action: review` word matched
    thresholds: Thresholds
    top_category: list[str]  # per text, the category behind the decision ("" on pass)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}"

    def subset(self, index: np.ndarray) -> Scored:
        return Scored(
            name=self.name, version=self.version, policy_name=self.policy_name,
            policy_version=self.policy_version, scores=self.scores[index], decisions=self.decisions[index],
            term_review=self.term_review[index], thresholds=self.thresholds,
            top_category=[self.top_category[i] for i in index],
        )


def load_predictor(bundle_dir: str | Path | None, policy: str | Path | None = None,
                   threads: int | None = None) -> PredictorLike:
    """The bundle's onnxruntime Predictor (imported here: onnxruntime loads only when scoring)."""
    from shenhe.models.predictor import Predictor

    return Predictor(bundle_dir, policy=policy, intra_op_threads=threads)


def bundle_trained_mask(predictor: object) -> np.ndarray | None:
    """The bundle's trained-category mask, when the predictor exposes its manifest."""
    manifest = getattr(predictor, "manifest", None)
    mask = getattr(manifest, "trained_mask", None)
    return None if mask is None else np.asarray(mask, dtype=bool)


def bundle_model_sha256(predictor: object) -> str | None:
    """The sha256 of the bundle's model.onnx, when the predictor exposes its manifest (the hash bundle.json lists,
    verified when the bundle loaded): a report names exactly the model it measured."""
    files = getattr(getattr(predictor, "manifest", None), "files", None)
    value = files.get(MODEL_FILE) if isinstance(files, dict) else None
    return value if isinstance(value, str) else None


def from_predictions(predictions: Sequence[Prediction], policy: Policy,
                     bundle_trained: np.ndarray | None = None) -> Scored:
    """Arrays from Predictor output (the decision is the Predictor's, not recomputed here)."""
    if not predictions:
        raise ValueError("no predictions")
    scores = np.array([[p.scores[s] for s in CATEGORY_SLUGS] for p in predictions], dtype=float)
    decisions = np.array([DECISION_CODES[p.decision] for p in predictions], dtype=np.int8)
    term_review = np.array([any(r.kind == "term" for r in p.reasons) for p in predictions], dtype=bool)
    top = []
    for p in predictions:
        if not p.categories:
            top.append("")
            continue
        # the highest-scored category among those behind the decision
        top.append(max(p.categories, key=lambda c, p=p: p.scores.get(c, 0.0)))  # type: ignore[misc]  # mypy cannot type a lambda's default
    first = predictions[0]
    return Scored(
        name=first.model.name, version=first.model.version, policy_name=policy.name,
        policy_version=first.policy_version, scores=scores, decisions=decisions, term_review=term_review,
        thresholds=Thresholds.from_policy(policy, bundle_trained), top_category=top,
    )


def score_texts(predictor: PredictorLike, texts: Sequence[str], *, description: str = "scoring",
                batch_size: int = 32, show_progress: bool = True) -> Scored:
    """Run ``predictor.predict`` over ``texts`` in chunks with a progress bar."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    predictions: list[Prediction] = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("texts"),
               TimeRemainingColumn())
    # progress on stderr: stdout stays for the command's result
    with Progress(*columns, console=Console(stderr=True), disable=not show_progress, transient=False) as progress:
        task = progress.add_task(description, total=len(texts))
        for start in range(0, len(texts), PREDICT_CHUNK):
            chunk = list(texts[start : start + PREDICT_CHUNK])
            predictions.extend(predictor.predict(chunk, batch_size=batch_size))
            progress.advance(task, len(chunk))
    return from_predictions(predictions, predictor.policy, bundle_trained_mask(predictor))
