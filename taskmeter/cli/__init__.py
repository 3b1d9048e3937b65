"""The `taskmeter` command: operator CLI and server entry point."""

from __future__ import annotations

from taskmeter.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    app()
