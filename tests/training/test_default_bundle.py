"""Real sentences on the shipped bundle (skipped until models/default exists)."""

from __future__ import annotations

import pytest

from models.bundle import DEFAULT_BUNDLE_DIR

pytestmark = pytest.mark.skipif(not (DEFAULT_BUNDLE_DIR / "bundle.json").is_file(),
                                reason="models/default not exported yet")


@pytest.fixture(scope="module")
def predictor():  # type: ignore[no-untyped-def]
    from models.predictor import Predictor

    return Predictor(DEFAULT_BUNDLE_DIR)


def test_insult_is_flagged(predictor) -> None:  # type: ignore[no-untyped-def]
    (p,) = predictor.predict(["你这个傻逼，滚回你老家去"])
    assert p.decision in ("review", "block")
    assert "insult_defamation" in p.categories


def test_weather_passes(predictor) -> None:  # type: ignore[no-untyped-def]
    (p,) = predictor.predict(["今天天气不错，出去走走"])
    assert p.decision == "pass"


def test_default_bundle_is_small() -> None:
    size = sum(f.stat().st_size for f in DEFAULT_BUNDLE_DIR.iterdir() if f.is_file())
    assert size < 40 * 1024 * 1024


# Known gap (issue 5): the 2026.11.30.2 default bundle (two CPU stages, 110 + 105 min, 181k samples, the last
# weights averaged) reaches test macro-F1 0.7621 against TF-IDF 0.7411 (+2.1 points; dev 0.874 vs 0.834).
# A third 100-minute CPU stage (2026.11.30.3) tied on test (0.7620) and was refused by `shenhe promote`.
# Strict: this fails loudly once a retrained bundle beats the baseline by 3 points, so the marker gets removed then.
@pytest.mark.xfail(strict=True, reason="default bundle does not yet beat TF-IDF by 3 points (issue 5)")
def test_default_bundle_beats_the_baseline() -> None:
    import json

    m = json.loads((DEFAULT_BUNDLE_DIR / "metrics.json").read_text(encoding="utf-8"))
    assert m["baseline"]["test_macro_f1"] is not None
    assert m["test"]["macro_f1"] - m["baseline"]["test_macro_f1"] >= 0.03
