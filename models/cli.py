"""`shenhe policy ...` and `shenhe normalize`: commands over the shared core."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.normalize import normalize
from models.policy import PolicyError, load_policy
from shenhe.errors import cli_errors

policy_app = typer.Typer(help="Inspect the Article 9 policy (categories, thresholds, word lists).", no_args_is_help=True)

PolicyOption = Annotated[
    Path | None,
    typer.Option("--policy", help="Policy YAML file (default: $SHENHE_POLICY, else the shipped policy)."),
]


@policy_app.command("show")
@cli_errors(PolicyError)
def policy_show(
    policy: PolicyOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the policy as JSON.")] = False,
) -> None:
    """Print the nine categories with their thresholds."""
    pol = load_policy(policy)
    if as_json:
        print(json.dumps(pol.model_dump(mode="json"), ensure_ascii=False, indent=2))
        return
    table = Table(title=f"policy {pol.name} v{pol.version}")
    for col in ("id", "slug", "Article 9 text", "gloss", "review", "block", "trained", "terms"):
        table.add_column(col)
    for c in pol.categories:
        block = f"{c.block_threshold:.3f}" if c.can_block else f"{c.block_threshold:.3f} (never)"
        table.add_row(
            str(c.id), c.slug, c.article_text, c.gloss, f"{c.review_threshold:.3f}", block,
            "yes" if c.trained else "no", str(len(c.terms)),
        )
    Console(width=200).print(table)


def normalize_cmd(
    text: Annotated[str, typer.Argument(help="Text to normalise.")],
    offsets: Annotated[bool, typer.Option("--offsets", help="Also print the original index of each character.")] = False,
) -> None:
    """Print TEXT after the shared normalisation (NFKC, half-width, simplified, cleaned)."""
    n = normalize(text)
    print(n.text)
    if offsets:
        print(json.dumps(list(n.offsets)))
