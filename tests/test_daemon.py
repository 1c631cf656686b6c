"""The daemon as a process: refusal of bad models, kill -9, SIGTERM, the embedded Redis, backoff."""

from __future__ import annotations

import logging
import os
import selectors
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import pytest
import redis
import torch
from click.testing import CliRunner
from test_ingest import (
    KEYS,
    daemon,
    make_settings,
    num_docs,
    pending,
    running,
    stored_ids,
    stream_ids,
    wait_for,
    xadd_states,
)

from memory_tiers import EmbeddingEngine, ModelError, Settings, default_schema
from memory_tiers.checkpoint import Checkpoint, save_checkpoint
from memory_tiers.cli import main
from memory_tiers.daemon import BACKOFF_MAX_S, Backoff, Daemon, load_engine
from memory_tiers.engine import UNTRAINED_VERSION
from memory_tiers.model import ModelConfig, StateAutoencoder
from memory_tiers.server import EmbeddedRedis
from memory_tiers.sim import simulate_states
from memory_tiers.store import TierStore

STREAMED = 20_000
"""States in the stream for the process tests: several seconds of work, so a stop lands mid-way."""


def serve_env(model_path: Path, url: str | None) -> dict[str, str]:
    """The environment of a `memory-tiers serve` child: no MT_* from outside, short blocks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MT_")}
    env.update(MT_MODEL_PATH=str(model_path), MT_BLOCK_MS="100", MT_LOG_LEVEL="INFO")
    if url:
        env["MT_REDIS_URL"] = url
    return env


@contextmanager
def serving(
    tmp_path: Path, env: dict[str, str], consumer: str, stdout: int | IO[Any] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """`python -m memory_tiers serve --consumer NAME` and its log file; killed (woken first,
    if it was stopped) when the block ends with the process still running."""
    log_path = tmp_path / f"{consumer}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "memory_tiers", "serve", "--consumer", consumer],
            env=env,
            cwd=tmp_path,
            stdout=log_file if stdout is None else stdout,
            stderr=log_file,
        )
    try:
        yield process, log_path
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
        process.wait(10)


@pytest.fixture
def stream_20k(redis_client: redis.Redis) -> list[str]:
    """20,000 simulated states XADDed to the flushed server; their ids."""
    return xadd_states(redis_client, simulate_states(STREAMED, seed=21))


def stm_count(client: redis.Redis) -> int:
    return int(client.zcard(KEYS.time_index("stm")))


def assert_exactly_once(client: redis.Redis, ids: list[str]) -> None:
    """Every stream entry has one record, and nothing else does."""
    assert stm_count(client) == num_docs(client) == len(ids) == len(set(ids))
    assert set(stored_ids(client)) == set(ids) == stream_ids(client)
    assert pending(client) == 0


# -- model refusal -----------------------------------------------------------------------------


@pytest.fixture
def untrained_checkpoint(tmp_path: Path) -> Path:
    schema = default_schema()
    model = StateAutoencoder(ModelConfig(schema.input_dim, 384, 128, 32))
    return save_checkpoint(Checkpoint(model, schema, "raw", {}), tmp_path / "untrained.pt")


@pytest.fixture
def keep_torch_threads() -> Iterator[None]:
    """The CLI sets torch's thread count for the whole process; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_serve_refuses_a_missing_or_untrained_model_with_exit_code_2(
    tmp_path: Path, redis_server: EmbeddedRedis, untrained_checkpoint: Path
) -> None:
    runner = CliRunner()
    env = {"MT_REDIS_URL": redis_server.url}
    for path, problem in (
        (tmp_path / "missing.pt", "no model checkpoint at"),
        (untrained_checkpoint, "holds an untrained model"),
    ):
        result = runner.invoke(main, ["--model-path", str(path), "serve"], env=env)
        assert result.exit_code == 2, result.output
        assert problem in result.output
        assert "--allow-untrained" in result.output
        assert "memory-tiers train" in result.output


def test_serve_refuses_a_model_of_other_dimensions(
    redis_server: EmbeddedRedis, model_path: Path
) -> None:
    result = CliRunner().invoke(
        main,
        ["--model-path", str(model_path), "--stm-dim", "64", "serve"],
        env={"MT_REDIS_URL": redis_server.url},
    )
    assert result.exit_code == 2, result.output
    assert "(384, 128, 32), expected (64, 128, 32)" in result.output


