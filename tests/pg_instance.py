"""A PostgreSQL server of a test's own on a free loopback port, which the test may stop and
start (the machine's shared server is never touched). Run as the `postgres` OS user: the
server refuses to run as root."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from tests.processes import free_port

__all__ = ["PgInstance", "pg_bin"]


def pg_bin() -> Path | None:
    """The directory of the newest PostgreSQL server binaries on this machine, if any."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


class PgInstance:
    def __init__(self) -> None:
        binaries = pg_bin()
        assert binaries is not None, "no PostgreSQL server binaries"
        self.bin = binaries
        self.root = Path(tempfile.mkdtemp(prefix="taskmeter-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o700)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync",
        )  # fmt: skip
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.root}'\nfsync = off\n"
                "max_connections = 100\n"
            )
        self.start()
        engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres",
                               isolation_level="AUTOCOMMIT")  # fmt: skip
        with engine.connect() as conn:
            conn.execute(text("CREATE DATABASE taskmeter"))
        engine.dispose()

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/taskmeter"

    def _as_postgres(self, *argv: str) -> None:
        subprocess.run(
            ["runuser", "-u", "postgres", "--", *argv],
            check=True,
            capture_output=True,
            cwd=self.root,
        )

    def start(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"
        )

    def destroy(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
            )
            if done.returncode == 0:
                return
            time.sleep(0.2)
        raise AssertionError("the test's PostgreSQL did not come back")
