"""`shenhe eval`: evaluation report for a model bundle (light imports only; the work is in eval.run)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from eval.errors import EvalDataError
from models.bundle import BundleError
from models.policy import PolicyError
from shenhe.errors import cli_errors

_PERTURBATIONS = "spaces,symbols,zero_width,full_width,traditional,homophones"


@cli_errors(EvalDataError, PolicyError, BundleError)
def eval_cmd(
    data: Annotated[Path, typer.Option("--data", help="JSONL, one {\"text\", \"labels\" (list of category slugs), \"source\"?, \"id\"?} per line.")],
    out: Annotated[Path, typer.Option("--out", help="Output directory for metrics.json and report.html.")],
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Model bundle directory (default: $SHENHE_BUNDLE, else models/default).")] = None,
    compare: Annotated[Path | None, typer.Option("--compare", help="A second bundle: show both, the difference and bootstrap 95% intervals.")] = None,
    baseline: Annotated[Path | None, typer.Option("--baseline", help="A TF-IDF run directory (shenhe train --arch tfidf) shown next to the bundle.")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Evaluate with this policy YAML instead of the bundle's.")] = None,
    perturb: Annotated[bool, typer.Option("--perturb", help="Re-score after obfuscations (spaces, symbols, zero-width, full-width, traditional, homophones).")] = False,
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
    from eval.run import EvalConfig, run_eval

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


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
