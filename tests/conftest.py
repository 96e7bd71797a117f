"""Session-wide fixtures shared by all test areas.

``tiny_bundle``: a complete, verified model bundle (``models/bundle.py`` format) exported from a tiny
randomly initialised BERT trained for a few steps on ``tests/training/data``. Built once per session
(a few seconds, one CPU thread). Its predictions are random-ish: assert structure and behaviour on it,
and real-sentence behaviour on ``models/default``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import pytest

FIXTURE_DATA = Path(__file__).parent / "training" / "data"

T = TypeVar("T")


def present(value: T | None) -> T:
    """``value`` where the test expects one (a claimed item, a stored row); None fails the test here."""
    assert value is not None
    return value


def build_tiny_run(root: Path, max_steps: int = 12) -> Path:
    """Tiny encoder + a short training run in ``root``; returns the run directory."""
    import torch

    from shenhe.training.finetune.args import TrainingArguments
    from shenhe.training.finetune.dataset import read_split
    from shenhe.training.finetune.tiny import make_tiny_encoder
    from shenhe.training.finetune.trainer import train

    torch.set_num_threads(1)
    texts = read_split(FIXTURE_DATA / "train.jsonl").texts + read_split(FIXTURE_DATA / "dev.jsonl").texts
    encoder = make_tiny_encoder(root / "encoder", texts)
    args = TrainingArguments(
        base=str(encoder), data=FIXTURE_DATA, out=root / "run", epochs=3, max_steps=max_steps, batch_size=8,
        eval_batch_size=16, learning_rate=1e-3, head_learning_rate=1e-2, max_length=48, window_stride=8,
        eval_every_steps=5, eval_samples=None, save_every_steps=4, threads=1, device="cpu",
        min_train_positives=2, early_stopping_patience=100,
    )
    train(args, show_progress=False)
    return args.out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    return build_tiny_run(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def tiny_bundle(tiny_run: Path) -> Path:
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    out = tiny_run.parent / "bundle"
    # The scheme the default bundle ships (dynamic INT8 on the fused graph), so every area's tests run it.
    # Quality checks are recorded in metrics.json and asserted in tests/training; a tiny random model
    # must not stop other areas' tests from getting a bundle.
    export_bundle(ExportOptions(run=tiny_run, out=out, name="tiny", version="0.0.1", threads=1,
                                show_progress=False, allow_parity_failure=True, quantization="dynamic"))
    return out
