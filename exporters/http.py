"""Serving a pre-rendered exposition: a scrape returns the last poll's bytes and never touches hardware."""

from __future__ import annotations

import base64
import binascii
import logging
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aifmon.exporters.web_config import WebConfig
from aifmon.telemetry.config import parse_listen
from aifmon.telemetry.exposition import CONTENT_TYPE

log = logging.getLogger(__name__)


def serve_exposition(listen: str, body: Callable[[], bytes], title: str, web: WebConfig | None = None) -> ThreadingHTTPServer:
    """Start serving `body()` on http(s)://listen/metrics in a daemon thread; returns the server (call shutdown()).

    `web` adds TLS and/or basic auth (exporters/web_config.py).
    """
    host, port = parse_listen(listen)
    users = web.basic_auth_users if web is not None else {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive: a scraper reuses its connection (every reply has a length)
        timeout = 30  # s a silent connection may hold its thread
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall between them

        def setup(self) -> None:
            super().setup()
            if isinstance(self.request, ssl.SSLSocket):
                self.request.do_handshake()  # here, in the connection's thread, not in the accept loop

        def do_GET(self) -> None:
            if users and not self._authorised():
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="aifmon"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE, body())
            elif path == "/":
                page = f"<html><head><title>{title}</title></head><body><h1>{title}</h1><a href='/metrics'>/metrics</a></body></html>"
                self._send(200, "text/html; charset=utf-8", page.encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found; try /metrics\n")

        def _authorised(self) -> bool:
            scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
            if scheme.lower() != "basic":
                return False
            try:
                user, sep, password = base64.b64decode(token, validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return False
            return bool(sep) and web is not None and web.check(user, password)

        def _send(self, code: int, ctype: str, payload: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass  # a scrape every second would drown the log

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request, client_address) -> None:
            # a failed TLS handshake or a client gone mid-reply: not worth a traceback on stderr
            log.debug("connection from %s failed", client_address[0], exc_info=True)

    server = Server((host, port), Handler)
    if web is not None and web.ssl_context is not None:
        server.socket = web.ssl_context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    threading.Thread(target=server.serve_forever, name=f"http-{listen}", daemon=True).start()
    return server
