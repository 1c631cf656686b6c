"""The stream consumer: read a batch of states, featurize and encode it, write its records, ack.

A batch is read with XREADGROUP (new entries, or this consumer's own pending ones) or taken
over with XAUTOCLAIM (stream.py), then handled in two steps:

- `Ingestor.prepare`: CPU only, no Redis. Decode every entry (the stream protocol), featurize
  the good ones together, encode them together, build their STM records, and pack the batch's
  MULTI/EXEC. An entry that breaks the protocol or the feature schema, or whose record the
  store refuses, becomes a dead letter with the reason.
- `Ingestor.commit`: I/O only. The records, the dead letters and the XACK of every id of the
  batch go out in that one MULTI/EXEC, so an entry is either stored (or dead-lettered) and
  acked, or neither and still pending. It sends the packed bytes and reads the replies itself
  (resp.py, not through redis-py's pipeline): little Python runs there, so a commit on another
  thread (the daemon's) hardly competes with the next batch's prepare for the GIL.

Ownership: a daemon frozen longer than claim_idle_ms (a VM pause, `docker pause`, a GC stall)
loses its pending entries to another daemon's XAUTOCLAIM, which stores them; consolidation may
move them on. When the frozen one resumes, its old batch must not be written, or those memories
would be back in STM beside their IM copies. So a commit first WATCHes `Keys.claims` and asks
XPENDING which of its ids are still pending for this consumer (one round trip), then writes and
acks only those; every claim increments `Keys.claims` in the MULTI/EXEC of its XAUTOCLAIM, so a
claim between the check and the EXEC aborts the EXEC (nothing applied) and the check runs
again. Only claims through `Ingestor.claim_idle` are seen: an XCLAIM by hand is not.

Redis never rolls a transaction back: every reply of EXEC is read, and a command that failed
there raises PartialCommitError saying what applied. Numbers are bounded at the protocol and
every record is checked by the store first, so nothing of ours is expected to fail there.

Delivery: an entry that XADD accepted ends in STM exactly once or in the dead letters. Record
keys derive from entry ids, so a replay of an unacked batch overwrites instead of duplicating.
The client of `consumer_client` never retries a command by itself: a MULTI/EXEC whose reply
was lost is not sent again (it may have run, and a second run would add its dead letters
twice); the daemon re-reads its own pending entries instead, which returns exactly the ones
that were not acked.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.typing import EncodableT, FieldT

from .attributes import KIND, attribute_values, state_attributes
from .constants import TIERS, Keys
from .drift import ReconstructionDrift
from .engine import EmbeddingEngine
from .errors import EntryError, PartialCommitError, StoreError
from .ignored import IgnoredFields
from .protocol import StreamEntry, action_to_state, decode_entry, tag_problem
from .resp import (
    Command,
    execute_transaction,
    first_error,
    multi_exec,
    pack,
    pool_connection,
    read_replies,
    send,
    text,
)
from .settings import Settings
from .store import MemoryRecord, TierStore
from .stream import DELETED_BY_CLAIM, Fields, GroupReader, Message, ensure_group, stream_id

log = logging.getLogger(__name__)

DEFAULT_DEAD_LETTER_MAXLEN = 100_000
"""Dead-letter stream cap (approximate MAXLEN): the newest this many bad entries are kept."""

DEFAULT_SOCKET_TIMEOUT_S = 10.0
"""How long a Redis reply may take beyond the XREADGROUP block before the link counts as dead."""

UNKNOWN_AGENT_TYPE = "unknown"
"""agent_type stored for a state without one (or, for actions, without a string one)."""

DELETED_ERROR = "entry was deleted from the stream (XDEL or trimming) before it was processed"
"""Dead-letter reason of a pending entry that no longer exists in the stream."""

MAX_COMMIT_TRIES = 5
"""Commits in a row a claim may abort (WATCH) before the batch is left pending for now."""

DEAD_LETTER_FIELDS = ("error", "entry_id", "consumer")
"""Fields a dead letter adds to the entry's own (and replaces there, if it had them)."""

STM = TIERS[0]
"""The tier new memories go to."""

_consumer_numbers = itertools.count(1)


def default_consumer_name() -> str:
    """`host-pid`, unique per process; a second consumer in the same process gets `-2` added."""
    name = f"{socket.gethostname()}-{os.getpid()}"
    number = next(_consumer_numbers)
    return name if number == 1 else f"{name}-{number}"


