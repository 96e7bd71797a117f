"""Fine-tuning loop: length-grouped batches, masked BCE, dev evaluation, early stopping, resumable checkpoints.

Run directory (``runs/NAME``):
- ``run.json``: the arguments, data summary, trained categories and, at the end, the results;
- ``train.log``: one line per logged step and evaluation;
- ``checkpoint.pt``: the latest checkpoint (trainable weights, optimizer, position in the epoch, RNG),
  replaced atomically every ``save_every_steps`` so a run killed at any point continues with ``--resume``;
- ``best.safetensors``: the trainable weights of the best evaluation so far;
- ``snapshots/step-NNNNNN.safetensors``: trainable weights every ``snapshot_every_steps`` (the last
  ``average_last`` are kept and averaged at the end, see :meth:`Trainer._average_snapshots`);
- ``model/``: the final full model (best checkpoint or snapshot average); ``logits/``: dev and test text-level logits;
  ``calibration.json``, ``policy.yaml``, ``metrics.json``: calibration and thresholds fitted on dev.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, overload

import numpy as np
import torch
from torch import nn

from shenhe.models.cores import cpu_model, default_threads
from shenhe.models.policy import CATEGORY_SLUGS, load_policy
from shenhe.models.windowing import Window, WindowTokenizer, max_over_windows, pad_batch, score_windows
from shenhe.training.finetune.args import TrainingArguments
from shenhe.training.finetune.augment import Augmenter
from shenhe.training.finetune.dataset import (
    Split,
    epoch_rows,
    eval_subsample,
    length_grouped_batches,
    pos_weights,
    read_splits,
    sampling_plan,
    subsample,
)
from shenhe.training.finetune.errors import TrainError
from shenhe.training.finetune.fit import judge
from shenhe.training.finetune.model import MultiLabelClassifier, freeze, load_base, save_model
from shenhe.training.finetune.thresholds import (
    best_f1_macro,
    points_as_dicts,
)
from shenhe.training.finetune.warm_start import init_from

RUN_FILE = "run.json"
CHECKPOINT_FILE = "checkpoint.pt"
BEST_FILE = "best.safetensors"
LOG_FILE = "train.log"
MODEL_DIR = "model"
LOGITS_DIR = "logits"
SNAPSHOT_DIR = "snapshots"

log = logging.getLogger("shenhe.train")


@dataclass
class TrainState:
    """Where the run is; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0  # the next batch to run in this epoch
    global_step: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0  # pure optimisation time (for samples/s)
    elapsed_seconds: float = 0.0  # training-loop wall time, summed over resumes (for the time budget)
    best_metric: float = -1.0
    best_step: int = -1
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    stop_reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainError("--device cuda but no CUDA GPU is available")
    return torch.device(name)


