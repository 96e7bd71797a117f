"""A character n-gram linear model scored with numpy alone: a bundle's optional second model.

It computes exactly what scikit-learn's ``TfidfVectorizer(analyzer="char", norm="l2")`` followed by a
linear classifier's ``decision_function`` compute, without scikit-learn (a serving dependency it is not):

1. preprocess: ``str.lower`` when the vectoriser lowercases (sklearn's default), then every run of two or
   more whitespace characters becomes one space (sklearn's ``_white_spaces`` is ``\\s\\s+``: a single tab
   stays a tab);
2. every character n-gram with ``lo <= n <= hi`` (none longer than the text), counted; n-grams outside the
   vocabulary are ignored;
3. ``tf = 1 + log(count)`` (sublinear) or the count, times ``idf``; the vector divided by its L2 norm (a text
   with no known n-gram stays all zero);
4. ``x @ coef + intercept`` per category.

The component file (``ngram.npz``, written by ``training/finetune/ngram.py``) holds the vocabulary as UTF-8
n-grams joined by NUL (sorted: it compresses better), ``idf`` [features], ``coef`` [features, categories]
(float16 to keep the bundle small), ``intercept`` [categories] and a JSON ``meta`` (n-gram range, lowercase,
sublinear tf, the categories in column order). Loaded with ``allow_pickle=False``: no code runs from the file.

:func:`blend_logits` joins it with the encoder, per category, as ``w_enc * encoder + w_ngram * ngram + bias``
(the weights are in the bundle manifest, see ``models/bundle.py: NgramEnsemble``).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

NGRAM_FILE = "ngram.npz"
FORMAT = "shenhe-ngram-1"
SEPARATOR = "\x00"  # normalised text never holds it (models/normalize.py drops control characters)
_WHITE_SPACES = re.compile(r"\s\s+")  # sklearn.feature_extraction.text._VectorizerMixin._white_spaces


class NgramError(ValueError):
    """An n-gram component that cannot be used; one-line message."""


class CategoryWeights(Protocol):
    """One category's blend (``models.bundle.CategoryBlend``)."""

    @property
    def encoder(self) -> float: ...

    @property
    def ngram(self) -> float: ...

    @property
    def bias(self) -> float: ...


