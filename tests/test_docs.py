"""The README documents every setting and every CLI command; this fails when one is not."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main

from taskmeter.cli import app
from taskmeter.config import Settings

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    for name in Settings.model_fields:
        assert f"`TASKMETER_{name.upper()}`" in README, f"TASKMETER_{name.upper()} undocumented"


def _commands(group: Any, prefix: str = "taskmeter") -> list[str]:
    # Duck-typed: recent Typer builds on a click of its own, not the `click` package.
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found += _commands(command, path)
        else:
            found.append(path)
    return found


def test_every_command_is_in_the_readme() -> None:
    root = typer.main.get_command(app)
    commands = _commands(root)
    assert "taskmeter keys revoke" in commands
    for command in commands:
        assert command + " " in README or command + "\n" in README, f"{command} undocumented"


def test_the_readme_opens_with_the_two_commands() -> None:
    blocks = README.split("```sh\n")
    assert "pip install . && taskmeter demo && taskmeter serve" in blocks[1]
    assert "pip install -e '.[test]' && pytest" in blocks[2]
