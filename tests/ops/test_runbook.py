"""ops/RUNBOOK.md documents only commands and options that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest

from workers.cli import main

RUNBOOK = Path(__file__).resolve().parents[2] / "ops" / "RUNBOOK.md"
# `reservations <words and options>` in inline code, or a line of a code block.
INVOCATION = re.compile(r"(?:`|^)(reservations(?: [^`#\n]+?)?)\s*(?:`|#|$)", re.MULTILINE)


def invocations() -> list[str]:
    found = {match.group(1).strip() for match in INVOCATION.finditer(RUNBOOK.read_text())}
    return sorted(line for line in found if "<command>" not in line)


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command the words name, and the words left over (its options and arguments)."""
    command: click.Command = main
    ctx = click.Context(main)
    while words and isinstance(command, click.Group):
        sub = command.get_command(ctx, words[0])
        if sub is None:
            break
        command, words = sub, words[1:]
    return command, words


def test_the_runbook_mentions_the_operators_commands() -> None:
    mentioned = {resolve(line.split()[1:])[0].name for line in invocations()}
    assert {"redrive", "verify", "rebuild", "checkpoint", "history", "show", "migrate"} <= mentioned


@pytest.mark.parametrize("line", invocations())
def test_every_documented_command_and_option_exists(line: str) -> None:
    command, rest = resolve(line.split()[1:])
    assert not isinstance(command, click.Group) or not rest, f"{line}: no such command"
    options = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    options.add("--help")
    for word in rest:
        if word.startswith("--"):
            assert word.split("=")[0] in options, f"{line}: {command.name} has no option {word}"
