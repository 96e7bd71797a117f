"""Corpus re-scoring on Ray Data: the pipeline behind ``shenhe batch`` (the command is shenhe/batch_cli.py).

When the model or the policy changes, an operator re-scores history. This reads JSONL, CSV or Parquet files
(local paths, or URIs that Ray Data and pyarrow read), scores them with :class:`models.predictor.Predictor` in a
pool of Ray actors (one onnxruntime session per actor, ``threads`` intra-op threads each, as many actors as the
cluster's CPUs allow, so no core runs two model threads), and writes one Parquet file per input file (and a
JSONL file with ``jsonl``), then a summary.

Output directory::

    DIR/part-<input stem>-<hash of its path>.parquet   one per input file, written whole or not at all
    DIR/_jsonl/part-....jsonl                           with --jsonl
    DIR/_summary.json                                   decision shares, per-category counts, review backlog
    DIR/.tmp-*                                          being written (a rename makes a part appear)

``pandas.read_parquet(DIR)`` reads every part at once (pyarrow skips names starting with ``_`` or ``.``).

Completeness: Ray Data runs with ``preserve_order``, so the rows of one input file arrive together and in
their order; a part is renamed into place when the next file's rows begin (or the stream ends) and only if
its row count equals the file's. ``resume`` skips the inputs whose part exists, so a run killed at any point
and resumed writes every input row exactly once. ``enqueue_url``: the review-band rows of a part are put into
the review queue before the part is renamed (the queue keeps one item per (id, text), so a resumed run that
scores a file again queues nothing twice).

Ray is an optional dependency (``pip install 'shenhe[batch]'``); this module imports it only inside
:func:`run_batch`.
"""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import math
import os
import time
import uuid
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shenhe.models.cores import default_threads
from shenhe.models.errors import UserError
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.types import DECISIONS

if TYPE_CHECKING:
    import pyarrow as pa

RAY_MISSING = "shenhe batch needs Ray Data, which is not installed: pip install 'shenhe[batch]'"
FORMATS = {".jsonl": "json", ".ndjson": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet",
           ".pq": "parquet"}
PART_PREFIX = "part-"
SUMMARY_NAME = "_summary.json"
JSONL_DIR = "_jsonl"
TMP_PREFIX = ".tmp-"
SPARE_CPUS = 1  # logical CPUs left to Ray Data's read tasks (the actors take the rest)
SCORE_COLUMNS = tuple(f"score_{slug}" for slug in CATEGORY_SLUGS)
# Columns starting with "_" travel from the actors to the driver only (the review queue's texts and
# reasons, the missing-text flag); they are never written to the parts.


class BatchError(UserError):
    """A problem with the inputs, the output directory or the cluster; ``str`` is one line."""


# ---- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchOptions:
    inputs: str  # a file, a directory, a glob, or a URI (file or directory)
    output: Path
    bundle: Path | None = None
    policy: Path | None = None
    address: str | None = None  # an existing Ray cluster (ray://host:10001, host:6379 or auto); None: local Ray
    resume: bool = False
    enqueue_url: str | None = None
    jsonl: bool = False
    text_field: str = "text"
    id_field: str = "id"
    batch_size: int = 256  # texts per Predictor call inside an actor
    block_rows: int = 1024  # rows per Ray block (the unit an actor takes at a time)
    actors: int | None = None  # default: (the cluster's CPUs - SPARE_CPUS) // threads
    threads: int = 1  # onnxruntime intra-op threads per actor
    progress: bool = True


@dataclass(frozen=True)
class InputFile:
    path: str  # as given to Ray: an absolute local path or a URI
    fmt: str  # json | csv | parquet
    rows: int
    part: str  # output name without extension

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]


@dataclass
class BatchResult:
    summary: dict[str, Any]
    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


# ---- inputs ---------------------------------------------------------------------------------------


def _is_uri(path: str) -> bool:
    return "://" in path


def _fmt(path: str) -> str | None:
    lower = path.lower()
    return next((fmt for ext, fmt in FORMATS.items() if lower.endswith(ext)), None)


def _filesystem(uri: str) -> tuple[Any, str]:
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as e:  # pyarrow raises ArrowInvalid / ArrowNotImplementedError / OSError
        raise BatchError(f"{uri}: cannot open ({str(e).splitlines()[0][:200]})") from None


