"""What the HTTP API and the MCP server do for a caller: remember, recall, status, reconstruct,
stats, each checked against the caller's API key and answered as JSON-ready dicts.

Both front ends are thin: they parse their own requests and call one `MemoryGateway` method.
Writes go through `MemoryClient.remember`/`remember_many` (the same protocol checks and XADD as
Python agents) and reads through `MemoryClient.recall`, so a hit over HTTP is the hit an
in-process client gets. Every method is synchronous (redis-py and torch): the front ends run
them in worker threads.

Recall's filters: `RecallFilter` names what a request may filter on and `filter_expression`
turns it into the redisvl expression `MemoryClient.recall(filters=...)` takes; new filters
(state fields, once recall supports them) are added in those two places.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

import numpy as np
import redis
from redisvl.query.filter import FilterExpression, Num, Tag

from .auth import ApiKey
from .client import MemoryClient, MergedHit, Recall
from .constants import TIERS
from .entries import entry_status
from .errors import MemoryTiersError
from .protocol import check_agent_id
from .settings import Settings
from .status import agent_counts, health, snapshot, top_agents
from .store import Hit

log = logging.getLogger(__name__)

MAX_K = 1000
"""Most hits per tier one recall may ask for."""


class AccessDenied(MemoryTiersError):
    """The caller's API key may not read or write this agent's memories."""


class NotFound(MemoryTiersError):
    """No such memory (or none this caller may see)."""


@dataclass(frozen=True)
class RecallFilter:
    """What a recall may be narrowed to besides the agent and the step range."""

    agent_types: tuple[str, ...] | None = None
    """Only memories whose state's agent_type is one of these."""
    importance: tuple[float | None, float | None] | None = None
    """Only memories with importance in [low, high] (None: unbounded on that side)."""
    ts: tuple[int | None, int | None] | None = None
    """Only memories with ts (epoch ms) in [low, high]."""
    where: Mapping[str, Any] | None = None
    """Conditions on state fields, as `MemoryClient.recall(where=...)` takes them."""
    kinds: tuple[str, ...] | None = None
    """Only memories of these kinds, as `MemoryClient.recall(kinds=...)` takes them."""


def filter_expression(spec: RecallFilter | None) -> FilterExpression | None:
    """The redisvl expression of `spec`, ANDed; None when it filters nothing."""
    if spec is None:
        return None
    parts: list[FilterExpression] = []
    if spec.agent_types:
        parts.append(Tag("agent_type") == list(spec.agent_types))
    for name, bounds in (("importance", spec.importance), ("ts", spec.ts)):
        if bounds is None:
            continue
        low, high = bounds
        if low is not None:
            parts.append(Num(name) >= low)
        if high is not None:
            parts.append(Num(name) <= high)
    return reduce(lambda a, b: a & b, parts) if parts else None


