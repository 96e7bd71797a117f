"""Render ``report.html``: one self-contained file (plots as data: URIs, inline CSS, no network)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.policy import CATEGORY_SLUGS, Policy

from . import plots
from .data import EvalSet
from .metrics import LENGTH_BUCKETS
from .scoring import Scored

TEMPLATE_DIR = Path(__file__).with_name("templates")
TEMPLATE = "report.html.j2"
TEXT_PREVIEW = 300  # characters of a text shown in the worst-error tables


@dataclass(frozen=True)
class ReportInputs:
    data: EvalSet
    this: Scored
    metrics: dict[str, Any]  # metrics.json
    policy: Policy
    other: Scored | None = None
    other_metrics: dict[str, Any] | None = None  # evaluate() of the --compare bundle
    daily_volume: int | None = None
    reviews_per_reviewer: int = 800


# --------------------------------------------------------------------------- formatting


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def pct(x: Any, digits: int = 1) -> str:
    return "–" if _missing(x) else f"{100 * x:.{digits}f}%"


def num(x: Any, digits: int = 3) -> str:
    return "–" if _missing(x) else f"{x:.{digits}f}"


def signed(x: Any, fmt: str) -> str:
    if _missing(x):
        return "–"
    return ("+" if x > 0 else "−" if x < 0 else "±") + (pct(abs(x)) if fmt == "pct" else num(abs(x)))


def fmt(x: Any, kind: str) -> str:
    return pct(x) if kind == "pct" else num(x)


def get(d: dict[str, Any] | None, path: str) -> Any:
    node: Any = d
    for part in path.split("/"):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def cell(metrics: dict[str, Any], path: str, kind: str = "num", flat_key: str | None = None,
         baseline_path: str | None = None) -> dict[str, Any]:
    """One table cell: this bundle's value, plus the --compare and --baseline values when present."""
    out: dict[str, Any] = {"v": fmt(get(metrics, path), kind)}
    comp = get(metrics, "compare/metrics")
    if comp is not None and flat_key is not None and flat_key in comp:
        c = comp[flat_key]
        out["o"] = fmt(c["other"], kind)
        out["d"] = signed(c["diff"], kind)
        out["ci"] = None if c["ci"] is None else f"[{signed(c['ci'][0], kind)}, {signed(c['ci'][1], kind)}]"
        out["cls"] = {"this": "better", "other": "worse"}.get(c["better"] or "", "")
    if baseline_path is not None and "baseline" in metrics:
        out["b"] = fmt(get(metrics["baseline"], baseline_path), kind)
    return out


# --------------------------------------------------------------------------- sections