def test_serve_refuses_indexes_of_other_dimensions(
    tmp_path: Path, redis_server: EmbeddedRedis, settings: Settings, keep_torch_threads: None
) -> None:
    from memory_tiers.store import TierStore

    TierStore(redis.Redis.from_url(redis_server.url), settings).ensure_indexes()  # 384-d
    result = CliRunner().invoke(
        main,
        ["--model-path", str(tmp_path / "none.pt"), "--stm-dim", "64", "serve",
         "--allow-untrained"],
        env={"MT_REDIS_URL": redis_server.url},
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "index mt:idx:stm has vec DIM 384, settings say 64 (MT_STM_DIM)" in result.output


def test_an_untrained_model_is_served_when_allowed(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    untrained_checkpoint: Path,
) -> None:
    missing = make_settings(redis_server.url, tmp_path / "missing.pt")
    with pytest.raises(ModelError, match="--allow-untrained"):
        load_engine(missing)
    with pytest.warns(UserWarning, match="UNTRAINED"):
        engine = load_engine(missing, allow_untrained=True)
    assert (engine.trained, engine.version) == (False, UNTRAINED_VERSION)
    raw = load_engine(make_settings(redis_server.url, untrained_checkpoint), allow_untrained=True)
    assert (raw.trained, raw.version) == (False, "raw")
    ids = xadd_states(redis_client, simulate_states(10, seed=22))
    allowed = Daemon(missing, consumer="brave", allow_untrained=True, torch_threads=None)
    with pytest.warns(UserWarning, match="UNTRAINED"), running(allowed) as d:
        wait_for(lambda: d.stats.stored == 10, 10, "10 records")
    model_versions = {
        redis_client.hget(KEYS.record("stm", entry_id), "model_version") for entry_id in ids
    }
    assert model_versions == {UNTRAINED_VERSION}


# -- the process: kill -9, SIGTERM, embedded Redis ---------------------------------------------


def test_kill_9_mid_stream_loses_and_duplicates_nothing(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    model_path: Path,
    engine: EmbeddingEngine,
    stream_20k: list[str],
) -> None:
    env = serve_env(model_path, redis_server.url)
    with serving(tmp_path, env, "victim") as (victim, log_path):
        wait_for(lambda: stm_count(redis_client) >= 1000, 30, "the victim storing")
        # Freeze it where it holds read, unacked entries, then kill it there.
        deadline = time.monotonic() + 10
        while True:
            victim.send_signal(signal.SIGSTOP)
            if pending(redis_client, "victim") > 0 or time.monotonic() > deadline:
                break
            victim.send_signal(signal.SIGCONT)
            time.sleep(0.005)
        victim.kill()
        assert victim.wait(10) == -signal.SIGKILL
    orphaned = pending(redis_client, "victim")
    assert orphaned > 0, log_path.read_text()
    assert 1000 <= stm_count(redis_client) < STREAMED
    # Long enough that the heir's own read-ahead batch, waiting its turn on a loaded box,
    # never goes idle that long (it would claim its own entries and count them); short
    # enough that the orphans are claimed well within the wait below.
    settings = make_settings(redis_server.url, model_path, claim_idle_ms=3000)
    with running(daemon(settings, engine, "heir")) as heir:
        wait_for(lambda: stm_count(redis_client) == STREAMED, 60, "all 20,000 records")
        wait_for(lambda: pending(redis_client) == 0, 5, "an empty pending list")
    assert heir.stats.claimed == orphaned
    assert_exactly_once(redis_client, stream_20k)


def test_sigterm_acks_what_was_read_exits_0_and_a_restart_finishes(
    tmp_path: Path,
    redis_client: redis.Redis,
    redis_server: EmbeddedRedis,
    model_path: Path,
    engine: EmbeddingEngine,
    stream_20k: list[str],
) -> None:
    env = serve_env(model_path, redis_server.url)
    with serving(tmp_path, env, "polite") as (process, log_path):
        wait_for(lambda: stm_count(redis_client) >= 1000, 30, "storing under way")
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log_path.read_text()
    log_text = log_path.read_text()
    assert "SIGTERM: finishing the batch in hand" in log_text
    assert pending(redis_client) == 0  # everything it read was stored and acked
    assert stm_count(redis_client) < STREAMED
    settings = make_settings(redis_server.url, model_path)
    with running(daemon(settings, engine, "polite")):
        wait_for(lambda: stm_count(redis_client) == STREAMED, 60, "all 20,000 records")
    assert_exactly_once(redis_client, stream_20k)


def read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a child's pipe, or fail after `timeout` s instead of blocking forever."""
    with selectors.DefaultSelector() as selector:
        selector.register(stream, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise AssertionError(f"no output within {timeout:.0f} s")
    return stream.readline().decode().strip()


def test_serve_without_a_url_starts_an_embedded_redis_and_prints_it(
    tmp_path: Path, model_path: Path
) -> None:
    env = serve_env(model_path, None)
    with serving(tmp_path, env, "hermit", stdout=subprocess.PIPE) as (process, log_path):
        assert process.stdout is not None
        url = read_line(process.stdout, 30)
        assert url.startswith("redis://127.0.0.1:"), log_path.read_text()
        client = redis.Redis.from_url(url)
        ids = xadd_states(client, simulate_states(5, seed=23))
        wait_for(lambda: set(stored_ids(client)) == set(ids), 30, "5 records")
        client.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(15) == 0, log_path.read_text()


# -- signals and backoff, in process -----------------------------------------------------------


def test_a_second_signal_exits_at_once_with_a_nonzero_code(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, engine: EmbeddingEngine
) -> None:
    exits: list[int] = []
    monkeypatch.setattr(os, "_exit", exits.append)
    d = Daemon(settings, consumer="twice", engine=engine)
    d._on_signal(signal.SIGTERM, None)
    assert d.stopping and exits == []
    d._on_signal(signal.SIGINT, None)
    assert exits == [128 + signal.SIGINT]


def test_backoff_doubles_to_its_cap_with_jitter_and_logs_once_per_outage(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="memory_tiers.daemon")
    backoff = Backoff()
    error = redis.ConnectionError("refused")
    delays = [backoff.failed(error) for _ in range(10)]
    ceilings = [min(BACKOFF_MAX_S, 0.1 * 2**i) for i in range(10)]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True)), delays
    backoff.succeeded()
    backoff.succeeded()
    assert 0.05 <= backoff.failed(error) <= 0.1  # a new outage starts over
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert messages[0].startswith("ingest interrupted (ConnectionError: refused)")
    assert messages[1].startswith("ingest resumed after 10 failed attempts")