def find_inputs(spec: str) -> list[str]:
    """The input files named by ``spec`` (sorted): a file, a directory (its supported files), a glob, or a
    URI of a file or a directory. Files of other types inside a directory or glob are left out."""
    supported = ", ".join(sorted(FORMATS))
    if _is_uri(spec):
        import pyarrow.fs as pafs

        if any(c in spec for c in "*?["):
            raise BatchError(f"{spec}: globs are supported for local paths only; give a file or a directory URI")
        fs, path = _filesystem(spec)
        info = fs.get_file_info(path)
        scheme = spec.split("://", 1)[0]
        if info.type == pafs.FileType.File:
            found = [spec]
        elif info.type == pafs.FileType.Directory:
            root = path.rstrip("/") + "/"
            found = sorted(f"{scheme}://{i.path}"
                           for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                           if i.type == pafs.FileType.File and _fmt(i.path)
                           and not any(part.startswith((".", "_")) for part in i.path.removeprefix(root).split("/")))
        else:
            raise BatchError(f"{spec}: no such file or directory")
    else:
        p = Path(spec).expanduser()
        if any(c in spec for c in "*?["):
            found = sorted(str(Path(f).resolve()) for f in glob.glob(str(p), recursive=True)
                           if Path(f).is_file() and _fmt(f))
        elif p.is_dir():
            found = sorted(str(f.resolve()) for f in p.rglob("*") if f.is_file() and _fmt(f.name)
                           and not any(part.startswith((".", "_")) for part in f.relative_to(p).parts))
        elif p.is_file():
            if _fmt(p.name) is None:
                raise BatchError(f"{spec}: unsupported file type (expected {supported})")
            found = [str(p.resolve())]
        else:
            raise BatchError(f"{spec}: no such file or directory")
    if not found:
        raise BatchError(f"{spec}: no input files ({supported})")
    return found


def _open(path: str, seekable: bool = False) -> Any:
    if _is_uri(path):
        fs, p = _filesystem(path)
        return fs.open_input_file(p) if seekable else fs.open_input_stream(p)
    return open(path, "rb")  # noqa: SIM115 (closed by the caller's with)


def _lines(f: Any, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The lines of a binary stream (a local file or a pyarrow stream, which does not iterate lines)."""
    rest = b""
    while True:
        data = f.read(chunk)
        if not data:
            break
        parts = (rest + bytes(data)).split(b"\n")
        rest = parts.pop()
        yield from parts
    if rest:
        yield rest


def _count_json(path: str, text_field: str) -> int:
    """Rows of a JSONL file (non-blank lines, as pyarrow reads them); checks the first one's shape."""
    n = 0
    with _open(path) as f:
        for lineno, line in enumerate(_lines(f), 1):
            if not line.strip():
                continue
            if n == 0:
                try:
                    first = json.loads(line)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise BatchError(f"{path}:{lineno}: not valid JSON") from None
                if not isinstance(first, dict) or not isinstance(first.get(text_field), str):
                    raise BatchError(f"{path}:{lineno}: expected an object with a string {text_field!r} field")
            n += 1
    return n


def _count_csv(path: str, text_field: str) -> int:
    import pyarrow.csv as pacsv

    n = 0
    try:
        with _open(path) as f:
            reader = pacsv.open_csv(f, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                    convert_options=pacsv.ConvertOptions(include_columns=[text_field]))
            for batch in reader:
                n += batch.num_rows
    except Exception as e:  # ArrowInvalid / KeyError for a missing column
        raise BatchError(f"{path}: cannot read CSV with a {text_field!r} column "
                         f"({str(e).splitlines()[0][:200]})") from None
    return n


def _count_parquet(path: str, text_field: str) -> int:
    import pyarrow.parquet as pq

    try:
        with _open(path, seekable=True) as f:
            meta = pq.ParquetFile(f).metadata
            names = meta.schema.to_arrow_schema().names
    except Exception as e:
        raise BatchError(f"{path}: cannot read Parquet ({str(e).splitlines()[0][:200]})") from None
    if text_field not in names:
        raise BatchError(f"{path}: no {text_field!r} column (columns: {', '.join(names[:20])})")
    return meta.num_rows


def part_name(path: str) -> str:
    """The output name of an input file: readable, and unique per input path."""
    stem = path.rstrip("/").rsplit("/", 1)[-1]
    for ext in sorted(FORMATS, key=len, reverse=True):
        if stem.lower().endswith(ext):
            stem = stem[: -len(ext)]
            break
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)[:80] or "input"
    return f"{PART_PREFIX}{safe}-{hashlib.sha256(path.encode('utf-8')).hexdigest()[:12]}"


