"""One exception tree for batchrun; the CLI maps each class to one line and an exit code.

::

    BatchrunError                 exit 1 unless a subclass says otherwise
    ├── UsageError                exit 2  bad flags, job file or input; nothing was sent
    │   └── InputError            exit 2  a row of the input file is invalid (file, line, column)
    ├── CheckpointError           exit 5  checkpoint locked, changed job, unreadable journal
    ├── RunStopped                exit 4  the API stopped the run (401, 403, same error row after row)
    └── Interrupted               exit 130 / 143  SIGINT / SIGTERM; finished rows kept

Messages never contain the API key: the key is read once in the client and only ever
placed in a request header.
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
    """SIGINT or SIGTERM; finished rows are kept and a rerun resumes."""

    def __init__(self, message: str, *, signal_number: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.exit_code = 128 + signal_number
