"""Tier consolidation: each tier's policy and one pass that applies it (no scheduler here).

A pass is a selector (which records: aged, over the per-agent limit, of another model
version), one mover (what replaces them, under the race guard below) and a tally of what it
did; `consolidate` and `reencode` differ only in the selector and the mover's target.

A pass over STM or IM moves memories one tier down through the model's bottleneck layers: it
reads a batch of stored vectors, compresses them with one batched matrix product
(`EmbeddingEngine.compress`), writes the destination records and deletes the sources in one
MULTI/EXEC. A pass over LTM applies retention: it deletes, when LTM has a policy at all.

Which memories go (no SCAN anywhere):
- age rule: `ZRANGEBYSCORE` of the tier's time index, `-inf .. (now - max_age)`, LIMIT batch;
- count rule, after the age rule: the tier's agent set (`Keys.agents`, SADDed by the
  commands of `TierStore.encode_records` in the write's own transaction) is walked with SSCAN,
  one pipelined ZCARD per agent finds those above `max_per_agent`, and `ZRANGE 0 .. excess-1`
  of an agent's time index gives its oldest. Agents whose index is empty leave the set (a Lua
  script that re-checks ZCARD, so a concurrent write is never lost from it).

Race guard: the batch's source keys are WATCHed before they are read (in chunks of
WATCH_CHUNK keys, one connection each: Redis's WATCH is quadratic in the keys per connection),
and each chunk's destination writes plus source deletes (`TierStore.encode_records` and
`delete_commands`) run as one MULTI/EXEC on the connection that watches it (resp.py). If any
source of a chunk changed between the read and EXEC (moved by a concurrent pass, re-written by
a replay, deleted), that EXEC aborts, nothing of the chunk is written, and its keys are read
again: a vanished source is then absent from the read and cannot be resurrected, a re-written
one moves as it now is. A crash (even kill -9) before an EXEC leaves its memories untouched in
the source tier, after it leaves them wholly in the destination: every memory is in exactly
one tier. Destination keys derive from the entry id, so a memory written twice would
overwrite, never duplicate.

Records that cannot move (a corrupt hash, a non-finite compressed vector, a value the store
refuses) are logged and left where they are; the pass goes on past them instead of stopping.

After a retrain, records another model encoded (their model_version differs from the
engine's) are not pushed through this model's bottleneck, which would mix two models'
spaces: their raw state (STM keeps it; IM too with keep_state_after_stm) is encoded again,
exactly as a new state would be, and they take this model's version. One without a usable
raw state still moves through the bottleneck, keeping its own version, and a warning counts
them: its vector stays in its old model's space, approximate for recall either way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from typing import NamedTuple

import numpy as np
import redis
from redis.connection import Connection

from .constants import TIERS, Keys
from .engine import EmbeddingEngine
from .errors import ConfigError, StoreError
from .resp import Command, execute_transaction, first_error, text, watching
from .settings import Settings
from .store import (
    RECONSTRUCTED_TIERS,
    RECONSTRUCTION_FIELD,
    MemoryRecord,
    TierStore,
    Vector,
    parsed_state,
)

log = logging.getLogger(__name__)

DESTINATION: dict[str, str | None] = {"stm": "im", "im": "ltm", "ltm": None}
"""Where a pass over each tier moves memories; None: retention deletes them."""

WATCH_CHUNK = 250
"""Most keys one connection WATCHes and one MULTI/EXEC commits. Redis's WATCH cost grows with
the square of the keys one connection watches (Redis 8.2 here: 250 keys 0.6 ms, 1,000 keys
6.3 ms), so a batch is watched and committed in chunks of this many, one connection each; the
read and the matrix product stay one per batch."""

MAX_CONFLICT_RETRIES = 3
"""How often a batch is read again after its WATCH fired before the pass leaves it for later."""

AGENT_SCAN_COUNT = 1000
"""SSCAN COUNT hint (and ZCARD pipeline size) when looking for agents over the count limit."""

_PRUNE_AGENT = """
if redis.call('ZCARD', KEYS[1]) == 0 then
    return redis.call('SREM', KEYS[2], ARGV[1])
