"""A real webhook receiver on loopback (an http.server thread), for the webhook tests."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook

from tests.processes import free_port


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: str
    at: float  # time.monotonic()
    answered: int


class Receiver:
    """Answers each POST with the next status of `statuses` (then `then`), or never answers
    while `hang` is set; records every request it got."""

    def __init__(
        self, port: int | None = None, statuses: tuple[int, ...] = (), *, then: int = 200
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks"
        self.statuses = list(statuses)
        self.then = then
        self.hang = threading.Event()
        self.released = threading.Event()
        self.received: list[Received] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0"))).decode()
                if receiver.hang.is_set():
                    receiver._record(self, body, 0)
                    receiver.released.wait(60)
                    return
                with receiver._lock:
                    status = receiver.statuses.pop(0) if receiver.statuses else receiver.then
                receiver._record(self, body, status)
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def _record(self, handler: BaseHTTPRequestHandler, body: str, status: int) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        with self._lock:
            self.received.append(Received(headers, body, time.monotonic(), status))

    def stop(self) -> None:
        self.released.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wait_for(self, count: int, timeout: float = 20) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.02)
        raise AssertionError(f"{len(self.received)} of {count} webhook requests arrived")


def verified(secret: str, request: Received) -> Any:
    """The payload, verified with the published Standard Webhooks library (raises if not)."""
    return Webhook(secret).verify(request.body, request.headers)