def consumer_client(url: str, settings: Settings, name: str | None = None) -> redis.Redis:
    """A binary-safe Redis client for a consumer, without redis-py's own retries.

    Replies stay bytes, so a field that is not UTF-8 becomes a dead letter instead of an error
    in the reply parser. No built-in retries: see the module doc; the daemon backs off itself.
    """
    return redis.Redis.from_url(
        url,
        retry=Retry(NoBackoff(), 0),
        socket_timeout=settings.block_ms / 1000 + DEFAULT_SOCKET_TIMEOUT_S,
        socket_connect_timeout=DEFAULT_SOCKET_TIMEOUT_S,
        client_name=name,
    )


@dataclass(frozen=True)
class DeadLetter:
    """A stream entry that cannot be stored, with the reason."""

    entry_id: str
    error: str
    fields: Fields
    orphan: bool = False
    """Deleted from the stream and reported so by XAUTOCLAIM (`DELETED_BY_CLAIM`)."""

    def stream_fields(self, consumer: str) -> dict[FieldT, EncodableT]:
        """The entry's own fields plus error, entry_id and consumer, for XADD."""
        own = {k: v for k, v in self.fields.items() if text(k) not in DEAD_LETTER_FIELDS}
        return {**own, "error": self.error, "entry_id": self.entry_id, "consumer": consumer}


@dataclass(frozen=True)
class Batch:
    """A prepared batch: what one commit writes and acks."""

    ids: list[str]
    """Every entry id read, stored or dead-lettered alike: all are acked."""
    records: list[MemoryRecord]
    dead_letters: list[DeadLetter]
    sources: Mapping[str, Fields] = field(default_factory=dict)
    """The stream fields of each record's entry, for a dead letter if the store refuses it."""
    prepare_s: float = 0.0
    stage_cpu_s: Mapping[str, float] = field(default_factory=dict)
    """This thread's CPU seconds in each of prepare's stages (parse, featurize, encode, pack:
    the first four of STAGES)."""
    transaction: Transaction | None = None
    """The commit's MULTI/EXEC, packed by `prepare`; None: `commit` builds it."""
    ignored_fields: int = 0
    """Values of state fields the schema does not use (ignored.py), in the batch's states."""


@dataclass(frozen=True)
class Transaction:
    """A batch's MULTI/EXEC, packed: what `commit` sends and what it will have done."""

    payload: bytes | None
    """MULTI, the queued commands and EXEC, in RESP; None: packed when sent (resp.pack)."""
    commands: list[Command]
    """The queued commands, in order (for error messages)."""
    stored: int
    """Records it writes: those the store accepted."""
    dead_letters: list[DeadLetter]
    """Dead letters it adds: the batch's, then the records the store refused."""


@dataclass(frozen=True)
class Outcome:
    """What one commit did."""

    stored: int
    dead_letters: int
    acked: int
    """Entries acked; fewer than read when another consumer claimed some of them while this
    one held them (they were neither written nor acked here), or XAUTOCLAIM reported them
    deleted."""
    commit_s: float
    send_cpu_s: float = 0.0
    """The committing thread's CPU seconds in the commit; the rest of commit_s it waited."""


STAGES = ("parse", "featurize", "encode", "pack", "send", "wait")
"""A batch's stages, as IngestStats times them: CPU of decoding its entries, featurizing the
states, encoding them (and sampling drift), building its records and packing its MULTI/EXEC
(`prepare`'s thread); CPU of the commit, and the rest of the commit's time, waiting on Redis
(the committing thread)."""


