"""Rehearsal faults: the requests-per-minute limit and the injected errors, latency, drops
and stalls, all drawn from one seeded RNG so a run repeats.

The requests-per-minute limit is a sliding-window log: at most
``rpm_limit * rpm_window_s / 60`` requests accepted in any window of ``rpm_window_s``.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from typing import Literal

from aiohttp import web

from batchrun.simulate import wire
from batchrun.simulate.config import SimConfig

#: What ``Faults.draw`` returns for a connection to drop without an answer.
DROP: Literal["drop"] = "drop"


class Faults:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.accepted: deque[float] = deque()
        self.first_429s_left = config.first_429s
        self.window_cap = (
            math.floor(config.rpm_limit * config.rpm_window_s / 60) if config.rpm_limit else 0
        )

    def error(
        self, status: int, message: str, kind: str, headers: dict[str, str] | None = None
    ) -> web.Response:
        """An error in the shape of the server simulated."""
        return wire.error_response(
            status, message, kind, headers=headers, openai=self.config.flavor == "openai"
        )

    def reset(self) -> None:
        self.accepted.clear()
        self.first_429s_left = self.config.first_429s

    def ratelimit_headers(self) -> dict[str, str]:
        cfg = self.config
        if not cfg.ratelimit_headers or not cfg.rpm_limit:
            return {}
        remaining = max(0, self.window_cap - len(self.accepted))
        return {
            "x-ratelimit-limit-requests": str(cfg.rpm_limit),
            "x-ratelimit-remaining-requests": str(remaining),
            "x-ratelimit-reset-requests": f"{cfg.rpm_window_s:g}s",
        }

    def _over_limit(self) -> float | None:
        """Seconds until the window frees a place, if the limit is hit (else admit)."""
        if not self.config.rpm_limit:
            return None
        now = time.monotonic()
        window = self.config.rpm_window_s
        while self.accepted and now - self.accepted[0] >= window:
            self.accepted.popleft()
        if len(self.accepted) >= self.window_cap:
            return window - (now - self.accepted[0])
        self.accepted.append(now)
        return None

    def rate_limit(self) -> web.Response | None:
        """The 429 for a request over the requests-per-minute limit (else admit it)."""
        wait = self._over_limit()
        if wait is None:
            return None
        headers = self.ratelimit_headers()
        if self.config.limit_sends_retry_after:
            headers["Retry-After"] = str(max(1, math.ceil(wait)))
            headers["retry-after-ms"] = str(int(wait * 1000))
        return self.error(
            429, "rate limit reached for requests", "rate_limit_error", headers=headers
        )

    def _retry_after(self) -> dict[str, str]:
        s = self.config.retry_after_s
        return {"Retry-After": str(max(0, math.ceil(s))), "retry-after-ms": str(int(s * 1000))}

    def draw(self) -> web.Response | Literal["drop"] | None:
        """One draw for an admitted request: an injected error, a drop, or None (answer)."""
        cfg = self.config
        if self.first_429s_left > 0:
            self.first_429s_left -= 1
            return self.error(429, "busy (simulated)", "rate_limit_error", self._retry_after())
        r = self.rng.random()
        edge = cfg.rate_403
        if r < edge:
            return self.error(
                403, "Insufficient credits: top up your balance to continue", "insufficient_quota"
            )
        if r < (edge := edge + cfg.error_500_rate):
            return self.error(500, "internal error (simulated)", "server_error")
        if r < (edge := edge + cfg.rate_429):
            s = cfg.retry_after_s
            headers = {
                "Retry-After": str(max(0, math.ceil(s))),
                "retry-after-ms": str(int(s * 1000)),
            }
            return self.error(429, "rate limited (simulated)", "rate_limit_error", headers=headers)
        if r < (edge := edge + cfg.rate_429_no_retry_after):
            return self.error(429, "rate limited (simulated)", "rate_limit_error")
        if r < edge + cfg.drop_rate:
            return DROP
        return None

    def delay_s(self) -> float:
        """Seconds to wait before answering (latency with jitter; no draw without them)."""
        cfg = self.config
        if not (cfg.latency_ms or cfg.jitter_ms):
            return 0.0
        return max(0.0, cfg.latency_ms + self.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)) / 1000

    def stalls(self) -> bool:
        """Whether this streamed answer stalls after its first event."""
        rate = self.config.stream_stall_rate
        return bool(rate) and self.rng.random() < rate
