"""One summary of a Ray run, merged from the shards' own (each written beside its part in
the store)."""

from __future__ import annotations

import json
from dataclasses import fields

from batchrun.cluster.manifest import Manifest
from batchrun.cluster.store import Store
from batchrun.cluster.worker import summary_name
from batchrun.summary import Summary

#: Summary fields summed over the shards.
_SUMMED = (
    "rows_ok", "rows_error", "rows_resumed", "requests_sent", "retries",
    "rate_limited", "reasks", "rows_possibly_charged_twice", "prompt_tokens",
    "completion_tokens", "total_tokens", "rows_without_usage", "rows_served_by_dedupe",
    "rows_served_by_cache", "tokens_saved", "rows_cost_reported",
)  # fmt: skip
_SUMMED_OPTIONAL = ("estimated_cost_usd", "estimated_cost_saved_usd", "reported_cost_usd",
                    "credits_used", "spent_usd")  # fmt: skip
#: What a run did (not what its rows hold): zero for a shard this run did not start.
_THIS_RUN = ("requests_sent", "retries", "rate_limited", "reasks")


class ThisRun:
    """What this driver run did, shard by shard, over every attempt of a shard: a shard
    started again after its worker was lost writes a summary of its last attempt only, so
    the requests of the earlier ones (from the shard's last report to the coordinator when
    the worker died) and the rows it had before the first are kept here."""

    def __init__(self) -> None:
        self.counts: dict[int, dict[str, int]] = {}
        self.resumed: dict[int, int] = {}

    def ended(self, shard: int, summary: dict[str, object]) -> None:
        self._add(shard, summary, int(summary.get("rows_resumed") or 0))  # type: ignore[call-overload]

    def lost(self, shard: int, stats: dict[str, int]) -> None:
        self._add(shard, {"requests_sent": stats.get("requests", 0),
                          "rate_limited": stats.get("rate_limited", 0)},
                  stats.get("resumed", 0))  # fmt: skip

    def _add(self, shard: int, counts: dict[str, object], resumed: int) -> None:
        mine = self.counts.setdefault(shard, dict.fromkeys(_THIS_RUN, 0))
        for name in _THIS_RUN:
            mine[name] += int(counts.get(name) or 0)  # type: ignore[call-overload]
        self.resumed.setdefault(shard, resumed)  # the first attempt's: before this run


def merge_summaries(output: str, store: Store, m: Manifest, run: ThisRun) -> Summary:
    """One summary over the shards' own (each shard writes one beside its part), with this
    run's counters from ``run``. A shard this run did not start (complete before it) adds
    its rows as resumed, none of its requests."""
    total = m.ranges[-1][1]
    merged = Summary(output=output, state="partial", rows_total=total)
    merged.rows_pending = total
    known = {f.name for f in fields(Summary)}
    for i in range(len(m.ranges)):
        text = store.read_text(summary_name(i))
        if text is None:
            continue  # a shard that never ran: its rows are pending
        data = {k: v for k, v in json.loads(text).items() if k in known}
        merged.rows_pending -= int(data.get("rows_ok", 0)) + int(data.get("rows_error", 0))
        if i in run.counts:
            data.update(run.counts[i], rows_resumed=run.resumed[i])
        else:
            data["rows_resumed"] = int(data.get("rows_ok", 0)) + int(data.get("rows_error", 0))
            for name in _THIS_RUN:
                data[name] = 0
        for name in _SUMMED:
            setattr(merged, name, getattr(merged, name) + int(data.get(name) or 0))
        for name in _SUMMED_OPTIONAL:
            value = data.get(name)
            if value is not None:
                setattr(merged, name, (getattr(merged, name) or 0) + value)
        for name in ("errors_by_type", "finish_reasons"):
            into = getattr(merged, name)
            for k, v in (data.get(name) or {}).items():
                into[k] = into.get(k, 0) + v
    return merged
