"""The package's shape: snapshot bytes pass through the storage package only.

Scans the source for file-system calls (open, os.open, renames, removals, Path
reads and writes, directory walks) and fails for any outside ``backupkit/storage/``
that is not in ``ALLOWED`` with the reason it does not touch snapshot bytes.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "backupkit"

#: Calls that read, write, rename, delete or list files.
FS_FUNCTIONS = {
    "open",
    "os.open",
    "os.rename",
    "os.replace",
    "os.remove",
    "os.unlink",
    "os.rmdir",
    "os.mkdir",
    "os.makedirs",
    "os.walk",
    "os.scandir",
    "os.listdir",
    "os.fsync",
    "os.chmod",
    "os.utime",
    "shutil.rmtree",
    "shutil.copy",
    "shutil.copy2",
    "shutil.copyfile",
    "shutil.copytree",
    "shutil.move",
    "tempfile.mkdtemp",
    "tempfile.TemporaryDirectory",
    "tempfile.NamedTemporaryFile",
}
FS_METHODS = {
    "read_bytes",
    "write_bytes",
    "read_text",
    "write_text",
    "unlink",
    "mkdir",
    "rmdir",
    "iterdir",
    "rglob",
    "glob",
    "rename",
    "touch",
    "symlink_to",
    "chmod",
}

#: module (relative to backupkit/) -> why its file access is not snapshot bytes.
ALLOWED = {
    "pg/embedded.py": "the embedded PostgreSQL server's own data directory, binaries and lock",
    "demo/run.py": "the demo's server home (not a repository)",
    "demo/data.py": "reads the demo schema shipped in the package",
    "notebook/runs.py": "run records of scheduled notebooks (JSON next to the executed notebook)",
    "notebook/jobs.py": "the executed notebooks' folder",
    "snapshot/signing.py": "key files given by the user (keygen writes them, load reads them)",
    "pg/tools.py": "finds pg_dump/pg_restore binaries",
    "cli/commands.py": "writes the files a user names on the command line (--html, --json output)",
    "lens/report.py": "writes the HTML/JSON report where the user asks",
    "drills/target.py": "the throwaway PostgreSQL server's folder a drill restores into (not a repository)",
    "monitor/status.py": "reads the run records of scheduled notebooks (JSON in --runs)",
    "capture/workers.py": "counts this process's threads in /proc/self/task",
    "runtime/place.py": "reads where this process runs from /proc and /etc (boot id, machine id)",
    "cli/run.py": "points standard output at /dev/null once its reader has gone (| head)",
}


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def file_access(path: Path) -> list[str]:
    """``line: call`` for each file-system call in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = _name(node.func)
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        if name in FS_FUNCTIONS or (method in FS_METHODS and not name.startswith(("re.", "self.storage."))):
            found.append(f"{node.lineno}: {name or method}")
    return found


def test_snapshot_bytes_pass_through_the_storage_package_only():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel.startswith("storage/") or rel in ALLOWED:
            continue
        if calls := file_access(path):
            offenders[rel] = calls
    assert offenders == {}


def test_the_scan_finds_file_access():
    # The scan itself must be able to fail: it finds the storage package's own calls.
    assert file_access(PACKAGE / "storage" / "local.py")
