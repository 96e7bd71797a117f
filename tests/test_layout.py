"""The package's shape: one installed top-level name, and imports that run one way.

``models/`` is what training, serving and eval share, so it imports none of them; those three import
``models`` and not each other; none of them imports the CLI layer (``shenhe/cli.py``,
``shenhe/classify_cli.py``, ``shenhe/batch_cli.py``), which imports them.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("models", "training", "serving", "eval")
CLI_MODULES = ("shenhe.cli", "shenhe.classify_cli", "shenhe.retrain_cli", "shenhe.batch_cli")
# Folders whose code is part of the project (imports checked); .venv, data and runs are not.
CODE_DIRS = (*LAYERS, "shenhe", "tests", "bench", "scripts")


def _imports(path: Path) -> list[tuple[int, str]]:
    """Absolute module names imported by one file (``from x import y`` counts as x and x.y)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return found


def _code_files() -> list[Path]:
    return [p for d in CODE_DIRS if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py"))]


def _is_within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_walk_sees_the_project() -> None:
    files = _code_files()
    assert len(files) > 100
    assert any(m == "shenhe.models.predictor" for _, m in _imports(ROOT / "serving" / "runtime.py"))


def test_no_bare_top_level_imports_of_the_layers() -> None:
    # `import models` would load a second copy of every module beside `shenhe.models` in a checkout
    # and fail outright once installed.
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in _code_files() for line, m in _imports(p)
           if m.split(".")[0] in LAYERS]
    assert bad == []


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_one_way(layer: str) -> None:
    forbidden = [f"shenhe.{other}" for other in LAYERS if other not in (layer, "models")]
    if layer == "models":
        forbidden = [f"shenhe.{other}" for other in LAYERS if other != "models"]
    forbidden += list(CLI_MODULES)
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in sorted((ROOT / layer).rglob("*.py"))
           for line, m in _imports(p) if any(_is_within(m, f) for f in forbidden)]
    assert bad == []


# What serving loads (the Predictor, a bundle's n-gram component, the service) never imports the training stack;
# models/baseline.py scores a TF-IDF run with scikit-learn for evaluation only, and serving never imports it.
TRAINING_ONLY = ("torch", "transformers", "sklearn", "scipy", "joblib")


def test_serving_and_the_predictor_import_no_training_library() -> None:
    files = sorted((ROOT / "serving").rglob("*.py")) + [
        p for p in sorted((ROOT / "models").rglob("*.py")) if p.name != "baseline.py"]
    bad = [f"{p.relative_to(ROOT)}:{line} imports {m}" for p in files for line, m in _imports(p)
           if m.split(".")[0] in TRAINING_ONLY or m == "shenhe.models.baseline"]
    assert bad == []
    assert ROOT / "models" / "ngram.py" in files


def test_a_wheel_installs_only_shenhe_and_its_predictor_works(tmp_path: Path) -> None:
    """Build the wheel, install it into an empty target, and classify a real sentence with the
    packaged default bundle from outside the checkout."""
    # Build from a copy of the tracked files: an in-place build would leave build/ in the checkout.
    src = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, check=True).stdout
    for rel in filter(None, tracked.decode().split("\0")):
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel)
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("shenhe-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        top = {name.split("/")[0] for name in zf.namelist()}
        names = zf.namelist()
    assert {t for t in top if not t.endswith(".dist-info")} == {"shenhe"}
    assert "shenhe/models/default/model.onnx" in names and "shenhe/serving/templates/base.html" in names
    # data files read at training time: the augmenter's homophone table and every seed file
    assert "shenhe/training/finetune/augment_tables/homophones.tsv" in names
    assert {"shenhe/training/data/seed/hard_negatives.jsonl", "shenhe/training/data/seed/rumor.jsonl",
            "shenhe/training/data/seed/heldout/heldout_issue16.jsonl"} <= set(names)

    target = tmp_path / "site"
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                              str(wheel)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info")) in (["shenhe"],
                                                                                             ["bin", "shenhe"])
    # The dev venv's editable install maps shenhe.* to this checkout: drop its finder so only the wheel counts.
    code = ("import sys; sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in repr(f).lower()]; "
            "import shenhe; from shenhe import Predictor; "
            "r = Predictor().predict(['你是个傻逼，滚出去'])[0]; "
            "import shenhe.models.decision as d; print(shenhe.__file__); print(d.__file__); print(r.decision)")
    env = {k: v for k, v in os.environ.items() if k != "SHENHE_BUNDLE"} | {"PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    package, module, decision = run.stdout.split()
    assert Path(package).is_relative_to(target) and Path(module).is_relative_to(target)
    assert decision in ("review", "block")
