"""`shenhe eval`: evaluation report for a model bundle (light imports only; the work is in eval.run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shenhe.eval.errors import EvalDataError
from shenhe.models.bundle import BundleError
from shenhe.models.errors import cli_errors
from shenhe.models.policy import PolicyError

_PERTURBATIONS = "spaces,symbols,zero_width,full_width,traditional,homophones,emoji,split"


@cli_errors(EvalDataError, PolicyError, BundleError)
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL, one {\"text\", \"labels\" (list of category slugs), \"source\"?, \"id\"?} per line.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for metrics.json and report.html.")],
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Model bundle directory (default: $SHENHE_BUNDLE, else models/default).")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="A second bundle: show both, the difference and bootstrap 95% intervals.")] = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="A TF-IDF run directory (shenhe train --arch tfidf) shown next to the bundle.")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Evaluate with this policy YAML instead of the bundle's.")] = None,
    perturb: Annotated[bool, typer.Option("--perturb", help="Re-score after obfuscations (spaces, symbols, zero-width, full-width, traditional, homophones, emoji-for-character, split-character), of harmful and harmless texts alike.")] = False,
    perturb_kinds: Annotated[str, typer.Option("--perturb-kinds", help="Comma-separated obfuscations to run.")] = _PERTURBATIONS,
    perturb_sample: Annotated[int, typer.Option("--perturb-sample", min=1, help="Texts re-scored per obfuscation (seeded sample).")] = 2000,
    bootstrap: Annotated[int, typer.Option("--bootstrap", help="Bootstrap resamples for --compare intervals.")] = 1000,
    prevalence: Annotated[float | None, typer.Option("--prevalence", help="Harmful share of live traffic: re-weights the decision shares.")] = None,
    daily_volume: Annotated[int | None, typer.Option("--daily-volume", min=1, help="Texts per day: turns the review share into reviewers needed.")] = None,
    reviews_per_reviewer: Annotated[int, typer.Option("--reviews-per-reviewer", min=1, help="Items one reviewer handles per day.")] = 800,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="Evaluate a seeded random sample of this many texts.")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per model batch.")] = 32,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="onnxruntime intra-op threads.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for sampling, bootstrap and obfuscations.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Evaluate a bundle on labelled JSONL: writes OUT/metrics.json and a self-contained OUT/report.html."""
    from shenhe.eval.run import EvalConfig, run_eval

    cfg = EvalConfig(
        data=data, out=out, bundle=bundle, policy=policy, compare=compare, baseline=baseline, perturb=perturb,
        perturb_kinds=tuple(k.strip() for k in perturb_kinds.split(",") if k.strip()), perturb_sample=perturb_sample,
        bootstrap=bootstrap, prevalence=prevalence, daily_volume=daily_volume,
        reviews_per_reviewer=reviews_per_reviewer, limit=limit, batch_size=batch_size, threads=threads, seed=seed,
        show_progress=not quiet,
    )
    result = run_eval(cfg)
    console = Console(stderr=True)
    print_summary(console, result.metrics)
    t = result.timings
    console.print(f"scored {result.metrics['n']} texts in {t['score_s']:.1f} s "
                  f"({result.metrics['n'] / max(t['score_s'], 1e-9):.0f} texts/s); "
                  + ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in t.items() if k != "score_s"))
    print(result.metrics_path)
    print(result.report_path)


def print_summary(console: Console, m: dict[str, Any]) -> None:
    """The headline numbers on the terminal."""

    def p(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.1f}%"

    def f(x: float | None) -> str:
        return "–" if x is None else f"{x:.3f}"

    d, b = m["decisions"], m["binary"]
    t = Table(title=f"{m['bundle']['name']} {m['bundle']['version']} on {m['n']} texts ({m['data']['harmful']} harmful)")
    t.add_column("pass")
    t.add_column("review")
    t.add_column("block")
    t.add_column("blocked harmful")
    t.add_column("harmful missed")
    t.add_column("binary F1")
    t.add_column("ROC-AUC")
    t.add_column("macro F1")
    t.add_row(p(d["pass"]), p(d["review"]), p(d["block"]), p(d["blocked_harmful"]), p(d["harmful_missed"]),
              f(b["f1"]), f(b["roc_auc"]), f(m["macro_f1"]))
    console.print(t)


