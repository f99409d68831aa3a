"""The shared place of a Ray run: a folder beside a local output, or a key prefix beside an
object (``s3://b/out.parquet`` → ``s3://b/out.shards/``). The driver and every worker read
and write it, so on a cluster it must be storage they all reach (object storage, or a
shared file system). It holds the shards' inputs, their finished parts and summaries, and
the copies of their journals; never a journal in use (SQLite wants a local disk).

Every write is whole or absent: a temp name, then a rename (or, for an object, an upload
beside the key and one server-side copy, :func:`batchrun.io.publish.publish`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchrun.io.publish import publish
from batchrun.io.remote import Location, RemotePath, open_remote_random, reason


class Store:
    def __init__(self, base: Location) -> None:
        self.base = base

    def __str__(self) -> str:
        return str(self.base)

    def at(self, name: str) -> Location:
        if isinstance(self.base, RemotePath):
            return RemotePath(f"{self.base.uri.rstrip('/')}/{name}")
        return self.base / name

    def exists(self, name: str) -> bool:
        loc = self.at(name)
        return loc.exists() if isinstance(loc, RemotePath) else loc.is_file()

    def put(self, local: Path, name: str) -> None:
        """Copy the local file in, whole (OSError naming why if the store refuses)."""
        dest = self.at(name)
        if isinstance(dest, RemotePath):
            publish(local, dest)
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f"{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(local, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)

    def move_in(self, local: Path, name: str) -> None:
        """Like :meth:`put`, the local file gone after (a rename when the store is local)."""
        dest = self.at(name)
        if isinstance(dest, RemotePath):
            publish(local, dest)
            local.unlink()
            return
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(local, dest)
        except OSError:  # another file system: copy, then remove
            self.put(local, name)
            local.unlink()

    def get(self, name: str, local: Path) -> bool:
        """Copy the file out to ``local`` (whole); False when the store has none."""
        if not self.exists(name):
            return False
        src = self.at(name)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(local.name + ".fetching")
        if isinstance(src, RemotePath):
            fs, path = src.fs()
            try:
                with fs.open_input_stream(path) as stream, open(tmp, "wb") as out:
                    while chunk := stream.read(8 << 20):
                        out.write(chunk)
            except OSError as exc:
                raise OSError(f"{src}: {reason(exc)}") from None
        else:
            shutil.copyfile(src, tmp)
        os.replace(tmp, local)
        return True

    def read_text(self, name: str) -> str | None:
        loc = self.at(name)
        if isinstance(loc, RemotePath):
            if not loc.exists():
                return None
            fs, path = loc.fs()
            with fs.open_input_stream(path) as stream:
                return bytes(stream.read()).decode("utf-8")
        try:
            return loc.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None

    def parquet(self, name: str) -> pq.ParquetFile:
        loc = self.at(name)
        if isinstance(loc, RemotePath):
            return pq.ParquetFile(open_remote_random(loc, "shard part"))
        return pq.ParquetFile(loc)

    def clear(self) -> None:
        """Remove everything (``--restart``)."""
        if isinstance(self.base, RemotePath):
            fs, path = self.base.fs()
            with contextlib.suppress(OSError):
                if fs.get_file_info(path).type == pafs.FileType.Directory:
                    fs.delete_dir(path)
        else:
            shutil.rmtree(self.base, ignore_errors=True)
