"""Tier consolidation: each tier's policy and one pass that applies it (no scheduler here).

A pass over STM or IM moves memories one tier down through the model's bottleneck layers: it
reads a batch of stored vectors, compresses them with one batched matrix product
(`EmbeddingEngine.compress`), writes the destination records and deletes the sources in one
MULTI/EXEC. A pass over LTM applies retention: it deletes, when LTM has a policy at all.

Which memories go (no SCAN anywhere):
- age rule: `ZRANGEBYSCORE` of the tier's time index, `-inf .. (now - max_age)`, LIMIT batch;
- count rule, after the age rule: the tier's agent set (`Keys.agents`, SADDed by
  `TierStore.add_records` in the write's own transaction) is walked with SSCAN, one pipelined
  ZCARD per agent finds those above `max_per_agent`, and `ZRANGE 0 .. excess-1` of an agent's
  time index gives its oldest. Agents whose index is empty leave the set (a Lua script that
  re-checks ZCARD, so a concurrent write is never lost from it).

Race guard: the batch's source keys are WATCHed before they are read (in chunks of
WATCH_CHUNK keys, one connection each: Redis's WATCH is quadratic in the keys per connection),
and each chunk's destination writes plus source deletes (`TierStore.add_records` and
`queue_delete` on the watching pipeline) run as one MULTI/EXEC. If any source of a chunk
changed between the read and EXEC (moved by a concurrent pass, re-written by a replay,
deleted), that EXEC aborts, nothing of the chunk is written, and its keys are read again: a
vanished source is then absent from the read and cannot be resurrected, a re-written one moves
as it now is. A crash (even kill -9) before an EXEC leaves its memories untouched in the
source tier, after it leaves them wholly in the destination: every memory is in exactly one
tier. Destination keys derive from the entry id, so a memory written twice would overwrite,
never duplicate.

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
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import redis
from redis.client import Pipeline

from .constants import TIERS
from .engine import EmbeddingEngine
from .errors import ConfigError, StoreError
from .resp import text
from .settings import Settings
from .store import (
    FEATURES_FIELD,
    STATE_FIELD,
    VECTOR_FIELD,
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

_FIELDS: tuple[str, ...] = (
    *("agent_id", "agent_type", "step", "ts", "importance", "model_version"),
    *(VECTOR_FIELD, STATE_FIELD, FEATURES_FIELD),
)
"""What a pass reads of a record hash, in this order (see `_source`)."""
_VEC, _STATE, _FEATURES = 6, 7, 8

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
    run = _Pass(client, store, engine, settings, policy, max_batches, keep_going)
    if policy.enabled:
        try:
            run.run(_clock(now_ms))
        except redis.RedisError as e:
            raise StoreError(
                f"consolidate {policy.describe()} failed after {run.batches} batches "
                f"({run.done} moved or deleted, all committed): {e}"
            ) from e
    moved, deleted = (run.done, 0) if policy.destination else (0, run.done)
    result = PassResult(
        moved, deleted, run.batches, time.perf_counter() - started,
        len(run.skipped), run.conflicts, run.reencoded_moved, len(run.without_state),
    )  # fmt: skip
    busy = result.moved or result.deleted or result.skipped or result.conflicts or run.stale
    log.log(
        logging.INFO if busy or run.stopped else logging.DEBUG,  # an idle pass every interval
        "consolidate %s: moved %d (%d re-encoded from their state), deleted %d, skipped %d, "
        "conflicts %d, stale index entries %d, %d batches in %.3f s%s",
        policy.describe(), result.moved, result.reencoded, result.deleted, result.skipped,
        result.conflicts, run.stale, result.batches, result.seconds,
        " (stopped early)" if run.stopped else "",
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
    are (`PassResult.without_state`). Records are rewritten under the same WATCH guard as
    consolidation, so a pass running meanwhile moves each memory exactly once.

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
    run = _Reencode(
        client, store, engine, settings, TierPolicy.from_settings(settings, tier),
        max_batches, keep_going,
    )  # fmt: skip
    try:
        run.run(0)
    except redis.RedisError as e:
        raise StoreError(
            f"re-encoding {tier} failed after {run.batches} batches ({run.done} re-encoded, all "
            f"committed): {e}"
        ) from e
    result = PassResult(
        0, 0, run.batches, time.perf_counter() - started, len(run.skipped), run.conflicts,
        run.reencoded_moved, len(run.without_state),
    )  # fmt: skip
    log.info(
        "re-encode %s with model %s: %d re-encoded, %d without a usable raw state left as they "
        "are, skipped %d, conflicts %d, %d batches in %.3f s",
        tier, engine.version, result.reencoded, result.without_state, result.skipped,
        result.conflicts, result.batches, result.seconds,
    )  # fmt: skip
    return result


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


class _Pass:
    """One pass's state: counters, and the keys it leaves in place (offsets past them)."""

    def __init__(
        self,
        client: redis.Redis,
        store: TierStore,
        engine: EmbeddingEngine,
        settings: Settings,
        policy: TierPolicy,
        max_batches: int | None,
        keep_going: KeepGoing | None,
    ) -> None:
        self.client = client
        self.store = store
        self.engine = engine
        self.policy = policy
        self.batch = settings.consolidate_batch
        self.keep_state = settings.keep_state_after_stm
        self.max_batches = max_batches
        self.keep_going = keep_going
        self.keys = store.keys
        self.source = policy.tier
        self.target = policy.destination
        """Where the records a batch reads are written: the next tier, or None (retention)."""
        self.what = policy.describe()
        self.done = self.batches = self.conflicts = self.stale = 0
        """done: records moved, deleted or re-encoded."""
        self.reencoded_moved = 0
        self.without_state: set[str] = set()
        self.skipped: set[str] = set()
        self.stopped = False
        self.reencoded: set[str] = set()
        """Entry ids whose destination vector came from their raw state (another model's)."""

    def run(self, now: int) -> None:
        if self.policy.max_age_s is not None:
            self._by_age(now - round(self.policy.max_age_s * 1000))
        if self.policy.max_per_agent is not None and not self.stopped:
            self._by_count(self.policy.max_per_agent)

    def _may_continue(self) -> bool:
        full = self.max_batches is not None and self.batches >= self.max_batches
        self.stopped = full or (self.keep_going is not None and not self.keep_going())
        return not self.stopped

    # -- selection -----------------------------------------------------------------------------

    def _by_age(self, cutoff_ms: int) -> None:
        """Batches of the tier's records with ts < cutoff_ms, oldest first."""
        index = self.keys.time_index(self.source)
        while self._may_continue():
            # Skipped keys stay at the head of the range: start past them.
            members = self.client.zrangebyscore(
                index, "-inf", f"({cutoff_ms}", start=len(self.skipped), num=self.batch
            )
            keys = [k for k in (text(m) for m in members) if k not in self.skipped]
            if not keys:  # only records left in place are older than the cutoff
                return
            self._apply(keys, {})

    def _by_count(self, limit: int) -> None:
        """Batches of the oldest records of each agent holding more than `limit`."""
        excess = dict(self._agents_over(limit))
        if self.stopped:
            return
        offsets: dict[str, int] = {}  # per agent: its skipped records at the head of its index
        while excess and self._may_continue():
            plan = list(_fill(excess, self.batch))
            pipe = self.client.pipeline(transaction=False)
            for agent, take in plan:
                start = offsets.get(agent, 0)
                pipe.zrange(self.keys.agent_time_index(self.source, agent), start, start + take - 1)
            owners: dict[str, str] = {}
            for (agent, take), members in zip(plan, pipe.execute(), strict=True):
                owners.update((text(m), agent) for m in members)
                excess[agent] -= take
                if excess[agent] <= 0 or len(members) < take:
                    del excess[agent]
            self._apply(list(owners), owners)
            # What stays (skipped now or by the age rule) is the head of its agent's index.
            for key in self.skipped.intersection(owners):
                offsets[owners[key]] = offsets.get(owners[key], 0) + 1

    def _agents_over(self, limit: int) -> Iterator[tuple[str, int]]:
        """(agent, records above `limit`) for each agent of the tier's agent set; prunes empties."""
        agents_key = self.keys.agents(self.source)
        prune = self.client.register_script(_PRUNE_AGENT)
        for chunk in _chunks(self.client.sscan_iter(agents_key, count=AGENT_SCAN_COUNT)):
            if self.keep_going is not None and not self.keep_going():  # renews a job's lock
                self.stopped = True
                return
            agents = [text(a) for a in chunk]
            pipe = self.client.pipeline(transaction=False)
            for agent in agents:
                pipe.zcard(self.keys.agent_time_index(self.source, agent))
            counts = pipe.execute()
            empty = [a for a, n in zip(agents, counts, strict=True) if n == 0]
            if empty:
                pipe = self.client.pipeline(transaction=False)
                for agent in empty:
                    index = self.keys.agent_time_index(self.source, agent)
                    prune(keys=[index, agents_key], args=[agent], client=pipe)
                pipe.execute()
            yield from ((a, n - limit) for a, n in zip(agents, counts, strict=True) if n > limit)

    # -- one batch -----------------------------------------------------------------------------

    def _apply(self, keys: list[str], owners: dict[str, str]) -> None:
        """Move (or delete) the records under `keys`: watched MULTI/EXECs, retried on conflict."""
        pending = [k for k in keys if k not in self.skipped]
        done = stale = 0
        for _ in range(MAX_CONFLICT_RETRIES + 1):
            if not pending:
                break
            pending, counts = self._attempt(pending, owners)
            done, stale = done + counts[0], stale + counts[1]
        self.batches += 1 if done or stale else 0
        self.stale += stale
        self.done += done
        if pending:
            log.warning(
                "%s: %d records kept changing during %d tries; left for the next pass (%s, ...)",
                self.what, len(pending), MAX_CONFLICT_RETRIES + 1, pending[0],
            )  # fmt: skip
            self.skipped.update(pending)

    def _attempt(
        self, keys: list[str], owners: dict[str, str]
    ) -> tuple[list[str], tuple[int, int]]:
        """One try: WATCH the keys, read and compress them once, commit chunk by chunk.

        Returns:
            The keys of the chunks whose EXEC aborted (a watched source changed), and
            (records moved or deleted, stale index members dropped) by the others.
        """
        chunks = [keys[i : i + WATCH_CHUNK] for i in range(0, len(keys), WATCH_CHUNK)]
        with ExitStack() as stack:
            pipes = [stack.enter_context(self.client.pipeline()) for _ in chunks]
            for pipe, chunk in zip(pipes, chunks, strict=True):
                pipe.watch(*chunk)  # before the read: a change after it aborts the EXEC
            sources, vectors = self._read(keys)
            present = {self.keys.record(self.source, s.entry_id) for s in sources}
            leaving = {
                self.keys.record(self.source, r.entry_id): r
                for r in self._leaving(sources, vectors)
            }
            failed: list[str] = []
            done = stale = 0
            for pipe, chunk in zip(pipes, chunks, strict=True):
                records = [leaving[k] for k in chunk if k in leaving]
                gone = [k for k in chunk if k not in present and k not in self.skipped]
                try:
                    done += self._commit(pipe, records, gone, owners)
                except redis.WatchError:
                    self.conflicts += 1
                    failed.extend(chunk)
                else:
                    stale += len(gone)
        return failed, (done, stale)

    def _leaving(self, sources: list[_Source], vectors: Vector) -> list[MemoryRecord]:
        """What replaces the sources: destination records (compressed), or, for retention,
        the sources themselves (to delete)."""
        if self.policy.destination is None:
            return _records(sources, vectors, keep_state=True)
        if not sources:
            return []
        destination = self.policy.destination
        compressed = self.engine.compress(vectors, self.source)  # (N, destination dim)
        sources, without_state = self._encode_again(sources, compressed, destination)
        if without_state:
            log.warning(
                "%s: %d memories of another model have no usable raw state: moved through model "
                "%s's bottleneck, approximate (keep_state_after_stm=true keeps states to "
                "re-encode after a retrain)",
                self.what, without_state, self.engine.version,
            )  # fmt: skip
        finite = np.isfinite(compressed).all(axis=1)
        if not finite.all():
            bad = [s for s, ok in zip(sources, finite, strict=True) if not ok]
            self._skip([self.keys.record(self.source, s.entry_id) for s in bad], "non-finite")
            sources = [s for s, ok in zip(sources, finite, strict=True) if ok]
            compressed = compressed[finite]
        return _records(sources, compressed, keep_state=self.keep_state)

    def _encode_again(
        self, sources: list[_Source], vectors: Vector, tier: str
    ) -> tuple[list[_Source], int]:
        """Sources another model encoded: their rows of `vectors` (`tier`'s) replaced by their
        raw state encoded by this engine (in place), their version by its version; and how
        many of them have no usable raw state (left as they were)."""
        version = self.engine.version
        other = [i for i, s in enumerate(sources) if s.model_version != version]
        if not other:
            return sources, 0
        with_state = [i for i in other if sources[i].state_json is not None]
        sources = list(sources)
        good: list[int] = []
        if with_state:
            states = [parsed_state(sources[i].state_json) for i in with_state]
            features, good, _ = self.engine.schema.extract_valid(states)
        if good:
            encoded = self.engine.encode_features(features, (tier,))[tier]
            for row, j in enumerate(good):
                i = with_state[j]
                vectors[i] = encoded[row]
                sources[i] = sources[i]._replace(model_version=version, features=features[row])
                self.reencoded.add(sources[i].entry_id)
        encoded_ids = {sources[with_state[j]].entry_id for j in good}
        self.without_state.update(
            sources[i].entry_id for i in other if sources[i].entry_id not in encoded_ids
        )
        return sources, len(other) - len(good)

    def _commit(
        self, pipe: Pipeline, records: list[MemoryRecord], gone: list[str], owners: dict[str, str]
    ) -> int:
        """Write `records` to the target tier (unless retention) and delete their sources
        (unless the target is the source tier), and drop the index members of vanished
        sources, in one MULTI/EXEC; how many records were written or deleted."""
        if not records and not gone:
            return 0  # leaving the `with` unwatches
        pipe.multi()
        if self.target is not None:
            try:
                self.store.add_records(pipe, self.target, records)
            except ValueError:  # add_records queued nothing; keep what it accepts
                records = self._accepted(records)
                self.store.add_records(pipe, self.target, records)
        if self.target != self.source:
            # queue_delete reads only entry_id and agent_id: the new records name the sources.
            self.store.queue_delete(pipe, self.source, records)
        # Index members whose hash is gone (evicted, deleted by hand): drop them, or they would
        # be selected forever. WATCH guarantees the hash is still absent at EXEC.
        if gone:
            pipe.zrem(self.keys.time_index(self.source), *gone)
            for key in gone:
                if key in owners:
                    pipe.zrem(self.keys.agent_time_index(self.source, owners[key]), key)
        pipe.execute()
        self.reencoded_moved += sum(1 for r in records if r.entry_id in self.reencoded)
        return len(records)

    def _read(self, keys: list[str]) -> tuple[list[_Source], Vector]:
        """The sources under `keys` (vanished ones left out) and their (N, dim) float32 vectors.

        One pipelined HMGET per key and one np.frombuffer over the joined vector bytes instead
        of `TierStore.read`'s dict and array per record (27 ms instead of 32 ms per 1,000 STM
        records here). Unreadable records are skipped (logged, left in place).
        """
        tier = self.store.tiers[self.source]
        names = [attribute.name for attribute in self.store.record_attributes]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            # NEVER_DECODE: the vector is binary even when the client decodes replies.
            pipe.execute_command("HMGET", key, *_FIELDS, *names, NEVER_DECODE=True)
        try:
            rows = pipe.execute()
        except redis.RedisError as e:
            raise StoreError(f"reading {len(keys)} {self.source} records failed: {e}") from e
        width = tier.dim * np.dtype(tier.datatype).itemsize
        good: list[tuple[str, list[Any]]] = []
        for key, row in zip(keys, rows, strict=True):
            if None in row[:_STATE] or len(row[_VEC]) != width:
                problem = _row_problem(row, width)
                if problem:
                    self._skip([key], problem)
                continue  # else vanished: the hash is gone
            good.append((key, row))
        # (N * dim,) of the tier's datatype -> (N, dim) float32, one copy
        blob = b"".join(row[_VEC] for _, row in good)
        vectors = np.frombuffer(blob, dtype=tier.datatype).reshape(-1, tier.dim).astype(np.float32)
        start = len(self.keys.record_prefix(self.source))
        sources: list[_Source] = []
        kept = np.ones(len(good), dtype=bool)
        for i, (key, row) in enumerate(good):
            try:
                sources.append(_source(key[start:], row, names))
            except ValueError as e:
                self._skip([key], f"corrupt: {e}")
                kept[i] = False
        return sources, vectors if kept.all() else vectors[kept]

    def _accepted(self, moved: list[MemoryRecord]) -> list[MemoryRecord]:
        """The new records the store accepts; the sources of the others are skipped."""
        assert self.target is not None
        scratch = self.client.pipeline(transaction=False)  # never executed
        accepted = []
        for record in moved:
            try:
                self.store.add_records(scratch, self.target, [record])
            except ValueError as e:
                self._skip([self.keys.record(self.source, record.entry_id)], f"refused: {e}")
            else:
                accepted.append(record)
        scratch.reset()
        return accepted

    def _skip(self, keys: Sequence[str], why: str) -> None:
        for key in keys:
            log.error("%s: %s left in place, %s", self.what, key, why)
        self.skipped.update(keys)


