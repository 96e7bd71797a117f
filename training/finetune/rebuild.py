"""How a bundle was made, as the commands that make it again, and how long its training took.

``shenhe export`` records the chain of stages that led to a bundle in its metrics.json (``"rebuild":
{"stages": [...]}``, oldest first; the last stage is the bundle itself). A stage is a dict:

- ``model``: "NAME VERSION" of the bundle the stage made (None for a run that was never exported);
- ``source``: where an earlier stage was found when the later one was exported (a bundle or run path);
- ``run``: ``{"kind": "train" | "distill", "args": run.json "args", "paths_recorded": bool}``: the training
  run (None where the stage only re-exported a bundle, or its run was not recorded);
- ``time``: the run's recorded state (seconds, samples, steps) and the machine it ran on;
- ``export``: the ``shenhe export`` options, resolved (the name and version the bundle got).

A stage comes before another when the later run was warm-started from it (``--init-from``), distilled
from it (``--teacher``) or re-exported from it. Bundles exported before shenhe recorded this have only
their hyperparameters (no paths, no seconds): :func:`legacy_stages` reads what there is, and the card says
what is missing. :func:`run_command` writes a run's arguments back as its command line, with every option
that differs from the command's default; the test suite parses that line with the real CLI and gets the
same arguments back.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shenhe.models.bundle import MANIFEST_FILE, METRICS_FILE
from shenhe.training.finetune.args import (
    AUGMENT_KINDS,
    DISTILL_ONLY_OPTIONS,
    RUN_OPTIONS,
    TRAIN_ONLY_OPTIONS,
    ZERO_MEANS_OFF,
    AugmentConfig,
    DistillArguments,
    ExportOptions,
    SamplingConfig,
    TrainingArguments,
)

REBUILD_KEY = "rebuild"  # metrics.json
MAX_STAGES = 8  # a longer chain keeps its latest stages (each bundle records its own chain, so nothing is lost)
RUN_FILE = "run.json"
# Run arguments that are paths, by command, and their options: written whenever recorded (a default path means
# another folder on another machine, so the command names them).
_PATH_OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("out", "--out"), ("base", "--base"), ("data", "--data"), ("init_from", "--init-from")),
    "distill": (("out", "--out"), ("teacher", "--teacher"), ("base", "--base"), ("data", "--data"),
                ("teacher_cache", "--teacher-cache")),
}
_NOT_SETTINGS = ("base", "data", "out", "init_from", "teacher", "unlabelled", "teacher_cache", "extra",
                 "sampling", "augment")
# The paths a run always has: a record without them (a bundle's hyperparameters) says so.
_KNOWN_PATHS = {"train": ("out", "base", "data"), "distill": ("out", "teacher", "base", "data")}
# `shenhe distill` takes the teacher's windows unless told: its command always names them.
_ALWAYS = {"distill": ("max_length", "window_stride")}


@dataclass(frozen=True)
class RunCommand:
    """A run's command line, and what it cannot say."""

    argv: list[str]
    unsettable: dict[str, Any] = field(default_factory=dict)  # non-default settings no option sets
    unrecorded: list[str] = field(default_factory=list)  # path options the record lacks

    @property
    def line(self) -> str:
        return shlex.join(self.argv)


