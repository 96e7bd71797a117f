"""Obfuscation augmentation: rewrite a share of training texts the way users disguise text.

Four kinds (:data:`~shenhe.training.finetune.args.AUGMENT_KINDS`), weighted by ``AugmentConfig.weights``:

- ``homophone``: Chinese characters replaced by a common character with the same toneless pinyin, chosen
  among the few most frequent such characters of the training corpus (``augment_tables/homophones.tsv``,
  written by ``scripts/augment_homophone_table.py``), more frequent ones more often: what users type;
- ``lookalike``: words replaced by an emoji, a look-alike character, pinyin letters, digits or the internet
  spelling users write for them (死 -> 4 / 💀, 傻逼 -> sb, 的 -> の, 喜欢 -> 稀饭), from :data:`LOOKALIKE_TABLE`;
- ``insert``: one separator (a space, or one symbol from :data:`INSERT_SYMBOLS`) between the characters
  of a run of 2-6 Chinese characters, or of the whole text;
- ``traditional``: OpenCC ``s2twp`` (traditional characters with Taiwan vocabulary). The shared
  normalisation maps traditional characters back (t2s), so only the vocabulary changes (软件 -> 软体)
  reach the model; a rewrite that normalisation undoes counts as unchanged and another kind is used.

The rewrite is decided per (seed, epoch, row id, copy) by a hash, never by the label, so harmless texts
are disguised as often as harmful ones (disguise itself must not become a harm signal); a chosen kind
that cannot change a text (no table word, no two adjacent Chinese characters) falls through to the next
kind, so a selected text is rewritten whenever any kind applies. Labels are never changed.

Not the evaluation's perturbations (``eval/perturb.py``), so ``shenhe eval --perturb`` measures robustness
to rewrites the model has not memorised: the look-alike table shares no (word, replacement) pair and no
replacement string (after normalisation) with the evaluation's emoji and 拆字 tables, and the symbols none
with its ``symbols`` kind. Homophones cannot be fully disjoint (both use common same-sound characters); they
come from a different generator (the 3 most frequent candidates of the corpus, frequency-weighted, vs. any
GB2312 level-1 character with the reading, uniformly), so on the seed texts 22% of the evaluation's
(character, replacement) pairs also occur here (tests/training/test_augment.py keeps it under 25%). Spaces
are shared by necessity (all whitespace is one space after normalisation); their placement differs (runs
of characters vs. a coin flip after every character). There is no 拆字 kind here.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from shenhe.models.normalize import normalize_text
from shenhe.training.finetune.args import AUGMENT_KINDS, AugmentConfig

TABLE_DIR = Path(__file__).resolve().parent / "augment_tables"
HOMOPHONE_FILE = TABLE_DIR / "homophones.tsv"
# Canonical order when two kinds are combined: word tables first (they need the words intact),
# separators last (they would break the words).
APPLY_ORDER = ("lookalike", "homophone", "traditional", "insert")
TRADITIONAL_CONFIG = "s2twp"

# Separators evaders put between characters; none is in eval/perturb.py's symbols (* . - _ / ~ 、 |),
# also after normalisation (full-width forms become ASCII there, so none is used here).
INSERT_SYMBOLS: tuple[str, ...] = ("·", "#", "+", "=", "^", "!", "@", "&", "%", "丶", "♡", "☆", "…", "'", "x", ",")
INSERT_RUN = (2, 6)  # a run of this many Chinese characters gets separators...
WHOLE_TEXT_SHARE = 0.3  # ...or, this often, every pair of adjacent Chinese characters in the text

# Word -> what users write instead. Emoji, look-alike characters, pinyin initials, digits and internet
# spellings. Common words are in the table on purpose (的, 是, 什么, 喜欢, 朋友...): harmless texts are
# disguised too. No pair, and no replacement string after normalisation, is in eval/perturb.py's
# EMOJI_TABLE or SPLIT_TABLE (a test checks). No replacement is a slur or changes what is said.
LOOKALIKE_TABLE: dict[str, tuple[str, ...]] = {
    # death, violence, crime
    "死": ("4", "💀", "si"), "去死": ("qs", "去4"), "死了": ("4了", "si了"), "杀": ("sha", "🗡"),
    "刀": ("🗡",), "打": ("👊", "da"), "炸弹": ("💥", "zd"), "毒品": ("dp", "❄"), "诈骗": ("zp",),
    "赌博": ("du博",), "色情": ("sq", "涩情"), "黄色": ("🟡", "huang色"),
    # insults and swearing
    "傻逼": ("sb", "SB", "傻b", "煞笔"), "傻": ("sha",), "逼": ("b", "bi"), "他妈的": ("tmd", "他喵的"),
    "妈的": ("md", "喵的"), "你妈": ("nm", "尼玛"), "妈": ("ma", "🐎"), "垃圾": ("lj", "laji", "🗑"),
    "脑残": ("nc",), "神经病": ("sjb",), "有病": ("yb",), "卧槽": ("wc", "我擦", "沃草"), "操": ("艹", "cao"),
    "草": ("🌱", "cao"), "屎": ("翔", "shi"), "滚": ("gun",), "牛逼": ("nb", "NB", "牛b"), "蠢": ("chun",),
    "贱": ("jian",), "骚": ("sao",),
    # animals (insults and everyday)
    "狗": ("🐕", "gou", "🐩"), "猪": ("🐖", "🐽", "zhu"), "鸡": ("🐓", "ji"), "牛": ("🐂", "niu"),
    "马": ("🐎",), "猫": ("🐈", "喵"), "鬼": ("👹",),
    # people, groups, places, institutions
    "黑人": ("⬛人", "hei人"), "白人": ("⬜人", "bai人"), "黑": ("⬛", "hei"), "男": ("♂", "👦"),
    "女": ("♀", "👧"), "同性恋": ("txl",), "河南": ("hn", "豫"), "东北": ("dongbei",), "上海": ("魔都", "sh"),
    "北京": ("帝都", "bj"), "中国": ("zg", "CN"), "美国": ("米国", "mg", "🦅"), "日本": ("霓虹", "rb"),
    "韩国": ("hg",), "政府": ("zf",), "警察": ("jc", "🚓"), "共产党": ("gcd",), "医生": ("ys",), "老师": ("ls",),
    # everyday words and internet spellings
    "的": ("の", "d"), "是": ("4",), "是不是": ("4不4",), "什么": ("sm", "神马"), "我": ("偶", "wo"),
    "你": ("u", "ni"), "喜欢": ("稀饭", "xh"), "这样子": ("酱紫",), "这样": ("酱",), "没有": ("木有", "mei有"),
    "有没有": ("有木有",), "不知道": ("不造", "bzd"), "知道": ("造",), "谢谢": ("3Q", "蟹蟹", "thx"),
    "拜拜": ("88", "bye"), "朋友": ("盆友",), "朋友圈": ("pyq",), "男朋友": ("男票", "npy"),
    "女朋友": ("女盆友", "npy"), "同学": ("童鞋",), "孩子": ("孩纸",), "妹子": ("妹纸",), "真的": ("zhen的",),
    "好": ("👌", "hao"), "笑": ("🤣", "xiao"), "笑死": ("xswl", "笑4"), "哭": ("😢",), "吃": ("🍴", "chi"),
    "钱": ("💵", "qian"), "手机": ("📲", "sj"), "电话": ("☎",), "车": ("🚙", "che"), "水": ("💦",),
    "花": ("🌷",), "心": ("💗",), "爱": ("♥", "ai"), "眼": ("👀",), "酒": ("🍷",), "书": ("📚",),
    "房子": ("🏡",), "日": ("曰",), "口": ("囗",), "已经": ("己经",), "疫情": ("yq",), "新冠": ("xg",),
    "地震": ("dz",), "一": ("yi",),
}


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


@lru_cache(maxsize=1)
def homophone_candidates() -> dict[str, tuple[str, ...]]:
    """Toneless pinyin -> candidate characters, most frequent first (the shipped table)."""
    out: dict[str, tuple[str, ...]] = {}
    for line in HOMOPHONE_FILE.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            reading, chars = line.split("\t")
            out[reading] = tuple(chars)
    return out


@lru_cache(maxsize=1)
def _opencc():  # type: ignore[no-untyped-def]
    import opencc

    return opencc.OpenCC(TRADITIONAL_CONFIG)


@lru_cache(maxsize=1)
def _lookalike_keys() -> tuple[tuple[str, ...], int]:
    keys = tuple(sorted(LOOKALIKE_TABLE, key=len, reverse=True))
    return keys, max(len(k) for k in keys)


@lru_cache(maxsize=65536)
def char_readings(ch: str) -> tuple[str, ...]:
    """The distinct toneless readings of one character (several for a polyphone)."""
    from pypinyin import Style, pinyin

    return tuple(dict.fromkeys(pinyin(ch, style=Style.NORMAL, heteronym=True)[0]))


CONTEXT = 4  # Chinese characters each side that decide a polyphone's reading


def context_reading(text: str, cjk: Sequence[int], k: int) -> str:
    """Toneless pinyin of the character at ``cjk[k]`` as read in its context (pypinyin's phrase rules
    over the surrounding Chinese characters); a character with one reading needs no context."""
    readings = char_readings(text[cjk[k]])
    if len(readings) == 1:
        return readings[0]
    from pypinyin import lazy_pinyin

    lo, hi = max(0, k - CONTEXT), min(len(cjk), k + CONTEXT + 1)
    window = lazy_pinyin("".join(text[i] for i in cjk[lo:hi]))
    if len(window) == hi - lo:
        return window[k - lo]
    return lazy_pinyin(text[cjk[k]])[0]


@lru_cache(maxsize=65536)
def _has_candidate(ch: str) -> bool:
    table = homophone_candidates()
    return any(c != ch for r in char_readings(ch) for c in table.get(r, ()))


def homophone_rewrite(text: str, rng: np.random.Generator, rate: float, n_candidates: int,
                      max_chars: int = 8) -> str:
    """Replace about ``rate`` of the Chinese characters (at least one, at most ``max_chars``) by a frequent
    same-sound character."""
    table = homophone_candidates()
    cjk = [i for i, ch in enumerate(text) if _is_cjk(ch)]
    eligible = [k for k, i in enumerate(cjk) if _has_candidate(text[i])]  # the reading in context decides below
    if not eligible:
        return text
    n = min(max_chars, max(1, int(rng.binomial(len(eligible), rate))))
    chosen = sorted(rng.choice(len(eligible), size=n, replace=False).tolist())
    out = list(text)
    for e in chosen:
        k = eligible[e]
        i = cjk[k]
        cands = tuple(c for c in table.get(context_reading(text, cjk, k), ()) if c != text[i])[:n_candidates]
        if not cands:
            continue
        weights = 1.0 / np.arange(1, len(cands) + 1)  # frequency rank: the most frequent most often
        out[i] = cands[int(rng.choice(len(cands), p=weights / weights.sum()))]
    return "".join(out)


def lookalike_rewrite(text: str, rng: np.random.Generator, rate: float) -> str:
    """Replace table words (longest first) by an emoji, look-alike or internet spelling; at least one."""
    keys, longest = _lookalike_keys()
    found: list[tuple[int, str]] = []  # (start, word), non-overlapping, left to right
    i = 0
    while i < len(text):
        for size in range(min(longest, len(text) - i), 0, -1):
            if text[i: i + size] in LOOKALIKE_TABLE:
                found.append((i, text[i: i + size]))
                i += size
                break
        else:
            i += 1
    if not found:
        return text
    chosen = {k for k in range(len(found)) if rng.random() < rate}
    if not chosen:
        chosen = {int(rng.integers(len(found)))}
    out: list[str] = []
    pos = 0
    for k, (start, word) in enumerate(found):
        out.append(text[pos:start])
        if k in chosen:
            options = LOOKALIKE_TABLE[word]
            out.append(options[int(rng.integers(len(options)))])
        else:
            out.append(word)
        pos = start + len(word)
    out.append(text[pos:])
    return "".join(out)


def insert_rewrite(text: str, rng: np.random.Generator, space_share: float) -> str:
    """One separator between the characters of a run of Chinese characters (or of the whole text)."""
    gaps = [i for i in range(len(text) - 1) if _is_cjk(text[i]) and _is_cjk(text[i + 1])]  # after text[i]
    if not gaps:
        return text
    sep = " " if rng.random() < space_share else INSERT_SYMBOLS[int(rng.integers(len(INSERT_SYMBOLS)))]
    if rng.random() < WHOLE_TEXT_SHARE:
        chosen = set(gaps)
    else:
        start = gaps[int(rng.integers(len(gaps)))]
        length = int(rng.integers(INSERT_RUN[0], INSERT_RUN[1] + 1))  # characters in the run
        chosen = set()
        i = start
        while len(chosen) < length - 1 and i < len(text) - 1 and _is_cjk(text[i]) and _is_cjk(text[i + 1]):
            chosen.add(i)
            i += 1
    return "".join(ch + (sep if i in chosen else "") for i, ch in enumerate(text))


def traditional_rewrite(text: str) -> str:
    return _opencc().convert(text)


@dataclass(frozen=True)
class Rewrite:
    text: str  # the rewritten text, normalised
    kinds: tuple[str, ...]  # the kinds that changed it, in the order applied


@dataclass
class EpochStats:
    """What augmentation did to one epoch's rows."""

    rows: int = 0
    selected: int = 0
    changed: int = 0
    harmful_rows: int = 0
    harmful_changed: int = 0
    by_kind: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, object]:
        harmless_rows = self.rows - self.harmful_rows
        return {
            "rows": self.rows, "selected": self.selected, "changed": self.changed,
            "changed_share_harmful": round(self.harmful_changed / self.harmful_rows, 4) if self.harmful_rows else None,
            "changed_share_harmless": (round((self.changed - self.harmful_changed) / harmless_rows, 4)
                                       if harmless_rows else None),
            "by_kind": dict(sorted(self.by_kind.items())),
        }


