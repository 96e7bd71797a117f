"""`shenhe classify`: score a text or a JSONL file offline with a bundle (or through the HTTP API with --url)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from shenhe.models.bundle import BundleError
from shenhe.models.errors import UserError, cli_errors
from shenhe.models.jsonl import JsonlError, JsonlWriter, atomic_jsonl, count_records, iter_text_records
from shenhe.models.policy import CATEGORY_SLUGS, PolicyError

if TYPE_CHECKING:
    from shenhe.models.predictor import Predictor

CHUNK = 256  # texts per predictor call when streaming a file


def _classify_file(predictor: Predictor, input_path: Path, output: JsonlWriter, text_field: str, batch_size: int,
                   show_progress: bool) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    total = count_records(input_path)
    n = 0
    with Progress(TextColumn("classify"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                  TimeRemainingColumn(), disable=not show_progress, console=Console(stderr=True)) as progress:
        task = progress.add_task("classify", total=total, rate="")
        chunk: list[dict[str, Any]] = []

        def flush() -> None:
            nonlocal n
            preds = predictor.predict([row[text_field] for row in chunk], batch_size=batch_size)
            for row, pred in zip(chunk, preds, strict=True):
                output.write({**row, **pred.to_dict()})
            n += len(chunk)
            elapsed = progress.tasks[0].elapsed or 0.0
            progress.update(task, advance=len(chunk), rate=f"{n / elapsed:.0f} texts/s" if elapsed else "")
            chunk.clear()

        for _, row in iter_text_records(input_path, text_field):
            chunk.append(row)
            if len(chunk) >= CHUNK:
                flush()
        if chunk:
            flush()
    return n


def _print_prediction(text: str, pred: Any, policy: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    colour = {"pass": "green", "review": "yellow", "block": "red"}[pred.decision]
    cats = f" ({', '.join(pred.categories)})" if pred.categories else ""
    console.print(f"[bold {colour}]{pred.decision.upper()}[/]{cats}   model {pred.model.name} {pred.model.version} · "
                  f"policy {pred.policy_version}")
    table = Table(show_edge=False)
    for col, justify in (("category", "left"), ("score", "right"), ("review ≥", "right"), ("block ≥", "right"),
                         ("", "left")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    hit = {r.category: (f"term_{r.action}" if r.kind == "term" else r.kind) for r in pred.reasons}
    for slug in CATEGORY_SLUGS:
        cat = policy.category(slug)
        if not cat.trained:
            table.add_row(slug, "–", "–", "–", "[dim]untrained[/]")
            continue
        block = f"{cat.block_threshold:.3f}" if cat.can_block else "never"
        mark = {"block": "[red]block[/]", "review": "[yellow]review[/]", "term_review": "[yellow]review (word list)[/]",
                "term_block": "[red]block (word list)[/]", "allow": "[green]allowed (allow list)[/]"}
        table.add_row(slug, f"{pred.scores[slug]:.3f}", f"{cat.review_threshold:.3f}", block, mark.get(hit.get(slug, ""), ""))
    console.print(table)
    for r in pred.reasons:
        if r.kind in ("term", "allow"):
            what = (f"word list: {r.action}" if r.kind == "term" else f"allow list removed the model's {r.action}")
            console.print(f"reason: {r.category} {what}, text [{r.span[0]}, {r.span[1]}): "
                          f"{text[r.span[0]: r.span[1]]}", markup=False)
            continue
        excerpt = text[r.span[0]: r.span[1]]
        if len(excerpt) > 60:
            excerpt = excerpt[:28] + " … " + excerpt[-28:]
        console.print(f"reason: {r.category} {r.kind} score {r.score:.3f} ≥ {r.threshold:.3f}, "
                      f"text [{r.span[0]}, {r.span[1]}): {excerpt}", markup=False)
    for m in pred.matches:
        how = "" if m.via == "exact" else f", {m.via}"
        console.print(f"word list: {m.term} ({m.category}, {m.action}{how}) at [{m.start}, {m.end}): "
                      f"{text[m.start: m.end]}", markup=False)


def classify_cmd(
    text: Annotated[str | None, typer.Argument(help="Text to classify (or use --input).")] = None,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Bundle directory (default: $SHENHE_BUNDLE, else models/default).")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Operator policy YAML (default: the bundle's).")] = None,
    input_path: Annotated[Path | None, typer.Option("--input", help="JSONL file: one object with a 'text' field per line.")] = None,
    output_path: Annotated[Path | None, typer.Option("--output", help="JSONL output (default: stdout).")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Field holding the text in --input lines.")] = "text",
    as_json: Annotated[bool, typer.Option("--json", help="Print the prediction as JSON.")] = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="onnxruntime intra-op threads (default: cores available).")] = None,
    url: Annotated[str | None, typer.Option("--url", help="Classify through a running shenhe API instead of offline.")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="SHENHE_API_KEY", help="API key for --url.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Classify TEXT (a readable table, or --json), or a JSONL file with --input/--output."""

    @cli_errors(BundleError, PolicyError, JsonlError, OSError)
    def run() -> None:
        if (text is None) == (input_path is None):
            raise UserError("give either TEXT or --input FILE.jsonl")
        if input_path is not None and not input_path.is_file():
            raise UserError(f"{input_path}: input file not found")
        if url:
            if input_path is None:
                raise UserError("--url streams a file: use it with --input FILE.jsonl --output FILE.jsonl")
            if output_path is None:
                raise UserError("--url needs --output FILE.jsonl")
            from shenhe.serving.client import classify_file

            summary = classify_file(url=url, input_path=input_path, output_path=output_path, api_key=api_key,
                                    batch_size=batch_size, text_field=text_field, progress=not quiet)
            print(f"classified {summary.items} texts through {url} -> {output_path} "
                  f"({dict(summary.decisions)}, {summary.errors} refused)", file=sys.stderr)
            return
        from shenhe.models.predictor import Predictor

        predictor = Predictor(bundle, policy=policy, intra_op_threads=threads)
        if text is not None:
            pred = predictor.predict([text], batch_size=batch_size)[0]
            if as_json:
                print(json.dumps(pred.to_dict(), ensure_ascii=False, indent=2))
            else:
                _print_prediction(text, pred, predictor.policy)
            return
        assert input_path is not None
        show = not quiet and sys.stderr.isatty()
        if output_path is None:
            _classify_file(predictor, input_path, JsonlWriter(sys.stdout), text_field, batch_size, show_progress=False)
            return
        with atomic_jsonl(output_path) as out:  # a complete file or none
            n = _classify_file(predictor, input_path, out, text_field, batch_size, show)
        print(f"classified {n} texts -> {output_path}", file=sys.stderr)

    run()


def register(app: typer.Typer) -> None:
    app.command("classify")(classify_cmd)
