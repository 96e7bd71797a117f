"""Errors of training and export; ``str(err)`` is the one-line reason the CLI prints."""

from __future__ import annotations


class TrainError(RuntimeError):
    """A run that cannot start or continue."""


class ExportError(RuntimeError):
    """An export that cannot proceed or failed a parity check."""


class CardError(ValueError):
    """An evaluation report that cannot be attached to a bundle's card (another model, an unreadable file)."""
