"""The model check: before a cent is spent, ask the API whether it serves the job's model.

``GET {base_url}/models``: when the list comes and the model is not on it, the run stops
(exit 2) with one line naming the model, the closest names listed (aliases of one model
shown as one) and, for a model its provider retired, when. When the list cannot be had
(no such endpoint, an error, no answer) the run goes on with a warning: the check is
advice, not a gate the gateway must pass. ``--no-model-check`` skips it.
"""

from __future__ import annotations

import difflib
import re

from batchrun.checkpoint import Checkpoint
from batchrun.errors import SendFailed, UsageError
from batchrun.job import Job

#: Models their provider retired, and when (what a user should hear in one line).
RETIRED: dict[str, str] = {
    "claude-3-opus-20240229": "2026-01-05",
    "claude-3-sonnet-20240229": "2025-07-21",
    "claude-2.1": "2025-07-21",
}
_DATE = re.compile(r"-(?:\d{8}|\d{4}-\d{2}-\d{2})$")
_SUGGESTIONS = 3


def family(name: str) -> str:
    """What aliases of one model share: no provider prefix, no date or ``-latest``
    (``anthropic/claude-3-opus``, ``claude-3-opus-20240229``, ``claude-3-opus-latest``)."""
    base = name.rsplit("/", 1)[-1].lower()
    base = base.removesuffix("-latest")
    return _DATE.sub("", base)


def retired_note(model: str) -> str | None:
    """ "Anthropic retired X on D" for the model or a dated snapshot of its family."""
    fam = family(model)
    for name, when in RETIRED.items():
        if name == model.rsplit("/", 1)[-1] or family(name) == fam:
            provider = "Anthropic" if name.startswith("claude") else "its provider"
            return f"{provider} retired {name} on {when}"
    return None


def closest(model: str, listed: list[str]) -> list[str]:
    """The listed names nearest the model, one entry per model (its aliases in brackets)."""
    by_family: dict[str, list[str]] = {}
    for name in listed:
        by_family.setdefault(family(name), []).append(name)
    fams = difflib.get_close_matches(family(model), list(by_family), n=_SUGGESTIONS, cutoff=0.4)
    if not fams:
        fams = difflib.get_close_matches(model, list(by_family), n=_SUGGESTIONS, cutoff=0.0)
    out = []
    for fam in fams:
        names = by_family[fam]
        out.append(names[0] + (f" (also {', '.join(names[1:])})" if len(names) > 1 else ""))
    return out


def not_served(job: Job, listed: list[str]) -> UsageError:
    model = job.params.model
    note = retired_note(model)
    near = closest(model, listed)
    return UsageError(
        f"model {model!r} is not among the {len(listed):,} models {job.base_url.rstrip('/')}/models lists"
        + (f" ({note})" if note else "")
        + (f"; closest: {'; '.join(near)}" if near else ""),
        hint="pass --model with a listed name (or --no-model-check if the list is wrong)",
    )


async def check_model(job: Job, client: object) -> str | None:
    """Raise UsageError if the API lists models and not the job's; return a warning when
    the list cannot be had (None when the model is listed, or the client cannot list)."""
    lister = getattr(client, "list_models", None)
    if lister is None:
        return None
    try:
        listed: list[str] = await lister()
    except SendFailed as exc:
        return f"warning: could not check the model against {job.base_url.rstrip('/')}/models ({exc.message}); going on"
    if not listed or job.params.model in listed:
        return None
    raise not_served(job, listed)


async def check_model_before_send(
    job: Job, client: object, ckpt: Checkpoint, fresh: bool
) -> str | None:
    """The check as a run makes it, before its first chat request. A refusal of a job that
    recorded nothing yet (``fresh``) discards its new journal: the corrected command then
    starts afresh instead of meeting "the job changed". Returns the warning, if any."""
    try:
        return await check_model(job, client)
    except UsageError:
        if fresh and not ckpt.done_count():
            ckpt.discard()
        raise
