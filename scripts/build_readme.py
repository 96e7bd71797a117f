"""Assemble README.md from the per-area sections in docs/readme/*.md (in file-name order).

    python scripts/build_readme.py          # rewrite README.md
    python scripts/build_readme.py --check  # exit 1 if README.md is out of date (used by the test suite)
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARTS = ROOT / "docs" / "readme"
README = ROOT / "README.md"


def assemble() -> str:
    parts = sorted(PARTS.glob("*.md"))
    if not parts:
        raise SystemExit(f"error: no sections in {PARTS}")
    return "\n".join(p.read_text(encoding="utf-8").rstrip("\n") + "\n" for p in parts)


def main(argv: list[str]) -> int:
    text = assemble()
    if "--check" in argv:
        if not README.is_file() or README.read_text(encoding="utf-8") != text:
            print("README.md is out of date: run `python scripts/build_readme.py`", file=sys.stderr)
            return 1
        return 0
    README.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
