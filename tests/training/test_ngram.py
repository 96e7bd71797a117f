"""The numpy n-gram scorer (models/ngram.py) against scikit-learn, and the converter from a TF-IDF run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shenhe.models.ngram import NgramError, NgramModel
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.finetune.dataset import read_split
from shenhe.training.finetune.errors import ExportError
from shenhe.training.finetune.ngram import component_from_model, convert_tfidf_run

DATA = Path(__file__).parent / "data"
# Real sentences: known n-grams, unseen ones (生僻 characters, Latin, emoji), mixed case, runs of whitespace
# (sklearn folds two or more into one space but leaves a single tab), empty and blank texts.
PROBES = [
    "你这个傻逼，滚回你老家去",
    "高薪兼职刷单，日结三百，加微信详聊",
    "今天天气不错，出去走走",
    "魑魅魍魉",
    "",
    " ",
    "傻逼  滚\t\t回去",
    "傻逼\t滚",
    "VX: ABC123 兼职 Dai 刷",
    "🐶东西滚出去",
    "这个主播又丑又蠢，简直是个垃圾。" * 20,
]


def _fit(lowercase: bool = True, ngram_range: tuple[int, int] = (1, 3), sublinear_tf: bool = True,
         min_df: int = 1) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    split = read_split(DATA / "train.jsonl")
    trained = split.labels.sum(axis=0) >= 2
    vec = TfidfVectorizer(analyzer="char", ngram_range=ngram_range, min_df=min_df, sublinear_tf=sublinear_tf,
                          lowercase=lowercase, dtype=np.float32)
    # Raw text for the lowercase variant (the fixture is normalised text otherwise): upper case survives there.
    texts = split.texts if not lowercase else split.normalized
    x = vec.fit_transform(texts)
    clf = OneVsRestClassifier(LogisticRegression(C=4.0, solver="liblinear", class_weight="balanced"))
    clf.fit(x, split.labels[:, trained].astype(int))
    return {"vectorizer": vec, "classifier": clf,
            "trained": [s for s, t in zip(CATEGORY_SLUGS, trained, strict=True) if t]}


def _sklearn(model: dict, texts: list[str]) -> np.ndarray:
    return np.asarray(model["classifier"].decision_function(model["vectorizer"].transform(texts)))


@pytest.mark.parametrize(("lowercase", "ngram_range", "sublinear_tf"),
                         [(True, (1, 3), True), (False, (2, 4), False), (True, (1, 1), True)])
def test_numpy_scorer_equals_sklearn(lowercase: bool, ngram_range: tuple[int, int], sublinear_tf: bool) -> None:
    model = _fit(lowercase, ngram_range, sublinear_tf)
    component = component_from_model(model, half=False)
    texts = PROBES + [normalize_text(t) for t in PROBES]
    want = _sklearn(model, texts)
    got = component.decision(texts)
    assert got.shape == want.shape == (len(texts), len(model["trained"]))
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # The probes cover what they claim: some texts have no known n-gram (decision = intercept), others do.
    empty = np.asarray(model["vectorizer"].transform(texts).sum(axis=1)).ravel() == 0
    assert empty.any() and (~empty).any()
    np.testing.assert_allclose(got[empty], np.tile(component.intercept, (int(empty.sum()), 1)), atol=1e-6)
    # Article 9 layout: trained columns carry the decision values, the others 0.
    full = component.logits(texts)
    cols = [CATEGORY_SLUGS.index(s) for s in model["trained"]]
    np.testing.assert_allclose(full[:, cols], got)
    assert np.all(np.delete(full, cols, axis=1) == 0)


def test_ngrams_follow_sklearn_char_analyzer() -> None:
    model = _fit(lowercase=False, ngram_range=(2, 4))
    analyzer = model["vectorizer"].build_analyzer()
    component = component_from_model(model, half=False)
    for text in PROBES:
        assert sorted(component.ngrams(text)) == sorted(analyzer(text))


def test_saved_component_loads_back_identically(tmp_path: Path) -> None:
    model = _fit()
    component = component_from_model(model)  # float16 weights, as a bundle carries them
    path = tmp_path / "ngram.npz"
    component.save(path)
    loaded = NgramModel.load(path)
    assert loaded.vocabulary == component.vocabulary and list(loaded.vocabulary) == sorted(loaded.vocabulary)
    assert loaded.categories == tuple(model["trained"]) and loaded.coef.dtype == np.float16
    assert loaded.meta["features_total"] == len(component.vocabulary)
    np.testing.assert_array_equal(loaded.decision(PROBES), component.decision(PROBES))
    # float16 weights move the decision values only slightly
    np.testing.assert_allclose(loaded.decision(PROBES), _sklearn(model, PROBES), atol=5e-3)


def test_feature_cap_keeps_the_heaviest_ngrams() -> None:
    model = _fit()
    full = component_from_model(model, half=False)
    capped = component_from_model(model, max_features=50, half=False)
    assert capped.n_features == 50 and capped.meta["features_total"] == full.n_features
    weight = dict(zip(full.vocabulary, np.abs(full.coef).max(axis=1), strict=True))
    kept = {weight[g] for g in capped.vocabulary}
    dropped = [w for g, w in weight.items() if g not in set(capped.vocabulary)]
    assert min(kept) >= max(dropped)
    # Still a working scorer: the insult outranks the weather in its category.
    c = capped.categories.index("insult_defamation")
    d = capped.decision([PROBES[0], PROBES[2]])
    assert d[0, c] > d[1, c]


def test_unsupported_vectoriser_and_bad_files_are_refused(tmp_path: Path) -> None:
    model = _fit()
    model["vectorizer"].set_params(analyzer="char_wb")
    with pytest.raises(ExportError, match="analyzer='char_wb'"):
        component_from_model(model)
    bad = tmp_path / "ngram.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(NgramError, match="not an n-gram component"):
        NgramModel.load(bad)
    with pytest.raises(ExportError, match="not a TF-IDF run"):
        convert_tfidf_run(tmp_path)
