"""Robustness slice: obfuscations that real users apply to slip past filters.

Every perturbation keeps the text readable for a human (it is reversible by reading), so a robust
model should score the perturbed text like the original. Some are undone by the shared
normalisation (zero-width characters, full-width forms, traditional characters, repeated
whitespace); the others (spaces and symbols between characters, homophones) reach the model.
The report shows, per perturbation and category, recall and F1 on the perturbed texts and the
drop from the same texts unperturbed.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from models.policy import CATEGORY_SLUGS

from .metrics import flat_metrics, nan_to_none, ones_weights
from .scoring import Scored

INSERT_RATE = 0.5  # chance of an insertion after each Chinese character
HOMOPHONE_RATE = 0.3  # chance of replacing each Chinese character by a same-sound one
_SYMBOLS = ("*", ".", "-", "_", "/", "~", "、", "|")
_ZERO_WIDTH = ("\u200b", "\u200c", "\u200d", "\ufeff")


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _insert_after_cjk(text: str, rng: np.random.Generator, pick: Callable[[np.random.Generator], str]) -> str:
    out: list[str] = []
    for i, ch in enumerate(text):
        out.append(ch)
        # between two characters only: a trailing insertion hides nothing
        if _is_cjk(ch) and i + 1 < len(text) and rng.random() < INSERT_RATE:
            out.append(pick(rng))
    return "".join(out)


def insert_spaces(text: str, rng: np.random.Generator) -> str:
    return _insert_after_cjk(text, rng, lambda r: " ")


def insert_symbols(text: str, rng: np.random.Generator) -> str:
    return _insert_after_cjk(text, rng, lambda r: _SYMBOLS[int(r.integers(len(_SYMBOLS)))])


def insert_zero_width(text: str, rng: np.random.Generator) -> str:
    return _insert_after_cjk(text, rng, lambda r: _ZERO_WIDTH[int(r.integers(len(_ZERO_WIDTH)))])


def full_width(text: str, rng: np.random.Generator) -> str:
    """ASCII letters, digits and punctuation to their full-width forms; space to U+3000."""
    return "".join(
        "\u3000" if ch == " " else chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text
    )


@lru_cache(maxsize=1)
def _s2t():  # type: ignore[no-untyped-def]
    import opencc

    return opencc.OpenCC("s2t")


def traditional(text: str, rng: np.random.Generator) -> str:
    return _s2t().convert(text)


@lru_cache(maxsize=1)
def homophone_table() -> dict[str, tuple[str, ...]]:
    """Toneless pinyin -> the 3,755 common (GB2312 level-1) characters with that reading."""
    from pypinyin import lazy_pinyin

    groups: dict[str, list[str]] = defaultdict(list)
    for hi in range(0xB0, 0xD8):
        for lo in range(0xA1, 0xFF):
            try:
                ch = bytes([hi, lo]).decode("gb2312")
            except UnicodeDecodeError:
                continue
            groups[lazy_pinyin(ch)[0]].append(ch)
    return {k: tuple(v) for k, v in groups.items() if len(v) > 1}


def homophones(text: str, rng: np.random.Generator) -> str:
    """Replace Chinese characters by another common character with the same (toneless) pinyin."""
    from pypinyin import lazy_pinyin

    table = homophone_table()
    out = list(text)
    cjk = [i for i, ch in enumerate(text) if _is_cjk(ch)]
    if not cjk:
        return text
    # pinyin in context (pypinyin picks the reading of polyphonic characters from word context)
    readings = lazy_pinyin("".join(text[i] for i in cjk))
    if len(readings) != len(cjk):  # pypinyin merged or split something: fall back to per character
        readings = [lazy_pinyin(text[i])[0] for i in cjk]
    for i, reading in zip(cjk, readings, strict=True):
        choices = [c for c in table.get(reading, ()) if c != text[i]]
        if choices and rng.random() < HOMOPHONE_RATE:
            out[i] = choices[int(rng.integers(len(choices)))]
    return "".join(out)


@dataclass(frozen=True)
class Perturbation:
    name: str
    description: str
    apply: Callable[[str, np.random.Generator], str]
    undone_by_normalisation: bool


PERTURBATIONS: dict[str, Perturbation] = {
    p.name: p
    for p in (
        Perturbation("spaces", f"a space after {INSERT_RATE:.0%} of Chinese characters (傻 逼)", insert_spaces, False),
        Perturbation("symbols", f"a symbol ({' '.join(_SYMBOLS)}) after {INSERT_RATE:.0%} of Chinese characters (傻*逼)",
                     insert_symbols, False),
        Perturbation("zero_width", f"a zero-width character after {INSERT_RATE:.0%} of Chinese characters",
                     insert_zero_width, True),
        Perturbation("full_width", "ASCII letters, digits and punctuation as full-width forms (ｖｘ１２３)", full_width, True),
        Perturbation("traditional", "simplified to traditional characters with OpenCC s2t (發財)", traditional, True),
        Perturbation("homophones", f"{HOMOPHONE_RATE:.0%} of Chinese characters replaced by a common same-sound "
                     "character (pypinyin, tone ignored)", homophones, False),
    )
}


def perturb_texts(texts: list[str], kind: str, seed: int = 0) -> list[str]:
    """Apply one perturbation to every text (deterministic for a given seed)."""
    p = PERTURBATIONS[kind]
    rng = np.random.default_rng([seed, list(PERTURBATIONS).index(kind)])
    return [p.apply(t, rng) for t in texts]


def _summary(y_true: np.ndarray, run: Scored) -> dict[str, Any]:
    flat = flat_metrics(y_true, run.scores, ones_weights(len(y_true)), decisions=run.decisions,
                 thresholds=run.thresholds)
    out: dict[str, Any] = {
        "binary_recall": nan_to_none(flat["binary.recall"][0]),
        "binary_f1": nan_to_none(flat["binary.f1"][0]),
        "harmful_missed": nan_to_none(flat["decisions.harmful_missed"][0]),
        "macro_f1": nan_to_none(flat["macro_f1"][0]),
        "per_category": {
            slug: {m: nan_to_none(flat[f"category.{slug}.{m}"][0]) for m in ("recall", "f1", "average_precision")}
            for slug in CATEGORY_SLUGS
        },
    }
    return out


def _drop(clean: float | None, perturbed: float | None) -> float | None:
    return None if clean is None or perturbed is None else clean - perturbed


def robustness_section(y_true: np.ndarray, clean: Scored, perturbed: dict[str, tuple[np.ndarray, Scored]],
                       *, seed: int, population: int) -> dict[str, Any]:
    """Metrics on the clean sample and, per perturbation, the perturbed numbers and the drop
    (clean - perturbed; positive = worse under obfuscation)."""
    base = _summary(y_true, clean)
    support = {slug: int(y_true[:, j].sum()) for j, slug in enumerate(CATEGORY_SLUGS)}
    kinds: dict[str, Any] = {}
    for kind, (changed, run) in perturbed.items():
        p = _summary(y_true, run)
        kinds[kind] = {
            "description": PERTURBATIONS[kind].description,
            "undone_by_normalisation": PERTURBATIONS[kind].undone_by_normalisation,
            "changed_share": float(changed.mean()),
            "binary_recall": p["binary_recall"],
            "binary_recall_drop": _drop(base["binary_recall"], p["binary_recall"]),
            "binary_f1": p["binary_f1"],
            "binary_f1_drop": _drop(base["binary_f1"], p["binary_f1"]),
            "harmful_missed": p["harmful_missed"],
            "harmful_missed_increase": _drop(p["harmful_missed"], base["harmful_missed"]),
            "macro_f1": p["macro_f1"],
            "macro_f1_drop": _drop(base["macro_f1"], p["macro_f1"]),
            "per_category": {
                slug: {
                    **p["per_category"][slug],
                    "recall_drop": _drop(base["per_category"][slug]["recall"], p["per_category"][slug]["recall"]),
                    "f1_drop": _drop(base["per_category"][slug]["f1"], p["per_category"][slug]["f1"]),
                }
                for slug in CATEGORY_SLUGS
            },
        }
    return {
        "n": len(y_true),
        "population": population,
        "seed": seed,
        "support": support,
        "clean": base,
        "perturbations": kinds,
    }