class _StageClock:
    """This thread's CPU seconds per stage, each read as its stage ends (`lap`)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.thread_time()

    def lap(self, stage: str) -> None:
        now = time.thread_time()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now


@dataclass
class IngestStats:
    """Running totals of one consumer."""

    batches: int = 0
    entries: int = 0
    stored: int = 0
    dead_letters: int = 0
    claimed: int = 0
    prepare_s: float = 0.0
    commit_s: float = 0.0
    ignored_fields: int = 0
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    """Seconds per stage (STAGES): CPU, but for `wait`."""

    def add(self, batch: Batch, outcome: Outcome) -> None:
        """Count one committed batch."""
        self.ignored_fields += batch.ignored_fields
        self.batches += 1
        self.entries += len(batch.ids)
        self.stored += outcome.stored
        self.dead_letters += outcome.dead_letters
        self.prepare_s += batch.prepare_s
        self.commit_s += outcome.commit_s
        for stage, seconds in batch.stage_cpu_s.items():
            self.stage_s[stage] += seconds
        self.stage_s["send"] += outcome.send_cpu_s
        self.stage_s["wait"] += max(0.0, outcome.commit_s - outcome.send_cpu_s)


class _Decoded(NamedTuple):
    """A decoded entry, ready to featurize (a tuple: thousands are made per second)."""

    entry: StreamEntry
    state: Mapping[str, Any]
    """What the schema featurizes: the state, or an action's state form."""
    state_json: str
    agent_type: str


@dataclass
class _Split:
    """Entries of a batch on their way to records or dead letters."""

    ids: list[str] = field(default_factory=list)
    good: list[tuple[_Decoded, Fields]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)


