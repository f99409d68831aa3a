"""Checks of single settings, shared by the job and the settings loader: numbers, the
base URL, the API key, templates. Each raises :class:`UsageError` with one clear line."""

from __future__ import annotations

import math
import unicodedata
from string import Formatter
from urllib.parse import urlsplit

from batchrun.errors import UsageError


def check(ok: bool, message: str) -> None:
    if not ok:
        raise UsageError(message)


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return (is_int(value) or isinstance(value, float)) and math.isfinite(float(value))  # type: ignore[arg-type]


def _without_credentials(url: str) -> str:
    """``url`` with any ``user:password@`` replaced by ``***@``, fit to print."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, path = rest.partition("/")
    if "@" in netloc:
        netloc = "***@" + netloc.rpartition("@")[2]
    return f"{scheme}{sep}{netloc}{slash}{path}"


def check_base_url(url: object, api_key_env: str = "AIMLAPI_KEY") -> None:
    """Refuse a base URL no request could go to, before anything is sent: scheme http or
    https, a host, a port from 1 to 65535, no query or fragment (requests go to
    BASE_URL/chat/completions), no spaces or control characters, and no credentials (they
    would be stored with the job; the key belongs in the environment). Messages never
    show a password."""
    check(isinstance(url, str), f"base_url must be a string, got {url!r}")
    assert isinstance(url, str)
    shown = _without_credentials(url)
    check(
        not any(c.isspace() or unicodedata.category(c)[0] == "C" for c in url),
        f"base_url {shown!r} holds spaces or control characters",
    )
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        reason = "port must be from 1 to 65535" if "ort" in str(exc) else str(exc)
        raise UsageError(f"base_url {shown!r} is not a valid URL: {reason}") from None
    if parts.username is not None or parts.password is not None:
        raise UsageError(
            f"base_url {shown!r} carries credentials (user:password@)",
            hint=f"remove them: the API key comes from the environment variable {api_key_env}",
        )
    check(
        parts.scheme in ("http", "https"),
        f"base_url must start with http:// or https://, got {shown!r}",
    )
    check(bool(parts.hostname), f"base_url {shown!r} names no host")
    check(port is None or port >= 1, f"base_url {shown!r}: port must be from 1 to 65535")
    check(
        not parts.query and not parts.fragment and "?" not in url and "#" not in url,
        f"base_url {shown!r} must not have a query or fragment (requests go to BASE_URL/chat/completions)",
    )


def check_api_key(value: str, env_name: str) -> None:
    """Refuse an API key that cannot go into an ``Authorization`` header as it is: control
    characters (CR, LF, NUL, zero-width and other invisible format characters) or
    whitespace inside it (the ends are trimmed). A CR/LF would split the header; a space
    or an invisible character is a copy-paste accident the server answers with 401 on
    every row. The message names the position, never a character of the key."""
    key = value.strip()
    for i, c in enumerate(key, start=1):
        if unicodedata.category(c)[0] == "C":
            what = "a line break" if c in "\r\n" else "a control or invisible character"
        elif c.isspace():
            what = "whitespace"
        else:
            continue
        raise UsageError(
            f"the API key in environment variable {env_name} contains {what} (at character {i})",
            hint=f"set {env_name} to the key alone, on one line",
        )


def _placeholder(name: str, conversion: str | None, spec: str | None) -> str:
    return (
        "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
    )


def template_columns(template: str) -> list[str]:
    """The column names a ``{column}`` template refers to; raises UsageError if malformed."""
    try:
        parsed = list(Formatter().parse(template))
    except ValueError as exc:
        raise UsageError(
            f"template is malformed: {exc}", hint="write a literal brace as {{ or }}"
        ) from None
    names: list[str] = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        check(bool(name), "template has an empty {} placeholder; name a column, e.g. {text}")
        unsupported = [
            *([f"a conversion (!{conversion})"] if conversion else []),
            *([f"a format spec (:{spec})"] if spec else []),
        ]
        if unsupported:
            column = name.split(".")[0].split("[")[0]
            raise UsageError(
                f"template placeholder {_placeholder(name, conversion, spec)} uses "
                f"{' and '.join(unsupported)}; templates do not support conversions or format specs",
                hint=f"write {{{column}}} and put any formatting in the column itself",
            )
        check(
            not any(c in name for c in ".["),
            f"template placeholder {{{name}}} must be a plain column name "
            "(attribute and index access are not supported)",
        )
        if name not in names:
            names.append(name)
    check(bool(names), "template names no column; use {column} placeholders")
    return names
