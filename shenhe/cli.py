"""The `shenhe` command. Each package contributes its commands from a light `cli` module
(heavy imports such as torch happen inside the commands), so a serving-only install works."""

from __future__ import annotations

import importlib
import importlib.util

import typer

from shenhe.models.cli import normalize_cmd, policy_app

app = typer.Typer(
    name="shenhe",
    help="shenhe (审核): detect prohibited content in Chinese text.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(policy_app, name="policy")
app.command("normalize")(normalize_cmd)


def _register(module: str) -> None:
    """Register commands from ``module.register(app)`` where that module exists.

    Command modules import only light packages at top level, so a failure here is a bug and is
    not swallowed."""
    if importlib.util.find_spec(module) is None:
        return
    importlib.import_module(module).register(app)


for _module in (
    "shenhe.training.data.cli",
    "shenhe.training.encoder.cli",
    "shenhe.training.finetune.cli",
    "shenhe.classify_cli",
    "shenhe.batch_cli",
    "shenhe.serving.cli",
    "shenhe.eval.cli",
    "shenhe.retrain_cli",
):
    _register(_module)


if __name__ == "__main__":
    app()