class Ingestor:
    """One consumer of the state stream in the daemons' consumer group.

    Args:
        client: a client from `consumer_client` (no built-in retries; bytes replies).
        engine: encodes the featurized states; its version is stored with every record.
        settings: stream names (prefix), batch_size, block_ms, claim_idle_ms, tier settings.
        consumer: this consumer's name in the group [default: `default_consumer_name()`].
        store: the tier store to write to [default: one on `client` with `keys`].
        keys: the stream's and the tiers' key names [default: the deployment's]; one
            bucket's (buckets.py) on the cluster node that holds it.
        dead_letter_maxlen: approximate cap of the dead-letter stream.
        on_commit: called with each committed batch and its outcome, on the committing thread
            (the daemon's metrics count them there).
        drift: samples the reconstruction error of the states encoded; None: not watched.
    """

    def __init__(
        self,
        client: redis.Redis,
        engine: EmbeddingEngine,
        settings: Settings,
        consumer: str | None = None,
        *,
        store: TierStore | None = None,
        keys: Keys | None = None,
        dead_letter_maxlen: int = DEFAULT_DEAD_LETTER_MAXLEN,
        on_commit: Callable[[Batch, Outcome], None] | None = None,
        drift: ReconstructionDrift | None = None,
    ) -> None:
        self.client = client
        self.engine = engine
        self.settings = settings
        self.consumer = consumer or default_consumer_name()
        self.store = store or TierStore(client, settings, engine.schema, keys)
        self.attributes = state_attributes(engine.schema)
        """The state fields every record carries as attributes (attributes.py)."""
        self.keys = self.store.keys
        self.dead_letter_maxlen = dead_letter_maxlen
        self.stats = IngestStats()
        self.on_commit = on_commit
        self.drift = drift
        self.ignored = IgnoredFields()
        """State fields this schema does not use, counted per key (each logged once)."""
        self.reader = GroupReader(client, settings, self.consumer, self.keys)
        """This consumer's reads of the group (stream.py)."""

    # -- setup and reads -----------------------------------------------------------------------

    def ensure_group(self) -> bool:
        """Create the consumer group (and the stream) when missing; True if it was created."""
        return ensure_group(self.client, self.keys)

    def read_new(self) -> list[Message]:
        """Up to batch_size entries never delivered to the group, waiting up to block_ms."""
        return self.reader.read_new()

    def claim_idle(self, cursor: str = "0-0") -> tuple[str, list[Message]]:
        """One XAUTOCLAIM page (`GroupReader.claim_idle`), counted in `stats`."""
        next_cursor, messages = self.reader.claim_idle(cursor)
        self.stats.claimed += len(messages)
        return next_cursor, messages

    # -- one batch -----------------------------------------------------------------------------

    def process(self, messages: Sequence[Message]) -> tuple[Batch, Outcome]:
        """Prepare and commit one batch (commit counts it in `stats`)."""
        batch = self.prepare(messages)
        outcome = self.commit(batch)
        return batch, outcome

    def prepare(self, messages: Sequence[Message]) -> Batch:
        """Decode, featurize and encode a batch: its STM records and dead letters. No Redis."""
        start, clock = time.perf_counter(), _StageClock()
        split = _split(messages)
        clock.lap("parse")
        ignored: Counter[str] = Counter()
        features, good, errors = self._featurize([d.state for d, _ in split.good], ignored)
        clock.lap("featurize")
        if ignored:
            self.ignored.add(ignored)
        for index, error in errors.items():
            decoded, fields = split.good[index]
            split.dead.append(DeadLetter(decoded.entry.entry_id, error, fields))
        if errors and len(split.dead) > len(errors):
            order = {entry_id: i for i, entry_id in enumerate(split.ids)}
            split.dead.sort(key=lambda letter: order[letter.entry_id])  # stream order
        records: list[MemoryRecord] = []
        if good:
            vectors = self.engine.encode_features(features, (STM,))[STM]  # (len(good), stm_dim)
            if self.drift is not None:
                self.drift.sample(features)
            clock.lap("encode")
            records = [
                self._record(split.good[i][0], vectors[row], features[row])
                for row, i in enumerate(good)
            ]
        sources = {d.entry.entry_id: fields for d, fields in split.good}
        batch = Batch(split.ids, records, split.dead, sources, ignored_fields=ignored.total())
        transaction = self._transaction(batch) if batch.ids else None
        clock.lap("pack")
        return replace(
            batch,
            prepare_s=time.perf_counter() - start,
            stage_cpu_s=clock.seconds,
            transaction=transaction,
        )

    def commit(self, batch: Batch) -> Outcome:
        """Write the batch's records and dead letters and XACK all its ids, in one MULTI/EXEC.

        Raises:
            PartialCommitError: some queued commands failed and Redis applied the others; the
                message says which, and whether the entries were acked.
            StoreError: Redis failed otherwise; nothing of the batch may be assumed written or
                acked.
        """
        start, cpu = time.perf_counter(), time.thread_time()
        if not batch.ids:
            return Outcome(0, 0, 0, 0.0)
        transaction = batch.transaction or self._transaction(batch)
        what = f"commit of {len(batch.ids)} entries ({batch.ids[0]}..{batch.ids[-1]})"
        try:
            transaction, replies = self._execute_owned(batch, transaction)
        except redis.RedisError as e:
            raise StoreError(f"{what} failed: {e}") from e
        acked = _check_replies(what, transaction.commands, replies)
        dead = transaction.dead_letters
        outcome = Outcome(
            transaction.stored, len(dead), acked, time.perf_counter() - start,
            send_cpu_s=time.thread_time() - cpu,
        )  # fmt: skip
        self.stats.add(batch, outcome)
        if self.on_commit is not None:
            self.on_commit(batch, outcome)
        self._log(batch, outcome, dead)
        return outcome

    # -- helpers -------------------------------------------------------------------------------

    def _transaction(self, batch: Batch) -> Transaction:
        """The batch's MULTI/EXEC: its records (or dead letters for those the store refuses),
        its dead letters and the XACK of all its ids, packed. No Redis."""
        commands, stored, dead = self._record_commands(batch)
        for letter in dead:
            fields = letter.stream_fields(self.consumer)
            commands.append(
                ("XADD", self.keys.dead_letters, "MAXLEN", "~", self.dead_letter_maxlen, "*",
                 *(part for pair in fields.items() for part in pair))
            )  # fmt: skip
        if batch.ids:
            commands.append(("XACK", self.keys.stream, self.keys.group, *batch.ids))
        return Transaction(pack(multi_exec(commands)), commands, len(stored), dead)

    def _execute_owned(
        self, batch: Batch, transaction: Transaction
    ) -> tuple[Transaction, list[Any]]:
        """Run the batch's MULTI/EXEC for the entries still pending for this consumer (all of
        them, unless another consumer claimed some meanwhile); what ran and EXEC's replies.

        On one connection: WATCH claims + XPENDING, then MULTI ... EXEC. A claim in between
        aborts the EXEC (nothing applied) and the check runs again.

        Raises:
            redis.RedisError: the link failed, Redis refused the transaction (EXECABORT:
                nothing was applied), or claims aborted it MAX_COMMIT_TRIES times in a row.
        """
        with pool_connection(self.client) as connection:
            for _ in range(MAX_COMMIT_TRIES):
                owned = self._owned(connection, batch.ids)
                if len(owned) < len(batch.ids):
                    transaction = self._transaction(_owned_part(batch, owned))
                replies = execute_transaction(connection, transaction.commands, transaction.payload)
                if replies is not None:
                    return transaction, replies
            raise redis.WatchError(f"claims aborted the commit {MAX_COMMIT_TRIES} times")

    def _owned(self, connection: Any, ids: Sequence[str]) -> set[str]:
        """WATCH claims; of `ids`, those pending for this consumer (XPENDING over their range,
        a page of len(ids) + 1: one page unless older own entries in the range are pending)."""
        start, high = min(ids, key=stream_id), max(ids, key=stream_id)
        commands: list[Command] = [("WATCH", self.keys.claims)]
        pending: set[str] = set()
        while True:
            commands.append(("XPENDING", self.keys.stream, self.keys.group, start, high,
                             len(ids) + 1, self.consumer))  # fmt: skip
            send(connection, commands, pack(commands))
            replies = read_replies(connection, len(commands))
            first_error(replies)
            rows = replies[-1]
            pending.update(text(row[0]) for row in rows)
            if len(rows) <= len(ids):  # the last page: fewer than asked for
                return pending & set(ids)
            start, commands = "(" + text(rows[-1][0]), []

    def _featurize(
        self, states: Sequence[Mapping[str, Any]], ignored: Counter[str]
    ) -> tuple[npt.NDArray[np.float32], list[int], dict[int, str]]:
        """Feature rows of the good states, their indices, {index: reason} of the bad ones;
        the values no slot takes are counted per key into `ignored`."""
        schema = self.engine.schema
        try:
            features, good, errors = schema.extract_valid(states, ignored)
        except Exception:
            # A bug or an error type the schema does not expect: find the state that causes it
            # rather than stop on the batch forever.
            log.exception("featurizing %d states failed; retrying them one by one", len(states))
            return self._featurize_each(states)
        return features, good, {index: str(error) for index, error in errors.items()}

    def _featurize_each(
        self, states: Sequence[Mapping[str, Any]]
    ) -> tuple[npt.NDArray[np.float32], list[int], dict[int, str]]:
        rows: list[npt.NDArray[np.float32]] = []
        good: list[int] = []
        errors: dict[int, str] = {}
        for index, state in enumerate(states):
            try:
                rows.append(self.engine.schema.extract(state))
            except Exception as e:
                errors[index] = f"cannot featurize the state ({type(e).__name__}: {e})"
            else:
                good.append(index)
        width = self.engine.schema.input_dim
        features = np.stack(rows) if rows else np.zeros((0, width), dtype=np.float32)
        return features, good, errors

    def _record(
        self,
        decoded: _Decoded,
        vector: npt.NDArray[np.float32],
        features: npt.NDArray[np.float32],
    ) -> MemoryRecord:
        entry = decoded.entry
        return MemoryRecord(
            entry_id=entry.entry_id,
            agent_id=entry.agent_id,
            agent_type=decoded.agent_type,
            step=entry.step,
            ts=entry.ts,
            importance=entry.importance,
            model_version=self.engine.version,
            vector=vector,
            state_json=decoded.state_json,
            features=features,
            attributes={KIND: entry.kind, **attribute_values(self.attributes, decoded.state)},
        )

    def _record_commands(
        self, batch: Batch
    ) -> tuple[list[Command], list[MemoryRecord], list[DeadLetter]]:
        """The commands that write the records, the records they write, and the batch's dead
        letters plus one for each record the store refuses."""
        commands, refused = self.store.encode_records(STM, batch.records)
        if not refused:
            return commands, batch.records, batch.dead_letters
        stored = [record for record in batch.records if record.entry_id not in refused]
        dead = list(batch.dead_letters)
        for entry_id, why in refused.items():
            fields = batch.sources.get(entry_id, {})
            dead.append(DeadLetter(entry_id, f"record refused by the store: {why}", fields))
        return commands, stored, dead

    def _log(self, batch: Batch, outcome: Outcome, dead: Sequence[DeadLetter]) -> None:
        for letter in dead:
            log.debug("dead letter %s: %s", letter.entry_id, letter.error)
        if dead:
            log.warning(
                "%d of %d entries dead-lettered to %s (first: %s: %s)",
                len(dead), len(batch.ids), self.keys.dead_letters, dead[0].entry_id, dead[0].error,
            )  # fmt: skip
        lost = len(batch.ids) - outcome.acked - sum(letter.orphan for letter in batch.dead_letters)
        if lost > 0:
            log.warning(
                "%d of %d entries were no longer this consumer's (claimed by another while it "
                "held them past claim_idle_ms): neither written nor acked by it",
                lost, len(batch.ids),
            )  # fmt: skip
        log.debug(
            "batch of %d: %d stored, %d dead letters; prepare %.1f ms, commit %.1f ms",
            len(batch.ids), outcome.stored, outcome.dead_letters,
            batch.prepare_s * 1000, outcome.commit_s * 1000,
        )  # fmt: skip


