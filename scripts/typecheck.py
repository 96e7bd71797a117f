"""mypy over the checkout, each folder under the module name it is installed as.

    .venv/bin/python scripts/typecheck.py [mypy options]      (what `make test` runs; exit status as mypy's)

The design's folders `models/`, `training/`, `serving/`, `eval/` are the packages `shenhe.models`, ...
(`package-dir` in pyproject.toml). mypy follows neither `shenhe/__init__.py`'s `__path__` nor setuptools'
editable finder (which points at one checkout, not at this worktree), so this hands mypy every file with its
module name: the package-dir folders as `shenhe.*`, `tests/` by path (`tests.serving.conftest`, as the tests
import it), and the scripts in `scripts/` and `bench/` by file name (they run as `python bench/speed.py`, which
imports its neighbour as `serve_load`). Settings: `[tool.mypy]` in pyproject.toml.
"""

from __future__ import annotations

import os
import sys
import time
import tomllib
from pathlib import Path

from mypy.build import BuildSource
from mypy.fscache import FileSystemCache
from mypy.main import process_options, run_build
from mypy.util import FancyFormatter, count_stats

ROOT = Path(__file__).resolve().parent.parent
TESTS = "tests"
SCRIPT_FOLDERS = ("scripts", "bench")


def sources() -> list[BuildSource]:
    package_dir = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    folders = [(ROOT / folder, package) for package, folder in package_dir.items()]
    folders += [(ROOT / TESTS, TESTS)] + [(ROOT / name, "") for name in SCRIPT_FOLDERS]
    out = []
    for folder, package in folders:
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if any(not part.isidentifier() for part in parts):  # fixtures, not importable modules
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            module = ".".join((package, *parts) if package else parts)
            out.append(BuildSource(str(path.relative_to(ROOT)), module, None, str(ROOT)))
    return out


def main(argv: list[str]) -> int:
    t0 = time.time()
    fscache = FileSystemCache()
    # The package itself as the target only to let mypy parse the options; the sources are ours.
    _, options = process_options([*argv, "-p", "shenhe"], fscache=fscache)
    found = sources()
    _, messages, blockers = run_build(found, options, fscache, t0, sys.stdout, sys.stderr)
    n_errors, n_notes, n_files = count_stats(messages)
    formatter = FancyFormatter(sys.stdout, sys.stderr, options.hide_error_codes)
    if n_errors:
        print(formatter.format_error(n_errors, n_files, len(found), blockers=blockers))
    else:
        print(formatter.format_success(len(found)))
    return 2 if blockers else 1 if n_errors else 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main(sys.argv[1:]))
