"""Inputs and outputs in object storage: ``s3://bucket/key`` or any URI a pyarrow
filesystem knows (``gs://``, ``hdfs://``, ``abfs://`` …).

S3 is set up from the standard environment only: ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (an S3-compatible server such as MinIO), ``AWS_REGION`` or
``AWS_DEFAULT_REGION``; credentials through the AWS SDK's own chain (``AWS_ACCESS_KEY_ID``
and friends, ``~/.aws``, instance metadata). batchrun never reads, stores or prints them:
a :class:`RemotePath` is its URI and nothing else.

pyarrow's own filesystems do all of it (streamed GETs, ranged reads for Parquet, copy),
so there is no fsspec/s3fs dependency.
"""

from __future__ import annotations

import functools
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import BinaryIO, cast
from urllib.parse import unquote, urlsplit

import pyarrow as pa
import pyarrow.fs as pafs

from batchrun.errors import UsageError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
#: Bounded retries and timeouts: an unreachable endpoint is an error in seconds, not minutes.
_CONNECT_TIMEOUT_S = 3.0
_REQUEST_TIMEOUT_S = 30.0
_MAX_ATTEMPTS = 3
#: Bytes a streamed read asks for at a time: each is one ranged GET.
_READ_CHUNK = 8 << 20


def is_uri(text: str) -> bool:
    """Whether ``text`` names object storage (``file://`` is a local path)."""
    return bool(_URI.match(text)) and not text.lower().startswith("file://")


@dataclass(frozen=True)
class RemotePath:
    """An object in a pyarrow filesystem, named by its URI. Offers the few ``Path``
    operations a job needs (name, suffix, a sibling), so code not touching bytes is shared."""

    uri: str

    def __post_init__(self) -> None:
        parts = urlsplit(self.uri)
        if not parts.netloc or parts.path in ("", "/"):
            raise UsageError(f"{self.uri} names no object", hint="write scheme://bucket/key")
        if parts.username or parts.password:
            raise UsageError(
                f"{parts.scheme}://{parts.hostname}/… carries credentials",
                hint="give them through the environment (AWS_ACCESS_KEY_ID, …), never in the URI",
            )

    def __str__(self) -> str:
        return self.uri

    @property
    def scheme(self) -> str:
        return urlsplit(self.uri).scheme.lower()

    @property
    def name(self) -> str:
        return PurePosixPath(urlsplit(self.uri).path).name

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.name).suffix

    @property
    def stem(self) -> str:
        return PurePosixPath(self.name).stem

    def with_name(self, name: str) -> RemotePath:
        head, _, _ = self.uri.rpartition("/")
        return RemotePath(f"{head}/{name}")

    def with_suffix(self, suffix: str) -> RemotePath:
        return self.with_name(self.stem + suffix)

    def resolve(self) -> RemotePath:
        return self

    def local_name(self) -> Path:
        """A relative local path naming this object (``s3://b/k/x.parquet`` → ``s3/b/k/x.parquet``),
        for the state kept on a local disk."""
        parts = urlsplit(self.uri)
        return Path(self.scheme, parts.netloc, *PurePosixPath(parts.path).parts[1:])

    def fs(self) -> tuple[pafs.FileSystem, str]:
        """The filesystem and the path inside it."""
        if self.scheme == "s3":
            parts = urlsplit(self.uri)
            return _s3(), parts.netloc + parts.path
        try:
            return pafs.FileSystem.from_uri(self.uri)  # type: ignore[no-any-return]
        except (OSError, ValueError) as exc:
            raise UsageError(f"{self.uri}: {one_line(exc)}") from None

    def info(self, what: str) -> pafs.FileInfo:
        fs, path = self.fs()
        try:
            return fs.get_file_info(path)
        except OSError as exc:
            raise storage_error(self, what, exc) from None

    def exists(self) -> bool:
        return bool(self.info("output").type != pafs.FileType.NotFound)


#: A local file or an object in storage.
Location = Path | RemotePath


def location(text: str) -> Location:
    """A path or URI as given (``file:///x`` is the local ``/x``)."""
    if text.lower().startswith("file://"):
        return Path(unquote(urlsplit(text).path))
    return RemotePath(text) if is_uri(text) else Path(text)