def _hash64(*parts: object) -> int:
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


class Augmenter:
    """Deterministic rewrites: the same (seed, epoch, row id, copy) always gives the same text."""

    def __init__(self, config: AugmentConfig, seed: int) -> None:
        self.config = config
        self.seed = config.seed if config.seed is not None else seed
        self.kinds = tuple(k for k in AUGMENT_KINDS if config.weights.get(k, 0.0) > 0)
        w = np.array([config.weights[k] for k in self.kinds], dtype=np.float64)
        self.probs = w / w.sum() if len(w) else w

    def selected(self, epoch: int, row_id: str, copy: int = 0) -> bool:
        """Whether this row is rewritten this epoch: a hash of (seed, epoch, row, copy), not of the label."""
        return _hash64("select", self.seed, epoch, row_id, copy) / 2.0**64 < self.config.share

    def rng(self, epoch: int, row_id: str, copy: int = 0) -> np.random.Generator:
        return np.random.default_rng(_hash64("rewrite", self.seed, epoch, row_id, copy))

    def _apply(self, kind: str, text: str, rng: np.random.Generator) -> str:
        c = self.config
        if kind == "homophone":
            return homophone_rewrite(text, rng, c.homophone_rate, c.homophone_candidates)
        if kind == "lookalike":
            return lookalike_rewrite(text, rng, c.lookalike_rate)
        if kind == "insert":
            return insert_rewrite(text, rng, c.space_share)
        if kind == "traditional":
            return traditional_rewrite(text)
        raise ValueError(f"unknown augmentation kind {kind!r}")

    def rewrite(self, text: str, rng: np.random.Generator) -> Rewrite:
        """Rewrite a *normalised* text with one kind (two, for ``second_kind_share`` of texts); the result is
        normalised again (what the model sees). Kinds are tried in a weighted random order until one changes
        the normalised text; ``kinds`` is empty when none does."""
        if not self.kinds:
            return Rewrite(text, ())
        order = [self.kinds[i] for i in rng.choice(len(self.kinds), size=len(self.kinds), replace=False,
                                                   p=self.probs)]
        want = 2 if len(order) > 1 and rng.random() < self.config.second_kind_share else 1
        # one random stream per kind, drawn up front: adding a kind never changes another kind's choices
        streams = {k: int(rng.integers(2**63)) for k in APPLY_ORDER}
        applied: list[str] = []
        current = text
        for kind in order:
            trial = sorted([*applied, kind], key=APPLY_ORDER.index)
            new = text
            for k in trial:
                new = self._apply(k, new, np.random.default_rng(streams[k]))
            new = normalize_text(new)
            if new != current:  # the kind changes what the model sees
                applied, current = trial, new
                if len(applied) >= want:
                    break
        return Rewrite(current, tuple(applied))

    def augment(self, text: str, epoch: int, row_id: str, copy: int = 0) -> Rewrite | None:
        """The row's rewrite this epoch (``text`` normalised), or None when it is not selected (or no kind
        applies)."""
        if not self.selected(epoch, row_id, copy):
            return None
        out = self.rewrite(text, self.rng(epoch, row_id, copy))
        return out if out.kinds else None

    def epoch_texts(self, texts: Sequence[str], ids: Sequence[str], copies: Sequence[int], harmful: Sequence[bool],
                    epoch: int) -> tuple[dict[int, str], EpochStats]:
        """Rewrites of one epoch's (normalised) rows: {position: rewritten normalised text} for the rows that
        changed, and stats."""
        stats = EpochStats(rows=len(texts), harmful_rows=int(sum(bool(h) for h in harmful)))
        out: dict[int, str] = {}
        for j, (text, row_id, copy, bad) in enumerate(zip(texts, ids, copies, harmful, strict=True)):
            if not self.selected(epoch, row_id, copy):
                continue
            stats.selected += 1
            rw = self.rewrite(text, self.rng(epoch, row_id, copy))
            if not rw.kinds:
                continue
            out[j] = rw.text
            stats.changed += 1
            stats.harmful_changed += int(bool(bad))
            stats.by_kind["+".join(rw.kinds)] += 1
        return out, stats
