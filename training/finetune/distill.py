"""``shenhe distill``: a smaller, faster student that keeps K of the teacher's encoder layers, trained on the
teacher's window logits and the gold labels.

The student starts as the teacher: the same tokenizer, embeddings and head, and K of its encoder layers
(:func:`choose_layers`: evenly spaced and ending at the top layer by default, e.g. 1,3,5,7,9,11 of 12 for K=6),
copied from the teacher's weights (a bundle's are read back from its ONNX graph, see warm_start.py). It is then
trained on every window of every training text, of optional obfuscated copies of them (the augmenter of
training/finetune/augment.py) and of optional unlabelled texts, against

    loss = alpha * T² * KL(sigmoid(teacher / T) || sigmoid(student / T)) + (1 - alpha) * BCE(student, gold)

per category (Bernoulli KL: binary cross-entropy against the teacher's soft scores minus their entropy, so it
is 0 when the student matches the teacher), masked to the teacher's trained categories. Only a labelled text's
first window has gold labels (what ``shenhe train`` trains on); later windows and unlabelled texts take the
teacher's term alone; a text's sample weight (``weight`` in train.jsonl) scales its windows' loss, as in
``shenhe train``. The teacher's logits are computed once with onnxruntime and cached (teacher.py), so the
loop runs only the student.

Everything else is :class:`~shenhe.training.finetune.trainer.Trainer`: checkpoints, ``--resume``, the time
budget, dev evaluation and early stopping on the student's own dev macro-F1, weight averaging, and the final
calibration and thresholds. The run directory has the shape of a ``shenhe train`` run (plus ``teacher/``), so
``shenhe export --run`` exports it unchanged; ``run.json`` ``summary.distillation`` records the teacher (name,
version, hashes), K, the kept layers, alpha, T and the data, which export carries into the model card.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shenhe.models.cores import default_threads
from shenhe.models.normalize import normalize_text
from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.models.windowing import Window, WindowTokenizer
from shenhe.training.finetune.args import DistillArguments, parse_layer_map
from shenhe.training.finetune.dataset import DataError, Split, read_split
from shenhe.training.finetune.errors import TrainError
from shenhe.training.finetune.model import MultiLabelClassifier, keep_layers, load_base
from shenhe.training.finetune.teacher import (
    CacheReport,
    Teacher,
    cached_teacher_logits,
    files_sha256,
    onnx_runner,
    resolve_teacher,
    teacher_onnx,
)
from shenhe.training.finetune.trainer import RUN_FILE, Trainer
from shenhe.training.finetune.warm_start import init_from

log = logging.getLogger("shenhe.train")

TEACHER_DIR = "teacher"


# -- the student's layers --------------------------------------------------------------------------------

def choose_layers(n: int, k: int, layer_map: str = "spread") -> list[int]:
    """Which of the teacher's ``n`` layers (0 = the bottom) a ``k``-layer student keeps.

    ``spread``: every (n/k)-th layer counting down from the top, ``(i + 1) * n // k - 1``: 12 -> 6 keeps
    1,3,5,7,9,11 (every other layer), 12 -> 4 keeps 2,5,8,11, 12 -> 3 keeps 3,7,11, and always the top layer,
    whose output the head was trained on. ``bottom``: the first k. Or an explicit list."""
    explicit = parse_layer_map(layer_map)
    if explicit is not None:
        if explicit[-1] >= n:
            raise ValueError(f"--layer-map {layer_map!r}: the teacher has layers 0-{n - 1}")
        if k and k != len(explicit):
            raise ValueError(f"--layers {k} but --layer-map lists {len(explicit)} layers")
        return explicit
    if not 1 <= k <= n:
        raise ValueError(f"--layers {k}: the teacher has {n} layers (choose 1-{n})")
    if layer_map == "bottom":
        return list(range(k))
    return [(i + 1) * n // k - 1 for i in range(k)]


# -- the loss ---------------------------------------------------------------------------------------------

def distill_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, gold: torch.Tensor, gold_weight: torch.Tensor,
                 cat_mask: torch.Tensor, pos_weight: torch.Tensor, alpha: float, temperature: float,
                 sample_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over windows and trained categories of ``w_soft * T² * KL + w_gold * BCE(gold)`` (see module doc).

    ``gold_weight`` [b] is 1 where a window has gold labels: there ``w_soft = alpha`` and ``w_gold = 1 - alpha``;
    elsewhere ``w_soft = 1`` and ``w_gold = 0``. ``cat_mask`` [9] is 1 for trained categories. ``sample_weight``
    [b] scales each window's loss (its text's row weight, e.g. reviewer labels above public ones)."""
    t = float(temperature)
    target = torch.sigmoid(teacher_logits.float() / t)
    entropy = -(torch.special.xlogy(target, target) + torch.special.xlogy(1.0 - target, 1.0 - target))
    soft = (nn.functional.binary_cross_entropy_with_logits(logits / t, target, reduction="none") - entropy) * (t * t)
    hard = nn.functional.binary_cross_entropy_with_logits(logits, gold, pos_weight=pos_weight, reduction="none")
    has_gold = gold_weight > 0
    w_soft = torch.where(has_gold, torch.full_like(gold_weight, alpha), torch.ones_like(gold_weight))
    w_gold = (1.0 - alpha) * gold_weight
    per = w_soft.unsqueeze(1) * soft + w_gold.unsqueeze(1) * hard
    if sample_weight is not None:
        per = per * sample_weight.unsqueeze(1)
    return (per * cat_mask).sum() / (cat_mask.sum() * len(logits))