end
return 0
"""
"""KEYS: agent time index, tier agent set; ARGV: agent id. SREM only if the index is empty."""

KeepGoing = Callable[[], bool]


@dataclass(frozen=True)
class TierPolicy:
    """When memories leave one tier, and whether they move down or are deleted."""

    tier: str
    destination: str | None
    """The next tier down, or None for retention (LTM: delete)."""
    max_age_s: float | None
    max_per_agent: int | None

    @classmethod
    def from_settings(cls, settings: Settings, tier: str) -> TierPolicy:
        """The policy of `tier` ('stm', 'im' or 'ltm') from the settings."""
        tier_settings = settings.tier(tier)
        return cls(tier, DESTINATION[tier], tier_settings.max_age_s, tier_settings.max_per_agent)

    @property
    def enabled(self) -> bool:
        """Whether either rule is on; a disabled policy's pass does nothing."""
        return self.max_age_s is not None or self.max_per_agent is not None

    def describe(self) -> str:
        """'stm->im' or 'ltm retention', for logs and tables."""
        return f"{self.tier}->{self.destination}" if self.destination else f"{self.tier} retention"

    def rules(self) -> str:
        """'older than 3600 s or past 1000 per agent', or 'off', for people."""
        rules = []
        if self.max_age_s is not None:
            rules.append(f"older than {self.max_age_s:g} s")
        if self.max_per_agent is not None:
            rules.append(f"past {self.max_per_agent} per agent")
        return " or ".join(rules) or "off"


@dataclass(frozen=True)
class PassResult:
    """What one pass did."""

    moved: int
    """Memories written one tier down (and deleted from the source)."""
    deleted: int
    """Memories deleted without a destination (retention)."""
    batches: int
    """Batches (one read, one matrix product) that moved or deleted something."""
    seconds: float
    skipped: int = 0
    """Records left in place: unreadable, refused, or conflicting after every retry."""
    conflicts: int = 0
    """Transactions aborted because a watched source changed (then read again)."""
    reencoded: int = 0
    """Memories of another model version encoded again from their raw state."""
    without_state: int = 0
    """Memories of another model version with no usable raw state: a consolidation pass moved
    them through the bottleneck as they were, a re-encoding pass left them as they are."""
    reconstructed: int = 0
    """IM and LTM memories stored without a reconstruction (before records kept one) that a
    re-encoding pass gave theirs, their vectors decoded by the serving model."""


def scheduled_tiers(settings: Settings) -> list[str]:
    """The source tiers whose policy is on: a pass over them does something."""
    return [tier for tier in TIERS if TierPolicy.from_settings(settings, tier).enabled]


def epoch_ms() -> int:
    """Milliseconds since the epoch, the unit of record ts and the time index scores."""
    return time.time_ns() // 1_000_000


def consolidate(
    client: redis.Redis,
    store: TierStore,
    engine: EmbeddingEngine,
    settings: Settings,
    source_tier: str,
    now_ms: int | None = None,
    max_batches: int | None = None,
    keep_going: KeepGoing | None = None,
) -> PassResult:
    """Apply `source_tier`'s policy once: move (or, for LTM, delete) what it says must go.

    Args:
        client: the Redis the store writes to; selection and transactions run on it.
        now_ms: the pass's clock (ms since the epoch) [default: now]; the age rule moves
            records with ts < now_ms - max_age.
        max_batches: stop after this many batches [default: until done].
        keep_going: called before every batch; False stops the pass there (a lost lock, a
            shutdown). What is committed stays committed.

    Raises:
        ConfigError: the engine's dimensions do not match the tier settings.
        StoreError: Redis failed; batches committed before stay committed.
    """
    policy = TierPolicy.from_settings(settings, source_tier)
    if policy.destination is not None:
        _check_dims(engine, settings, policy)
    started = time.perf_counter()
    route = (source_tier, policy.destination, policy.describe())
    select, mover = _pass(client, store, engine, settings, route, max_batches, keep_going)
    if policy.enabled:
        batches = _policy_batches(select, policy, _clock(now_ms))
        _run(mover, batches, f"consolidate {policy.describe()}", "moved or deleted")
    tally = mover.tally
    moved, deleted = (tally.changed, 0) if policy.destination else (0, tally.changed)
    result = tally.result(time.perf_counter() - started, moved=moved, deleted=deleted)
    busy = result.moved or result.deleted or result.skipped or result.conflicts or tally.stale
    log.log(
        logging.INFO if busy or tally.stopped else logging.DEBUG,  # an idle pass every interval
        "consolidate %s: moved %d (%d re-encoded from their state), deleted %d, skipped %d, "
        "conflicts %d, stale index entries %d, %d batches in %.3f s%s",
        policy.describe(), result.moved, result.reencoded, result.deleted, result.skipped,
        result.conflicts, tally.stale, result.batches, result.seconds,
        " (stopped early)" if tally.stopped else "",
    )  # fmt: skip
    return result