def describe_inputs(spec: str, text_field: str = "text", output: Path | None = None) -> list[InputFile]:
    """Find the input files and count their rows (cheap: a line count, a CSV scan, Parquet metadata).
    Files inside ``output`` (an earlier run's parts, when the output folder is inside the input folder) are
    not inputs."""
    counters: dict[str, Callable[[str, str], int]] = {"json": _count_json, "csv": _count_csv,
                                                      "parquet": _count_parquet}
    files: list[InputFile] = []
    paths = find_inputs(spec)
    if output is not None:
        out = output.resolve()
        paths = [p for p in paths if _is_uri(p) or not Path(p).is_relative_to(out)]
        if not paths:
            raise BatchError(f"{spec}: no input files outside the output folder {output}")
    for path in paths:
        fmt = _fmt(path)
        assert fmt is not None
        try:
            rows = counters[fmt](path, text_field)
        except OSError as e:
            raise BatchError(f"{path}: cannot read ({e.strerror or e.__class__.__name__})") from None
        files.append(InputFile(path=path, fmt=fmt, rows=rows, part=part_name(path)))
    return files


# ---- output ---------------------------------------------------------------------------------------


def output_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([
        ("source", pa.string()),  # the input file
        ("row", pa.int64()),  # 0-based row within it (JSONL: the n-th non-blank line)
        ("id", pa.string()),  # the input's id field, as a string (null when absent)
        ("decision", pa.string()),  # pass | review | block
        ("categories", pa.list_(pa.string())),  # the categories behind the decision
        *((name, pa.float64()) for name in SCORE_COLUMNS),  # calibrated score per category
    ])


def part_path(out: Path, part: str) -> Path:
    return out / f"{part}.parquet"


def jsonl_path(out: Path, part: str) -> Path:
    return out / JSONL_DIR / f"{part}.jsonl"


def is_done(out: Path, f: InputFile, jsonl: bool) -> bool:
    return part_path(out, f.part).is_file() and (not jsonl or jsonl_path(out, f.part).is_file())


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class PartWriter:
    """One input file's output: written to temporary names, renamed into place by :meth:`commit`."""

    def __init__(self, out: Path, f: InputFile, metadata: dict[str, str], jsonl: bool) -> None:
        import pyarrow.parquet as pq

        self.file = f
        self.out = out
        self.rows = 0
        self.schema = output_schema().with_metadata({**metadata, "shenhe.source": f.path})
        token = uuid.uuid4().hex[:8]
        self.tmp = out / f"{TMP_PREFIX}{token}-{f.part}.parquet"
        self.writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd")
        self.tmp_jsonl = out / f"{TMP_PREFIX}{token}-{f.part}.jsonl" if jsonl else None
        self._jsonl = self.tmp_jsonl.open("w", encoding="utf-8") if self.tmp_jsonl is not None else None

    def write(self, table: pa.Table) -> None:
        import pyarrow as pa

        n = table.num_rows
        table = table.append_column("row", pa.array(range(self.rows, self.rows + n), pa.int64()))
        table = table.select(self.schema.names).cast(self.schema)
        self.writer.write_table(table)
        if self._jsonl is not None:
            for r in table.to_pylist():
                rec = {"source": r["source"], "row": r["row"], "id": r["id"], "decision": r["decision"],
                       "categories": r["categories"],
                       "scores": {slug: r[col] for slug, col in zip(CATEGORY_SLUGS, SCORE_COLUMNS, strict=True)}}
                self._jsonl.write(json.dumps(rec, ensure_ascii=False) + "\n")
        self.rows += n

    def commit(self) -> None:
        """Close, fsync and rename into place (JSONL first: the Parquet part marks the input as done)."""
        if self.rows != self.file.rows:
            self.abort()
            raise BatchError(f"{self.file.path}: scored {self.rows} rows but the file has {self.file.rows} "
                             "(did it change during the run?); nothing was written for it")
        self.writer.close()
        _fsync(self.tmp)
        if self._jsonl is not None and self.tmp_jsonl is not None:
            self._jsonl.close()
            _fsync(self.tmp_jsonl)
            final = jsonl_path(self.out, self.file.part)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self.tmp_jsonl, final)
        os.replace(self.tmp, part_path(self.out, self.file.part))

    def abort(self) -> None:
        try:
            self.writer.close()
        finally:
            if self._jsonl is not None:
                self._jsonl.close()
            self.tmp.unlink(missing_ok=True)
            if self.tmp_jsonl is not None:
                self.tmp_jsonl.unlink(missing_ok=True)


def read_part_metadata(path: Path) -> dict[str, str]:
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"shenhe.")}


# ---- scoring (runs in the Ray actors) -------------------------------------------------------------


class Scorer:
    """A Ray Data actor: one Predictor (one onnxruntime session with ``threads`` intra-op threads)."""

    def __init__(self, bundle: str | None, policy: str | None, threads: int, for_queue: bool) -> None:
        # The tokenizer's own thread pool: no more threads than this actor's share of the cores.
        os.environ.setdefault("RAYON_NUM_THREADS", str(threads))
        if threads == 1:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from shenhe.models.predictor import Predictor

        self.predictor = Predictor(bundle, policy=policy, intra_op_threads=threads, allow_spinning=False)
        self.for_queue = for_queue

    def __call__(self, batch: pa.Table) -> pa.Table:
        return score_table(self.predictor, batch, self.for_queue)


