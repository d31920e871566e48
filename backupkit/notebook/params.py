"""Strict notebook parameters: find the ``parameters`` cell and papermill's injected one, check them.

Papermill only logs a warning when it injects a parameter the notebook does
not declare; ``check_parameters()`` fails the run instead, and also when a
declared parameter got a value of the wrong type, with a hint that says how to
pass it (``how_to_pass``: a list through papermill's YAML option,
``-y 'tables: [public.orders]'``, since -p and -r pass text), and when a well-typed value
describes no run (``value_problems``: an empty place or one inside a snapshot, ``jobs`` 0, a
retention policy that cannot hold), so a scheduled run fails before its work, not after.  Before any of that,
a ``*_env`` parameter that is not an environment variable's name (the DSN or
monitor URL itself, often) or an ``identity`` that is a key fails the run in one
line that shows nothing of the value; no message or output repeats those values.
The decisions (which cells hold the parameters, which names are unknown, which values are mistyped) are
pure functions over cell sources and values; ``check_parameters`` reads them
from the kernel's input history, or from its namespace when no history is kept.
"""

from __future__ import annotations

import ast
import difflib
import json
import re
import shlex
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import ConfigError
from ..pg.dsn import redact
from .runs import EMPTY_HINT, RunRecord, _maybe_step, _shell, misplaced_secret, place_problem

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


def _never_shown(name: str) -> bool:
    """Parameters whose values no message repeats: a wrong one is often the secret itself."""
    return name.endswith("_env") or name == "identity"


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
            shown = "" if _never_shown(name) else f" {value!r}"
            problems.append(
                redact(
                    f"parameter {name!r} must be {_type_name(default)} like its default {default!r}, "
                    f"not {_type_name(value)}{shown}{hint}"
                )
            )
    return problems


#: YAML words PyYAML reads as something other than text (papermill -y uses yaml.safe_load).
_YAML_WORDS = {"true", "false", "yes", "no", "on", "off", "null", "none", "y", "n", "~"}


def _yaml_item(item: Any) -> str:
    """``item`` as a YAML flow sequence shows it: plain when YAML reads it back as the same text."""
    if isinstance(item, str) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", item) and item.lower() not in _YAML_WORDS:
        return item
    return json.dumps(item)


def _as_list(value: Any, default: list) -> list:
    """The list a user meant by a mistyped list parameter, for the example: the text read as a
    list (``'["public.orders"]'``), or as one item; else the default, else a placeholder."""
    if isinstance(value, str) and value.strip():
        try:
            meant = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            meant = None
        if isinstance(meant, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in meant):
            return list(meant)
        return [x.strip() for x in value.split(",") if x.strip()]
    return list(default) or ["..."]


def how_to_pass(name: str, default: Any, value: Any = None) -> str:
    """The papermill option that gives parameter ``name`` a value of its default's type, for a hint:
    ``-y 'tables: [public.orders]'`` for a list (papermill's YAML option; -p and -r pass text)."""
    if isinstance(default, list):
        items = ["..."] if _never_shown(name) else _as_list(value, default)
        flow = "[" + ", ".join(_yaml_item(x) for x in items) + "]"
        return f"pass a list with papermill's YAML option: -y {shlex.quote(f'{name}: {flow}')}"
    if isinstance(default, dict):
        return f"pass a mapping with papermill's YAML option: -y {shlex.quote(f'{name}: {{key: value}}')}"
    text = value.strip() if isinstance(value, str) else ""
    if isinstance(default, bool):
        meant = text.lower() in ("true", "1", "yes", "on") if text else not default
        return f"pass True or False with -p: -p {name} {meant}"
    if isinstance(default, (int, float)):
        number = re.fullmatch(r"-?\d+(\.\d*)?([eE][-+]?\d+)?", text) is not None
        return f"pass a number with -p: -p {name} {text if number else repr(default)}"
    if isinstance(default, str):
        shown = "VALUE" if _never_shown(name) or not isinstance(value, (int, float)) else redact(str(value))
        return f"pass text with -r: -r {name} {shlex.quote(shown)}"
    return f"pass {name} as its default's type"


def parameter_hint(declared: Mapping[str, Any], injected: Iterable[str], values: Mapping[str, Any]) -> str:
    """The hint for ``parameter_problems``: how to pass each mistyped parameter, and what to fix
    when a name is unknown."""
    hints = [
        how_to_pass(name, default, values[name])
        for name, default in declared.items()
        if name in values and not _type_ok(default, values[name])
    ]
    if any(n not in declared for n in injected):
        hints.append("fix the names of the papermill -p/-r/-y/-f parameters (`papermill --help-notebook` lists them)")
    return "; ".join(hints) or "fix the papermill -p/-r/-y/-f parameters (names and types as declared)"


