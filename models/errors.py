"""Errors a user can cause, and how a CLI command turns them into a one-line reason and an exit code."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import typer

P = ParamSpec("P")
R = TypeVar("R")

USAGE_EXIT = 2


class UserError(Exception):
    """An error caused by the user's input or environment; ``str(err)`` is the one-line reason."""

    def __init__(self, message: str, exit_code: int = USAGE_EXIT) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, exit_code: int = USAGE_EXIT) -> typer.Exit:
    """Print ``error: message`` on stderr and return the Exit to raise."""
    print(f"error: {message}", file=sys.stderr)
    return typer.Exit(exit_code)


def cli_errors(*expected: type[BaseException]) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Turn UserError (and the given exception types) into ``error: ...`` + exit code 2."""

    def deco(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(*args, **kwargs)
            except UserError as e:
                raise fail(str(e), e.exit_code) from None
            except expected as e:
                raise fail(str(e).splitlines()[0] if str(e) else e.__class__.__name__) from None

        return wrapper

    return deco