def _ids(batch: pa.Table, id_field: str) -> pa.Array:
    import pyarrow as pa

    if id_field not in batch.column_names:
        return pa.nulls(batch.num_rows, pa.string())
    col = batch.column(id_field).combine_chunks()
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return col.cast(pa.string())
    if pa.types.is_floating(col.type):  # CSV/pandas ids: 12.0 -> "12"
        return pa.array([None if v is None else (str(int(v)) if float(v).is_integer() else str(v))
                         for v in col.to_pylist()], pa.string())
    try:
        return col.cast(pa.string())
    except Exception:  # nested values: their JSON
        return pa.array([None if v is None else json.dumps(v, ensure_ascii=False) for v in col.to_pylist()],
                        pa.string())


def normalize_block(block: pa.Table, text_field: str, id_field: str) -> pa.Table:
    """Runs in the read tasks: every block becomes ``path``, ``id``, ``text`` (all strings), whatever the
    format and the id's type, so the blocks of different files can share a batch."""
    import pyarrow as pa

    text = block.column(text_field) if text_field in block.column_names else pa.nulls(block.num_rows, pa.string())
    return pa.table({"path": block.column("path").cast(pa.string()), "id": _ids(block, id_field),
                     "text": text.cast(pa.string())})


def score_table(predictor: Any, batch: pa.Table, for_queue: bool) -> pa.Table:
    """Score one Arrow batch (``path``, ``id``, ``text``: :func:`normalize_block`) into output rows.
    A missing (null) text is scored as empty text (it passes) and flagged in ``_missing``."""
    import pyarrow as pa

    raw = batch.column("text").to_pylist()
    texts = [t if isinstance(t, str) else "" for t in raw]
    preds = predictor.predict(texts, batch_size=32)
    cols: dict[str, Any] = {
        "source": batch.column("path"),
        "id": batch.column("id"),
        "decision": pa.array([p.decision for p in preds], pa.string()),
        "categories": pa.array([list(p.categories) for p in preds], pa.list_(pa.string())),
        "_missing": pa.array([not isinstance(t, str) for t in raw], pa.bool_()),
    }
    for slug, name in zip(CATEGORY_SLUGS, SCORE_COLUMNS, strict=True):
        cols[name] = pa.array([p.scores[slug] for p in preds], pa.float64())
    if for_queue:
        review = [p.decision == "review" for p in preds]
        cols["_text"] = pa.array([t if r else None for t, r in zip(texts, review, strict=True)], pa.string())
        cols["_reasons"] = pa.array([json.dumps([_reason_dict(x) for x in p.reasons], ensure_ascii=False) if r
                                     else None for p, r in zip(preds, review, strict=True)], pa.string())
        cols["_matches"] = pa.array([json.dumps([_match_dict(m) for m in p.matches], ensure_ascii=False) if r
                                     else None for p, r in zip(preds, review, strict=True)], pa.string())
    return pa.table(cols)


def _reason_dict(r: Any) -> dict[str, Any]:
    return {"category": r.category, "kind": r.kind, "score": float(r.score), "threshold": float(r.threshold),
            "span": [int(r.span[0]), int(r.span[1])], "action": r.action}


def _match_dict(m: Any) -> dict[str, Any]:
    return {"category": m.category, "term": m.term, "start": m.start, "end": m.end, "action": m.action, "via": m.via}


# ---- the review queue -----------------------------------------------------------------------------


class Enqueuer:
    """Puts the review-band rows of a part into the review queue (idempotent: one item per (id, text))."""

    def __init__(self, url: str, model_name: str, model_version: str, policy_version: str, run_id: str) -> None:
        from shenhe.serving.queue import ReviewStore

        self.url = url
        try:
            self.store = ReviewStore(url)
        except Exception as e:  # an unknown dialect or a malformed URL
            raise BatchError(f"cannot use the review database URL: {str(e).splitlines()[0][:200]}") from None
        try:
            self.store.create_schema()
        except Exception as e:
            raise BatchError(f"cannot open the review database {self.store.describe()}: "
                             f"{str(e).splitlines()[0][:200]}") from None
        from shenhe.models.types import ModelInfo

        self.model = ModelInfo(name=model_name, version=model_version)
        self.policy_version = policy_version
        self.request_id = f"batch-{run_id}"
        self.new = 0
        self.seen = 0

    def add(self, table: pa.Table) -> None:
        import pyarrow.compute as pc

        from shenhe.models.types import Prediction, Reason, TermMatch
        from shenhe.serving.queue import NewReviewItem

        review = table.filter(pc.equal(table.column("decision"), "review"))
        items: list[NewReviewItem] = []
        for r in review.to_pylist():
            if r["_text"] is None:
                continue
            reasons = [Reason(x["category"], x["kind"], x["score"], x["threshold"], (x["span"][0], x["span"][1]),
                              x.get("action")) for x in json.loads(r["_reasons"])]
            matches = [TermMatch(**m) for m in json.loads(r["_matches"])]
            pred = Prediction(scores={slug: r[col] for slug, col in zip(CATEGORY_SLUGS, SCORE_COLUMNS, strict=True)},
                              decision="review", categories=list(r["categories"]), reasons=reasons, matches=matches,
                              model=self.model, policy_version=self.policy_version)
            items.append(NewReviewItem(caller_id=r["id"], text=r["_text"], prediction=pred,
                                       request_id=self.request_id))
        for k in range(0, len(items), 500):
            chunk = items[k:k + 500]
            try:
                result = self.store.enqueue(chunk)
            except Exception as e:
                raise BatchError(f"review queue {self.store.describe()}: {str(e).splitlines()[0][:200]}") from None
            self.new += result.new
            self.seen += len(chunk)

    def close(self) -> None:
        self.store.close()


