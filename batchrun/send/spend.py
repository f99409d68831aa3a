"""What a request really cost, as the server reports it.

The AI/ML API gateway reports the spend of a non-streamed answer in two headers,
``x-aimlapi-usd-spent`` (USD) and ``x-aimlapi-credits-used`` (integer credits, $1 =
2,000,000 credits); a streamed answer carries no cost header, and says it in its final
event instead: ``{"meta": {"usage": {"credits_used": …, "usd_spent": …}}}``. Other
providers name one USD header of their own (LiteLLM: ``x-litellm-response-cost``), given
with ``--cost-header``.

Every value is untrusted: a number is kept only when it is finite, not negative and
believable (bounded); text is cut before it is parsed. Where only credits are reported,
the USD follows from them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GATEWAY_USD_HEADER = "x-aimlapi-usd-spent"
GATEWAY_CREDITS_HEADER = "x-aimlapi-credits-used"
CREDITS_PER_USD = 2_000_000
#: No single request is believed to cost more (a larger figure is a server's mistake).
MAX_USD = 100_000.0
MAX_CREDITS = int(MAX_USD * CREDITS_PER_USD)
#: Characters of a header value looked at (a number needs far fewer).
_VALUE_CHARS = 40


@dataclass(frozen=True, slots=True)
class Spend:
    """A reported cost: USD and credits, either unknown (None)."""

    usd: float | None = None
    credits: int | None = None

    @classmethod
    def of(cls, usd: float | None, credits: int | None) -> Spend:
        """Credits alone say the USD too."""
        if usd is None and credits is not None:
            usd = credits / CREDITS_PER_USD
        return cls(usd, credits)

    @property
    def known(self) -> bool:
        return self.usd is not None or self.credits is not None


def parse_usd(value: Any) -> float | None:
    """A USD amount ("0.0012", "$0.0012", 0.0012); None unless finite, >= 0 and bounded."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _VALUE_CHARS:
            return None
        try:
            value = float(text.removeprefix("$"))
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    usd = float(value)
    return usd if math.isfinite(usd) and 0 <= usd <= MAX_USD else None


def parse_credits(value: Any) -> int | None:
    """A credit count ("1234", 1234, 1234.0); None unless a whole number >= 0, bounded."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        if len(text) > _VALUE_CHARS:
            return None
        try:
            value = int(text) if text.isdigit() else float(text)
        except ValueError:
            return None
    if isinstance(value, float):
        if not (math.isfinite(value) and value.is_integer()):
            return None
        value = int(value)
    if not isinstance(value, int):
        return None
    return value if 0 <= value <= MAX_CREDITS else None


def from_headers(headers: Mapping[str, str], cost_header: str | None) -> Spend:
    """The spend a non-streamed answer's headers report: ``cost_header`` (USD; the gateway's
    by default) and the gateway's credits header."""
    usd = parse_usd(headers.get(cost_header)) if cost_header else None
    credits = parse_credits(headers.get(GATEWAY_CREDITS_HEADER))
    return Spend.of(usd, credits)


def from_meta(chunk: Mapping[str, Any]) -> Spend | None:
    """The spend in a stream's ``{"meta": {"usage": {...}}}`` event, if the chunk is one."""
    meta = chunk.get("meta")
    usage = meta.get("usage") if isinstance(meta, dict) else None
    if not isinstance(usage, dict):
        return None
    spend = Spend.of(parse_usd(usage.get("usd_spent")), parse_credits(usage.get("credits_used")))
    return spend if spend.known else None
