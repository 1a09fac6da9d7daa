"""Options shared by several commands, declared once."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

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


def quiet_option(f: Callable) -> Callable:
    """``--quiet``: no progress bars (they show only on a terminal anyway)."""
    return click.option("--quiet", is_flag=True, help="No progress bars (none are drawn when stderr is piped).")(f)


def silence_progress(flag: bool) -> None:
    """Turn the explainers' pass bars off for this command when ``flag``; back on when it ends."""
    from cwox.core.progress import set_enabled

    if flag:
        previous = set_enabled(False)
        click.get_current_context().call_on_close(lambda: set_enabled(previous))


class CommandError(click.ClickException):
    """A usage or set-up error: nothing was computed. Exit code 2 (1 means some items failed)."""

    exit_code = 2


def explainer_error(exc: Exception, items: Sequence[str] = ()) -> CommandError:
    """An explainer that could not be built, as a usage error naming the ``-p`` items given.

    The explainer's own message says what is wrong (``n_causes ... must be >= 1``); a
    value of the wrong type gives Python's (``invalid literal for int()``), so the
    items are repeated to say where it came from.
    """
    given = " ".join(f"-p {item}" for item in items)
    return CommandError(f"{exc}" + (f" (explainer parameters given: {given})" if given else ""))


# --------------------------------------------------------------------------- explainer parameters

#: Explainer keyword arguments that dedicated options of every command set (and record):
#: ``-p`` may not set them, so the engine's settings and the explainer's cannot disagree.
RESERVED_PARAMS: dict[str, str] = {"seed": "--seed", "batch_size": "--batch-size"}

_PARAM_HINT = "'-p' / '--param'"


def param_option(f: Callable) -> Callable:
    """``-p/--param [EXPLAINER.]KEY=VALUE`` (repeatable), as ``param_items``."""
    return click.option(
        "-p", "--param", "param_items", multiple=True, metavar="[EXPLAINER.]KEY=VALUE",
        help="An explainer parameter (repeatable), e.g. suny.n_causes=5 or "
             "fgvce.class_layer=_conv_head; the EXPLAINER. prefix may be left out when one "
             "explainer runs. KEY is an argument of the explainer's constructor; VALUE a "
             "Python literal (5, 0.1, None, 'text'), else taken as a string.",
    )(f)


def parse_params(items: Iterable[str], default: str | None = None) -> dict[str, dict[str, Any]]:
    """``EXPLAINER.KEY=VALUE`` items -> ``{explainer: {key: value}}``.

    ``VALUE`` is parsed with :func:`ast.literal_eval` (``5``, ``0.1``, ``None``, ``'a'``,
    ``(1, 2)``) and kept as the string itself when it is no literal (``_blocks.14``).
    ``KEY=VALUE`` without a name is for ``default`` (an error when it is None). The
    explainer name is lower-cased; nothing is checked against the explainers here.

    Raises:
        click.BadParameter: a malformed item (no ``=``, no key, a key that is no Python
            identifier, no value) or the same key given twice (exit code 2).
    """
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        head, sep, text = item.partition("=")
        name, dot, key = head.strip().partition(".")
        if not dot:
            name, key = "", name
        name, key = name.strip().lower(), key.strip()
        if not sep or not key.isidentifier() or (dot and not name) or not text.strip():
            raise click.BadParameter(
                f"{item!r}: use EXPLAINER.KEY=VALUE, e.g. suny.n_causes=5"
                + ("" if default is None else f" (or KEY=VALUE for {default})"),
                param_hint=_PARAM_HINT,
            )
        if not dot:
            if default is None:
                raise click.BadParameter(
                    f"{item!r}: name the explainer it is for, EXPLAINER.{key}={text}", param_hint=_PARAM_HINT
                )
            name = default
        text = text.strip()
        try:
            value: Any = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            value = text
        given = out.setdefault(name, {})
        if key in given:
            raise click.BadParameter(f"{name}.{key} is given twice", param_hint=_PARAM_HINT)
        given[key] = value
    return out


