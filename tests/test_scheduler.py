"""Job locks and the consolidation scheduler against the embedded Redis, and `consolidate --now`."""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner
from engine_helpers import hooked
from redis.exceptions import LockNotOwnedError
from test_ingest import daemon as make_daemon
from test_ingest import running

from memory_tiers import TIERS, EmbeddingEngine, Keys, Settings
from memory_tiers.cli import main
from memory_tiers.scheduler import (
    JOB_NAMES,
    ConsolidationScheduler,
    JobRun,
)
from memory_tiers.server import EmbeddedRedis
from memory_tiers.status import heartbeats
from memory_tiers.store import MemoryRecord, TierStore
from memory_tiers.tiers import epoch_ms

KEYS = Keys()
LOCK = KEYS.lock("test-job")


def wait_for(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what or condition}"
        time.sleep(0.02)


@pytest.fixture
def clients(redis_server: EmbeddedRedis) -> Iterator[list[redis.Redis]]:
    """Two more clients of the session server, as two daemons would have."""
    made = [redis.Redis.from_url(redis_server.url) for _ in range(2)]
    yield made
    for client in made:
        client.close()


def seed(store: TierStore, n: int, agents: int = 5, dim: int = 384) -> list[MemoryRecord]:
    """`n` STM records, an hour old and more, random vectors."""
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    t0 = epoch_ms() - 10 * 3_600_000
    records = [
        MemoryRecord(
            entry_id=f"{t0 + i}-0",
            agent_id=f"agent-{i % agents}",
            agent_type="explorer",
            step=i,
            ts=t0 + i,
            model_version="test",
            vector=vectors[i],
        )
        for i in range(n)
    ]
    store.write("stm", records)
    return records


def placement(client: redis.Redis, records: Sequence[MemoryRecord]) -> dict[str, int]:
    """How many of `records` each tier holds; fails if one is in none or several."""
    pipe = client.pipeline(transaction=False)
    for record in records:
        for tier in TIERS:
            pipe.exists(KEYS.record(tier, record.entry_id))
    found = pipe.execute()
    counts = dict.fromkeys(TIERS, 0)
    for i, record in enumerate(records):
        holders = [t for j, t in enumerate(TIERS) if found[i * len(TIERS) + j]]
        assert len(holders) == 1, f"{record.entry_id} is in {holders}"
        counts[holders[0]] += 1
    return counts


def slow(engine: EmbeddingEngine, delay_s: float) -> EmbeddingEngine:
    """An engine whose every compress takes `delay_s` longer: passes last long enough to race."""
    return hooked(engine, lambda _: time.sleep(delay_s))


def moving(settings: Settings, **changes: Any) -> Settings:
    """Settings whose STM and IM age rules move everything at once, no count rule."""
    return dataclasses.replace(
        settings, stm_max_age_s=0, im_max_age_s=0, stm_max_per_agent=None,
        im_max_per_agent=None, **changes,
    )  # fmt: skip


# -- job locks (redis-py's Lock) ----------------------------------------------------------------


def test_a_job_lock_is_exclusive_expires_and_is_released_only_by_its_owner(
    redis_client: redis.Redis, clients: list[redis.Redis], settings: Settings,
    engine: EmbeddingEngine,
) -> None:  # fmt: skip
    """What the scheduler relies on, through the locks it makes: our use, not redis-py's tests."""
    mine, theirs = (ConsolidationScheduler(c, settings, engine, lock_ttl_s=10) for c in clients)
    first, second = mine.job_lock("consolidate-stm"), theirs.job_lock("consolidate-stm")
    key = KEYS.lock("consolidate-stm")

    assert first.acquire(blocking=False) is True
    assert second.acquire(blocking=False) is False
    assert 9000 < redis_client.pttl(key) <= 10_000
    redis_client.pexpire(key, 300)
    first.reacquire()  # the renewal between batches: the full TTL again
    assert redis_client.pttl(key) > 9000

    redis_client.set(key, "someone-else", px=10_000)  # as if ours had expired and changed hands
    with pytest.raises(LockNotOwnedError):
        first.reacquire()
    with pytest.raises(LockNotOwnedError):
        first.release()
    assert redis_client.get(key) == "someone-else"