def _defaults(cls: type[TrainingArguments]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _number(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _sampling_options(sampling: Mapping[str, Any]) -> list[str]:
    out: list[str] = []
    if sampling.get("source_power") is not None:
        out += ["--source-power", _number(sampling["source_power"])]
    for option, key in (("--source-share", "source_shares"), ("--harmless-boost", "harmless_boost")):
        for name, value in (sampling.get(key) or {}).items():
            out += [option, f"{name}={_number(value)}"]
    return out


def _augment_options(augment: Mapping[str, Any], unsettable: dict[str, Any]) -> list[str]:
    default = dataclasses.asdict(AugmentConfig())
    out: list[str] = []
    if augment.get("share", default["share"]) != default["share"]:
        out += ["--augment-share", _number(augment["share"])]
    weights = augment.get("weights") or {}
    changed = [k for k in AUGMENT_KINDS if k in weights and weights[k] != default["weights"].get(k)]
    if changed:
        out += ["--augment-kinds", ",".join(f"{k}={_number(weights[k])}" for k in changed)]
    for name, value in augment.items():
        if name not in ("share", "weights") and value != default.get(name):
            unsettable[f"augment.{name}"] = value
    return out


def run_command(kind: str, args: Mapping[str, Any], paths_recorded: bool = True) -> RunCommand:
    """``shenhe train|distill ...`` that makes a run with these arguments (run.json "args"): the paths, then
    every setting that differs from the command's default. With ``paths_recorded`` False (a bundle that kept
    only its hyperparameters) a missing --out is written as RUN and the other paths are left to their
    defaults; both are listed in ``unrecorded``."""
    if kind not in _PATH_OPTIONS:
        raise ValueError(f"unknown run kind {kind!r}")
    cls: type[TrainingArguments] = DistillArguments if kind == "distill" else TrainingArguments
    defaults = _defaults(cls)
    other = TRAIN_ONLY_OPTIONS if kind == "distill" else DISTILL_ONLY_OPTIONS
    argv = ["shenhe", kind]
    unrecorded: list[str] = []
    unsettable: dict[str, Any] = {}
    for name, option in _PATH_OPTIONS[kind]:
        if args.get(name):
            argv += [option, str(args[name])]
        elif not paths_recorded and name in _KNOWN_PATHS[kind]:
            unrecorded.append(option)
            argv += [option, "RUN"] if name == "out" else []
    if kind == "distill":
        for path in args.get("unlabelled") or ():
            argv += ["--unlabelled", str(path)]
    options = {fld: flag for flag, fld in RUN_OPTIONS.items() if flag not in other}
    for name, value in args.items():
        if name in _NOT_SETTINGS or name not in defaults:
            continue  # a path, or a field this version of shenhe no longer has
        if value == defaults[name] and name not in _ALWAYS.get(kind, ()):
            continue
        flag = options.get(name)
        if flag is None or (value is None and name not in ZERO_MEANS_OFF):
            unsettable[name] = value
        elif name == "freeze_embeddings":
            argv.append("--freeze-embeddings" if value else "--train-embeddings")
        else:
            argv += [flag, "0" if value is None else _number(value)]
    sampling, augment = args.get("sampling"), args.get("augment")
    if kind == "train":
        argv += _sampling_options(sampling or {}) + _augment_options(augment or {}, unsettable)
    else:  # `shenhe distill` has no options for these
        unsettable.update({name: value for name, value, default in (
            ("sampling", sampling, SamplingConfig()), ("augment", augment, AugmentConfig()))
            if value is not None and dict(value) != dataclasses.asdict(default)})
    return RunCommand(argv, unsettable, unrecorded)


def export_command(export: Mapping[str, Any]) -> str:
    """``shenhe export ...`` with the options an export recorded (:func:`export_record`)."""
    argv = ["shenhe", "export", "--run", str(export["run"]), "--out", str(export["out"])]
    for key in ("name", "version", "data", "policy", "baseline", "calibration", "base"):
        if export.get(key):
            argv += [f"--{key}", str(export[key])]
    if export.get("quantization", "auto") != "auto":
        argv += ["--quantization", str(export["quantization"])]
    if export.get("allow_parity_failure"):
        argv.append("--allow-parity-failure")
    return shlex.join(argv)


def export_record(opts: ExportOptions, name: str, version: str) -> dict[str, Any]:
    """The export's options as a stage records them (the name and version as resolved; threads and progress bars
    change no result and are left out)."""
    return {"run": str(opts.run), "out": str(opts.out), "name": name, "version": version,
            **{k: None if getattr(opts, k) is None else str(getattr(opts, k))
               for k in ("data", "policy", "baseline", "calibration", "base")},
            "quantization": opts.quantization, "allow_parity_failure": opts.allow_parity_failure}


def run_time(info: Mapping[str, Any]) -> dict[str, Any]:
    """How long a run trained and on what (run.json: state, summary), as a stage records it."""
    state = info.get("state") or {}
    summary = info.get("summary") or {}
    return {"train_seconds": state.get("train_seconds"), "elapsed_seconds": state.get("elapsed_seconds"),
            "samples_seen": state.get("samples_seen"), "steps": state.get("global_step"),
            "samples_per_second": info.get("train_samples_per_second"), "stop_reason": state.get("stop_reason"),
            "device": summary.get("device"), "threads": summary.get("threads"), "machine": summary.get("machine")}


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _unrecorded_stage(model: str | None, source: str | None) -> dict[str, Any]:
    return {"model": model, "source": source, "run": None, "time": None, "export": None}


def legacy_stages(name: str, version: str, metrics: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stages of a bundle exported before shenhe recorded its chain: itself, from the hyperparameters its
    metrics.json keeps (no paths; the warm start's source as --init-from, the teacher's as --teacher) and its
    samples/s and steps (no seconds); before it, the bundle it was warm-started or distilled from, unrecorded."""
    training = metrics.get("training") or {}
    warm = training.get("warm_start") or {}
    teacher = (training.get("distillation") or {}).get("teacher") or {}
    earlier: list[dict[str, Any]] = []
    if warm.get("source") or warm.get("model"):
        earlier.append(_unrecorded_stage(warm.get("model"), warm.get("source")))
    elif teacher:
        earlier.append(_unrecorded_stage(" ".join(filter(None, (teacher.get("name"), teacher.get("version")))) or None,
                                         teacher.get("path")))
    run = None
    if training.get("hyperparameters"):
        args = dict(training["hyperparameters"])
        if warm.get("source"):
            args["init_from"] = warm["source"]
        if teacher.get("path"):
            args["teacher"] = teacher["path"]
        run = {"kind": "distill" if teacher else "train", "args": args, "paths_recorded": False}
    time = {"samples_per_second": training.get("train_samples_per_second"), "steps": training.get("steps"),
            "stop_reason": training.get("stop_reason"), "device": training.get("device")}
    return [*earlier, {"model": f"{name} {version}", "source": None, "run": run, "time": time, "export": None}]


def _bundle_stages(path: Path) -> list[dict[str, Any]]:
    manifest = _read_json(path / MANIFEST_FILE) or {}
    metrics = _read_json(path / METRICS_FILE) or {}
    recorded = (metrics.get(REBUILD_KEY) or {}).get("stages")
    stages = [dict(s) for s in recorded] if recorded else legacy_stages(
        str(manifest.get("name")), str(manifest.get("version")), metrics)
    stages[-1]["source"] = str(path)
    return stages


def _run_stages(run_dir: Path, depth: int) -> list[dict[str, Any]]:
    info = _read_json(run_dir / RUN_FILE) or {}
    args = info.get("args") or {}
    kind = info.get("kind", "train")
    earlier = stages_before(kind, args, None, depth + 1)
    return [*earlier, {"model": None, "source": str(run_dir), "run": {"kind": kind, "args": args, "paths_recorded": True},
                       "time": run_time(info), "export": None}]


def stages_before(kind: str, args: Mapping[str, Any], recovered_from: str | None, depth: int = 0) -> list[dict[str, Any]]:
    """The stages before a run: the bundle it re-exports, its teacher (distill) or its --init-from, as found
    on disk now (a bundle's own recorded chain, or a run's run.json); oldest first."""
    source = recovered_from or (args.get("teacher") if kind == "distill" else args.get("init_from"))
    if not source:
        return []
    path = Path(str(source)).expanduser()
    if depth >= MAX_STAGES:
        stages: list[dict[str, Any]] = []
    elif (path / MANIFEST_FILE).is_file():
        stages = _bundle_stages(path)
    elif (path / RUN_FILE).is_file():
        stages = _run_stages(path, depth)
    elif path.name == "model" and (path.parent / RUN_FILE).is_file():  # --init-from RUN/model
        stages = _run_stages(path.parent, depth)
    else:
        stages = [_unrecorded_stage(None, str(source))]
    return stages[-(MAX_STAGES - 1):]


def this_stage(info: Mapping[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    """The stage of a bundle being exported from a run (run.json ``info``); a re-export records no run."""
    recovered = info.get("recovered_from")
    run = None if recovered else {"kind": info.get("kind", "train"), "args": info.get("args") or {},
                                  "paths_recorded": True}
    return {"model": f"{export['name']} {export['version']}", "source": None, "run": run,
            "time": None if recovered else run_time(info), "export": export}


def rebuild_record(info: Mapping[str, Any], export: dict[str, Any]) -> dict[str, Any]:
    """metrics.json ``"rebuild"`` of a bundle exported from the run with run.json ``info``."""
    recovered = (info.get("recovered_from") or {}).get("bundle")
    earlier = stages_before(info.get("kind", "train"), info.get("args") or {}, recovered)
    return {"stages": [*earlier, this_stage(info, export)][-MAX_STAGES:]}


# ---- what the model card shows ---------------------------------------------------------------------


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def describe_time(time: Mapping[str, Any] | None) -> str | None:
    """One sentence: the training time and throughput of a stage, and the machine, as far as recorded."""
    if not time or not (time.get("train_seconds") or time.get("samples_per_second")):
        return None
    seconds = time.get("train_seconds")
    counts = [f"{int(time['samples_seen']):,} samples"] if time.get("samples_seen") else []
    if time.get("steps") is not None:
        counts.append(f"{int(time['steps']):,} steps")
    if seconds:
        wall = time.get("elapsed_seconds")
        head = (f"{float(seconds):,.0f} s of optimisation ({_hours(float(seconds))}"
                + (f"; {float(wall):,.0f} s with the dev evaluations)" if wall else ")"))
        parts = [head, " in ".join(counts)] if counts else [head]
    else:
        parts = [" in ".join(counts)] if counts else []
    if time.get("samples_per_second"):
        parts.append(f"{time['samples_per_second']} samples/s")
    where = str(time.get("device") or "an unrecorded device")
    machine = time.get("machine") or {}
    detail = [str(machine["cpu"])] if machine.get("cpu") else []
    if time.get("threads"):
        threads = int(time["threads"])
        detail.append(f"{threads} thread{'s' if threads != 1 else ''}"
                      + (f" of {machine['cores']} cores" if machine.get("cores") else ""))
    if detail:
        where += f" ({', '.join(detail)})"
    sentence = ", ".join(parts) + f", on {where}"
    if not seconds:
        sentence += "; the seconds and the machine were not recorded (exported before shenhe recorded them)"
    if time.get("stop_reason"):
        sentence += f"; stopped by: {time['stop_reason']}"
    return sentence[:1].upper() + sentence[1:] + "."


def describe_stages(stages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per stage, what the card lists: a title, the commands, and notes on what is not recorded."""
    out: list[dict[str, Any]] = []
    for i, stage in enumerate(stages):
        last = i == len(stages) - 1
        title = "this bundle" if last else (f"`{stage['model']}`" if stage.get("model") else "a training run")
        if stage.get("source"):
            title += f" (`{stage['source']}`)"
        commands: list[str] = []
        notes: list[str] = []
        run = stage.get("run")
        if run:
            cmd = run_command(run["kind"], run["args"], run.get("paths_recorded", True))
            commands.append(cmd.line)
            if cmd.unrecorded:
                notes.append(f"not recorded: {', '.join(cmd.unrecorded)} (the bundle kept only its hyperparameters)")
            if cmd.unsettable:
                notes.append("set in code, not by an option: "
                             + ", ".join(f"{k}={json.dumps(v, ensure_ascii=False)}" for k, v in cmd.unsettable.items()))
        elif stage.get("export") and stage["export"].get("base"):
            notes.append("re-exported from the bundle above (its weights read back from model.onnx)")
        if stage.get("export"):
            commands.append(export_command(stage["export"]))
        if not commands:
            notes.append("not recorded" + ("" if stage.get("model") else
                                           " (the path did not hold a bundle or run when the next stage was exported)"))
        out.append({"title": title, "commands": commands, "notes": notes, "time": describe_time(stage.get("time"))})
    return out