# ---- summary --------------------------------------------------------------------------------------


def summarize(out: Path, files: Sequence[InputFile], extra: dict[str, Any] | None = None,
              audit_block_share: float = 0.0, second_opinion_share: float = 0.0) -> dict[str, Any]:
    """Decision shares, per-category counts and the review backlog over the parts of ``files``."""
    import pyarrow.parquet as pq

    decisions: Counter[str] = Counter()
    per_category: dict[str, Counter[str]] = {slug: Counter() for slug in CATEGORY_SLUGS}
    texts = 0
    for f in files:
        path = part_path(out, f.part)
        if not path.is_file():
            continue
        t = pq.read_table(path, columns=["decision", "categories"])
        texts += t.num_rows
        for decision, cats in zip(t.column("decision").to_pylist(), t.column("categories").to_pylist(),
                                  strict=True):
            decisions[decision] += 1
            for c in cats or ():
                per_category[c][decision] += 1
    review, block = decisions["review"], decisions["block"]
    audit = math.ceil(block * audit_block_share) if block else 0
    second = math.ceil(review * second_opinion_share) if review else 0
    summary: dict[str, Any] = {
        "texts": texts,
        "decisions": {d: {"count": decisions[d], "share": round(decisions[d] / texts, 6) if texts else 0.0}
                      for d in DECISIONS},
        "categories": {slug: {"review": c["review"], "block": c["block"]} for slug, c in per_category.items()},
        "review_backlog": {
            "review_items": review,  # the review band: what the queue would hold (one item per text)
            "audit_items": audit,  # sampled auto-blocks (SHENHE_AUDIT_BLOCK_SHARE)
            "second_opinions": second,  # decided items re-queued for another reviewer (SHENHE_SECOND_OPINION_SHARE)
            "total": review + audit + second,
        },
    }
    if extra:
        summary.update(extra)
    return summary


# ---- Ray ------------------------------------------------------------------------------------------


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise BatchError(RAY_MISSING) from None
    return ray


def start_ray(address: str | None) -> tuple[Any, float, bool]:
    """Connect to ``address`` or start a local Ray (quiet: no dashboard, no worker logs on the console).
    Returns (ray, seconds it took, whether this call started it)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray, 0.0, False
    _quiet_console()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reporting; the machine may be offline
    started = time.perf_counter()
    try:
        if address:
            ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
        else:  # "local": a new Ray on this machine, even where a `ray start` cluster runs
            # One logical CPU more than the cores: the actors take one per model thread, and Ray Data's own
            # small tasks (listing and reading files) need one free, or they wait behind the actors forever.
            ray.init(address="local", num_cpus=default_threads() + SPARE_CPUS, include_dashboard=False,
                     logging_level=logging.ERROR, log_to_driver=False)
    except Exception as e:  # ConnectionError, RuntimeError, ValueError from ray.init
        raise BatchError(f"cannot start Ray{' at ' + address if address else ''}: "
                         f"{str(e).splitlines()[0][:200]}") from None
    _quiet_console()
    return ray, time.perf_counter() - started, True


def _quiet_console() -> None:
    """Ray's and Ray Data's log lines off the console (Ray Data's still go to its session log file, and a
    failure ends the run with one line of ours)."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    for handler in logging.getLogger("ray.data").handlers:
        if not isinstance(handler, logging.FileHandler):
            handler.setLevel(logging.CRITICAL)


