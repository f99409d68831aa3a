"""Provider profiles: what each kind of server takes and sends, in one place.

Every difference between the servers batchrun talks to is a field of :class:`Profile`;
the dialect (:mod:`batchrun.send.dialect`) and the client read the fields and know no
provider by name. A profile is chosen from the base URL (:func:`profile_for_url`) or
named with ``--provider``.

This module sits beside :mod:`batchrun.job` rather than in :mod:`batchrun.send`: the job
checks its settings against the profile, and ``batchrun.send`` imports the job.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Literal
from urllib.parse import urlsplit

from batchrun.errors import UsageError

#: A header saying how long to wait: its name and unit ("ms", or "s": seconds or an HTTP date).
RetryHeader = tuple[str, Literal["ms", "s"]]

#: The standard ones (OpenAI's ``retry-after-ms`` first: it is the more precise).
STANDARD_RETRY_HEADERS: tuple[RetryHeader, ...] = (("retry-after-ms", "ms"), ("retry-after", "s"))


@dataclass(frozen=True, kw_only=True)
class Profile:
    """What one kind of server accepts and sends."""

    name: str
    #: One line for ``--help`` and the dry run.
    about: str
    #: Ask for a stream's usage chunk (``stream_options: {"include_usage": true}``);
    #: OpenAI-compatible servers send no usage in a stream otherwise.
    stream_usage: bool
    #: The tool shape it takes: the gateway's documented (Anthropic)
    #: ``{name, description, input_schema}`` or OpenAI's ``{"type": "function", …}``.
    #: Tool choices go to every server in the forms the gateway documents as well:
    #: ``"auto"``, ``"none"``, ``"required"``, ``{"type": "function", "function": {"name"}}``.
    tool_shape: Literal["anthropic", "openai"]
    #: The body field for stop sequences.
    stop_field: Literal["stop_sequences", "stop"]
    #: Takes ``system`` as a body field; else it goes as a leading system message.
    system_field: bool
    #: Body parameters it refuses (checked before anything is sent).
    refuses: frozenset[str] = frozenset()
    #: Response headers that say how long to wait before a retry, first found wins.
    retry_headers: tuple[RetryHeader, ...] = STANDARD_RETRY_HEADERS
    #: Response header with what the request cost, USD (None: it sends none).
    cost_header: str | None = None
    #: Forwards the ``Idempotency-Key`` header to the server that bills (documentation:
    #: a proxy that drops it cannot keep a resend from being billed twice).
    forwards_idempotency_key: bool = True


GATEWAY = Profile(
    name="gateway",
    about="the AI/ML API gateway: its documented fields only (its Claude schema refuses unknown ones)",
    stream_usage=False,
    tool_shape="anthropic",
    stop_field="stop_sequences",
    system_field=True,
    # batchrun.send.spend.GATEWAY_USD_HEADER (not imported: batchrun.send imports the job).
    cost_header="x-aimlapi-usd-spent",
)
OPENAI = Profile(
    name="openai",
    about="OpenAI and OpenAI-compatible servers: stream usage asked for, OpenAI tool shapes, system as a message",
    stream_usage=True,
    tool_shape="openai",
    stop_field="stop",
    system_field=False,
    refuses=frozenset({"top_k"}),
)
# The OpenAI-compatible others differ from OpenAI in a field or two: said as such.
LITELLM = replace(
    OPENAI,
    name="litellm",
    about="a LiteLLM proxy: as openai, plus the upstream's relayed Retry-After and LiteLLM's cost header",
    retry_headers=(
        *STANDARD_RETRY_HEADERS,
        ("llm_provider-retry-after-ms", "ms"),
        ("llm_provider-retry-after", "s"),
    ),
    cost_header="x-litellm-response-cost",
    # LiteLLM neither forwards Idempotency-Key nor metadata upstream (seen with 1.108).
    forwards_idempotency_key=False,
)
VLLM = replace(
    OPENAI, name="vllm", about="a vLLM server: as openai, and it takes top_k", refuses=frozenset()
)

PROFILES: dict[str, Profile] = {p.name: p for p in (GATEWAY, OPENAI, LITELLM, VLLM)}

#: LiteLLM proxy's default port: a base URL on it is taken for a LiteLLM proxy.
LITELLM_PORT = 4000


def profile_for_url(base_url: str) -> Profile:
    """The profile a base URL implies: OpenAI's host → openai, port 4000 (LiteLLM's
    default) → litellm, anything else → gateway (the documented API: nothing it does not
    document is sent; name another with ``--provider``)."""
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if host == "api.openai.com" or host.endswith(".openai.azure.com"):
        return OPENAI
    try:
        port = parts.port
    except ValueError:
        port = None
    if port == LITELLM_PORT:
        return LITELLM
    return GATEWAY


def refusal(profile: Profile, params: Iterable[str]) -> tuple[str, str] | None:
    """Why ``profile`` refuses some of ``params`` and which providers take them all (for
    the job's parameters and a row's own alike); None if it takes them."""
    refused = sorted(k for k in params if k in profile.refuses)
    if not refused:
        return None
    takers = [p.name for p in PROFILES.values() if not p.refuses & set(refused)]
    return (
        f"the {profile.name} provider does not take {', '.join(refused)}",
        f"leave it out, or name a provider that takes it with --provider ({', '.join(takers)})",
    )


def get_profile(name: str | None, base_url: str) -> Profile:
    """The named profile, or the one the base URL implies; UsageError on an unknown name."""
    if name is None:
        return profile_for_url(base_url)
    profile = PROFILES.get(name)
    if profile is None:
        raise UsageError(
            f"unknown provider {name!r}", hint=f"known providers: {', '.join(PROFILES)}"
        )
    return profile
