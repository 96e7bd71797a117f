"""Report figures as base64 PNG strings (matplotlib, Agg backend; nothing touches a display).

Plots carry only ASCII text (category slugs, numbers): matplotlib's default font has no CJK glyphs,
so Chinese texts go into HTML tables instead.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from shenhe.models.policy import CATEGORY_SLUGS  # noqa: E402

from .metrics import BINARY_THRESHOLD  # noqa: E402

DPI = 80
COLORS = ("#1f77b4", "#d62728", "#2ca02c")


@dataclass(frozen=True)
class Series:
    """One model's arrays for the plots."""

    label: str
    scores: np.ndarray  # (n, 9)
    review: np.ndarray  # (9,)
    block: np.ndarray  # (9,)
    can_block: np.ndarray  # (9,)
    trained: np.ndarray  # (9,)


def to_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _grid(title: str) -> tuple[Figure, np.ndarray]:
    fig, axes = plt.subplots(3, 3, figsize=(12, 10.5))
    fig.suptitle(title)
    return fig, axes.ravel()


def _pr_at(y: np.ndarray, s: np.ndarray, thr: float) -> tuple[float, float] | None:
    pred = s >= thr
    if not pred.any() or not y.any():
        return None
    tp = float((pred & y).sum())
    return tp / y.sum(), tp / pred.sum()