def _setup_logging(out: Path) -> logging.Handler:
    handler = logging.FileHandler(out / LOG_FILE, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_safetensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@torch.inference_mode()
def text_logits(model: MultiLabelClassifier, windower: WindowTokenizer, normalized: list[str], batch_size: int,
                device: torch.device, progress: bool = False, desc: str = "eval") -> np.ndarray:
    """Text-level logits [n, 9]: every window scored, maximum over a text's windows."""
    was_training = model.training
    model.eval()
    windows: list[Window] = windower.windows(normalized)
    bar: Any = None
    if progress:
        from functools import partial

        from tqdm import tqdm

        bar = partial(tqdm, desc=desc, unit="batch", leave=False)

    def run(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
        return logits.float().cpu().numpy()

    out = score_windows(windows, run, windower.pad_token_id, batch_size, len(CATEGORY_SLUGS), bar)
    if was_training:
        model.train()
    best, _ = max_over_windows(out, windows, len(normalized))
    return best.astype(np.float32)


class Trainer:
    KIND = "train"  # the command that makes such runs (run.json "kind"; --resume checks it)

    def __init__(self, args: TrainingArguments, resume: bool = False, show_progress: bool = True) -> None:
        self.args = args
        self.resume = resume
        self.show_progress = show_progress
        self.out = args.out
        self.device = pick_device(args.device)
        self.state = TrainState()
        self._run_info: dict[str, Any] | None = None  # run.json's content while training

    # -- setup ---------------------------------------------------------------------------------------

    def _build_model(self) -> None:
        """``self.model``, ``self.tokenizer``, ``self.text_prefix``, ``self.windower`` and ``self.warm_start``
        (the base encoder with a fresh head, or warm-started; distill.py builds a student here instead)."""
        a = self.args
        encoder, self.tokenizer, self.text_prefix = load_base(a.base)
        pad_id = self.tokenizer.pad_token_id
        self.windower = WindowTokenizer(self.tokenizer.backend_tokenizer, a.max_length, a.window_stride,
                                        pad_token_id=0 if pad_id is None else int(pad_id),
                                        text_prefix=self.text_prefix)
        self.model = MultiLabelClassifier(encoder, dropout=a.dropout, pooling=a.pooling)
        self.warm_start: dict[str, Any] | None = None
        if a.init_from:  # also on resume: frozen tensors are not in checkpoints
            probe = self.windower.first_windows(self.dev_eval.normalized[:32])
            self.warm_start = init_from(self.model, self.tokenizer, Path(a.init_from), probe).to_dict()

    def _prepare(self) -> None:
        a = self.args
        torch.manual_seed(a.seed)
        np.random.seed(a.seed)
        threads = a.threads or default_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(threads)
        self.freeze_embeddings = a.freeze_embeddings if a.freeze_embeddings is not None else self.device.type == "cpu"

        splits = read_splits(a.data)
        full_train = splits["train"]
        counts = full_train.labels.sum(axis=0)
        self.trained = counts >= max(1, a.min_train_positives)
        if not self.trained.any():
            raise TrainError(f"{a.data}/train.jsonl: no category has {a.min_train_positives}+ positive rows")
        # Caps (optional) drop rows; the sampling plan then weighs the rows kept (nothing dropped).
        self.train_split = subsample(full_train, a.max_train_samples, a.max_per_source, a.rare_category_rows, a.seed)
        unique = self.train_split
        _ = unique.normalized  # normalise once; epochs draw rows (and their rewrites) from these
        smp = a.sampling
        self.plan = sampling_plan(unique, smp.source_power, smp.source_shares, smp.harmless_boost, a.oversample_rare)
        self.oversampled = self.plan.rare_factors
        self.augmenter = Augmenter(a.augment, a.seed) if a.augment.enabled else None
        self.augment_stats: dict[int, dict[str, Any]] = {}
        self._epoch_loaded = -1
        self.dev_split: Split = splits["dev"]
        self.test_split: Split | None = splits.get("test")
        self.dev_eval = eval_subsample(self.dev_split, a.eval_samples, a.seed)

        self._build_model()
        freeze(self.model, self.freeze_embeddings, a.freeze_layers)
        self.model.to(self.device)

        log.info("normalising and tokenising %d train rows", len(unique))
        windows = self.windower.first_windows(unique.normalized)
        self.unique_ids = [w.ids for w in windows]
        unique_lengths = [len(ids) for ids in self.unique_ids]
        # Sample weights (a record's ``weight``, e.g. reviewer labels above public ones) multiply a row's loss;
        # scaled to mean 1 over an epoch's expected draws, so the loss keeps its scale and a row of weight w
        # pulls w times as hard as a row of weight 1. (The sampling plan decides how often a row is drawn.)
        w = unique.weights.astype(np.float64) if unique.weights is not None else np.ones(len(unique))
        mean = float((w * self.plan.weights).sum() / max(self.plan.weights.sum(), 1e-12)) if len(w) else 1.0
        self.unique_row_weights = (w / max(mean, 1e-12)).astype(np.float32)
        self.pos_weight = torch.from_numpy(pos_weights(unique.labels, a.pos_weight_power, a.pos_weight_max,
                                                       weights=self.plan.weights))
        self.loss_mask = torch.from_numpy(self.trained.astype(np.float32))
        # Rows drawn per epoch are fixed by (seed, epoch), so the schedule is known before training starts.
        self.epoch_counts = [self.plan.epoch_counts(a.seed, e) for e in range(a.epochs)]
        self.epoch_batches = [math.ceil(int(c.sum()) / a.batch_size) for c in self.epoch_counts]
        self.batches_per_epoch = self.epoch_batches[0]
        planned = sum(self.epoch_batches)
        self.total_steps = min(planned, a.max_steps) if a.max_steps else planned

        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for name, p in self.model.encoder.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "LayerNorm" in name or "norm" in name.lower() else decay).append(p)
        groups: list[dict[str, Any]] = [
            {"params": decay, "lr": a.learning_rate, "weight_decay": a.weight_decay},
            {"params": no_decay, "lr": a.learning_rate, "weight_decay": 0.0},
            {"params": list(self.model.head.parameters()), "lr": a.head_learning_rate, "weight_decay": 0.0},
        ]
        groups = [g for g in groups if g["params"]]
        self.base_lrs = [g["lr"] for g in groups]
        self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)

        n_trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        n_total = sum(p.numel() for p in self.model.parameters())
        self.summary: dict[str, Any] = {
            "device": str(self.device),
            "warm_start": self.warm_start,
            "text_prefix": self.text_prefix,
            "threads": threads if self.device.type == "cpu" else None,
            # what the training time in run.json (state) was measured on; the model card reports both
            "machine": {"cpu": cpu_model(), "cores": default_threads()},
            "freeze_embeddings": self.freeze_embeddings,
            "trainable_parameters": n_trainable,
            "parameters": n_total,
            "train_rows": len(unique),
            "sample_weights": ({"weighted_rows": int(np.sum(unique.weights != 1.0)),
                                "by_source": unique.weights_by_source()} if unique.weighted else None),
            "train_rows_per_epoch": int(self.epoch_counts[0].sum()),
            "oversampled": self.oversampled,
            "sampling": self.plan.info,
            "augmentation": {"share": a.augment.share, "kinds": {k: w for k, w in a.augment.weights.items() if w > 0},
                             "seed": self.augmenter.seed, "epochs": {}} if self.augmenter else None,
            "train_rows_available": len(full_train),
            "dev_rows": len(self.dev_split),
            "dev_eval_rows": len(self.dev_eval),
            "test_rows": len(self.test_split) if self.test_split is not None else 0,
            "trained_categories": [s for s, t in zip(CATEGORY_SLUGS, self.trained, strict=True) if t],
            "untrained_categories": [s for s, t in zip(CATEGORY_SLUGS, self.trained, strict=True) if not t],
            "train_positives": {s: int(v) for s, v in zip(CATEGORY_SLUGS, self.train_split.labels.sum(axis=0), strict=True)},
            "dev_positives": self.dev_split.positives(),
            "pos_weight": {s: round(float(v), 3) for s, v in zip(CATEGORY_SLUGS, self.pos_weight, strict=True)},
            "sources": {name: sp.source_counts() for name, sp in
                        (("train", unique), ("dev", self.dev_split), ("test", self.test_split)) if sp is not None},
            "batches_per_epoch": self.batches_per_epoch,
            "planned_steps": self.total_steps,
            "max_train_length": max(unique_lengths) if unique_lengths else 0,
            "mean_train_length": round(float(np.mean(unique_lengths)), 1) if unique_lengths else 0.0,
        }

    # -- the rows of an epoch ------------------------------------------------------------------------

    def _load_epoch(self, epoch: int) -> None:
        """Token ids, lengths and labels of ``epoch``'s draws (a pure function of seed and epoch, so a resumed
        run sees the same rows and rewrites): rows in order, copies adjacent; augmented rows re-tokenised."""
        if self._epoch_loaded == epoch:
            return
        a, unique = self.args, self.train_split
        counts = self.epoch_counts[epoch] if epoch < len(self.epoch_counts) else self.plan.epoch_counts(a.seed, epoch)
        rows, copies = epoch_rows(counts)
        ids = [self.unique_ids[i] for i in rows]
        if self.augmenter is not None:
            t0 = time.perf_counter()
            harmful = unique.labels[rows].sum(axis=1) > 0
            rewritten, stats = self.augmenter.epoch_texts([unique.normalized[i] for i in rows],
                                                          [unique.ids[i] for i in rows], copies.tolist(),
                                                          harmful.tolist(), epoch)
            positions = sorted(rewritten)
            for j, w in zip(positions, self.windower.first_windows([rewritten[j] for j in positions]), strict=True):
                ids[j] = w.ids
            record = {**stats.to_dict(), "seconds": round(time.perf_counter() - t0, 1)}
            self.augment_stats[epoch] = record
            if self.summary.get("augmentation") is not None:
                self.summary["augmentation"]["epochs"][str(epoch)] = record
                if self._run_info is not None:  # on disk now: a resumed run keeps this epoch's record
                    _write_json(self.out / RUN_FILE, self._run_info)
            log.info("augmentation, epoch %d: %s", epoch, json.dumps(record, ensure_ascii=False))
        self.train_ids = ids
        self.train_lengths = [len(x) for x in ids]
        self.labels = torch.from_numpy(unique.labels[rows])
        self.row_weights = torch.from_numpy(self.unique_row_weights[rows])
        self._epoch_loaded = epoch

    # -- schedule ------------------------------------------------------------------------------------

    def _progress(self) -> float:
        """Fraction of the run done: by steps, or by the time budget if that comes first."""
        p = self.state.global_step / max(1, self.total_steps)
        if self.args.time_budget_minutes:
            p = max(p, self.state.elapsed_seconds / (60.0 * self.args.time_budget_minutes))
        return min(1.0, p)

    def _lr_factor(self) -> float:
        p, w = self._progress(), self.args.warmup_ratio
        if w > 0 and p < w:
            return max(p / w, 0.01)
        return max(0.0, (1.0 - p) / (1.0 - w))

    # -- checkpoints ---------------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        _atomic_torch_save({
            "trainable": {k: v.detach().cpu() for k, v in trainable_state(self.model).items()},
            "optimizer": self.optimizer.state_dict(),
            "state": self.state.to_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }, self.out / CHECKPOINT_FILE)

    def _restore(self) -> None:
        path = self.out / CHECKPOINT_FILE
        if not path.is_file():
            log.info("no checkpoint in %s: starting from step 0", self.out)
            return
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        own = trainable_state(self.model)
        if set(ckpt["trainable"]) != set(own):
            raise TrainError(f"{path}: trainable parameters differ from this run's model (different freeze settings?)")
        self._set_trainable(ckpt["trainable"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.state = TrainState(**ckpt["state"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng"):
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        log.info("resumed at step %d (epoch %d, batch %d)", self.state.global_step, self.state.epoch,
                 self.state.batch_in_epoch)

    def _save_best(self) -> None:
        _atomic_safetensors(trainable_state(self.model), self.out / BEST_FILE)

    def _load_best(self) -> None:
        from safetensors.torch import load_file

        path = self.out / BEST_FILE
        if not path.is_file():
            return
        self._set_trainable(load_file(str(path)))

    def _set_trainable(self, tensors: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            for k, p in trainable_state(self.model).items():
                p.copy_(tensors[k].to(p.device, p.dtype))

    # -- weight averaging ----------------------------------------------------------------------------

    def _snapshots(self) -> list[tuple[int, Path]]:
        """(step, file) of the saved snapshots, oldest first."""
        found = []
        for f in (self.out / SNAPSHOT_DIR).glob("step-*.safetensors"):
            try:
                found.append((int(f.name[len("step-"):-len(".safetensors")]), f))
            except ValueError:
                continue
        return sorted(found)

    def _snapshot(self) -> None:
        (self.out / SNAPSHOT_DIR).mkdir(exist_ok=True)
        _atomic_safetensors(trainable_state(self.model), self.out / SNAPSHOT_DIR / f"step-{self.state.global_step:06d}.safetensors")
        if self.args.average_last:  # only the last K are ever averaged: older ones would only fill the disk
            for _, old in self._snapshots()[:-self.args.average_last]:
                old.unlink(missing_ok=True)

    def _average_snapshots(self) -> dict[str, Any]:
        """Average the last ``average_last`` snapshots; keep the average when it scores at least as well on the
        dev subsample as the best checkpoint (already loaded), else restore that checkpoint."""
        from safetensors.torch import load_file

        chosen = self._snapshots()[-self.args.average_last:]
        record: dict[str, Any] = {"snapshot_steps": [step for step, _ in chosen], "used": False}
        if len(chosen) < 2:
            record["note"] = "fewer than 2 snapshots: nothing to average"
            return record
        own = trainable_state(self.model)
        kept = {k: p.detach().clone() for k, p in own.items()}
        total = {k: torch.zeros_like(p, dtype=torch.float32, device="cpu") for k, p in own.items()}
        for _, f in chosen:
            weights = load_file(str(f))
            if set(weights) != set(own):
                raise TrainError(f"{f}: trainable parameters differ from this run's model")
            for k in total:
                total[k] += weights[k].float()
        self._set_trainable({k: v / len(chosen) for k, v in total.items()})
        metric = self._dev_eval_metric("dev eval (average)")
        s = self.state
        used = metric >= s.best_metric
        if not used:
            self._set_trainable(kept)
        record.update(used=used, dev_eval_macro_f1=round(metric, 4), best_checkpoint_macro_f1=round(s.best_metric, 4),
                      best_checkpoint_step=s.best_step)
        log.info("average of %d snapshots (steps %d-%d): dev macro-F1 (%d texts) %.4f vs best checkpoint %.4f @ %d: %s",
                 len(chosen), chosen[0][0], chosen[-1][0], len(self.dev_eval), metric, s.best_metric, s.best_step,
                 "the average is the final model" if used else "the best checkpoint stays the final model")
        return record

    # -- evaluation ----------------------------------------------------------------------------------

    def _dev_eval_metric(self, desc: str) -> float:
        """Macro-F1 (best threshold per category) of the current weights on the dev subsample."""
        logits = text_logits(self.model, self.windower, self.dev_eval.normalized, self.args.eval_batch_size,
                             self.device, progress=self.show_progress, desc=desc)
        return best_f1_macro(logits, self.dev_eval.labels, self.trained)

    def _evaluate(self, reason: str) -> bool:
        """Evaluate on the dev subsample; True when training should stop early."""
        t0 = time.perf_counter()
        metric = self._dev_eval_metric("dev eval")
        s = self.state
        s.last_eval_step = s.global_step
        improved = metric > s.best_metric + 1e-6
        if improved:
            s.best_metric, s.best_step, s.evals_without_improvement = metric, s.global_step, 0
            self._save_best()
        else:
            s.evals_without_improvement += 1
        s.history.append({"step": s.global_step, "epoch": s.epoch, "dev_macro_f1": round(metric, 4),
                          "reason": reason, "seconds": round(time.perf_counter() - t0, 1)})
        log.info("eval (%s) step %d: dev macro-F1 (best threshold, %d texts) %.4f%s", reason, s.global_step,
                 len(self.dev_eval), metric, " (best)" if improved else f" (best {s.best_metric:.4f} @ {s.best_step})")
        return s.evals_without_improvement >= self.args.early_stopping_patience

    # -- the loop ------------------------------------------------------------------------------------

    def _step(self, batch: list[int]) -> float:
        ids_np, mask_np = pad_batch([Window(0, self.train_ids[i], 0, 0) for i in batch], self.windower.pad_token_id)
        ids = torch.from_numpy(ids_np).to(self.device)
        mask = torch.from_numpy(mask_np).to(self.device)
        y = self.labels[batch].to(self.device)
        factor = self._lr_factor()
        for g, lr in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            g["lr"] = lr * factor
        loss = self._batch_loss(self.model(ids, mask), y, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.args.grad_clip:
            nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.args.grad_clip)
        self.optimizer.step()
        return float(loss.detach())

    def _batch_loss(self, logits: torch.Tensor, y: torch.Tensor, batch: list[int]) -> torch.Tensor:
        """Masked, positive-weighted, sample-weighted BCE against the gold labels (distill.py mixes in the
        teacher's scores)."""
        per = nn.functional.binary_cross_entropy_with_logits(
            logits, y, pos_weight=self.pos_weight.to(self.device), reduction="none")
        cat_mask = self.loss_mask.to(self.device)
        rows = self.row_weights[batch].to(self.device).unsqueeze(1)  # sample weights (mean 1 over train)
        return (per * cat_mask * rows).sum() / (cat_mask.sum() * len(batch))  # untrained categories are masked

    def _budget_spent(self) -> bool:
        a, s = self.args, self.state
        if a.max_steps and s.global_step >= a.max_steps:
            s.stop_reason = f"max_steps {a.max_steps}"
            return True
        if a.time_budget_minutes and s.elapsed_seconds >= 60.0 * a.time_budget_minutes:
            s.stop_reason = f"time budget {a.time_budget_minutes:g} min"
            return True
        return False

    def _loop(self) -> None:
        from tqdm import tqdm

        a, s = self.args, self.state
        self.model.train()  # from_pretrained returns the encoder in eval mode (dropout off)
        bar = tqdm(total=self.total_steps, initial=min(s.global_step, self.total_steps), unit="step",
                   desc="train", disable=not self.show_progress, dynamic_ncols=True)
        window_loss: list[float] = []
        window_samples, window_time = 0, 0.0
        stop = bool(s.stop_reason)
        while s.epoch < a.epochs and not stop:
            self._load_epoch(s.epoch)
            batches = length_grouped_batches(self.train_lengths, a.batch_size, a.seed + s.epoch)
            while s.batch_in_epoch < len(batches):
                if self._budget_spent():
                    stop = True
                    break
                batch = batches[s.batch_in_epoch]
                t0 = time.perf_counter()
                loss = self._step(batch)
                dt = time.perf_counter() - t0
                s.batch_in_epoch += 1
                s.global_step += 1
                s.samples_seen += len(batch)
                s.train_seconds += dt
                s.elapsed_seconds += dt
                window_loss.append(loss)
                window_samples += len(batch)
                window_time += dt
                bar.update(1)
                if s.global_step % a.log_every_steps == 0:
                    sps = window_samples / max(window_time, 1e-9)
                    bar.set_postfix(loss=f"{np.mean(window_loss):.4f}", sps=f"{sps:.1f}", epoch=s.epoch)
                    log.info("step %d epoch %d loss %.4f lr %.2e samples/s %.1f", s.global_step, s.epoch,
                             float(np.mean(window_loss)), self.optimizer.param_groups[0]["lr"], sps)
                    window_loss, window_samples, window_time = [], 0, 0.0
                # A step evaluation right after an epoch-end one (under half an interval) would repeat it.
                if (a.eval_every_steps and s.global_step % a.eval_every_steps == 0
                        and s.global_step - s.last_eval_step >= a.eval_every_steps // 2):
                    t1 = time.perf_counter()
                    if self._evaluate("steps"):
                        s.stop_reason = f"early stopping: {a.early_stopping_patience} evaluations without improvement"
                        stop = True
                    s.elapsed_seconds += time.perf_counter() - t1
                if a.snapshot_every_steps and s.global_step % a.snapshot_every_steps == 0:
                    self._snapshot()
                if s.global_step % a.save_every_steps == 0 or stop:
                    self._checkpoint()
                if stop:
                    break
            if stop:
                break
            s.epoch += 1
            s.batch_in_epoch = 0
            if s.last_eval_step != s.global_step:
                t1 = time.perf_counter()
                if self._evaluate(f"epoch {s.epoch}"):
                    s.stop_reason = f"early stopping: {a.early_stopping_patience} evaluations without improvement"
                    stop = True
                s.elapsed_seconds += time.perf_counter() - t1
            self._checkpoint()
        bar.close()
        if not s.stop_reason:
            s.stop_reason = f"{a.epochs} epochs done"
        if s.last_eval_step != s.global_step and s.global_step > 0:
            self._evaluate("final")
        if a.snapshot_every_steps and s.global_step > 0 and s.global_step not in dict(self._snapshots()):
            self._snapshot()  # the final weights are the last snapshot
        self._checkpoint()

    # -- the end: full dev/test, calibration, thresholds ---------------------------------------------

    def _finish(self) -> dict[str, Any]:
        a = self.args
        self._load_best()
        if a.average_last:
            self.summary["averaging"] = self._average_snapshots()
        model_dir = self.out / MODEL_DIR
        save_model(self.model, self.tokenizer, model_dir, extra={
            "max_length": a.max_length, "window_stride": a.window_stride, "base_encoder": a.base,
            "text_prefix": self.text_prefix,
            "trained_categories": self.summary["trained_categories"],
        })
        logits_dir = self.out / LOGITS_DIR
        logits_dir.mkdir(exist_ok=True)
        results: dict[str, np.ndarray] = {}
        for split in (self.dev_split, self.test_split):
            if split is None:
                continue
            log.info("scoring full %s (%d texts)", split.name, len(split))
            lg = text_logits(self.model, self.windower, split.normalized, a.eval_batch_size, self.device,
                             progress=self.show_progress, desc=f"{split.name}")
            np.save(logits_dir / f"{split.name}.npy", lg)
            results[split.name] = lg
        judged = judge(results["dev"], results.get("test"), self.dev_split, self.test_split, self.trained,
                       a.calibration, load_policy())
        calibration, points, tuned = judged.calibration, judged.points, judged.policy
        metrics: dict[str, Any] = {"model": "bert", "base_encoder": a.base, "dev": judged.dev_metrics}
        if judged.test_metrics is not None:
            metrics["test"] = judged.test_metrics
        metrics["operating_points"] = points_as_dicts(points)
        _write_json(self.out / "calibration.json", {k: v.model_dump() for k, v in calibration.items()})
        (self.out / "policy.yaml").write_text(tuned.to_yaml(), encoding="utf-8")
        _write_json(self.out / "metrics.json", metrics)
        return metrics

    def _keep_augmentation_record(self, run_file: Path) -> None:
        """On resume, keep the augmentation statistics of the epochs the earlier process ran."""
        if not self.summary.get("augmentation") or not run_file.is_file():
            return
        try:
            old = json.loads(run_file.read_text(encoding="utf-8"))["summary"].get("augmentation") or {}
        except (ValueError, KeyError):
            return
        self.summary["augmentation"]["epochs"] = {**old.get("epochs", {}), **self.summary["augmentation"]["epochs"]}

    def run(self) -> dict[str, Any]:
        self.out.mkdir(parents=True, exist_ok=True)
        handler = _setup_logging(self.out)
        try:
            run_file = self.out / RUN_FILE
            if not self.resume and (self.out / CHECKPOINT_FILE).exists():
                raise TrainError(f"{self.out} already holds a run: continue it with --resume, or choose another --out")
            log.info("run %s: base %s, data %s, device %s", self.out, self.args.base, self.args.data, self.device)
            self._prepare()
            if self.resume:
                self._restore()
                self._keep_augmentation_record(run_file)
                # A larger budget or more epochs on resume continue a finished run; early stopping stays final.
                if not self.state.stop_reason.startswith("early stopping"):
                    self.state.stop_reason = ""
            info: dict[str, Any] = {"arch": "bert", "kind": self.KIND, "status": "training", "args": self.args.to_json(),
                                    "summary": self.summary}
            _write_json(run_file, info)
            self._run_info = info
            log.info("summary %s", json.dumps(self.summary, ensure_ascii=False))
            self._loop()
            s = self.state
            sps = s.samples_seen / s.train_seconds if s.train_seconds else 0.0
            log.info("stopped: %s after %d steps (%d samples, %.1f samples/s, best dev macro-F1 %.4f at step %d)",
                     s.stop_reason, s.global_step, s.samples_seen, sps, s.best_metric, s.best_step)
            metrics = self._finish()
            info.update(status="done", state=s.to_dict(), train_samples_per_second=round(sps, 2),
                        dev_macro_f1=metrics["dev"]["macro_f1"],
                        test_macro_f1=metrics.get("test", {}).get("macro_f1"))
            _write_json(run_file, info)
            log.info("done: dev macro-F1 %.4f%s", metrics["dev"]["macro_f1"],
                     f", test macro-F1 {metrics['test']['macro_f1']:.4f}" if "test" in metrics else "")
            return info
        finally:
            log.removeHandler(handler)
            handler.close()


def train(args: TrainingArguments, resume: bool = False, show_progress: bool = True) -> dict[str, Any]:
    return Trainer(args, resume=resume, show_progress=show_progress).run()


RunArgs = TypeVar("RunArgs", bound=TrainingArguments)


@overload
def load_run_args(out: Path) -> TrainingArguments: ...
@overload
def load_run_args(out: Path, cls: type[RunArgs], kind: str) -> RunArgs: ...
def load_run_args(out: Path, cls: type[TrainingArguments] = TrainingArguments, kind: str = "train") -> TrainingArguments:
    """The arguments of the run in ``out`` (to resume it); ``kind`` is the command that made it ("train", "distill")."""
    run_file = out / RUN_FILE
    if not run_file.is_file():
        raise TrainError(f"{out}: no {RUN_FILE} to resume from")
    info = json.loads(run_file.read_text(encoding="utf-8"))
    made_by = info.get("kind", "train")
    if made_by != kind:
        raise TrainError(f"{out}: a `shenhe {made_by}` run; continue it with `shenhe {made_by} --resume --out {out}`")
    args = cls.from_json(info["args"])
    args.out = Path(out)  # the folder it is in now: a run that was moved or copied resumes where it is
    return args