def _summary_rows(m: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[tuple[str, str, str, str | None, str | None]] = [
        ("Texts passed", "decisions/pass", "pct", "decisions.pass", None),
        ("Texts sent to human review", "decisions/review", "pct", "decisions.review", None),
        ("Texts blocked automatically", "decisions/block", "pct", "decisions.block", None),
        ("Blocked texts that are harmful", "decisions/blocked_harmful", "pct", "decisions.blocked_harmful", None),
        ("Harmful texts missed (passed)", "decisions/harmful_missed", "pct", "decisions.harmful_missed", None),
        ("Passed texts that are harmful", "decisions/passed_harmful", "pct", "decisions.passed_harmful", None),
        ("Harmful vs. not: accuracy (score ≥ 0.5)", "binary/accuracy", "num", "binary.accuracy", "binary/accuracy"),
        ("Harmful vs. not: precision", "binary/precision", "num", "binary.precision", "binary/precision"),
        ("Harmful vs. not: recall", "binary/recall", "num", "binary.recall", "binary/recall"),
        ("Harmful vs. not: F1", "binary/f1", "num", "binary.f1", "binary/f1"),
        ("Harmful vs. not: ROC-AUC", "binary/roc_auc", "num", "binary.roc_auc", "binary/roc_auc"),
        (f"Macro F1 ({len(m['macro_f1_categories'])} categories with support)", "macro_f1", "num", "macro_f1",
         "macro_f1"),
    ]
    return [{"label": label, **cell(m, path, kind, key, base)} for label, path, kind, key, base in rows]


def _review_cost(inp: ReportInputs) -> dict[str, Any]:
    m = inp.metrics
    dec = m["decisions"]
    at_prev = dec.get("at_prevalence")
    share = at_prev["review"] if at_prev and at_prev.get("review") is not None else dec["review"]
    out: dict[str, Any] = {
        "per_10k": None if share is None else round(share * 10_000),
        "prevalence": at_prev,
        "eval_harmful_share": m["data"]["harmful"] / m["n"],
        "basis": "at the given prevalence" if at_prev else "at this data's harmful share",
    }
    if inp.daily_volume and share is not None:
        per_day = share * inp.daily_volume
        out.update(daily_volume=inp.daily_volume, per_day=round(per_day), per_reviewer=inp.reviews_per_reviewer,
                   reviewers=math.ceil(per_day / inp.reviews_per_reviewer) if per_day else 0)
    return out


def _category_rows(inp: ReportInputs) -> list[dict[str, Any]]:
    m = inp.metrics
    rows = []
    for slug in CATEGORY_SLUGS:
        pc = m["per_category"][slug]
        base = f"per_category/{slug}"
        flat = f"category.{slug}"
        cat = inp.policy.category(slug)

        def c(metric: str, flat_metric: str, base_path: str | None = None, _b: str = base,
              _f: str = flat) -> dict[str, Any]:
            return cell(m, f"{_b}/{metric}", "num", f"{_f}.{flat_metric}", base_path)

        rows.append({
            "slug": slug,
            "article": cat.article_text,
            "gloss": cat.gloss,
            "trained": pc["trained"],
            "support": pc["support"],
            "can_block": pc["block"]["can_block"],
            "review_threshold": num(pc["review"]["threshold"], 2),
            "block_threshold": num(pc["block"]["threshold"], 2),
            "precision": c("precision", "precision", f"per_category/{slug}/precision"),
            "recall": c("recall", "recall", f"per_category/{slug}/recall"),
            "f1": c("f1", "f1", f"per_category/{slug}/f1"),
            "roc_auc": c("roc_auc", "roc_auc"),
            "ap": c("average_precision", "average_precision", f"per_category/{slug}/average_precision"),
            "ece": c("ece", "ece"),
            "review_p": c("review/precision", "review_precision"),
            "review_r": c("review/recall", "review_recall"),
            "block_p": c("block/precision", "block_precision"),
            "block_r": c("block/recall", "block_recall"),
            "verdict": get(m, f"compare/per_category_verdict/{slug}"),
        })
    return rows


def _slice_rows(inp: ReportInputs, family: str) -> list[dict[str, Any]]:
    m = inp.metrics
    names = [b[2] for b in LENGTH_BUCKETS] if family == "by_length" else list(m[family])
    rows = []
    for name in names:
        s = m[family][name]
        row = {"name": name, "n": s["n"], "harmful": s["harmful"]}
        for metric in ("accuracy", "precision", "recall", "f1", "roc_auc"):
            row[metric] = cell(m, f"{family}/{name}/{metric}", "num", f"{family}.{name}.binary.{metric}")
        for metric in ("review", "block", "harmful_missed"):
            row[metric] = cell(m, f"{family}/{name}/{metric}", "pct", f"{family}.{name}.decisions.{metric}")
        rows.append(row)
    return rows


def _error_rows(inp: ReportInputs, kind: str) -> list[dict[str, Any]]:
    rows = []
    for e in inp.metrics["worst_errors"][kind]:
        text = e["text"]
        row = {**e, "preview": text if len(text) <= TEXT_PREVIEW else text[:TEXT_PREVIEW] + "…",
               "score_fmt": num(e["score"]), "other_score": None}
        if inp.other is not None:
            row["other_score"] = num(float(inp.other.scores[e["row"]].max()))
        rows.append(row)
    return rows


def _robustness(m: dict[str, Any]) -> dict[str, Any] | None:
    r = m.get("robustness")
    if r is None:
        return None
    other = get(m, "compare_robustness")
    kinds = []
    for kind, p in r["perturbations"].items():
        o = None if other is None else other["perturbations"].get(kind)
        kinds.append({
            "name": kind,
            "description": p["description"],
            "undone": p["undone_by_normalisation"],
            "changed": pct(p["changed_share"]),
            "accuracy": num(p.get("binary_accuracy")),
            "accuracy_drop": signed(p.get("binary_accuracy_drop"), "num"),
            "harmless_flagged": pct(p.get("harmless_flagged")),
            "harmless_flagged_increase": signed(p.get("harmless_flagged_increase"), "pct"),
            "harmless_blocked": pct(p.get("harmless_blocked")),
            "changed_harmful": pct(p.get("changed_share_harmful")),
            "changed_harmless": pct(p.get("changed_share_harmless")),
            "recall": num(p["binary_recall"]),
            "recall_drop": signed(p["binary_recall_drop"], "num"),
            "missed": pct(p["harmful_missed"]),
            "missed_increase": signed(p["harmful_missed_increase"], "pct"),
            "macro_f1_drop": signed(p["macro_f1_drop"], "num"),
            "other_recall_drop": None if o is None else signed(o["binary_recall_drop"], "num"),
            "other_missed_increase": None if o is None else signed(o["harmful_missed_increase"], "pct"),
            "per_category": {s: signed(p["per_category"][s]["recall_drop"], "num") for s in CATEGORY_SLUGS},
        })
    slugs = [s for s in CATEGORY_SLUGS if r["support"][s] > 0]
    sources = []
    for name, c in (r["clean"].get("by_source") or {}).items():
        per_kind = [r["perturbations"][k].get("by_source", {}).get(name, {}) for k in r["perturbations"]]
        sources.append({
            "name": name, "harmless": c["harmless"], "blocked": c["blocked"],
            "flagged": [pct(c["harmless_flagged"])] + [pct(x.get("harmless_flagged")) for x in per_kind],
            "blocked_harmful": [num(c["blocked_harmful"])] + [num(x.get("blocked_harmful")) for x in per_kind],
        })
    return {"n": r["n"], "population": r["population"], "kinds": kinds, "slugs": slugs, "sources": sources,
            "clean_recall": num(r["clean"]["binary_recall"]), "clean_missed": pct(r["clean"]["harmful_missed"]),
            "clean_accuracy": num(r["clean"].get("binary_accuracy")),
            "clean_harmless_flagged": pct(r["clean"].get("harmless_flagged")),
            "clean_harmless_blocked": pct(r["clean"].get("harmless_blocked")),
            "harmful": r.get("harmful"), "harmless": r.get("harmless")}


def _ci(c: list[float] | None) -> str:
    return "–" if not c else f"[{num(c[0])}, {num(c[1])}]"


def _block_precision(m: dict[str, Any]) -> dict[str, Any] | None:
    """Rows for the per-source block precision table: one per (category, source) with blocks or positives."""
    bp = m.get("block_precision")
    if bp is None:
        return None
    rows = []
    for slug, e in bp["per_category"].items():
        cells = [("all sources", e["(all)"], False)] + [(name, c, True) for name, c in e["by_source"].items()]
        if not e["(all)"]["positives"] and not e["(all)"]["blocked"]:
            continue
        for name, c, is_source in cells:
            rows.append({
                "slug": slug, "source": name, "is_source": is_source, "can_block": e["can_block"],
                "threshold": num(e["threshold"], 3), "positives": c["positives"], "blocked": c["blocked"],
                "correct": c["correct"], "precision": num(c["precision"]), "ci": _ci(c["ci"]),
                "in_rule": c["in_rule"] and is_source,
                "below": c["precision"] is not None and c["precision"] < bp["target_precision"],
            })
    verdicts = []
    for slug, e in bp["per_category"].items():
        if not e["can_block"]:
            verdict = "review only (never blocks)"
        elif e["holds"] is None:
            verdict = f"no source with ≥ {bp['min_positives']} positives has blocks here"
        else:
            verdict = (f"worst source {e['worst_source']}: {num(e['worst_precision'])} "
                       + ("≥" if e["holds"] else "<") + f" {bp['target_precision']}")
        verdicts.append({"slug": slug, "verdict": verdict, "holds": e["holds"]})
    return {"rows": rows, "verdicts": verdicts, "min_positives": bp["min_positives"],
            "target": bp["target_precision"]}


def _harmless(m: dict[str, Any]) -> dict[str, Any] | None:
    h = m.get("harmless_review")
    if h is None or not h["overall"]["harmless"]:
        return None

    def share(x: dict[str, Any]) -> str:
        return f"{pct(x['share'])} ({x['count']}) {_ci(x['ci']) if x['ci'] else ''}"

    def row(name: str, d: dict[str, Any]) -> dict[str, Any]:
        return {"name": name, "n": d["harmless"], "review": share(d["review"]), "block": share(d["block"]),
                "flagged": share(d["flagged"])}

    per_category = [{"slug": slug, "threshold": num(c["review_threshold"], 3), "reached": share(c["reached"]),
                     "blocked": share(c["blocked"]), "share": c["reached"]["share"]}
                    for slug, c in h["per_category"].items()]
    return {"overall": row("all harmless texts", h["overall"]),
            "by_source": [row(name, d) for name, d in h["by_source"].items()],
            "per_category": per_category}


def _figures(inp: ReportInputs) -> dict[str, str]:
    y = inp.data.y_true

    def series(run: Scored) -> plots.Series:
        t = run.thresholds
        return plots.Series(run.label, run.scores, t.review, t.block, t.can_block, t.trained)

    runs = [inp.this] + ([inp.other] if inp.other is not None else [])
    metric_sets = [inp.metrics] + ([inp.other_metrics] if inp.other_metrics is not None else [])
    figs = {
        "pr": plots.pr_curves(y, [series(r) for r in runs]),
        "reliability": plots.reliability_diagrams(y, [series(r) for r in runs],
                                                  [ms["calibration"]["ece"] for ms in metric_sets]),
        "operating": plots.operating_curves([ms["operating_curve"] for ms in metric_sets], [r.label for r in runs]),
        "histogram": plots.score_histogram(y, series(inp.this)),
        "confusion": plots.confusion_heatmap(inp.metrics["confusion"]),
    }
    if "robustness" in inp.metrics:
        figs["robustness"] = plots.robustness_heatmap(inp.metrics["robustness"])
        figs["disguise"] = plots.disguise_bars(inp.metrics["robustness"])
    if inp.metrics.get("block_precision") is not None:
        figs["block_precision"] = plots.block_precision_dots(inp.metrics["block_precision"])
    return figs


def _operating_table(m: dict[str, Any]) -> list[dict[str, str]]:
    keep = {10, 20, 30, 40, 50, 60, 70, 80, 90}
    return [
        {"t": num(p["review_threshold"], 2), "review": pct(p["review_share"]), "block": pct(p["block_share"]),
         "missed": pct(p["missed_share"])}
        for p in m["operating_curve"]["points"] if round(p["review_threshold"] * 100) in keep
    ]


def build_context(inp: ReportInputs) -> dict[str, Any]:
    m = inp.metrics
    harmful = int(np.asarray(inp.data.y_true).any(axis=1).sum())
    return {
        "m": m,
        "n": m["n"],
        "harmful": harmful,
        "compare": m.get("compare"),
        "baseline": m.get("baseline"),
        "summary": _summary_rows(m),
        "cost": _review_cost(inp),
        "categories": _category_rows(inp),
        "by_length": _slice_rows(inp, "by_length"),
        "by_source": _slice_rows(inp, "by_source") if m["by_source"] else [],
        "operating_table": _operating_table(m),
        "false_positives": _error_rows(inp, "false_positives"),
        "false_negatives": _error_rows(inp, "false_negatives"),
        "robustness": _robustness(m),
        "block_precision": _block_precision(m),
        "harmless": _harmless(m),
        "figures": _figures(inp),
        "pct": pct,
        "num": num,
    }


def render_report(inp: ReportInputs) -> str:
    from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

    env = Environment(
        loader=FileSystemLoader(TEMPLATE_DIR),
        autoescape=select_autoescape(["html", "j2"], default=True),  # texts are user content
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    return env.get_template(TEMPLATE).render(**build_context(inp))


def write_report(inp: ReportInputs, path: Path) -> None:
    path.write_text(render_report(inp), encoding="utf-8")