def _ray_cause(e: BaseException) -> str:
    """One line for an error raised through Ray (the task's own exception, not Ray's traceback)."""
    cause: BaseException = e
    while getattr(cause, "cause", None) is not None and cause is not getattr(cause, "cause", None):
        cause = cause.cause  # type: ignore[attr-defined]
    text = str(cause).strip().splitlines()
    line = next((s for s in reversed(text) if s.strip()), cause.__class__.__name__) if text else cause.__class__.__name__
    return f"{cause.__class__.__name__}: {line.strip()[:300]}"


def _read(ray: Any, fmt: str, paths: list[str], text_field: str, id_field: str, blocks: int) -> Any:
    common: dict[str, Any] = {"include_paths": True, "override_num_blocks": blocks, "partitioning": None}
    if fmt == "json":
        import pyarrow as pa
        import pyarrow.json as pajson

        # The text must be a string; other fields are inferred (ids may be numbers) and dropped by the actors.
        parse = pajson.ParseOptions(explicit_schema=pa.schema([(text_field, pa.string())]),
                                    unexpected_field_behavior="infer")
        return ray.data.read_json(paths, parse_options=parse, **common)
    if fmt == "csv":
        import pyarrow as pa
        import pyarrow.csv as pacsv

        convert = pacsv.ConvertOptions(column_types={text_field: pa.string(), id_field: pa.string()},
                                       include_columns=[id_field, text_field], include_missing_columns=True)
        return ray.data.read_csv(paths, parse_options=pacsv.ParseOptions(newlines_in_values=True),
                                 convert_options=convert, **common)
    import pyarrow.parquet as pq

    def columns(p: str) -> list[str]:
        with _open(p, seekable=True) as f:
            names = pq.ParquetFile(f).schema_arrow.names
        return [c for c in (id_field, text_field) if c in names]

    cols = sorted({c for p in paths for c in columns(p)}, key=[id_field, text_field].index)
    return ray.data.read_parquet(paths, columns=cols, **common)


def _key(path: str) -> str:
    """A path as Ray's ``path`` column spells it (no scheme, no leading slash)."""
    return path.split("://", 1)[-1].lstrip("/")


