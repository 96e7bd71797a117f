"""Fixtures for the eval tests: the hand-made 8-text set with fixed scores, and a stand-in predictor.

The stand-in implements the Predictor contract (``predict`` -> ``Prediction`` list, ``policy``,
``info``) with fixed scores for known texts and a keyword rule for others (so obfuscated texts,
which no table can list, still get scores). Tests on a real exported bundle use ``tiny_bundle``
from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from shenhe.eval.data import EvalSet, read_eval_file
from shenhe.eval.metrics import Thresholds, decide
from shenhe.eval.scoring import Scored, from_predictions
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS, Policy, load_policy
from shenhe.models.types import Decision, ModelInfo, Prediction, Reason

FIXTURES = Path(__file__).with_name("fixtures")
HAND8 = FIXTURES / "hand8.jsonl"
RUMOR = CATEGORY_SLUGS.index("rumor")
INSULT = CATEGORY_SLUGS.index("insult_defamation")

# Fixed calibrated scores for hand8.jsonl (rows h0..h7); all other categories score 0.
HAND8_INSULT = [0.95, 0.70, 0.0, 0.0, 0.05, 0.60, 0.0, 0.55]
HAND8_RUMOR = [0.0, 0.0, 0.85, 0.30, 0.0, 0.0, 0.92, 0.45]


def hand8_scores() -> np.ndarray:
    s = np.zeros((8, 9))
    s[:, INSULT] = HAND8_INSULT
    s[:, RUMOR] = HAND8_RUMOR
    return s


class FakePredictor:
    """Contract stand-in: fixed scores for listed texts, keyword scores otherwise, policy decisions."""

    KEYWORDS = {"insult_defamation": ("傻逼", "脑残", "骗子", "狗"), "rumor": ("盐水", "地震")}

    def __init__(self, table: dict[str, np.ndarray] | None = None, policy: Policy | None = None,
                 name: str = "fake", version: str = "1") -> None:
        self.table = table or {}
        self.policy = policy or load_policy()
        self.info = ModelInfo(name, version)
        self.calls = 0

    def score_one(self, text: str) -> np.ndarray:
        if text in self.table:
            return self.table[text]
        norm = normalize_text(text)
        s = np.zeros(9)
        for slug, words in self.KEYWORDS.items():
            hits = sum(w in norm for w in words)
            s[CATEGORY_SLUGS.index(slug)] = min(0.97, 0.45 * hits)
        return s

    def predict(self, texts: Sequence[str], batch_size: int = 32) -> list[Prediction]:
        self.calls += 1
        out = []
        for text in texts:
            s = self.score_one(text)
            reasons: list[Reason] = []
            decision: Decision = "pass"
            for j, cat in enumerate(self.policy.categories):
                if s[j] >= cat.block_threshold and cat.can_block:
                    reasons.append(Reason(cat.slug, "block", float(s[j]), cat.block_threshold, (0, len(text))))
                    decision = "block"
                elif cat.trained and s[j] >= cat.review_threshold:  # untrained: scored 0, never reviews
                    reasons.append(Reason(cat.slug, "review", float(s[j]), cat.review_threshold, (0, len(text))))
                    decision = "review" if decision == "pass" else decision
            cats = [r.category for r in reasons if r.kind == decision]
            out.append(Prediction(
                scores={slug: float(v) for slug, v in zip(CATEGORY_SLUGS, s, strict=True)}, decision=decision,
                categories=cats, reasons=reasons, matches=[], model=self.info, policy_version=self.policy.version,
            ))
        return out


@pytest.fixture
def hand8() -> EvalSet:
    return read_eval_file(HAND8)


@pytest.fixture
def hand8_scored(hand8: EvalSet) -> Scored:
    """Scores from the table, decisions from the (fake) Predictor under the shipped policy (0.5 / 0.9)."""
    fake = FakePredictor(dict(zip(hand8.texts, hand8_scores(), strict=True)))
    return from_predictions(fake.predict(hand8.texts), fake.policy)


@pytest.fixture
def hand8_predictor(hand8: EvalSet) -> FakePredictor:
    return FakePredictor(dict(zip(hand8.texts, hand8_scores(), strict=True)))


@pytest.fixture
def fake_predictor_cls() -> type[FakePredictor]:
    return FakePredictor


@pytest.fixture
def hand8_array() -> np.ndarray:
    return hand8_scores()


class FakeBaseline:
    """A TF-IDF stand-in: the hand8 scores shrunk towards 0 (so it misses what scores under 0.625)."""

    name = "tfidf:fake"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table

    def score(self, texts: Sequence[str]) -> np.ndarray:
        return np.array([self.table.get(t, np.zeros(9)) * 0.8 for t in texts])


@pytest.fixture(scope="session")
def full_report(tmp_path_factory: pytest.TempPathFactory):
    """One complete run on hand8 with --compare, --baseline, --perturb and --prevalence (fake models)."""
    from shenhe.eval.run import EvalConfig, run_eval

    data = read_eval_file(HAND8)
    table = dict(zip(data.texts, hand8_scores(), strict=True))

    def factory(bundle: Path | None, policy: Path | None, threads: int | None) -> FakePredictor:
        if bundle is not None and bundle.name == "other":
            return FakePredictor({}, name="keywords", version="0.9")  # keyword rule only
        return FakePredictor(table)

    out = tmp_path_factory.mktemp("full") / "report"
    cfg = EvalConfig(data=HAND8, out=out, bundle=Path("this"), compare=Path("other"), baseline=Path("runs/tfidf"),
                     perturb=True, bootstrap=200, prevalence=0.05, daily_volume=100_000, show_progress=False)
    return run_eval(cfg, factory=factory, baseline_loader=lambda _: FakeBaseline(table))


def scored_with_default_policy(scores: np.ndarray, name: str) -> Scored:
    """A model's output on a synthetic set, decided with the shipped policy's thresholds."""
    thr = Thresholds.from_policy(load_policy())
    d = decide(scores, thr.review, thr.block, thr.can_block, reviewable=thr.reviewable)
    return Scored(name=name, version="1", policy_name="p", policy_version="1", scores=scores, decisions=d,
                  term_review=np.zeros(len(scores), dtype=bool), thresholds=thr, top_category=[""] * len(scores))


@pytest.fixture
def scored():
    return scored_with_default_policy


@pytest.fixture(scope="module")
def synthetic() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """400 texts; model 'good' separates rumor well, 'noisy' barely; both identical on insult."""
    rng = np.random.default_rng(0)
    n = 400
    y = np.zeros((n, 9), dtype=bool)
    y[:, RUMOR] = rng.random(n) < 0.3
    y[:, INSULT] = rng.random(n) < 0.3
    good, noisy = np.zeros((n, 9)), np.zeros((n, 9))
    good[:, RUMOR] = np.clip(0.8 * y[:, RUMOR] + 0.3 * rng.random(n), 0, 1)
    noisy[:, RUMOR] = np.clip(0.1 * y[:, RUMOR] + 0.9 * rng.random(n), 0, 1)
    good[:, INSULT] = noisy[:, INSULT] = np.clip(0.5 * y[:, INSULT] + 0.5 * rng.random(n), 0, 1)
    return y, good, noisy
