"""The rebuild commands of a model card: a run's recorded arguments written back as its command line, which the
real CLI parses into the same arguments; the chain of stages found at export; what a bundle exported before
shenhe recorded its run can still say.

Fixtures: tests/training/fixtures/rebuild/{train,distill}-run.json, run.json files (written from the
dataclasses) with many non-default options, sampling weights and augmentation.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from shenhe.cli import app
from shenhe.training.finetune.args import (
    DISTILL_ONLY_OPTIONS,
    RUN_OPTIONS,
    TRAIN_ONLY_OPTIONS,
    DistillArguments,
    ExportOptions,
    TrainingArguments,
)
from shenhe.training.finetune.rebuild import (
    describe_stages,
    export_command,
    export_record,
    legacy_stages,
    rebuild_record,
    run_command,
)

FIXTURES = Path(__file__).parent / "fixtures" / "rebuild"


def _run(name: str) -> dict[str, Any]:
    info = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    assert isinstance(info, dict)
    return info


def _parse(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> TrainingArguments:
    """What `shenhe train|distill` makes of ``argv`` (the training itself replaced by a capture)."""
    import shenhe.training.finetune.distill as distill_module
    import shenhe.training.finetune.teacher as teacher_module
    import shenhe.training.finetune.trainer as trainer_module

    seen: list[TrainingArguments] = []
    info = {"state": {"global_step": 0, "stop_reason": ""}, "train_samples_per_second": 0.0, "dev_macro_f1": 0.0,
            "test_macro_f1": None, "summary": {"distillation": {"teacher": {"name": "t"}, "kept_layers": []}}}

    def capture(args: TrainingArguments, **_: Any) -> dict[str, Any]:
        seen.append(args)
        return info

    monkeypatch.setattr(trainer_module, "train", capture)
    monkeypatch.setattr(distill_module, "distill", capture)
    # A teacher whose windows differ from the run's: the command must name the run's own.
    monkeypatch.setattr(teacher_module, "resolve_teacher",
                        lambda path: SimpleNamespace(base=None, max_length=512, window_stride=100))
    assert argv[0] == "shenhe"
    res = CliRunner().invoke(app, argv[1:])
    assert res.exit_code == 0, res.output
    (args,) = seen
    return args


def test_a_train_command_with_every_kind_of_option_parses_back_into_the_run_arguments(
        monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = _run("train-run.json")["args"]
    cmd = run_command("train", recorded)
    for needle in ("--init-from models/default", "--lr 7e-05", "--train-embeddings", "--eval-every-steps 0",
                   "--eval-samples 0", "--calibration isotonic", "--source-power 0.5", "--source-share seed=0.07",
                   "--harmless-boost COLD=1.5", "--harmless-boost SWSR=2.0", "--augment-share 0.3",
                   "--augment-kinds homophone=0.5,traditional=0.0", "--time-budget-minutes 85.5"):
        assert needle in cmd.line, needle
    assert "--epochs 4" in cmd.line and "--seed 7" in cmd.line and "--batch-size 24" in cmd.line
    # weight_decay has no option: named, not silently dropped
    assert cmd.unsettable == {"weight_decay": 0.02} and cmd.unrecorded == []
    parsed = _parse(shlex.split(cmd.line), monkeypatch).to_json()
    assert parsed == {**recorded, "weight_decay": TrainingArguments.weight_decay}


def test_a_distill_command_parses_back_into_the_run_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded = _run("distill-run.json")["args"]
    cmd = run_command("distill", recorded)
    assert cmd.argv[:2] == ["shenhe", "distill"] and "--teacher models/default" in cmd.line
    assert cmd.line.count("--unlabelled") == 2 and "--max-length 96 --stride 32" in cmd.line
    # distill's own defaults: its learning rate differs, its head learning rate (1e-4) is the default
    assert "--lr 0.0002" in cmd.line and "--head-lr" not in cmd.line
    assert cmd.unsettable == {}
    parsed = _parse(shlex.split(cmd.line), monkeypatch)
    assert isinstance(parsed, DistillArguments) and parsed.to_json() == recorded


def test_default_arguments_give_the_bare_command() -> None:
    args = TrainingArguments(base="enc", data=Path("data/build"), out=Path("runs/a")).to_json()
    assert run_command("train", args).argv == ["shenhe", "train", "--out", "runs/a", "--base", "enc", "--data",
                                                "data/build"]


def test_every_run_option_is_an_option_of_its_commands() -> None:
    command = typer.main.get_command(app)
    assert isinstance(command, typer.core.TyperGroup)
    for name, other in (("train", DISTILL_ONLY_OPTIONS), ("distill", TRAIN_ONLY_OPTIONS)):
        flags = {opt for p in command.commands[name].params for opt in p.opts}
        missing = [flag for flag in RUN_OPTIONS if flag not in other and flag not in flags]
        assert missing == [], name
        assert not any(flag in flags for flag in other), name


def test_a_bundle_that_kept_only_hyperparameters_says_which_paths_are_missing() -> None:
    metrics = {"training": {"hyperparameters": {"learning_rate": 7e-05, "max_length": 96, "epochs": 3},
                            "warm_start": {"source": "models/default", "model": "shenhe 1"},
                            "train_samples_per_second": 12.5, "steps": 100, "device": "cpu"}}
    earlier, this = legacy_stages("shenhe", "2", metrics)
    assert earlier["model"] == "shenhe 1" and earlier["run"] is None
    cmd = run_command("train", this["run"]["args"], this["run"]["paths_recorded"])
    assert cmd.line == "shenhe train --out RUN --init-from models/default --lr 7e-05 --max-length 96"
    assert cmd.unrecorded == ["--out", "--base", "--data"]
    shown = describe_stages([earlier, this])
    assert shown[0]["notes"] == ["not recorded"]
    assert "not recorded: --out, --base, --data" in shown[1]["notes"][0]
    assert "the seconds and the machine were not recorded" in shown[1]["time"]


def _bundle(path: Path, name: str, version: str, metrics: dict[str, Any]) -> Path:
    path.mkdir(parents=True)
    (path / "bundle.json").write_text(json.dumps({"name": name, "version": version}), encoding="utf-8")
    (path / "model.onnx").write_bytes(b"")
    (path / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return path


def test_the_chain_follows_init_from_into_a_bundles_recorded_stages(tmp_path: Path) -> None:
    first = _run("train-run.json")
    export = export_record(ExportOptions(run=Path("runs/me5-v8"), out=tmp_path / "b1"), "m", "1")
    older = _bundle(tmp_path / "b1", "m", "1", {"rebuild": rebuild_record(
        {**first, "args": {**first["args"], "init_from": None}}, export)})
    second = {**first, "args": {**first["args"], "init_from": str(older), "out": "runs/me5-v9"}}
    stages = rebuild_record(second, export_record(ExportOptions(run=Path("runs/me5-v9"), out=tmp_path / "b2"),
                                                  "m", "2"))["stages"]
    assert [s["model"] for s in stages] == ["m 1", "m 2"] and stages[0]["source"] == str(older)
    shown = describe_stages(stages)
    assert shown[0]["commands"][1] == f"shenhe export --run runs/me5-v8 --out {tmp_path / 'b1'} --name m --version 1"
    assert f"--init-from {older}" in shown[1]["commands"][0] and "--out runs/me5-v9" in shown[1]["commands"][0]
    assert shown[1]["time"].startswith("4,410 s of optimisation (1.2 h; 5,120 s with the dev evaluations), "
                                       "50,400 samples in 2,100 steps, 11.43 samples/s, on cpu (AMD EPYC, 2 threads "
                                       "of 2 cores)")


def test_the_chain_reads_a_run_directory_and_names_a_path_that_is_gone(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the distill run's teacher, models/default, is a relative path not found here
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(_run("distill-run.json")), encoding="utf-8")
    info = {**_run("train-run.json")}
    export = export_record(ExportOptions(run=Path("r"), out=Path("o"), quantization="fp32"), "m", "3")
    stages = rebuild_record({**info, "args": {**info["args"], "init_from": str(run / "model")}}, export)["stages"]
    # run/ was distilled from models/default, which is not here: three stages, the oldest unrecorded
    assert [s["source"] for s in stages] == ["models/default", str(run), None]
    assert stages[1]["run"]["kind"] == "distill" and stages[1]["time"]["steps"] == 900
    assert describe_stages(stages)[0]["notes"] == [
        "not recorded (the path did not hold a bundle or run when the next stage was exported)"]
    assert export_command(export) == "shenhe export --run r --out o --name m --version 3 --quantization fp32"


def test_a_re_export_records_no_run_of_its_own(tmp_path: Path) -> None:
    older = _bundle(tmp_path / "old", "m", "1", {"training": {"hyperparameters": {"epochs": 5}}})
    info = {"recovered_from": {"bundle": str(older)}, "args": {"base": "enc"}, "state": {}}
    export = export_record(ExportOptions(run=older, out=Path("new"), base="enc"), "m", "1.1")
    stages = rebuild_record(info, export)["stages"]
    assert [s["model"] for s in stages] == ["m 1", "m 1.1"] and stages[1]["run"] is None
    shown = describe_stages(stages)
    assert shown[0]["commands"] == ["shenhe train --out RUN --epochs 5"]
    assert shown[1]["notes"] == ["re-exported from the bundle above (its weights read back from model.onnx)"]
    assert shown[1]["commands"] == [f"shenhe export --run {older} --out new --name m --version 1.1 --base enc"]