def run_batch(opts: BatchOptions, log: Callable[[str], None] | None = None) -> BatchResult:
    """Score ``opts.inputs`` into ``opts.output``; see the module docstring."""
    from shenhe.models.bundle import BundleError, check_policy_fits, load_bundle
    from shenhe.models.policy import PolicyError, load_policy
    from shenhe.serving.config import ConfigError, ServingConfig

    say = log or (lambda _msg: None)
    if opts.threads < 1 or (opts.actors is not None and opts.actors < 1) or opts.batch_size < 1:
        raise BatchError("--threads, --actors and --batch-size must be at least 1")
    # Everything that can be checked without Ray, before it starts.
    try:
        bundle = load_bundle(opts.bundle)
        policy = load_policy(opts.policy) if opts.policy is not None else bundle.policy
        check_policy_fits(policy, bundle.manifest, str(opts.policy or bundle.dir))
    except (BundleError, PolicyError) as e:
        raise BatchError(str(e)) from None
    try:
        serving = ServingConfig.from_env()
    except ConfigError:
        serving = ServingConfig()
    files = describe_inputs(opts.inputs, opts.text_field, opts.output)
    out = opts.output
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob(f"{TMP_PREFIX}*"):  # a killed run's half-written parts
        stale.unlink(missing_ok=True)
    metadata = {"shenhe.model": f"{bundle.manifest.name} {bundle.manifest.version}",
                "shenhe.policy": policy.version, "shenhe.queued": "1" if opts.enqueue_url else "0"}
    done = [f for f in files if is_done(out, f, opts.jsonl)]
    existing = sorted(out.glob(f"{PART_PREFIX}*.parquet"))
    if existing and not opts.resume:
        raise BatchError(f"{out} already holds {len(existing)} part(s) of an earlier run: pass --resume to "
                         "finish it, or choose another --output")
    for f in done:
        have = read_part_metadata(part_path(out, f.part))
        for key in ("shenhe.model", "shenhe.policy"):
            if have.get(key) != metadata[key]:
                raise BatchError(f"{part_path(out, f.part).name} was written with {key.split('.')[1]} "
                                 f"{have.get(key)!r}, this run uses {metadata[key]!r}: resume with the same bundle "
                                 "and policy, or choose another --output")
    todo = [f for f in files if not is_done(out, f, opts.jsonl)]
    run_id = uuid.uuid4().hex[:12]
    enqueuer = (Enqueuer(opts.enqueue_url, bundle.manifest.name, bundle.manifest.version, policy.version, run_id)
                if opts.enqueue_url else None)
    total_rows = sum(f.rows for f in todo)
    say(f"{len(files)} input file(s), {sum(f.rows for f in files)} texts; "
        + (f"{len(done)} already written (--resume), " if done else "")
        + f"{len(todo)} to score ({total_rows} texts)")

    timing: dict[str, Any] = {"ray_startup_s": 0.0, "scoring_s": 0.0, "texts_scored": 0}
    started_ray = False
    ray: Any = None
    try:
        unqueued = [f for f in done if read_part_metadata(part_path(out, f.part)).get("shenhe.queued") != "1"]
        if enqueuer is not None and unqueued:
            say(f"warning: {len(unqueued)} part(s) already written were scored without --enqueue and hold no "
                "texts, so their review items are not queued now (score those inputs again into another "
                "--output with --enqueue)")
        if todo:
            ray, timing["ray_startup_s"], started_ray = start_ray(opts.address)
            cpus = int(ray.cluster_resources().get("CPU", 1))
            # The model threads get every CPU but the spare one Ray Data's reads run on (see start_ray).
            actors = opts.actors or max(1, (cpus - SPARE_CPUS) // opts.threads)
            timing.update(cluster_cpus=cpus, actors=actors, threads_per_actor=opts.threads)
            say(f"Ray ready in {timing['ray_startup_s']:.1f} s: {actors} actor(s) × {opts.threads} onnxruntime "
                f"thread(s) ({cpus} Ray CPUs, {SPARE_CPUS} of them for reading files)")
            t0 = time.perf_counter()
            timing["texts_scored"], missing = _score_files(ray, todo, opts, out, metadata, actors, enqueuer,
                                                           _worker_paths(bundle.dir, opts))
            timing["scoring_s"] = round(time.perf_counter() - t0, 3)
            timing["texts_per_s"] = round(timing["texts_scored"] / timing["scoring_s"], 1) if timing["scoring_s"] else 0.0
            timing["ray_startup_s"] = round(timing["ray_startup_s"], 3)
            timing["missing_text"] = missing
    finally:
        if enqueuer is not None:
            enqueuer.close()
        if started_ray and ray is not None:
            ray.shutdown()

    extra: dict[str, Any] = {
        "files": {"total": len(files), "written": len(todo), "skipped": len(done)},
        "model": {"name": bundle.manifest.name, "version": bundle.manifest.version},
        "policy_version": policy.version,
        "timing": timing,
    }
    if enqueuer is not None:
        extra["enqueued"] = {"database": enqueuer.store.describe(), "review_rows": enqueuer.seen,
                             "new_items": enqueuer.new}
    summary = summarize(out, files, extra, serving.audit_block_share, serving.second_opinion_share)
    tmp = out / f"{TMP_PREFIX}{SUMMARY_NAME}"
    tmp.write_text(json.dumps(summary, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, out / SUMMARY_NAME)
    return BatchResult(summary=summary, written=[f.path for f in todo], skipped=[f.path for f in done])


def _worker_paths(bundle_dir: Path, opts: BatchOptions) -> tuple[str | None, str | None]:
    """The bundle and policy paths the actors load: absolute (a worker's directory is not ours). On a remote
    cluster (``address``) the default bundle is the one installed on each node."""
    bundle = None if opts.address and opts.bundle is None else str(bundle_dir.resolve())
    policy = str(opts.policy.resolve()) if opts.policy is not None else None
    return bundle, policy


def _score_files(ray: Any, todo: list[InputFile], opts: BatchOptions, out: Path, metadata: dict[str, str],
                 actors: int, enqueuer: Enqueuer | None, worker_paths: tuple[str | None, str | None]
                 ) -> tuple[int, int]:
    """Run the pipeline over ``todo`` (one per input format, in turn) and write one part per file.
    Returns (texts scored, texts missing their text field)."""
    import pyarrow as pa

    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # a file's rows arrive together and in order
    ctx.enable_progress_bars = False  # ours (below) counts texts written
    by_key = {_key(f.path): f for f in todo}
    scored = missing = 0
    with _Progress(sum(f.rows for f in todo), opts.progress) as progress, warnings.catch_warnings():
        # A file read as fewer blocks than actors (Parquet: one per row group) only idles an actor.
        warnings.filterwarnings("ignore", message=".*minimum number of concurrent actors.*")
        for fmt in ("json", "csv", "parquet"):  # one pipeline per format, in turn (a union interleaves them)
            group = [f for f in todo if f.fmt == fmt]
            if not group:
                continue
            rows = sum(f.rows for f in group)
            # Blocks are what the actors take one at a time: at least one per actor, about block_rows each.
            blocks = max(len(group), min(rows, actors), math.ceil(rows / max(1, opts.block_rows)))
            ds = _read(ray, fmt, [f.path for f in group], opts.text_field, opts.id_field, blocks)
            ds = ds.map_batches(normalize_block, fn_kwargs={"text_field": opts.text_field, "id_field": opts.id_field},
                                batch_size=None, batch_format="pyarrow")  # runs inside the read tasks
            with warnings.catch_warnings():  # Ray 2.5x deprecates the remote-args spelling of max_restarts
                warnings.simplefilter("ignore")
                ds = _map(ray, ds, opts, actors, worker_paths, enqueuer is not None)
            seen: set[str] = set()
            writer: PartWriter | None = None
            try:
                for table in _iter_tables(ray, ds):
                    for source, chunk in _runs(table):
                        f = by_key.get(_key(source))
                        if f is None:
                            raise BatchError(f"Ray returned rows of an unknown input {source!r}")
                        if writer is None or writer.file is not f:
                            if writer is not None:
                                _commit(writer, enqueuer, progress)
                            if f.path in seen:
                                raise BatchError(f"{f.path}: rows arrived out of order; nothing more was written")
                            seen.add(f.path)
                            writer = PartWriter(out, f, metadata, opts.jsonl)
                        if enqueuer is not None:  # before the part is renamed into place
                            enqueuer.add(chunk)
                        missing += sum(chunk.column("_missing").to_pylist())
                        writer.write(chunk.drop_columns([c for c in chunk.column_names if c.startswith("_")]))
                        scored += chunk.num_rows
                        progress.advance(chunk.num_rows)
                if writer is not None:
                    _commit(writer, enqueuer, progress)
                    writer = None
            except BaseException:
                if writer is not None:
                    writer.abort()
                raise
            for f in group:  # files without rows never appear in the stream
                if f.path not in seen:
                    empty = PartWriter(out, f, metadata, opts.jsonl)
                    empty.write(pa.table({name: pa.array([], t) for name, t in zip(
                        output_schema().names, output_schema().types, strict=True) if name != "row"}))
                    _commit(empty, enqueuer, progress)
    return scored, missing


def _map(ray: Any, ds: Any, opts: BatchOptions, actors: int, worker_paths: tuple[str | None, str | None],
         for_queue: bool) -> Any:
    return ds.map_batches(
        Scorer,
        fn_constructor_kwargs={"bundle": worker_paths[0], "policy": worker_paths[1], "threads": opts.threads,
                               "for_queue": for_queue},
        batch_size=opts.batch_size, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=opts.threads,
        # Ray Data's default restarts a dead actor forever: a bundle that cannot load would loop. On this
        # machine a crash ends the run (--resume continues it); on a cluster, where a node may go away, an
        # actor restarts a few times. (max_restarts=0 also keeps Ray's warning about restartable actors off
        # the console.)
        **({"max_restarts": 3, "max_task_retries": 3} if opts.address else {"max_restarts": 0}),
    )


def _iter_tables(ray: Any, ds: Any) -> Iterator[pa.Table]:
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=2)
    except BatchError:
        raise
    except ray.exceptions.RayError as e:
        raise BatchError(f"reading or scoring failed: {_ray_cause(e)} (Ray Data's log: "
                         f"{_ray_log_dir(ray)})") from None


def _ray_log_dir(ray: Any) -> str:
    try:
        return str(Path(ray._private.worker._global_node.get_session_dir_path()) / "logs" / "ray-data")
    except Exception:  # a private API (and none on a Ray Client connection): name the usual place
        return "the Ray session's logs/ray-data folder"


def _runs(table: pa.Table) -> Iterator[tuple[str, pa.Table]]:
    """Consecutive rows of ``table`` with the same source, in order."""
    sources = table.column("source").to_pylist()
    start = 0
    for i in range(1, len(sources) + 1):
        if i == len(sources) or sources[i] != sources[start]:
            yield sources[start], table.slice(start, i - start)
            start = i


def _commit(writer: PartWriter, enqueuer: Enqueuer | None, progress: _Progress) -> None:
    writer.commit()
    progress.file_done(writer.file, writer.rows)


class _Progress:
    """Texts written / total with the rate (a live bar on a terminal), and one line per finished file."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total = total
        self.enabled = enabled
        self.done = 0
        self.files = 0
        self.started = time.perf_counter()
        self._bar: Any = None
        self._console: Any = None

    def __enter__(self) -> _Progress:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._console = Console(stderr=True)
            if self._console.is_terminal:
                self._bar = Progress(TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self._console)
                self._bar.__enter__()
                self._task = self._bar.add_task("batch", total=self.total, rate="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task, advance=n, rate=f"{self.rate():.0f} texts/s")

    def file_done(self, f: InputFile, rows: int) -> None:
        self.files += 1
        if self._console is not None:  # also off a terminal: one line per file in the log
            self._console.print(f"batch: {f.name}: {rows} texts written ({self.done}/{self.total}, "
                                    f"{self.rate():.0f} texts/s)", markup=False, highlight=False)