class _Reencode(_Pass):
    """A pass that rewrites a tier's records of other model versions in place (`reencode`)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.target = self.source
        self.what = f"{self.source} re-encode"

    def run(self, now: int) -> None:
        """Walk the tier's time index by rank; re-encode the pages' records of other versions.

        Rewrites keep each record's score, so ranks hold still; a record a concurrent pass
        moves away meanwhile shifts the ranks after it, and a later record may be missed:
        consolidation re-encodes it when it moves, or a second run does.
        """
        index = self.keys.time_index(self.source)
        start = 0
        while self._may_continue():
            members = [text(m) for m in self.client.zrange(index, start, start + self.batch - 1)]
            if not members:
                return
            start += len(members)
            pipe = self.client.pipeline(transaction=False)
            for key in members:
                pipe.hget(key, "model_version")
            versions = pipe.execute()
            other = [
                key
                for key, version in zip(members, versions, strict=True)
                if version is not None and text(version) != self.engine.version
            ]
            if other:
                self._apply(other, {})

    def _leaving(self, sources: list[_Source], vectors: Vector) -> list[MemoryRecord]:
        """The sources that were encoded again, with their new vectors and version."""
        sources, _ = self._encode_again(sources, vectors, self.source)
        again = [i for i, s in enumerate(sources) if s.entry_id in self.reencoded]
        return _records([sources[i] for i in again], vectors[again], keep_state=True)


def _row_problem(row: list[Any], width: int) -> str | None:
    """Why an HMGET row (`_FIELDS` order) is not a record; None when its hash is just gone."""
    if all(value is None for value in row):
        return None
    missing = [name for name, value in zip(_FIELDS[:_STATE], row, strict=False) if value is None]
    if missing:
        return f"incomplete: no {', '.join(missing)}"
    return f"corrupt: {VECTOR_FIELD} has {len(row[_VEC])} bytes, {width} expected"


class _Source(NamedTuple):
    """What a pass keeps of a source record besides its vector."""

    entry_id: str
    agent_id: str
    agent_type: str
    step: int
    ts: int
    importance: float
    model_version: str
    state_json: str | None
    features: Vector | None
    """The state's features under `model_version`'s schema, where stored with the state."""
    attributes: dict[str, str]
    """The record's state attributes (attributes.py), copied to the tier below as they are."""


