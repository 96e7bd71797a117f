"""The teacher of ``shenhe distill``: which model it is, and its window logits, computed once and cached on disk.

A teacher is a bundle (``models/default``: its INT8 ``model.onnx`` is what serves, so the student learns the
served model's scores) or a finished ``shenhe train`` run (its ``model/`` weights, exported once to an fp32
ONNX file in the cache folder). Either way the teacher is scored with onnxruntime, window by window, on exactly
the windows the student trains on; the training loop then runs only the student.

Cache (``RUN/teacher/`` by default, or ``--teacher-cache DIR`` shared by several students): per source of
windows (``train``, ``augmented``, ``unlabelled``) ``NAME.json`` (the key and what went into it), ``NAME.npy``
(float32 [windows, 9]) once complete, and ``NAME.parts/`` (chunks of ``CHUNK`` windows) while it is being
computed, so an interrupted computation continues where it stopped. The key is a hash of the teacher's model
(sha256 of ``model.onnx``, or of the run's weight files), the source data files' sha256 and the exact token ids
of every window (which covers the tokenizer, ``--max-length``, ``--stride``, subsampling and augmentation); a
cache with another key is discarded and computed again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shenhe.models.bundle import MANIFEST_FILE, METRICS_FILE, MODEL_FILE, read_manifest, sha256_file
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.windowing import RunModel, Window, score_windows
from shenhe.training.finetune.errors import TrainError

log = logging.getLogger("shenhe.train")

CHUNK = 2048  # windows per cached part
RUN_MODEL_FILES = ("classifier.json", "head.safetensors")  # plus encoder/*.safetensors and encoder/config.json


@dataclass
class Teacher:
    """What the student learns from (recorded in run.json ``summary.distillation.teacher``)."""

    kind: str  # "bundle" | "run"
    path: str
    name: str
    version: str | None
    model_sha256: str  # what produces the logits: model.onnx, or the run's weight files (see run_model_sha256)
    bundle_sha256: str | None  # sha256 of bundle.json, which lists the sha256 of every other file of the bundle
    base: str | None  # the encoder the teacher was fine-tuned from (None: unknown, --base needed)
    max_length: int
    window_stride: int
    text_prefix: str
    pad_token_id: int | None
    trained_categories: list[str]
    quantization: str | None = None
    test_macro_f1: float | None = None  # as recorded by the teacher's own training or export
    dev_macro_f1: float | None = None
    speed: dict[str, Any] | None = None  # the teacher bundle's own export measurement
    layers: int | None = None  # filled in once its weights are loaded

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


def run_model_sha256(model_dir: Path) -> str:
    """One hash over a run's ``model/`` weight files (their names and sha256)."""
    files = sorted([model_dir / f for f in RUN_MODEL_FILES] + list((model_dir / "encoder").glob("*.safetensors"))
                   + [model_dir / "encoder" / "config.json"])
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(f"{f.relative_to(model_dir)}:{sha256_file(f)}\n".encode())
    return h.hexdigest()