@functools.cache
def _s3() -> pafs.S3FileSystem:
    """One S3 filesystem per process, set up from the environment (read once)."""
    kwargs: dict[str, object] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme or "https"
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(
        connect_timeout=_CONNECT_TIMEOUT_S,
        request_timeout=_REQUEST_TIMEOUT_S,
        retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=_MAX_ATTEMPTS),
        **kwargs,
    )


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, bounded (the server's request ids dropped)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"\s*\(Request ID: [^)]*\)", "", text)
    return text if len(text) <= 300 else text[:297] + "..."


_REASONS = (
    ("NO_SUCH_BUCKET", "its bucket does not exist"),
    ("NoSuchBucket", "its bucket does not exist"),
    ("ACCESS_DENIED", "access denied (check the credentials and the bucket's policy)"),
    ("AccessDenied", "access denied (check the credentials and the bucket's policy)"),
    ("INVALID_ACCESS_KEY_ID", "the access key is not known to the server"),
    ("SIGNATURE_DOES_NOT_MATCH", "the secret key does not match the access key"),
    ("No response body", "access denied or no credentials (the server gave no reason)"),
    ("credentials", "no usable credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"),
    ("NETWORK_CONNECTION", "the storage endpoint cannot be reached (check AWS_ENDPOINT_URL)"),
)


def storage_error(loc: RemotePath, what: str, exc: OSError) -> UsageError:
    """One line naming the URI and, where the message tells, why."""
    if isinstance(exc, FileNotFoundError):
        return UsageError(f"{what} {loc} not found")
    return UsageError(f"{what} {loc} cannot be accessed: {reason(exc)}")


def reason(exc: OSError) -> str:
    """Why a storage call failed, in a few words where the message tells, else the message."""
    text = str(exc)
    return next((r for key, r in _REASONS if key in text), None) or one_line(exc)


def state_dir() -> Path:
    """The local folder for what cannot live in object storage (the journal needs SQLite's
    locks and fsync): ``BATCHRUN_STATE_DIR``, else ``$XDG_STATE_HOME/batchrun``, else
    ``~/.local/state/batchrun``."""
    explicit = os.environ.get("BATCHRUN_STATE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    return Path(xdg) / "batchrun" if xdg else Path.home() / ".local" / "state" / "batchrun"


def remote_object(loc: RemotePath, what: str) -> pafs.FileInfo:
    """The object's info; UsageError unless it exists and is an object (not a "folder")."""
    info = loc.info(what)
    if info.type == pafs.FileType.NotFound:
        raise UsageError(f"{what} {loc} not found")
    if info.type != pafs.FileType.File:
        raise UsageError(f"{what} {loc} is a folder (a key prefix), not an object")
    return info


def open_remote(loc: RemotePath, what: str) -> BinaryIO:
    """A buffered stream over the object: one GET, read as it is consumed (never whole)."""
    remote_object(loc, what)
    fs, path = loc.fs()
    try:
        stream = fs.open_input_stream(path)
    except OSError as exc:
        raise storage_error(loc, what, exc) from None
    return cast(BinaryIO, io.BufferedReader(cast(io.RawIOBase, stream), buffer_size=_READ_CHUNK))


def open_remote_random(loc: RemotePath, what: str) -> pa.NativeFile:
    """A seekable handle (ranged GETs), for Parquet's footer-first reading."""
    remote_object(loc, what)
    fs, path = loc.fs()
    try:
        return fs.open_input_file(path)
    except OSError as exc:
        raise storage_error(loc, what, exc) from None


def etag(loc: RemotePath) -> str | None:
    """The object's ETag where the filesystem tells it (S3 does, in a GET's metadata)."""
    fs, path = loc.fs()
    try:
        with fs.open_input_stream(path) as stream:
            value = stream.metadata().get("ETag") or stream.metadata().get(b"ETag")
    except OSError as exc:
        raise storage_error(loc, "input", exc) from None
    if isinstance(value, bytes):
        return value.decode("ascii", "replace")
    return value if isinstance(value, str) else None