def _check_replies(what: str, commands: Sequence[Command], replies: list[Any]) -> int:
    """The entries an executed MULTI/EXEC acked; PartialCommitError if any command failed.

    Redis applies every other command of the transaction, the XACK (last) included when it did
    not fail itself: then the entries are acked and will not be read again.
    """
    acked = replies[-1] if commands and commands[-1][0] == "XACK" else 0
    failed = [
        f"{args[0]} {text(args[1])}: {reply}"
        for args, reply in zip(commands, replies, strict=True)
        if isinstance(reply, Exception)
    ]
    if not failed:
        return int(acked)
    if isinstance(acked, Exception):
        fate = "the XACK failed: the entries stay pending and are read again"
        acked = 0
    else:
        fate = f"the other commands applied, the XACK too: {acked} entries acked, not read again"
    raise PartialCommitError(
        f"{what} partly applied: {len(failed)} of {len(commands)} commands failed "
        f"(first: {failed[0]}); {fate}",
        int(acked),
    )


def _owned_part(batch: Batch, owned: set[str]) -> Batch:
    """The part of `batch` this consumer still owns, with the dead letters of the entries
    XAUTOCLAIM reported deleted (in no pending list: nobody else will write them)."""
    return replace(
        batch,
        ids=[entry_id for entry_id in batch.ids if entry_id in owned],
        records=[record for record in batch.records if record.entry_id in owned],
        dead_letters=[d for d in batch.dead_letters if d.entry_id in owned or d.orphan],
        transaction=None,
    )


