"""Dedupe: rows whose requests are identical are sent once, and every such row gets the answer.

Identical means the same request body as it would go on the wire (model, messages, every
parameter, per-row ones included), compared by a digest of the encoded body with its keys
sorted. The first row with a body is its *leader*; later rows with the same body are its
*followers*. The plan (follower → leader) is worked out once per checkpoint, by sorting
16-byte digests (about 40 bytes a row at the peak, never a hash table of the input), and
stored in the journal: a rerun after a crash finds it there, and a follower whose leader
is recorded is served from the journal with no request.

While a run goes, :class:`Followers` holds what is needed to serve followers: which leader
each unrecorded follower waits for, the followers waiting for a leader in flight, and the
answer of a leader that has followers still to come.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.compute as pc

from batchrun.builder import RequestBuilder
from batchrun.checkpoint import Checkpoint
from batchrun.images import ImageRef
from batchrun.io.readers import iter_batches
from batchrun.job import Job
from batchrun.records import Request, RowResult
from batchrun.scan import Scan
from batchrun.send import ChatCompletions

DIGEST_BYTES = 16


def request_body(dialect: ChatCompletions, request: Request) -> bytes:
    """The request's body as bytes with its keys sorted, the ``stream`` flag aside (how the
    answer travels does not change what it is): what dedupe and the cache compare."""
    body: dict[str, Any] = dialect.encode(request)
    if "stream" in body:
        body = {k: v for k, v in body.items() if k != "stream"}
    if request.images:
        # The images are read only when the row is sent, so the encoded body lacks them:
        # two rows with the same text and other images must not share an answer.
        body = dict(body, **{"\x00images": [image_identity(ref) for ref in request.images]})
    try:
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: the standard library writes it
        return json.dumps(body, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def image_identity(ref: ImageRef) -> list[Any]:
    """What tells one image from another without reading it: bytes and data URLs by a
    digest, a file by its path, size and modification time (an edited file is another
    image, for the cache across runs too), a URL by itself."""
    if isinstance(ref.value, bytes) or ref.kind == "data":
        raw = ref.value if isinstance(ref.value, bytes) else ref.value.encode()
        return [ref.kind, hashlib.blake2b(raw, digest_size=DIGEST_BYTES).hexdigest()]
    if ref.kind == "path":
        try:
            st = os.stat(ref.value)
        except OSError:
            return [ref.kind, ref.value]  # sending it will fail and say so
        return [ref.kind, ref.value, st.st_size, st.st_mtime_ns]
    return [ref.kind, ref.value]


def digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()


class DigestCollector:
    """Collects the digest of every row's request, in input order (a scan's ``on_request``)."""

    def __init__(self, job: Job) -> None:
        self.dialect = ChatCompletions(system_as_message=job.params.system_as_message)
        self.digests = bytearray()
        self.rows = 0
        #: Estimated prompt tokens per row (the dry run prices the followers with them).
        self.prompt_tokens: list[int] = []
        self.keep_estimates = False

    def add(self, request: Request, *_: object) -> None:
        if request.position != self.rows:  # an invalid row before it: the run refuses anyway
            return
        self.digests += digest(request_body(self.dialect, request))
        self.rows += 1
        if self.keep_estimates:
            self.prompt_tokens.append(request.prompt_tokens)


def find_followers(digests: bytes | bytearray, rows: int) -> tuple[list[int], list[int]]:
    """(followers, their leaders), followers in input order: every row whose digest an
    earlier row has, and the first row that has it."""
    if rows < 2:
        return [], []
    arr = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(DIGEST_BYTES), rows, [None, pa.py_buffer(bytes(digests))]
    )
    order = pc.sort_indices(arr)  # stable: equal digests stay in input order
    ordered = pc.take(arr, order)
    same = pc.equal(ordered.slice(0, rows - 1), ordered.slice(1))
    if not pc.any(same).as_py():
        return [], []
    # A run of equal digests starts where a row differs from the one before it; its first
    # row (the smallest position, the sort being stable) is the leader of the others.
    starts = pa.concat_arrays([pa.array([True]), pc.invert(same)])
    run = pc.subtract(pc.cumulative_sum(pc.cast(starts, pa.int64())), 1)
    leaders = pc.take(pc.filter(order, starts), run)
    follows = pc.invert(starts)
    followers = pc.filter(order, follows)
    their_leaders = pc.filter(leaders, follows)
    ranked = pc.sort_indices(followers)
    return (
        pc.take(followers, ranked).to_pylist(),
        pc.take(their_leaders, ranked).to_pylist(),
    )


def store_followers(ckpt: Checkpoint, followers: list[int], leaders: list[int]) -> None:
    """Keep the plan in the journal (its ``followers`` table), once a checkpoint."""
    with ckpt.transaction() as db:
        db.execute("DELETE FROM followers")
        db.executemany("INSERT INTO followers VALUES (?, ?)", zip(followers, leaders, strict=True))
    ckpt.set_meta(dedupe_plan={"followers": len(followers)})


def unrecorded_followers(ckpt: Checkpoint, below: int) -> dict[int, int]:
    """Followers below ``below`` not recorded yet → their leaders."""
    return dict(
        ckpt.db.execute(
            "SELECT position, leader FROM followers WHERE position < ?"
            " AND position NOT IN (SELECT position FROM results)",
            (below,),
        )
    )


def collect_digests(job: Job, scan: Scan) -> DigestCollector:
    """Digests of every row, in a pass of its own (a checkpoint made without dedupe)."""
    collector = DigestCollector(job)
    builder = RequestBuilder(job, str(job.input_path))
    builder.mode, builder.column, builder.id_column = scan.mode, scan.column, scan.id_column
    for batch in iter_batches(job.input_path):
        for offset, row in enumerate(batch.rows):
            assert row is not None  # the scan proved every row valid
            pos = batch.start + offset
            collector.add(builder.build(row, pos, batch.where(offset)))
    return collector


class Followers:
    """The followers of this run (unrecorded, below the run's total) and their leaders."""

    def __init__(self, leader_of: dict[int, int]) -> None:
        self.leader_of = leader_of
        #: Followers still to serve, per leader.
        self.remaining: Counter[int] = Counter(leader_of.values())
        #: Leaders in flight → followers produced meanwhile, waiting for the answer.
        self.waiting: dict[int, list[int]] = {}
        #: Answers of leaders finished in this run that still have followers to come.
        self.answers: dict[int, RowResult] = {}
        #: Leaders left for the next run (stopped before an answer): so are their followers.
        self.left: set[int] = set()

    def __repr__(self) -> str:
        return (
            f"Followers(unserved={sum(self.remaining.values())}, waiting={len(self.waiting)}, "
            f"answers_kept={len(self.answers)})"
        )

    def __bool__(self) -> bool:
        return bool(self.leader_of)

    def is_leader(self, position: int) -> bool:
        return self.remaining.get(position, 0) > 0

    def sending(self, leader: int) -> None:
        """A leader with followers to come is being sent (or looked up in the cache)."""
        self.waiting.setdefault(leader, [])

    def answer_of(self, leader: int) -> RowResult | None:
        """The leader's answer if it finished in this run, else None."""
        return self.answers.get(leader)

    def wait_for(self, follower: int, leader: int) -> bool:
        """Queue ``follower`` behind its leader in flight; False if the leader is not."""
        queue = self.waiting.get(leader)
        if queue is None:
            return False
        queue.append(follower)
        return True

    def serve(self, follower: int, leader: int, answer: RowResult) -> RowResult:
        """The follower's row made from its leader's answer."""
        self.remaining[leader] -= 1
        if self.remaining[leader] <= 0:
            del self.remaining[leader]
            self.answers.pop(leader, None)
        return answer.served(follower, leader=leader)

    def finished(self, leader: int, answer: RowResult | None) -> list[RowResult]:
        """The leader ended: its waiting followers' rows (none if it was left unanswered)."""
        queue = self.waiting.pop(leader, [])
        if answer is None:
            self.left.add(leader)
            return []
        if self.remaining.get(leader, 0) > len(queue):
            self.answers[leader] = answer  # more followers still to come
        return [self.serve(follower, leader, answer) for follower in queue]
