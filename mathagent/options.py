"""Command-line options derived from pydantic config models.

As TRL builds its command line from its config dataclasses, a command here takes its options
from the fields of the model it fills: the option's name, type and help come from the field, and
its default is the field's (or, with ``unset=True``, "not given", so a preset or a setting can
fill it), so each default and help text is written once, in the model.

Typer reads a command's parameters from its signature; :func:`command_signature` builds one from
the fields and hands the command a plain ``**options`` dict. Typer has no such helper, hence
these few lines.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import typer
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

F = TypeVar("F", bound=Callable[..., Any])


def _is_list(annotation: Any) -> bool:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return typing.get_origin(annotation) is list or any(typing.get_origin(a) is list for a in args)


def _optional(annotation: Any) -> Any:
    if isinstance(annotation, types.UnionType) and type(None) in typing.get_args(annotation):
        return annotation
    return annotation | None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_options(
    model: type[BaseModel],
    *,
    exclude: Iterable[str] = (),
    only: Iterable[str] | None = None,
    unset: bool = False,
    flags: dict[str, str] | None = None,
    help_suffix: dict[str, str] | None = None,
) -> list[inspect.Parameter]:
    """One keyword parameter per field of ``model`` (typer options).

    ``unset``: every option defaults to None ("not given") and its help names the model's default;
    ``flags``: another option name for a field (``{"per_device_batch_size": "--batch-size"}``);
    ``help_suffix``: a note added to a field's help (e.g. a preset's values). A list field is
    given as one comma-separated string, which the model's validator parses.
    """
    skip = set(exclude)
    keep = set(only) if only is not None else None
    params = []
    for name, info in model.model_fields.items():
        if name in skip or (keep is not None and name not in keep):
            continue
        annotation: Any = info.annotation
        if _is_list(annotation):
            annotation = str | None
        required = info.default is PydanticUndefined and info.default_factory is None
        default: Any = ... if required else info.get_default(call_default_factory=True)
        notes = []
        if unset and not required:
            if default is not None:
                notes.append(f"default {','.join(map(str, default)) if isinstance(default, list) else default}")
            default, annotation = None, _optional(annotation)
        if help_suffix and name in help_suffix:
            notes.append(help_suffix[name])
        help_text = (info.description or "") + (f" ({'; '.join(notes)})" if notes else "")
        flag = (flags or {}).get(name, _flag(name))
        decls = [f"{flag}/--no-{flag[2:]}"] if info.annotation in (bool, bool | None) else [flag]
        params.append(inspect.Parameter(
            name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
            default=typer.Option(default, *decls, help=help_text.strip(), show_default=not unset),
        ))
    return params


def option(name: str, annotation: Any, default: Any, help: str, *decls: str) -> inspect.Parameter:
    """One hand-written option (for what no config model holds)."""
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Option(default, *(decls or (_flag(name),)), help=help))


def argument(name: str, annotation: Any, help: str) -> inspect.Parameter:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                             default=typer.Argument(..., help=help))


def command_signature(*groups: list[inspect.Parameter]) -> Callable[[F], F]:
    """Give a ``def cmd(**options)`` the signature typer builds its options from."""

    def decorate(fn: F) -> F:
        params = [p for group in groups for p in group]
        names = [p.name for p in params]
        if len(names) != len(set(names)):
            raise ValueError(f"{fn.__name__}: duplicate options {sorted(n for n in names if names.count(n) > 1)}")
        fn.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return fn

    return decorate


def given(options: dict[str, Any]) -> dict[str, Any]:
    """The options the user gave (those left at None were not)."""
    return {k: v for k, v in options.items() if v is not None}
