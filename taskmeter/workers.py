"""`serve --workers N`: N serving processes, each listening on its own socket bound to the one
port with SO_REUSEPORT, so the kernel spreads new connections over them.

uvicorn's `--workers` shares one listening socket between its processes, and whichever process
wakes first accepts every connection waiting: clients that open their keep-alive connections
together (an exporter pool, a load balancer's upstream pool) all land on one worker while the
others idle. Measured with four OTLP connections opened at once: one worker at 49 % of a core
with the GIL held, the other idle (bench/RESULTS.md). With a socket per worker the kernel
picks the worker by a hash of each connection's addresses instead.

This module is the supervisor `serve` becomes: it imports nothing of the service (it stays
small), starts the workers, restarts one that dies, and on SIGTERM or SIGINT stops them all.

    python -m taskmeter.workers N HOST PORT LOG_LEVEL    (settings from TASKMETER_* variables)
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import sys
import time
from multiprocessing.process import BaseProcess
from types import FrameType

__all__ = ["LOG_FORMAT", "listening_socket", "main", "supervise"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"

log = logging.getLogger("taskmeter.workers")

STOP_GRACE_S = 30.0  # uvicorn's own grace for in-flight requests is shorter; then SIGKILL
RESTART_PAUSE_S = 1.0  # a worker that dies at once must not spin the supervisor


def _bound(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    sock = _bound(host, port)
    sock.listen(2048)
    return sock


def serve_worker(host: str, port: int, log_level: str) -> None:
    """One worker: the app from the environment's settings, on its own reuse-port socket."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    config = uvicorn.Config(
        "taskmeter.app:create_app",
        factory=True,
        log_level=log_level,
        access_log=False,
        proxy_headers=False,
    )
    uvicorn.Server(config).run(sockets=[listening_socket(host, port)])


def supervise(workers: int, host: str, port: int, log_level: str) -> int:
    # The port is checked (and kept from anyone without SO_REUSEPORT as this user) by a
    # socket bound but never listening: the kernel hands connections only to listeners.
    try:
        guard = _bound(host, port)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    spawn = multiprocessing.get_context("spawn")
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start() -> BaseProcess:
        process = spawn.Process(target=serve_worker, args=(host, port, log_level), daemon=False)
        process.start()
        return process

    processes = [start() for _ in range(workers)]
    log.info("serving on http://%s:%d with %d workers", host, port, workers)
    try:
        while not stopping:
            time.sleep(0.2)
            for index, process in enumerate(processes):
                if not process.is_alive() and not stopping:
                    log.error(
                        "worker %s exited with %s; starting another", process.pid, process.exitcode
                    )
                    time.sleep(RESTART_PAUSE_S)
                    processes[index] = start()
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        guard.close()
    return 0


def main(argv: list[str]) -> int:
    workers, host, port, log_level = int(argv[0]), argv[1], int(argv[2]), argv[3]
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    return supervise(workers, host, port, log_level)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
