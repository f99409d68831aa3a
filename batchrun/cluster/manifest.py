"""The manifest beside a Ray run's output: what the shards were cut from, and how far each
got. Written whole and renamed into place; a rerun with another input, job or K is refused
(exit 5) naming what changed."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from batchrun.errors import CheckpointError
from batchrun.io.publish import write_text
from batchrun.io.remote import Location, RemotePath
from batchrun.prepare import RESTART_HINT, fingerprint_diff

VERSION = 1
PENDING, COMPLETE = "pending", "complete"


@dataclass
class Manifest:
    input_digest: str
    shards: int
    fingerprint: dict[str, Any]
    ranges: list[tuple[int, int]]
    states: list[str] = field(default_factory=list)
    #: Names the shards' journals on the workers' disks: a --restart gets a new one, so
    #: a journal left on a worker by an earlier run is never resumed.
    run_id: str = ""
    version: int = VERSION

    def save(self, path: Location, staging: Path) -> None:
        """Whole or not at all (a local temp file renamed, or one upload and copy)."""
        write_text(path, json.dumps(asdict(self), indent=1), staging)

    @classmethod
    def load(cls, path: Location) -> Manifest | None:
        try:
            if isinstance(path, RemotePath):
                if not path.exists():
                    return None
                fs, key = path.fs()
                with fs.open_input_stream(key) as stream:
                    text = bytes(stream.read()).decode("utf-8")
            else:
                text = path.read_text(encoding="utf-8")
            data = json.loads(text)
            data["ranges"] = [tuple(r) for r in data["ranges"]]
            m = cls(**data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(
                f"the Ray manifest {path} cannot be read ({type(exc).__name__})",
                hint=RESTART_HINT,
            ) from None
        if m.version != VERSION or len(m.states) != len(m.ranges):
            raise CheckpointError(
                f"the Ray manifest {path} is of another version", hint=RESTART_HINT
            )
        return m

    def check_same(
        self, path: Location, digest: str, shards: int, fingerprint: dict[str, Any]
    ) -> None:
        changed = []
        if digest != self.input_digest:
            changed.append("the input")
        if shards != self.shards:
            changed.append(f"--shards ({self.shards} then, {shards} now)")
        diff = fingerprint_diff(self.fingerprint, fingerprint)
        if diff:
            changed.append(f"the job ({', '.join(diff)})")
        if changed:
            raise CheckpointError(
                f"{' and '.join(changed)} changed since the Ray manifest {path} was made",
                hint=RESTART_HINT,
            )
