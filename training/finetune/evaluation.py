"""``evaluation.json``: what the model card shows of `shenhe eval` reports measured on its bundle.

``shenhe card --bundle B --eval REPORT/metrics.json [--eval ...]`` reads each report's metrics.json as data
(training never imports eval), keeps the few numbers the card's tables need (per source: texts, harmful,
block precision per auto-blocking category with its counts, harmless texts sent to review or blocked; per
perturbation: texts changed, accuracy and harmless flag rate plain and perturbed), and writes them into the
bundle as ``evaluation.json`` with its hash in ``bundle.json``. A report measured on another model (name,
version, model.onnx sha256) or with another policy is refused: the card would state numbers of a different
model. Each call replaces the attached reports with the ones given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shenhe.models.bundle import (
    CARD_FILE,
    EVALUATION_FILE,
    MODEL_FILE,
    BundleManifest,
    file_hashes,
    load_bundle,
    read_manifest,
    verify_files,
    write_manifest,
)
from shenhe.models.policy import CATEGORY_SLUGS, Policy
from shenhe.training.finetune.errors import CardError

FORMAT_VERSION = 1
ALL = "(all)"  # eval/sources.py's name for all texts


def _read_report(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CardError(f"--eval {path}: no such file (give an eval report's metrics.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"--eval {path}: unreadable ({e.__class__.__name__})") from None
    if not isinstance(data, dict) or not isinstance(data.get("bundle"), dict) or "block_precision" not in data:
        raise CardError(f"--eval {path}: not a `shenhe eval` metrics.json with per-source block precision "
                        "(run `shenhe eval` again with this version of shenhe)")
    return data


def _block_cell(cell: Mapping[str, Any]) -> dict[str, Any]:
    return {k: cell.get(k) for k in ("positives", "blocked", "correct", "precision", "in_rule")}


def _block_precision(section: Mapping[str, Any]) -> dict[str, Any]:
    per: dict[str, Any] = {}
    for slug, e in section["per_category"].items():
        if not e.get("can_block"):
            continue
        per[slug] = {"threshold": e["threshold"], "all": _block_cell(e[ALL]),
                     "by_source": {s: _block_cell(c) for s, c in e["by_source"].items()},
                     "worst_source": e.get("worst_source"), "worst_precision": e.get("worst_precision"),
                     "holds": e.get("holds")}
    return {"target_precision": section["target_precision"], "min_positives": section["min_positives"],
            "per_category": per}


def _harmless(summary: Mapping[str, Any]) -> dict[str, Any]:
    return {"harmless": summary["harmless"],
            **{k: {"count": summary[k]["count"], "share": summary[k]["share"]} for k in ("review", "block")}}


_PERTURBED = ("changed_share", "binary_accuracy", "binary_accuracy_drop", "harmless_flagged",
              "harmless_flagged_increase")


def _robustness(section: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if not section:
        return None
    clean = section["clean"]
    return {"texts": section["n"], "harmful": section.get("harmful"), "harmless": section.get("harmless"),
            "plain": {k: clean.get(k) for k in ("binary_accuracy", "harmless_flagged")},
            "perturbations": {kind: {k: p.get(k) for k in _PERTURBED} for kind, p in section["perturbations"].items()}}


def summarise_report(report: Mapping[str, Any]) -> dict[str, Any]:
    """The part of an eval report's metrics.json the card shows, with what identifies the data and the model."""
    data = report["data"]
    harmless = report["harmless_review"]
    sources = {ALL: {"texts": report["n"], "harmful": data["harmful"]},
               **{name: {"texts": s["n"], "harmful": s["harmful"]} for name, s in (report.get("by_source") or {}).items()}}
    return {
        "data": Path(data["path"]).name,
        "data_sha256": data["sha256"],
        "texts": report["n"],
        "population": data.get("population", report["n"]),
        "created": report.get("created"),
        "measured_on": {k: report["bundle"].get(k) for k in ("name", "version", "model_sha256", "policy_version")},
        "sources": sources,
        "block_precision": _block_precision(report["block_precision"]),
        "harmless": {ALL: _harmless(harmless["overall"]),
                     **{name: _harmless(s) for name, s in harmless["by_source"].items()}},
        "robustness": _robustness(report.get("robustness")),
    }


def check_measured_on(summary: Mapping[str, Any], manifest: BundleManifest, policy: Policy, source: str) -> None:
    """Refuse a report of another model, or of this model under another policy."""
    on = summary["measured_on"]
    if (on["name"], on["version"]) != (manifest.name, manifest.version):
        raise CardError(f"{source}: measured on {on['name']} {on['version']}, not on this bundle "
                        f"({manifest.name} {manifest.version})")
    model_hash = manifest.files.get(MODEL_FILE)
    if on.get("model_sha256") and on["model_sha256"] != model_hash:
        raise CardError(f"{source}: measured on a model.onnx with sha256 {on['model_sha256'][:12]}, this bundle's is "
                        f"{str(model_hash)[:12]} (same name and version, another model)")
    if on.get("policy_version") and on["policy_version"] != policy.version:
        raise CardError(f"{source}: measured with policy {on['policy_version']}, this bundle's is {policy.version} "
                        "(evaluate without --policy)")