class MemoryGateway:
    """The operations of the network front ends, over one MemoryClient.

    Args:
        client: the client every operation goes through (its Redis and model).
        settings: the deployment's settings (prefix, max_lag, max batch).
    """

    def __init__(self, client: MemoryClient, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = settings.keys

    @property
    def redis(self) -> redis.Redis:
        """The Redis connection the client uses (one Redis: status is not yet cluster-wide)."""
        return self.client.one_redis

    # -- access --------------------------------------------------------------------------------

    @staticmethod
    def authorize(key: ApiKey | None, agent_id: str) -> None:
        """Refuse an agent the caller's key is not limited to; no key (stdio MCP): any agent.

        Raises:
            AccessDenied: naming the agent, never the key.
        """
        if key is not None and not key.allows(agent_id):
            raise AccessDenied(f"this API key may not access agent {agent_id!r}")

    # -- writes --------------------------------------------------------------------------------

    def remember(self, key: ApiKey | None, item: Mapping[str, Any]) -> str:
        """XADD one memory (a `MemoryItem` mapping); its stream entry id.

        Raises:
            EntryError: the daemon would refuse it (the message names the field).
            AccessDenied: the key may not write this agent.
        """
        agent = item.get("agent_id")
        if isinstance(agent, str):
            self.authorize(key, agent)
        return self.client.remember(**item)

    def remember_many(self, key: ApiKey | None, items: Sequence[Mapping[str, Any]]) -> list[str]:
        """XADD memories in one round trip, all or none; their entry ids in order.

        Raises:
            EntryError: an item would be refused ("item 3: ..."); nothing was written.
            AccessDenied: the key may not write an item's agent; nothing was written.
        """
        for index, item in enumerate(items):
            agent = item.get("agent_id")
            if isinstance(agent, str) and key is not None and not key.allows(agent):
                raise AccessDenied(f"item {index}: this API key may not access agent {agent!r}")
        return self.client.remember_many(items)

    # -- reads ---------------------------------------------------------------------------------

    def status(self, key: ApiKey | None, entry_id: str) -> dict[str, Any]:
        """Where a stream entry ended: stored (tier, key), dead_letter (error), pending, unknown.

        Raises:
            ValueError: not an entry id.
            NotFound: the entry belongs to an agent the key may not see.
        """
        found = entry_status(self.redis, self.keys, entry_id)
        if key is not None and found.agent_id is not None and not key.allows(found.agent_id):
            raise NotFound(f"no entry {entry_id} of the agents this API key may access")
        return found.to_dict()

    def recall(
        self,
        key: ApiKey | None,
        agent_id: str,
        query: Mapping[str, Any] | Sequence[float],
        k: int = 10,
        tiers: Sequence[str] = TIERS,
        step_range: tuple[int, int] | None = None,
        spec: RecallFilter | None = None,
        with_vectors: bool = False,
    ) -> dict[str, Any]:
        """`MemoryClient.recall` of a state or a vector, as JSON: per-tier and merged hits.

        Raises:
            EntryError: a malformed agent id.
            AccessDenied: the key may not read this agent.
            ValueError, FeatureError: bad k, tiers, step range, vector or state.
        """
        agent_id = check_agent_id(agent_id)
        self.authorize(key, agent_id)
        target = query if isinstance(query, Mapping) else np.asarray(query, dtype=np.float32)
        found = self.client.recall(
            agent_id, target, k, tiers, step_range, filter_expression(spec),
            where=None if spec is None else spec.where,
            kinds=None if spec is None else spec.kinds,
        )  # fmt: skip
        return recall_json(found, with_vectors)

    def reconstruct(self, key: ApiKey | None, agent_id: str, entry_id: str) -> dict[str, Any]:
        """An approximate state of one stored memory, decoded from its vector.

        Raises:
            NotFound: no memory of `agent_id` under that entry id (or not one the key may see).
        """
        agent_id = check_agent_id(agent_id)
        self.authorize(key, agent_id)
        found = entry_status(self.redis, self.keys, entry_id)
        if found.state != "stored" or found.tier is None or found.agent_id != agent_id:
            raise NotFound(f"agent {agent_id!r} has no stored memory {entry_id} ({found.state})")
        records = self.client.store.read(found.tier, [self.keys.record(found.tier, entry_id)])
        if not records:
            raise NotFound(f"memory {entry_id} moved or was deleted while it was read; retry")
        record = records[0]
        rebuilt = self.client.engine.reconstruct_from_embedding(record.vector, found.tier)
        return {
            "entry_id": entry_id, "agent_id": agent_id, "tier": found.tier, "key": found.key,
            "step": record.step, "ts": record.ts, "state": rebuilt.state,
            "kept_state": None if record.state_json is None else _kept_state(record.state_json),
        }  # fmt: skip

    def reconstruct_vector(self, vector: Sequence[float]) -> dict[str, Any]:
        """An approximate state decoded from a tier vector (its tier told by its length).

        Raises:
            ValueError: a vector of no tier's size, or not finite.
        """
        array = np.asarray(vector, dtype=np.float32)
        tier = next((t for t in TIERS if self.client.dims[t] == array.size), None)
        if array.ndim != 1 or tier is None:
            sizes = ", ".join(f"{dim} ({t})" for t, dim in self.client.dims.items())
            raise ValueError(f"vector has {array.size} values; expected {sizes}")
        if not np.isfinite(array).all():
            raise ValueError("vector holds NaN or infinity")
        rebuilt = self.client.engine.reconstruct_from_embedding(array, tier)
        return {"tier": tier, "state": rebuilt.state}

    def agent_stats(self, key: ApiKey | None, agent_id: str) -> dict[str, Any]:
        """Memories per tier of one agent (its time indexes: exact, O(1) per tier)."""
        agent_id = check_agent_id(agent_id)
        self.authorize(key, agent_id)
        counts = {tier: self.client.store.count(tier, agent_id) for tier in TIERS}
        return {"agent_id": agent_id, "memories": counts, "total": sum(counts.values())}

    def agents(self, key: ApiKey | None, top: int) -> list[dict[str, Any]]:
        """The agents with the most memories, most first (those of a limited key only).

        Reads every agent's time indexes: linear in the number of agents.
        """
        counts = agent_counts(self.redis, self.keys)
        if key is not None and key.agents is not None:
            counts = {agent: n for agent, n in counts.items() if agent in key.agents}
        return [
            {"agent_id": agent, "memories": n, "total": sum(n.values())}
            for agent, n in top_agents(counts, top)
        ]

    def health(self) -> tuple[bool, str]:
        """`memory-tiers check`'s verdict: (healthy, the line it prints)."""
        try:
            status = snapshot(self.redis, self.keys, count_lag_up_to=self.settings.max_lag + 1)
        except redis.RedisError as e:
            return False, f"unhealthy: cannot read Redis: {e}"
        return health(status, self.keys, self.settings.max_lag)


def recall_json(found: Recall, with_vectors: bool = False) -> dict[str, Any]:
    """A Recall as JSON: `by_tier` hits nearest first per tier, `merged` across tiers."""
    return {
        "agent_id": found.agent_id,
        "query_tier": found.query_tier,
        "by_tier": {
            tier: [hit_json(hit, with_vectors) for hit in hits]
            for tier, hits in found.by_tier.items()
        },
        "merged": [merged_json(m, with_vectors) for m in found.merged],
    }


def hit_json(hit: Hit, with_vector: bool = False) -> dict[str, Any]:
    """One hit as JSON: where it is, whose, when, its tier distance and its state if kept."""
    values: dict[str, Any] = {
        "tier": hit.tier, "key": hit.key, "entry_id": hit.entry_id, "agent_id": hit.agent_id,
        "agent_type": hit.agent_type, "step": hit.step, "ts": hit.ts,
        "importance": hit.importance, "model_version": hit.model_version,
        "distance": _finite(hit.distance), "state": hit.state,
    }  # fmt: skip
    if with_vector:
        values["vector"] = None if hit.vector is None else hit.vector.tolist()
    return values


def merged_json(merged: MergedHit, with_vector: bool = False) -> dict[str, Any]:
    """One merged hit: the hit, plus the feature distance it was ranked by and how."""
    return {
        **hit_json(merged.hit, with_vector),
        "feature_distance": _finite(merged.feature_distance),
        "exact": merged.exact,
    }


def _finite(value: float) -> float | None:
    """JSON has no infinity: a distance the schema could not measure becomes null."""
    return value if math.isfinite(value) else None


def _kept_state(raw: str) -> dict[str, Any] | None:
    import json

    try:
        state = json.loads(raw)
    except ValueError:
        return None
    return state if isinstance(state, dict) else None
