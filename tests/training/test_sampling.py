"""Sampling weights: sources balanced and rare categories raised without dropping rows; the trainer draws
each epoch's rows (and their disguised rewrites) deterministically, so a resumed run equals an uninterrupted one."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from shenhe.models.policy import CATEGORY_SLUGS
from shenhe.training.finetune.dataset import (
    Split,
    epoch_rows,
    oversample_rare,
    pos_weights,
    read_split,
    sampling_plan,
)

DATA = Path(__file__).parent / "data"


def _split(sources: list[str], labels: list[list[str]]) -> Split:
    index = {s: c for c, s in enumerate(CATEGORY_SLUGS)}
    y = np.zeros((len(sources), len(CATEGORY_SLUGS)), dtype=np.float32)
    for i, labs in enumerate(labels):
        for s in labs:
            y[i, index[s]] = 1
    return Split("train", [f"r{i}" for i in range(len(sources))], [f"text {i}" for i in range(len(sources))], y,
                 sources)


@pytest.fixture
def skewed() -> Split:
    """A big source (900 rows, half harmful), a small one (100) and a tiny one with a rare category (20)."""
    sources = ["big"] * 900 + ["small"] * 100 + ["tiny"] * 20
    labels = ([["insult_defamation"]] * 450 + [[]] * 450 + [["ethnic_hatred"]] * 30 + [[]] * 70
              + [["religion_cult"]] * 10 + [[]] * 10)
    return _split(sources, labels)


def _share(plan, split: Split, source: str) -> float:  # type: ignore[no-untyped-def]
    rows = np.array(split.sources) == source
    return float(plan.weights[rows].sum() / plan.weights.sum())


def test_everything_off_draws_every_row_once(skewed: Split) -> None:
    plan = sampling_plan(skewed)
    assert (plan.weights == 1).all() and (plan.epoch_counts(0, 5) == 1).all()
    natural = sampling_plan(skewed, source_power=1.0)  # natural shares: exactly the same, not 0.9999...
    assert (natural.weights == 1).all() and (natural.epoch_counts(0, 5) == 1).all()


@pytest.mark.parametrize("power", [0.0, 0.5, 1.0])
def test_source_power_sets_each_sources_share_and_keeps_the_epoch_size(skewed: Split, power: float) -> None:
    plan = sampling_plan(skewed, source_power=power)
    mass = {"big": 900 ** power, "small": 100 ** power, "tiny": 20 ** power}
    for s, m in mass.items():
        assert _share(plan, skewed, s) == pytest.approx(m / sum(mass.values()))
        assert plan.info["sources"][s]["epoch_share"] == pytest.approx(m / sum(mass.values()), abs=1e-4)
    assert plan.weights.sum() == pytest.approx(len(skewed))
    assert (plan.weights > 0).all()  # no row is dropped: a down-weighted row is still drawn now and then


def test_fixed_source_shares_and_harmless_boost(skewed: Split) -> None:
    plan = sampling_plan(skewed, source_power=0.5, source_shares={"tiny": 0.1, "nowhere": 0.2},
                         harmless_boost={"big": 3.0})
    assert _share(plan, skewed, "tiny") == pytest.approx(0.1)
    # the rest goes to the other sources by rows ** 0.5 (30 : 10); a named source not in the data is reported
    assert _share(plan, skewed, "big") == pytest.approx(0.9 * 30 / 40)
    assert _share(plan, skewed, "small") == pytest.approx(0.9 * 10 / 40)
    assert plan.info["unknown_sources"] == ["nowhere"]
    big = np.array(skewed.sources) == "big"
    harmless = skewed.labels.sum(axis=1) == 0
    # within big, a harmless row weighs 3x a harmful one, and big keeps its share
    assert plan.weights[big & harmless][0] == pytest.approx(3 * plan.weights[big & ~harmless][0])
    unboosted = sampling_plan(skewed, source_power=0.5, source_shares={"tiny": 0.1, "nowhere": 0.2})
    assert _share(plan, skewed, "big") == pytest.approx(_share(unboosted, skewed, "big"))


def test_rare_categories_are_raised_on_the_weighted_counts(skewed: Split) -> None:
    natural = sampling_plan(skewed, oversample_rare=40)
    assert natural.rare_factors == {"ethnic_hatred": 2, "religion_cult": 4}
    balanced = sampling_plan(skewed, source_power=1.0, source_shares={"small": 0.01}, oversample_rare=40)
    # small's 30 ethnic_hatred rows are expected 0.01 * 1020 * 30 / 100 = 3 times: raised the most (8x cap)
    assert balanced.rare_factors["ethnic_hatred"] == 8
    eh = skewed.labels[:, CATEGORY_SLUGS.index("ethnic_hatred")] > 0
    assert balanced.info["expected_positives_per_epoch"]["ethnic_hatred"] == pytest.approx(
        float(balanced.weights[eh].sum()), abs=0.1)


def test_oversampling_without_source_weights_is_the_former_repetition() -> None:
    train = read_split(DATA / "train.jsonl")
    counts = train.labels.sum(axis=0)
    expected = np.ones(len(train), dtype=np.int64)  # the rule as it was written before sampling weights
    for c in range(len(CATEGORY_SLUGS)):
        if 0 < counts[c] < 14:
            rows = train.labels[:, c] > 0
            expected[rows] = np.maximum(expected[rows], min(8, int(np.ceil(14 / counts[c]))))
    plan = sampling_plan(train, oversample_rare=14)
    for epoch in range(3):
        assert (plan.epoch_counts(42, epoch) == expected).all()
    out, _ = oversample_rare(train, 14)
    assert out.ids == [train.ids[i] for i in np.repeat(np.arange(len(train)), expected)]
    # the BCE positive weights of the weighted epoch are those of the repeated rows
    assert np.array_equal(pos_weights(train.labels, 0.5, 30.0, weights=plan.weights),
                          pos_weights(out.labels, 0.5, 30.0))


def test_fractional_weights_round_to_neighbouring_counts_with_the_right_mean(skewed: Split) -> None:
    plan = sampling_plan(skewed, source_power=0.0)  # big rows ~0.38, tiny rows ~17
    a, b = plan.epoch_counts(1, 0), plan.epoch_counts(1, 0)
    assert (a == b).all() and not (a == plan.epoch_counts(1, 1)).all()
    assert ((a == np.floor(plan.weights)) | (a == np.ceil(plan.weights))).all()
    mean = np.mean([plan.epoch_counts(1, e) for e in range(300)], axis=0)
    assert np.abs(mean - plan.weights).max() < 0.25
    assert abs(mean.sum() - plan.weights.sum()) < 5
    rows, copies = epoch_rows(a)
    assert len(rows) == a.sum() and Counter(rows.tolist()) == {i: int(n) for i, n in enumerate(a) if n}
    assert all(copies[j] == (copies[j - 1] + 1 if rows[j] == rows[j - 1] else 0) for j in range(1, len(rows)))


# --------------------------------------------------------------------------- the trainer


def _args(encoder: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    from shenhe.training.finetune.args import TrainingArguments

    base = dict(base=str(encoder), data=DATA, out=out, epochs=2, max_steps=8, batch_size=8, eval_batch_size=16,
                learning_rate=1e-3, head_learning_rate=1e-2, max_length=48, window_stride=8, eval_every_steps=3,
                eval_samples=None, save_every_steps=2, threads=1, device="cpu", min_train_positives=2,
                early_stopping_patience=100)
    base.update(kw)
    return TrainingArguments(**base)


def _on(encoder: Path, out: Path, **kw):  # type: ignore[no-untyped-def]
    from shenhe.training.finetune.args import AugmentConfig, SamplingConfig

    return _args(encoder, out, sampling=SamplingConfig(source_power=0.0, harmless_boost={"fixture": 1.5}),
                 augment=AugmentConfig(share=0.6), oversample_rare=12, **kw)


def test_epoch_rows_keep_their_labels_and_disguised_rows_are_retokenised(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.trainer import Trainer

    t = Trainer(_on(tiny_run.parent / "encoder", tmp_path / "run"), show_progress=False)
    t._prepare()
    unique = t.train_split
    for epoch in (0, 1):
        t._load_epoch(epoch)
        rows, _ = epoch_rows(t.epoch_counts[epoch])
        assert np.array_equal(t.labels.numpy(), unique.labels[rows])  # labels unchanged, row by row
        changed = [j for j, i in enumerate(rows) if t.train_ids[j] != t.unique_ids[i]]
        stats = t.augment_stats[epoch]
        assert len(changed) == stats["changed"] > 0
        assert stats["rows"] == len(rows) == int(t.epoch_counts[epoch].sum())
    assert len(t.epoch_counts[0]) == len(unique) and t.batches_per_epoch == int(np.ceil(t.epoch_counts[0].sum() / 8))


def test_a_run_with_sampling_and_augmentation_records_them_and_resumes_to_the_same_weights(
        tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from shenhe.training.finetune.trainer import Trainer, train

    encoder = tiny_run.parent / "encoder"
    straight = _on(encoder, tmp_path / "straight", max_steps=14)
    info = train(straight, show_progress=False)
    s = info["summary"]
    # equal source shares (power 0), then the rare categories' rows raised a little more in the smaller source
    assert s["sampling"]["sources"]["fixture_b"]["epoch_share"] == pytest.approx(0.5, abs=0.05)
    assert s["sampling"]["sources"]["fixture_b"]["natural_share"] == pytest.approx(16 / 49, abs=1e-4)
    assert s["sampling"]["rare_factors"] and s["train_rows"] == 49
    aug = s["augmentation"]
    assert aug["share"] == 0.6 and set(aug["epochs"]) == {"0", "1"}
    assert all(e["changed"] > 0 for e in aug["epochs"].values())
    log = (straight.out / "train.log").read_text(encoding="utf-8")
    assert log.count("augmentation, epoch") == 2

    broken = _on(encoder, tmp_path / "broken", max_steps=14)
    real_step = Trainer._step

    def crash(self, batch):  # type: ignore[no-untyped-def]
        if self.state.global_step == 12:  # in the second epoch (11 batches in the first)
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(Trainer, "_step", crash)
    with pytest.raises(KeyboardInterrupt):
        train(broken, show_progress=False)
    monkeypatch.setattr(Trainer, "_step", real_step)
    resumed = train(broken, resume=True, show_progress=False)
    a = torch.load(straight.out / "checkpoint.pt", weights_only=True)
    b = torch.load(broken.out / "checkpoint.pt", weights_only=True)
    assert info["summary"]["batches_per_epoch"] == 11
    assert a["state"]["global_step"] == b["state"]["global_step"] == 14
    for k, v in a["trainable"].items():
        assert torch.allclose(v, b["trainable"][k], atol=1e-6), k
    # the epoch the first process ran is still in the record after the resume
    def no_time(epochs: dict) -> dict:
        return {k: {f: v for f, v in e.items() if f != "seconds"} for k, e in epochs.items()}

    assert no_time(resumed["summary"]["augmentation"]["epochs"]) == no_time(aug["epochs"])


def test_command_line_options_reach_the_run(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shenhe.cli import app

    common = ["--base", str(tiny_run.parent / "encoder"), "--data", str(DATA), "--max-steps", "2",
              "--max-length", "48", "--stride", "8", "--batch-size", "8", "--threads", "1",
              "--min-train-positives", "2", "--eval-every-steps", "0", "--quiet"]
    out = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--out", str(out), *common, "--augment-share", "0.4",
                                   "--augment-kinds", "traditional=0,insert=2", "--source-power", "0.5",
                                   "--source-share", "fixture_b=0.3", "--harmless-boost", "fixture=2"])
    assert res.exit_code == 0, res.output
    args = json.loads((out / "run.json").read_text(encoding="utf-8"))["args"]
    assert args["augment"]["share"] == 0.4
    assert args["augment"]["weights"] == {"homophone": 0.4, "lookalike": 0.3, "insert": 2.0, "traditional": 0.0}
    assert args["sampling"] == {"source_power": 0.5, "source_shares": {"fixture_b": 0.3},
                                "harmless_boost": {"fixture": 2.0}}
    plain = tmp_path / "plain"
    assert CliRunner().invoke(app, ["train", "--out", str(plain), *common]).exit_code == 0
    args = json.loads((plain / "run.json").read_text(encoding="utf-8"))["args"]
    assert args["augment"]["share"] == 0.0 and args["sampling"]["source_power"] is None  # off unless asked
    for bad, message in ((["--source-share", "fixture_b"], "--source-share: expected NAME=NUMBER"),
                         (["--augment-kinds", "pinyin=1"], "unknown augmentation kind")):
        res = CliRunner().invoke(app, ["train", "--out", str(tmp_path / "bad"), *common, *bad])
        lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
        assert res.exit_code != 0 and len(lines) == 1 and message in lines[0], res.output


def test_the_model_card_says_how_the_model_was_sampled_and_disguised(tiny_run: Path, tmp_path: Path) -> None:
    from shenhe.training.finetune.export import ExportOptions, export_bundle
    from shenhe.training.finetune.trainer import train

    args = _on(tiny_run.parent / "encoder", tmp_path / "run", max_steps=3)
    train(args, show_progress=False)
    bundle = export_bundle(ExportOptions(run=args.out, out=tmp_path / "bundle", name="tiny", version="0.0.1",
                                         threads=1, show_progress=False, allow_parity_failure=True,
                                         quantization="dynamic"))
    training = json.loads((bundle / "metrics.json").read_text(encoding="utf-8"))["training"]
    assert training["augmentation"]["share"] == 0.6 and training["sampling"]["source_power"] == 0.0
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "Obfuscation augmentation: 60% of training texts" in card and "other than the evaluation" in card
    assert "Sampling weights (no row dropped): source shares ∝ rows^0.0" in card and "fixture_b " in card
