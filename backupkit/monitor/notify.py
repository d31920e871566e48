"""Telling a monitor how a job went: Healthchecks-style pings or a JSON webhook (``--notify``).

``URL`` (or ``$BACKUPKIT_NOTIFY``) is pinged the way Healthchecks.io and its clones expect:
``URL/start`` when the job starts, ``URL`` when it succeeds, ``URL/fail`` with the one-line
reason as the body when it fails.  ``json+https://…`` posts one JSON object per event
instead (``event``, ``job``, ``ok``, ``snapshot``, ``reason``, ``seconds``, ``host``).

A notification never carries a secret or a row value: only the job's name, the snapshot
id and the one-line error message backupkit wrote (its messages never hold a password).
Each request has a timeout and a few retries; a monitor that cannot be reached is a
warning, never a failed backup.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from ..errors import ConfigError
from ..pg.dsn import redact

if TYPE_CHECKING:
    import urllib.request

log = logging.getLogger("backupkit")

#: The environment variable ``--notify`` defaults to.
ENV = "BACKUPKIT_NOTIFY"
#: Seconds per request, and requests per event (the pause between them doubles from 0.5 s).
TIMEOUT, ATTEMPTS = 5.0, 3
_JSON = "json+"


@dataclass(frozen=True)
class Notifier:
    """Where a job's start, success and failure are announced."""

    url: str
    job: str

    @classmethod
    def from_option(cls, url: str | None, job: str) -> Notifier | None:
        """The notifier ``url`` (else ``$BACKUPKIT_NOTIFY``) describes, or None; ConfigError if it is no URL."""
        url = url or os.environ.get(ENV) or None
        if url is None:
            return None
        parts = urlsplit(url.removeprefix(_JSON))
        if parts.scheme not in ("http", "https") or not parts.hostname or not _has_valid_port(url):
            raise ConfigError(
                "`notify` is not an http(s) URL", hint="e.g. https://hc-ping.com/<uuid>, or json+https://… for JSON"
            )
        return cls(url, job)

    @property
    def where(self) -> str:
        """The monitor for a message: scheme and host only (a ping URL's path is its secret)."""
        parts = urlsplit(self.url.removeprefix(_JSON))
        return f"{parts.scheme}://{parts.hostname}"

    def start(self) -> bool:
        """Announce the start; whether the monitor took it."""
        return self._send("start")

    def success(self, snapshot: str | None = None, seconds: float | None = None) -> bool:
        """Announce success."""
        return self._send("success", snapshot=snapshot, seconds=seconds)

    def failure(self, reason: str, snapshot: str | None = None) -> bool:
        """Announce failure with its one-line reason."""
        return self._send("fail", reason=reason.splitlines()[0] if reason else "", snapshot=snapshot)

    def _request(self, event: str, reason: str, payload: dict) -> urllib.request.Request:
        import base64
        import urllib.request

        parts = urlsplit(self.url.removeprefix(_JSON))
        # urllib takes user:password@ for part of the host (it failed, or printed the password
        # in its error): the credentials go in an Authorization header instead.
        netloc = parts.netloc.rpartition("@")[2]
        if self.url.startswith(_JSON):
            body, path = json.dumps(payload).encode(), parts.path
            headers = {"Content-Type": "application/json"}
        else:
            # The event's suffix ends the path, before any query (Healthchecks' ?create=1,
            # ?rid=…): after it, /start and /fail would both count as a success ping.
            suffix = {"start": "/start", "success": "", "fail": "/fail"}[event]
            body, path, headers = reason.encode(), parts.path.rstrip("/") + suffix, {}
        request = urllib.request.Request(
            urlunsplit((parts.scheme, netloc, path, parts.query, "")), body, headers, method="POST"
        )
        if parts.username is not None or parts.password is not None:
            user_pass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
            # Unredirected: a redirect to another host does not carry the credentials along.
            request.add_unredirected_header("Authorization", "Basic " + base64.b64encode(user_pass.encode()).decode())
        return request

    def _send(self, event: str, *, reason: str = "", snapshot: str | None = None, seconds: float | None = None) -> bool:
        reason = redact(reason)
        payload = {
            "event": event,
            "job": self.job,
            "ok": event != "fail",
            "snapshot": snapshot,
            "reason": reason or None,
            "seconds": None if seconds is None else round(seconds, 3),
            "host": socket.gethostname(),
        }
        # Imported here, when a notification is sent: ~13 ms of every command's start-up otherwise.
        import http.client
        import urllib.error
        import urllib.request

        pause, why = 0.5, ""
        for attempt in range(ATTEMPTS):
            try:
                with urllib.request.urlopen(self._request(event, reason, payload), timeout=TIMEOUT) as r:
                    if 200 <= r.status < 300:
                        return True
                    why = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                why = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
                # The class only: the messages of these can repeat the URL, whose path is a secret.
                why = type(getattr(exc, "reason", exc)).__name__
            if attempt + 1 < ATTEMPTS:
                time.sleep(pause)
                pause *= 2
        log.warning(
            "could not notify %s of %s %s (%s); the job itself is not affected", self.where, self.job, event, why
        )
        return False


def _has_valid_port(url: str) -> bool:
    """Whether ``url``'s port, if it has one, is a number (urllib would fail on every request)."""
    try:
        urlsplit(url.removeprefix(_JSON)).port  # noqa: B018 -- raises ValueError otherwise
    except ValueError:
        return False
    return True