class NgramModel:
    """Vocabulary, idf and linear weights of a char n-gram TF-IDF classifier over ``categories``."""

    def __init__(self, vocabulary: Sequence[str], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 categories: Sequence[str], ngram_range: tuple[int, int], lowercase: bool = True,
                 sublinear_tf: bool = True, meta: Mapping[str, Any] | None = None) -> None:
        lo, hi = ngram_range
        if not 1 <= lo <= hi:
            raise NgramError(f"n-gram range {ngram_range} must have 1 <= min <= max")
        unknown = [c for c in categories if c not in CATEGORY_SLUGS]
        if unknown:
            raise NgramError(f"unknown category {unknown[0]!r}")
        n, k = len(vocabulary), len(categories)
        if idf.shape != (n,) or coef.shape != (n, k) or intercept.shape != (k,):
            raise NgramError(f"shapes disagree: {n} n-grams, {k} categories, idf {idf.shape}, coef {coef.shape}, "
                             f"intercept {intercept.shape}")
        self.vocabulary = tuple(vocabulary)
        self.idf = np.asarray(idf)
        self.coef = np.asarray(coef)  # as stored (float16 in a bundle); scoring uses a float64 copy
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.categories = tuple(categories)
        self.ngram_range = (int(lo), int(hi))
        self.lowercase = lowercase
        self.sublinear_tf = sublinear_tf
        self.meta = dict(meta or {})
        self._index = {g: i for i, g in enumerate(self.vocabulary)}
        if len(self._index) != n:
            raise NgramError("the vocabulary repeats an n-gram")
        self._idf = self.idf.astype(np.float64)
        self._coef = self.coef.astype(np.float64)
        self._columns = np.array([CATEGORY_SLUGS.index(c) for c in self.categories], dtype=np.int64)

    @property
    def n_features(self) -> int:
        return len(self.vocabulary)

    def ngrams(self, text: str) -> list[str]:
        """The character n-grams sklearn's char analyzer yields for ``text`` (in-vocabulary or not)."""
        if self.lowercase:
            text = text.lower()
        text = _WHITE_SPACES.sub(" ", text)
        lo, hi = self.ngram_range
        length = len(text)
        return [text[i: i + n] for n in range(lo, min(hi, length) + 1) for i in range(length - n + 1)]

    def features(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """The text's L2-normalised TF-IDF vector as (feature indices, values)."""
        index = self._index
        counts = Counter(i for i in map(index.get, self.ngrams(text)) if i is not None)
        if not counts:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
        idx = np.fromiter(counts.keys(), dtype=np.int64, count=len(counts))
        tf = np.fromiter(counts.values(), dtype=np.float64, count=len(counts))
        if self.sublinear_tf:
            tf = 1.0 + np.log(tf)
        x = tf * self._idf[idx]
        norm = float(np.sqrt(x @ x))
        return idx, (x / norm if norm > 0 else x)

    def decision(self, texts: Sequence[str]) -> np.ndarray:
        """Decision values [n, len(categories)], as the linear classifier's ``decision_function``."""
        out = np.tile(self.intercept, (len(texts), 1))
        for r, text in enumerate(texts):
            idx, x = self.features(text)
            if len(idx):
                out[r] += x @ self._coef[idx]
        return out

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Decision values [n, 9] in Article 9 order; categories the model was not trained on are 0."""
        out = np.zeros((len(texts), len(CATEGORY_SLUGS)), dtype=np.float64)
        out[:, self._columns] = self.decision(texts)
        return out

    # -- the component file --------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write ``ngram.npz`` (compressed, no pickled objects)."""
        bad = next((g for g in self.vocabulary if SEPARATOR in g), None)
        if bad is not None:
            raise NgramError(f"n-gram {bad!r} holds the separator NUL")
        meta = {**self.meta, "format": FORMAT, "categories": list(self.categories),
                "ngram_range": list(self.ngram_range), "lowercase": self.lowercase, "sublinear_tf": self.sublinear_tf}
        vocab = np.frombuffer(SEPARATOR.join(self.vocabulary).encode("utf-8"), dtype=np.uint8)
        with path.open("wb") as f:
            np.savez_compressed(f, vocabulary=vocab, idf=self.idf, coef=self.coef, intercept=self.intercept,
                                meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode("utf-8"), dtype=np.uint8))

    @classmethod
    def load(cls, path: Path) -> NgramModel:
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("vocabulary", "idf", "coef", "intercept", "meta")}
        except (OSError, ValueError, KeyError, EOFError) as e:
            raise NgramError(f"{path}: not an n-gram component ({e.__class__.__name__})") from None
        try:
            meta = json.loads(arrays["meta"].tobytes().decode("utf-8"))
            text = arrays["vocabulary"].tobytes().decode("utf-8")
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise NgramError(f"{path}: unreadable ({e.__class__.__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise NgramError(f"{path}: not a {FORMAT} component")
        vocabulary = text.split(SEPARATOR) if text else []
        lo, hi = meta["ngram_range"]
        rest = {k: v for k, v in meta.items()
                if k not in ("format", "categories", "ngram_range", "lowercase", "sublinear_tf")}
        return cls(vocabulary, arrays["idf"], arrays["coef"], arrays["intercept"], meta["categories"], (lo, hi),
                   bool(meta["lowercase"]), bool(meta["sublinear_tf"]), rest)


def blend_arrays(blend: Mapping[str, CategoryWeights]) -> np.ndarray:
    """[3, 9]: encoder weights, n-gram weights and biases per category (1, 0, 0 where not blended)."""
    out = np.zeros((3, len(CATEGORY_SLUGS)), dtype=np.float64)
    out[0] = 1.0
    for slug, w in blend.items():
        c = CATEGORY_SLUGS.index(slug)
        out[:, c] = (w.encoder, w.ngram, w.bias)
    return out


def blend_logits(encoder: np.ndarray, ngram: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``w_enc * encoder + w_ngram * ngram + bias`` per category: [n, 9] each, ``weights`` from :func:`blend_arrays`.

    With ``w_enc > 0`` (the manifest insists) this commutes with the maximum over a text's windows, so the
    predictor may blend window logits and take the maximum, as training blends the text's maximum."""
    return encoder * weights[0] + ngram * weights[1] + weights[2]
