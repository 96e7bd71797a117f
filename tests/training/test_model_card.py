"""The model card: Hugging Face style front matter, hyperparameters, framework versions and usage, checked
against a golden file rendered from a fixed bundle; the default bundle's card is a fresh rendering of its own
files; `shenhe card` renders a card again and keeps the bundle's hashes valid.

The fixture (tests/training/fixtures/model_card: bundle.json, policy.yaml, metrics.json, evaluation.json) is
the default bundle's files with a recorded training run, framework versions and rebuild record added to
metrics.json, and evaluation.json summarising eval-report.metrics.json (a hand-trimmed `shenhe eval`
metrics.json with the sections the card reads; the tests below attach a real one made by `shenhe eval`).
After a deliberate change to the template or to model_card.py, regenerate the golden file and review its diff:

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
from shenhe.models.bundle import (
    DEFAULT_BUNDLE_DIR,
    EVALUATION_FILE,
    BundleError,
    DataSource,
    load_bundle,
    read_manifest,
)
from shenhe.training.finetune.evaluation import summarise_report
from shenhe.training.finetune.model_card import (
    front_matter,
    hub_id,
    render_bundle_card,
    render_model_card,
    write_bundle_card,
)
from shenhe.training.finetune.rebuild import run_command

FIXTURE = Path(__file__).parent / "fixtures" / "model_card"
GOLDEN = FIXTURE / "MODEL_CARD.expected.md"
EVAL_DATA = Path(__file__).parent / "data" / "test.jsonl"
runner = CliRunner()


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


def test_the_fixture_evaluation_summarises_the_fixture_report() -> None:
    report = json.loads((FIXTURE / "eval-report.metrics.json").read_text(encoding="utf-8"))
    evaluation = json.loads((FIXTURE / EVALUATION_FILE).read_text(encoding="utf-8"))
    assert evaluation["reports"] == [summarise_report(report)]


def test_card_has_per_source_and_perturbation_tables_rebuild_commands_and_training_time() -> None:
    card = GOLDEN.read_text(encoding="utf-8")
    for needle in (
        "### `holdout.jsonl`: 4112 texts",
        "| source | texts | harmful | ethnic_hatred | religion_cult | insult_defamation | harmless | harmless to review "
        "| harmless blocked |",
        "| COLD | 3210 | 1601 | **0.960 (875/911, 1183 pos.)** |  | **0.977 (129/132, 421 pos.)** | 1609 | 15.0% (241) "
        "| 2.4% (38) |",
        "- insult_defamation: worst source SWSR 0.862, **below 0.95**",
        "| homophones | 98.1% | 0.874 → 0.752 | 12.2 | 22.3% → 43.8% | +21.5 |",
        "**Stage 1: `shenhe-me5-zh 2026.11.30.2` (`models/default`).** Not recorded.",
        "shenhe train --out runs/me5-v7 --base /root/.cache/shenhe/encoders/me5-small-zh --data data/build "
        "--init-from models/default --lr 7e-05 --max-length 96",
        "shenhe export --run runs/me5-v7 --out models/candidate --name shenhe-me5-zh --version 2026.12.01.1",
        "4,964 s of optimisation (1.4 h; 5,100 s with the dev evaluations), 62,336 samples in 1,948 steps, "
        "12.56 samples/s, on cpu (AMD EPYC, 2 threads of 2 cores)",
    ):
        assert needle in card, needle


def test_a_card_without_attached_reports_or_a_rebuild_record_says_what_is_missing() -> None:
    bundle = load_bundle(FIXTURE, verify=False)
    metrics = json.loads((FIXTURE / "metrics.json").read_text(encoding="utf-8"))
    del metrics["rebuild"]
    card = render_model_card(bundle.manifest, bundle.policy, metrics, list(bundle.manifest.data_sources))
    assert "No evaluation reports attached: add them with `shenhe card --bundle BUNDLE --eval" in card
    assert "| source | texts |" not in card and "| kind | texts changed |" not in card
    # from the hyperparameters alone: no paths, no seconds
    assert "Not recorded: --out, --base, --data (the bundle kept only its hyperparameters)." in card
    assert "shenhe train --out RUN --init-from models/default --lr 7e-05" in card
    assert "1,948 steps, 12.56 samples/s, on cpu; the seconds and the machine were not recorded" in card


@pytest.fixture(scope="module")
def evaluated(tiny_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A copy of the tiny bundle and a real `shenhe eval` report on it, perturbations included."""
    root = tmp_path_factory.mktemp("card-eval")
    bundle = root / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    res = runner.invoke(app, ["eval", "--bundle", str(bundle), "--data", str(EVAL_DATA), "--out", str(root / "report"),
                              "--perturb", "--perturb-kinds", "homophones,emoji,split", "--threads", "1", "--quiet"])
    assert res.exit_code == 0, res.output
    return bundle, root / "report" / "metrics.json"