def reencode(
    client: redis.Redis,
    store: TierStore,
    engine: EmbeddingEngine,
    settings: Settings,
    tier: str,
    max_batches: int | None = None,
    keep_going: KeepGoing | None = None,
) -> PassResult:
    """Encode `tier`'s memories of other model versions again from their raw state, in place.

    After a retrain: each record whose model_version is not the engine's and that keeps its
    raw state (STM always; IM and LTM with keep_state_after_stm) gets the vector this engine
    gives its state, and the engine's version. Those without a usable raw state stay as they
    are (`PassResult.without_state`). IM and LTM records stored without a reconstruction
    (before records kept one) get theirs: their vectors decoded by this engine, as recall
    would decode them (`PassResult.reconstructed`). Records are rewritten under the same
    WATCH guard as consolidation, so a pass running meanwhile moves each memory exactly once.

    Raises:
        ConfigError: the engine's dimension for `tier` is not the index's.
        StoreError: Redis failed; batches committed before stay committed.
    """
    if engine.dims[tier] != settings.tier(tier).dim:
        raise ConfigError(
            f"the model's {tier} vectors have {engine.dims[tier]} dims, the {tier} index "
            f"{settings.tier(tier).dim}: re-encoding {tier} would not fit"
        )
    started = time.perf_counter()
    route = (tier, tier, f"{tier} re-encode")
    select, mover = _pass(client, store, engine, settings, route, max_batches, keep_going)
    _run(mover, select.to_reencode(engine.version), f"re-encoding {tier}", "re-encoded")
    result = mover.tally.result(time.perf_counter() - started)
    log.info(
        "re-encode %s with model %s: %d re-encoded, %d without a usable raw state left as they "
        "are, %d given their reconstruction, skipped %d, conflicts %d, %d batches in %.3f s",
        tier, engine.version, result.reencoded, result.without_state, result.reconstructed,
        result.skipped, result.conflicts, result.batches, result.seconds,
    )  # fmt: skip
    return result


def reconstructions(engine: EmbeddingEngine, tier: str, vectors: Vector) -> list[Vector | None]:
    """What records of `tier` with these vectors (N, dim), written by `engine`'s model, store
    as their reconstructions (MemoryRecord.reconstruction): in RECONSTRUCTED_TIERS the
    vectors decoded, in one batch; elsewhere none."""
    if tier not in RECONSTRUCTED_TIERS or not len(vectors):
        return [None] * len(vectors)
    return list(engine.decode(vectors, tier))


def _clock(value: int | None) -> int:
    return epoch_ms() if value is None else int(value)


def _check_dims(engine: EmbeddingEngine, settings: Settings, policy: TierPolicy) -> None:
    assert policy.destination is not None
    for tier in (policy.tier, policy.destination):
        if engine.dims[tier] != settings.tier(tier).dim:
            raise ConfigError(
                f"the model's {tier} vectors have {engine.dims[tier]} dims, the {tier} index "
                f"{settings.tier(tier).dim}: consolidating {policy.describe()} would not fit"
            )


_Batch = tuple[list[str], dict[str, str]]
"""What a selector picks: record keys, and (count rule) the agent owning each key, so that a
key whose hash is gone also leaves its agent's time index."""


@dataclass
class _Tally:
    """What a pass has done so far; its selectors and its mover count here."""

    changed: int = 0
    """Records moved, deleted or re-encoded."""
    batches: int = 0
    """Batches that moved, deleted or re-encoded something."""
    conflicts: int = 0
    stale: int = 0
    """Time index members dropped because their hash was gone."""
    reencoded: int = 0
    """Records written with a vector encoded from their raw state (another model's)."""
    reconstructed: int = 0
    """Records written with the reconstruction they were stored without."""
    without_state: set[str] = field(default_factory=set)
    """Entry ids of other model versions with no usable raw state."""
    skipped: set[str] = field(default_factory=set)
    """Keys left in place; they stay at the head of the time indexes."""
    stopped: bool = False
    """Whether the pass stopped before its work ran out (max_batches, keep_going)."""

    def result(self, seconds: float, moved: int = 0, deleted: int = 0) -> PassResult:
        return PassResult(
            moved, deleted, self.batches, seconds, len(self.skipped), self.conflicts,
            self.reencoded, len(self.without_state), self.reconstructed,
        )  # fmt: skip


