"""Opening the files a user names (input, job file, price file) without trusting them.

Each must be a regular file: ``open()`` on a FIFO blocks until a writer comes, and then
neither SIGINT nor SIGTERM reach the run (the handlers run on the blocked event loop);
a folder or a device is no input either. The file is opened non-blocking and checked
with ``fstat`` on the open descriptor, so nothing swapped in after a check is read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import BinaryIO

from batchrun.errors import UsageError
from batchrun.io.remote import Location, RemotePath, open_remote, remote_object


def _refusal(path: Path, what: str, exc: OSError) -> UsageError:
    if exc.errno == errno.ENOENT:
        return UsageError(f"{what} {path} not found")
    if exc.errno == errno.ENOTDIR:
        return UsageError(f"{what} {path} not found (a part of its path is not a folder)")
    return UsageError(f"{what} {path} cannot be read: {exc.strerror or exc}")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _not_regular(path: Path, what: str, mode: int) -> UsageError:
    return UsageError(
        f"{what} {path} is {_kind(mode)}, not a regular file",
        hint="copy the data into a file first",
    )


def regular_file(path: Path, what: str) -> os.stat_result:
    """``stat`` of ``path``; UsageError (naming ``what``, e.g. "input file") unless it is a
    readable regular file. For readers that take a path (pyarrow) rather than a file."""
    try:
        st = path.stat()
    except OSError as exc:
        raise _refusal(path, what, exc) from None
    if not stat.S_ISREG(st.st_mode):
        raise _not_regular(path, what, st.st_mode)
    return st


def open_regular(path: Path, what: str) -> BinaryIO:
    """Open ``path`` for binary reading; UsageError unless it is a readable regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise _not_regular(path, what, stat.S_IFDIR) from None
        raise _refusal(path, what, exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise _not_regular(path, what, mode)
        # Non-blocking means nothing to a regular file; clear it all the same.
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def why_unwritable(path: Path, exc: OSError) -> str:
    """Why ``path`` (a file or folder to create) could not be made, in a few words: a part
    of its way that is a file says more than mkdir's "File exists" or "Not a directory"."""
    blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return f"{blocker} is a file, not a folder"
    return exc.strerror or str(exc)


def check_input(loc: Location, what: str) -> None:
    """UsageError unless ``loc`` is a readable regular file or an object in storage."""
    if isinstance(loc, RemotePath):
        remote_object(loc, what)
    else:
        regular_file(loc, what)


def open_input(loc: Location, what: str) -> BinaryIO:
    """Open a local file (see :func:`open_regular`) or stream an object, for binary reading."""
    if isinstance(loc, RemotePath):
        return open_remote(loc, what)
    return open_regular(loc, what)
