"""Strict notebook parameters: find the ``parameters`` cell and papermill's injected one, check them.

Papermill only logs a warning when it injects a parameter the notebook does
not declare; ``check_parameters()`` fails the run instead, and also when a
declared parameter got a value of the wrong type.  The decisions (which cells
hold the parameters, which names are unknown, which values are mistyped) are
pure functions over cell sources and values; ``check_parameters`` reads them
from the kernel's input history, or from its namespace when no history is kept.
"""

from __future__ import annotations

import ast
import difflib
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from .runs import RunRecord, _maybe_step, _shell

#: First line of the cell papermill injects (its Python translator writes ``# Parameters``).
INJECTED_MARKER = "# Parameters"


def _literal_assignments(source: str) -> dict[str, Any] | None:
    """``{name: value}`` when ``source`` only assigns literals to plain names, else None."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    values: dict[str, Any] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and all(isinstance(t, ast.Name) for t in stmt.targets):
            names, node = [t.id for t in stmt.targets if isinstance(t, ast.Name)], stmt.value
        elif isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
            names, node = [stmt.target.id], stmt.value
        else:
            return None
        try:
            value = ast.literal_eval(node)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            return None
        for name in names:
            values[name] = value
    return values or None


def is_injected(source: str) -> bool:
    """True for the cell papermill injects after the ``parameters`` cell."""
    return source.lstrip("\n").split("\n", 1)[0].strip() == INJECTED_MARKER


def locate_parameters(history: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(declared defaults, injected values) from the sources of the cells run so far, oldest first.

    The newest cell that only assigns literals is the parameters cell, unless it
    is papermill's injected cell; then the parameters cell is the newest such
    cell before it.  Raises ``ConfigError`` when no parameters cell was run.
    """
    found = [(src, vals) for src in history if (vals := _literal_assignments(src)) is not None]
    injected: dict[str, Any] = {}
    if found and is_injected(found[-1][0]):
        injected = found.pop()[1]
        while found and is_injected(found[-1][0]):
            found.pop()
    if not found:
        raise ConfigError(
            "no parameters cell has run in this kernel",
            hint="run the notebook from the top: the first cell declares the parameters",
        )
    return found[-1][1], injected


def _type_name(value: Any) -> str:
    return {
        bool: "True/False",
        int: "a whole number",
        float: "a number",
        str: "text",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), type(value).__name__)


def _type_ok(default: Any, value: Any) -> bool:
    if default is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, list):
        kinds = {type(x) for x in default}
        return isinstance(value, list) and (len(kinds) != 1 or all(isinstance(x, next(iter(kinds))) for x in value))
    if isinstance(default, dict):
        return isinstance(value, dict)
    return True


def parameter_problems(declared: Mapping[str, Any], injected: Iterable[str], values: Mapping[str, Any]) -> list[str]:
    """Why these parameters do not describe a run: unknown names and values of the wrong type."""
    problems = []
    unknown = [n for n in injected if n not in declared]
    for name in unknown:
        close = difflib.get_close_matches(name, list(declared), n=1)
        problems.append(f"unknown parameter {name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    if unknown:
        problems.append("this notebook's parameters are: " + ", ".join(declared))
    for name, default in declared.items():
        if name in values and not _type_ok(default, values[name]):
            value = values[name]
            hint = (
                " (papermill -p reads numbers and True/False; pass text with -r NAME VALUE)"
                if isinstance(default, str)
                else ""
            )
            problems.append(
                f"parameter {name!r} must be {_type_name(default)} like its default "
                f"{default!r}, not {_type_name(value)} {value!r}{hint}"
            )
    return problems


def namespace_parameters(user_ns: Mapping[str, Any], hidden: Iterable[str] = ()) -> dict[str, Any]:
    """The plain data a notebook's own cells assigned, in assignment order (no modules,
    functions, classes, run records or ``_`` names)."""
    import types

    hidden = set(hidden)
    return {
        k: v
        for k, v in user_ns.items()
        if k not in hidden
        and not k.startswith("_")
        and not callable(v)
        and not isinstance(v, (types.ModuleType, RunRecord))
    }


def check_parameters(run: RunRecord | None = None, *, shell=None) -> dict[str, Any]:
    """Fail unless every parameter papermill injected is declared and well typed; return them all.

    Call it in a cell after the ``parameters`` cell.  Returns ``{name: value}``
    for the declared parameters (as the notebook now sees them) and records
    them in ``run``.  Raises ``ConfigError`` naming unknown parameters and the
    allowed ones (papermill itself only warns about them).

    The parameters and papermill's injected cell are found in the kernel's
    input history, which papermill (nbclient) always keeps.  An executor that
    runs cells without history (nbval: ``store_history=False``) injects no
    parameters either; then the parameters are read from the namespace.
    """
    shell = shell or _shell()
    if shell is None:
        raise ConfigError("check_parameters runs inside a notebook kernel (IPython)")
    with _maybe_step(run, "parameters"):
        history = list(shell.history_manager.input_hist_raw)[:-1]  # the last entry is this cell
        if any(_literal_assignments(src) is not None for src in history):
            declared, injected = locate_parameters(history)
        else:
            declared = namespace_parameters(shell.user_ns, getattr(shell, "user_ns_hidden", ()))
            injected = {}
        values = {name: shell.user_ns.get(name, default) for name, default in declared.items()}
        problems = parameter_problems(declared, list(injected), values)
        if run is not None:
            run.params = values if not problems else {**values, **injected}
        if problems:
            raise ConfigError(
                "; ".join(problems), hint="fix the papermill -p/-r/-f parameters (names and types as declared)"
            )
    return values
