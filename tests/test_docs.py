"""Documentation stays true: every command is in README and docs/cli.md matches --help."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from backupkit.cli import EXIT_CODES, build_parser, help_markdown

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
        "print(help_markdown(), end=\"\")' > docs/cli.md")


def test_every_exit_code_is_in_readme():
    table = README.split("## Exit codes", 1)[1]
    for _, code in EXIT_CODES:
        assert re.search(rf"^\| {code} \|", table, re.M), f"exit code {code} missing from README"


def test_readme_opens_with_the_two_commands():
    first_block = README.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()
    assert len(first_block) == 2
    assert first_block[0].endswith("backupkit demo") and first_block[1].endswith("-m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m pytest" in ci and "README.md" in ci