@dataclass(frozen=True)
class _Budget:
    """When a pass stops early: after `max_batches` batches, or when `keep_going` (which renews
    a job's lock) says so. Either marks the tally stopped."""

    tally: _Tally
    max_batches: int | None
    keep_going: KeepGoing | None

    def another_batch(self) -> bool:
        """Whether the pass may select another batch."""
        full = self.max_batches is not None and self.tally.batches >= self.max_batches
        self.tally.stopped = full or not self.still_wanted()
        return not self.tally.stopped

    def still_wanted(self) -> bool:
        """`keep_going`'s answer, asked during a long selection as well as between batches."""
        wanted = self.keep_going is None or self.keep_going()
        self.tally.stopped = self.tally.stopped or not wanted
        return wanted


@dataclass(frozen=True)
class _Selector:
    """Which of a tier's records a pass takes next, one batch at a time (no SCAN), until its
    budget runs out. Keys left in place stay at the head of the time indexes: each selector
    starts past them."""

    client: redis.Redis
    keys: Keys
    tier: str
    batch_size: int
    budget: _Budget

    def aged(self, cutoff_ms: int) -> Iterator[_Batch]:
        """Batches of the tier's records with ts < cutoff_ms, oldest first."""
        index = self.keys.time_index(self.tier)
        skipped = self.budget.tally.skipped
        while self.budget.another_batch():
            members = self.client.zrangebyscore(
                index, "-inf", f"({cutoff_ms}", start=len(skipped), num=self.batch_size
            )
            keys = [k for k in (text(m) for m in members) if k not in skipped]
            if not keys:  # only records left in place are older than the cutoff
                return
            yield keys, {}

    def over_limit(self, limit: int) -> Iterator[_Batch]:
        """Batches of the oldest records of each agent holding more than `limit`."""
        excess = dict(self._agents_over(limit))
        if self.budget.tally.stopped:
            return
        skipped = self.budget.tally.skipped
        offsets: dict[str, int] = {}  # per agent: its skipped records at the head of its index
        while excess and self.budget.another_batch():
            plan = list(_fill(excess, self.batch_size))
            pipe = self.client.pipeline(transaction=False)
            for agent, take in plan:
                start = offsets.get(agent, 0)
                pipe.zrange(self.keys.agent_time_index(self.tier, agent), start, start + take - 1)
            owners: dict[str, str] = {}
            for (agent, take), members in zip(plan, pipe.execute(), strict=True):
                owners.update((text(m), agent) for m in members)
                excess[agent] -= take
                if excess[agent] <= 0 or len(members) < take:
                    del excess[agent]
            yield list(owners), owners
            # What stays (skipped now or by the age rule) is the head of its agent's index.
            for key in skipped.intersection(owners):
                offsets[owners[key]] = offsets.get(owners[key], 0) + 1

    def to_reencode(self, version: str) -> Iterator[_Batch]:
        """Batches of the tier's records another model version encoded, and in
        RECONSTRUCTED_TIERS those stored without a reconstruction, by rank in the time index.

        Rewrites keep each record's score, so ranks hold still; a record a concurrent pass
        moves away meanwhile shifts the ranks after it, and a later record may be missed:
        consolidation re-encodes it when it moves, or a second run does.
        """
        index = self.keys.time_index(self.tier)
        reconstructed = self.tier in RECONSTRUCTED_TIERS
        start = 0
        while self.budget.another_batch():
            members = [
                text(m) for m in self.client.zrange(index, start, start + self.batch_size - 1)
            ]
            if not members:
                return
            start += len(members)
            pipe = self.client.pipeline(transaction=False)
            for key in members:
                pipe.hget(key, "model_version")
                if reconstructed:
                    pipe.hexists(key, RECONSTRUCTION_FIELD)
            replies = pipe.execute()
            versions = replies[:: 2 if reconstructed else 1]
            rebuilt = replies[1::2] if reconstructed else [True] * len(members)
            chosen = [
                key
                for key, found, has in zip(members, versions, rebuilt, strict=True)
                if found is not None and (text(found) != version or not has)
            ]
            if chosen:
                yield chosen, {}

    def _agents_over(self, limit: int) -> Iterator[tuple[str, int]]:
        """(agent, records above `limit`) for each agent of the tier's agent set; prunes empties."""
        agents_key = self.keys.agents(self.tier)
        prune = self.client.register_script(_PRUNE_AGENT)
        for chunk in _chunks(self.client.sscan_iter(agents_key, count=AGENT_SCAN_COUNT)):
            if not self.budget.still_wanted():
                return
            agents = [text(a) for a in chunk]
            pipe = self.client.pipeline(transaction=False)
            for agent in agents:
                pipe.zcard(self.keys.agent_time_index(self.tier, agent))
            counts = pipe.execute()
            empty = [a for a, n in zip(agents, counts, strict=True) if n == 0]
            if empty:
                pipe = self.client.pipeline(transaction=False)
                for agent in empty:
                    index = self.keys.agent_time_index(self.tier, agent)
                    prune(keys=[index, agents_key], args=[agent], client=pipe)
                pipe.execute()
            yield from ((a, n - limit) for a, n in zip(agents, counts, strict=True) if n > limit)


