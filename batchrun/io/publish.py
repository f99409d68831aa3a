"""Putting a finished local file into object storage so that no reader sees part of it.

The file is complete on the local disk first (temp file, fsync, rename: see
:func:`batchrun.io.writers.write_atomically`). It is then uploaded to a temporary key beside
the destination and copied to the destination key in one server-side copy: S3 makes an
object visible only once its PUT or copy has completed, so a reader of the key sees the old
object or the new one, whole. (An upload straight to the key would not do: pyarrow
completes a half-written upload when its stream is closed by an exception, say Ctrl-C.)
The temporary key (``KEY.batchrun.tmp``) is deleted afterwards, and on failure.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from batchrun.io.remote import Location, RemotePath, reason

_CHUNK = 8 << 20


def publish(local: Path, dest: RemotePath) -> None:
    """Copy ``local`` to ``dest`` atomically (see the module docstring); OSError naming
    ``dest`` and why if the store refuses."""
    fs, path = dest.fs()
    # One name, not one a process: a run killed mid-upload leaves it for the next to
    # overwrite and delete (the local checkpoint lock keeps two runs off one output).
    tmp = f"{path}.batchrun.tmp"
    try:
        with open(local, "rb") as src, fs.open_output_stream(tmp) as out:
            while chunk := src.read(_CHUNK):
                out.write(chunk)
        fs.move(tmp, path)  # S3: one CopyObject, then the temporary key is deleted
    except OSError as exc:
        raise OSError(f"{reason(exc)}") from None
    finally:
        with contextlib.suppress(OSError):
            if fs.get_file_info(tmp).type.name != "NotFound":
                fs.delete_file(tmp)


def write_text(dest: Location, text: str, staging: Path) -> None:
    """Write ``text`` to a local ``dest`` atomically, or via ``staging`` (a local file) to
    an object."""
    from batchrun.io.writers import write_text_atomically

    if isinstance(dest, RemotePath):
        write_text_atomically(staging, text)
        publish(staging, dest)
    else:
        write_text_atomically(dest, text)