def attach_evaluation(bundle_dir: Path, reports: Sequence[Path]) -> dict[str, Any]:
    """Write ``evaluation.json`` (the given reports, summarised and checked) and its hash into ``bundle.json``.
    The other files must match their hashes first; the card is rendered again afterwards by the caller."""
    manifest = read_manifest(bundle_dir)
    verify_files(bundle_dir, manifest.model_copy(update={"files": {
        k: v for k, v in manifest.files.items() if k not in (CARD_FILE, EVALUATION_FILE)}}))
    policy = load_bundle(bundle_dir, verify=False).policy
    summaries = []
    for path in reports:
        summary = summarise_report(_read_report(path))
        check_measured_on(summary, manifest, policy, f"--eval {path}")
        summaries.append(summary)
    evaluation = {"format_version": FORMAT_VERSION, "reports": summaries}
    target = bundle_dir / EVALUATION_FILE
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps(evaluation, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)
    write_manifest(bundle_dir, manifest.model_copy(update={"files": {
        **manifest.files, **file_hashes(bundle_dir, (EVALUATION_FILE,))}}))
    return evaluation


def read_evaluation(bundle_dir: Path, manifest: BundleManifest) -> dict[str, Any] | None:
    """The bundle's attached evaluation, when ``bundle.json`` lists it (a stray file is not the bundle's)."""
    if EVALUATION_FILE not in manifest.files:
        return None
    path = bundle_dir / EVALUATION_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CardError(f"{path}: unreadable ({e.__class__.__name__})") from None
    return data if isinstance(data, dict) else None


# ---- the card's tables (cells as text) -------------------------------------------------------------


def _f3(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _pc(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _points(x: float | None, signed: bool = False) -> str:
    return "–" if x is None else (f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}")


def _block_text(cell: Mapping[str, Any] | None, bold: bool) -> str:
    """``0.960 (875/911, 1183 pos.)``; bold where the source takes part in the worst-source rule."""
    if not cell:
        return ""
    text = f"{_f3(cell['precision'])} ({cell['correct']}/{cell['blocked']}, {cell['positives']} pos.)"
    return f"**{text}**" if bold and cell.get("in_rule") else text


def _share_text(share: Mapping[str, Any]) -> str:
    return f"{_pc(share['share'])} ({share['count']})"


def source_table(report: Mapping[str, Any]) -> dict[str, Any]:
    """The per-source table of one report: a column per auto-blocking category that blocks or has positives in
    it, a row per source (all texts first); and per category the worst source of the rule."""
    bp = report["block_precision"]
    per = bp["per_category"]
    columns = [slug for slug in CATEGORY_SLUGS if slug in per and (per[slug]["all"]["blocked"] or per[slug]["all"]["positives"])]
    rows = []
    for name, counts in report["sources"].items():
        harmless = report["harmless"].get(name)
        cells = [_block_text(per[slug]["all"] if name == ALL else per[slug]["by_source"].get(name), name != ALL)
                 for slug in columns]
        rows.append([name if name != ALL else "all", str(counts["texts"]), str(counts["harmful"]), *cells,
                     str(harmless["harmless"]) if harmless else "0",
                     _share_text(harmless["review"]) if harmless else "–",
                     _share_text(harmless["block"]) if harmless else "–"])
    verdicts = []
    for slug in columns:
        e = per[slug]
        if e["holds"] is None:
            verdicts.append(f"{slug}: no source with ≥ {bp['min_positives']} positives has a block")
        else:
            verdicts.append(f"{slug}: worst source {e['worst_source']} {_f3(e['worst_precision'])}, "
                            + ("holds" if e["holds"] else f"**below {bp['target_precision']}**"))
    return {"header": ["source", "texts", "harmful", *columns, "harmless", "harmless to review", "harmless blocked"],
            "rows": rows, "verdicts": verdicts}


def perturbation_table(report: Mapping[str, Any]) -> list[list[str]] | None:
    """Per perturbation kind: texts changed, harmful-vs-not accuracy plain -> perturbed and its drop, the share
    of harmless texts flagged (review or block) plain -> perturbed and its change; None without a robustness run."""
    rb = report.get("robustness")
    if not rb:
        return None
    plain = rb["plain"]
    return [[kind, _pc(p["changed_share"]), f"{_f3(plain['binary_accuracy'])} → {_f3(p['binary_accuracy'])}",
             _points(p["binary_accuracy_drop"]), f"{_pc(plain['harmless_flagged'])} → {_pc(p['harmless_flagged'])}",
             _points(p["harmless_flagged_increase"], signed=True)]
            for kind, p in rb["perturbations"].items()]
