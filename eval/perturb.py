"""Robustness slice: obfuscations that real users apply to slip past filters.

Every perturbation keeps the text readable for a human (it is reversible by reading), so a robust
model should score the perturbed text like the original. Some are undone by the shared
normalisation (zero-width characters, full-width forms, traditional characters, repeated
whitespace); the others (spaces and symbols between characters, homophones) reach the model.
The report shows, per perturbation and category, recall and F1 on the perturbed texts and the
drop from the same texts unperturbed; and, on harmful and harmless texts alike, harmful-vs-not
accuracy and the share of harmless texts the policy flags (review or block), plain vs perturbed,
so that a model which learnt "disguised = harmful" shows up as a rising harmless flag rate.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS

from .metrics import BLOCK, PASS, flat_metrics, nan_to_none, ones_weights, wilson_interval
from .scoring import Scored

if TYPE_CHECKING:
    from opencc import OpenCC

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
def _s2t() -> OpenCC:
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


EMOJI_RATE = 0.6  # chance of replacing each occurrence of a word in the emoji table
# Words evaders replace by an emoji or a look-alike symbol (longest first when applied). Common words
# are in the table on purpose: harmless texts get rewritten too, so disguise itself is measured.
EMOJI_TABLE: dict[str, str] = {
    "美国": "🇺🇸", "日本": "🇯🇵", "中国": "🇨🇳", "手机": "📱", "电话": "📞", "飞机": "✈", "香蕉": "🍌",
    "警察": "👮", "医院": "🏥", "太阳": "☀", "月亮": "🌙", "星星": "⭐", "毒品": "💊", "炸弹": "💣",
    "狗": "🐶", "猪": "🐷", "草": "🌿", "操": "🌿", "艹": "🌿", "屎": "💩", "粪": "💩", "牛": "🐮",
    "马": "🐴", "妈": "🐴", "鸡": "🐔", "鸭": "🦆", "鬼": "👻", "死": "☠", "杀": "🔪", "刀": "🔪",
    "枪": "🔫", "炸": "💣", "火": "🔥", "烧": "🔥", "钱": "💰", "心": "❤", "爱": "❤", "猫": "🐱",
    "蛇": "🐍", "猴": "🐒", "虫": "🐛", "鱼": "🐟", "羊": "🐑", "鼠": "🐭", "龙": "🐉", "虎": "🐯",
    "兔": "🐰", "水": "💧", "花": "🌸", "黑": "⚫", "白": "⚪", "手": "✋", "眼": "👁", "笑": "😂",
    "哭": "😭", "吐": "🤮", "男": "👨", "女": "👩", "人": "👤", "屁": "💨", "蛋": "🥚", "瓜": "🍉",
    "菜": "🥬", "桃": "🍑", "车": "🚗", "房": "🏠", "书": "📖", "酒": "🍺", "烟": "🚬", "药": "💊",
    "针": "💉", "零": "〇", "一": "①", "二": "②", "三": "③", "十": "✚", "口": "□", "日": "☀", "月": "🌙",
}
SPLIT_RATE = 0.7  # chance of splitting each character found in the component table
# 拆字: a character written as its components, as evaders do (妈 -> 女马).
SPLIT_TABLE: dict[str, str] = {
    "好": "女子", "妈": "女马", "奶": "女乃", "她": "女也", "娘": "女良", "婊": "女表", "妓": "女支",
    "奸": "女干", "妖": "女夭", "嫖": "女票", "娼": "女昌", "姐": "女且", "妹": "女未", "如": "女口",
    "炸": "火乍", "炮": "火包", "烧": "火尧", "灯": "火丁", "炒": "火少", "枪": "木仓", "林": "木木",
    "村": "木寸", "树": "木对", "杂": "九木", "狗": "犭句", "猪": "犭者", "狼": "犭良", "猴": "犭侯",
    "猫": "犭苗", "独": "犭虫", "狂": "犭王", "死": "歹匕", "残": "歹戋", "打": "扌丁", "把": "扌巴",
    "抢": "扌仓", "骗": "马扁", "骚": "马蚤", "赌": "贝者", "贼": "贝戎", "贱": "贝戋", "财": "贝才",
    "败": "贝攵", "他": "亻也", "们": "亻门", "体": "亻本", "休": "亻木", "住": "亻主", "什": "亻十",
    "伪": "亻为", "偷": "亻俞", "佛": "亻弗", "仙": "亻山", "信": "亻言", "吗": "口马", "吧": "口巴",
    "吃": "口乞", "和": "禾口", "知": "矢口", "种": "禾中", "怕": "忄白", "情": "忄青", "性": "忄生",
    "快": "忄夬", "江": "氵工", "汉": "氵又", "法": "氵去", "河": "氵可", "湖": "氵胡", "鸡": "又鸟",
    "强": "弓虽", "砍": "石欠", "钱": "钅戋", "钟": "钅中", "错": "钅昔", "跑": "足包", "路": "足各",
    "胖": "月半", "胡": "古月", "朋": "月月", "明": "日月", "时": "日寸", "晴": "日青", "鲜": "鱼羊",
    "想": "相心", "思": "田心", "怒": "奴心", "忍": "刃心", "您": "你心", "尿": "尸水", "屁": "尸比",
    "屎": "尸米", "屌": "尸吊", "蛆": "虫且", "蛇": "虫它", "畜": "玄田", "政": "正攵", "教": "孝攵",
}


def _table_replace(text: str, table: dict[str, str], rate: float, rng: np.random.Generator) -> str:
    keys = sorted(table, key=len, reverse=True)
    longest = len(keys[0])
    out: list[str] = []
    i = 0
    while i < len(text):
        for size in range(min(longest, len(text) - i), 0, -1):
            word = text[i : i + size]
            if word in table:
                out.append(table[word] if rng.random() < rate else word)
                i += size
                break
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def emoji_for_characters(text: str, rng: np.random.Generator) -> str:
    """Replace words by the emoji or look-alike symbol evaders use for them (狗 -> 🐶, 美国 -> 🇺🇸)."""
    return _table_replace(text, EMOJI_TABLE, EMOJI_RATE, rng)


def split_characters(text: str, rng: np.random.Generator) -> str:
    """拆字: write characters as their components (妈 -> 女马, 枪 -> 木仓)."""
    return _table_replace(text, SPLIT_TABLE, SPLIT_RATE, rng)


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
        Perturbation("emoji", f"{EMOJI_RATE:.0%} of the words in a {len(EMOJI_TABLE)}-entry table replaced by an emoji "
                     "or look-alike symbol (狗 -> 🐶, 美国 -> 🇺🇸)", emoji_for_characters, False),
        Perturbation("split", f"拆字: {SPLIT_RATE:.0%} of the characters in a {len(SPLIT_TABLE)}-entry table written as "
                     "their components (妈 -> 女马, 枪 -> 木仓)", split_characters, False),
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
    harmless = ~y_true.any(axis=1)
    flagged = run.decisions != PASS
    out: dict[str, Any] = {
        "binary_accuracy": nan_to_none(flat["binary.accuracy"][0]),
        # What the policy does with the harmless texts: share sent to review or blocked, and blocked.
        "harmless_flagged": float(flagged[harmless].mean()) if harmless.any() else None,
        "harmless_blocked": float((run.decisions[harmless] == BLOCK).mean()) if harmless.any() else None,
        "harmful_flagged": float(flagged[~harmless].mean()) if (~harmless).any() else None,
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


def _by_source(y_true: np.ndarray, run: Scored, sources: list[str | None]) -> dict[str, Any]:
    """Per source: the harmless texts flagged (review or block), and the blocked texts that are harmful."""
    harmful = y_true.any(axis=1)
    src = np.array([x if x is not None else "(none)" for x in sources])
    flagged, blocked = run.decisions != PASS, run.decisions == BLOCK
    out: dict[str, Any] = {}
    for name in sorted(set(src.tolist())):
        m = src == name
        n_harmless = int((m & ~harmful).sum())
        n_blocked = int((m & blocked).sum())
        correct = int((m & blocked & harmful).sum())
        ci = wilson_interval(correct, n_blocked)
        out[name] = {
            "harmless": n_harmless,
            "harmless_flagged": float((m & ~harmful & flagged).sum() / n_harmless) if n_harmless else None,
            "blocked": n_blocked,
            "blocked_harmful": correct / n_blocked if n_blocked else None,
            "blocked_harmful_ci": list(ci) if ci else None,
        }
    return out


def _drop(clean: float | None, perturbed: float | None) -> float | None:
    return None if clean is None or perturbed is None else clean - perturbed


# Summary metrics reported per perturbation with their change from the clean run: True = higher is better
# (the change is a drop, clean - perturbed), False = lower is better (an increase, perturbed - clean).
_TRACKED: tuple[tuple[str, bool], ...] = (
    ("binary_accuracy", True), ("harmless_flagged", False), ("harmless_blocked", False),
    ("harmful_flagged", True), ("binary_recall", True), ("binary_f1", True), ("harmful_missed", False),
    ("macro_f1", True),
)


def _with_changes(base: dict[str, Any], perturbed: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, higher_is_better in _TRACKED:
        out[key] = perturbed[key]
        if higher_is_better:
            out[f"{key}_drop"] = _drop(base[key], perturbed[key])
        else:
            out[f"{key}_increase"] = _drop(perturbed[key], base[key])
    return out


def robustness_section(y_true: np.ndarray, clean: Scored, perturbed: dict[str, tuple[np.ndarray, Scored]],
                       *, seed: int, population: int, sources: list[str | None] | None = None) -> dict[str, Any]:
    """Metrics on the clean sample and, per perturbation, the perturbed numbers and the drop
    (clean - perturbed; positive = worse under obfuscation). With ``sources``, also per source the
    harmless flag rate and the harmful share of blocked texts, plain and per perturbation."""
    base = _summary(y_true, clean)
    if sources is not None:
        base["by_source"] = _by_source(y_true, clean, sources)
    harmful = y_true.any(axis=1)
    support = {slug: int(y_true[:, j].sum()) for j, slug in enumerate(CATEGORY_SLUGS)}
    kinds: dict[str, Any] = {}
    for kind, (changed, run) in perturbed.items():
        p = _summary(y_true, run)
        kinds[kind] = {
            **({"by_source": _by_source(y_true, run, sources)} if sources is not None else {}),
            "description": PERTURBATIONS[kind].description,
            "undone_by_normalisation": PERTURBATIONS[kind].undone_by_normalisation,
            "changed_share": float(changed.mean()),
            "changed_share_harmful": float(changed[harmful].mean()) if harmful.any() else None,
            "changed_share_harmless": float(changed[~harmful].mean()) if (~harmful).any() else None,
            **_with_changes(base, p),
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
        "harmful": int(harmful.sum()),
        "harmless": int((~harmful).sum()),
        "population": population,
        "seed": seed,
        "support": support,
        "clean": base,
        "perturbations": kinds,
    }