def pr_curves(y_true: np.ndarray, series: Sequence[Series]) -> str:
    """Per-category precision-recall curves; o = review threshold, s = block threshold."""
    from sklearn.metrics import precision_recall_curve

    fig, axes = _grid("Precision-recall per category (o review threshold, s block threshold)")
    for j, (ax, slug) in enumerate(zip(axes, CATEGORY_SLUGS, strict=True)):
        y = y_true[:, j]
        suffix = "" if series[0].trained[j] else " (untrained)"
        ax.set_title(f"{slug}{suffix}  n+={int(y.sum())}", fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if j >= 6:
            ax.set_xlabel("recall")
        if j % 3 == 0:
            ax.set_ylabel("precision")
        if not y.any():
            ax.text(0.5, 0.5, "no support in data", ha="center", va="center", color="gray")
            continue
        for k, ser in enumerate(series):
            prec, rec, _ = precision_recall_curve(y, ser.scores[:, j])
            color = COLORS[k % len(COLORS)]
            ax.step(rec, prec, where="post", color=color, lw=1.5, label=ser.label)
            for thr, marker in ((ser.review[j], "o"), (ser.block[j], "s")):
                pt = _pr_at(y, ser.scores[:, j], float(thr))
                if pt is not None:
                    ax.plot(*pt, marker=marker, color=color, ms=8, mfc="white" if marker == "o" else color)
        if j == 0 or len(series) > 1:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return to_base64(fig)


def reliability_diagrams(y_true: np.ndarray, series: Sequence[Series], ece: Sequence[dict[str, Any]],
                         n_bins: int = 10) -> str:
    """Observed positive rate vs. mean calibrated score per bin (marker area ~ texts in the bin)."""
    from .metrics import calibration_bins

    fig, axes = _grid("Reliability: observed rate vs. predicted score (diagonal = perfectly calibrated)")
    for j, (ax, slug) in enumerate(zip(axes, CATEGORY_SLUGS, strict=True)):
        ax.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if j >= 6:
            ax.set_xlabel("mean predicted score")
        if j % 3 == 0:
            ax.set_ylabel("observed positive rate")
        parts = []
        for k, ser in enumerate(series):
            s = ser.scores[:, j]
            idx = calibration_bins(s, n_bins)
            xs, ys, sizes = [], [], []
            for b in range(n_bins):
                m = idx == b
                if m.any():
                    xs.append(s[m].mean())
                    ys.append(y_true[m, j].mean())
                    sizes.append(m.sum())
            size = 20 + 200 * np.sqrt(np.array(sizes) / max(len(s), 1))
            color = COLORS[k % len(COLORS)]
            ax.plot(xs, ys, color=color, lw=1)
            ax.scatter(xs, ys, s=size, color=color, alpha=0.7, label=ser.label)
            e = ece[k].get(slug)
            parts.append("ECE " + ("-" if e is None else f"{e:.3f}"))
        ax.set_title(f"{slug}  {' / '.join(parts)}", fontsize=10)
        if len(series) > 1 and j == 0:
            ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return to_base64(fig)


def operating_curves(curves: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:
    """Share of traffic sent to review vs. share of harmful texts missed, as the review threshold moves."""
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for k, (curve, label) in enumerate(zip(curves, labels, strict=True)):
        color = COLORS[k % len(COLORS)]
        pts = curve["points"]
        x = [p["review_share"] for p in pts]
        y = [p["missed_share"] for p in pts]
        ax.plot(x, y, color=color, lw=1.5, label=f"{label}: review threshold 0.02-0.98")
        for p in pts:
            if round(p["review_threshold"] * 100) in (10, 30, 50, 70, 90):
                ax.annotate(f"{p['review_threshold']:.1f}", (p["review_share"], p["missed_share"]),
                            textcoords="offset points", xytext=(4, 4), fontsize=8, color=color)
                ax.plot(p["review_share"], p["missed_share"], ".", color=color)
        pp = curve["policy_point"]
        if pp.get("missed_share") is not None:
            ax.plot(pp["review_share"], pp["missed_share"], marker="*", ms=15, color=color, ls="none",
                    label=f"{label}: policy thresholds")
    ax.set_xlabel("share of all texts sent to human review")
    ax.set_ylabel("share of harmful texts missed (passed)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Operating curve: review cost vs. missed harmful content")
    fig.tight_layout()
    return to_base64(fig)


def confusion_heatmap(confusion: dict[str, Any]) -> str:
    """Rows: true label; columns: predicted label at 0.5; cell = share of the row's texts (count shown)."""
    labels = confusion["labels"]
    m = np.array(confusion["matrix"], dtype=float)
    totals = m.sum(axis=1, keepdims=True)
    share = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    fig, ax = plt.subplots(figsize=(9, 7.5))
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel(f"predicted (score >= {BINARY_THRESHOLD})")
    ax.set_ylabel("true label")
    for i in range(len(labels)):
        for k in range(len(labels)):
            if m[i, k]:
                ax.text(k, i, f"{int(m[i, k])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, k] > 0.5 else "black")
    fig.colorbar(im, ax=ax, fraction=0.04, label="share of the row's pairs")
    ax.set_title("Label confusion (multi-label: a text counts once per true/predicted pair)")
    fig.tight_layout()
    return to_base64(fig)


def score_histogram(y_true: np.ndarray, series: Series) -> str:
    """Distribution of the highest category score for harmful and other texts."""
    harmful = y_true.any(axis=1)
    top = series.scores.max(axis=1)
    fig, ax = plt.subplots(figsize=(8, 4))
    bins = np.linspace(0, 1, 41).tolist()
    ax.hist(top[~harmful], bins=bins, alpha=0.6, label=f"not harmful (n={int((~harmful).sum())})", color="#2ca02c")
    ax.hist(top[harmful], bins=bins, alpha=0.6, label=f"harmful (n={int(harmful.sum())})", color="#d62728")
    ax.axvline(BINARY_THRESHOLD, color="black", ls="--", lw=1, label="0.5")
    ax.set_yscale("log")
    ax.set_xlabel("highest calibrated category score")
    ax.set_ylabel("texts (log)")
    ax.legend(fontsize=8)
    ax.set_title(f"Score distribution: {series.label}")
    fig.tight_layout()
    return to_base64(fig)


def robustness_heatmap(robustness: dict[str, Any]) -> str:
    """Recall drop (clean - perturbed) per category and perturbation; blank = no support."""
    kinds = list(robustness["perturbations"])
    slugs = [s for s in CATEGORY_SLUGS if robustness["support"][s] > 0]
    rows = ["harmful (binary)", *slugs]
    m = np.full((len(rows), len(kinds)), np.nan)
    for k, kind in enumerate(kinds):
        r = robustness["perturbations"][kind]
        m[0, k] = np.nan if r["binary_recall_drop"] is None else r["binary_recall_drop"]
        for i, slug in enumerate(slugs, start=1):
            d = r["per_category"][slug]["recall_drop"]
            m[i, k] = np.nan if d is None else d
    fig, ax = plt.subplots(figsize=(1.4 * len(kinds) + 3, 0.45 * len(rows) + 1.8))
    lim = max(0.05, float(np.nanmax(np.abs(m))) if np.isfinite(m).any() else 0.05)
    im = ax.imshow(m, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    ax.set_xticks(range(len(kinds)), kinds, rotation=30, ha="right", fontsize=9)
    ax.set_yticks(range(len(rows)), rows, fontsize=9)
    for i in range(len(rows)):
        for k in range(len(kinds)):
            if np.isfinite(m[i, k]):
                ax.text(k, i, f"{m[i, k]:+.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.04, label="recall drop (red = worse)")
    ax.set_title("Recall lost under obfuscation")
    fig.tight_layout()
    return to_base64(fig)


def disguise_bars(robustness: dict[str, Any]) -> str:
    """Harmful-vs-not accuracy and the harmless flag rate, plain vs. each obfuscation."""
    kinds = list(robustness["perturbations"])
    labels = ["plain", *kinds]
    clean = robustness["clean"]
    acc = [clean.get("binary_accuracy")] + [robustness["perturbations"][k].get("binary_accuracy") for k in kinds]
    flag = [clean.get("harmless_flagged")] + [robustness["perturbations"][k].get("harmless_flagged") for k in kinds]
    block = [clean.get("harmless_blocked")] + [robustness["perturbations"][k].get("harmless_blocked") for k in kinds]

    def arr(xs: list[Any]) -> np.ndarray:
        return np.array([np.nan if x is None else x for x in xs], dtype=float)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 3.8))
    x = np.arange(len(labels))
    a1.bar(x, arr(acc), color=[COLORS[0]] + ["#888888"] * len(kinds))
    a1.set_xticks(x, labels, rotation=30, ha="right", fontsize=9)
    a1.set_ylim(0, 1)
    a1.set_title("harmful vs. not: accuracy")
    w = 0.4
    a2.bar(x - w / 2, arr(flag), w, label="harmless flagged (review or block)", color=COLORS[0])
    a2.bar(x + w / 2, arr(block), w, label="harmless blocked", color=COLORS[1])
    a2.set_xticks(x, labels, rotation=30, ha="right", fontsize=9)
    a2.set_ylim(0, max(0.1, float(np.nanmax(arr(flag))) * 1.2 if np.isfinite(arr(flag)).any() else 0.1))
    a2.legend(fontsize=8)
    a2.set_title("what the policy does with harmless texts")
    fig.tight_layout()
    return to_base64(fig)


def block_precision_dots(block_precision: dict[str, Any]) -> str:
    """Block precision with Wilson 95% intervals, per category (rows) and source (points)."""
    rows: list[tuple[str, float, float, float, bool]] = []
    for slug, e in block_precision["per_category"].items():
        if not e["can_block"]:
            continue
        for name, c in e["by_source"].items():
            if c["blocked"]:
                lo, hi = c["ci"]
                rows.append((f"{slug} / {name} (n={c['blocked']})", c["precision"], lo, hi, c["in_rule"]))
    fig, ax = plt.subplots(figsize=(9, 0.32 * max(len(rows), 3) + 1.5))
    if not rows:
        ax.text(0.5, 0.5, "no blocks", ha="center", va="center")
        ax.set_axis_off()
        return to_base64(fig)
    y = np.arange(len(rows))[::-1]
    for yi, (_, p, lo, hi, in_rule) in zip(y, rows, strict=True):
        color = COLORS[0] if in_rule else "#999999"
        ax.plot([lo, hi], [yi, yi], color=color, lw=2)
        ax.plot([p], [yi], "o", color=COLORS[1] if p < block_precision["target_precision"] else color)
    ax.axvline(block_precision["target_precision"], color="#444", ls="--", lw=1)
    ax.set_yticks(y, [r[0] for r in rows], fontsize=8)
    ax.set_xlim(0, 1.01)
    ax.set_xlabel(f"block precision (Wilson 95% CI); grey = source with < {block_precision['min_positives']} positives")
    ax.set_title("Block precision per category and source")
    fig.tight_layout()
    return to_base64(fig)
