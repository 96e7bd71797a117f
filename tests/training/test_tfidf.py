"""The TF-IDF baseline trains on the same splits and scores through models.baseline."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shenhe.models.baseline import BaselineError, load_baseline
from shenhe.models.policy import CATEGORY_SLUGS

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tfidf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shenhe.training.finetune.tfidf import TfidfArguments, train_tfidf

    out = tmp_path_factory.mktemp("tfidf")
    train_tfidf(TfidfArguments(data=DATA, out=out, min_train_positives=2, min_df=1), log=lambda *_: None)
    return out


def test_run_writes_metrics_policy_and_model(tfidf_run: Path) -> None:
    info = json.loads((tfidf_run / "run.json").read_text(encoding="utf-8"))
    assert info["arch"] == "tfidf" and info["features"] > 100
    assert set(info["trained_categories"]) == {"ethnic_hatred", "rumor", "obscene_violent", "insult_defamation",
                                               "other_illegal"}
    m = json.loads((tfidf_run / "metrics.json").read_text(encoding="utf-8"))
    assert m["model"] == "tfidf" and 0 <= m["test"]["macro_f1"] <= 1
    assert m["test"]["per_category"]["constitution"]["trained"] is False


def test_baseline_scores_texts(tfidf_run: Path) -> None:
    scorer = load_baseline(tfidf_run)
    texts = ["你这个傻逼，滚回你老家去", "高薪兼职刷单，日结三百", "今天天气不错，出去走走"]
    s = scorer.score(texts)
    assert s.shape == (3, len(CATEGORY_SLUGS))
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(s[:, CATEGORY_SLUGS.index("constitution")] == 0)
    # Training sentences themselves: the fitted model ranks each above the neutral sentence in its category.
    assert s[0, CATEGORY_SLUGS.index("insult_defamation")] > s[2, CATEGORY_SLUGS.index("insult_defamation")]
    assert s[1, CATEGORY_SLUGS.index("other_illegal")] > s[2, CATEGORY_SLUGS.index("other_illegal")]


def test_bert_run_is_not_a_baseline(tiny_run: Path, tmp_path: Path) -> None:
    with pytest.raises(BaselineError, match="not a TF-IDF"):
        load_baseline(tiny_run)
    with pytest.raises(BaselineError, match="not a TF-IDF run"):
        load_baseline(tmp_path)
