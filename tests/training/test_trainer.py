"""Training: masked categories, resumable at any step (same weights as an uninterrupted run), clean errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shenhe.training.finetune.dataset import length_grouped_batches, pos_weights, read_split, subsample

DATA = Path(__file__).parent / "data"


def _args(encoder: Path, out: Path, **kw):
    from shenhe.training.finetune.args import TrainingArguments

    base: dict[str, Any] = dict(base=str(encoder), data=DATA, out=out, epochs=2, max_steps=8, batch_size=8, eval_batch_size=16,
                learning_rate=1e-3, head_learning_rate=1e-2, max_length=48, window_stride=8, eval_every_steps=3,
                eval_samples=None, save_every_steps=2, threads=1, device="cpu", min_train_positives=2,
                early_stopping_patience=100)
    base.update(kw)
    return TrainingArguments(**base)


def test_run_records_trained_categories_and_results(tiny_run: Path) -> None:
    info = json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))
    s = info["summary"]
    assert info["status"] == "done"
    assert set(s["untrained_categories"]) == {"constitution", "national_security", "national_honor", "religion_cult"}
    assert "insult_defamation" in s["trained_categories"]
    assert info["state"]["global_step"] == 12 and info["state"]["stop_reason"] == "max_steps 12"
    assert info["train_samples_per_second"] > 0
    assert (tiny_run / "train.log").read_text(encoding="utf-8").count("samples/s") >= 1
    for name in ("model/classifier.json", "model/head.safetensors", "logits/dev.npy", "logits/test.npy",
                 "calibration.json", "policy.yaml", "metrics.json", "best.safetensors", "checkpoint.pt"):
        assert (tiny_run / name).is_file(), name


def test_interrupted_run_resumes_to_the_same_weights(tiny_run: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from shenhe.training.finetune.trainer import Trainer, train

    encoder = tiny_run.parent / "encoder"
    straight = _args(encoder, tmp_path / "straight")
    train(straight, show_progress=False)

    broken = _args(encoder, tmp_path / "broken")
    real_step = Trainer._step

    def crash_at_step_6(self, batch):
        if self.state.global_step == 5:
            raise KeyboardInterrupt  # like Ctrl-C or a killed job between checkpoints
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", crash_at_step_6)
    with pytest.raises(KeyboardInterrupt):
        train(broken, show_progress=False)
    monkeypatch.setattr(Trainer, "_step", real_step)
    assert torch.load(broken.out / "checkpoint.pt", weights_only=True)["state"]["global_step"] == 4
    train(broken, resume=True, show_progress=False)

    a = torch.load(straight.out / "checkpoint.pt", weights_only=True)
    b = torch.load(broken.out / "checkpoint.pt", weights_only=True)
    assert a["state"]["global_step"] == b["state"]["global_step"] == 8
    for k, v in a["trainable"].items():
        assert torch.allclose(v, b["trainable"][k], atol=1e-6), k
    la = np.load(straight.out / "logits" / "dev.npy")
    lb = np.load(broken.out / "logits" / "dev.npy")
    assert np.allclose(la, lb, atol=1e-5)


def test_existing_run_needs_resume(tiny_run: Path) -> None:
    from shenhe.training.finetune.errors import TrainError
    from shenhe.training.finetune.trainer import load_run_args, train

    args = load_run_args(tiny_run)
    with pytest.raises(TrainError, match="--resume"):
        train(args, show_progress=False)


def test_untrained_categories_are_masked_from_the_loss() -> None:
    import torch

    labels = np.zeros((4, 9), dtype=np.float32)
    labels[0, 7] = 1
    w = pos_weights(labels, power=0.5, max_weight=30.0)
    assert w[7] == pytest.approx(np.sqrt(3.0)) and w[0] == 1.0
    mask = torch.tensor([0.0] * 7 + [1.0, 0.0])
    logits = torch.zeros(4, 9, requires_grad=True)
    per = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels),
                                                               pos_weight=torch.from_numpy(w), reduction="none")
    ((per * mask).sum() / (mask.sum() * 4)).backward()
    assert logits.grad is not None
    assert torch.count_nonzero(logits.grad[:, :7]) == 0 and torch.count_nonzero(logits.grad[:, 7]) == 4


def test_subsample_is_deterministic_and_keeps_rare_positives() -> None:
    train = read_split(DATA / "train.jsonl")
    a = subsample(train, max_rows=20, max_per_source=None, rare_category_rows=100, seed=1)
    b = subsample(train, max_rows=20, max_per_source=None, rare_category_rows=100, seed=1)
    assert a.ids == b.ids
    # Every positive of every (rare) category is kept, even past the cap.
    assert (a.labels.sum(axis=0) == train.labels.sum(axis=0)).all()
    c = subsample(train, max_rows=None, max_per_source=3, rare_category_rows=1, seed=1)
    assert max(c.source_counts().values()) <= 3


def test_length_grouped_batches_cover_every_row_once_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 128, size=1000).tolist()
    batches = length_grouped_batches(lengths, 32, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert batches == length_grouped_batches(lengths, 32, seed=3)
    waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)
    random_waste = sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b)
                       for b in [list(range(k, min(k + 32, 1000))) for k in range(0, 1000, 32)])
    assert waste < random_waste / 5


def test_finished_run_continues_with_a_larger_budget(tiny_run: Path, tmp_path: Path) -> None:
    import torch

    from shenhe.training.finetune.trainer import load_run_args, train

    args = _args(tiny_run.parent / "encoder", tmp_path / "run", max_steps=4)
    train(args, show_progress=False)
    more = load_run_args(args.out)
    more.max_steps = 7
    info = train(more, resume=True, show_progress=False)
    assert info["status"] == "done" and info["state"]["global_step"] == 7
    assert info["state"]["stop_reason"] == "max_steps 7"
    ckpt = torch.load(args.out / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["global_step"] == 7
    assert [h["step"] for h in info["state"]["history"]][-1] == 7


def test_oversampling_repeats_rare_positives_only() -> None:
    from shenhe.training.finetune.dataset import oversample_rare

    train = read_split(DATA / "train.jsonl")
    out, factors = oversample_rare(train, min_positives=14)
    assert factors and all(1 < f <= 8 for f in factors.values())
    before, after = train.labels.sum(axis=0), out.labels.sum(axis=0)
    for c in range(9):
        if before[c]:
            assert after[c] >= min(14, before[c] * 8) or after[c] == before[c] * 8
    normal = train.labels.sum(axis=1) == 0
    assert (out.labels.sum(axis=1) == 0).sum() == normal.sum()  # negatives are not repeated
    assert oversample_rare(train, 0)[0] is train


def test_oversampling_reaches_the_run(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.trainer import train

    info = train(_args(tiny_run.parent / "encoder", tmp_path / "run", max_steps=2, oversample_rare=14),
                 show_progress=False)
    s = info["summary"]
    assert s["oversampled"] and s["train_rows_per_epoch"] > s["train_rows"] == 49
    assert sum(s["sources"]["train"].values()) == 49  # licences/row counts report unique rows


def test_resume_on_the_command_line_can_change_budget_and_patience(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from shenhe.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    before = json.loads((run / "run.json").read_text(encoding="utf-8"))
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--max-steps", "14", "--patience", "9",
                                   "--quiet"])
    assert res.exit_code == 0, res.output
    after = json.loads((run / "run.json").read_text(encoding="utf-8"))
    assert after["args"]["early_stopping_patience"] == 9 != before["args"]["early_stopping_patience"]
    assert after["args"]["max_steps"] == 14 and after["state"]["global_step"] == 14
    # A copied run resumes where it is now, never in the folder it was copied from.
    assert after["args"]["out"] == str(run)
    assert json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))["state"]["global_step"] == 12
    # Everything else is the run's own: a resume never silently changes the recipe.
    changed = ("early_stopping_patience", "max_steps", "out")
    assert {k: v for k, v in after["args"].items() if k not in changed} == \
        {k: v for k, v in before["args"].items() if k not in changed}


def test_snapshots_are_averaged_into_the_final_model(tiny_run: Path, tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    from shenhe.training.finetune.trainer import train

    args = _args(tiny_run.parent / "encoder", tmp_path / "avg", max_steps=7, snapshot_every_steps=2, average_last=3)
    info = train(args, show_progress=False)
    snaps = sorted(p.name for p in (args.out / "snapshots").iterdir())
    # every 2 steps (2, 4, 6) plus the final weights (7); only the last 3 are kept
    assert snaps == ["step-000004.safetensors", "step-000006.safetensors", "step-000007.safetensors"]
    av = info["summary"]["averaging"]
    assert av["snapshot_steps"] == [4, 6, 7]
    assert isinstance(av["dev_eval_macro_f1"], float)
    assert av["used"] == (av["dev_eval_macro_f1"] >= av["best_checkpoint_macro_f1"])

    final = load_file(str(args.out / "model" / "head.safetensors"))["weight"]
    weights = [load_file(str(args.out / "snapshots" / n)) for n in snaps]
    mean = sum(w["head.weight"] for w in weights) / 3
    assert isinstance(mean, torch.Tensor)
    best = load_file(str(args.out / "best.safetensors"))["head.weight"]
    expected = mean if av["used"] else best
    assert np.allclose(final.numpy(), expected.numpy(), atol=1e-6)
    assert not np.allclose(mean.numpy(), best.numpy())  # the two candidates differ, so the check above means something


def test_averaging_can_be_added_to_a_finished_run(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from shenhe.training.finetune.trainer import load_run_args, train

    args = _args(tiny_run.parent / "encoder", tmp_path / "run", max_steps=6, snapshot_every_steps=2)
    train(args, show_progress=False)
    assert sorted(p.name for p in (args.out / "snapshots").iterdir()) == [
        "step-000002.safetensors", "step-000004.safetensors", "step-000006.safetensors"]
    copy = tmp_path / "copy"
    shutil.copytree(args.out, copy)
    again = load_run_args(copy)
    again.average_last = 2
    info = train(again, resume=True, show_progress=False)
    assert info["state"]["global_step"] == 6  # nothing retrained: the budget was spent
    assert info["summary"]["averaging"]["snapshot_steps"] == [4, 6]


@pytest.mark.parametrize("kw, message", [
    ({"average_last": 3}, "needs snapshot_every_steps"),
    ({"average_last": 1, "snapshot_every_steps": 5}, "at least 2"),
    ({"snapshot_every_steps": 0}, ">= 1"),
])
def test_averaging_arguments_are_checked(tmp_path: Path, kw: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _args(tmp_path / "encoder", tmp_path / "out", **kw)


def test_no_step_evaluation_right_after_an_epoch_end_one(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.trainer import train

    info = train(_args(tiny_run.parent / "encoder", tmp_path / "run", max_steps=None, eval_every_steps=4),
                 show_progress=False)
    assert info["summary"]["batches_per_epoch"] == 7
    # step 8 is a multiple of 4 but one step after the epoch-end evaluation at 7: skipped
    assert [(h["step"], h["reason"]) for h in info["state"]["history"]] == [
        (4, "steps"), (7, "epoch 1"), (12, "steps"), (14, "epoch 2")]


def test_resume_rejects_averaging_without_snapshots_in_one_line(tiny_run: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from shenhe.cli import app

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    res = CliRunner().invoke(app, ["train", "--resume", "--out", str(run), "--average-last", "4", "--quiet"])
    assert res.exit_code != 0
    lines = [ln for ln in res.output.strip().splitlines() if ln]
    assert len(lines) == 1 and "average_last needs snapshot_every_steps" in lines[0], res.output
