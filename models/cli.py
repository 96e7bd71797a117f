"""`shenhe policy ...` and `shenhe normalize`: commands over the shared core."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shenhe.models.bundle import POLICY_FILE, BundleError, load_bundle
from shenhe.models.errors import cli_errors
from shenhe.models.normalize import normalize
from shenhe.models.policy import POLICY_ENV, Policy, PolicyError, Term, load_policy

policy_app = typer.Typer(help="Inspect the Article 9 policy (categories, thresholds, word lists).", no_args_is_help=True)

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy YAML file (default: $SHENHE_POLICY, else the bundle's policy.yaml)."),
]
BundleOption = Annotated[
    Path | None,
    typer.Option("--bundle", help="Bundle whose policy to show (default: $SHENHE_BUNDLE, else models/default)."),
]


def effective_policy(policy: Path | None, bundle: Path | None) -> tuple[Policy, str]:
    """The policy `shenhe classify` / `shenhe serve` would use, and where it came from: ``--policy``, else
    ``$SHENHE_POLICY``, else the bundle's ``policy.yaml`` (its tuned thresholds)."""
    if policy is not None:
        return load_policy(policy), str(policy)
    env = os.environ.get(POLICY_ENV, "").strip()
    if env:
        return load_policy(env), f"{env} (${POLICY_ENV})"
    loaded = load_bundle(bundle, verify=False)
    return loaded.policy, f"{loaded.dir / POLICY_FILE} (bundle {loaded.manifest.name} {loaded.manifest.version})"


@policy_app.command("show")
@cli_errors(PolicyError, BundleError)
def policy_show(
    policy: PolicyOption = None,
    bundle: BundleOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy as JSON.")] = False,
) -> None:
    """Print the nine categories with the thresholds that classify and serve would use, and their source."""
    pol, source = effective_policy(policy, bundle)
    if as_json:
        print(json.dumps({"source": source, **pol.model_dump(mode="json")}, ensure_ascii=False, indent=2))
        return
    print(f"policy from {source}")
    table = Table(title=f"policy {pol.name} v{pol.version}")
    for col in ("id", "slug", "Article 9 text", "gloss", "review", "block", "trained", "terms"):
        table.add_column(col)
    for c in pol.categories:
        block = f"{c.block_threshold:.3f}" if c.can_block else f"{c.block_threshold:.3f} (never)"
        table.add_row(
            str(c.id), c.slug, c.article_text, c.gloss, f"{c.review_threshold:.3f}", block,
            "yes" if c.trained else "no", _terms_cell(c.terms),
        )
    Console(width=200).print(table)
    expired = [(c.slug, t) for c in pol.categories for t in c.terms if t.expired()]
    for slug, t in expired:
        print(f"expired word-list entry (ignored): {t.term} ({slug}, expired {t.expires})")


def _terms_cell(terms: tuple[Term, ...]) -> str:
    live = [t for t in terms if not t.expired()]
    actions = Counter(t.action for t in live if t.action)
    extra = [f"{n} {a}" for a, n in sorted(actions.items())]
    if len(live) < len(terms):
        extra.append(f"{len(terms) - len(live)} expired")
    return str(len(live)) + (f" ({', '.join(extra)})" if extra else "")


def normalize_cmd(
    text: Annotated[str, typer.Argument(help="Text to normalise.")],
    offsets: Annotated[bool, typer.Option("--offsets", help="Also print the original index of each character.")] = False,
) -> None:
    """Print TEXT after the shared normalisation (NFKC, half-width, simplified, cleaned)."""
    n = normalize(text)
    print(n.text)
    if offsets:
        print(json.dumps(list(n.offsets)))
