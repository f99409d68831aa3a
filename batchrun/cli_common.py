"""What every command shares: running the library, one-line errors, stdout that may close."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import os
import shlex
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import click
import pyarrow as pa

from batchrun.errors import BatchrunError, InvalidInput

#: Set to 1 to see the traceback of unexpected errors.
DEBUG_ENV = "BATCHRUN_DEBUG"

T = TypeVar("T")

#: Allocations between two collections of the youngest generation (Python's default: 700).
GC_THRESHOLD = 5_000


#: ``asyncio`` runs on the standard library's event loop even where uvloop is installed.
EVENT_LOOP_ENV = "BATCHRUN_EVENT_LOOP"


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed: its C transports cut the client's CPU per
    request (measured in ``make bench``). ``BATCHRUN_EVENT_LOOP=asyncio`` opts out."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if os.environ.get(EVENT_LOOP_ENV, "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            factory = uvloop.new_event_loop
    # What is loaded by now (modules, the job, the input's scan) lives until the process
    # ends: kept out of the cyclic collector's sight, its full collections no longer walk
    # it over and over during the run. A row allocates a few hundred objects, nearly all
    # freed by reference counting; collecting every 700 allocations (the default) mostly
    # found rows still in flight and promoted them. Measured in bench.instructions; 20,000
    # counted no fewer instructions and held 20 MB more in scenario D (exceptions' cycles).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


def use_system_allocator() -> None:
    """Give Arrow the C library's allocator unless ARROW_DEFAULT_MEMORY_POOL chooses one.

    Arrow's default (mimalloc) keeps what it once held: reading a 1,000,000-row Parquet
    input batch by batch left the process 45 MB larger than a 100,000-row one, against
    14 MB with the system allocator (measured; see ``make bench``, scenario E)."""
    if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
        pa.set_memory_pool(pa.system_memory_pool())


class Stdout:
    """What the commands print on stdout. A closed stdout (``batchrun run … | head``) is no
    failure of the run, whose exit code stays the run's; another write error (a full disk)
    is said once on stderr. Either way the rest of stdout goes nowhere, and no traceback."""

    def __init__(self) -> None:
        self.closed = False
        self.error: str | None = None

    def echo(self, text: str) -> None:
        if self.closed:
            return
        try:
            click.echo(text)
        except OSError as exc:
            self.closed = True
            _stdout_to_devnull()  # the interpreter's last flush must not fail again
            if exc.errno != errno.EPIPE:
                self.error = exc.strerror or str(exc)
                say(f"batchrun: cannot write to standard output: {self.error}")


def _stdout_to_devnull() -> None:
    try:
        fd = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(fd, sys.stdout.fileno())
        finally:
            os.close(fd)
    except (OSError, ValueError):  # no real descriptor (a test runner's buffer)
        pass


def say(line: str) -> None:
    """One line on stderr; a stderr that cannot take it is not worth a traceback."""
    with contextlib.suppress(OSError):
        click.echo(line, err=True)


def fail(error: BatchrunError, *, every_row: bool = False, resume: str | None = None) -> None:
    """One clear line (and, for a dry run, every invalid row found), then the exit code."""
    if isinstance(error, InvalidInput) and every_row:
        for e in error.errors:
            say(f"batchrun: invalid: {e}")
        shown = len(error.errors)
        more = (
            f" ({error.total_invalid - shown:,} more not listed)"
            if error.total_invalid > shown
            else ""
        )
        say(f"batchrun: error: {error.total_invalid:,} invalid rows{more}; nothing was sent")
    else:
        # One line, whatever a library or a server put into the message.
        say(f"batchrun: error: {' '.join(str(error).splitlines())}")
    if resume is not None:
        say(f"batchrun: to resume: {resume}")
    sys.exit(error.exit_code)


def resume_command(argv: list[str], restarted: bool) -> str:
    """The command that resumes an interrupted run: the same one, without starting over
    (which would throw away what this run recorded), whether --restart was a flag or a
    job-file setting."""
    args = [a for a in argv[1:] if a != "--restart"]
    if restarted:
        args.append("--no-restart")
    return shlex.join(["batchrun", *args])
