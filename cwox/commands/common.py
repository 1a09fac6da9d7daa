"""Options shared by several commands, declared once."""

from __future__ import annotations

from collections.abc import Callable

import click


def model_options(f: Callable) -> Callable:
    """``--model``, ``--weights``, ``--device``."""
    f = click.option("--device", default="auto", show_default=True,
                     help="auto (CUDA when present), cpu or cuda[:N].")(f)
    f = click.option("--weights", type=click.Path(dir_okay=False), default=None,
                     help="State-dict file (required for torchvision models).")(f)
    f = click.option("--model", default="efficientnet_lite0", show_default=True,
                     help="efficientnet_lite0/1/2 or a torchvision architecture name.")(f)
    return f


def tree_option(f: Callable) -> Callable:
    """``--tree``: the latent tree store the clusters are cut from (as ``tree_opt``)."""
    return click.option("--tree", "tree_opt", default="default", show_default=True,
                        help="Latent tree store: 'default' (embedded), a path, or 'none' "
                             "(each class its own cluster).")(f)


def topk_options(f: Callable) -> Callable:
    """``--top-k K`` or ``--cum P --max-k K``."""
    f = click.option("--max-k", type=click.IntRange(min=1), default=5, show_default=True,
                     help="Cap on K with --cum.")(f)
    f = click.option("--cum", type=click.FloatRange(0, 1, min_open=True), default=None,
                     help="Smallest K whose cumulative probability exceeds this.")(f)
    f = click.option("--top-k", type=click.IntRange(min=1), default=None,
                     help="Fixed K (default 5).")(f)
    return f


class CommandError(click.ClickException):
    """A usage or set-up error: nothing was computed. Exit code 2 (1 means some items failed)."""

    exit_code = 2
