"""The rules the layout promises that no linter checks for us: only ``workers/config.py`` reads the
environment with ``os.environ``/``os.getenv`` (the developer tools under ``workers/testing/`` keep
settings of their own; click's ``envvar`` options and urllib3's proxy lookup are the libraries'
own reading, declared where they are used). Import
cycles, the pure core and the import bans are checked by ``lint-imports`` and ruff (``make lint``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "workers"
ALLOWED = {PACKAGE / "config.py"}
FENCED = PACKAGE / "testing"


def _reads_environment(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        names = {"environ", "getenv", "environb"}
        if isinstance(node, ast.Attribute) and node.attr in names:
            if isinstance(node.value, ast.Name) and node.value.id == "os":
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "os"
            and any(alias.name in names for alias in node.names)
        ):
            lines.append(node.lineno)
    return lines


def test_no_production_module_but_config_reads_the_environment() -> None:
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ALLOWED or FENCED in path.parents:
            continue
        lines = _reads_environment(ast.parse(path.read_text(encoding="utf-8")))
        if lines:
            offenders[str(path.relative_to(PACKAGE))] = lines
    assert offenders == {}


def test_the_check_finds_a_module_that_reads_the_environment() -> None:
    assert _reads_environment(ast.parse("import os\nx = os.environ.get('X')\n")) == [2]
    assert _reads_environment(ast.parse("from os import getenv\n")) == [1]