@cli_errors(EvalDataError, PolicyError, BundleError)
def promote_cmd(
    candidate: Annotated[Path, typer.Argument(help="The bundle to promote (e.g. models/bundles/NAME).")],
    data: Annotated[list[Path], typer.Option("--data", help="A file of the fixed labelled evaluation set (JSONL, as for shenhe eval); repeat it: the candidate must be no worse on each file.")],
    target: Annotated[Path, typer.Option("--target", help="The serving bundle it would replace.")] = Path("models/default"),
    tolerance: Annotated[float, typer.Option("--tolerance", min=0.0, max=1.0, help="Macro-F1 the candidate may lose (0: no worse).")] = 0.0,
    allow_category_regressions: Annotated[bool, typer.Option("--allow-category-regressions", help="Do not block on a category whose average precision is significantly worse.")] = False,
    allow_more_harmful_passed: Annotated[bool, typer.Option("--allow-more-harmful-passed", help="Do not block on a significantly higher share of harmful texts passed (even at the current bundle's harmless flag rate).")] = False,
    perturb: Annotated[str, typer.Option("--perturb", help=f"Comma-separated obfuscations ({_PERTURBATIONS}): also judge perturbed copies of the first --data file.")] = "",
    perturb_sample: Annotated[int, typer.Option("--perturb-sample", min=1, help="Rows of the first --data file copied per obfuscation (seeded sample).")] = 3000,
    forbid_block_precision_regressions: Annotated[bool, typer.Option("--forbid-block-precision-regressions", help="Refuse a candidate whose per-source block precision is significantly lower (default: reported only).")] = False,
    bootstrap: Annotated[int, typer.Option("--bootstrap", min=100, help="Paired bootstrap resamples for the significance tests.")] = 1000,
    record: Annotated[Path, typer.Option("--record", help="Append every verdict (promoted or not) to this JSONL audit file.")] = Path("var/promotions.jsonl"),
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Judge and record, but do not replace the target.")] = False,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="onnxruntime intra-op threads.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the bootstrap, the perturbation sample and the obfuscations.")] = 0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Replace --target with CANDIDATE only if it is no worse on every --data file (and on the --perturb copies);
    exit 1 (target untouched) if it is worse."""
    from shenhe.eval.promote import PromotionRule, promote

    rule = PromotionRule(macro_f1_tolerance=tolerance, forbid_category_regressions=not allow_category_regressions,
                         forbid_more_harmful_passed=not allow_more_harmful_passed, n_bootstrap=bootstrap, seed=seed,
                         forbid_block_precision_regressions=forbid_block_precision_regressions,
                         perturb_kinds=tuple(k.strip() for k in perturb.split(",") if k.strip()),
                         perturb_sample=perturb_sample)
    verdict = promote(candidate, target, data, rule=rule, record=record, dry_run=dry_run, threads=threads,
                      show_progress=not quiet)
    print_verdict(Console(stderr=True), verdict)
    if verdict.promote:
        print(f"{'would promote' if dry_run else 'promoted'}: {candidate} -> {target}"
              + ("" if dry_run else f" (previous kept in {target.name}.previous)"))
        return
    print(f"not promoted: {'; '.join(verdict.reasons)}")
    raise typer.Exit(1)


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def _diff_cell(v: dict[str, Any]) -> str:
    ci = v.get("ci")
    return f"{v['diff']:+.4f}" + (f" [{ci[0]:+.4f}, {ci[1]:+.4f}]" if ci else "")


def print_verdict(console: Console, verdict: Any) -> None:
    """The gate's numbers: per file a table of candidate, current, difference with its 95% interval and the
    better one, per metric; then the perturbed copies (plain -> perturbed for both bundles)."""
    names = (f"{verdict.candidate['name']} {verdict.candidate['version']} (candidate) vs "
             f"{verdict.current['name']} {verdict.current['version']} (current)")
    # a record written before per-file sets existed has one file at the top level
    sets = verdict.sets or [{"data": verdict.data, "checks": verdict.checks, "promote": verdict.promote}]
    applied = verdict.rule.get("forbid_block_precision_regressions", False)
    for entry in sets:
        where = f"{entry['data']['path']} ({entry['data']['n']} texts)" if len(sets) > 1 else f"{entry['data']['n']} texts"
        t = Table(title=f"{names} on {where}" + ("" if len(sets) == 1 else
                                                 (": no worse" if entry["promote"] else ": WORSE")))
        for col in ("metric", "candidate", "current", "difference (95% CI)", "better"):
            t.add_column(col)

        def row(name: str, v: dict[str, Any] | None, table: Table = t) -> None:
            if not v or v.get("this") is None or v.get("other") is None:
                return
            table.add_row(name, f"{v['this']:.4f}", f"{v['other']:.4f}", _diff_cell(v), str(v.get("better") or ""))

        checks = entry["checks"]
        row("macro-F1", checks["macro_f1"])
        row("harmful passed", checks["passed_harmful"])
        row("harmful passed at current's harmless flag rate", checks.get("passed_harmful_matched"))
        for slug, c in checks["per_category"].items():
            row(f"{slug} AP", c["average_precision"])
        cells = checks.get("block_precision") or []
        for c in cells:
            row(f"{c['category']} block precision, {c['source']} ({c['positives']} pos.)", c)
        if cells and not applied:
            t.caption = "block precision per source: reported, not applied (--forbid-block-precision-regressions)"
        console.print(t)
    p = verdict.perturbation
    if p:
        t = Table(title=f"{names} on perturbed copies of {p['n']} texts of {p['data']} ({p['harmful']} harmful)")
        for col in ("copies", "check", "candidate plain → perturbed", "current plain → perturbed",
                    "difference on copies (95% CI)", "better"):
            t.add_column(col)
        for kind, k in p["kinds"].items():
            for key, label in (("flag_accuracy", "harmful-vs-not accuracy"), ("harmless_flagged", "harmless flagged")):
                plain, v = k[key]["plain"], k[key]["perturbed"]
                if v.get("this") is None or v.get("other") is None:
                    continue
                t.add_row(kind, label, f"{_num(plain['candidate'])} → {v['this']:.4f}",
                          f"{_num(plain['current'])} → {v['other']:.4f}", _diff_cell(v), str(v.get("better") or ""))
        t.caption = "flagged = review or block, each bundle with its own thresholds"
        console.print(t)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
    app.command("promote")(promote_cmd)
