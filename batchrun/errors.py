"""One exception tree for batchrun; the CLI maps each class to one line and an exit code.

::

    BatchrunError                 exit 1 unless a subclass says otherwise
    ├── UsageError                exit 2  bad flags, job file or input; nothing was sent
    │   ├── InputError            exit 2  a row of the input file is invalid (file, line, column)
    │   └── InvalidInput          exit 2  the validation pass found invalid rows (all of them)
    ├── CheckpointError           exit 5  checkpoint locked, changed job or input, unreadable journal
    │   ├── JournalFailed         exit 5  the journal could not be written (disk full)
    │   └── OutputNotWritten      exit 5  OUTPUT could not be written; every row is in the journal
    ├── RunStopped                exit 4  the API stopped the run (401, 403, same error row after row)
    ├── Interrupted               exit 130 / 143 / 129  SIGINT / SIGTERM / SIGHUP; finished rows kept
    ├── SendFailed                one attempt of one row gave no usable answer (batchrun.send)
    │   ├── Retryable             worth another attempt after a wait (429, 5xx, timeouts, resets)
    │   ├── RowFailed             this row will not succeed: it becomes an error row (400, 404, …)
    │   └── StopRun               no row will succeed (401, 403): the run stops, resumably
    └── NotSent                   control flow: the run is stopping, this row is left for the next run
        └── Stopped               the limiter is stopped: no slot, no pause, no send

``SendFailed`` and ``NotSent`` never reach the CLI: the send path turns them into error rows
or a ``RunStopped``.

Internal, caught inside the package, never escape it (each where it is caught)::

    ValueError                    so that a parser's ``except ValueError`` holds them too
    ├── UnpairedSurrogate         fastjson: a lone surrogate escape at ``path`` → InputError
    ├── NestingTooDeep            fastjson: nested deeper than the stack allows → InputError
    ├── ImageProblem              an image cannot be sent → InputError (validation) or
    │                             RowFailed (read or fetched when its row is sent)
    ├── Mismatch                  a validated value its typed column cannot hold → a re-ask
    └── BadLine                   a Batch API results line that is no result: counted, skipped
    Exception
    └── EmbeddedError             a 2xx whose body is the gateway's error body → SendFailed

This module imports nothing of the package: every module, :mod:`batchrun.send` and
:mod:`batchrun.fastjson` included, can import it without a cycle. Messages never contain the API key: every text that came from a server
is redacted (:mod:`batchrun.send.redact`) before it is cut, stored or printed.
"""

from __future__ import annotations

from typing import Any


class BatchrunError(Exception):
    """Base of every error batchrun raises on purpose."""

    exit_code: int = 1
    #: The run's Summary when a run stopped part-way (RunStopped, Interrupted).
    summary: Any = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class UsageError(BatchrunError):
    """Bad options, job file, or environment. Raised before any request is sent."""

    exit_code = 2


class InputError(UsageError):
    """A row of the input cannot become a request. Names file, line (or row) and column."""

    def __init__(
        self,
        message: str,
        *,
        file: str,
        line: int | None = None,
        row: int | None = None,
        column: str | None = None,
        hint: str | None = None,
    ) -> None:
        self.file = file
        self.line = line
        self.row = row
        self.column = column
        where = [file]
        if line is not None:
            where.append(f"line {line}")
        if row is not None:
            where.append(f"row {row}")
        if column is not None:
            where.append(f"column {column!r}")
        super().__init__(f"{', '.join(where)}: {message}", hint=hint)
        self.detail = message


class InvalidInput(UsageError):
    """Several invalid rows found while validating the whole input (carries all of them)."""

    def __init__(self, errors: list[InputError], total_invalid: int) -> None:
        self.errors = errors
        self.total_invalid = total_invalid
        first = errors[0]
        more = total_invalid - 1
        hint = (
            f"{more} more invalid row{'s' if more != 1 else ''}; "
            "run with --dry-run to list them all"
            if more
            else None
        )
        super().__init__(first.message, hint=hint if hint else first.hint)


class CheckpointError(BatchrunError):
    """The checkpoint cannot be used as it is; nothing was sent."""

    exit_code = 5


class RunStopped(BatchrunError):
    """The API (or a budget) stopped the run; finished rows are kept and a rerun resumes."""

    exit_code = 4


class Interrupted(BatchrunError):
    """SIGINT, SIGTERM or SIGHUP; finished rows are kept and a rerun resumes."""

    def __init__(self, message: str, *, signal_number: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = 128 + signal_number


class JournalFailed(CheckpointError):
    """The journal could not be written (disk full, I/O error); ``cause`` is why."""

    def __init__(self, cause: BaseException, *, path: object = None) -> None:
        where = f" {path}" if path is not None else ""
        super().__init__(
            f"the checkpoint journal{where} cannot be written ({cause})",
            hint="free disk space or fix the folder's permissions, then rerun the same command to resume",
        )
        self.cause = cause


class OutputNotWritten(CheckpointError):
    """The output file could not be written (disk full); the journal holds every row."""

    def __init__(self, path: object, cause: OSError) -> None:
        super().__init__(
            f"cannot write {path} ({cause.strerror or cause})",
            hint="every finished row is kept in the checkpoint: free space and rerun the same "
            "command (nothing is sent again)",
        )


class SendFailed(BatchrunError):
    """One attempt did not give a usable answer.

    ``definite`` is True when the server answered (the outcome of the send is known), False
    for timeouts and dropped connections, where the server may have done the work anyway.
    ``sent`` is False when the request never left (the connection could not be made): it is
    not counted as a request, and no server can have billed it.
    """

    def __init__(
        self,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        definite: bool = True,
        sent: bool = True,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        self.retry_after_s = retry_after_s
        self.definite = definite
        self.sent = sent
        #: The server's id for the failed request, where its error body names one.
        self.request_id = request_id
        #: The gateway's ``x-inference-id`` of the answer, where one came.
        self.inference_id: str | None = None


class Retryable(SendFailed):
    """Worth trying again after a wait."""


class RowFailed(SendFailed):
    """This row will not succeed by retrying: it becomes an error row."""


class StopRun(SendFailed):
    """No row will succeed (bad key, no credits): stop the whole run, resumably."""


class NotSent(BatchrunError):
    """The run is stopping: this row is left for the next run (control flow, not a failure)."""

    def __init__(self, message: str = "the run is stopping") -> None:
        super().__init__(message)


class Stopped(NotSent):
    """The limiter is stopped: every wait in it ends at once, no slot is handed out."""


# Internal: each is caught inside the package and turned into one of the above (or counted).


def format_path(path: list[str | int]) -> str:
    """``["messages", 0, "content"]`` → ``messages[0].content``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(the value itself)"


class UnpairedSurrogate(ValueError):
    """A string (or key) holds a lone surrogate escape; ``path`` says where, e.g.
    ``["messages", 0, "content"]``."""

    def __init__(self, path: list[str | int]) -> None:
        self.path = path
        super().__init__(f"unpaired surrogate escape at {format_path(path)}")


class NestingTooDeep(ValueError):
    """Arrays and objects nested deeper than the parser's stack allows."""


class ImageProblem(ValueError):
    """Why an image cannot be sent (the message names the image)."""


class Mismatch(ValueError):
    """A validated value its column cannot hold (an integer beyond 64 bits, say)."""


class BadLine(ValueError):
    """A results line that is not a result (counted and skipped: never attributed)."""


class EmbeddedError(Exception):
    """A success status whose body is the gateway's error body (``statusCode`` inside)."""

    def __init__(self, status: int, message: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.request_id = request_id