def _source(entry_id: str, row: list[Any], names: Sequence[str]) -> _Source:
    """A source from its HMGET row (`_FIELDS`, then the attributes `names`, bytes); ValueError
    if a number is not one."""
    state, features = row[_STATE], row[_FEATURES]
    return _Source(
        entry_id,
        row[0].decode("utf-8", "replace"),
        row[1].decode("utf-8", "replace"),
        int(row[2]),
        int(row[3]),
        float(row[4]),
        row[5].decode("utf-8", "replace"),
        None if state is None else state.decode("utf-8", "replace"),
        None if features is None else np.frombuffer(features, dtype=np.float32),
        {
            name: value.decode("utf-8", "replace")
            for name, value in zip(names, row[len(_FIELDS) :], strict=True)
            if value is not None
        },
    )


def _records(sources: list[_Source], vectors: Vector, keep_state: bool) -> list[MemoryRecord]:
    """One record per source with its row of `vectors`; the raw state only if `keep_state`."""
    return [
        MemoryRecord(
            entry_id=s.entry_id,
            agent_id=s.agent_id,
            agent_type=s.agent_type,
            step=s.step,
            ts=s.ts,
            importance=s.importance,
            model_version=s.model_version,
            vector=vector,
            state_json=s.state_json if keep_state else None,
            features=s.features if keep_state else None,
            attributes=s.attributes,
        )
        for s, vector in zip(sources, vectors, strict=True)
    ]


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
