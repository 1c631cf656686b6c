"""One embedded Redis per test session, flushed per test; one small trained model per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from memory_tiers import EmbeddingEngine, Settings
from memory_tiers.checkpoint import save_checkpoint
from memory_tiers.features import default_schema
from memory_tiers.server import EmbeddedCluster, EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore
from memory_tiers.train import train_autoencoder_pipeline


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """The session's search-enabled Redis; the suite fails loudly if it cannot start."""
    with EmbeddedRedis() as server:
        yield server


@pytest.fixture
def redis_client(redis_server: EmbeddedRedis) -> Iterator[redis.Redis]:
    """A client on a freshly flushed server (keys and indexes gone)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def settings(redis_server: EmbeddedRedis, redis_client: redis.Redis) -> Settings:
    """Settings pointing at the flushed session server."""
    return Settings(redis_url=redis_server.url)


@pytest.fixture
def store(redis_client: redis.Redis, settings: Settings) -> TierStore:
    """The tier store on the flushed server, its three indexes made with the default schema's
    state attributes."""
    tiers = TierStore(redis_client, settings, default_schema())
    tiers.ensure_indexes()
    return tiers


@pytest.fixture(scope="module")
def embedded_cluster() -> Iterator[EmbeddedCluster]:
    """A Redis Cluster of 3 embedded masters, for one test module (about 2.5 s to start)."""
    with EmbeddedCluster(masters=3) as started:
        yield started


@pytest.fixture
def cluster_client(embedded_cluster: EmbeddedCluster) -> Iterator[redis.RedisCluster]:
    """A client of the module's cluster, flushed (keys and indexes gone on every master)."""
    client = redis.RedisCluster.from_url(embedded_cluster.url)
    client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    for node in client.get_primaries():
        for index in node.redis_connection.execute_command("FT._LIST"):
            node.redis_connection.execute_command("FT.DROPINDEX", index)
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small but really trained checkpoint (2k simulated states, 2 epochs), made once."""
    _, checkpoint = train_autoencoder_pipeline(
        simulate_states(2000, seed=11), epochs=2, progress=False, device="cpu"
    )
    return save_checkpoint(checkpoint, tmp_path_factory.mktemp("model") / "ae.pt")


@pytest.fixture(scope="session")
def engine(model_path: Path) -> EmbeddingEngine:
    """An embedding engine over the session's trained checkpoint."""
    return EmbeddingEngine.from_checkpoint(model_path)
