"""The training corpus: ``shenhe data build`` and its sources."""

from pathlib import Path

# Where `shenhe data build` writes the corpus and `shenhe train` / `shenhe export` read it by default.
BUILD_DIR = Path("data/build")