#: Parameters naming a place a run writes to, and whether empty means "none" (``html_report``).
_PLACES = {"backup_dir": False, "runs_dir": False, "html_report": True}
#: The notebooks' retention parameters (``jobs.make_policy``'s arguments).
_POLICY = (
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
    "keep_monthly",
    "keep_yearly",
    "keep_within",
    "max_age_days",
    "min_keep",
    "tz",
)
#: List parameters whose items are names (an unset variable in ``-y 'schemas: [$S]'`` gives "").
_NAME_LISTS = ("schemas", "tables", "storage_buckets")


def value_problems(values: Mapping[str, Any]) -> list[ConfigError]:
    """Why well-typed parameter values still describe no run, each an error with its hint: a
    place that is empty or inside a snapshot (``runs.place_problem``), ``jobs`` out of range, a
    retention policy or ``max_age`` that cannot be read, an empty name in a list, a count below
    its least.  Checked with the parameters, so a run fails before it does anything rather than
    after the backup or the drill it was scheduled for."""
    from ..errors import BackupkitError
    from ..pg.cron import MODES as CRON_MODES
    from ..retention.policy import parse_duration
    from ..snapshot.verify import MAX_JOBS
    from .jobs import make_policy

    problems = [
        e
        for name, optional in _PLACES.items()
        if name in values and (e := place_problem(name, values[name], optional=optional)) is not None
    ]
    jobs = values.get("jobs", 1)
    if not 1 <= jobs <= MAX_JOBS:
        problems.append(
            ConfigError(
                f"parameter 'jobs' is {jobs}: use 1 to {MAX_JOBS}",
                hint="each job is a process with its own PostgreSQL connection; a few per CPU core is plenty",
            )
        )
    policy = {k: values[k] for k in _POLICY if k in values}
    if policy:
        try:
            make_policy(**policy)
        except BackupkitError as exc:
            problems.append(ConfigError(redact(str(exc)), hint=exc.hint or "fix the retention parameters"))
    if "max_age" in values:
        try:
            parse_duration(values["max_age"])
        except BackupkitError as exc:
            problems.append(ConfigError(f"parameter 'max_age': {redact(str(exc))}", hint="e.g. -r max_age 26h"))
    if "cron_jobs" in values and values["cron_jobs"] not in CRON_MODES:
        problems.append(
            ConfigError(
                f"parameter 'cron_jobs' is {values['cron_jobs']!r}",
                hint="use one of " + ", ".join(CRON_MODES) + ", e.g. -r cron_jobs paused",
            )
        )
    for name in _NAME_LISTS:
        if any(not str(item).strip() for item in values.get(name) or []):
            problems.append(ConfigError(f"parameter {name!r} holds an empty name", hint=EMPTY_HINT))
    for name, least in (("sample", 0), ("limit", 1)):
        if name in values and values[name] < least:
            problems.append(
                ConfigError(f"parameter {name!r} is {values[name]}: use {least} or more", hint=f"e.g. -p {name} 5")
            )
    return problems


def masked(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with each value ``misplaced_secret`` refuses replaced by ``"(not shown)"``."""
    return {k: "(not shown)" if misplaced_secret(k, v) is not None else v for k, v in params.items()}


class Parameters(dict):
    """A notebook's parameters, as ``check_parameters`` returns them: a dict shown with every
    password (of a DSN given where none belongs) and key redacted."""

    def __repr__(self) -> str:
        return redact(repr(dict(masked(self))))

    def _repr_pretty_(self, p, cycle) -> None:
        import pprint

        p.text(redact(pprint.pformat(dict(masked(self)), width=100, sort_dicts=False)))


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


def check_parameters(run: RunRecord | None = None, *, shell=None) -> Parameters:
    """Fail unless every parameter papermill injected is declared and well typed; return them all.

    Call it in a cell after the ``parameters`` cell.  Returns ``{name: value}``
    for the declared parameters (as the notebook now sees them) and records
    them in ``run``.  Raises ``ConfigError`` naming unknown parameters and the
    allowed ones (papermill itself only warns about them), and how to pass a
    mistyped one (``how_to_pass``).  First of all, a ``*_env`` parameter that is
    not the name of an environment variable (often the DSN or URL itself), or an
    ``identity`` that is a key rather than a path, fails the run in one line that
    shows nothing of it (``runs.misplaced_secret``); the run record says ``(not shown)``.

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
        refused = [e for name, value in values.items() if (e := misplaced_secret(name, value)) is not None]
        problems = [] if refused else parameter_problems(declared, list(injected), values)
        wrong = [] if refused or problems else value_problems(values)
        if run is not None:
            run.params = masked(values if not (problems or refused) else {**values, **injected})
        if refused:
            raise refused[0]
        if problems:
            raise ConfigError("; ".join(problems), hint=parameter_hint(declared, list(injected), values))
        if wrong:
            hints = list(dict.fromkeys(str(e.hint) for e in wrong if e.hint))
            raise ConfigError("; ".join(str(e) for e in wrong), hint="; ".join(hints) or None)
    return Parameters(values)
