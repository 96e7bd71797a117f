"""Retraining data (training/data/retrain.py) and sample weights in training (training/finetune)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from shenhe.training.data.retrain import RetrainDataError, assemble, held_apart
from shenhe.training.finetune.dataset import DataError, read_split

DATA = Path(__file__).parent / "data"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _reviewed(n: int = 40) -> list[dict]:
    out = [{"id": f"review:{i:032x}", "text": f"审核过的第{i}句话，真是个废物", "labels": ["insult_defamation"]}
           for i in range(n)]
    # a reviewer relabels a corpus text
    out.append({"id": "review:relabel", "text": _rows(DATA / "train.jsonl")[0]["text"], "labels": []})
    return out


def test_held_apart_is_deterministic_by_id() -> None:
    ids = [f"review:{i:032x}" for i in range(2000)]
    first = [held_apart(i, 0.2) for i in ids]
    assert first == [held_apart(i, 0.2) for i in ids]
    assert 0.15 < sum(first) / len(ids) < 0.25
    assert not any(held_apart(i, 0.0) for i in ids) and all(held_apart(i, 1.0) for i in ids)


def test_corpus_mode_merges_relabels_and_keeps_the_held_apart_slice_unseen(tmp_path: Path) -> None:
    reviewed = _reviewed()
    info = assemble(reviewed, tmp_path / "d", corpus=DATA, review_weight=3.0, holdout_share=0.25)
    assert info.mode == "corpus" and info.replaced_by_reviewers == 1
    train, dev = _rows(tmp_path / "d" / "train.jsonl"), _rows(tmp_path / "d" / "dev.jsonl")
    held = _rows(tmp_path / "d" / "reviewed_held_apart.jsonl")
    assert held and info.reviewed_held_apart == len(held) and all(held_apart(r["id"], 0.25) for r in held)
    trained_texts = {r["text"] for r in train} | {r["text"] for r in dev}
    assert not trained_texts & {r["text"] for r in held}  # never trained on
    review_rows = [r for r in train if r["source"] == "review"]
    assert len(review_rows) == len(reviewed) - len(held) and all(r["weight"] == 3.0 for r in review_rows)
    assert all("weight" not in r for r in train if r["source"] != "review")
    relabelled = [r for r in train if r["text"] == reviewed[-1]["text"]]
    if not held_apart("review:relabel", 0.25):
        assert [r["source"] for r in relabelled] == ["review"] and relabelled[0]["labels"] == []
    assert len(train) == len(_rows(DATA / "train.jsonl")) - 1 + len(review_rows)
    assert _rows(tmp_path / "d" / "test.jsonl") == [
        {k: r[k] for k in ("id", "text", "labels", "source")} for r in _rows(DATA / "test.jsonl")]
    assert json.loads((tmp_path / "d" / "retrain_data.json").read_text(encoding="utf-8"))["mode"] == "corpus"


def test_replay_mode_samples_what_the_bundle_was_trained_on(tmp_path: Path) -> None:
    info = assemble(_reviewed(), tmp_path / "d", replay=DATA, replay_sources=["fixture"], replay_rows=10,
                    holdout_share=0.2)
    assert info.mode == "replay" and info.replay_sources == ["fixture"] and info.replay_rows == 10
    train = _rows(tmp_path / "d" / "train.jsonl")
    assert {r["source"] for r in train} == {"fixture", "review"}
    again = tmp_path / "again"
    assemble(_reviewed(), again, replay=DATA, replay_sources=["fixture"], replay_rows=10, holdout_share=0.2)
    assert _rows(again / "train.jsonl") == train  # deterministic
    assert (tmp_path / "d" / "dev.jsonl").is_file() and (tmp_path / "d" / "test.jsonl").is_file()


def test_reviews_only_mode_splits_a_dev_share(tmp_path: Path) -> None:
    info = assemble(_reviewed(), tmp_path / "d", replay=tmp_path / "nothing-here", holdout_share=0.2)
    assert info.mode == "reviews"
    train, dev = _rows(tmp_path / "d" / "train.jsonl"), _rows(tmp_path / "d" / "dev.jsonl")
    assert train and dev and not {r["id"] for r in train} & {r["id"] for r in dev}
    assert not (tmp_path / "d" / "test.jsonl").exists()


def test_nothing_to_train_on_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RetrainDataError, match="nothing to train on"):
        assemble(_reviewed(3)[:3], tmp_path / "d", holdout_share=0.9999999)
    with pytest.raises(RetrainDataError, match="train.jsonl missing"):
        assemble(_reviewed(), tmp_path / "e", corpus=tmp_path)


def test_read_split_takes_sample_weights(tmp_path: Path) -> None:
    f = tmp_path / "train.jsonl"
    f.write_text('{"text": "a", "labels": []}\n{"text": "b", "labels": ["rumor"], "weight": 2.5}\n', encoding="utf-8")
    split = read_split(f)
    assert split.weights.tolist() == [1.0, 2.5] and split.weighted
    assert split.subset([1, 1]).weights.tolist() == [2.5, 2.5]
    for bad in ("0", "-1", '"x"', "true"):
        f.write_text(f'{{"text": "a", "labels": [], "weight": {bad}}}\n', encoding="utf-8")
        with pytest.raises(DataError, match="'weight' must be a positive number"):
            read_split(f)


def _train_on(tmp_path: Path, encoder: Path, name: str, weight_of) -> dict:  # type: ignore[no-untyped-def]
    import shutil

    from shenhe.training.finetune.trainer import train
    from tests.training.test_trainer import _args

    data = tmp_path / f"{name}-data"
    shutil.copytree(DATA, data)
    rows = _rows(data / "train.jsonl")
    for r in rows:
        w = weight_of(r)
        if w is not None:
            r["weight"] = w
    (data / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    train(_args(encoder, tmp_path / name, data=data, max_steps=4, eval_every_steps=None), show_progress=False)
    from safetensors.torch import load_file

    return load_file(str(tmp_path / name / "model" / "head.safetensors"))


def test_sample_weights_change_training_and_a_constant_weight_does_not(tiny_run: Path, tmp_path: Path) -> None:
    encoder = tiny_run.parent / "encoder"
    plain = _train_on(tmp_path, encoder, "plain", lambda r: None)
    constant = _train_on(tmp_path, encoder, "constant", lambda r: 4.0)  # scaled to mean 1: the same run
    weighted = _train_on(tmp_path, encoder, "weighted", lambda r: 5.0 if r["source"] == "fixture_b" else None)
    for k in plain:
        np.testing.assert_allclose(plain[k].numpy(), constant[k].numpy(), rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(plain[k].numpy(), weighted[k].numpy()) for k in plain)
    summary = json.loads((tmp_path / "weighted" / "run.json").read_text(encoding="utf-8"))["summary"]
    assert summary["sample_weights"]["by_source"] == {"fixture": 1.0, "fixture_b": 5.0}
    assert json.loads((tmp_path / "plain" / "run.json").read_text(encoding="utf-8"))["summary"]["sample_weights"] is None
