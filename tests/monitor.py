"""A monitor for the notification tests: an HTTP server on 127.0.0.1 recording what it is sent."""

from __future__ import annotations

import http.server
import threading


class Monitor:
    """An HTTP server on 127.0.0.1 that records every request (path, body) and answers ``status``."""

    def __init__(self, status: int = 200):
        self.requests: list[tuple[str, str]] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                size = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.path, self.rfile.read(size).decode()))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