def _pc(x: float) -> str:
    return f"{100 * x:.1f}%"


def test_attaching_an_eval_report_puts_its_numbers_into_the_card(evaluated: tuple[Path, Path], tmp_path: Path) -> None:
    source, report_path = evaluated
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    assert report["bundle"]["model_sha256"] == read_manifest(bundle).files["model.onnx"]
    res = runner.invoke(app, ["card", "--bundle", str(bundle), "--eval", str(report_path)])
    assert res.exit_code == 0, res.output
    load_bundle(bundle)  # evaluation.json and the new card are in bundle.json, hashes hold
    assert EVALUATION_FILE in read_manifest(bundle).files
    card = (bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert "No evaluation reports attached" not in card
    section = card.partition(f"### `test.jsonl`: {report['n']} texts")[2].partition("\n## ")[0]
    for name, s in report["by_source"].items():
        harmless = report["harmless_review"]["by_source"][name]
        row = next(line for line in section.splitlines() if line.startswith(f"| {name} | "))
        assert row.startswith(f"| {name} | {s['n']} | {s['harmful']} | ")
        assert row.endswith(f"| {harmless['harmless']} | {_pc(harmless['review']['share'])} "
                            f"({harmless['review']['count']}) | {_pc(harmless['block']['share'])} "
                            f"({harmless['block']['count']}) |")
    rb = report["robustness"]
    for kind, p in rb["perturbations"].items():
        assert (f"| {kind} | {_pc(p['changed_share'])} | {rb['clean']['binary_accuracy']:.3f} → "
                f"{p['binary_accuracy']:.3f} | {100 * p['binary_accuracy_drop']:.1f} |") in section, kind
    assert runner.invoke(app, ["card", "--bundle", str(bundle), "--check"]).exit_code == 0


@pytest.mark.parametrize(("change", "message"), [
    ({"version": "9.9.9"}, "measured on tiny 9.9.9, not on this bundle (tiny 0.0.1)"),
    ({"model_sha256": "0" * 64}, "measured on a model.onnx with sha256 000000000000"),
    ({"policy_version": "other"}, "measured with policy other"),
])
def test_a_report_of_another_model_or_policy_is_refused(evaluated: tuple[Path, Path], tmp_path: Path,
                                                         change: dict[str, str], message: str) -> None:
    source, report_path = evaluated
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    report = json.loads(report_path.read_text(encoding="utf-8"))
    report["bundle"].update(change)
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps(report), encoding="utf-8")
    before = {p.name: p.read_bytes() for p in bundle.iterdir()}
    res = runner.invoke(app, ["card", "--bundle", str(bundle), "--eval", str(report_path), "--eval", str(other)])
    assert res.exit_code == 2 and message in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in bundle.iterdir()} == before  # nothing attached, nothing rewritten


def test_an_exported_bundle_card_gives_the_runs_exact_command_and_training_time(tiny_run: Path,
                                                                               tiny_bundle: Path) -> None:
    info = json.loads((tiny_run / "run.json").read_text(encoding="utf-8"))
    card = (tiny_bundle / "MODEL_CARD.md").read_text(encoding="utf-8")
    command = run_command("train", info["args"])
    assert command.line in card and "--max-steps 12" in command.line and "--batch-size 8" in command.line
    seconds = info["state"]["train_seconds"]
    assert f"{seconds:,.0f} s of optimisation" in card
    assert f"{info['state']['samples_seen']:,} samples in {info['state']['global_step']:,} steps" in card
    assert f"shenhe export --run {tiny_run} --out {tiny_bundle} --name tiny --version 0.0.1" in card
