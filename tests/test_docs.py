"""Documentation stays true: every command is in README and docs/cli.md matches --help."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from backupkit import errors
from backupkit.cli import (
    EXIT_DIFFERENT,
    EXIT_INTERRUPTED,
    EXIT_PIPE_CLOSED,
    build_parser,
    exit_code,
    help_markdown,
    main,
)
from backupkit.pg.dsn import DSN_ENV_VARS, resolve_dsn
from backupkit.runtime.deadline import seconds

ROOT = Path(__file__).parent.parent
README = (ROOT / "README.md").read_text()


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_is_shown_in_readme():
    missing = [name for name in commands() if f"backupkit {name}" not in README]
    assert missing == [], f"README.md does not show: {missing}"


def test_cli_reference_is_current():
    assert (ROOT / "docs" / "cli.md").read_text() == help_markdown(), (
        "docs/cli.md is stale: python -c 'from backupkit.cli import help_markdown; "
        'print(help_markdown(), end="")\' > docs/cli.md'
    )


def error_classes(cls: type[errors.BackupkitError] = errors.BackupkitError) -> list[type[errors.BackupkitError]]:
    return [cls, *(c for sub in cls.__subclasses__() for c in error_classes(sub))]


def test_every_exit_code_is_in_readme():
    table = README.split("## Exit codes", 1)[1]
    from backupkit.monitor.status import STATE_CODES

    codes = {
        0,
        EXIT_DIFFERENT,
        EXIT_INTERRUPTED,
        EXIT_PIPE_CLOSED,
        *STATE_CODES.values(),
        *(cls.exit_code for cls in error_classes()),
    }
    for code in sorted(codes):
        assert re.search(rf"^\| {code} \|", table, re.M), f"exit code {code} missing from README"


def test_exit_codes_are_on_the_error_classes():
    """Each class carries its code; the CLI reads it from the exception, not from a list."""
    expected = {
        "BackupkitError": 1,
        "ConfigError": 2,
        "ConnectionFailed": 3,
        "ToolError": 4,
        "SourceError": 5,
        "RowLevelSecurityError": 5,
        "SnapshotDamaged": 6,
        "SnapshotError": 7,
        "SnapshotNotFound": 7,
        "StorageError": 8,
        "RestoreError": 9,
        "TargetNotEmpty": 9,
        "LockError": 10,
        "RetentionError": 11,
        "BucketError": 13,
        "DrillFailed": 14,
    }
    defined = {c.__name__: c for c in error_classes() if c.__module__ == errors.__name__}
    assert {name: cls.exit_code for name, cls in defined.items()} == expected
    for cls in defined.values():
        assert exit_code(cls("x")) == cls.exit_code
    assert exit_code(ValueError("a bug")) == 1
    for name, code in expected.items():  # errors.py's tree shows every class with its code
        assert re.search(rf"{name} +{code}\b", errors.__doc__ or ""), name


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first_block) == 2
    # The demo, then the whole suite (in two processes: pytest-xdist comes with .[test]).
    assert first_block[0].endswith("backupkit demo") and first_block[1].endswith("-m pytest -n 2")
    assert "'.[test]'" in first_block[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m pytest" in ci and "README.md" in ci


def test_cli_errors_say_flags_where_the_library_says_parameters(tmp_path, capsys, monkeypatch):
    """Library messages name a parameter as Python callers know it; the command shows its flag instead."""
    with pytest.raises(errors.ConfigError, match=r"^lock_wait_timeout must be 0 \(no limit\)"):
        seconds(-1, "--lock-wait-timeout")  # a flag spelling is still taken, as the parameter name
    assert (
        main(
            [
                "backup",
                "--to",
                str(tmp_path / "a"),
                "--lock-wait-timeout",
                "-1",
                "--dsn",
                "postgresql://u@127.0.0.1:1/x",
            ]
        )
        == 2
    )
    assert "error: --lock-wait-timeout must be 0 (no limit)" in capsys.readouterr().err
    assert main(["prune", str(tmp_path), "--min-keep", "0"]) == 11
    assert "error: --min-keep must be at least 1" in capsys.readouterr().err
    for name in DSN_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(errors.ConfigError) as err:
        resolve_dsn()
    assert err.value.hint is not None and "`dsn`" in err.value.hint and "--dsn" not in err.value.hint
    assert main(["check"]) == 2
    assert "hint: pass the DSN as `--dsn` or set $BACKUPKIT_DSN" in capsys.readouterr().err