# -- data -------------------------------------------------------------------------------------------------

def read_unlabelled(paths: list[Path]) -> list[str]:
    """Texts of ``.jsonl``/``.json`` files (one object with a "text" per line; other fields ignored) or of any other
    file (one text per line)."""
    texts: list[str] = []
    for path in paths:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read ({e.__class__.__name__})") from None
        jsonl = Path(path).suffix.lower() in (".jsonl", ".json")
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            if not jsonl:
                texts.append(line.strip())
                continue
            try:
                obj = json.loads(line)
                text = obj["text"]
                if not isinstance(text, str):
                    raise TypeError
            except (json.JSONDecodeError, KeyError, TypeError):
                raise DataError(f"{path}:{lineno}: expected a JSON object with a 'text'") from None
            texts.append(text)
    return texts


def make_augmenter(args: DistillArguments) -> Any:
    """The obfuscation augmenter (training/finetune/augment.py) with the run's settings, rewriting every text it
    is asked for (``--augment-copies`` fixes the copies, so the teacher can score them once)."""
    from shenhe.training.finetune.augment import Augmenter

    return Augmenter(dataclasses.replace(args.augment, share=1.0), args.seed)


def _row_weights(split: Split) -> np.ndarray:
    """The rows' sample weights (``weight`` in train.jsonl; 1 where absent)."""
    w = getattr(split, "weights", None)
    return np.ones(len(split), dtype=np.float32) if w is None else np.asarray(w, dtype=np.float32)


def _unique_rows(split: Split) -> Split:
    """The split without repeated rows (oversampling repeats them; the teacher scores each text once)."""
    first: dict[str, int] = {}
    for i, row_id in enumerate(split.ids):
        first.setdefault(row_id, i)
    return split if len(first) == len(split) else split.subset(sorted(first.values()))


@dataclass
class Source:
    """One set of texts the student trains on (train, augmented copies, unlabelled)."""

    name: str
    texts: list[str]  # normalised
    labels: np.ndarray | None  # [n, 9] gold labels, None: unlabelled
    weights: np.ndarray  # [n] the rows' sample weights (1: unlabelled)
    key: dict[str, Any]  # what the teacher cache key needs beyond the teacher and the windows


# -- the trainer ------------------------------------------------------------------------------------------

