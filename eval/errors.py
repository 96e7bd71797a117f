"""Evaluation's user-facing error (kept free of heavy imports so the CLI module stays light)."""

from __future__ import annotations


class EvalDataError(ValueError):
    """An evaluation input that cannot be used; ``str(err)`` is a one-line reason."""
