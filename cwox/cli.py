"""The ``cwox`` command group and the ``explain`` entry point.

Subcommands are loaded lazily, so ``cwox --help`` does not import torch. Each
command family lives in its own module under :mod:`cwox.commands`; add it to
``COMMANDS`` below as ``name -> "module:attribute"``.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any

import click

#: Exit code of a run stopped by Ctrl-C (128 + SIGINT, as shells report it); 1 means
#: "finished, some items failed", 2 "nothing ran: a usage or set-up error".
EXIT_INTERRUPTED = 130


def interrupted() -> click.exceptions.Exit:
    """Ctrl-C: say what is safe (stores resume) and leave with :data:`EXIT_INTERRUPTED`."""
    click.echo("\ninterrupted; whatever was finished is kept: rerun the same command to resume", err=True)
    return click.exceptions.Exit(EXIT_INTERRUPTED)


def exit_130_on_interrupt(callback: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a command callback so that Ctrl-C exits 130 instead of click's 1."""

    @functools.wraps(callback)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            raise interrupted() from None

    return wrapper

COMMANDS: dict[str, str] = {
    "explain": "cwox.commands.explain:explain",
    "documents": "cwox.commands.documents:documents",
    "fit-tree": "cwox.commands.tree:fit_tree",
    "tree": "cwox.commands.tree:tree",
    "evaluate": "cwox.commands.evaluate:evaluate",
    "nightly": "cwox.commands.nightly:nightly",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self._lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._lazy))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise interrupted() from None

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self._lazy:
            module_name, attr = self._lazy[name].split(":")
            return getattr(importlib.import_module(module_name), attr)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, lazy=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="cwox")
def main() -> None:
    """cwox: whole-output, contrastive explanations for image classifiers."""


def explain_main() -> None:
    """Entry point of the stand-alone ``explain`` command (same as ``cwox explain``)."""
    if "explain" not in COMMANDS:
        raise SystemExit("explain: the online engine is not installed yet; no tree exists yet.")
    module_name, attr = COMMANDS["explain"].split(":")
    command = getattr(importlib.import_module(module_name), attr)
    command.callback = exit_130_on_interrupt(command.callback)
    command(prog_name="explain")


if __name__ == "__main__":
    main()
