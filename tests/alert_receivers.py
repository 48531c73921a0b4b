"""Receivers the alert tests listen with: an HTTP webhook that keeps every JSON body, and an SMTP sink."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.conftest import free_port


class WebhookReceiver:
    """Listens on a free loopback port; `posts[path]` holds every JSON body POSTed there. `fail` makes it answer 500."""

    def __init__(self) -> None:
        self.posts: dict[str, list] = {}
        self.fail = False
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if receiver.fail:
                    self.send_response(500)
                    self.end_headers()
                    return
                receiver.posts.setdefault(self.path, []).append(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def alerts(self, path: str) -> list[dict]:
        """Every alert of every webhook payload received on `path`, in arrival order."""
        return [a for payload in self.posts.get(path, []) for a in payload["alerts"]]

    def wait_for(self, path: str, until: Callable[[list[dict]], bool], timeout_s: float = 60.0) -> list[dict]:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if until(self.alerts(path)):
                return self.alerts(path)
            time.sleep(0.2)
        raise TimeoutError(f"webhook {path}: condition not met in {timeout_s} s; got {self.alerts(path)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    """A minimal SMTP server (no TLS, no auth) on a free loopback port; `messages` holds each DATA section received."""

    def __init__(self) -> None:
        self.messages: list[str] = []
        sink = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(b"220 sink ESMTP\r\n")
                while line := self.rfile.readline():
                    cmd = line.decode().strip().upper()
                    if cmd.startswith(("EHLO", "HELO")):
                        self.wfile.write(b"250 sink\r\n")
                    elif cmd == "DATA":
                        self.wfile.write(b"354 go on\r\n")
                        data = []
                        while (row := self.rfile.readline()) not in (b".\r\n", b""):
                            data.append(row.decode())
                        sink.messages.append("".join(data))
                        self.wfile.write(b"250 queued\r\n")
                    elif cmd == "QUIT":
                        self.wfile.write(b"221 bye\r\n")
                        return
                    else:  # MAIL FROM, RCPT TO, RSET, NOOP
                        self.wfile.write(b"250 ok\r\n")

        self.port = free_port()
        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
