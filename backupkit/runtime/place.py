"""Where a process ran, as far as another process can tell whether it still runs.

A lock's holder (``storage.lock``) and a scheduled run (``monitor.status``) record where they
run; a later process decides from that record whether it can look at the recorded process
(by its pid and ``<boot id>:<start ticks>``) or must go by time alone.  The host name is not
enough: containers started from one compose file share a configured host name (a prune run
with ``docker compose run`` beside the scheduled backup's container), each in a pid namespace
of its own, and machines cloned from one image may share one too.  A pid means something
only in the pid namespace of the kernel boot that gave it.

``whereabouts`` is the decision, pure: ``HERE`` (the same host name, pid namespace and boot:
look at the pid), ``RESTARTED`` (this machine, as its machine id shows, booted after the
process began: it is gone) or ``ELSEWHERE`` (cannot be looked at from here).  ``Place.here``
is the I/O.  A record from before these fields were written is judged by its host name and
boot id alone.
"""

from __future__ import annotations

import hashlib
import os
import socket
from collections.abc import Mapping
from dataclasses import KW_ONLY, dataclass
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

#: The machine id is to be kept private (machine-id(5)): records hold a digest made for
#: backupkit alone, which says "the same machine" and nothing more.
_MACHINE_SALT = b"backupkit place v1\0"


class Whereabouts(Enum):
    HERE = "here"
    RESTARTED = "restarted"
    ELSEWHERE = "elsewhere"


@dataclass(frozen=True)
class Place:
    """Where this process runs: host name, kernel boot, pid namespace, machine, boot time."""

    host: str
    boot_id: str | None = None
    _: KW_ONLY
    pid_namespace: str | None = None
    machine: str | None = None
    booted_at: datetime | None = None

    @classmethod
    def here(cls) -> Place:
        """This process's place, read from /proc and /etc (each field None where unknown)."""
        return cls(
            host=socket.gethostname(),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_pid_namespace(),
            machine=_machine(),
            booted_at=_booted_at(),
        )

    def record(self) -> dict[str, str]:
        """The fields a record keeps so a later reader can place it (``whereabouts``)."""
        kept = {"host": self.host, "pid_namespace": self.pid_namespace, "machine": self.machine}
        return {k: v for k, v in kept.items() if v is not None}


def whereabouts(recorded: Mapping[str, Any], started: datetime | None, here: Place) -> Whereabouts:
    """Whether the process ``recorded`` (a lock or run record: ``host``, ``process`` as
    ``<boot id>:<ticks>``, ``pid_namespace``, ``machine``), begun at ``started``, can be looked
    at from ``here``, is gone with a restart of this machine, or is out of sight."""
    if recorded.get("host") != here.host:
        return Whereabouts.ELSEWHERE
    namespace = recorded.get("pid_namespace")
    if isinstance(namespace, str) and here.pid_namespace is not None and namespace != here.pid_namespace:
        return Whereabouts.ELSEWHERE  # another container, on this kernel or another
    machine = recorded.get("machine")
    if isinstance(machine, str) and here.machine is not None and machine != here.machine:
        return Whereabouts.ELSEWHERE  # another machine of the same name, whatever else cannot be read
    identity = recorded.get("process")
    boot = identity.split(":", 1)[0] if isinstance(identity, str) else None
    if boot and here.boot_id and boot != here.boot_id:
        if (
            isinstance(machine, str)
            and machine == here.machine
            and started is not None
            and here.booted_at is not None
            and started < here.booted_at
        ):
            return Whereabouts.RESTARTED
        if machine is None and "pid_namespace" not in recorded:
            # Written before places were recorded: as then, another boot of this host.
            return Whereabouts.RESTARTED
        return Whereabouts.ELSEWHERE  # a machine of the same name (a clone), or one that cannot say
    return Whereabouts.HERE


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # e.g. "pid:[4026531836]"
    except OSError:
        return None


def _machine() -> str | None:
    found = _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id")
    if found is None or found.strip("0") == "":
        return None
    return hashlib.sha256(_MACHINE_SALT + found.encode()).hexdigest()[:32]


def _booted_at() -> datetime | None:
    try:
        lines = Path("/proc/stat").read_text().splitlines()
        btime = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, ValueError, IndexError, StopIteration):
        return None
    return datetime.fromtimestamp(btime, UTC)
