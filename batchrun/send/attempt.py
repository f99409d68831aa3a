"""One row's attempts: its Idempotency-Key, the limiter before each send, retries, the client.

The sender knows nothing of the journal, the run or the progress display: what the run must
hear comes through :class:`SendHooks` (a send with a new key is about to go, a request
left, a row failed for good, is the run stopping?). A row always ends as an
:class:`Outcome`: a result (ok or error), or left for the next run.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass
from typing import Protocol

from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt

from batchrun.errors import NotSent, Retryable, RowFailed, SendFailed, StopRun
from batchrun.pacing import RetryPolicy
from batchrun.records import OK, Completion, Request, RowResult
from batchrun.send.client import CompletionClient
from batchrun.send.limits import Limiter
from batchrun.send.retrying import WaitRetryAfterOrBackoff


class SendHooks(Protocol):
    """What the driver of a send hears and decides. Each may raise NotSent to leave the
    row for the next run (the run is stopping)."""

    def stopping(self) -> bool:
        """True once no new request may leave."""
        ...

    async def before_new_key(self, position: int, key: str) -> None:
        """A send with a key never sent before is about to go: record it durably first
        (a crash after the send must know the row may be billed). Raise NotSent to stop."""
        ...

    def resent_in_doubt(self, position: int) -> None:
        """The row is sent again with a key whose last send's outcome is unknown: the
        server may bill it twice (counted once a row)."""
        ...

    def sending(self, position: int) -> None:
        """A request of the row is leaving now."""
        ...

    def sent(self, attempt: int, failure: SendFailed | None) -> None:
        """Request number ``attempt`` of the row left and was answered ok (failure None),
        or failed after it left (a request that never left is not reported)."""
        ...

    def cancelled(self, outcome: Outcome) -> None:
        """The row's task was cancelled mid-send (the end of a stop's grace)."""
        ...

    def failed_for_good(self, error_type: str, message: str) -> None:
        """The row is an error row (may decide to stop the run)."""
        ...

    def succeeded(self) -> None:
        """The row is ok."""
        ...


@dataclass(slots=True)
class Outcome:
    """How a row ended. ``result`` None: not finished, left for the next run."""

    request: Request
    result: RowResult | None
    #: The server may have billed a send of this row that no answer accounts for: its
    #: in-flight mark (and key) must outlive this run unless the row is finished ok.
    maybe_billed: bool
    #: The answer that stops the run (401, 403, a Retry-After beyond the cap).
    stop: StopRun | None = None


def new_key() -> str:
    """A fresh Idempotency-Key: 128 random bits in hex (uuid4() costs several times more
    and adds nothing a server needs)."""
    return os.urandom(16).hex()


class RowSender:
    """Sends rows one attempt at a time through ``client``, under ``limiter``'s limits.

    ``known_keys``: rows in flight when an earlier run died, with the key they were sent
    with (the resend reuses it, so a server that honours the key does not bill twice).
    """

    def __init__(
        self,
        client: CompletionClient,
        limiter: Limiter,
        policy: RetryPolicy,
        hooks: SendHooks,
        known_keys: dict[int, str] | None = None,
    ) -> None:
        self.client = client
        self.limiter = limiter
        self.policy = policy
        self.hooks = hooks
        self.known_keys = known_keys if known_keys is not None else {}
        self.wait = WaitRetryAfterOrBackoff(policy)
        # Attempts after the first: the first one runs outside tenacity (see _attempts).
        self._retry_rest = AsyncRetrying(
            stop=stop_after_attempt(max(1, policy.max_attempts - 1)),
            retry=retry_if_exception_type(Retryable),
            wait=WaitRetryAfterOrBackoff(policy, attempt_offset=1),
            reraise=True,
        )

    def __repr__(self) -> str:
        return f"RowSender(client={self.client!r}, limiter={self.limiter!r})"

    async def send(self, request: Request) -> Outcome:
        """Send one row to its end. The caller took an in-flight slot for it; the sender
        owns that slot from here on and gives it back."""
        row = _Row(self, request, self.known_keys.pop(request.position, None))
        try:
            result = await self._attempts(row)
        except StopRun as exc:
            return Outcome(request, None, row.maybe_billed, stop=exc)
        except NotSent:
            return Outcome(request, None, row.maybe_billed)
        except asyncio.CancelledError:
            # At the end of a stop's grace, or a second signal: the row is left.
            self.hooks.cancelled(Outcome(request, None, row.maybe_billed))
            raise
        except Exception as exc:
            # Something no one foresaw (a bug, most likely): the row fails, the run goes on
            # (and stops if every row fails so).
            message = f"unexpected {type(exc).__name__}: {exc}"[:300]
            self.hooks.failed_for_good("internal_error", message)
            result = RowResult.failure(
                request.position,
                error_type="internal_error",
                error=message,
                attempts=row.attempts,
                latency_ms=row.latency_ms,
                finished_at=time.time(),
                client_request_id=request.client_request_id,
            )
        finally:
            row.release()
        return Outcome(request, result, row.maybe_billed and result.status != OK)

    async def _attempts(self, row: _Row) -> RowResult:
        request = row.request
        try:
            try:
                completion = await row.once()
            except Retryable as first:
                # Most rows succeed at once; tenacity takes over only for those that do not,
                # which keeps its per-attempt machinery off the hot path.
                if self.policy.max_attempts <= 1:
                    raise
                await row.sleep(self.wait.seconds(first, 1))
                completion = await self._retry_rest.copy(sleep=row.sleep)(row.once)
        except (Retryable, RowFailed) as exc:
            n = row.attempts
            message = exc.message if n < 2 else f"{exc.message} (after {n} attempts)"
            if exc.request_id is not None:  # what the gateway's support asks for
                message += f" (requestId {exc.request_id})"
            self.hooks.failed_for_good(exc.error_type, exc.message)
            return RowResult.failure(
                request.position,
                error_type=exc.error_type,
                error=message,
                attempts=n,
                latency_ms=row.latency_ms,
                finished_at=time.time(),
                client_request_id=request.client_request_id,
                inference_id=exc.inference_id,
            )
        self.limiter.after_send(request.estimated_tokens, completion.total_tokens)
        self.limiter.on_success()
        self.hooks.succeeded()
        return RowResult.success(
            request.position,
            completion,
            attempts=row.attempts,
            latency_ms=row.latency_ms or 0.0,
            finished_at=time.time(),
            client_request_id=request.client_request_id,
            max_tokens=request.max_tokens,
        )

    def on_failure(self, exc: SendFailed) -> None:
        """Feedback of one failed attempt to the limits; a wait beyond the cap stops."""
        if exc.status == 429:
            self.limiter.on_rate_limited(exc.retry_after_s)
        if exc.retry_after_s is not None and exc.retry_after_s > self.policy.max_retry_after_s:
            raise StopRun(
                exc.error_type,
                f"the server asked to wait {exc.retry_after_s:.0f} s (more than --max-retry-after "
                f"{self.policy.max_retry_after_s:g} s): {exc.message}",
                status=exc.status,
            )


class _Row:
    """The attempts of one row: its key, attempt count, last latency, slot."""

    __slots__ = (
        "attempts",
        "counted",
        "doubt",
        "fresh_key",
        "holds_slot",
        "in_send",
        "key",
        "last",
        "latency_ms",
        "request",
        "sender",
    )

    def __init__(self, sender: RowSender, request: Request, known_key: str | None) -> None:
        self.sender = sender
        self.request = request
        self.fresh_key = known_key is None
        self.key = known_key or new_key()
        #: Some send of this row, here or in a run that died, has an outcome unknown to us
        #: (the server may have billed it): sticky, whatever later sends are answered.
        self.doubt = known_key is not None
        #: Counted as possibly charged twice (a row from a run that died was counted when
        #: this run started).
        self.counted = known_key is not None
        self.in_send = False
        self.attempts = 0
        self.latency_ms: float | None = None
        self.last: SendFailed | None = None
        #: The caller took an in-flight slot for this row before creating its task.
        self.holds_slot = True

    def release(self) -> None:
        if self.holds_slot:
            self.holds_slot = False
            self.sender.limiter.release_slot()

    async def sleep(self, seconds: float) -> None:
        """Wait before a retry without holding an in-flight slot: a row waiting out its
        backoff is not in flight, so other rows may use the slot meanwhile. A stop ends
        the wait at once (Stopped is a NotSent)."""
        limiter = self.sender.limiter
        self.release()
        await limiter.sleep(seconds)
        await limiter.slot()
        self.holds_slot = True

    async def once(self) -> Completion:
        """One attempt; raises the SendFailed subclass the client raised."""
        sender = self.sender
        hooks = sender.hooks
        if hooks.stopping():
            raise NotSent
        if self.last is not None and self.last.definite:
            # The server answered the last send, so its outcome is known: the next send is
            # a new request with a new key.
            self.key, self.fresh_key = new_key(), True
        await sender.limiter.before_send(self.request.estimated_tokens)
        if hooks.stopping():
            raise NotSent
        if self.fresh_key:
            # Only once the send may go: a row stopped while it waits for the rate limits
            # leaves no mark of a request never sent.
            await hooks.before_new_key(self.request.position, self.key)
            self.fresh_key = False
            if hooks.stopping():
                raise NotSent  # stopped during the commit: the key was never sent
        elif self.doubt and not self.counted:
            self.counted = True
            hooks.resent_in_doubt(self.request.position)
        hooks.sending(self.request.position)
        t0 = time.perf_counter()
        self.in_send = True
        try:
            completion = await sender.client.complete(self.request, self.key)
        except SendFailed as exc:
            self.in_send = False
            self.latency_ms = (time.perf_counter() - t0) * 1000.0
            self.last = exc
            if exc.sent:
                self.attempts += 1
                hooks.sent(self.attempts, exc)
            self.doubt = self.doubt or not exc.definite
            sender.on_failure(exc)
            raise
        self.in_send = False
        self.latency_ms = (time.perf_counter() - t0) * 1000.0
        self.attempts += 1
        hooks.sent(self.attempts, None)
        return completion

    @property
    def maybe_billed(self) -> bool:
        """The server may have billed a send of this row that no answer accounts for."""
        return self.doubt or self.in_send