def test_daemons_that_lost_redis_together_do_not_retry_in_lockstep() -> None:
    daemons = [Backoff() for _ in range(50)]
    error = redis.ConnectionError("refused")
    sixth = [[d.failed(error) for _ in range(6)][-1] for d in daemons]
    assert all(1.6 <= delay <= 3.2 for delay in sixth)  # 0.1 x 2^5, jittered
    # Spread over the window, never bunched: at most 6 of 50 in one 10 ms slot (lockstep
    # would put all 50 in one). Counting distinct slots (> 40 of 161) failed 12% of runs.
    assert max(sixth) - min(sixth) > 1.0
    assert max(Counter(round(delay, 2) for delay in sixth).values()) <= 6


def test_the_daemon_needs_a_redis_url(engine: EmbeddingEngine) -> None:
    with pytest.raises(Exception, match="MT_REDIS_URL"):
        Daemon(Settings(), engine=engine)


# -- consolidation inside the daemon -------------------------------------------------------------


@pytest.mark.parametrize("consolidate", [True, False])
def test_the_daemon_runs_the_consolidation_jobs(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    model_path: Path,
    engine: EmbeddingEngine,
    consolidate: bool,
) -> None:
    settings = make_settings(
        redis_server.url, model_path, stm_max_per_agent=4, consolidate_interval_s=0.1
    )
    xadd_states(redis_client, simulate_states(60, num_agents=6, seed=8))  # 10 per agent
    store = TierStore(redis_client, settings)

    def counts() -> tuple[int, int]:
        return store.count("stm"), store.count("im")

    with running(daemon(settings, engine, "consolidating", consolidate=consolidate)):
        wait_for(lambda: sum(counts()) == 60, 30, "all 60 states stored")
        if consolidate:
            wait_for(lambda: counts() == (24, 36), 30, "each agent's 6 oldest moved to IM")
        else:
            time.sleep(0.5)  # several intervals: nothing may move
            assert counts() == (60, 0)
    assert {store.count("stm", agent_id=f"agent-{i:03d}") for i in range(6)} == (
        {4} if consolidate else {10}
    )
