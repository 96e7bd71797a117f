#!/usr/bin/env python3
"""Markdown tables from a `shenhe eval` metrics.json: block precision per source, harmless review share,
per-source harmful-vs-not accuracy, the perturbation table and per-category numbers.

    python scripts/quality_tables.py reports/baseline-holdout/metrics.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def f3(x: Any) -> str:
    return "–" if x is None else f"{x:.3f}"


def pc(x: Any) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def ci(c: Any) -> str:
    return "–" if not c else f"[{c[0]:.3f}, {c[1]:.3f}]"


def signed_pts(x: Any) -> str:
    return "–" if x is None else f"{100 * x:+.1f}"


def block_table(m: dict[str, Any]) -> list[str]:
    bp = m["block_precision"]
    out = [f"Block precision per category and source (sources with ≥ {bp['min_positives']} positives in **bold** "
           "take part in the worst-source rule):", "",
           "| category | block thr. | source | positives | blocked | correct | precision | Wilson 95% CI |",
           "|---|---:|---|---:|---:|---:|---:|---|"]
    verdicts = []
    for slug, e in bp["per_category"].items():
        if not e["(all)"]["positives"] and not e["(all)"]["blocked"]:
            continue
        if not e["can_block"]:
            verdicts.append(f"- {slug}: review only (never blocks)")
            continue
        for name, c in [("all", e["(all)"]), *e["by_source"].items()]:
            label = f"**{name}**" if name != "all" and c["in_rule"] else name
            out.append(f"| {slug} | {e['threshold']:.3f} | {label} | {c['positives']} | {c['blocked']} | {c['correct']} "
                       f"| {f3(c['precision'])} | {ci(c['ci'])} |")
        if e["holds"] is None:
            verdicts.append(f"- {slug}: no source with ≥ {bp['min_positives']} positives has a block")
        else:
            verdicts.append(f"- {slug}: worst source {e['worst_source']} {f3(e['worst_precision'])} → "
                            + ("holds" if e["holds"] else f"**below {bp['target_precision']}**"))
    return out + ["", *verdicts]


def harmless_table(m: dict[str, Any]) -> list[str]:
    h = m["harmless_review"]

    def cell(x: dict[str, Any]) -> str:
        return f"{pc(x['share'])} ({x['count']})"

    out = ["Harmless texts (no label): what the policy does with them:", "",
           "| texts | harmless | review | block | review or block |", "|---|---:|---:|---:|---:|"]
    for name, d in [("all", h["overall"]), *h["by_source"].items()]:
        out.append(f"| {name} | {d['harmless']} | {cell(d['review'])} | {cell(d['block'])} | {cell(d['flagged'])} |")
    out += ["", "Per category: harmless texts reaching its review threshold (review or block by it):", "",
            "| category | review thr. | harmless reaching it | harmless blocked by it |", "|---|---:|---:|---:|"]
    for slug, c in h["per_category"].items():
        if c["reached"]["count"] or c["blocked"]["count"]:
            out.append(f"| {slug} | {c['review_threshold']:.3f} | {cell(c['reached'])} | {cell(c['blocked'])} |")
    return out


def source_table(m: dict[str, Any]) -> list[str]:
    out = ["Per source, harmful vs. not (score ≥ 0.5) and decisions:", "",
           "| source | texts | harmful | accuracy | precision | recall | review | block | harmful missed |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, s in m["by_source"].items():
        out.append(f"| {name} | {s['n']} | {s['harmful']} | {f3(s['accuracy'])} | {f3(s['precision'])} "
                   f"| {f3(s['recall'])} | {pc(s['review'])} | {pc(s['block'])} | {pc(s['harmful_missed'])} |")
    return out


def perturb_table(m: dict[str, Any]) -> list[str]:
    r = m.get("robustness")
    if not r:
        return []
    c = r["clean"]
    out = [f"Perturbations ({r['n']} texts: {r.get('harmful')} harmful, {r.get('harmless')} harmless; drops in "
           "points, plain − perturbed):", "",
           "| kind | changed (harmful / harmless) | accuracy | accuracy drop | harmful recall | recall drop "
           "| harmless flagged | vs. plain | harmless blocked |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|",
           f"| plain | – | {f3(c['binary_accuracy'])} | – | {f3(c['binary_recall'])} | – | {pc(c['harmless_flagged'])} "
           f"| – | {pc(c['harmless_blocked'])} |"]
    for kind, p in r["perturbations"].items():
        out.append(f"| {kind} | {pc(p['changed_share_harmful'])} / {pc(p['changed_share_harmless'])} "
                   f"| {f3(p['binary_accuracy'])} | {signed_pts(p['binary_accuracy_drop'])} | {f3(p['binary_recall'])} "
                   f"| {signed_pts(p['binary_recall_drop'])} | {pc(p['harmless_flagged'])} "
                   f"| {signed_pts(p['harmless_flagged_increase'])} | {pc(p['harmless_blocked'])} |")
    by_source = c.get("by_source")
    if by_source:
        kinds = list(r["perturbations"])
        out += ["", "Per source: harmless texts flagged (review or block), plain and per kind; and block precision "
                "(blocked texts that are harmful, any category):", "",
                "| source | harmless | flagged: plain | " + " | ".join(f"flagged: {k}" for k in kinds)
                + " | blocked harmful: plain | " + " | ".join(f"blocked harmful: {k}" for k in kinds) + " |",
                "|---|---:|" + "---:|" * (2 * len(kinds) + 2)]
        for name, b in by_source.items():
            per = [r["perturbations"][k]["by_source"].get(name, {}) for k in kinds]
            out.append(f"| {name} | {b['harmless']} | {pc(b['harmless_flagged'])} | "
                       + " | ".join(pc(x.get("harmless_flagged")) for x in per)
                       + f" | {f3(b['blocked_harmful'])} ({b['blocked']}) | "
                       + " | ".join(f"{f3(x.get('blocked_harmful'))} ({x.get('blocked', 0)})" for x in per) + " |")
    return out


def category_table(m: dict[str, Any]) -> list[str]:
    out = ["| category | support | precision | recall | F1 | AP | review P | review R | block P | block R |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for slug, c in m["per_category"].items():
        if not c["support"]:
            continue
        out.append(f"| {slug} | {c['support']} | {f3(c['precision'])} | {f3(c['recall'])} | {f3(c['f1'])} "
                   f"| {f3(c['average_precision'])} | {f3(c['review']['precision'])} | {f3(c['review']['recall'])} "
                   f"| {f3(c['block']['precision'])} | {f3(c['block']['recall'])} |")
    return out + ["", f"macro F1 ({len(m['macro_f1_categories'])} categories with support): {f3(m['macro_f1'])}; "
                  f"decisions: pass {pc(m['decisions']['pass'])}, review {pc(m['decisions']['review'])}, "
                  f"block {pc(m['decisions']['block'])}; blocked texts harmful {pc(m['decisions']['blocked_harmful'])}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metrics", type=Path)
    args = ap.parse_args()
    m = json.loads(args.metrics.read_text(encoding="utf-8"))
    print(f"<!-- {m['bundle']['name']} {m['bundle']['version']} on {m['data']['path']} "
          f"(sha256 {m['data']['sha256'][:12]}, {m['n']} texts) -->\n")
    for part in (category_table(m), source_table(m), block_table(m), harmless_table(m), perturb_table(m)):
        if part:
            print("\n".join(part) + "\n")


if __name__ == "__main__":
    main()
