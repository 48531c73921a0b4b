"""Serving a pre-rendered exposition: a scrape returns the last poll's bytes and never touches hardware."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from telemetry.config import parse_listen
from telemetry.exposition import CONTENT_TYPE


def serve_exposition(listen: str, body: Callable[[], bytes], title: str) -> ThreadingHTTPServer:
    """Start serving `body()` on http://listen/metrics in a daemon thread; returns the server (call shutdown())."""
    host, port = parse_listen(listen)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE, body())
            elif path == "/":
                page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><a href='/metrics'>/metrics</a></body></html>"
                self._send(200, "text/html; charset=utf-8", page.encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")

        def _send(self, code: int, ctype: str, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass  # a scrape every second would drown the log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=f"http-{listen}", daemon=True).start()
    return server
