"""README.md is generated from docs/readme/*.md; an edit to one without the other is caught here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_is_assembled_from_its_sections() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "build_readme.py"), "--check"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_readme_documents_every_cli_command() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in ("shenhe policy show", "shenhe normalize", "shenhe data build", "shenhe data cards",
                    "shenhe encoder import", "shenhe train", "shenhe export", "shenhe classify", "shenhe serve",
                    "shenhe review export", "shenhe eval", "make serve", "make test"):
        assert command in readme, command