# -- ConsolidationScheduler --------------------------------------------------------------------


def test_run_now_runs_each_job_under_its_lock_and_returns_the_results(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = seed(store, 50)
    scheduler = ConsolidationScheduler(redis_client, moving(settings), engine)

    results = scheduler.run_now()

    assert list(results) == ["stm", "im"]
    assert [(r.moved, r.deleted) for r in results.values()] == [(50, 0), (50, 0)]
    assert placement(redis_client, records) == {"stm": 0, "im": 0, "ltm": 50}
    assert [run.job for run in scheduler.history] == ["consolidate-stm", "consolidate-im"]
    assert all(run.error is None for run in scheduler.history)
    assert not any(redis_client.exists(KEYS.lock(job)) for job in JOB_NAMES.values())


def test_run_now_leaves_out_a_job_whose_lock_another_process_holds(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = seed(store, 20)
    other = redis_client.lock(KEYS.lock("consolidate-im"), timeout=10)
    assert other.acquire(blocking=False)
    scheduler = ConsolidationScheduler(redis_client, moving(settings), engine)

    results = scheduler.run_now(wait_s=0.1)

    assert list(results) == ["stm"]
    assert scheduler.lock_busy["consolidate-im"] == 1
    assert placement(redis_client, records) == {"stm": 0, "im": 20, "ltm": 0}
    assert other.owned()


def test_a_pass_that_loses_its_lock_stops_and_leaves_the_new_owners_lock(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = seed(store, 200)
    settings = moving(settings, consolidate_batch=10)
    scheduler = ConsolidationScheduler(redis_client, settings, slow(engine, 0.02))
    lock_key = KEYS.lock("consolidate-stm")
    done: list[Any] = []
    worker = threading.Thread(target=lambda: done.append(scheduler.run_job("stm")))
    worker.start()
    wait_for(lambda: store.count("im") >= 20, what="the pass to move some")
    redis_client.set(lock_key, "a-new-owner", px=10_000)  # as if ours had expired
    worker.join(timeout=10)

    result = done[0]
    assert 20 <= result.moved < 200
    assert redis_client.get(lock_key) == "a-new-owner"
    placed = placement(redis_client, records)
    assert placed["im"] == result.moved and placed["stm"] == 200 - result.moved


def test_two_schedulers_never_run_a_job_at_the_same_time(
    redis_client: redis.Redis,
    clients: list[redis.Redis],
    store: TierStore,
    settings: Settings,
    engine: EmbeddingEngine,
) -> None:
    records = seed(store, 300)
    settings = moving(settings, consolidate_batch=15, consolidate_interval_s=0.05)
    daemons = [ConsolidationScheduler(c, settings, slow(engine, 0.01)) for c in clients]
    for daemon in daemons:
        daemon.start()
        time.sleep(0.025)  # ticks half an interval apart: each wins some runs once work is short
    try:
        wait_for(lambda: store.count("ltm") == 300, what="everything to reach LTM")
        time.sleep(0.2)  # a few more (empty) runs, all still competing for the locks
    finally:
        for daemon in daemons:
            daemon.shutdown(wait=True)

    for job in ("consolidate-stm", "consolidate-im"):
        runs = sorted(
            (run for daemon in daemons for run in daemon.history if run.job == job),
            key=lambda run: run.started,
        )
        assert len(runs) >= 2
        overlaps = [(a, b) for a, b in itertools.pairwise(runs) if b.started < a.finished]
        assert overlaps == [], f"{job} ran in two schedulers at once: {overlaps[:1]}"
    assert all(d.history for d in daemons), "one scheduler never ran a job"
    assert sum(sum(d.lock_busy.values()) for d in daemons) > 0, "the locks were never contended"
    assert sum(_moved(d.history, "consolidate-stm") for d in daemons) == 300
    assert sum(_moved(d.history, "consolidate-im") for d in daemons) == 300
    assert placement(redis_client, records) == {"stm": 0, "im": 0, "ltm": 300}
    assert all(run.error is None for d in daemons for run in d.history)


def _moved(history: list[JobRun], job: str) -> int:
    return sum(run.result.moved for run in history if run.job == job and run.result)


def test_shutdown_stops_a_long_pass_after_its_batch_in_hand(
    redis_client: redis.Redis, store: TierStore, settings: Settings, engine: EmbeddingEngine
) -> None:
    records = seed(store, 400)
    settings = moving(settings, consolidate_batch=10, consolidate_interval_s=0.05)
    scheduler = ConsolidationScheduler(redis_client, settings, slow(engine, 0.05))
    scheduler.start()
    assert scheduler.running
    wait_for(lambda: store.count("im") + store.count("ltm") >= 10, what="a first batch")

    started = time.monotonic()
    scheduler.shutdown(wait=True)

    assert time.monotonic() - started < 2
    assert not scheduler.running
    placed = placement(redis_client, records)
    assert placed["stm"] > 0, "the pass ran to the end instead of stopping"
    assert not any(redis_client.exists(KEYS.lock(job)) for job in JOB_NAMES.values())
    moved_before = store.count("im") + store.count("ltm")
    time.sleep(0.2)
    assert store.count("im") + store.count("ltm") == moved_before  # nothing runs any more


# -- memory-tiers consolidate --now ------------------------------------------------------------


def test_consolidate_now_prints_what_each_job_moved(
    redis_server: EmbeddedRedis, store: TierStore, model_path: Path
) -> None:
    records = seed(store, 30)
    env = {
        "MT_REDIS_URL": redis_server.url,
        "MT_MODEL_PATH": str(model_path),
        "MT_IM_MAX_AGE_S": "none",
        "MT_LTM_MAX_PER_AGENT": "4",
    }

    result = CliRunner().invoke(main, ["--log-level", "WARNING", "consolidate", "--now"], env=env)

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["job", "moved", "deleted", "skipped", "seconds"]
    assert [line.split()[:4] for line in lines[1:]] == [
        ["stm->im", "30", "0", "0"],
        ["im->ltm", "0", "0", "0"],
        ["ltm", "retention", "0", "0"],
    ]
    assert placement(store.client, records)["im"] == 30


def test_consolidate_needs_a_redis_url(model_path: Path) -> None:
    env = {"MT_REDIS_URL": None, "MT_MODEL_PATH": str(model_path)}
    result = CliRunner().invoke(main, ["consolidate", "--now"], env=env)
    assert result.exit_code == 2
    assert "MT_REDIS_URL" in result.output


def test_consolidate_says_its_policy_and_can_take_the_daemons(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, store: TierStore,
    settings: Settings, model_path: Path, engine: EmbeddingEngine,
) -> None:  # fmt: skip
    now = epoch_ms()
    records = [
        MemoryRecord(
            entry_id=f"{now - 60 + i}-0", agent_id="bot", agent_type="explorer", step=i,
            ts=now - 60 + i, model_version=engine.version,
            vector=np.full(384, i / 60, dtype=np.float32),
        )
        for i in range(60)
    ]  # fmt: skip
    store.write("stm", records)  # a minute old: only a count rule moves them
    daemon_settings = dataclasses.replace(
        settings, stm_max_per_agent=50, consolidate_interval_s=3600, block_ms=100
    )
    env = {"MT_REDIS_URL": redis_server.url, "MT_MODEL_PATH": str(model_path)}
    with running(make_daemon(daemon_settings, engine, "policy-d")):
        wait_for(lambda: bool(heartbeats(redis_client, KEYS)), what="the daemon's heartbeat")
        mine = CliRunner().invoke(main, ["--log-level", "WARNING", "consolidate"], env=env)
        theirs = CliRunner().invoke(
            main, ["--log-level", "WARNING", "consolidate", "--daemon-policy"], env=env
        )
    assert mine.exit_code == 0, mine.output
    assert mine.stderr.splitlines() == [
        "policy (this command's MT_* settings): stm->im older than 3600 s or past 1000 per "
        "agent; im->ltm older than 86400 s or past 10000 per agent; ltm retention off",
        "note: live daemon policy-d consolidates with another policy: MT_STM_MAX_PER_AGENT=50 "
        "(this pass does not; --daemon-policy moves by theirs)",
    ]
    assert mine.stdout.splitlines()[1].split()[:2] == ["stm->im", "0"]
    assert theirs.exit_code == 0, theirs.output
    assert theirs.stderr.splitlines() == [
        "policy (the live daemons' (policy-d)): stm->im older than 3600 s or past 50 per agent; "
        "im->ltm older than 86400 s or past 10000 per agent; ltm retention off"
    ]
    assert theirs.stdout.splitlines()[1].split()[:2] == ["stm->im", "10"]
    assert placement(redis_client, records) == {"stm": 50, "im": 10, "ltm": 0}


def test_reencode_refuses_a_model_no_live_daemon_serves(
    redis_server: EmbeddedRedis, redis_client: redis.Redis, store: TierStore,
    settings: Settings, engine: EmbeddingEngine,
) -> None:  # fmt: skip
    env = {"MT_REDIS_URL": redis_server.url}  # the packaged default model, not the daemon's
    with running(make_daemon(dataclasses.replace(settings, block_ms=100), engine, "old-model-d")):
        wait_for(lambda: bool(heartbeats(redis_client, KEYS)), what="the daemon's heartbeat")
        refused = CliRunner().invoke(main, ["--log-level", "WARNING", "reencode"], env=env)
        forced = CliRunner().invoke(
            main, ["--log-level", "WARNING", "reencode", "--force"], env=env
        )
    assert refused.exit_code == 1
    assert "is served by no live daemon: old-model-d (" + engine.version in refused.output
    assert "or give --force" in refused.output
    assert forced.exit_code == 0, forced.output
    assert forced.stderr.startswith("warning: model ")
    assert forced.stdout.splitlines()[0].startswith("model ")


def test_an_outage_is_one_warning_not_a_traceback_per_run(
    tmp_path: Path, engine: EmbeddingEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    server = EmbeddedRedis(data_dir=tmp_path / "redis").start()
    port = server.port
    client = redis.Redis.from_url(server.url)
    settings = Settings(redis_url=server.url, consolidate_interval_s=0.05)
    scheduler = ConsolidationScheduler(client, settings, engine)
    TierStore(client, settings).ensure_indexes()
    scheduler.start()
    try:
        wait_for(lambda: len(scheduler.history) >= 2, 10, "runs while Redis is up")
        server.stop()
        wait_for(lambda: "consolidation paused" in caplog.text, 5, "the outage noticed")
        time.sleep(0.5)  # ten intervals down: every job fails several times
        server = EmbeddedRedis(data_dir=tmp_path / "redis", port=port).start()
        wait_for(lambda: "consolidation resumed" in caplog.text, 10, "the outage's end")
    finally:
        scheduler.shutdown(wait=True)
        client.close()
        server.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("consolidation paused" in m for m in messages) == 1
    assert sum("consolidation resumed" in m for m in messages) == 1
    loud = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert loud == []


def test_idle_passes_and_job_set_up_log_nothing_at_info(
    redis_client: redis.Redis, settings: Settings, engine: EmbeddingEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    scheduler = ConsolidationScheduler(
        redis_client, dataclasses.replace(settings, consolidate_interval_s=0.05), engine
    )
    scheduler.store.ensure_indexes()
    caplog.set_level(logging.DEBUG)
    scheduler.start()
    try:
        wait_for(lambda: len(scheduler.history) >= 6, what="a few idle runs of each job")
    finally:
        scheduler.shutdown(wait=True)
    ours = ("apscheduler", "memory_tiers.scheduler", "memory_tiers.tiers")
    info = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.INFO and r.name.startswith(ours)
    ]
    assert [m for m in info if m.startswith("consolidation scheduled every 0.1 s")] == info
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert sum(m.startswith("consolidate stm->im: moved 0") for m in debug) >= 3
