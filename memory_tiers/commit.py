"""The commit of one ingest batch: one Lua script that writes only what this consumer owns.

Why a script: a daemon frozen longer than claim_idle_ms (a VM pause, `docker pause`, a GC
stall) loses its pending entries to another daemon's XAUTOCLAIM; that one stores them, and
consolidation may move them on to IM. When the frozen one resumes, its old batch must not be
written: the records would be back in STM beside their IM copies (or, after LTM retention,
back from the dead). So the script writes an entry's record, time index members, dead letter
and XACK only while the entry is still pending for this consumer (XPENDING id id 1 consumer),
and Redis runs a script alone: nothing can claim the entry between the check and the write.
Entries XAUTOCLAIM reported deleted are in no pending list any more; their dead letters are
written anyway (`orphan`), as only the consumer that claimed them hears of them.

Failures: Redis runs a script to its end or to the first command that fails, and never rolls
back what ran before. The XACK comes last, so a script that fails acks nothing: the entries stay
pending and are read again, and rewriting a record (keyed by its entry id) is harmless. The
store checks every record first (bounded numbers, TAG values, vectors), so no command of ours
is expected to fail.

Layout of a call (EVALSHA sha numkeys KEYS... ARGV...):
    KEYS    stream, dead letters, time index, agents set, each record's key, each agent's
            time index
    ARGV    group, consumer, dead-letter maxlen, #ids, ids...,
            #agents, agent ids..., #records, per record: entry id, agent number, ts, #fields,
            fields...; #dead letters, per letter: entry id, orphan (0 or 1), #fields, fields...
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from .constants import TIERS, Keys

STM = TIERS[0]

SCRIPT = """
local stream, dead, times, agents = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local group, consumer, maxlen = ARGV[1], ARGV[2], ARGV[3]
local a = 4
local function take()
    a = a + 1
    return ARGV[a - 1]
end
local function chunked(command, key, list, size)
    local done = 0
    for i = 1, #list, size do
        done = done + redis.call(command, key, unpack(list, i, math.min(i + size - 1, #list)))
    end
    return done
end
local owned, acks = {}, {}
for _ = 1, tonumber(take()) do
    local id = take()
    if #redis.call('XPENDING', stream, group, id, id, 1, consumer) > 0 then
        owned[id] = true
        acks[#acks + 1] = id
    end
end
local agent_ids = {}
for i = 1, tonumber(take()) do
    agent_ids[i] = take()
end
local n_records = tonumber(take())
local scores, by_agent, members = {}, {}, {}
for r = 1, n_records do
    local id, agent, ts, n = take(), tonumber(take()), take(), tonumber(take())
    if owned[id] then
        local key = KEYS[4 + r]
        redis.call('HSET', key, unpack(ARGV, a, a + n - 1))
        scores[#scores + 1] = ts
        scores[#scores + 1] = key
        if not by_agent[agent] then
            by_agent[agent] = {}
            members[#members + 1] = agent_ids[agent]
        end
        local list = by_agent[agent]
        list[#list + 1] = ts
        list[#list + 1] = key
    end
    a = a + n
end
if #scores > 0 then
    chunked('ZADD', times, scores, 1000)
    for agent, list in pairs(by_agent) do
        chunked('ZADD', KEYS[4 + n_records + agent], list, 1000)
    end
    chunked('SADD', agents, members, 1000)
end
local written = 0
for _ = 1, tonumber(take()) do
    local id, orphan, n = take(), take(), tonumber(take())
    if owned[id] or orphan == '1' then
        redis.call('XADD', dead, 'MAXLEN', '~', maxlen, '*', unpack(ARGV, a, a + n - 1))
        written = written + 1
    end
    a = a + n
end
local acked = 0
for i = 1, #acks, 1000 do
    acked = acked + redis.call('XACK', stream, group, unpack(acks, i, math.min(i + 999, #acks)))
end
return {#scores / 2, written, acked}
"""

SHA = hashlib.sha1(SCRIPT.encode()).hexdigest()
"""What EVALSHA names the script by."""

Pack = Callable[..., list[bytes]]
"""Packs one command (its arguments) into RESP chunks."""


@dataclass(frozen=True)
class RecordWrite:
    """One record as the script writes it: the store's HSET of it, its agent and its ts."""

    entry_id: str
    key: str
    agent_id: str
    ts: int
    fields: Sequence[Any]
    """field, value, field, value...: the HSET's arguments after the key."""


@dataclass(frozen=True)
class DeadLetterWrite:
    """One dead letter as the script writes it."""

    entry_id: str
    fields: Mapping[Any, Any]
    orphan: bool = False
    """Deleted from the stream and reported so by XAUTOCLAIM: in no pending list, written
    anyway."""


@dataclass(frozen=True)
class Written:
    """What one commit script did."""

    stored: int
    dead_letters: int
    acked: int
    """Entries it acked: those still pending for this consumer."""


def pack_commit(
    pack: Pack,
    keys: Keys,
    consumer: str,
    dead_letter_maxlen: int,
    ids: Sequence[str],
    records: Sequence[RecordWrite],
    dead_letters: Sequence[DeadLetterWrite],
) -> bytes:
    """The EVALSHA of one batch's commit (records go to STM), in RESP. No Redis."""
    agents: dict[str, int] = {}
    for record in records:
        agents.setdefault(record.agent_id, len(agents) + 1)
    record_args: list[Any] = [len(records)]
    for record in records:
        record_args += [record.entry_id, agents[record.agent_id], record.ts, len(record.fields)]
        record_args += record.fields
    letter_args: list[Any] = [len(dead_letters)]
    for letter in dead_letters:
        flat = [item for pair in letter.fields.items() for item in pair]
        letter_args += [letter.entry_id, int(letter.orphan), len(flat), *flat]
    call_keys = [
        keys.stream, keys.dead_letters, keys.time_index(STM), keys.agents(STM),
        *(record.key for record in records),
        *(keys.agent_time_index(STM, agent) for agent in agents),
    ]  # fmt: skip
    args = [
        keys.group, consumer, dead_letter_maxlen, len(ids), *ids,
        len(agents), *agents, *record_args, *letter_args,
    ]  # fmt: skip
    return b"".join(pack("EVALSHA", SHA, len(call_keys), *call_keys, *args))


def run_commit(client: redis.Redis, payload: bytes) -> Written:
    """Send a packed commit and read its reply; load the script first if Redis lacks it.

    Raises:
        redis.RedisError: the link failed (the script may have run or not), or the script
            failed (at a command: what ran before it stays, nothing was acked).
    """
    try:
        reply = _send(client, payload)
    except redis.exceptions.NoScriptError:  # a restarted or flushed Redis: nothing ran
        client.script_load(SCRIPT)
        reply = _send(client, payload)
    if not isinstance(reply, list) or len(reply) != 3:
        raise redis.ResponseError(f"the commit script answered {str(reply)[:80]!r}")
    stored, dead_letters, acked = (int(value) for value in reply)
    return Written(stored, dead_letters, acked)


def _send(client: redis.Redis, payload: bytes) -> Any:
    """One packed command's reply, on a connection of `client`'s pool, parsed by redis-py's
    reader only (redis-py's command path would pack it again and parse it through several
    Python calls, on the thread that competes with the next batch's prepare for the GIL)."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        connection.send_packed_command([payload])
        return connection.read_response()
    except redis.ResponseError:
        raise  # a whole reply was read: the link stays usable
    except BaseException:
        connection.disconnect()  # a reply may be left unread: never reuse the link
        raise
    finally:
        pool.release(connection)
