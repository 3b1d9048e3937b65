"""What the benchmarks share: the workload's vocabulary, stores, `serve` and percentiles."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

PG_URL = os.environ.get("TASKMETER_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TASKMETER = str(Path(sys.executable).parent / "taskmeter")
MODELS = [
    ("gpt-4o", "openai"),
    ("gpt-4o-mini", "openai"),
    ("claude-sonnet-4-5", "anthropic"),
    ("claude-3-5-haiku-20241022", "anthropic"),
    ("gemini-2.5-pro", "google"),
]
TOOLS = [
    "nuclei", "httpx", "nmap", "subfinder", "katana", "ffuf", "sqlmap", "dnsx", "naabu", "gau",
    "waybackurls", "dalfox", "trufflehog", "gitleaks", "semgrep", "amass", "masscan", "wpscan",
    "nikto", "testssl", "whatweb", "tlsx",
]  # fmt: skip
AGENTS = ["recon", "exploit", "report", "triage", "verify", "pivot"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def create_pg_database(name: str | None = None) -> tuple[str, Callable[[], None]]:
    """A fresh database on the benchmark server: its URL and a function that drops it."""
    name = name or f"taskmeter_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(
        PG_URL.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    return PG_URL.rpartition("/")[0] + f"/{name}", drop


def _process_tree(pid: int) -> list[int]:
    pids = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            pids.extend(_process_tree(int(child)))
    return pids


def rss_mib(pid: int) -> float:
    """Resident memory of `pid` and its descendants (`serve --workers N` forks N workers)."""
    total = 0.0
    for member in _process_tree(pid):
        try:
            status = Path(f"/proc/{member}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


def _sockets(options: str, port: int | str, *state: str) -> list[str]:
    """`ss`'s lines (no header) for the TCP sockets on local port `port`."""
    return subprocess.run(
        ["ss", options, *state, f"( sport = :{port} )"], capture_output=True, text=True, check=False
    ).stdout.splitlines()


def _listeners(port: int) -> int:
    """How many sockets listen on `port` (one a worker: each binds its own, SO_REUSEPORT)."""
    return len(_sockets("-Htln", port))


def start_serve(url: str, workdir: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    """`taskmeter serve` on a free loopback port, once /readyz answers and every worker
    listens: connections opened while only the first listened all went to it (an 8 + 0 run)."""
    workers = int(env.get("TASKMETER_WORKERS", "1"))
    port = free_port()
    server = subprocess.Popen(
        [TASKMETER, "serve", "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "TASKMETER_DATABASE_URL": url, **env},
        cwd=workdir,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz").status_code == 200 and _listeners(port) >= workers:
                return server, base
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("serve did not become ready")


def connections_by_process(base: str) -> list[int]:
    """How many established connections to `base` each serving process holds, most first.
    With `--workers N` the kernel spreads connections over the workers by a hash: a run in
    which one worker holds most of them measures mostly that worker (bench/README.md)."""
    port = base.rpartition(":")[2]
    counts: dict[str, int] = {}
    for line in _sockets("-Htnp", port, "state", "established"):
        _, _, users = line.partition("pid=")
        pid = users.split(",", 1)[0]
        if pid:
            counts[pid] = counts.get(pid, 0) + 1
    return sorted(counts.values(), reverse=True)


def stop_serve(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    server.wait(timeout=30)


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
