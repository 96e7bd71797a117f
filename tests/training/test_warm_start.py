"""``shenhe train --init-from``: continue from a run or from a bundle's ONNX weights (retraining from what serves)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

FIXTURE_DATA = Path(__file__).parent / "data"

pytest.importorskip("torch")


def _fresh_model(encoder: Path):
    from shenhe.training.finetune.model import MultiLabelClassifier, load_base

    enc, tok, prefix = load_base(str(encoder))
    return MultiLabelClassifier(enc), tok, prefix


def _probe_windows(tok, prefix: str):
    from shenhe.models.windowing import WindowTokenizer
    from shenhe.training.finetune.dataset import read_split

    windower = WindowTokenizer(tok.backend_tokenizer, 48, 8, pad_token_id=1, text_prefix=prefix)
    return windower.first_windows(read_split(FIXTURE_DATA / "dev.jsonl").normalized[:16])


def _used_params(model) -> dict[str, np.ndarray]:
    # The pooler is not part of the classifier's forward pass (mean pooling), so export drops it.
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()
            if "pooler" not in k and "position_ids" not in k}


def test_init_from_a_run_loads_its_exact_weights(tiny_run: Path) -> None:
    from shenhe.training.finetune.model import load_model
    from shenhe.training.finetune.warm_start import init_from

    trained, _, _ = load_model(tiny_run / "model")
    model, tok, _ = _fresh_model(tiny_run.parent / "encoder")
    assert any(not np.array_equal(a, _used_params(trained)[k]) for k, a in _used_params(model).items())
    report = init_from(model, tok, tiny_run)  # the run folder; its model/ folder works the same
    assert report.kind == "model"
    ours, theirs = _used_params(model), _used_params(trained)
    assert ours.keys() == theirs.keys()
    assert all(np.array_equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("scheme", ["dynamic", "dynamic-mixed", "weight-only"])
def test_init_from_a_bundle_recovers_the_trained_weights(tiny_run: Path, tmp_path: Path, scheme: str) -> None:
    from shenhe.training.finetune.export import ExportOptions, export_bundle
    from shenhe.training.finetune.model import load_model
    from shenhe.training.finetune.warm_start import init_from

    bundle = export_bundle(ExportOptions(run=tiny_run, out=tmp_path / scheme, name="tiny", version="0.0.1",
                                         threads=1, show_progress=False, allow_parity_failure=True,
                                         quantization=scheme))
    trained, _, _ = load_model(tiny_run / "model")
    model, tok, prefix = _fresh_model(tiny_run.parent / "encoder")
    base = _used_params(model)
    report = init_from(model, tok, bundle, _probe_windows(tok, prefix))
    ours, theirs = _used_params(model), _used_params(trained)

    # Frozen on CPU: the quantised embedding tables are replaced by the base encoder's exact values.
    for name in ("encoder.embeddings.word_embeddings.weight", "encoder.embeddings.position_embeddings.weight"):
        assert name in report.exact_from_base
        assert np.array_equal(ours[name], base[name]) and np.array_equal(ours[name], theirs[name])
    # Trained matrices come back from INT8 within the quantiser's step; everything fp32 comes back exactly.
    assert report.dequantized and all("weight" in k for k in report.dequantized)
    for k in ours:
        scale = float(np.abs(theirs[k]).max()) or 1.0
        tolerance = 0.02 * scale if k in report.dequantized else 0.0
        assert np.abs(ours[k] - theirs[k]).max() <= tolerance, k
    # ... so the recovered torch model scores like the bundle it came from.
    assert report.max_abs_logit_diff is not None and report.max_abs_logit_diff < 0.2


def test_training_from_a_bundle_records_the_warm_start(tiny_run: Path, tiny_bundle: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shenhe.cli import app

    out = tmp_path / "continued"
    res = CliRunner().invoke(app, ["train", "--base", str(tiny_run.parent / "encoder"), "--init-from", str(tiny_bundle),
                                   "--data", str(FIXTURE_DATA), "--out", str(out), "--max-steps", "2",
                                   "--max-length", "48", "--stride", "8", "--batch-size", "8", "--threads", "1",
                                   "--min-train-positives", "2", "--eval-every-steps", "0", "--quiet"])
    assert res.exit_code == 0, res.output
    info = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert info["args"]["init_from"] == str(tiny_bundle)
    warm = info["summary"]["warm_start"]
    assert warm["kind"] == "bundle" and warm["dequantized"] > 0 and warm["max_abs_logit_diff"] < 0.2
    assert warm["model"] == "tiny 0.0.1"

    # The model card of the continued model says where it started.
    from shenhe.training.finetune.export import ExportOptions, export_bundle

    bundle = export_bundle(ExportOptions(run=out, out=tmp_path / "bundle", name="tiny", version="0.0.2", threads=1,
                                         show_progress=False, allow_parity_failure=True))
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "training continued from tiny 0.0.1 (weights read back from its INT8" in card


def test_init_from_errors_are_one_line(tiny_run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from shenhe.cli import app
    from shenhe.training.finetune.dataset import read_split
    from shenhe.training.finetune.tiny import make_tiny_encoder

    # A different tokenizer: ids would mean other pieces, so it must be refused.
    other = make_tiny_encoder(tmp_path / "other", read_split(FIXTURE_DATA / "train.jsonl").texts[:5])
    common = ["--data", str(FIXTURE_DATA), "--max-steps", "1", "--threads", "1", "--min-train-positives", "2", "--quiet"]
    for base, source, expected in (
        (tiny_run.parent / "encoder", tmp_path, "not a run, a model folder"),
        (other, tiny_run, "is not the base encoder's"),
    ):
        res = CliRunner().invoke(app, ["train", "--base", str(base), "--init-from", str(source),
                                       "--out", str(tmp_path / f"run-{expected[:6]}"), *common])
        assert res.exit_code != 0
        lines = [line for line in res.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and expected in lines[0], res.output