def _policy_batches(select: _Selector, policy: TierPolicy, now_ms: int) -> Iterator[_Batch]:
    """The batches `policy` picks: by the age rule, then by the count rule."""
    if policy.max_age_s is not None:
        yield from select.aged(now_ms - round(policy.max_age_s * 1000))
    if policy.max_per_agent is not None and not select.budget.tally.stopped:
        yield from select.over_limit(policy.max_per_agent)


class _Encoded(NamedTuple):
    """Records whose other model's vectors were replaced by this engine's (`_encode_again`)."""

    records: list[MemoryRecord]
    vectors: np.ndarray
    """(N, dim) float32, one row per record."""
    reencoded: set[str]
    """Entry ids whose vector now comes from their raw state, with this engine's version."""
    without_state: int
    """How many of another model have no usable raw state (left as they were)."""


@dataclass(frozen=True)
class _Mover:
    """Replaces batches of one tier's records: by the next tier's (through the bottleneck),
    by this model's encoding of their state in place (re-encode), or by nothing (retention),
    in watched MULTI/EXECs retried on conflict."""

    client: redis.Redis
    store: TierStore
    engine: EmbeddingEngine
    source: str
    target: str | None
    """Where the replacements are written: the next tier, the source itself (re-encode), or
    None (retention: the sources are only deleted)."""
    keep_state: bool
    """Whether a record moved down keeps its raw state and features."""
    label: str
    tally: _Tally

    def apply(self, keys: list[str], owners: dict[str, str]) -> None:
        """Replace the records under `keys`: watched MULTI/EXECs, retried on conflict."""
        pending = [k for k in keys if k not in self.tally.skipped]
        done = stale = 0
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            if not pending:
                break
            pending, attempt_done, attempt_stale = self._attempt(pending, owners)
            done, stale = done + attempt_done, stale + attempt_stale
        self.tally.batches += 1 if done or stale else 0
        self.tally.stale += stale
        self.tally.changed += done
        if pending:
            log.warning(
                "%s: %d records kept changing during %d tries; left for the next pass (%s, ...)",
                self.label, len(pending), MAX_CONFLICT_RETRIES + 1, pending[0],
            )  # fmt: skip
            self.tally.skipped.update(pending)

    def _attempt(self, keys: list[str], owners: dict[str, str]) -> tuple[list[str], int, int]:
        """One try: WATCH the keys, read and compress them once, commit chunk by chunk.

        Returns:
            The keys of the chunks whose EXEC aborted (a watched source changed), then the
            records replaced and the stale index members dropped by the others.
        """
        chunks = [keys[i : i + WATCH_CHUNK] for i in range(0, len(keys), WATCH_CHUNK)]
        with ExitStack() as stack:
            # each chunk WATCHed on its own connection before the read: a change after it
            # aborts that chunk's EXEC
            connections = [stack.enter_context(watching(self.client, c)) for c in chunks]
            records, vectors, problems = self.store.read_batch(self.source, keys)
            for key, problem in problems.items():
                self._skip([key], problem)
            present = {self.store.key(self.source, r.entry_id) for r in records}
            replacements, reencoded = self._replacements(records, vectors)
            leaving = {self.store.key(self.source, r.entry_id): r for r in replacements}
            failed: list[str] = []
            done = stale = 0
            for connection, chunk in zip(connections, chunks, strict=True):
                replacing = [leaving[k] for k in chunk if k in leaving]
                gone = [k for k in chunk if k not in present and k not in self.tally.skipped]
                written = self._commit(connection, replacing, gone, owners)
                if written is None:
                    self.tally.conflicts += 1
                    failed.extend(chunk)
                else:
                    done, stale = done + len(written), stale + len(gone)
                    again = sum(1 for r in written if r.entry_id in reencoded)
                    self.tally.reencoded += again
                    if self.target == self.source:  # the rest of a re-encoding's: backfilled
                        self.tally.reconstructed += len(written) - again
        return failed, done, stale

    def _replacements(
        self, records: list[MemoryRecord], vectors: Vector
    ) -> tuple[list[MemoryRecord], set[str]]:
        """What replaces the records read (for retention: they themselves, to delete), and the
        entry ids among them encoded again from their raw state."""
        if self.target is None:
            return records, set()
        if self.target == self.source:
            return self._encoded_in_place(records, vectors)
        return self._moved_down(records, vectors, self.target)

    def _moved_down(
        self, records: list[MemoryRecord], vectors: Vector, destination: str
    ) -> tuple[list[MemoryRecord], set[str]]:
        """The records as `destination` records: compressed, those of another model encoded
        again from their raw state; those whose vector is not finite left in place."""
        if not records:
            return [], set()
        compressed = self.engine.compress(vectors, self.source)  # (N, destination dim)
        encoded = self._encode_again(records, compressed, destination)
        records, compressed = encoded.records, encoded.vectors
        if encoded.without_state:
            log.warning(
                "%s: %d memories of another model have no usable raw state: moved through model "
                "%s's bottleneck, approximate (keep_state_after_stm=true keeps states to "
                "re-encode after a retrain)",
                self.label, encoded.without_state, self.engine.version,
            )  # fmt: skip
        finite = np.isfinite(compressed).all(axis=1)
        if not finite.all():
            bad = [r for r, ok in zip(records, finite, strict=True) if not ok]
            self._skip([self.store.key(self.source, r.entry_id) for r in bad], "non-finite")
            records = [r for r, ok in zip(records, finite, strict=True) if ok]
            compressed = compressed[finite]
        rebuilt = reconstructions(self.engine, destination, compressed)
        moved = [
            r.with_vector(v, reconstruction=x, keep_state=self.keep_state)
            for r, v, x in zip(records, compressed, rebuilt, strict=True)
        ]
        return moved, encoded.reencoded

    def _encoded_in_place(
        self, records: list[MemoryRecord], vectors: Vector
    ) -> tuple[list[MemoryRecord], set[str]]:
        """The records encoded again from their raw state, with their new vectors and version;
        and in RECONSTRUCTED_TIERS those stored without a reconstruction, with theirs."""
        encoded = self._encode_again(records, vectors, self.source)
        lacking = self.source in RECONSTRUCTED_TIERS
        again = [
            i
            for i, r in enumerate(encoded.records)
            if r.entry_id in encoded.reencoded or (lacking and r.reconstruction is None)
        ]
        vectors = encoded.vectors[again]
        rebuilt = reconstructions(self.engine, self.source, vectors)
        rewritten = [
            encoded.records[i].with_vector(v, reconstruction=x)
            for i, v, x in zip(again, vectors, rebuilt, strict=True)
        ]
        return rewritten, encoded.reencoded

    def _encode_again(
        self, records: list[MemoryRecord], vectors: np.ndarray, tier: str
    ) -> _Encoded:
        """Records another model encoded: their rows of `vectors` (`tier`'s) replaced by their
        raw state encoded by this engine, their version by its version (new lists and matrix);
        their entry ids, and how many of them have no usable raw state (left as they were)."""
        version = self.engine.version
        other = [i for i, r in enumerate(records) if r.model_version != version]
        if not other:
            return _Encoded(records, vectors, set(), 0)
        with_state = [i for i in other if records[i].state_json is not None]
        good: list[int] = []
        if with_state:
            states = [parsed_state(records[i].state_json) for i in with_state]
            features, good, _ = self.engine.schema.extract_valid(states)
        records, vectors = list(records), vectors.copy()
        if good:
            encoded = self.engine.encode_features(features, (tier,))[tier]
            for row, j in enumerate(good):
                i = with_state[j]
                vectors[i] = encoded[row]
                records[i] = replace(records[i], model_version=version, features=features[row])
        reencoded = {records[with_state[j]].entry_id for j in good}
        self.tally.without_state.update(
            records[i].entry_id for i in other if records[i].entry_id not in reencoded
        )
        return _Encoded(records, vectors, reencoded, len(other) - len(good))

    def _commit(
        self,
        connection: Connection,
        records: list[MemoryRecord],
        gone: list[str],
        owners: dict[str, str],
    ) -> list[MemoryRecord] | None:
        """Write `records` to the target tier (unless retention) and delete their sources
        (unless the target is the source tier), and drop the index members of vanished
        sources, in one MULTI/EXEC on the `connection` that WATCHes their sources; the records
        written or deleted, or None if a watched source changed (nothing was). The sources of
        records the store refuses are left in place.

        Raises:
            redis.RedisError: Redis failed, or a command failed inside the EXEC.
        """
        commands: list[Command] = []
        if self.target is not None:
            commands, refused = self.store.encode_records(self.target, records)
            for entry_id, why in refused.items():
                self._skip([self.store.key(self.source, entry_id)], f"refused: {why}")
            records = [r for r in records if r.entry_id not in refused]
        if self.target != self.source:
            # delete_commands reads only entry_id and agent_id: the new records name the sources
            commands += self.store.delete_commands(self.source, records)
        # Index members whose hash is gone (evicted, deleted by hand): drop them, or they would
        # be selected forever. WATCH guarantees the hash is still absent at EXEC.
        if gone:
            commands.append(("ZREM", self.store.keys.time_index(self.source), *gone))
            commands += [
                ("ZREM", self.store.keys.agent_time_index(self.source, owners[key]), key)
                for key in gone
                if key in owners
            ]
        if not commands:
            return []
        replies = execute_transaction(connection, commands)
        if replies is None:
            return None
        first_error(replies)
        return records

    def _skip(self, keys: Sequence[str], why: str) -> None:
        for key in keys:
            log.error("%s: %s left in place, %s", self.label, key, why)
        self.tally.skipped.update(keys)


