"""`taskmeter serve` in a process of its own, for tests that kill, restart or multiply it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

TASKMETER = str(Path(sys.executable).parent / "taskmeter")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def serve(
    database_url: str,
    cwd: Path,
    env: dict[str, str] | None = None,
    *,
    log_level: str = "warning",
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts `taskmeter serve` on a free port and waits until /readyz answers 200."""
    port = free_port()
    log = open(cwd / f"serve-{port}.log", "wb")  # noqa: SIM115 - the process owns it
    process = subprocess.Popen(
        [TASKMETER, "serve", "--port", str(port), "--log-level", log_level],
        env={**os.environ, "TASKMETER_DATABASE_URL": database_url, **(env or {})},
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                return process, base
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise AssertionError("serve did not become ready")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def descendants(pid: int) -> list[int]:
    """The processes below `pid` (its children, theirs, …), as /proc lists them now."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:  # the thread or process ended while we looked
            continue
        for child in children:
            found += [int(child), *descendants(int(child))]
    return found


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie waiting for its parent to reap it does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def accepted_connections(pids: list[int], port: int) -> dict[int, int]:
    """How many established TCP connections to local `port` each of `pids` holds open."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(fields[9])
    counts: dict[int, int] = {}
    for pid in pids:
        counts[pid] = 0
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:  # closed while we looked
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                counts[pid] += 1
    return counts
