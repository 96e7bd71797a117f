"""`shenhe batch`: re-score a corpus on Ray Data (serving/batch.py holds the pipeline)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from shenhe.models.errors import UserError, cli_errors
from shenhe.models.policy import CATEGORY_SLUGS


def _print_summary(summary: dict[str, Any], out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(stderr=True, soft_wrap=True)
    timing = summary.get("timing", {})
    files = summary["files"]
    line = (f"shenhe batch: {summary['texts']} texts in {files['total']} file(s) -> {out} "
            f"({files['written']} written now, {files['skipped']} already done)")
    console.print(line, markup=False, highlight=False)
    if timing.get("texts_scored"):
        console.print(f"scored {timing['texts_scored']} texts in {timing['scoring_s']:.1f} s = "
                      f"{timing['texts_per_s']:.1f} texts/s on {timing['actors']} actor(s) × "
                      f"{timing['threads_per_actor']} thread(s); Ray startup {timing['ray_startup_s']:.1f} s",
                      markup=False, highlight=False)
    if timing.get("missing_text"):
        console.print(f"warning: {timing['missing_text']} row(s) had no text field; they were scored as empty "
                      "text (pass)", markup=False, highlight=False)
    console.print(f"model {summary['model']['name']} {summary['model']['version']} · policy "
                  f"{summary['policy_version']}", markup=False, highlight=False)
    table = Table(show_edge=False)
    table.add_column("decision")
    table.add_column("texts", justify="right")
    table.add_column("share", justify="right")
    for name, d in summary["decisions"].items():
        table.add_row(name, str(d["count"]), f"{100 * d['share']:.2f}%")
    console.print(table)
    cats = Table(show_edge=False)
    cats.add_column("category")
    cats.add_column("review", justify="right")
    cats.add_column("block", justify="right")
    for slug in CATEGORY_SLUGS:
        c = summary["categories"][slug]
        if c["review"] or c["block"]:
            cats.add_row(slug, str(c["review"]), str(c["block"]))
    if cats.row_count:
        console.print(cats)
    backlog = summary["review_backlog"]
    console.print(f"review backlog: {backlog['review_items']} review-band texts + {backlog['audit_items']} audited "
                  f"blocks + {backlog['second_opinions']} second opinions ≈ {backlog['total']} reviews",
                  markup=False, highlight=False)
    if "enqueued" in summary:
        q = summary["enqueued"]
        again = q["review_rows"] - q["new_items"]
        console.print(f"review queue {q['database']}: {q['new_items']} new item(s) for {q['review_rows']} "
                      f"review-band text(s) scored now" + (f" ({again} were queued already)" if again else ""),
                      markup=False, highlight=False)


def batch_cmd(
    input_spec: Annotated[str, typer.Option("--input", help="JSONL, CSV or Parquet: a file, a directory, a glob "
                                                          "('posts/*.jsonl', quoted), or a URI Ray Data reads.")],
    output: Annotated[Path, typer.Option("--output", help="Output directory: one Parquet part per input file, "
                                                          "and _summary.json.")],
    address: Annotated[str | None, typer.Option("--address", envvar="RAY_ADDRESS",
                                                help="An existing Ray cluster (ray://HOST:10001, HOST:6379 or auto); "
                                                     "default: a new Ray on this machine.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Skip the input files whose output is already written.")] = False,
    enqueue: Annotated[str | None, typer.Option("--enqueue", metavar="DB_URL",
                                                help="Put the review-band texts into this review queue "
                                                     "(SQLAlchemy URL; idempotent).")] = None,
    jsonl: Annotated[bool, typer.Option("--jsonl", help="Also write a JSONL file per input under _jsonl/.")] = False,
    bundle: Annotated[Path | None, typer.Option("--bundle", help="Bundle directory (default: $SHENHE_BUNDLE, else models/default).")] = None,
    policy: Annotated[Path | None, typer.Option("--policy", help="Operator policy YAML (default: the bundle's).")] = None,
    text_field: Annotated[str, typer.Option("--text-field", help="Field (column) holding the text.")] = "text",
    id_field: Annotated[str, typer.Option("--id-field", help="Field (column) holding the id, kept in the output.")] = "id",
    actors: Annotated[int | None, typer.Option("--actors", min=1, help="Scoring actors (default: the cluster's CPUs but one, / --threads).")] = None,
    threads: Annotated[int, typer.Option("--threads", min=1, help="onnxruntime intra-op threads per actor.")] = 1,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Texts per model call batch in an actor.")] = 256,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress and no summary table.")] = False,
) -> None:
    """Re-score a corpus on Ray Data: decisions, categories and scores per text as Parquet, plus a summary."""

    @cli_errors(OSError)
    def run() -> None:
        from shenhe.serving.batch import BatchOptions, import_ray, run_batch

        import_ray()  # one line naming the extra when Ray is not installed
        opts = BatchOptions(inputs=input_spec, output=output, bundle=bundle, policy=policy, address=address,
                            resume=resume, enqueue_url=enqueue, jsonl=jsonl, text_field=text_field,
                            id_field=id_field, batch_size=batch_size, actors=actors, threads=threads,
                            progress=not quiet)

        def say(msg: str) -> None:
            if not quiet:
                print(f"shenhe batch: {msg}", file=sys.stderr, flush=True)

        try:
            result = run_batch(opts, log=say)
        except KeyboardInterrupt:
            raise UserError("interrupted; the files written so far are complete: run again with --resume",
                            exit_code=130) from None
        if not quiet:
            _print_summary(result.summary, output)
        else:
            print(f"{result.summary['texts']} texts -> {output}", file=sys.stderr)

    run()


def register(app: typer.Typer) -> None:
    app.command("batch")(batch_cmd)
