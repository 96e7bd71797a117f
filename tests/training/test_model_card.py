"""The model card: Hugging Face style front matter, hyperparameters, framework versions and usage, checked
against a golden file rendered from a fixed bundle; the default bundle's card is a fresh rendering of its own
files; `shenhe card` renders a card again and keeps the bundle's hashes valid.

The fixture (tests/training/fixtures/model_card: bundle.json, policy.yaml, metrics.json) is the default
bundle's files with a recorded training run and framework versions added to metrics.json. After a
deliberate change to the template or to model_card.py, regenerate the golden file and review its diff:

    UPDATE_GOLDEN=1 .venv/bin/pytest tests/training/test_model_card.py

and render the default bundle's card again with `shenhe card --bundle models/default`.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from shenhe.cli import app
from shenhe.models.bundle import DEFAULT_BUNDLE_DIR, BundleError, DataSource, load_bundle, read_manifest
from shenhe.training.finetune.model_card import front_matter, hub_id, render_bundle_card, write_bundle_card

FIXTURE = Path(__file__).parent / "fixtures" / "model_card"
GOLDEN = FIXTURE / "MODEL_CARD.expected.md"


def _front_matter(card: str) -> dict[str, Any]:
    assert card.startswith("---\n")
    head, _, _ = card[4:].partition("\n---\n")
    data = yaml.safe_load(head)
    assert isinstance(data, dict)
    return data


def test_card_matches_the_golden_file() -> None:
    card = render_bundle_card(FIXTURE)
    if os.environ.get("UPDATE_GOLDEN"):
        GOLDEN.write_text(card, encoding="utf-8")
    assert card == GOLDEN.read_text(encoding="utf-8"), "card changed: regenerate the golden file (module docstring)"


def test_front_matter_is_hugging_face_metadata() -> None:
    meta = _front_matter(GOLDEN.read_text(encoding="utf-8"))
    metrics = json.loads((FIXTURE / "metrics.json").read_text(encoding="utf-8"))
    manifest = read_manifest(FIXTURE)
    assert meta["language"] == ["zh"] and meta["pipeline_tag"] == "text-classification"
    assert meta["base_model"] == "intfloat/multilingual-e5-small"
    # Several sources are licensed for non-commercial research only: the weights are too.
    assert meta["license"] == "other" and "non-commercial" in meta["license_name"]
    assert meta["datasets"] == [s.name for s in manifest.data_sources]
    assert {"text-classification", "chinese", "onnx", "int8"} <= set(meta["tags"])
    assert meta["metrics"] == ["f1"]
    (index,) = meta["model-index"]
    assert index["name"] == manifest.name
    values = {r["dataset"]["split"]: [m["value"] for m in r["metrics"]] for r in index["results"]}
    assert values == {s: [metrics[s]["macro_f1"], metrics[s]["macro_f1_review"]] for s in ("dev", "test")}


def test_card_body_has_usage_hyperparameters_versions_and_the_licence_warning() -> None:
    card = GOLDEN.read_text(encoding="utf-8")
    for needle in ("from shenhe import Predictor", "shenhe classify --bundle", "shenhe serve --bundle",
                   "curl -s http://127.0.0.1:3000/v1/classify", "| learning_rate | 7e-05 |",
                   "| freeze_embeddings | – |", "- torch 2.13.0", "- scikit-learn (not installed)",
                   "**Licence warning.**", "do not allow commercial use"):
        assert needle in card, needle
    assert "| base |" not in card and "| out |" not in card  # paths are not hyperparameters


def test_all_commercial_data_gets_the_project_licence() -> None:
    manifest = read_manifest(FIXTURE)
    sources = [DataSource(name="COLD", licence="Apache-2.0", commercial=True)]
    meta = front_matter(manifest, {}, sources)
    assert meta["license"] == "apache-2.0" and "license_name" not in meta
    assert "model-index" not in meta  # no split metrics, no results to index


@pytest.mark.parametrize(("base", "expected"), [
    ("me5-small-zh (intfloat/multilingual-e5-small, MIT)", "intfloat/multilingual-e5-small"),
    ("intfloat/multilingual-e5-small", "intfloat/multilingual-e5-small"),
    ("encoder", None),
    ("/tmp/run/encoder", None),
])
def test_hub_id(base: str, expected: str | None) -> None:
    assert hub_id(base) == expected


def test_default_bundle_card_is_a_fresh_rendering() -> None:
    """The shipped card is exactly what `shenhe card` renders from the bundle's own files today."""
    assert not write_bundle_card(DEFAULT_BUNDLE_DIR, check=True)
    load_bundle(DEFAULT_BUNDLE_DIR)  # and its hash is the one in bundle.json


def test_shenhe_card_renders_again_and_keeps_hashes_valid(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    card = bundle / "MODEL_CARD.md"
    fresh = card.read_text(encoding="utf-8")
    card.write_text(fresh + "\nedited by hand\n", encoding="utf-8")
    with pytest.raises(BundleError, match="MODEL_CARD.md does not match"):
        load_bundle(bundle)
    runner = CliRunner()
    check = runner.invoke(app, ["card", "--bundle", str(bundle), "--check"])
    assert check.exit_code == 1 and "differs from a fresh rendering" in check.output
    assert card.read_text(encoding="utf-8").endswith("edited by hand\n")  # --check writes nothing
    res = runner.invoke(app, ["card", "--bundle", str(bundle)])
    assert res.exit_code == 0, res.output
    assert card.read_text(encoding="utf-8") == fresh
    load_bundle(bundle)
    assert runner.invoke(app, ["card", "--bundle", str(bundle), "--check"]).exit_code == 0


def test_shenhe_card_refuses_a_bundle_whose_other_files_changed(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE_DIR, bundle)
    metrics = bundle / "metrics.json"
    metrics.write_text(metrics.read_text(encoding="utf-8").replace("0.8835", "0.99", 1), encoding="utf-8")
    res = CliRunner().invoke(app, ["card", "--bundle", str(bundle)])
    assert res.exit_code == 2 and "metrics.json does not match its hash" in res.output
