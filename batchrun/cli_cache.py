"""``batchrun cache stats|clear DIR``: the response cache that ``run --cache DIR`` uses."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

import click

from batchrun.cache import ResponseCache
from batchrun.cli_common import Stdout, fail
from batchrun.errors import BatchrunError, UsageError


def _open(directory: Path) -> ResponseCache:
    cache = ResponseCache(directory)
    if not cache.open(create=False):
        raise UsageError(
            f"no response cache in {directory}",
            hint="give the folder that `batchrun run --cache` was given",
        )
    return cache


@click.group()
def cache() -> None:
    """The response cache of `run --cache DIR`: what it holds, and clearing it."""


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
def stats(directory: Path) -> None:
    """How many answers DIRECTORY's cache holds, their tokens, ages and models."""
    out = Stdout()
    try:
        c = _open(directory)
        try:
            lines = c.stats().lines()
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"cannot read the response cache {c.path}: {exc}") from None
        finally:
            c.close()
    except BatchrunError as exc:
        fail(exc)
    for line in lines:
        out.echo(line)
    if out.error is not None:
        sys.exit(1)


@cache.command()
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--older-than",
    type=click.FloatRange(min=0),
    help="Remove only answers stored more than DAYS days ago. [default: remove every answer]",
    metavar="DAYS",
)
def clear(directory: Path, older_than: float | None) -> None:
    """Remove the answers of DIRECTORY's cache (every one, or those older than DAYS)."""
    out = Stdout()
    try:
        c = _open(directory)
        try:
            removed = c.clear(older_than)
        except sqlite3.DatabaseError as exc:
            raise UsageError(f"cannot clear the response cache {c.path}: {exc}") from None
        finally:
            c.close()
    except BatchrunError as exc:
        fail(exc)
    what = f" older than {older_than:g} days" if older_than is not None else ""
    out.echo(f"removed {removed:,} answers{what} from {directory}")
