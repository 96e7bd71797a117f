"""`shenhe data ...` commands. Light imports only at top level (the build imports datasets lazily)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from shenhe.models.errors import UserError, cli_errors
from shenhe.training.data import BUILD_DIR

DEFAULT_RAW = Path("../shared/data")
INSTALL_TRAIN = "pip install -e '.[train]' (or make install-dev)"


def datasets_installed() -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec("datasets") is not None
    except (ImportError, ValueError):
        return False

data_app = typer.Typer(help="Build the training corpus from the public sources.", no_args_is_help=True)


def category_table(stats: dict[str, Any]) -> Table:
    """Rows per category per split: public data, then the synthetic seed set (and --extra rows)."""
    from shenhe.training.data.build import TABLE_ROWS
    from shenhe.training.data.records import SPLITS

    totals = stats["totals"]
    table = Table(title="rows per category per split (after dedup)")
    table.add_column("category", no_wrap=True)
    columns: list[tuple[str, str]] = [("real", s) for s in SPLITS]
    for kind in ("synthetic", "extra"):
        if any(totals[kind][s]["total"] for s in SPLITS):
            columns += [(kind, s) for s in ("train", "dev")]
    for kind, split in columns:
        header = split if kind == "real" else f"{'seed' if kind == 'synthetic' else kind}\n{split}"
        table.add_column(header, justify="right", no_wrap=True)
    for row in TABLE_ROWS:
        table.add_row(row, *(str(totals[kind][split][row]) for kind, split in columns),
                      end_section=row == "normal")
    return table


@data_app.command("build")
@cli_errors()
def build_cmd(
    raw: Annotated[Path, typer.Option(help="Folder holding one sub-folder per source.")] = DEFAULT_RAW,
    out: Annotated[Path, typer.Option(help="Output folder (train/dev/test.jsonl, holdout.jsonl, hf/, stats.json).")] = BUILD_DIR,
    sources: Annotated[str | None, typer.Option(
        help="Comma-separated source names to include (default: all, including seed_synthetic).")] = None,
    commercial_only: Annotated[bool, typer.Option(
        "--commercial-only", help="Keep only sources whose licence allows commercial use.")] = False,
    extra: Annotated[list[Path] | None, typer.Option(
        "--extra", help="Extra labelled JSONL ({id,text,labels,source}), e.g. reviewer labels; "
                        "joins train/dev, wins label conflicts. Repeatable.")] = None,
    seed_dir: Annotated[Path | None, typer.Option(help="Folder of synthetic seed *.jsonl (default: shipped).")] = None,
    hf: Annotated[bool | None, typer.Option(
        help="Also write the Hugging Face DatasetDict to OUT/hf (default: when the datasets package is installed).",
        show_default=False)] = None,
    progress: Annotated[bool, typer.Option(help="Show progress bars on stderr.")] = True,
) -> None:
    """Read every source, deduplicate, resolve label conflicts, split, and write the corpus."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from shenhe.training.data.build import DEFAULT_SEED_DIR, BuildConfig, BuildError, build

    from shenhe.training.data.sources import SEED_SPEC

    err = Console(stderr=True)
    if hf is None:
        hf = datasets_installed()
        if not hf:
            err.print(f"note: not writing {out / 'hf'}: the datasets package is not installed ({INSTALL_TRAIN}); "
                      "the JSONL splits are complete without it", highlight=False, soft_wrap=True)
    elif hf and not datasets_installed():
        raise UserError(f"--hf needs the datasets package, which is not installed: {INSTALL_TRAIN}, or use --no-hf")
    names = tuple(n.strip() for n in sources.split(",") if n.strip()) if sources else None
    for path in extra or ():
        if not path.is_file():
            raise UserError(f"--extra file {path} not found (export reviewer labels with `shenhe review export`)")
    if not raw.is_dir():
        if not extra:
            raise UserError(f"raw data folder {raw} does not exist (expected one sub-folder per source); "
                            "give --raw DIR, or --extra FILE to build from the seed set and your labelled rows only")
        if names is None:
            names = (SEED_SPEC.name,)
        err.print(f"note: raw data folder {raw} does not exist: building from "
                  f"{', '.join(names)} and --extra only (no public data, so no test rows)", highlight=False,
                  soft_wrap=True)
    config = BuildConfig(raw=raw, out=out, sources=names, commercial_only=commercial_only,
                         extra=tuple(extra or ()), seed_dir=seed_dir or DEFAULT_SEED_DIR, write_hf=hf)
    started = time.perf_counter()
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=err, transient=True, disable=not progress) as bar:
            stats = build(config, bar)
    except BuildError as e:
        raise UserError(str(e)) from None
    for warning in stats["warnings"]:
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    malformed = {n: s["malformed"] for n, s in stats["sources"].items() if s["malformed"]}
    for name, count in malformed.items():
        examples = "; ".join(stats["sources"][name]["malformed_examples"][:2])
        err.print(f"[yellow]malformed rows:[/] {name}: {count} skipped (e.g. {examples})", highlight=False,
                  soft_wrap=True)
    console = Console()
    console.print(category_table(stats))
    d = stats["dedup"]
    console.print(
        f"read {stats['rows_read']} rows -> {sum(stats['rows_out'].values())} after dedup "
        f"({d['exact_duplicates']} exact + {d['near_duplicates']} near duplicates merged, "
        f"{d['conflicts_majority+union'] + d['conflicts_reviewer']} label conflicts resolved); "
        f"wrote {out} in {time.perf_counter() - started:.1f}s", highlight=False, soft_wrap=True)
    held = stats.get("holdout", {})
    parts = held.get("parts", {})
    console.print(
        f"held apart (holdout.jsonl, never trained or fitted on): {parts.get('dev_heldout', 0)} dev rows of "
        f"{', '.join(held.get('dev_split_sources', [])) or 'no source'} + {parts.get('seed_heldout', 0)} "
        f"hand-written seeds; dev.jsonl keeps {stats['rows_out']['dev']} rows (the fit part)",
        highlight=False, soft_wrap=True)


@data_app.command("cards")
@cli_errors(OSError, ValueError)
def cards_cmd(
    stats: Annotated[Path, typer.Option(help="stats.json of the build the cards describe.")] = BUILD_DIR / "stats.json",
    cards: Annotated[Path, typer.Option(help="Folder of data cards.")] = Path("data_cards"),
    check: Annotated[bool, typer.Option("--check", help="Only check; exit 1 if a card is out of date.")] = False,
) -> None:
    """Render the generated count blocks of the data cards from a build's stats.json."""
    import json

    from shenhe.training.data.cards import missing_cards, update_cards

    if not stats.is_file():
        raise UserError(f"{stats} not found; run `shenhe data build` first")
    data = json.loads(stats.read_text(encoding="utf-8"))
    missing = missing_cards(cards, data)
    stale = update_cards(cards, data, check=check)
    for name in missing:
        print(f"missing card: {cards / name}")
    for path in stale:
        print(f"{'out of date' if check else 'updated'}: {path}")
    if check and (stale or missing):
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
