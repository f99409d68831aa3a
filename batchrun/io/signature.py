"""What identifies an input file: its size and a digest of its content (the checkpoint
stores it, so that a rerun on another input is refused)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from batchrun.io.files import open_regular, regular_file


def file_digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open_regular(path, "input file") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSignature:
    """What identifies the input: size and content digest (mtime only as a shortcut)."""

    size: int
    mtime_ns: int
    digest: str

    @classmethod
    def of(cls, path: Path, known: InputSignature | None = None) -> InputSignature:
        st = regular_file(path, "input file")
        if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
            return known  # unchanged file: skip re-reading it
        return cls(st.st_size, st.st_mtime_ns, file_digest(path))

    def same_content(self, other: InputSignature) -> bool:
        return self.size == other.size and self.digest == other.digest