def _pass(
    client: redis.Redis,
    store: TierStore,
    engine: EmbeddingEngine,
    settings: Settings,
    route: tuple[str, str | None, str],
    max_batches: int | None,
    keep_going: KeepGoing | None,
) -> tuple[_Selector, _Mover]:
    """The selector and the mover of one pass, sharing one tally and budget; `route` is
    (source tier, target tier or None, label for logs)."""
    source, target, label = route
    tally = _Tally()
    budget = _Budget(tally, max_batches, keep_going)
    select = _Selector(client, store.keys, source, settings.consolidate_batch, budget)
    keep_state = settings.keep_state_after_stm
    return select, _Mover(client, store, engine, source, target, keep_state, label, tally)


def _run(mover: _Mover, batches: Iterator[_Batch], doing: str, done: str) -> None:
    """Let `mover` replace each of `batches` (selected lazily, one after another's commit).

    Raises:
        StoreError: Redis failed, naming `doing` and how many records were `done` (all
            committed).
    """
    try:
        for keys, owners in batches:
            mover.apply(keys, owners)
    except redis.RedisError as e:
        tally = mover.tally
        raise StoreError(
            f"{doing} failed after {tally.batches} batches ({tally.changed} {done}, all "
            f"committed): {e}"
        ) from e


def _fill(excess: dict[str, int], room: int) -> Iterator[tuple[str, int]]:
    """(agent, how many of its oldest) for one batch of `room` records, agents in order."""
    for agent, count in excess.items():
        if room <= 0:
            return
        take = min(count, room)
        yield agent, take
        room -= take


def _chunks(
    items: Iterator[str | bytes], size: int = AGENT_SCAN_COUNT
) -> Iterator[list[str | bytes]]:
    chunk: list[str | bytes] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
