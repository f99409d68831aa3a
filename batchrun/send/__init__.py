"""The per-row send path, usable on its own (a Ray worker, a batch submitter, the tests).

It imports nothing of the journal, the runner, the CLI, click or tqdm. Stages:

- :mod:`.transport` moves bytes (one aiohttp session, POST, redirects, connection errors);
- :mod:`.dialect` is the wire format (request → body, answer / SSE → Completion);
- :mod:`.client` is one attempt: transport + dialect, status → failure class, redaction;
- :mod:`.retrying` says what is retried and how long to wait; :mod:`.limits` how fast to go;
- :mod:`.attempt` is one row's attempts (Idempotency-Key, limiter, retries), talking to its
  driver through :class:`SendHooks`;
- :mod:`.pool` runs a worker over items, slot before task, inside a TaskGroup.
"""

from __future__ import annotations

from batchrun.send.attempt import Outcome, RowSender, SendHooks, new_key
from batchrun.send.client import ApiClient, CompletionClient
from batchrun.send.dialect import ChatCompletions
from batchrun.send.limits import Limiter
from batchrun.send.pool import Pool
from batchrun.send.redact import Redactor
from batchrun.send.transport import USER_AGENT, HttpTransport, Reply, Transport

__all__ = [
    "USER_AGENT",
    "ApiClient",
    "ChatCompletions",
    "CompletionClient",
    "HttpTransport",
    "Limiter",
    "Outcome",
    "Pool",
    "Redactor",
    "Reply",
    "RowSender",
    "SendHooks",
    "Transport",
    "new_key",
]
