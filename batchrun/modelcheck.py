"""The model check: before a cent is spent, ask the API whether it serves the job's model.

``GET {base_url}/models``: when the list comes and the model is not on it, the run stops
(exit 2) with one line naming the model, the closest names listed (aliases of one model
shown as one) and, for a model its provider retired, when. When the list cannot be had
(no such endpoint, an error, no answer) the run goes on with a warning: the check is
advice, not a gate the gateway must pass. ``--no-model-check`` skips it.

A model that names a retired snapshot itself gets a one-line warning however the check
goes (listed, list unavailable, skipped, dry run): the note is batchrun's own knowledge,
and a user should read it once rather than infer it from a streak of failed rows.
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


def retired_note(model: str, *, aliases: bool = True) -> str | None:
    """ "Anthropic retired X on D" for the model or (``aliases``) a dated snapshot of its
    family. Without ``aliases`` only a model naming the retired snapshot itself: an undated
    alias (``anthropic/claude-3-opus``, batchrun's default) is what an API may route to a
    model it still serves, so it is named only when the API does not list it."""
    fam, own = family(model), model.rsplit("/", 1)[-1].lower()
    for name, when in RETIRED.items():
        if name == own or (aliases and family(name) == fam):
            provider = "Anthropic" if name.startswith("claude") else "its provider"
            return f"{provider} retired {name} on {when}"
    return None


def retired_warning(model: str, then: str) -> str | None:
    """The one line a run (or dry run) of a retired snapshot shows before sending."""
    note = retired_note(model, aliases=False)
    return f"warning: {note}, so requests for {model!r} will likely fail; {then}" if note else None


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
    the list cannot be had or the model is a retired snapshot (else None)."""
    model, where = job.params.model, f"{job.base_url.rstrip('/')}/models"
    lister = getattr(client, "list_models", None)
    if lister is None:
        return retired_warning(model, "going on")
    try:
        listed: list[str] = await lister()
    except SendFailed as exc:
        failed = f"could not check the model against {where} ({exc.message}); going on"
        return retired_warning(model, failed) or f"warning: {failed}"
    if not listed or model in listed:
        return retired_warning(model, f"{where} still lists it; going on")
    raise not_served(job, listed)


async def check_model_before_send(
    job: Job, client: object, ckpt: Checkpoint, fresh: bool
) -> str | None:
    """The check as a run makes it, before its first chat request. A refusal of a job that
    recorded nothing yet (``fresh``) discards its new journal: the corrected command then
    starts afresh instead of meeting "the job changed". Returns the warning, if any;
    with ``--no-model-check`` only the retirement's, which needs no request."""
    if not job.model_check:
        return retired_warning(job.params.model, "--no-model-check: the API was not asked")
    try:
        return await check_model(job, client)
    except UsageError:
        if fresh and not ckpt.done_count():
            ckpt.discard()
        raise