class DistillTrainer(Trainer):
    """The fine-tuning loop, with a student built from the teacher and the teacher's logits in the loss."""

    KIND = "distill"
    args: DistillArguments

    def __init__(self, args: DistillArguments, resume: bool = False, show_progress: bool = True) -> None:
        super().__init__(args, resume=resume, show_progress=show_progress)
        self.cache_dir = Path(args.teacher_cache).expanduser() if args.teacher_cache else args.out / TEACHER_DIR
        self.teacher: Teacher = resolve_teacher(Path(args.teacher))

    def _check_same_teacher(self) -> None:
        run_file = self.out / RUN_FILE
        if not self.resume or not run_file.is_file():
            return
        try:
            before = json.loads(run_file.read_text(encoding="utf-8"))["summary"]["distillation"]["teacher"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if before.get("model_sha256") != self.teacher.model_sha256:
            raise TrainError(f"--teacher {self.teacher.path} changed since this run started (model sha256 "
                             f"{str(before.get('model_sha256'))[:12]} -> {self.teacher.model_sha256[:12]}); "
                             f"start a new run")

    def _build_model(self) -> None:
        a, t = self.args, self.teacher
        self._check_same_teacher()
        encoder, self.tokenizer, self.text_prefix = load_base(a.base)
        if self.text_prefix != t.text_prefix:
            raise TrainError(f"--base {a.base}: its text prefix {self.text_prefix!r} differs from the teacher's "
                             f"{t.text_prefix!r}; use the encoder the teacher was trained from")
        pad_id = 0 if self.tokenizer.pad_token_id is None else int(self.tokenizer.pad_token_id)
        if t.pad_token_id is not None and t.pad_token_id != pad_id:
            raise TrainError(f"--base {a.base}: pad token {pad_id} differs from the teacher's {t.pad_token_id}")
        self.windower = WindowTokenizer(self.tokenizer.backend_tokenizer, a.max_length, a.window_stride,
                                        pad_token_id=pad_id, text_prefix=self.text_prefix)
        model = MultiLabelClassifier(encoder, dropout=a.dropout, pooling=a.pooling)
        probe = self.windower.first_windows(self.dev_eval.normalized[:32])
        self.teacher_init = init_from(model, self.tokenizer, Path(t.path), probe).to_dict()
        n = int(model.encoder.config.num_hidden_layers)
        t.layers = n
        try:
            self.kept_layers = choose_layers(n, a.layers, a.layer_map)
        except ValueError as e:
            raise TrainError(str(e)) from None
        try:
            keep_layers(model, self.kept_layers)
        except ValueError as e:
            raise TrainError(f"--base {a.base}: {e}") from None
        log.info("student: %d of the teacher's %d layers (%s), from %s %s", len(self.kept_layers), n,
                 ",".join(map(str, self.kept_layers)), t.kind, t.label)
        self.model = model
        self.warm_start = None  # the student's origin is summary.distillation

    def _prepare(self) -> None:
        super()._prepare()
        self._prepare_distillation()

    def _load_epoch(self, epoch: int) -> None:
        """Every epoch trains on the same windows: the teacher scored them once (a no-op for a trainer that
        draws and rewrites rows per epoch)."""

    def _sources(self, train: Split) -> tuple[list[Source], dict[str, Any]]:
        a = self.args
        train_file = a.data / "train.jsonl"
        row_weights = _row_weights(train)
        sources = [Source("train", train.normalized, train.labels, row_weights, {"data": files_sha256([train_file])})]
        notes: dict[str, Any] = {}
        if a.augment_copies:
            augmenter = make_augmenter(a)
            t0 = time.perf_counter()
            texts: list[str] = []
            rows: list[int] = []
            for i, (text, row_id) in enumerate(zip(train.normalized, train.ids, strict=True)):
                for copy in range(a.augment_copies):
                    rewrite = augmenter.augment(text, 0, row_id, copy)
                    if rewrite is not None and rewrite.text and rewrite.text != text:
                        texts.append(rewrite.text)
                        rows.append(i)
            sources.append(Source("augmented", texts, train.labels[rows] if rows else train.labels[:0],
                                  row_weights[rows] if rows else row_weights[:0], {"data": files_sha256([train_file]), "copies": a.augment_copies}))
            notes["augmented"] = {"copies_per_text": a.augment_copies, "rewritten": len(texts),
                                  "seconds": round(time.perf_counter() - t0, 1)}
        if a.unlabelled:
            paths = [Path(p).expanduser() for p in a.unlabelled]
            raw = read_unlabelled(paths)
            held: set[str] = set(self.dev_split.normalized)
            if self.test_split is not None:
                held |= set(self.test_split.normalized)
            if (a.data / "holdout.jsonl").is_file():
                held |= set(read_split(a.data / "holdout.jsonl", "holdout").normalized)
            in_train = set(train.normalized)
            kept: list[str] = []
            seen: set[str] = set()
            dropped = {"empty": 0, "repeated": 0, "in_train": 0, "in_dev_test_or_holdout": 0}
            for text in raw:
                norm = normalize_text(text)
                reason = ("empty" if not norm else "repeated" if norm in seen else "in_train" if norm in in_train
                          else "in_dev_test_or_holdout" if norm in held else None)
                if reason:
                    dropped[reason] += 1
                    continue
                seen.add(norm)
                kept.append(norm)
            sources.append(Source("unlabelled", kept, None, np.ones(len(kept), dtype=np.float32),
                                  {"data": files_sha256(paths)}))
            notes["unlabelled"] = {"files": [str(p) for p in paths], "texts_read": len(raw), "kept": len(kept),
                                   "dropped": dropped}
            if dropped["in_dev_test_or_holdout"]:
                log.info("unlabelled: %d texts dropped because dev, test or holdout has them (never train on those)",
                         dropped["in_dev_test_or_holdout"])
        return sources, notes

    def _prepare_distillation(self) -> None:
        a, t = self.args, self.teacher
        train = _unique_rows(self.train_split)
        self.trained = np.array([s in t.trained_categories for s in CATEGORY_SLUGS])
        if not self.trained.any():
            raise TrainError(f"--teacher {t.path}: it has no trained category")
        self.loss_mask = torch.from_numpy(self.trained.astype(np.float32))
        sources, notes = self._sources(train)
        threads = a.threads or default_threads()

        def make_runner():  # type: ignore[no-untyped-def]
            return onnx_runner(teacher_onnx(t, self.cache_dir), threads)

        key_base = {"teacher_kind": t.kind, "teacher_model_sha256": t.model_sha256}
        ids: list[tuple[int, ...]] = []
        gold: list[np.ndarray] = []
        gold_weight: list[np.ndarray] = []
        teacher: list[np.ndarray] = []
        sample_weight: list[np.ndarray] = []
        items: dict[str, dict[str, int]] = {}
        reports: dict[str, dict[str, Any]] = {}
        for source in sources:
            windows: list[Window] = self.windower.windows(source.texts) if source.texts else []
            logits, report = cached_teacher_logits(self.cache_dir, source.name, windows,
                                                   {**key_base, **source.key}, make_runner,
                                                   self.windower.pad_token_id, a.eval_batch_size,
                                                   progress=self.show_progress)
            text_index = np.fromiter((w.text_index for w in windows), dtype=np.int64, count=len(windows))
            first = np.ones(len(windows), dtype=bool)
            first[1:] = text_index[1:] != text_index[:-1]
            if source.labels is not None:
                g = source.labels[text_index].astype(np.float32) if len(windows) else np.zeros((0, 9), np.float32)
                gw = first.astype(np.float32)
            else:
                g = np.zeros((len(windows), len(CATEGORY_SLUGS)), dtype=np.float32)
                gw = np.zeros(len(windows), dtype=np.float32)
            ids += [w.ids for w in windows]
            gold.append(g)
            gold_weight.append(gw)
            teacher.append(logits.astype(np.float32))
            sample_weight.append(source.weights[text_index].astype(np.float32))
            items[source.name] = {"texts": len(source.texts), "windows": len(windows), "gold_windows": int(gw.sum())}
            reports[source.name] = _report_dict(report)
        self.train_ids = ids
        self.train_lengths = [len(x) for x in ids]
        self.labels = torch.from_numpy(np.concatenate(gold))
        self.gold_weight = torch.from_numpy(np.concatenate(gold_weight))
        self.teacher_logits = torch.from_numpy(np.concatenate(teacher))
        w = np.concatenate(sample_weight)  # scaled to mean 1 over the windows: the loss keeps its scale
        self.row_weights = torch.from_numpy((w / max(float(w.mean()), 1e-12)).astype(np.float32) if len(w) else w)
        self.batches_per_epoch = math.ceil(len(ids) / a.batch_size)
        planned = a.epochs * self.batches_per_epoch
        self.total_steps = min(planned, a.max_steps) if a.max_steps else planned

        self.summary.update({
            "warm_start": None,
            "train_rows_per_epoch": len(ids),
            "batches_per_epoch": self.batches_per_epoch,
            "planned_steps": self.total_steps,
            "max_train_length": max(self.train_lengths) if ids else 0,
            "mean_train_length": round(float(np.mean(self.train_lengths)), 1) if ids else 0.0,
            "trained_categories": [s for s, on in zip(CATEGORY_SLUGS, self.trained, strict=True) if on],
            "untrained_categories": [s for s, on in zip(CATEGORY_SLUGS, self.trained, strict=True) if not on],
        })
        self.summary["distillation"] = {
            "teacher": t.to_dict(),
            "layers": len(self.kept_layers),
            "teacher_layers": t.layers,
            "kept_layers": self.kept_layers,
            "layer_map": a.layer_map,
            "alpha": a.alpha,
            "temperature": a.temperature,
            "teacher_init": self.teacher_init,
            "items": items,
            **notes,
            "teacher_logits": reports,
            "teacher_cache": str(self.cache_dir),
        }
        log.info("distillation: %s", json.dumps({"items": items, "teacher_logits": reports}, ensure_ascii=False))

    def _batch_loss(self, logits: torch.Tensor, y: torch.Tensor, batch: list[int]) -> torch.Tensor:
        a, dev = self.args, self.device
        index = torch.as_tensor(batch, dtype=torch.long)
        return distill_loss(logits, self.teacher_logits[index].to(dev), y, self.gold_weight[index].to(dev),
                            self.loss_mask.to(dev), self.pos_weight.to(dev), a.alpha, a.temperature,
                            self.row_weights[index].to(dev))


def _report_dict(report: CacheReport) -> dict[str, Any]:
    d = report.to_dict()
    d["key"] = d["key"][:16]
    return d


def distill(args: DistillArguments, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    return DistillTrainer(args, resume=resume, show_progress=show_progress).run()
