"""AsyncMemoryClient: MemoryClient's remember and recall for agents on asyncio.

Writes are native `redis.asyncio`: each entry is checked and encoded by the same functions as
MemoryClient's (protocol.encode_entry, client._item_fields), then XADDed without blocking the
event loop, a batch in one pipelined round trip.

Recall runs `MemoryClient.recall` itself in a worker thread (asyncio.to_thread) on a sync
connection of its own: the same query encoding, KNN, re-sort and merge, not a copy of them.
Most of a recall's time is CPU (featurize and encode the query, re-sort candidates: numpy), which
would stall the loop as much as a blocking socket; in a thread it stalls neither. A native
redis.asyncio recall would need TierStore to hand out its queries and reply parsers apart
from its sync I/O.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy.typing as npt
import redis
import redis.asyncio

from .client import (
    SOCKET_CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    MemoryClient,
    MergedHit,
    Recall,
    _item_fields,
    connect,
)
from .constants import TIERS
from .errors import ConfigError, StoreError
from .protocol import encode_entry
from .resp import text
from .settings import Settings
from .store import Hit, failure_text

if TYPE_CHECKING:
    from .engine import EmbeddingEngine, Reconstruction

__all__ = ["AsyncMemoryClient"]


class AsyncMemoryClient:
    """Writes agent memories to the stream and recalls them, from asyncio code.

    Args:
        redis_client: a `redis.asyncio.Redis` for the writes.
        recall_client: the sync MemoryClient whose recall runs in a worker thread.

    Use `from_settings` or `from_url`, then `async with` (or `await close()`).
    """

    def __init__(
        self,
        redis_client: redis.asyncio.Redis | redis.asyncio.RedisCluster,
        recall_client: MemoryClient,
    ) -> None:
        self.redis = redis_client
        self.recall_client = recall_client
        self.settings = recall_client.settings
        self.keys = self.settings.keys

    @classmethod
    def from_settings(
        cls, settings: Settings, engine: EmbeddingEngine | None = None
    ) -> AsyncMemoryClient:
        """A client with its own connections to `settings.redis_url`; close() closes them.

        Args:
            engine: an embedding engine to recall with; default: loaded on the first recall.

        Raises:
            ConfigError: redis_url is unset, or `engine` does not fit the settings.
        """
        if not settings.redis_url:
            raise ConfigError(
                "AsyncMemoryClient needs settings.redis_url (MT_REDIS_URL): the Redis the "
                "daemon reads"
            )
        # the URL's own socket_timeout=/socket_connect_timeout= arguments win
        kind = redis.asyncio.Redis if settings.buckets == 1 else redis.asyncio.RedisCluster
        writer = kind.from_url(
            settings.redis_url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_CONNECT_TIMEOUT_S,
        )
        return cls(writer, MemoryClient(connect(settings), settings, engine))

    @classmethod
    def from_url(cls, url: str, **settings_overrides: Any) -> AsyncMemoryClient:
        """A client on `url`, with Settings defaults changed by keyword (`prefix="mt2"`)."""
        return cls.from_settings(Settings(redis_url=url, **settings_overrides))

    async def close(self) -> None:
        """Close both connections."""
        await self.redis.aclose()
        self.recall_client.redis.close()

    async def __aenter__(self) -> AsyncMemoryClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- writes --------------------------------------------------------------------------------

    async def remember(
        self,
        agent_id: str,
        state: Mapping[str, Any],
        step: int | None = None,
        ts: int | None = None,
        kind: str = "state",
        importance: float | None = None,
    ) -> str:
        """XADD one memory to the stream; returns its entry id. See MemoryClient.remember.

        Raises:
            EntryError: the entry would be refused by the daemon; nothing was written.
            StoreError: Redis failed.
        """
        fields = encode_entry(agent_id, state, step, ts, kind, importance)
        stream = self.recall_client.stream_of(agent_id)
        try:
            entry_id = await self.redis.xadd(stream, fields)  # type: ignore[arg-type]
        except redis.RedisError as e:
            raise StoreError(
                f"XADD to {stream} for agent {agent_id!r} failed: {failure_text(e, self.keys)}"
            ) from e
        return text(entry_id)

    async def remember_many(self, items: Iterable[Mapping[str, Any]]) -> list[str]:
        """XADD many memories in one pipelined round trip; their entry ids in order.

        Raises:
            EntryError: an item is invalid ("item 3: ..."); nothing was written.
            StoreError: Redis failed.
        """
        entries = [_item_fields(i, item) for i, item in enumerate(items)]
        if not entries:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for fields in entries:
            stream = self.recall_client.stream_of(fields["agent_id"])
            pipe.xadd(stream, fields)  # type: ignore[arg-type]
        try:
            ids = await pipe.execute()
        except redis.RedisError as e:
            raise StoreError(
                f"pipelined XADD of {len(entries)} entries to {self.keys.stream} failed: "
                f"{failure_text(e, self.keys)}"
            ) from e
        return [text(entry_id) for entry_id in ids]

    # -- reads ---------------------------------------------------------------------------------

    async def recall(
        self,
        agent_id: str,
        query: Mapping[str, Any] | npt.ArrayLike,
        k: int = 10,
        tiers: Sequence[str] = TIERS,
        step_range: tuple[int, int] | None = None,
        filters: Any = None,
        where: Mapping[str, Any] | None = None,
        kinds: Sequence[str] | None = None,
    ) -> Recall:
        """The memories of `agent_id` nearest to `query`, per tier and merged: exactly
        MemoryClient.recall (same arguments, same errors), in a worker thread."""
        return await asyncio.to_thread(
            self.recall_client.recall,
            agent_id, query, k, tiers, step_range, filters, where=where, kinds=kinds,
        )  # fmt: skip

    async def reconstruct(self, hit: Hit | MergedHit) -> Reconstruction:
        """An approximate readable state of a hit; see MemoryClient.reconstruct."""
        return await asyncio.to_thread(self.recall_client.reconstruct, hit)
