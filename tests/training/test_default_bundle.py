"""Real sentences on the shipped bundle (skipped until models/default exists)."""

from __future__ import annotations

import pytest

from shenhe.models.bundle import DEFAULT_BUNDLE_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE_DIR / "bundle.json").is_file(),
                                reason="models/default not exported yet")


@pytest.fixture(scope="module")
def predictor():
    from shenhe.models.predictor import Predictor

    return Predictor(DEFAULT_BUNDLE_DIR)


def test_insult_is_flagged(predictor) -> None:
    (p,) = predictor.predict(["你这个傻逼，滚回你老家去"])
    assert p.decision in ("review", "block")
    assert "insult_defamation" in p.categories


def test_weather_passes(predictor) -> None:
    (p,) = predictor.predict(["今天天气不错，出去走走"])
    assert p.decision == "pass"


def test_default_bundle_is_small() -> None:
    size = sum(f.stat().st_size for f in DEFAULT_BUNDLE_DIR.iterdir() if f.is_file())
    assert size < 40 * 1024 * 1024


# Issue 5's bar: the default bundle beats TF-IDF by at least 3 points of test macro-F1 (2026.11.30.4: 0.7774
# against 0.7411). A bundle that falls below it must not become the default.
def test_default_bundle_beats_the_baseline() -> None:
    import json

    m = json.loads((DEFAULT_BUNDLE_DIR / "metrics.json").read_text(encoding="utf-8"))
    assert m["baseline"]["test_macro_f1"] is not None
    assert m["test"]["macro_f1"] - m["baseline"]["test_macro_f1"] >= 0.03