def explainer_keys(name: str) -> list[str] | None:
    """The keyword arguments the explainer ``name`` takes besides the classifier.

    From its class's ``__init__`` signature (:func:`cwox.online.explainers.explainer_class`);
    None when it takes ``**kwargs`` (any key is accepted).
    """
    from cwox.online.explainers import explainer_class

    params = list(inspect.signature(explainer_class(name).__init__).parameters.values())[1:]  # no self
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.name != "classifier"
            and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]


def dedicated_params(
    explainers: Sequence[str], given: Mapping[str, Any]
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """The values of a command's dedicated explainer options, by the explainers that declare them.

    ``given`` maps an option (``"--n-masks"``) to its value (None: not given). Each
    explainer declares its options in ``Explainer.cli_options`` (option -> parameter).
    Returns ``({explainer: {key: value}}, {explainer: {key: option}})``, the second for
    :func:`explainer_params`; an option no selected explainer declares is a usage error
    that names the explainers declaring it.
    """
    from cwox.online.explainers import available_explainers, explainer_class

    params: dict[str, dict[str, Any]] = {}
    dedicated: dict[str, dict[str, str]] = {}
    for option, value in given.items():
        if value is None:
            continue
        takers = [n for n in explainers if option in explainer_class(n).cli_options]
        if not takers:
            owners = [n for n in available_explainers() if option in explainer_class(n).cli_options]
            raise click.UsageError(f"{option} applies to --explainer {' or '.join(owners)} only")
        for name in takers:
            key = explainer_class(name).cli_options[option]
            params.setdefault(name, {})[key] = value
            dedicated.setdefault(name, {})[key] = option
    return params, dedicated


def explainer_params(
    items: Iterable[str],
    explainers: Sequence[str],
    *,
    option: str,
    dedicated: Mapping[str, dict[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """The explainer parameters of a command: its dedicated options' merged with ``-p`` items.

    Args:
        items: the ``-p`` values (:func:`parse_params`; ``KEY=VALUE`` without a name is
            accepted only when ``explainers`` has exactly one name).
        explainers: the explainers the command runs (lower-case registry names).
        option: the option that chose them (``--explainer``, ``--explainers``), for messages.
        dedicated: ``{explainer: {key: option}}`` of the dedicated options the user gave
            (``{"rise": {"n_masks": "--n-masks"}}``); their values are the caller's to merge.

    Returns:
        ``{explainer: {key: value}}`` of the ``-p`` items, every key checked.

    Raises:
        click.BadParameter: a malformed item, an explainer that ``option`` does not select,
            a key the explainer does not take (the message lists those it takes), a key
            of :data:`RESERVED_PARAMS` or one a dedicated option already sets (exit code 2).
    """
    explainers = list(explainers)
    params = parse_params(items, default=explainers[0] if len(explainers) == 1 else None)
    for name, given in params.items():
        if name not in explainers:
            keys = ", ".join(f"{name}.{k}={v!r}" for k, v in given.items())
            raise click.BadParameter(
                f"{keys}: {name!r} is not among the explainers {option} selects ({', '.join(explainers)})",
                param_hint=_PARAM_HINT,
            )
        known = explainer_keys(name)
        taken = {**RESERVED_PARAMS, **dict((dedicated or {}).get(name, {}))}
        for key in given:
            if known is not None and key not in known:
                settable = [k for k in known if k not in taken]
                elsewhere = [f"{k} by {taken[k]}" for k in known if k in taken]
                raise click.BadParameter(
                    f"{name} has no parameter {key!r}; it takes {', '.join(settable) or 'none'}"
                    + (f" ({', '.join(elsewhere)})" if elsewhere else ""),
                    param_hint=_PARAM_HINT,
                )
            if key in taken:
                raise click.BadParameter(
                    f"{name}.{key} is set by {taken[key]}; give it there, not with -p",
                    param_hint=_PARAM_HINT,
                )
    return params
