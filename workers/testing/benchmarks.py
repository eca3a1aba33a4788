"""What the ledger benchmarks under ops/ share: each creates, migrates and drops a database of its
own next to a superuser connection, and says so in the same words."""

from __future__ import annotations

import argparse
import os

from workers.config import DEFAULT_DATABASE_URL


def ledger_bench_parser(description: str | None) -> argparse.ArgumentParser:
    """A benchmark's parser (its module docstring as the description, kept as written) with
    ``--database-url``, the superuser connection it makes its own database next to."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL", DEFAULT_DATABASE_URL),
        help="a superuser connection; the benchmark creates and drops its own database next to it"
        " (env DATABASE_URL)",
    )
    return parser
