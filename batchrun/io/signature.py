"""What identifies an input file: its size and a digest of its content (the checkpoint
stores it, so that a rerun on another input is refused)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from batchrun.io.files import open_input, regular_file
from batchrun.io.remote import Location, RemotePath, etag, remote_object


def file_digest(path: Location) -> str:
    """Digest of the content, streamed (an object in storage is read, never held whole)."""
    h = hashlib.blake2b(digest_size=16)
    with open_input(path, "input file") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSignature:
    """What identifies the input: size and content digest (mtime, and an object's ETag,
    only as a shortcut that saves reading an unchanged input again)."""

    size: int
    mtime_ns: int
    digest: str
    #: An object's ETag (None: a local file, or a store that gives none).
    etag: str | None = None

    @classmethod
    def of(cls, path: Location, known: InputSignature | None = None) -> InputSignature:
        if isinstance(path, RemotePath):
            return cls._of_object(path, known)
        st = regular_file(path, "input file")
        if known is not None and known.size == st.st_size and known.mtime_ns == st.st_mtime_ns:
            return known  # unchanged file: skip re-reading it
        return cls(st.st_size, st.st_mtime_ns, file_digest(path))

    @classmethod
    def _of_object(cls, path: RemotePath, known: InputSignature | None) -> InputSignature:
        info = remote_object(path, "input file")
        size, mtime_ns, tag = int(info.size or 0), int(info.mtime_ns or 0), etag(path)
        # Object mtimes have whole seconds: an object replaced within the second by one of
        # the same size would pass an (size, mtime) check. The ETag changes with the content.
        if (
            known is not None
            and tag is not None
            and (known.size, known.mtime_ns, known.etag) == (size, mtime_ns, tag)
        ):
            return known
        return cls(size, mtime_ns, file_digest(path), tag)

    def same_content(self, other: InputSignature) -> bool:
        return self.size == other.size and self.digest == other.digest