def resolve_teacher(path: Path) -> Teacher:
    """A bundle (bundle.json + model.onnx) or a finished ``shenhe train`` run (run.json + model/)."""
    path = Path(path).expanduser()
    if (path / MANIFEST_FILE).is_file() and (path / MODEL_FILE).is_file():
        manifest = read_manifest(path)
        onnx_hash = sha256_file(path / MODEL_FILE)
        if manifest.files.get(MODEL_FILE) not in (None, onnx_hash):
            raise TrainError(f"--teacher {path}: {MODEL_FILE} does not match its hash in {MANIFEST_FILE}")
        metrics: dict[str, Any] = {}
        if (path / METRICS_FILE).is_file():
            try:
                metrics = json.loads((path / METRICS_FILE).read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                metrics = {}
        return Teacher(
            kind="bundle", path=str(path), name=manifest.name, version=manifest.version, model_sha256=onnx_hash,
            bundle_sha256=sha256_file(path / MANIFEST_FILE), base=None, max_length=manifest.max_length,
            window_stride=manifest.window_stride, text_prefix=manifest.text_prefix,
            pad_token_id=manifest.pad_token_id, trained_categories=list(manifest.trained_categories),
            quantization=manifest.quantization, test_macro_f1=manifest.metrics.get("test_macro_f1"),
            dev_macro_f1=manifest.metrics.get("dev_macro_f1"), speed=metrics.get("speed"))
    run_file = path / "run.json"
    if run_file.is_file() and (path / "model" / "classifier.json").is_file():
        info = json.loads(run_file.read_text(encoding="utf-8"))
        if info.get("arch") != "bert" or info.get("status") != "done":
            raise TrainError(f"--teacher {path}: not a finished BERT run (status {info.get('status')!r})")
        args = info.get("args", {})
        meta = json.loads((path / "model" / "classifier.json").read_text(encoding="utf-8"))
        summary = info.get("summary", {})
        return Teacher(
            kind="run", path=str(path), name=path.name, version=None, model_sha256=run_model_sha256(path / "model"),
            bundle_sha256=None, base=args.get("base"), max_length=int(args["max_length"]),
            window_stride=int(args["window_stride"]), text_prefix=str(meta.get("text_prefix", "")),
            pad_token_id=None, trained_categories=list(summary.get("trained_categories", CATEGORY_SLUGS)),
            test_macro_f1=info.get("test_macro_f1"), dev_macro_f1=info.get("dev_macro_f1"))
    raise TrainError(f"--teacher {path}: not a bundle (bundle.json + model.onnx) or a finished run (run.json + model/)")


def teacher_onnx(teacher: Teacher, cache_dir: Path) -> Path:
    """The ONNX file to score the teacher with: the bundle's model.onnx, or the run exported once (fp32)."""
    if teacher.kind == "bundle":
        return Path(teacher.path) / MODEL_FILE
    out = cache_dir / f"teacher-{teacher.model_sha256[:16]}.onnx"
    if out.is_file():
        return out
    from shenhe.training.finetune.backend import export_onnx
    from shenhe.training.finetune.model import load_model

    model, tokenizer, _ = load_model(Path(teacher.path) / "model", attn_implementation="eager")
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    export_onnx(model, tmp, pad_id)
    os.replace(tmp, out)
    log.info("teacher run %s exported to %s (fp32) for scoring", teacher.path, out)
    return out


def onnx_runner(path: Path, threads: int | None) -> RunModel:
    from shenhe.training.finetune.backend import ort_session

    session = ort_session(path, threads)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": ids, "attention_mask": mask})[0]

    return run


def windows_sha256(windows: Sequence[Window]) -> str:
    """Hash of the exact model inputs: every window's length and token ids, in order."""
    h = hashlib.sha256()
    lengths = np.fromiter((len(w.ids) for w in windows), dtype=np.int64, count=len(windows))
    h.update(lengths.tobytes())
    step = 8192
    for k in range(0, len(windows), step):
        part = windows[k: k + step]
        h.update(np.fromiter((i for w in part for i in w.ids), dtype=np.int64).tobytes())
    return h.hexdigest()


def files_sha256(paths: Sequence[Path]) -> dict[str, str]:
    return {str(p): sha256_file(Path(p)) for p in paths}


@dataclass
class CacheReport:
    """How one source's teacher logits were obtained (run.json ``summary.distillation.teacher_logits``)."""

    name: str
    key: str
    windows: int
    reused: bool  # the complete array was read from the cache
    computed_windows: int  # windows scored by the teacher in this process (0 when reused)
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _atomic_save(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def cached_teacher_logits(cache_dir: Path, name: str, windows: Sequence[Window], key_parts: dict[str, Any],
                          make_runner: Callable[[], RunModel], pad_token_id: int, batch_size: int = 64,
                          chunk: int = CHUNK, progress: bool = False) -> tuple[np.ndarray, CacheReport]:
    """The teacher's logits [len(windows), 9] for ``windows``, from the cache when its key matches.

    ``key_parts`` names the teacher and the data (see the module doc); the windows' own hash is added here.
    ``make_runner()`` returns ``run(input_ids, mask) -> logits`` for a padded batch; it is called only when
    something has to be computed (a complete cache never loads the teacher). Chunks of ``chunk`` windows are
    saved as they finish; a later call continues from the chunks on disk."""
    t0 = time.perf_counter()
    n_out = len(CATEGORY_SLUGS)
    key_parts = {**key_parts, "windows_sha256": windows_sha256(windows), "windows": len(windows)}
    key = hashlib.sha256(json.dumps(key_parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    cache_dir.mkdir(parents=True, exist_ok=True)
    meta_path, arr_path, parts = cache_dir / f"{name}.json", cache_dir / f"{name}.npy", cache_dir / f"{name}.parts"
    meta: dict[str, Any] | None = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            meta = None
    if meta is not None and meta.get("key") == key and meta.get("complete") and arr_path.is_file():
        arr = np.load(arr_path)
        if arr.shape == (len(windows), n_out):
            log.info("teacher logits %s: %d windows from the cache (%s)", name, len(windows), arr_path)
            return arr, CacheReport(name, key, len(windows), True, 0, round(time.perf_counter() - t0, 2))
    if meta is None or meta.get("key") != key:
        if meta is not None:
            log.info("teacher logits %s: the cache in %s is for another teacher or data (key %s, now %s); "
                     "computing again", name, cache_dir, str(meta.get("key"))[:12], key[:12])
        shutil.rmtree(parts, ignore_errors=True)
        arr_path.unlink(missing_ok=True)
        meta = {"key": key, "key_parts": key_parts, "chunk": chunk, "complete": False}
        _write_json(meta_path, meta)
    chunk = int(meta.get("chunk", chunk))
    parts.mkdir(exist_ok=True)
    n_chunks = (len(windows) + chunk - 1) // chunk
    runner: RunModel | None = None
    computed = 0
    bar: Any = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_chunks, desc=f"teacher {name}", unit="chunk", leave=False)
    done: list[np.ndarray] = []
    for c in range(n_chunks):
        part_path = parts / f"{c:06d}.npy"
        part_windows = windows[c * chunk: (c + 1) * chunk]
        arr = None
        if part_path.is_file():
            try:
                arr = np.load(part_path)
            except (OSError, ValueError):
                arr = None
            if arr is not None and arr.shape != (len(part_windows), n_out):
                arr = None
        if arr is None:
            if runner is None:
                runner = make_runner()
            arr = score_windows(part_windows, runner, pad_token_id, batch_size, n_out)
            _atomic_save(part_path, arr)
            computed += len(part_windows)
        done.append(arr)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    arr = np.concatenate(done) if done else np.zeros((0, n_out), dtype=np.float32)
    _atomic_save(arr_path, arr.astype(np.float32))
    meta.update(complete=True, seconds=round(time.perf_counter() - t0, 1))
    _write_json(meta_path, meta)
    shutil.rmtree(parts, ignore_errors=True)
    log.info("teacher logits %s: %d windows (%d scored now) in %.1fs -> %s", name, len(windows), computed,
             time.perf_counter() - t0, arr_path)
    return arr, CacheReport(name, key, len(windows), False, computed, round(time.perf_counter() - t0, 2))

