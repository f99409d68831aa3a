"""Redaction of secrets from every text a server sent, before it is cut, stored or printed.

A server may echo the ``Authorization`` header anywhere it puts text: an error body, a
stream chunk, the ``model`` or ``id`` of an answer, a header. The key must not survive in
any form a reader could use, so not only the whole key is replaced but every run of
:data:`MIN_RUN` or more of its characters (a cut that leaves 25 of 26 characters is a
leaked key). Texts are redacted *before* they are cut short: a key straddling the cut would
no longer be found whole.
"""

from __future__ import annotations

import dataclasses
import operator
import re
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

#: The shortest run of a secret's characters that is redacted wherever it appears.
MIN_RUN = 12
MASK = "***"

T = TypeVar("T")


class Redactor:
    """Replaces secrets (and any run of MIN_RUN of their characters) in texts."""

    __slots__ = ("_probe", "_secrets")

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        # Any run of MIN_RUN characters of a secret contains one of its chunks of MIN_RUN/2
        # that start at a multiple of MIN_RUN/2: a cheap first test that nearly every
        # clean text passes at the cost of a few substring searches.
        step = MIN_RUN // 2
        probes: set[str] = set()
        for s in self._secrets:
            if len(s) <= MIN_RUN:
                probes.add(s)
            else:
                probes.update(s[i : i + step] for i in range(0, len(s) - step + 1, step))
        # One regex search (in C) per text rather than a substring test per probe.
        self._probe = (
            re.compile("|".join(re.escape(p) for p in sorted(probes))).search if probes else None
        )

    def __repr__(self) -> str:
        return f"Redactor(secrets={len(self._secrets)})"

    def __call__(self, text: str) -> str:
        if not text or self._probe is None or self._probe(text) is None:
            return text
        for secret in self._secrets:
            text = text.replace(secret, MASK)
            text = _mask_runs(text, secret)
        return text

    def clean(self, text: str, limit: int) -> str:
        """Redact, then cut to ``limit`` characters (in that order)."""
        text = self(text)
        return text if len(text) <= limit else text[:limit] + "…"

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self(text)

    def fields(self, record: T) -> T:
        """A copy of a dataclass with every text field redacted (the same object if none
        needed it)."""
        if self._probe is None:
            return record
        names, get = _text_fields(type(record))
        values = get(record)
        # One search over all texts at once (joined by a character no key holds): nearly
        # every answer is clean, and then that is all it costs.
        try:
            if self._probe("\0".join(filter(None, values))) is None:
                return record
        except TypeError:  # a text field holding something else: look at each in turn
            pass
        changes = {}
        for name, value in zip(names, values, strict=True):
            if isinstance(value, str) and (clean := self(value)) is not value:
                changes[name] = clean
        return dataclasses.replace(record, **changes) if changes else record  # type: ignore[type-var]


_TEXT_FIELDS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _text_fields(cls: type[Any]) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The fields of a dataclass that may hold text, and one getter for all of them:
    looked up once per class (dataclasses.fields() on every answer costs)."""
    found = _TEXT_FIELDS.get(cls)
    if found is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if "str" in str(f.type))
        get: Callable[[Any], tuple[Any, ...]]
        if len(names) > 1:
            get = operator.attrgetter(*names)
        else:  # attrgetter of one name returns the value, not a tuple
            get = lambda r: tuple(getattr(r, n) for n in names)  # noqa: E731
        found = _TEXT_FIELDS[cls] = (names, get)
    return found


def _mask_runs(text: str, secret: str) -> str:
    """Mask every maximal run of at least MIN_RUN characters of ``secret`` in ``text``."""
    run = min(MIN_RUN, len(secret))
    out: list[str] = []
    i = 0
    n = len(text)
    while i <= n - run:
        j = secret.find(text[i : i + run])
        if j < 0:
            i += 1
            continue
        # Extend the match as far as text and secret agree.
        end = i + run
        k = j + run
        while end < n and k < len(secret) and text[end] == secret[k]:
            end += 1
            k += 1
        out.append(text[:i] + MASK)
        text, n, i = text[end:], n - end, 0
    out.append(text)
    return "".join(out)
