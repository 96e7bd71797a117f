"""shenhe (审核): detect prohibited content in Chinese text.

``from shenhe import Predictor`` is the library entry point. The repository keeps the design's
top-level folders (``models/``, ``training/``, ``serving/``, ``eval/``); an installed wheel has them
inside this package (``package-dir`` in pyproject.toml), and in a source checkout they are found here.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Source checkout (tests, git worktrees, `python -m shenhe.cli`): the subpackages are the folders
# beside this one. An installed wheel has them inside this folder, so nothing is added there.
_here = Path(__file__).resolve().parent
_checkout = _here.parent
if not (_here / "models").is_dir() and (_checkout / "pyproject.toml").is_file() \
        and (_checkout / "models" / "__init__.py").is_file() and str(_checkout) not in __path__:
    __path__.append(str(_checkout))

if TYPE_CHECKING:
    from shenhe.models.predictor import Predictor

__all__ = ["Predictor", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy, so `shenhe --help` does not load onnxruntime.
    if name == "Predictor":
        from shenhe.models.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'shenhe' has no attribute {name!r}")