# -- decoding ----------------------------------------------------------------------------------


def _split(messages: Sequence[Message]) -> _Split:
    """Decode every message: the good ones with their fields, the others as dead letters."""
    split = _Split()
    for raw_id, raw_fields in messages:
        entry_id = text(raw_id)
        fields: Fields = raw_fields or {}
        split.ids.append(entry_id)
        try:
            split.good.append((_decode(entry_id, fields), fields))
        except EntryError as e:
            orphan = raw_fields is DELETED_BY_CLAIM
            split.dead.append(DeadLetter(entry_id, str(e), fields, orphan))
        except Exception as e:
            # e.g. RecursionError from JSON nested too deep: still the entry's fault.
            log.warning("entry %s cannot be decoded", entry_id, exc_info=True)
            split.dead.append(
                DeadLetter(entry_id, f"unreadable entry ({type(e).__name__}: {e})"[:300], fields)
            )
    return split


def _decode(entry_id: str, fields: Fields) -> _Decoded:
    """One entry, checked: the protocol, then what the record needs beyond it.

    Raises:
        EntryError: the entry was deleted, breaks the protocol, or has an unstorable agent_type.
    """
    if not fields:
        raise EntryError(DELETED_ERROR)
    entry = decode_entry(entry_id, fields)
    state = action_to_state(entry.state) if entry.kind == "action" else entry.state
    return _Decoded(entry, state, _field_text(fields, "state"), _agent_type(entry.state))


def _agent_type(state: Mapping[str, Any]) -> str:
    """The state's agent_type as a TAG value; a non-string is the schema's to refuse."""
    value = state.get("agent_type")
    if not isinstance(value, str) or not value:
        return UNKNOWN_AGENT_TYPE
    problem = _tag_problem(value)
    if problem:
        raise EntryError(f"agent_type {value[:60]!r} {problem}")
    return value


@functools.lru_cache(maxsize=1024)
def _tag_problem(value: str) -> str | None:
    # Agents have a handful of types: check each once, not once per state.
    return tag_problem(value)


def _field_text(fields: Fields, name: str) -> str:
    value = fields.get(name.encode(), fields.get(name))
    return text(value)
